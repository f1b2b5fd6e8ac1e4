"""Distributor over Ray (``--engine ray``): Ray Data turns the images to embed into a dataset, decodes them
in CPU tasks, runs the network in ``map_batches`` actors (one per GPU, or one per node on a CPU-only
cluster; each builds its model in its constructor, as Keras models do not pickle), and streams the
finished rows back to this process, which appends them to the cache like the local engine does.

Ray's defaults make a decoding task whose worker died run again (3 times) and restart a network
actor that died (without limit); only the output of the attempt that finished is kept, so rows are
neither lost nor duplicated, and the cache writer skips ids it already has. Image files and a weights file must be at the same path on every node.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import ray

from .backbones import get_backbone
from .cache import IDENTITY
from .decoding import decode_chunk
from .extractor import Batch, Extractor, identity
from .precision import choose_precision

logger = logging.getLogger(__name__)

DECODE_CHUNK = 16  # images per decoding task
# decoding tasks' own runtime environment: their remote arguments then differ from the network actor's, which
# keeps Ray Data from fusing the two stages into one process that decodes, then embeds, each batch in turn
DECODE_ENV = {"env_vars": {"OMP_NUM_THREADS": "1", "S2S_STAGE": "decode"}}
CONNECT_TIMEOUT = 10.0  # seconds to reach a cluster's HOST:PORT before giving up


def check_address(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Fail fast on a ``HOST:PORT`` where no cluster listens (Ray itself retries for minutes).

    Raises:
        ConnectionError: naming the address.
    """
    host, _, port = address.rpartition(":")
    if address == "auto" or "://" in address or not host or not port.isdigit():
        return  # 'auto', ray:// clients and other forms are Ray's to check
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as error:
        raise ConnectionError(f"no Ray cluster at --ray-address {address}: {error}") from None


def decode_rows(batch: dict[str, np.ndarray], size: tuple[int, int], decode: str) -> dict[str, np.ndarray]:
    """A CPU task: ``id``/``path`` rows to ``id``/``pixels``/``error`` rows (zero pixels where unreadable)."""
    ids = [str(key) for key in batch["id"]]
    decoded = decode_chunk(list(zip(ids, (str(p) for p in batch["path"]))), size, decode)
    pixels = np.zeros((len(ids), *size, 3), np.uint8)
    errors = dict(decoded.failures)
    rows = {key: row for row, key in enumerate(decoded.ids)}
    for row, key in enumerate(ids):
        if key in rows:
            pixels[row] = decoded.pixels[rows[key]]
    return {"id": np.array(ids, dtype=object), "pixels": pixels,
            "error": np.array([errors.get(key, "") for key in ids], dtype=object)}


class Embedder:
    """A Ray actor: builds the network once, then turns decoded rows into ``id``/``vector``/``error`` rows."""

    def __init__(self, backbone: Any, weights: Any, batch_size: int, decode: str, precision: str,
                 expected: dict[str, Any]) -> None:
        self.extractor = Extractor(backbone, weights, batch_size, workers=1, decode=decode, precision=precision)
        found = self.extractor.describe()
        wrong = [key for key in IDENTITY if found.get(key) != expected.get(key)]
        if wrong:
            raise RuntimeError(f"this worker's network differs from the driver's in {wrong}: {found} vs {expected}")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        good = np.array([not error for error in batch["error"]], dtype=bool)
        vectors = np.zeros((len(good), self.extractor.dim), np.float32)
        if good.any():
            vectors[good] = self.extractor.predict(np.asarray(batch["pixels"])[good])
        return {"id": batch["id"], "vector": vectors, "error": batch["error"]}


@ray.remote
def _probe_precision(precision: str) -> str:
    return choose_precision(precision)


class RayEngine:
    """The ``ray`` engine of a ``BuildConfig``; starts a local Ray unless one runs or ``ray_address`` is set.

    ``decode_fn`` replaces the decoding task (tests use it to kill a worker).
    """

    def __init__(self, config: Any, decode_fn: Callable[..., dict[str, np.ndarray]] = decode_rows) -> None:
        self.config = config
        self.spec = get_backbone(config.backbone)
        self.decode_fn = decode_fn
        self._started = False
        if not ray.is_initialized():
            if config.ray_address:
                check_address(config.ray_address)
                ray.init(address=config.ray_address, logging_level=logging.WARNING)
            else:
                ray.init(num_cpus=config.cpus, include_dashboard=False, logging_level=logging.WARNING,
                         _node_ip_address="127.0.0.1")  # this machine only: loopback
            self._started = True
        ray.data.DataContext.get_current().enable_progress_bars = bool(config.progress)
        gpus = ray.cluster_resources().get("GPU", 0.0)
        self.gpus_per_worker = config.gpus_per_worker if config.gpus_per_worker is not None else (1.0 if gpus else 0.0)
        if self.gpus_per_worker > 0:
            self.actors = max(1, int(gpus // self.gpus_per_worker))
        else:
            self.actors = max(1, sum(1 for node in ray.nodes() if node.get("Alive")))
        precision = config.precision
        if precision == "auto":  # decided where the network runs, not on this driver
            precision = ray.get(_probe_precision.options(num_gpus=self.gpus_per_worker).remote(precision))
        self.identity = identity(self.spec, config.weights, self.spec.dim, config.decode, precision)
        logger.info("ray engine: %d actor(s), %s GPU each, precision %s", self.actors, self.gpus_per_worker, precision)

    def describe(self) -> dict[str, Any]:
        return self.identity

    def batches(self, items: Iterable[tuple[str, Path]]) -> Iterator[Batch]:
        rows = [{"id": key, "path": str(path)} for key, path in items]
        if not rows:
            return
        config = self.config
        data = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // DECODE_CHUNK)))
        # decoding runs in tasks apart from the network actor (DECODE_ENV), overlapping it: ray/local 0.66 fused
        data = data.map_batches(self.decode_fn, fn_kwargs={"size": tuple(self.spec.input_size), "decode": config.decode},
                                batch_size=DECODE_CHUNK, num_cpus=1, runtime_env=DECODE_ENV)
        data = data.map_batches(
            Embedder, batch_size=config.batch_size, compute=ray.data.ActorPoolStrategy(size=self.actors),
            fn_constructor_kwargs={"backbone": self.spec, "weights": config.weights, "batch_size": config.batch_size,
                                   "decode": config.decode, "precision": self.identity["precision"],
                                   "expected": self.identity},
            num_gpus=self.gpus_per_worker, num_cpus=1 if not self.gpus_per_worker else 0)
        for out in data.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
            ids = [str(key) for key in out["id"]]
            errors = [str(error) for error in out["error"]]
            good = [row for row, error in enumerate(errors) if not error]
            yield Batch([ids[row] for row in good], np.asarray(out["vector"], np.float32)[good],
                        [(ids[row], errors[row]) for row, error in enumerate(errors) if error])

    def close(self) -> None:
        if self._started:
            ray.shutdown()
            self._started = False
