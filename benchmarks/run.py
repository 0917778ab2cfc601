"""``python -m benchmarks.run`` (``make bench``): the performance comparisons on this machine.

Run from the repository root: the benchmarks import the library and the services from the
checkout, and start the services as ``python -m services.<name>`` beside it.
"""

from __future__ import annotations

import argparse
import logging
import sys

from benchmarks.report import TARGET_NAMES
from benchmarks.runner import COMPARISONS, parse_only, print_summary, run_bench


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=(
            "Benchmark inference, serving, caching, batching and training against the baselines on this "
            "machine (warm-up, repeats, p50/p95/p99, throughput, ratio to baseline) and write "
            f"<out>/<date>-<host>.csv, .md and latest.json (targets: {', '.join(TARGET_NAMES)}). Starts its own "
            "MLflow server and services on free ports; uses Redis DB 11 (ALZPROG_BENCH_REDIS_URL) under a "
            "unique key prefix."
        ),
    )
    p.add_argument("--out", default="benchmarks/results", help="results folder (default: %(default)s)")
    p.add_argument("--only", default=None,
                   help=f"comma list of comparisons to run (default: all): {','.join(COMPARISONS)}")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: tiny models, a few iterations and requests (figures meaningless)")
    p.add_argument("--repeats", type=int, default=20, help="timed repetitions per in-process case (default: %(default)s)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile of the generators")
    p.add_argument("--workdir", default=None, help="keep the MLflow store, logs and caches here instead of a temp folder")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        parse_only(args.only)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.repeats < 1:
        print("error: --repeats must be at least 1", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    command = "python -m benchmarks.run" + (" --quick" if args.quick else "") + (f" --only {args.only}" if args.only else "")
    result = run_bench(out_dir=args.out, only=args.only, quick=args.quick, repeats=args.repeats,
                       compile_generators=not args.no_compile, workdir=args.workdir, command=command)
    print_summary(result)
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
