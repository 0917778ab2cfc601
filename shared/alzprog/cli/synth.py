"""Command ``alzprog data synth``: write the synthetic OASIS phantom."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(groups: dict[str, argparse._SubParsersAction], top: argparse._SubParsersAction) -> None:
    """Add ``synth`` to the ``data`` group."""
    p = groups["data"].add_parser(
        "synth",
        help="synthesise an OASIS-like phantom from the MNI152 template, with a longitudinal ground truth",
        description="Writes DIR/Data/<Stage>/OAS1_<id>_MR1_mpr-1_<slice>.jpg (Kaggle layout, each subject at "
        "its own stage), DIR/longitudinal/<subject>/ (the same slices at all four stages), "
        "DIR/longitudinal/longitudinal.csv, DIR/subjects.csv and DIR/phantom_summary.json, then prints "
        "the figures measured on the result. Same seed, same bytes.",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (an existing phantom there is replaced)")
    p.add_argument("--subjects", type=int, default=40, help="number of synthetic subjects (>= 8; default 40)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--mix",
        choices=("oasis", "balanced"),
        default="oasis",
        help="stage mix: OASIS-1 proportions 266:58:21:2 (default) or balanced; at least 2 subjects per stage",
    )
    p.add_argument("--slices", type=int, default=8, help="axial slices per subject, indices in 100-160 (default 8)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: up to 2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--figures", type=Path, default=None, help="also write the documentation figures (PNG) here")
    p.add_argument("--real", type=Path, default=None, help="a real slice to show beside a phantom slice (with --figures)")
    p.set_defaults(func=_synth)


def _synth(args: argparse.Namespace) -> int:
    from alzprog.data.phantom import synthesize

    try:
        summary = synthesize(
            args.out, args.subjects, args.seed, mix=args.mix, slices_per_subject=args.slices,
            workers=args.workers, progress=not args.no_progress,
        )
    except (ValueError, FileExistsError) as exc:
        print(f"error: {exc}")
        return 2
    print(summary.describe())
    if args.figures is not None:
        from alzprog.data.phantom import save_figures

        for path in save_figures(args.out, args.figures, real_image=args.real):
            print(f"figure: {path}")
    return 0
