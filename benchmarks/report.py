"""Results on disk: ``<date>-<host>.csv``, ``<date>-<host>.md`` and ``latest.json``.

``latest.json`` follows the benchmark contract (docs/performance.md)::

    {"machine": str, "date": str, "targets": {name: {"value": float, "target": float, "met": bool}}}

with one entry per name in :data:`TARGETS`. A target whose comparison was not run (``--only``)
or failed has ``value`` ``null`` and ``met`` ``false``: absent evidence is never a pass.
"""

from __future__ import annotations

import csv
import json
import math
import platform
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.harness import Measurement


@dataclass(frozen=True)
class TargetSpec:
    """A ratio target of the benchmark contract: ``value <= target`` (``at_most``) or ``value >= target``."""

    name: str
    target: float
    at_most: bool
    description: str


TARGETS: tuple[TargetSpec, ...] = (
    TargetSpec("service_vs_inprocess_p50", 1.3, True,
               "classifier service p50 at concurrency 1 / in-process ONNX Runtime forward + preprocessing p50"),
    TargetSpec("service_vs_mlflow_throughput_c16", 3.0, False,
               "classifier service requests/s at concurrency 16 / `mlflow models serve` requests/s"),
    TargetSpec("progression_vs_eager_p50", 0.45, True,
               "gateway /progression p50 from Non Demented / original-style eager pipeline p50"),
    TargetSpec("cache_hit_vs_miss_p50", 0.1, True,
               "gateway /predict p50 on a Redis hit / p50 on a miss of the same image"),
    TargetSpec("batching_throughput_gain_c16", 1.0, False,
               "classifier service requests/s at concurrency 16 with dynamic batching / without"),
    TargetSpec("training_pipeline_vs_inmemory", 0.9, False,
               "training images/s fed by the data pipeline / fed from tensors in memory"),
)
TARGET_NAMES = tuple(t.name for t in TARGETS)


def machine_description() -> str:
    """Host name, CPU model, usable cores and the widest x86 vector extension seen."""
    import os

    cpu, flags = platform.machine(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == platform.machine():
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    isa = "AVX-512" if " avx512f" in flags else "AVX2" if " avx2" in flags else "no AVX2"
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 0
    return f"{socket.gethostname()}: {cpu}, {cores} CPUs, {isa}, {platform.system()} {platform.release()}"


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _num(x: Any) -> Any:
    """JSON-safe number: NaN/inf become ``None``."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def evaluate_targets(values: dict[str, float | None]) -> dict[str, dict[str, Any]]:
    """The ``targets`` object of ``latest.json`` from the measured ratios (missing -> null, not met)."""
    out: dict[str, dict[str, Any]] = {}
    for spec in TARGETS:
        v = values.get(spec.name)
        if v is None or not math.isfinite(v):
            out[spec.name] = {"value": None, "target": spec.target, "met": False}
            continue
        met = v <= spec.target if spec.at_most else v >= spec.target
        out[spec.name] = {"value": round(float(v), 4), "target": spec.target, "met": bool(met)}
    return out


def _fmt(x: Any, digits: int = 1) -> str:
    if isinstance(x, float):
        if not math.isfinite(x):
            return ""
        return f"{x:.{digits}f}"
    return str(x)


def markdown_table(rows: list[Measurement]) -> str:
    """The result rows as a GitHub markdown table."""
    head = ("| comparison | case | variant | batch | conc. | n | p50 ms | p95 ms | p99 ms | "
            "throughput /s | vs baseline (p50) | vs baseline (thr.) | load1 | note |")
    sep = "|" + "---|" * 14
    lines = [head, sep]
    for r in rows:
        base = f" ({r.baseline})" if r.baseline and r.baseline != r.variant else ""
        rp = f"{_fmt(r.ratio_p50, 2)}x{base}" if math.isfinite(r.ratio_p50) else ""
        rt = f"{_fmt(r.ratio_throughput, 2)}x{base}" if math.isfinite(r.ratio_throughput) else ""
        note = r.note + (f"; {r.errors} errors" if r.errors else "")
        lines.append(
            f"| {r.comparison} | {r.case} | {r.variant} | {r.batch} | {r.concurrency} | {r.n} | "
            f"{_fmt(r.p50_ms)} | {_fmt(r.p95_ms)} | {_fmt(r.p99_ms)} | {_fmt(r.throughput, 2)} | "
            f"{rp} | {rt} | {_fmt(r.load1, 2)} | {note} |"
        )
    return "\n".join(lines)


def targets_table(targets: dict[str, dict[str, Any]]) -> str:
    """The targets as a markdown table with how far each is from its bound."""
    lines = ["| target | value | bound | met | margin | what |", "|---|---|---|---|---|---|"]
    for spec in TARGETS:
        t = targets[spec.name]
        v = t["value"]
        bound = f"<= {spec.target}" if spec.at_most else f">= {spec.target}"
        if v is None:
            margin = "not measured"
            value = "n/a"
        else:
            value = f"{v:.3f}"
            # Relative distance to the bound, signed so that positive means "inside the target".
            rel = (spec.target - v) / spec.target if spec.at_most else (v - spec.target) / spec.target
            margin = f"{'within' if rel >= 0 else 'missed'} by {abs(rel) * 100:.0f}%"
        lines.append(f"| `{spec.name}` | {value} | {bound} | {'yes' if t['met'] else 'NO'} | {margin} | {spec.description} |")
    return "\n".join(lines)


def write_results(
    out_dir: str | Path,
    rows: list[Measurement],
    target_values: dict[str, float | None],
    *,
    notes: list[str] | None = None,
    command: str = "make bench",
    when: datetime | None = None,
) -> dict[str, Path]:
    """Write the CSV, the markdown report and ``latest.json``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    when = when or utc_now()
    host = socket.gethostname().split(".")[0] or "host"
    stem = f"{when:%Y%m%d-%H%M}-{host}"
    machine = machine_description()
    date = when.isoformat(timespec="seconds").replace("+00:00", "Z")

    csv_path = out / f"{stem}.csv"
    fieldnames = list(rows[0].row().keys()) if rows else list(Measurement("", "", "").row().keys())
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fieldnames)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.row().items()})

    targets = evaluate_targets(target_values)
    md_path = out / f"{stem}.md"
    md = [
        f"# Benchmark results {date}",
        "",
        f"- command: `{command}`",
        f"- machine: {machine}",
        f"- date (UTC): {date}",
        "",
        "## Targets",
        "",
        targets_table(targets),
        "",
        "## Measurements",
        "",
        "Latencies in milliseconds per call (a call is one batch in-process, one HTTP request over "
        "the network); throughput in images or requests per second; `load1` is the 1-minute load "
        "average of the machine during the row.",
        "",
        markdown_table(rows),
        "",
    ]
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    md_path.write_text("\n".join(md))

    latest = {"machine": machine, "date": date, "targets": targets}
    latest_path = out / "latest.json"
    latest_path.write_text(json.dumps(latest, indent=2) + "\n")
    return {"csv": csv_path, "markdown": md_path, "latest": latest_path}
