"""Opt-in: the real ImageNet weights, fetched by Keras, on the one real Street2Shop pair beside the checkout.

Needs the internet, so it runs only with S2S_NETWORK_TESTS=1 (CI has no internet); the rest of the suite
covers the same code with generated weights.
"""

import os
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_image

PAIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "street2shop-pair"

pytestmark = [
    pytest.mark.network,
    pytest.mark.skipif(os.environ.get("S2S_NETWORK_TESTS") != "1", reason="needs the internet: set S2S_NETWORK_TESTS=1"),
    pytest.mark.skipif(not PAIR.is_dir(), reason=f"{PAIR} not present"),
]


def test_street_crop_is_nearest_to_its_shop_photo_with_imagenet_vgg19():
    from embeddings import Extractor

    extractor = Extractor("vgg19", "imagenet")
    others = [make_image(224, 224, seed=seed) for seed in range(5)]
    vectors = extractor.embed([PAIR / "street_7647_3589_crop.jpg", PAIR / "shop_3589.jpg", *others])
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = unit[1:] @ unit[0]
    assert int(np.argmax(similarity)) == 0
