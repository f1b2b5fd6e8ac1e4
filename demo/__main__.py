"""``python -m demo``: the whole pipeline on a generated Street2Shop sample served from 127.0.0.1.

download -> extract (VGG19 fc2) -> train the Siamese head -> index the shop photos -> query one street
photo -> evaluate top-k on the test split. Without reachable ImageNet weights it says so and runs with
random backbone weights, as a labelled smoke run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from downloader import DownloadConfig, FetchConfig, download, read_jsonl
from downloader.metadata import BBox

from .sample import SAMPLE_CATEGORIES, SampleConfig, make_sample, write_photos_txt
from .server import LoopbackServer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m demo",
        description="Make a small synthetic Street2Shop sample, serve it on 127.0.0.1 and run the whole pipeline "
                    "on it: download, extract, train, index, query, evaluate. Rerunning resumes every stage.")
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="working folder (default: demo-output)")
    parser.add_argument("--backbone", default="vgg19", help="backbone (default: vgg19)")
    parser.add_argument("--weights", default="imagenet",
                        help="imagenet (falls back to random weights, labelled, when unreachable), none, or PATH")
    parser.add_argument("--epochs", type=int, default=15, help="head training epochs (default: 15)")
    return parser


def banner(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run_download(root: Path, out: Path) -> Path:
    with LoopbackServer(root=root) as server:
        photos = write_photos_txt(root, server.base_url)
        banner(f"download: the sample served at {server.base_url}")
        summary = download(DownloadConfig(meta=root / "meta", photos=photos, out=out / "images",
                                          categories=SAMPLE_CATEGORIES, workers=8, progress=True,
                                          fetch=FetchConfig(timeout=5, retries=1, backoff=0.05)))
    for line in summary.lines():
        print(line)
    return out / "images" / "manifest.jsonl"


def make_extractor(backbone: str, weights: str):
    from embeddings import Extractor, WeightsUnavailableError

    chosen = None if weights.lower() == "none" else weights
    try:
        return Extractor(backbone, chosen), chosen is not None
    except WeightsUnavailableError as error:
        print(f"!! {error}")
        print("!! SMOKE RUN: continuing with random backbone weights; the accuracy below means nothing.")
        return Extractor(backbone, None), False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    out = args.out
    root = out / "sample"
    if not (root / "ids.json").exists():
        banner(f"sample: generating a synthetic Street2Shop sample in {root}")
        make_sample(root, SampleConfig())
    manifest = run_download(root, out)

    from embeddings import BuildConfig, HeadConfig, TrainConfig, build, train
    from retrieval import SearchEngine, build_index
    from retrieval.topk import evaluate, write_report
    from retrieval.sheet import contact_sheet

    banner(f"extract: {args.backbone} vectors of every image")
    extractor, real_weights = make_extractor(args.backbone, args.weights)
    vectors = out / ("vectors.h5" if real_weights else "vectors-random.h5")
    print(f"into {vectors}")
    summary = build(BuildConfig(out=vectors, manifest=manifest, progress=True), extractor)
    for line in summary.lines():
        print(line)

    banner("train: the Siamese head (triplet loss, semi-hard mining)")
    head = out / ("head" if real_weights else "head-random")
    result = train(TrainConfig(vectors=vectors, manifest=manifest, out=head, epochs=args.epochs, batch_size=32,
                               val_fraction=0.25, patience=args.epochs, head=HeadConfig(hidden=(256,), dim=64)))
    print(f"validation top-1 / top-10 / pair accuracy: raw {result.raw['top1']:.3f} / {result.raw['top10']:.3f} / "
          f"{result.raw['pair_accuracy']:.3f}; head {result.head['top1']:.3f} / {result.head['top10']:.3f} / "
          f"{result.head['pair_accuracy']:.3f}  (curves: {head / 'training.png'})")

    banner("index: the shop photos through the head")
    index_path = out / ("index.h5" if real_weights else "index-random.h5")
    index, _ = build_index(vectors, manifest, index_path, head)
    print(f"{len(index)} shop photos in {index_path}")

    street = next(r for r in read_jsonl(manifest) if r["kind"] == "street" and r["split"] == "test")
    photo = root / "images" / f"{street['photo']}.jpg"
    box = street["bbox"]
    banner(f"query: street photo {photo} (product {street['product']}), box {box}")
    print(f"   (the same from the shell: python -m retrieval.query {photo} --index {index_path} "
          f"--bbox {box['left']},{box['top']},{box['width']},{box['height']} --sheet {out / 'sheet.png'})")
    engine = SearchEngine.load(index_path, extractor=extractor)
    bbox = BBox(**box)
    matches = engine.search(photo, k=10, bbox=bbox)
    print(f"{'rank':>4}  {'product':>8}  {'distance':>8}  {'score':>5}  shop photo")
    for match in matches:
        mark = "  <- the right product" if match.product == street["product"] else ""
        print(f"{match.rank:>4}  {match.product:>8}  {match.distance:8.4f}  {match.score:5.2f}  {match.path}{mark}")
    from embeddings.extraction.preprocess import to_pil

    contact_sheet(to_pil(photo, bbox), matches, out / "sheet.png")
    print(f"contact sheet: {out / 'sheet.png'}")

    banner("evaluate: top-k accuracy on the test split, within category")
    report = evaluate(index_path, vectors, manifest)
    print(report.table())
    metrics, plot = write_report(report, out / "report")
    print(f"wrote {metrics} and {plot}")
    if not real_weights:
        print("\n!! This was a SMOKE RUN with random backbone weights: pass --weights PATH to a local VGG19 weights "
              "file for meaningful figures.")
    (out / "demo.json").write_text(json.dumps({"real_weights": real_weights, "validation": {
        "raw": result.raw, "head": result.head}, "test": report.to_dict()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
