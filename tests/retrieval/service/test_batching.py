"""The batching worker: one network call for many requests, results equal to one search at a time."""

from __future__ import annotations

import time

import numpy as np
import pytest

from retrieval.service import Batcher
from retrieval.service.batching import ShuttingDown
from tests.conftest import make_image


class CountingExtractor:
    """The tiny backbone, counting how many photos each network call got."""

    def __init__(self, extractor) -> None:
        self.inner = extractor
        self.calls: list[int] = []

    def prepare(self, image):
        return self.inner.prepare(image)

    def embed(self, images, bboxes=None):  # engine.search, for the answers one at a time: not counted
        return self.inner.embed(images, bboxes)

    def predict(self, inputs):
        self.calls.append(len(inputs))
        return self.inner.predict(inputs)


@pytest.fixture
def counted(raw_engine, monkeypatch):
    counter = CountingExtractor(raw_engine.extractor)
    monkeypatch.setattr(raw_engine, "_extractor", counter)
    return raw_engine, counter


def photos(count: int) -> list:
    return [make_image(40, 50, seed=20 + n) for n in range(count)]


def test_requests_queued_together_share_one_network_call_and_rank_as_alone(counted):
    engine, counter = counted
    images = photos(6)
    inputs = [counter.prepare(image) for image in images]
    queries = [(None, 4), ("bags", 4), ("dresses", 2), (None, 4), ("bags", 10), ("dresses", 2)]
    batcher = Batcher(engine, max_batch=16, wait_ms=2000)
    batcher.start()
    try:
        with batcher.arriving():  # another request still decoding: the worker waits for the batch to fill
            futures = [batcher.search(x, category, k) for x, (category, k) in zip(inputs, queries)]
            time.sleep(0.2)
            assert not any(f.done() for f in futures)
        results = [f.result(timeout=30) for f in futures]
    finally:
        batcher.close()
    assert counter.calls == [6] and (batcher.batches, batcher.photos) == (1, 6)
    for image, (category, k), matches in zip(images, queries, results):
        alone = engine.search(image, k=k, category=category)
        assert [(m.photo, m.product) for m in matches] == [(m.photo, m.product) for m in alone]
        np.testing.assert_allclose([m.distance for m in matches], [m.distance for m in alone], atol=1e-6)


def test_a_lone_request_does_not_wait(counted):
    engine, counter = counted
    batcher = Batcher(engine, max_batch=16, wait_ms=5000)
    batcher.start()
    try:
        started = time.perf_counter()
        batcher.search(counter.prepare(photos(1)[0]), None, 3).result(timeout=30)
        assert time.perf_counter() - started < 2.5  # far under the 5 s it could wait
    finally:
        batcher.close()


def test_batches_hold_at_most_max_batch_photos_and_pairs_stay_whole(counted):
    engine, counter = counted
    inputs = [counter.prepare(image) for image in photos(7)]
    batcher = Batcher(engine, max_batch=4, wait_ms=2000)
    batcher.start()
    try:
        with batcher.arriving():
            searches = [batcher.search(x, None, 2) for x in inputs[:3]]
            pair = batcher.compare(inputs[3], inputs[4])  # would make 5 photos: waits for the next batch
            rest = [batcher.search(x, None, 2) for x in inputs[5:]]
        comparison = pair.result(timeout=30)
        assert all(len(f.result(timeout=30)) == 2 for f in searches + rest)
    finally:
        batcher.close()
    assert counter.calls == [3, 4] and max(counter.calls) <= 4
    left, right = counter.inner.predict(np.stack(inputs[3:5]))
    cosine = left @ right / np.linalg.norm(left) / np.linalg.norm(right)
    assert comparison.distance == pytest.approx(1 - cosine, abs=1e-5) and comparison.same is None


def test_a_failing_group_fails_only_its_requests(counted, monkeypatch):
    engine, counter = counted
    original = engine.search_vectors

    def only_bags(vectors, k, category):
        if category == "dresses":
            raise RuntimeError("dresses are down")
        return original(vectors, k, category)

    monkeypatch.setattr(engine, "search_vectors", only_bags)
    inputs = [counter.prepare(image) for image in photos(2)]
    batcher = Batcher(engine, max_batch=8, wait_ms=2000)
    batcher.start()
    try:
        with batcher.arriving():
            bags, dresses = batcher.search(inputs[0], "bags", 3), batcher.search(inputs[1], "dresses", 3)
        assert [m.category for m in bags.result(timeout=30)] == ["bags"] * 3
        with pytest.raises(RuntimeError, match="dresses are down"):
            dresses.result(timeout=30)
    finally:
        batcher.close()


def test_closed_batcher_refuses_new_work(raw_engine):
    batcher = Batcher(raw_engine)
    batcher.start()
    batcher.close()
    with pytest.raises(ShuttingDown):
        batcher.search(np.zeros((32, 32, 3), np.float32), None, 1)
