"""Feature extraction throughput: the build pipeline vs the bare network vs a naive per-image loop.

    python benchmarks/extract.py [--images 64] [--batch-size 32] [--backbone vgg19] [--size 480x640]

In one run, on the same generated JPEG files:
(a) ``embeddings.build`` end to end (decode, resize, network, HDF5 cache);
(b) the bare network on already decoded tensors, same batch size;
(c) the research scripts' loop: load one image, ``predict`` on it, keep the vector, save at the end.
Prints images/s of each and the ratios (a)/(b) (pipeline overhead) and (a)/(c).
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

    from embeddings.extraction.backbones import preprocess_function

    preprocess = preprocess_function(extractor.spec)
    vectors = []
    for path in paths:
        image = keras.utils.load_img(path, target_size=extractor.spec.input_size)
        x = preprocess(keras.utils.img_to_array(image)[None])
        vectors.append(extractor.model.predict(x, verbose=0)[0])
    with h5py.File(out, "w") as handle:
        handle["vectors"] = np.stack(vectors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--backbone", default="vgg19")
    parser.add_argument("--size", default="480x640", help="HEIGHTxWIDTH of the generated photos")
    parser.add_argument("--naive-images", type=int, default=None, help="images for (c) (default: all)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.split("x"))

    import keras

    extractor = Extractor(args.backbone, weights=None, batch_size=args.batch_size)
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        (root / "photos").mkdir()
        paths = make_photos(root / "photos", args.images, size)
        warm = np.stack([extractor.prepare(p) for p in paths[: args.batch_size]])
        extractor.predict(warm)  # compile for the full batch shape
        extractor.predict(warm[:1])
        tail = args.images % args.batch_size
        if tail:
            extractor.predict(warm[:tail])

        start = time.perf_counter()
        summary = build(BuildConfig(out=root / "v.h5", images=root / "photos", batch_size=args.batch_size),
                        extractor)
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

    figures = {"backend": keras.backend.backend(), "backbone": args.backbone, "images": args.images,
               "batch_size": args.batch_size, "photo_size": args.size, "cpus": os.cpu_count(),
               "pipeline_images_per_s": pipeline, "bare_network_images_per_s": bare,
               "naive_loop_images_per_s": loop, "pipeline_over_bare": pipeline / bare,
               "pipeline_over_naive": pipeline / loop}
    print(f"backend {figures['backend']}, {args.backbone}, {args.images} photos of {args.size}, "
          f"batch {args.batch_size}, {os.cpu_count()} CPUs")
    print(f"(a) build pipeline:   {pipeline:9.1f} images/s")
    print(f"(b) bare network:     {bare:9.1f} images/s")
    print(f"(c) naive loop:       {loop:9.1f} images/s")
    print(f"(a)/(b) = {pipeline / bare:.2f}   (a)/(c) = {pipeline / loop:.2f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
