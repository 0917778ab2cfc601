"""Commands ``alzprog data index``, ``alzprog data split`` and ``alzprog eda``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(groups: dict[str, argparse._SubParsersAction], top: argparse._SubParsersAction) -> None:
    """Add ``index`` and ``split`` to the ``data`` group and ``eda`` to the top level."""
    data = groups["data"]

    p = data.add_parser(
        "index",
        help="index a Kaggle OASIS folder (ROOT/Data/<Stage>/*.jpg) into a manifest CSV",
        description="One manifest row per decodable image: path, stage, stage_index, subject, session, "
        "acquisition, slice. Undecodable files are listed in <manifest>.skipped.csv and skipped.",
    )
    p.add_argument("root", type=Path, help="dataset root (the folder holding Data/, or Data/ itself)")
    p.add_argument("--out", type=Path, required=True, help="manifest CSV to write")
    p.add_argument("--workers", type=int, default=None, help="decode-check threads (default: 2 x CPUs, max 16)")
    p.set_defaults(func=_index)

    p = data.add_parser(
        "split",
        help="subject-level, stage-stratified train/val/test split of a manifest",
        description="Writes train.csv, val.csv, test.csv and split_report.json; all images of a subject "
        "stay on one side.",
    )
    p.add_argument("manifest", type=Path, help="manifest CSV from `alzprog data index`")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.set_defaults(func=_split)

    p = top.add_parser(
        "eda",
        help="exploratory data analysis: class balance, mean images, differences, histograms, SSIM",
    )
    p.add_argument("root", type=Path, help="dataset root (Kaggle layout or a phantom root)")
    p.add_argument("--out", type=Path, required=True, help="output folder for PNGs and summary.md/json")
    p.add_argument("--max-per-stage", type=int, default=400, help="images per stage used for the image statistics")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-stage image sample")
    p.add_argument("--workers", type=int, default=None)
    p.set_defaults(func=_eda)


def _index(args: argparse.Namespace) -> int:
    from alzprog.data.manifest import build_manifest, skipped_csv_path, summarize

    frame = build_manifest(args.root, args.out, workers=args.workers)
    print(summarize(frame))
    skipped = frame.attrs.get("skipped", [])
    if skipped:
        print(f"skipped {len(skipped)} undecodable file(s) (listed in {skipped_csv_path(args.out)}):")
        for s in skipped:
            print(f"  {s['path']}: {s['reason']}")
    print(f"manifest: {args.out}")
    return 0


def _split(args: argparse.Namespace) -> int:
    from alzprog.data.split import REPORT_NAME, split_manifest

    report = split_manifest(
        args.manifest, args.out, seed=args.seed, test_fraction=args.test_fraction, val_fraction=args.val_fraction
    )
    print(report.describe())
    print(f"split: {args.out} (report {args.out / REPORT_NAME}, sha256 {report.split_sha256[:16]})")
    return 0


def _eda(args: argparse.Namespace) -> int:
    from alzprog.data.eda import run_eda

    summary = run_eda(args.root, args.out, max_per_stage=args.max_per_stage, seed=args.seed, workers=args.workers)
    print((args.out / "summary.md").read_text())
    print(json.dumps({"out": str(args.out), "figures": summary.get("figures", [])}, indent=2))
    return 0
