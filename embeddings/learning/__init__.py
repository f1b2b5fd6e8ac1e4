"""Learning: the Siamese head over cached vectors (losses, samplers, training loop, metrics, plots)."""
