"""Timing primitives shared by every comparison: warm-up, repeats, percentiles, machine load.

A :class:`Measurement` is one row of the result table. Latencies are wall-clock
(``time.perf_counter``) per call; throughput is items per second over the timed calls only
(warm-up excluded). The 1-minute load average is recorded beside each row because the
benchmark machine may be shared: a row measured under load says so instead of hiding it.
"""

from __future__ import annotations

import gc
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def write_result(data: Any, kind: str, results: Path = RESULTS) -> Path:
    """Write ``data`` as ``<results>/<UTC yyyymmdd-HHMM>-<kind>.json`` (numpy figures as floats); returns the path."""
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{time.strftime('%Y%m%d-%H%M', time.gmtime())}-{kind}.json"
    path.write_text(json.dumps(data, indent=2, default=float))
    return path


@dataclass
class Measurement:
    """One timed configuration: a row of the CSV and of the markdown table.

    ``comparison`` groups rows (``forward``, ``service``, ``gateway``, ``batching``,
    ``training``); ``case`` is what is measured (``classifier b1``); ``variant`` is how
    (``eager``, ``onnxruntime``, ...). Rows of one ``comparison``/``case`` are compared with the
    row whose variant is ``baseline``.
    """

    comparison: str
    case: str
    variant: str
    unit: str = "item"
    batch: int = 1
    concurrency: int = 1
    n: int = 0
    p50_ms: float = float("nan")
    p95_ms: float = float("nan")
    p99_ms: float = float("nan")
    mean_ms: float = float("nan")
    throughput: float = float("nan")  # units (images, requests) per second
    baseline: str = ""
    ratio_p50: float = float("nan")  # p50 / baseline p50 (lower is better)
    ratio_throughput: float = float("nan")  # throughput / baseline throughput (higher is better)
    load1: float = float("nan")  # 1-minute load average, mean of before and after
    errors: int = 0
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """Flat dict for the CSV (``extra`` left out)."""
        d = asdict(self)
        d.pop("extra")
        return d


def load_average() -> float:
    """The 1-minute load average (NaN where the platform has none)."""
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return float("nan")


def summarize(latencies_s: list[float] | np.ndarray) -> dict[str, float]:
    """p50/p95/p99/mean in milliseconds of a list of per-call latencies in seconds."""
    arr = np.asarray(latencies_s, dtype=np.float64) * 1000.0
    if arr.size == 0:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan"), "mean_ms": float("nan")}
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99), "mean_ms": float(arr.mean())}


def time_callable(
    fn: Callable[[], Any],
    *,
    warmup: int = 3,
    repeats: int = 20,
    items_per_call: int = 1,
    max_seconds: float | None = None,
) -> dict[str, Any]:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed.

    Stops early (but after at least 3 timed calls) once ``max_seconds`` of timed calls have
    passed, so a slow variant cannot blow the total budget. The garbage collector is paused
    during the timed calls because a collection in the middle of one call is noise, not the
    cost of the model. Returns the summary plus ``n``, ``throughput`` and ``load1``.
    """
    for _ in range(max(0, warmup)):
        fn()
    load_before = load_average()
    latencies: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        started = time.perf_counter()
        for i in range(max(1, repeats)):
            t0 = time.perf_counter()
            fn()
            latencies.append(time.perf_counter() - t0)
            if max_seconds is not None and i >= 2 and time.perf_counter() - started > max_seconds:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    total = float(np.sum(latencies))
    out: dict[str, Any] = summarize(latencies)
    out["n"] = len(latencies)
    out["throughput"] = len(latencies) * items_per_call / total if total > 0 else float("nan")
    out["load1"] = (load_before + load_average()) / 2.0
    out["latencies_s"] = latencies
    out["busy_s"] = total
    return out


def merge_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary of several timed series of the same thing (rounds interleaved with another
    series): latencies pooled, ``n`` and ``errors`` summed, throughput over the summed time."""
    latencies = [x for part in parts for x in part["latencies_s"]]
    busy = sum(float(part.get("wall_s", part.get("busy_s", 0.0))) for part in parts)
    out: dict[str, Any] = summarize(latencies)
    out["n"] = len(latencies)
    out["errors"] = sum(int(part.get("errors", 0)) for part in parts)
    out["throughput"] = len(latencies) / busy if busy > 0 else float("nan")
    out["load1"] = float(np.mean([part["load1"] for part in parts]))
    out["latencies_s"] = latencies
    return out


def measurement(comparison: str, case: str, variant: str, stats: dict[str, Any], **kwargs: Any) -> Measurement:
    """Build a :class:`Measurement` from the dict of :func:`time_callable` or the load generator."""
    keys = ("n", "p50_ms", "p95_ms", "p99_ms", "mean_ms", "throughput", "load1", "errors")
    fields = {k: stats[k] for k in keys if k in stats}
    fields.update(kwargs)
    return Measurement(comparison=comparison, case=case, variant=variant, **fields)


def fill_ratios(rows: list[Measurement]) -> None:
    """Set ``ratio_p50`` and ``ratio_throughput`` of each row against its case's baseline row.

    The baseline of a row is the row of the same ``comparison`` and ``case`` whose
    ``variant`` equals the row's ``baseline``; rows without one keep NaN.
    """
    index = {(r.comparison, r.case, r.variant): r for r in rows}
    for r in rows:
        if not r.baseline:
            continue
        base = index.get((r.comparison, r.case, r.baseline))
        if base is None:
            continue
        if base.p50_ms > 0 and np.isfinite(base.p50_ms) and np.isfinite(r.p50_ms):
            r.ratio_p50 = r.p50_ms / base.p50_ms
        if base.throughput > 0 and np.isfinite(base.throughput) and np.isfinite(r.throughput):
            r.ratio_throughput = r.throughput / base.throughput


def torch_threads() -> int:
    """Threads for in-process inference: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)
