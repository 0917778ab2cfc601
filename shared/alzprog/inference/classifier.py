"""Stage classification at inference: calibrated probabilities and the Grad-CAM explanation.

The calibrated softmax (``softmax(logits / T)`` with the temperature ``T`` fitted on validation
and stored in the model's ``config.json``) is written here once; training's calibration,
evaluation, ``alzprog progress``/``explain`` and the classifier service all call it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from alzprog.constants import CHAMPION_ALIAS, CLASSIFIER_MODEL_NAME

if TYPE_CHECKING:
    import torch
    import torch.nn as nn


def calibrated_probabilities(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """``softmax(logits / temperature)`` over the last axis, in float64, numerically stable.

    ``logits``: shape ``(K,)`` or ``(N, K)`` (numpy or anything ``np.asarray`` takes).
    """
    t = float(temperature)
    if not t > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    z = np.asarray(logits, dtype=np.float64) / t
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def model_input(image: np.ndarray, config: dict[str, Any]) -> "torch.Tensor":
    """The classifier's ``(3, S, S)`` input for a canonical uint8 slice, sized and normalised as
    the model's ``config.json`` says (the shared ``preprocessing.classifier_input``)."""
    from alzprog import preprocessing as pp

    size = int(config.get("image_size", 256))
    mean = tuple(config.get("mean", pp.IMAGENET_MEAN))
    std = tuple(config.get("std", pp.IMAGENET_STD))
    return pp.classifier_input(image, size, mean, std)


def classify_stage(image: np.ndarray, model: "nn.Module", config: dict[str, Any]) -> tuple[int, np.ndarray]:
    """Stage index and calibrated probabilities of a canonical uint8 slice with a stage classifier.

    Size, normalisation and temperature come from the classifier's ``config.json``.
    """
    import torch

    x = model_input(image, config).unsqueeze(0)
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(x.to(device)).float().cpu().numpy()
    probs = calibrated_probabilities(logits[0], float(config.get("temperature", 1.0)))
    return int(probs.argmax()), probs


@dataclass
class StageExplanation:
    """Grad-CAM of one class: the heat map at the image's size, its in-brain share, the overlay."""

    heatmap: np.ndarray
    in_brain_fraction: float | None
    overlay_png: bytes


def explain_stage(model: "nn.Module", x: "torch.Tensor", image: np.ndarray, mask: np.ndarray | None,
                  target: int) -> StageExplanation:
    """Grad-CAM of class ``target`` for the preprocessed input ``x`` of the canonical ``image``.

    ``mask`` is the image's brain mask (computed when ``None``). ``in_brain_fraction`` is
    ``None`` for an all-zero heat map (nothing attributed).
    """
    from alzprog import explain
    from alzprog.preprocessing import brain_mask

    if mask is None:
        mask = brain_mask(image)
    heat = explain._resize_float(np.asarray(explain.grad_cam(model, x, target), dtype=np.float32), image.shape)
    fraction = float(explain.saliency_in_brain_fraction(heat, mask))
    return StageExplanation(heat, fraction if np.isfinite(fraction) else None, explain.overlay_png(image, heat))


def load_classifier(uri: str | None = None, device: "str | torch.device" = "cpu") -> tuple["nn.Module", dict[str, Any], str]:
    """The registered stage classifier (default ``models:/alzheimer-stage-classifier@champion``)."""
    from alzprog.artifacts import load_artifact
    from alzprog.registry import resolve_model

    resolved = resolve_model(uri or f"models:/{CLASSIFIER_MODEL_NAME}@{CHAMPION_ALIAS}")
    art = load_artifact(resolved.local_dir, device=device)
    return art.model, art.config, resolved.version
