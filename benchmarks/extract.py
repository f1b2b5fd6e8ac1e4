"""Feature extraction throughput: the build pipeline vs the bare network vs a naive per-image loop.

    python benchmarks/extract.py [--images 64] [--batch-size 32] [--backbone vgg19] [--size 480x640]
        [--precision float32] [--decode exact] [--engines local,ray] [--decode-images 64]
        [--cosine-images 16] [--cosine-backbones mobilenet_v2,vgg19] [--bf16-images 32] [--bf16-vgg-images 4]

In one run, on the same generated JPEG files:
(a) ``embeddings.build`` end to end (decode, resize, network, HDF5 cache);
(b) the bare network on already decoded tensors, same batch size;
(c) the research scripts' loop: load one image, ``predict`` on it, keep the vector, save at the end;
(d) decode-only images/s on one core for ``exact`` and ``fast`` decoding;
(e) each engine's whole build (model construction included; Ray started beforehand) and ray/local;
(f) cosine of ``fast`` to ``exact`` vectors, beside the cosine between different photos;
(g) cosine of bfloat16 to float32 vectors, and how often top-10 neighbours agree.
Weights are random (seeded): there are no ImageNet weights without internet.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embeddings import BuildConfig, Extractor, build  # noqa: E402


def make_photos(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    """Photo-like JPEGs (smooth shapes plus sensor noise), so decoding costs what real photos cost."""
    rng = np.random.default_rng(0)
    height, width = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    paths = []
    for index in range(count):
        a, b, c = rng.uniform(0.005, 0.05, size=3)
        pixels = np.stack([127 + 100 * np.sin(a * x + index), 127 + 100 * np.cos(b * y),
                           127 + 100 * np.sin(c * (x + y))], axis=-1)
        pixels += rng.normal(0, 12, size=pixels.shape)
        path = folder / f"{index:05d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def naive(extractor: Extractor, paths: list[Path], out: Path) -> None:
    """One image at a time through ``keras.utils.load_img`` and ``model.predict``, as the old scripts did."""
    import h5py
    import keras

    vectors = []
    for path in paths:
        image = keras.utils.load_img(path, target_size=extractor.spec.input_size)
        x = keras.utils.img_to_array(image, dtype="uint8")[None]  # preprocess_input runs inside the model
        vectors.append(extractor.model.predict(x, verbose=0)[0])
    with h5py.File(out, "w") as handle:
        handle["vectors"] = np.stack(vectors)


def decode_rate(paths: list[Path], size: tuple[int, int], mode: str) -> float:
    """Images/s of decoding and resizing in this one process (one core)."""
    from embeddings.extraction.preprocess import load_pixels

    load_pixels(paths[0], size, mode)
    start = time.perf_counter()
    for path in paths:
        load_pixels(path, size, mode)
    return len(paths) / (time.perf_counter() - start)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two matrices."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def cross_cosine(vectors: np.ndarray) -> float:
    """The highest cosine between two different photos' vectors (how close unrelated vectors already are)."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -1)
    return float(similarity.max())


def top10_agreement(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """Mean share of each photo's k nearest others (cosine) found by both sets of vectors."""
    from scipy.spatial.distance import cdist

    def neighbours(v: np.ndarray) -> np.ndarray:
        distance = cdist(v, v, "cosine")
        np.fill_diagonal(distance, np.inf)
        return np.argsort(distance, axis=1, kind="stable")[:, :k]

    na, nb = neighbours(a), neighbours(b)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(na, nb)]))


def decode_figures(paths: list[Path], backbones: list[str], count: int) -> dict[str, object]:
    """(f): fast vs exact vectors per backbone on ``count`` photos."""
    from embeddings.extraction.preprocess import load_pixels

    figures: dict[str, object] = {}
    for name in backbones:
        extractor = Extractor(name, weights=None, batch_size=8)
        subset = paths[:count]
        size = extractor.spec.input_size
        exact = np.concatenate([extractor.predict(np.stack([load_pixels(p, size, "exact") for p in subset[i:i + 8]]))
                                for i in range(0, len(subset), 8)])
        fast = np.concatenate([extractor.predict(np.stack([load_pixels(p, size, "fast") for p in subset[i:i + 8]]))
                               for i in range(0, len(subset), 8)])
        figures[name] = {"photos": len(subset), "worst_cosine_fast_vs_exact": float(cosines(fast, exact).min()),
                         "highest_cosine_between_different_photos": cross_cosine(exact)}
    return figures


def precision_figures(paths: list[Path], backbone: str, count: int) -> dict[str, object]:
    """(g): bfloat16 vs float32 vectors on ``count`` photos (bfloat16 is emulated on CPUs without AMX)."""
    vectors = {}
    for precision in ("float32", "bfloat16"):
        extractor = Extractor(backbone, weights=None, batch_size=8, precision=precision)
        vectors[precision] = extractor.embed(paths[:count])
    result = {"photos": count, "worst_cosine_bf16_vs_f32": float(cosines(vectors["bfloat16"], vectors["float32"]).min())}
    if count > 10:
        result["top10_agreement"] = top10_agreement(vectors["bfloat16"], vectors["float32"])
    return result


def engine_figures(root: Path, args: argparse.Namespace, engines: list[str]) -> dict[str, object]:
    """(e): each engine's whole build of the same photos, the network built inside (Ray started first)."""
    figures: dict[str, object] = {}
    if "ray" in engines:
        import ray

        start = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING",
                 _node_ip_address="127.0.0.1")
        figures["ray_start_s"] = time.perf_counter() - start
    for engine in engines:
        config = BuildConfig(out=root / f"{engine}.h5", images=root / "photos", backbone=args.backbone,
                             weights=None, batch_size=args.batch_size, decode=args.decode,
                             precision=args.precision, engine=engine)
        start = time.perf_counter()
        summary = build(config)
        figures[f"{engine}_images_per_s"] = summary.computed / (time.perf_counter() - start)
    if "ray" in engines and "local" in engines:
        figures["ray_over_local"] = figures["ray_images_per_s"] / figures["local_images_per_s"]
    return figures


def pipeline_figures(root: Path, args: argparse.Namespace, paths: list[Path]) -> dict[str, float]:
    """(a), (b), (c) on the same photos and the same network."""
    extractor = Extractor(args.backbone, weights=None, batch_size=args.batch_size, decode=args.decode,
                          precision=args.precision)
    warm = np.stack([extractor.prepare(p) for p in paths[: args.batch_size]])
    extractor.predict(warm)  # compile for the full batch shape
    extractor.predict(warm[:1])
    tail = args.images % args.batch_size
    if tail:
        extractor.predict(warm[:tail])
    start = time.perf_counter()
    summary = build(BuildConfig(out=root / "v.h5", images=root / "photos", batch_size=args.batch_size,
                                decode=args.decode, precision=args.precision), extractor)
    pipeline = args.images / (time.perf_counter() - start)
    assert summary.computed == args.images
    inputs = np.stack([extractor.prepare(p) for p in paths])
    start = time.perf_counter()
    for i in range(0, len(inputs), args.batch_size):
        extractor.predict(inputs[i:i + args.batch_size])
    bare = args.images / (time.perf_counter() - start)
    subset = paths[: args.naive_images or args.images]
    naive(extractor, subset[:2], root / "warm.h5")
    start = time.perf_counter()
    naive(extractor, subset, root / "naive.h5")
    loop = len(subset) / (time.perf_counter() - start)
    return {"pipeline_images_per_s": pipeline, "bare_network_images_per_s": bare, "naive_loop_images_per_s": loop,
            "pipeline_over_bare": pipeline / bare, "pipeline_over_naive": pipeline / loop}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--backbone", default="vgg19")
    parser.add_argument("--size", default="480x640", help="HEIGHTxWIDTH of the generated photos")
    parser.add_argument("--naive-images", type=int, default=None, help="images for (c) (default: all)")
    parser.add_argument("--precision", default="float32", help="precision of (a), (b) and (e)")
    parser.add_argument("--decode", default="exact", help="decoding of (a) and (e)")
    parser.add_argument("--engines", default="local,ray", help="engines for (e)")
    parser.add_argument("--decode-images", type=int, default=64, help="photos for (d)")
    parser.add_argument("--cosine-images", type=int, default=16, help="photos for (f)")
    parser.add_argument("--cosine-backbones", default="mobilenet_v2,vgg19", help="backbones for (f)")
    parser.add_argument("--bf16-images", type=int, default=32, help="photos for (g) with mobilenet_v2")
    parser.add_argument("--bf16-vgg-images", type=int, default=4, help="photos for (g) with vgg19")
    parser.add_argument("--sections", default="pipeline,decode,engines,cosine,bf16",
                        help="which of (a-c) pipeline, (d) decode, (e) engines, (f) cosine, (g) bf16 to run")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.split("x"))

    import keras

    sections = set(args.sections.split(","))
    figures: dict[str, object] = {"backend": keras.backend.backend(), "backbone": args.backbone, "images": args.images,
                                  "batch_size": args.batch_size, "photo_size": args.size, "cpus": os.cpu_count(),
                                  "precision": args.precision, "decode": args.decode}
    print(f"backend {figures['backend']}, {args.backbone}, {args.images} photos of {args.size}, "
          f"batch {args.batch_size}, {args.precision}, decode {args.decode}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        (root / "photos").mkdir()
        (root / "decode").mkdir()
        paths = make_photos(root / "photos", args.images, size)
        many = make_photos(root / "decode", max(args.decode_images, args.cosine_images, args.bf16_images), size)
        if "pipeline" in sections:
            found = pipeline_figures(root, args, paths)
            figures.update(found)
            print(f"(a) build pipeline {found['pipeline_images_per_s']:.2f} images/s; (b) bare network "
                  f"{found['bare_network_images_per_s']:.2f}; (c) naive loop {found['naive_loop_images_per_s']:.2f}; "
                  f"(a)/(b) = {found['pipeline_over_bare']:.2f}; (a)/(c) = {found['pipeline_over_naive']:.2f}")
        if "decode" in sections:
            rates = {mode: decode_rate(many[:args.decode_images], (224, 224), mode) for mode in ("exact", "fast")}
            figures["decode_images_per_s_one_core"] = rates
            print(f"(d) decode only, one core: exact {rates['exact']:.1f}, fast {rates['fast']:.1f} images/s "
                  f"({rates['fast'] / rates['exact']:.2f}x)")
        if "engines" in sections:
            figures["engines"] = engine_figures(root, args, [e for e in args.engines.split(",") if e])
            print(f"(e) engines: {json.dumps(figures['engines'])}")
        if "cosine" in sections:
            figures["fast_vs_exact"] = decode_figures(many, args.cosine_backbones.split(","), args.cosine_images)
            print(f"(f) fast vs exact: {json.dumps(figures['fast_vs_exact'])}")
        if "bf16" in sections:
            counts = {"mobilenet_v2": args.bf16_images, "vgg19": args.bf16_vgg_images}
            figures["bf16_vs_f32"] = {name: precision_figures(many, name, count) for name, count in counts.items() if count}
            print(f"(g) bfloat16 vs float32: {json.dumps(figures['bf16_vs_f32'])}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
