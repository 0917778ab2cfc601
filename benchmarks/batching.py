"""Comparison 4: dynamic batching in the classifier service, on vs off, at concurrency 16 and 1.

Two classifier processes serve the same registered version, one with batching on (the
service's own defaults for the maximum batch and the maximum wait) and one with it off; the
same closed-loop load hits each. The service's settings decide what "on" and "off" mean: this
module reads the batching fields of ``services.classifier.settings.Settings`` and sets them
through the environment, so it measures whatever the service implements.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from benchmarks.harness import Measurement
from benchmarks.stack import BenchStack

log = logging.getLogger(__name__)


def batching_settings() -> dict[str, Any]:
    """The classifier's batching fields ``{name: default}`` (empty when the service has none)."""
    from services.classifier.settings import Settings

    return {name: f.default for name, f in Settings.model_fields.items() if "batch" in name.lower()}


def on_off_env(fields: dict[str, Any]) -> tuple[dict[str, str], dict[str, str], str]:
    """Environment of the "on" and "off" services and a description of "on".

    A boolean field (``batching``, ``batch_enabled``...) switches it; otherwise a maximum batch
    size of 1 is "off". "On" keeps the service defaults, but turns a boolean on and raises a
    maximum batch size of 1 to 8, so "on" is on whatever the default is.
    """
    on: dict[str, str] = {}
    off: dict[str, str] = {}
    desc = []
    size_field = next((n for n, d in fields.items() if "size" in n or n.endswith("max_batch")), None)
    bool_field = next((n for n, d in fields.items() if isinstance(d, bool)), None)
    if bool_field:
        on[f"CLASSIFIER_{bool_field.upper()}"] = "true"
        off[f"CLASSIFIER_{bool_field.upper()}"] = "false"
    if size_field:
        default = fields[size_field]
        size_on = int(default) if isinstance(default, int) and default > 1 else 8
        on[f"CLASSIFIER_{size_field.upper()}"] = str(size_on)
        off[f"CLASSIFIER_{size_field.upper()}"] = "1"
    for name, default in fields.items():
        if name not in (size_field, bool_field):
            desc.append(f"{name}={default}")
    desc.append(f"{size_field}={on.get(f'CLASSIFIER_{str(size_field).upper()}')}" if size_field else "")
    return on, off, ", ".join(d for d in desc if d)


def _batch_stats(url: str) -> str:
    """Batches and requests the service ran so far (its ``/v1/info``), as text; '' if it does not say."""
    import httpx

    try:
        info = httpx.get(url + "/v1/info", timeout=5).json().get("batching") or {}
    except (httpx.HTTPError, ValueError):
        return ""
    batches, items = info.get("batches"), info.get("items")
    if not batches:
        return ""
    return f"{items} requests in {batches} batches (mean batch {items / batches:.1f})"


def run(stack: BenchStack, *, quick: bool = False) -> tuple[list[Measurement], dict[str, float], list[str]]:
    """Comparison 4. Returns rows, ``{"batching_throughput_gain_c16": ...}`` and notes.

    Variants: batching off (the service defaults), batching on with the default threads, and
    batching on with every CPU given to the one ONNX Runtime session that runs the batches
    (``CLASSIFIER_INTRA_OP_THREADS``): the batcher runs one batch at a time, so with the
    default threads (CPUs / concurrency) a batch would use one core. The target's value is the
    better of the two "on" variants, named in the note. Without batching settings in the
    classifier service the rows are absent and the target is reported as not measured.
    """
    from benchmarks.services import bench_classifier_service, canonical_of, sample_upload

    fields = batching_settings()
    if not fields:
        note = ("dynamic batching: the classifier service has no batching settings "
                "(no field with 'batch' in services/classifier/settings.py); not measured")
        log.warning(note)
        return [], {"batching_throughput_gain_c16": float("nan")}, [note]
    on, off, desc = on_off_env(fields)
    if not off:
        note = f"dynamic batching: cannot tell how to switch it off from the settings {fields}; not measured"
        log.warning(note)
        return [], {"batching_throughput_gain_c16": float("nan")}, [note]
    from alzprog.inference.runtime import available_cpus

    cpus = str(available_cpus())
    image = canonical_of(sample_upload()).image
    concs = (16, 1)
    variants = [("batching off", off), ("batching on", on),
                ("batching on, all CPUs per batch", {**on, "CLASSIFIER_INTRA_OP_THREADS": cpus})]
    if not quick:
        # Control: no batching, one request at a time with every CPU. Separates what batching
        # brings from what giving all CPUs to one inference brings.
        variants.append(("batching off, one request at a time with all CPUs",
                         {**off, "CLASSIFIER_INTRA_OP_THREADS": cpus, "CLASSIFIER_MAX_CONCURRENCY": "1"}))
    rows: list[Measurement] = []
    for variant, env in variants:
        name = "classifier-" + variant.replace(" ", "-").replace(",", "")
        stack.start_classifier(name, env)
        try:
            new = bench_classifier_service(stack, image, quick=quick, case_prefix="classifier", variant=variant,
                                           name=name, concurrencies=concs, baseline="batching off",
                                           comparison="batching",
                                           note=" ".join(f"{k}={v}" for k, v in env.items()))
            stats = _batch_stats(stack.procs[name].url)
            if stats:
                for r in new:
                    r.note += f"; whole run: {stats}"
            rows += new
        finally:
            stack.stop(name)
    by = {(r.case, r.variant): r for r in rows}
    off_c16 = by[("classifier c16", "batching off")]
    off_c1 = by[("classifier c1", "batching off")]
    notes = []
    gains = {}
    for variant, _ in variants[1:3]:
        gain = by[("classifier c16", variant)].throughput / off_c16.throughput
        cost = by[("classifier c1", variant)].p50_ms / off_c1.p50_ms
        gains[variant] = gain
        notes.append(f"dynamic batching, {variant} ({desc}): throughput x{gain:.2f} at concurrency 16, "
                     f"p50 x{cost:.2f} at concurrency 1")
    finite = {k: v for k, v in gains.items() if np.isfinite(v)}
    if not finite:
        notes.append("dynamic batching: a run had no successful request")
        return rows, {"batching_throughput_gain_c16": float("nan")}, notes
    best = max(finite, key=finite.get)
    notes.append(f"batching_throughput_gain_c16 is the '{best}' variant")
    return rows, {"batching_throughput_gain_c16": finite[best]}, notes
