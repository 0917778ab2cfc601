"""EfficientNet stage classifier: a torchvision EfficientNet whose head is one linear layer to the 4 stages.

The config (the ``config.json`` of a model artifact) fully describes the architecture, so a
model is rebuilt from JSON alone:

``{"kind": "stage_classifier", "arch": "efficientnet_b4", "num_classes": 4, "dropout": 0.4,
"image_size": 256, "mean": [...], "std": [...], "class_names": [...], "temperature": 1.0}``

Optional ``width_mult`` / ``depth_mult`` build a scaled-down EfficientNet from the B0 recipe
(the ``quick`` preset: small enough to train on a laptop CPU); such a model has no ImageNet
weights.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torchvision
from torchvision.models import efficientnet as tv_eff

from alzprog.constants import STAGES

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ARCHS = tuple(f"efficientnet_b{i}" for i in range(8))


class PretrainedWeightsMissing(FileNotFoundError):
    """ImageNet weights are not in the local torch hub cache (and nothing is downloaded silently)."""


def _is_scaled(config: dict[str, Any]) -> bool:
    return config.get("width_mult") is not None or config.get("depth_mult") is not None


def build_stage_classifier(config: dict[str, Any]) -> nn.Module:
    """Build the (untrained) classifier described by ``config``; the head maps to ``num_classes``."""
    arch = config.get("arch", "efficientnet_b4")
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
    num_classes = int(config.get("num_classes", len(STAGES)))
    if _is_scaled(config):
        settings, last_channel = tv_eff._efficientnet_conf(
            "efficientnet_b0",
            width_mult=float(config.get("width_mult", 1.0)),
            depth_mult=float(config.get("depth_mult", 1.0)),
        )
        model = tv_eff.EfficientNet(
            settings,
            dropout=float(config.get("dropout", 0.2)),
            stochastic_depth_prob=float(config.get("stochastic_depth_prob", 0.2)),
            num_classes=num_classes,
            last_channel=last_channel,
        )
    else:
        builder = getattr(torchvision.models, arch)
        kwargs = {"weights": None, "num_classes": num_classes}
        if config.get("dropout") is not None:
            kwargs["dropout"] = float(config["dropout"])
        model = builder(**kwargs)
    # torchvision draws the head from U(+-1/sqrt(num_classes)) = U(+-0.5) for 4 classes, which
    # starts training with large random logits (loss ~3-4 instead of ln 4); a small head starts
    # at chance and lets the backbone learn instead of undoing the head.
    last = model.classifier[-1]
    nn.init.normal_(last.weight, std=0.01)
    nn.init.zeros_(last.bias)
    return model


def head(model: nn.Module) -> nn.Linear:
    """The final linear layer (the only layer trained in phase 1)."""
    return model.classifier[-1]


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze or unfreeze everything except the head."""
    head_params = {id(p) for p in head(model).parameters()}
    for p in model.parameters():
        if id(p) not in head_params:
            p.requires_grad = trainable


def imagenet_weights_file(arch: str) -> Path:
    """Where torchvision's cache keeps the ImageNet checkpoint of ``arch`` (``<hub>/checkpoints/<file>``)."""
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def load_imagenet_weights(model: nn.Module, arch: str) -> nn.Module:
    """Load torchvision's ImageNet weights of ``arch`` from the local hub cache into ``model``.

    The 1000-class head is dropped (the model keeps its own stage head). Nothing is downloaded
    here, so an offline machine fails fast with instructions instead of hanging.
    """
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    path = imagenet_weights_file(arch)
    if not path.is_file():
        raise PretrainedWeightsMissing(
            f"ImageNet weights for {arch} are not in the torch hub cache.\n"
            f"  Download {weights.url}\n"
            f"  and put it at {path}\n"
            f"  (or set TORCH_HOME to a folder whose hub/checkpoints/ holds it),\n"
            f"  or train from scratch with --pretrained none."
        )
    # weights_only=True: the checkpoint is read as plain tensors, never as arbitrary pickled code.
    state = torch.load(path, map_location="cpu", weights_only=True)
    head_keys = {k for k in state if k.startswith("classifier.")}
    state = {k: v for k, v in state.items() if k not in head_keys}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("classifier.") for k in missing):
        raise RuntimeError(f"ImageNet weights do not match {arch}: missing={missing[:5]} unexpected={unexpected[:5]}")
    log.info("loaded ImageNet weights for %s from %s", arch, path)
    return model


def classifier_config(
    arch: str,
    image_size: int,
    *,
    width_mult: float | None = None,
    depth_mult: float | None = None,
    dropout: float | None = None,
    temperature: float = 1.0,
    pretrained: str = "imagenet",
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> dict[str, Any]:
    """The JSON config saved with a trained classifier (what serving needs to rebuild and feed it)."""
    cfg: dict[str, Any] = {
        "kind": "stage_classifier",
        "arch": arch,
        "num_classes": len(STAGES),
        "class_names": list(STAGES),
        "image_size": int(image_size),
        "in_channels": 3,
        "input": "canonical grayscale slice (alzprog.preprocessing.canonicalize) replicated to RGB",
        "mean": list(mean),
        "std": list(std),
        "temperature": float(temperature),
        "pretrained": pretrained,
    }
    if dropout is not None:
        cfg["dropout"] = float(dropout)
    if width_mult is not None or depth_mult is not None:
        cfg["width_mult"] = float(width_mult or 1.0)
        cfg["depth_mult"] = float(depth_mult or 1.0)
    return cfg
