"""Extraction: images to backbone vectors (backbones, preprocessing, extractor), the HDF5 cache, build and shards."""
