"""``alzprog bench``: the performance comparisons of issue 7 (``make bench``)."""

from __future__ import annotations

import argparse

from alzprog.bench.report import TARGET_NAMES

COMPARISONS = ("forward", "training", "service", "gateway", "batching")


def register(groups: dict[str, argparse._SubParsersAction], top: argparse._SubParsersAction) -> None:
    """Add ``bench`` at the top level."""
    p = top.add_parser(
        "bench",
        help="benchmark inference, serving, caching, batching and training against the baselines",
        description=(
            "Run the comparisons of issue 7 on this machine (warm-up, repeats, p50/p95/p99, throughput, "
            "ratio to baseline) and write <out>/<date>-<host>.csv, .md and latest.json "
            f"(targets: {', '.join(TARGET_NAMES)}). Starts its own MLflow server and services on free ports; "
            "uses Redis DB 11 (ALZPROG_BENCH_REDIS_URL) under a unique key prefix."
        ),
    )
    p.add_argument("--out", default="benchmarks/results", help="results folder (default: %(default)s)")
    p.add_argument("--only", default=None,
                   help=f"comma list of comparisons to run (default: all): {','.join(COMPARISONS)}")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: tiny models, a few iterations and requests (figures meaningless)")
    p.add_argument("--repeats", type=int, default=20, help="timed repetitions per in-process case (default: %(default)s)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile of the generators (saves ~1 minute)")
    p.add_argument("--workdir", default=None, help="keep the MLflow store, logs and caches here instead of a temp folder")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from alzprog.bench.runner import parse_only, print_summary, run_bench

    try:
        parse_only(args.only)
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    if args.repeats < 1:
        print("error: --repeats must be at least 1")
        return 2
    command = "alzprog bench" + (" --quick" if args.quick else "") + (f" --only {args.only}" if args.only else "")
    result = run_bench(out_dir=args.out, only=args.only, quick=args.quick, repeats=args.repeats,
                       compile_generators=not args.no_compile, workdir=args.workdir, command=command)
    print_summary(result)
    return 1 if result.failures else 0
