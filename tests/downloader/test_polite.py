"""Polite fetching: Retry-After honoured without holding up other hosts, at most --per-host requests to a host."""

import time
from email.utils import formatdate

import pytest

from demo.server import LoopbackServer, Route
from downloader import DownloadConfig, FetchConfig, download, read_jsonl
from downloader.fetch import parse_retry_after
from downloader.hosts import HostQueues
from tests.conftest import encode, make_image
from tests.downloader.datasets import shop_dataset

JPEG = encode(make_image(30, 20), "JPEG")


def config(meta, photos, tmp_path, **kw) -> DownloadConfig:
    kw.setdefault("fetch", FetchConfig(timeout=5, retries=2, backoff=0.01))
    return DownloadConfig(meta=meta, photos=photos, out=tmp_path / "out", **kw)


def test_429_with_retry_after_is_downloaded_after_the_wait(tmp_path):
    throttled = Route(JPEG, fail_times=1, fail_status=429, fail_headers={"Retry-After": "1"})
    with LoopbackServer({"/a.jpg": throttled}) as server:
        meta, photos = shop_dataset(tmp_path, {1: server.url("a.jpg")})
        summary = download(config(meta, photos, tmp_path))
    assert summary.saved == 1 and (tmp_path / "out" / "shop" / "1.jpg").exists()
    (first, asked), (second, retried) = server.log
    assert first == second == "/a.jpg" and retried - asked >= 1.0
    assert read_jsonl(tmp_path / "out" / "failures.jsonl") == []


def test_a_throttled_host_does_not_hold_up_the_others(tmp_path):
    with LoopbackServer({"/a.jpg": Route(JPEG, fail_times=1, fail_status=503, fail_headers={"Retry-After": "2"})}) as slow, \
            LoopbackServer({f"/{i}.jpg": Route(JPEG, delay=0.05) for i in range(8)}) as fast:
        urls = {100: slow.url("a.jpg"), **{i: fast.url(f"{i}.jpg") for i in range(8)}}
        meta, photos = shop_dataset(tmp_path, urls)
        summary = download(config(meta, photos, tmp_path, workers=1))  # one worker: a sleeping one would block all
    assert summary.saved == 9
    throttled_at = [at for path, at in slow.log]
    fast_times = [at for path, at in fast.log]
    assert throttled_at[1] - throttled_at[0] >= 2.0
    assert max(fast_times) < throttled_at[1]  # all done while the throttled host waited


def test_retry_after_over_max_wait_is_a_failure_grouped_by_host(tmp_path):
    route = Route(JPEG, fail_times=5, fail_status=429, fail_headers={"Retry-After": "3600"})
    with LoopbackServer({"/a.jpg": route, "/b.jpg": Route(JPEG)}) as server:
        meta, photos = shop_dataset(tmp_path, {1: server.url("a.jpg"), 2: server.url("b.jpg")})
        host = server.base_url.removeprefix("http://")
        start = time.monotonic()
        summary = download(config(meta, photos, tmp_path, max_wait=60))
    assert time.monotonic() - start < 5 and server.hits["/a.jpg"] == 1
    [failure] = read_jsonl(tmp_path / "out" / "failures.jsonl")
    assert failure["reason"] == "http 429: Retry-After 3600 s, over --max-wait"
    assert failure["host"] == host and summary.failed_hosts == {host: 1}
    assert f"failed by host: {host}: 1" in summary.lines()


def test_a_host_that_keeps_asking_to_wait_fails_after_the_retries(tmp_path):
    route = Route(JPEG, fail_times=10, fail_status=429, fail_headers={"Retry-After": "0"})
    with LoopbackServer({"/a.jpg": route}) as server:
        meta, photos = shop_dataset(tmp_path, {1: server.url("a.jpg")})
        download(config(meta, photos, tmp_path, fetch=FetchConfig(timeout=5, retries=2)))
    assert server.hits["/a.jpg"] == 3
    [failure] = read_jsonl(tmp_path / "out" / "failures.jsonl")
    assert failure["reason"] == "http 429: Retry-After 0 s, still after 2 waits"


@pytest.mark.parametrize("per_host", [1, 3])
def test_concurrent_requests_to_one_host_never_exceed_per_host(tmp_path, per_host):
    with LoopbackServer({f"/{i}.jpg": Route(JPEG) for i in range(12)}, latency=0.15) as server:
        meta, photos = shop_dataset(tmp_path, {i: server.url(f"{i}.jpg") for i in range(12)})
        summary = download(config(meta, photos, tmp_path, workers=8, per_host=per_host))
    assert summary.saved == 12
    assert server.max_active == per_host  # reached, never passed


def test_per_host_spreads_workers_over_hosts(tmp_path):
    with LoopbackServer({f"/{i}.jpg": Route(JPEG) for i in range(8)}, latency=0.15) as one, \
            LoopbackServer({f"/{i}.jpg": Route(JPEG) for i in range(8)}, latency=0.15) as two:
        urls = {i: one.url(f"{i}.jpg") for i in range(8)} | {10 + i: two.url(f"{i}.jpg") for i in range(8)}
        meta, photos = shop_dataset(tmp_path, urls)
        download(config(meta, photos, tmp_path, workers=4, per_host=2))
    assert one.max_active == two.max_active == 2  # 4 workers: 2 on each host at once


def test_parse_retry_after_seconds_and_http_dates():
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(formatdate(1_000_030, usegmt=True), now=1_000_000) == pytest.approx(30.0)
    assert parse_retry_after(formatdate(999_000, usegmt=True), now=1_000_000) == 0.0  # a date in the past
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None and parse_retry_after("-3") is None
    assert parse_retry_after("\u00b2") is None  # str.isdigit() is true for "²", float() refuses it


def test_host_queues_take_turns_cap_and_pause():
    now = [0.0]
    queues = HostQueues(per_host=2, limited=lambda host: host != "local", clock=lambda: now[0])
    for i in range(4):
        queues.add("a", f"a{i}")
    queues.add("b", "b0")
    queues.add("local", "l0")
    queues.add("local", "l1")
    queues.add("local", "l2")
    taken = [queues.take() for _ in range(7)]
    assert taken[:6] == [("a", "a0"), ("b", "b0"), ("local", "l0"), ("a", "a1"), ("local", "l1"), ("local", "l2")]
    assert taken[6] is None  # "a" has 2 in flight: its cap; local sources have none
    queues.done("a")
    queues.pause("a", 5)
    assert queues.take() is None and queues.next_wake() == 5
    now[0] = 5.0
    assert queues.take() == ("a", "a2")
    with pytest.raises(ValueError, match="per_host must be at least 1, got 0"):
        HostQueues(per_host=0)


def test_failures_are_grouped_by_host_without_the_credentials_of_the_url(tmp_path):
    with LoopbackServer({}) as server:
        host = server.base_url.removeprefix("http://")
        meta, photos = shop_dataset(tmp_path, {1: f"http://reader:s3cret@{host}/gone.jpg"})
        summary = download(config(meta, photos, tmp_path))
    assert summary.failed_hosts == {host: 1}  # the summary is printed: no password in it
    assert "s3cret" not in "\n".join(summary.lines())
    [failure] = read_jsonl(tmp_path / "out" / "failures.jsonl")
    assert failure["host"] == host and failure["reason"] == "http 404: Not Found"


def test_a_host_that_asks_to_wait_over_max_wait_is_not_asked_again_in_this_run(tmp_path):
    gone = Route(JPEG, fail_times=99, fail_status=429, fail_headers={"Retry-After": "86400"})
    with LoopbackServer({"/0.jpg": gone, **{f"/{i}.jpg": Route(JPEG) for i in range(1, 5)}}) as server, \
            LoopbackServer({"/x.jpg": Route(JPEG)}) as other:
        meta, photos = shop_dataset(tmp_path, {0: server.url("0.jpg"), 1: server.url("1.jpg"), 2: server.url("2.jpg"),
                                               3: server.url("3.jpg"), 4: server.url("4.jpg"), 9: other.url("x.jpg")})
        summary = download(config(meta, photos, tmp_path, workers=1, per_host=1, max_wait=60))
    assert sum(server.hits.values()) == 1  # "come back tomorrow": the other 4 photos are not requested
    assert summary.saved == 1 and other.hits["/x.jpg"] == 1  # other hosts go on
    found = {r["photo"]: r["reason"] for r in read_jsonl(tmp_path / "out" / "failures.jsonl")}
    assert found[0] == "http 429: Retry-After 86400 s, over --max-wait"
    assert {found[i] for i in range(1, 5)} == {"not requested: the host asked to wait 86400 s (http 429), over --max-wait"}


def closed_port() -> int:
    """A loopback port nothing listens on: connecting is refused at once, as with a dead host."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_host_that_cannot_be_reached_is_given_up_after_some_photos_in_a_row(tmp_path):
    dead = f"127.0.0.1:{closed_port()}"
    with LoopbackServer({"/x.jpg": Route(JPEG)}) as live:
        urls = {i: f"http://{dead}/{i}.jpg" for i in range(30)} | {99: live.url("x.jpg")}
        meta, photos = shop_dataset(tmp_path, urls)
        summary = download(config(meta, photos, tmp_path, workers=1, per_host=1, give_up_after=5,
                                  fetch=FetchConfig(timeout=2, retries=0)))
    assert summary.saved == 1 and live.hits["/x.jpg"] == 1
    found = [r["reason"] for r in read_jsonl(tmp_path / "out" / "failures.jsonl")]
    assert sum(reason.startswith("connection error") for reason in found) == 5  # then no more requests
    assert found.count(f"not requested: {dead} could not be reached for 5 photos in a row") == 25
    assert summary.failed_hosts == {dead: 30}
