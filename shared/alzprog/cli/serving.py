"""Command ``alzprog bootstrap``: train, register and promote demo champions when none exist."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(groups: dict[str, argparse._SubParsersAction], top: argparse._SubParsersAction) -> None:
    """Add the top-level ``bootstrap`` command."""
    p = top.add_parser(
        "bootstrap",
        help="give an empty registry working champions (phantom + quick models), under 10 minutes on a CPU",
        description="When the registry (MLFLOW_TRACKING_URI, else the local sqlite store) has no champion for "
        "the stage classifier or a transition generator: synthesise a phantom, split it by subject, train the "
        "missing quick models, register them and set the champion alias. Existing champions are kept. "
        "Prints the time of every step.",
    )
    p.add_argument("--plan", choices=("quick", "tiny"), default="quick", help="quick (make run) or tiny (tests, seconds)")
    p.add_argument("--split", type=Path, default=None, help="reuse this split folder instead of synthesising a phantom")
    p.add_argument("--work-dir", type=Path, default=None, help="where the phantom and training outputs go (default DATA/bootstrap)")
    p.add_argument("--force", action="store_true", help="train and promote all four even when champions exist")
    p.add_argument("--check", action="store_true", help="only report whether champions exist (exit 0 if all, 1 if not)")
    p.add_argument("--no-evaluate", action="store_true",
                   help="skip the held-out evaluation (the model card's figures); leave it for --card-figures")
    p.add_argument("--card-figures", action="store_true",
                   help="only run the evaluation a --no-evaluate bootstrap left pending")
    p.set_defaults(func=_bootstrap)


def _bootstrap(args: argparse.Namespace) -> int:
    from alzprog.bootstrap import bootstrap, champion_versions, evaluate_pending

    if args.check:
        versions = champion_versions()
        for name, version in versions.items():
            print(f"{name}: {'v' + version if version else 'no champion'}")
        return 0 if all(versions.values()) else 1
    if args.card_figures:
        if not evaluate_pending(args.work_dir):
            print("no evaluation pending")
        return 0
    report = bootstrap(args.plan, work_dir=args.work_dir, split_dir=args.split, force=args.force,
                       evaluate=not args.no_evaluate)
    for line in report.trained:
        print(f"trained: {line}")
    return 0
