"""The model card of the served models, read from the MLflow registry.

For each model the services serve (the stage classifier and the three transition
generators), the version its ``champion`` alias points at: version, registration date, the
version's tags (what training recorded: preset, variant, validation macro-F1, ...), and the
run's parameters and metrics that say what it was trained on and how well it did. Nothing is
invented here: a figure the registry does not hold is absent, and ``data_kind`` is derived
only from what the run recorded (a phantom path or preset), else ``unknown``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from alzprog.constants import CHAMPION_ALIAS, CLASSIFIER_MODEL_NAME, TRANSITIONS, progression_model_name

# Registry tags that are bookkeeping (file digests), not something a reader of the card needs.
_HIDDEN_TAG_PREFIXES = ("alzprog.artifact_sha256", "mlflow.")


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
