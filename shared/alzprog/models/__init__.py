"""One entry point builds any model of the project from its JSON config (``config["kind"]``)."""

from __future__ import annotations

from typing import Any

import torch.nn as nn


def build_model(config: dict[str, Any]) -> nn.Module:
    """Rebuild the architecture described by a model config (no weights loaded)."""
    kind = config.get("kind")
    if kind == "stage_classifier":
        from alzprog.models.stage_classifier import build_stage_classifier

        return build_stage_classifier(config)
    if kind == "progression_generator":
        from alzprog.models.progression_generator import build_generator

        return build_generator(config)
    raise ValueError(f"unknown model kind {kind!r} in config")
