"""The model card of the served models, read from the MLflow registry.

For each model the services serve (the stage classifier and the three transition
generators), the version its ``champion`` alias points at: version, registration date, the
version's tags (what training recorded: preset, variant, validation macro-F1, ...), and the
run's parameters and metrics that say what it was trained on and how well it did. Nothing is
invented here: a figure the registry does not hold is absent, and ``data_kind`` is derived
only from what the run recorded (a phantom path or preset), else ``unknown``.

``figures`` are the held-out results that ``alzprog evaluate classifier`` / ``alzprog evaluate
progression`` (and the bootstrap, which runs both) record on the evaluated version as ``card.*``
tags (:func:`record_classifier_evaluation`, :func:`record_progression_evaluation`): the test
subjects' macro-F1 with its bootstrap interval, the generators' change fidelity on test pairs.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

from alzprog.constants import CHAMPION_ALIAS, CLASSIFIER_MODEL_NAME, TRANSITIONS, progression_model_name

log = logging.getLogger(__name__)

# Registry tags that are bookkeeping (file digests), not something a reader of the card needs.
_HIDDEN_TAG_PREFIXES = ("alzprog.artifact_sha256", "mlflow.", "card.")
# The held-out figures evaluation records on a model version, as tags under this prefix.
CARD_PREFIX = "card."


# MLflow error codes that mean "the registry answered: no such model or alias".
_ABSENT = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


def served_model_names() -> list[str]:
    """The registered names of the models the services serve, classifier first."""
    return [CLASSIFIER_MODEL_NAME] + [progression_model_name(slug) for slug, _, _ in TRANSITIONS]


def _data_kind(params: dict[str, str], tags: dict[str, str]) -> str:
    text = " ".join(list(params.values()) + list(tags.values())).lower()
    if "phantom" in text:
        return "synthetic phantom"
    if "oasis" in text:
        return "real (OASIS)"
    return "unknown"


def model_entry(name: str, alias: str = CHAMPION_ALIAS) -> dict[str, Any]:
    """One model's card entry (``available: false`` with a reason when the registry has none)."""
    from mlflow.exceptions import MlflowException

    from alzprog import registry

    c = registry.client()
    try:
        mv = c.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") not in _ABSENT:
            raise  # the registry could not be asked: not the same as "nothing registered"
        return {"name": name, "alias": alias, "available": False, "detail": f"no {alias} version in the registry"}
    tags = {k: v for k, v in (mv.tags or {}).items() if not k.startswith(_HIDDEN_TAG_PREFIXES)}
    figures = card_figures(mv.tags or {})
    params: dict[str, str] = {}
    metrics: dict[str, float] = {}
    if mv.run_id:
        try:
            run = c.get_run(mv.run_id)
            params = dict(run.data.params or {})
            metrics = {k: float(v) for k, v in (run.data.metrics or {}).items()}
        except MlflowException:
            pass
    created = dt.datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=dt.timezone.utc) if mv.creation_timestamp else None
    return {
        "name": name,
        "alias": alias,
        "available": True,
        "version": str(mv.version),
        "registered_at": created.isoformat() if created else None,
        "run_id": mv.run_id,
        "data_kind": _data_kind(params, tags),
        "figures": figures,
        "tags": tags,
        "params": params,
        "metrics": metrics,
    }


def model_card(alias: str = CHAMPION_ALIAS) -> dict[str, Any]:
    """The card of every served model, from the registry at ``MLFLOW_TRACKING_URI``."""
    from alzprog import registry

    return {
        "registry": registry.tracking_uri(),
        "alias": alias,
        "models": [model_entry(name, alias) for name in served_model_names()],
        "intended_use": "Research demonstration only; not a medical device and not for diagnosis. "
                        "Progression images are synthetic illustrations, not a forecast for a person.",
    }


# ---------------------------------------------------------------------- held-out figures
def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def card_figures(tags: dict[str, str]) -> dict[str, Any] | None:
    """The held-out figures an evaluation recorded on a version (``card.*`` tags), parsed:
    numbers as floats, intervals as ``[low, high]``, the rest as text; ``None`` when none."""
    out: dict[str, Any] = {}
    for key, raw in tags.items():
        if not key.startswith(CARD_PREFIX):
            continue
        name = key[len(CARD_PREFIX):]
        value: Any = raw
        try:
            value = [float(v) for v in json.loads(raw)] if raw.startswith("[") else float(raw)
        except ValueError:
            value = raw
        out[name] = value
    return out or None


def record_figures(name: str, version: str | int, figures: dict[str, Any]) -> bool:
    """Record held-out figures on a registered model version (``card.<key>`` tags), with the time.

    Best effort, like the evaluation's other MLflow logging: the report on disk is the result, so
    a registry that cannot be written is logged and False returned."""
    import math

    from alzprog import registry

    try:
        for key, value in {**figures, "evaluated_at": _now()}.items():
            numbers = value if isinstance(value, (list, tuple)) else [value] if isinstance(value, float) else []
            if value is None or not all(v is not None and math.isfinite(float(v)) for v in numbers):
                continue  # a figure that could not be computed is absent, not NaN
            text = json.dumps([round(float(v), 4) for v in value]) if isinstance(value, (list, tuple)) else (
                repr(round(float(value), 4)) if isinstance(value, float) else str(value))
            registry.set_version_tag(name, version, CARD_PREFIX + key, text)
    except Exception as exc:  # noqa: BLE001 - MLflow down or the version gone
        log.warning("could not record the model card figures of %s v%s: %s", name, version, exc)
        return False
    return True



def record_classifier_evaluation(report: dict[str, Any]) -> bool:
    """Put ``alzprog evaluate classifier``'s held-out subject figures on the evaluated registered
    version (a local model folder or a shuffled-label run records nothing); True when recorded."""
    model = report.get("model") or {}
    if not model.get("name") or not model.get("version") or report.get("test_labels_shuffled"):
        return False
    subject = report["subject"]
    config_path = Path(str(model.get("dir", ""))) / "config.json"
    seen = None
    if config_path.is_file():
        seen = len(json.loads(config_path.read_text()).get("seen_subject_fingerprints") or []) or None
    return record_figures(model["name"], model["version"], {
        "test_subject_macro_f1": subject.get("macro_f1"),
        "test_subject_macro_f1_ci": subject.get("macro_f1_ci"),
        "test_subject_majority_macro_f1": subject.get("majority_macro_f1"),
        "test_subjects": subject.get("n_subjects") or report.get("n_test_subjects"),
        "trained_on_subjects": seen,
        "interval": report.get("bootstrap"),
    })


def record_progression_evaluation(report: dict[str, Any]) -> list[str]:
    """Put ``alzprog evaluate progression``'s change fidelity per transition (held-out pairs) on
    each evaluated registered generator version; returns the names recorded."""
    from alzprog.constants import progression_model_name

    versions = (report.get("models") or {}).get("model") or {}
    done = []
    for slug, _, _ in TRANSITIONS:
        version, row = versions.get(slug), report.get(slug) or {}
        fig = row.get("model") or {}
        if not version or version == "unregistered" or "change_corr" not in fig:
            continue
        name = progression_model_name(slug)
        ok = record_figures(name, version, {
            "test_change_correlation": fig.get("change_corr"),
            "test_csf_growth_ratio": fig.get("growth_ratio"),
            "test_pairs": row.get("n_pairs"),
        })
        if ok:
            done.append(name)
    return done
