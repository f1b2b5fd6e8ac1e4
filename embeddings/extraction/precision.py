"""The network's compute precision: ``float32``, ``bfloat16``, ``float16``, or ``auto`` (bfloat16 where the
hardware runs it natively, float32 elsewhere). Vectors are stored as float32 whatever the precision.

bfloat16 is native on CPUs with AMX (``amx_bf16``) or AVX512-BF16 (``avx512_bf16``) and on GPUs of
compute capability 8.0 and later (A100, H100); elsewhere it is emulated and slower than float32.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Literal

logger = logging.getLogger(__name__)

Precision = Literal["float32", "bfloat16", "float16", "auto"]
PRECISIONS: tuple[str, ...] = ("float32", "bfloat16", "float16", "auto")
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
# The Keras dtype policy of each concrete precision.
POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def check_precision(precision: str) -> str:
    """Validate a precision name; ValueError naming it otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    return precision


def cpu_flags(cpuinfo: str) -> set[str]:
    """The CPU feature flags listed in ``/proc/cpuinfo`` text (the union over cores)."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


def _read_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def gpu_capabilities() -> list[tuple[int, int]]:
    """Compute capabilities of the GPUs the Keras backend sees (empty on a CPU-only machine)."""
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            details = [tf.config.experimental.get_device_details(d) for d in tf.config.list_physical_devices("GPU")]
            return [tuple(d["compute_capability"]) for d in details if "compute_capability" in d]
        if backend == "torch":
            import torch

            return [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]
        if backend == "jax":
            import jax

            return [tuple(int(p) for p in str(d.compute_capability).split(".")) for d in jax.devices()
                    if d.platform == "gpu"]
    except Exception as error:  # noqa: BLE001 (a driver problem must not stop a CPU run)
        logger.warning("could not query the GPUs (%s); assuming none", error)
    return []


def choose_precision(precision: str, cpuinfo: str | None = None,
                     gpus: Iterable[tuple[int, int]] | None = None) -> str:
    """Resolve ``auto``: bfloat16 on bf16 GPUs (capability >= 8.0) or AMX / AVX512-BF16 CPUs, else float32.

    Args:
        cpuinfo: ``/proc/cpuinfo`` text (read from the machine when None).
        gpus: GPU compute capabilities (asked of the Keras backend when None).
    """
    if check_precision(precision) != "auto":
        return precision
    gpus = list(gpu_capabilities() if gpus is None else gpus)
    if gpus:
        return "bfloat16" if all(major >= 8 for major, _ in gpus) else "float32"
    flags = cpu_flags(_read_cpuinfo() if cpuinfo is None else cpuinfo)
    return "bfloat16" if flags & BF16_CPU_FLAGS else "float32"
