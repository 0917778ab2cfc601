"""Command ``alzprog predict``: batch scoring of files, folders, manifests and NIfTI volumes."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from pathlib import Path


def register(groups: dict[str, argparse._SubParsersAction], top: argparse._SubParsersAction) -> None:
    """Add ``predict`` to the top level."""
    p = top.add_parser(
        "predict",
        help="stage every slice and subject of files, folders, a manifest CSV or NIfTI volumes into a CSV",
        description="Scores every slice with the registry champion (or --model) and soft-votes each subject. "
        "Resumes from the rows already in --out; unreadable files go to <out>.errors.csv. Under torchrun "
        "each rank scores its own subjects into <out>.part-R-of-N.csv and rank 0 merges them.",
    )
    p.add_argument("paths", nargs="*", type=Path, help="image files, folders, a manifest CSV, .nii/.nii.gz volumes")
    p.add_argument("--out", type=Path, required=True, help="slice CSV to write (subjects: <out>.subjects.csv)")
    p.add_argument("--model", default=None,
                   help="model folder, NAME:VERSION, NAME@ALIAS or models:/ URI (default: the served champion)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=None, help="decode processes (default: CPUs - 1, at least 1)")
    p.add_argument("--max-slices", type=int, default=None, help="slices scored per NIfTI volume")
    p.add_argument("--limit", type=int, default=None, help="stop after this many new files (resumable)")
    p.add_argument("--merge", action="store_true", help="only join the part files of a multi-rank run")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_predict)


def _predict(args: argparse.Namespace) -> int:
    from alzprog import batch_predict as bp

    if args.merge:
        out, errors, subjects = bp.merge_parts(args.out)
        print(json.dumps({"out": str(out), "errors": str(errors), "subjects": str(subjects)}))
        return 0
    if not args.paths:
        print("alzprog predict: give at least one PATH (or --merge)")
        return 2
    rank, world = bp.dist_env()
    group = world > 1 and "MASTER_ADDR" in os.environ
    if group:  # under torchrun: a gloo group only to wait for every rank before the merge
        import datetime

        import torch.distributed as dist

        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=24))
    try:
        summary = bp.predict_archive(
            args.paths, args.out, model=args.model, batch_size=args.batch_size, workers=args.workers,
            max_slices=args.max_slices, limit=args.limit, progress=not args.no_progress,
        )
        result = asdict(summary)
        if group:
            dist.barrier()
            if rank == 0:
                out, errors, subjects = bp.merge_parts(args.out, world)
                result.update(merged=str(out), merged_errors=str(errors), subjects=str(subjects))
        print(json.dumps(result))
    finally:
        if group:
            dist.destroy_process_group()
    return 0
