"""``make bench``: run the benchmark comparisons in one process tree and write the results.

Order matters on a small machine: the in-process comparisons (forward, training) run first,
before any service exists; then one benchmark-only MLflow server is started, untrained
production models are registered in it, and the service comparisons run against
subprocesses that are stopped as soon as their comparison is done.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.harness import Measurement, fill_ratios
from benchmarks.report import TARGET_NAMES, evaluate_targets, markdown_table, targets_table, write_results

log = logging.getLogger(__name__)

COMPARISONS = ("forward", "training", "service", "gateway", "batching")
SERVICE_COMPARISONS = ("service", "gateway", "batching")


@dataclass
class BenchResult:
    """Everything a run produced."""

    rows: list[Measurement]
    targets: dict[str, float | None]
    notes: list[str]
    paths: dict[str, Path]
    seconds: float
    failures: dict[str, str] = field(default_factory=dict)


def parse_only(only: str | None) -> tuple[str, ...]:
    """``"forward,training"`` -> the comparisons to run (all when empty); unknown names raise."""
    if not only:
        return COMPARISONS
    wanted = tuple(x.strip() for x in only.split(",") if x.strip())
    unknown = [w for w in wanted if w not in COMPARISONS]
    if unknown:
        raise ValueError(f"unknown comparison(s) {unknown}; choose from {', '.join(COMPARISONS)}")
    return tuple(c for c in COMPARISONS if c in wanted)


def run_bench(
    *,
    out_dir: str | Path = "benchmarks/results",
    only: str | None = None,
    quick: bool = False,
    repeats: int = 20,
    compile_generators: bool = True,
    workdir: str | Path | None = None,
    command: str = "alzprog bench",
) -> BenchResult:
    """Run the selected comparisons, write CSV + markdown + ``latest.json`` into ``out_dir``.

    A comparison that fails is recorded (its targets stay unmeasured, the error goes into the
    notes) and the others still run: one broken service must not hide the other figures.
    """
    selected = parse_only(only)
    t_start = time.perf_counter()
    for noisy in ("httpx", "httpcore", "mlflow", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)  # one line per request would drown the table
    rows: list[Measurement] = []
    targets: dict[str, float | None] = {name: None for name in TARGET_NAMES}
    notes: list[str] = []
    failures: dict[str, str] = {}
    if quick:
        notes.append("--quick: smoke-test run with tiny models and a handful of iterations; "
                     "the figures say nothing about production performance")

    def attempt(name: str, fn: Any) -> None:
        t0 = time.perf_counter()
        log.info("== %s ==", name)
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - record, carry on with the other comparisons
            log.exception("comparison %s failed", name)
            failures[name] = f"{type(exc).__name__}: {exc}"
            notes.append(f"{name}: FAILED ({type(exc).__name__}: {str(exc)[:300]})")
            return
        new_rows, new_targets, *rest = result
        rows.extend(new_rows)
        targets.update({k: v for k, v in new_targets.items() if v is not None})
        if rest:
            notes.extend(rest[0])
        log.info("== %s done in %.0fs ==", name, time.perf_counter() - t0)

    tmp = tempfile.TemporaryDirectory(prefix="alzprog-bench-") if workdir is None else None
    wd = Path(tmp.name) if tmp else Path(workdir)  # type: ignore[union-attr]
    try:
        if "forward" in selected:
            from benchmarks import forward

            attempt("forward", lambda: (forward.run(quick=quick, repeats=repeats, compile_generators=compile_generators), {}))
        if "training" in selected:
            from benchmarks import training

            attempt("training", lambda: training.run(quick=quick, workdir=wd / "training"))
        if any(c in selected for c in SERVICE_COMPARISONS):
            from benchmarks.stack import BenchStack

            with BenchStack(wd / "stack") as stack:
                try:
                    stack.start_mlflow()
                    stack.register_production_models(with_generators="gateway" in selected, tiny=quick)
                except Exception as exc:  # noqa: BLE001
                    log.exception("could not start the benchmark stack")
                    for c in SERVICE_COMPARISONS:
                        if c in selected:
                            failures[c] = f"stack: {type(exc).__name__}: {exc}"
                    notes.append(f"service comparisons not run: the stack failed ({type(exc).__name__}: {str(exc)[:300]})")
                else:
                    if "service" in selected:
                        from benchmarks import services

                        attempt("service", lambda: services.run(stack, quick=quick, repeats=repeats))
                    if "gateway" in selected:
                        from benchmarks import gateway

                        attempt("gateway", lambda: gateway.run(stack, quick=quick, repeats=repeats))
                        for name in ("gateway", "generator"):
                            stack.stop(name)  # free the CPUs before batching is measured
                    if "batching" in selected:
                        from benchmarks import batching

                        attempt("batching", lambda: batching.run(stack, quick=quick))
    finally:
        if tmp is not None:
            tmp.cleanup()

    fill_ratios(rows)
    seconds = time.perf_counter() - t_start
    notes.append(f"total run time {seconds:.0f} s; comparisons: {', '.join(selected)}")
    clean = {k: (v if v is not None and math.isfinite(v) else None) for k, v in targets.items()}
    paths = write_results(out_dir, rows, clean, notes=notes, command=command)
    return BenchResult(rows=rows, targets=clean, notes=notes, paths=paths, seconds=seconds, failures=failures)


def print_summary(result: BenchResult) -> None:
    """The markdown tables on stdout, then where the files are."""
    print(markdown_table(result.rows))
    print()
    print(targets_table(evaluate_targets(result.targets)))
    for n in result.notes:
        print(f"- {n}")
    for kind, p in result.paths.items():
        print(f"{kind}: {p}")
