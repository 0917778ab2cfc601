"""Chained progression at inference: one slice -> the same slice at every later stage.

Used by ``alzprog progress`` and by the generator service. The input is canonicalised once
(:func:`alzprog.preprocessing.canonicalize`); each transition generator then takes the previous
step's output, with the brain mask of the input (the change stays confined to the brain the
subject came in with), from the given stage up to Moderate Dementia.

Every generated image is synthetic: :func:`synthetic_png` burns the visible "SYNTHETIC" mark
(:func:`alzprog.preprocessing.mark_synthetic`) and writes PNG text metadata saying so.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as nn

from alzprog.constants import (
    CHAMPION_ALIAS,
    CLASSIFIER_MODEL_NAME,
    STAGE_SLUGS,
    STAGES,
    TRANSITIONS,
    progression_model_name,
    stage_index,
)


@dataclass
class ChainGenerator:
    """One transition generator ready to run, with the registered name/version it came from."""

    transition: str
    model: nn.Module
    name: str
    version: str
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class ChainStep:
    """One synthesised stage: the canonical uint8 image (unmarked) and the model that made it."""

    stage: str
    stage_index: int
    image: np.ndarray
    model: dict[str, str]


@dataclass
class ChainResult:
    """The canonical input, its brain mask, the stage it starts from and the synthesised steps."""

    image: np.ndarray
    mask: np.ndarray
    from_stage: int
    steps: list[ChainStep]


def load_chain_generators(alias: str = CHAMPION_ALIAS, device: str | torch.device = "cpu") -> dict[str, ChainGenerator]:
    """Resolve ``models:/alzheimer-progression-<t>@<alias>`` for the three transitions.

    Raises ``LookupError`` naming the first transition without a registered ``alias``.
    """
    from alzprog.artifacts import load_artifact
    from alzprog.registry import resolve_model

    out = {}
    for slug, _, _ in TRANSITIONS:
        resolved = resolve_model(f"models:/{progression_model_name(slug)}@{alias}")
        art = load_artifact(resolved.local_dir, device=device)
        out[slug] = ChainGenerator(slug, art.model, resolved.name, resolved.version, art.config)
    return out


def _as_generator(slug: str, g: ChainGenerator | nn.Module) -> ChainGenerator:
    if isinstance(g, ChainGenerator):
        return g
    return ChainGenerator(slug, g, progression_model_name(slug), "unregistered")


@torch.no_grad()
def chain_canonical(
    image: np.ndarray,
    mask: np.ndarray,
    from_stage: int,
    generators: Mapping[str, ChainGenerator | nn.Module],
) -> list[ChainStep]:
    """Run the transitions from ``from_stage`` to Moderate on an already canonical image."""
    from alzprog import preprocessing as pp

    steps: list[ChainStep] = []
    m = pp.mask_tensor(mask).unsqueeze(0)
    x = pp.generator_input(image).unsqueeze(0)
    for slug, src, tgt in TRANSITIONS:
        if src < from_stage:
            continue
        if slug not in generators:
            raise LookupError(f"no generator for transition {slug}")
        g = _as_generator(slug, generators[slug])
        g.model.eval()
        device = next(g.model.parameters()).device
        y = g.model(x.to(device), m.to(device)).float().cpu()
        out = pp.generator_output_to_uint8(y)
        steps.append(ChainStep(STAGES[tgt], tgt, out, {"name": g.name, "version": str(g.version)}))
        # The next transition starts from this step's pixels (re-read through the same path).
        x = pp.generator_input(out).unsqueeze(0)
    return steps


def run_chain(
    image_uint8: np.ndarray,
    from_stage: str | int,
    generators: Mapping[str, ChainGenerator | nn.Module],
    *,
    canonical: bool = False,
) -> ChainResult:
    """Canonicalise ``image_uint8`` once and synthesise every later stage up to Moderate.

    ``from_stage``: a stage name, slug or index (Moderate gives no steps). ``canonical=True``
    means the image is already a canonical 256 x 256 slice (only its brain mask is computed).
    """
    from alzprog import preprocessing as pp

    start = stage_index(from_stage)
    if canonical:
        img = np.asarray(image_uint8, dtype=np.uint8)
        mask = pp.brain_mask(img)
    else:
        c = pp.canonicalize(np.asarray(image_uint8))
        img, mask = c.image, c.mask
    return ChainResult(img, mask, start, chain_canonical(img, mask, start, generators))


def synthetic_png(image: np.ndarray, metadata: Mapping[str, str] | None = None, *, mark: bool = True) -> bytes:
    """PNG bytes of a generated image with the visible SYNTHETIC mark and text metadata saying so.

    ``mark=False`` for pictures whose synthetic tiles are already marked (the strip).
    """
    from PIL import Image, PngImagePlugin

    from alzprog import preprocessing as pp

    info = PngImagePlugin.PngInfo()
    info.add_text("Synthetic", "true")
    info.add_text("Description", "SYNTHETIC image generated by an alzprog progression model; not a scan of a person")
    for k, v in (metadata or {}).items():
        info.add_text(str(k), str(v))
    buf = io.BytesIO()
    Image.fromarray(pp.mark_synthetic(image) if mark else np.asarray(image, dtype=np.uint8)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def strip(original: np.ndarray, steps: list[ChainStep], labels: bool = True) -> np.ndarray:
    """Side-by-side RGB strip: the original, then each (marked) synthetic step, labelled by stage."""
    from PIL import Image, ImageDraw, ImageFont

    from alzprog import preprocessing as pp

    tiles = [np.stack([np.asarray(original, dtype=np.uint8)] * 3, axis=-1)] + [pp.mark_synthetic(s.image) for s in steps]
    names = ["input"] + [s.stage for s in steps]
    h = max(t.shape[0] for t in tiles)
    band = 22 if labels else 0
    canvas = Image.new("RGB", (sum(t.shape[1] for t in tiles), h + band), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=14)
    x = 0
    for tile, name in zip(tiles, names):
        canvas.paste(Image.fromarray(tile), (x, band))
        if labels:
            draw.text((x + 4, 3), name, fill=(255, 255, 255), font=font)
        x += tile.shape[1]
    return np.asarray(canvas)


def step_filename(k: int, step: ChainStep) -> str:
    """``step_<k>_<stage slug>.png``, e.g. ``step_1_vmd.png``."""
    return f"step_{k}_{STAGE_SLUGS[step.stage_index]}.png"


def classify_stage(image: np.ndarray, model: nn.Module, config: dict[str, Any]) -> tuple[int, np.ndarray]:
    """Stage index and probabilities of a canonical uint8 slice with a stage classifier artifact.

    Size, normalisation and temperature come from the classifier's ``config.json``.
    """
    from alzprog import preprocessing as pp

    size = int(config.get("image_size", 256))
    mean = tuple(config.get("mean", pp.IMAGENET_MEAN))
    std = tuple(config.get("std", pp.IMAGENET_STD))
    x = pp.classifier_input(image, size, mean, std).unsqueeze(0)
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(x.to(device)).float().cpu() / float(config.get("temperature", 1.0))
    probs = torch.softmax(logits, dim=1)[0].numpy()
    return int(probs.argmax()), probs


def load_classifier(uri: str | None = None, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any], str]:
    """The registered stage classifier (default ``models:/alzheimer-stage-classifier@champion``)."""
    from alzprog.artifacts import load_artifact
    from alzprog.registry import resolve_model

    resolved = resolve_model(uri or f"models:/{CLASSIFIER_MODEL_NAME}@{CHAMPION_ALIAS}")
    art = load_artifact(resolved.local_dir, device=device)
    return art.model, art.config, resolved.version
