"""The one progression loop: a canonical slice -> the same slice at every later stage.

Each transition generator (``alzprog.constants.TRANSITIONS``) takes the previous step's uint8
pixels, read back through the shared preprocessing, with the brain mask of the input (the
change stays confined to the brain the subject came in with). ``alzprog progress``, evaluation
and the generator service all run :func:`run_transitions`; they differ only in how one
transition is computed (a PyTorch module here, or the service's chosen backend).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence

import numpy as np

from alzprog.constants import CHAMPION_ALIAS, STAGES, TRANSITIONS, progression_model_name, stage_index

if TYPE_CHECKING:
    import torch
    import torch.nn as nn


class Transition(Protocol):
    """One transition: canonical uint8 image + bool brain mask -> uint8 image of the next stage.

    An implementation may also offer ``displacement(image, mask) -> (2, H, W) | None``.
    """

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray: ...


def generator_feed(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The generators' exported input: ``(1, 2, H, W)`` float32, image in [-1, 1] and mask 0/1."""
    from alzprog.preprocessing import generator_input

    x = generator_input(image).numpy().astype(np.float32)
    m = np.asarray(mask).astype(np.float32)[None]
    return np.concatenate([x, m], axis=0)[None]


class TorchTransition:
    """A transition generator module run on pixels (the model's device, no gradients).

    ``serving=True`` prepares the module for repeated CPU serving in the channels-last layout
    (the module is changed in place, so pass only a module loaded for serving).
    """

    def __init__(self, model: "nn.Module", *, serving: bool = False) -> None:
        import torch

        model.eval()
        if serving:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.serving = serving

    def _input(self, image: np.ndarray, mask: np.ndarray) -> "torch.Tensor":
        import torch

        x = torch.from_numpy(generator_feed(image, mask))
        if self.serving:
            x = x.contiguous(memory_format=torch.channels_last)
        return x.to(next(self.model.parameters()).device)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import torch

        from alzprog.preprocessing import generator_output_to_uint8

        with torch.inference_mode():
            out = self.model(self._input(image, mask))
        return generator_output_to_uint8(out[0].float().cpu())

    def displacement(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
        """The pixel displacement ``(2, H, W)`` (x then y) where the model predicts one, else ``None``."""
        if not hasattr(self.model, "displacement"):
            return None
        import torch

        with torch.inference_mode():
            disp = self.model.displacement(self._input(image, mask))
        return disp[0].to(torch.float32).cpu().numpy()


def displacement_of(transition: Transition, image: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """``transition.displacement(image, mask)`` where it has one, else ``None``."""
    fn = getattr(transition, "displacement", None)
    return fn(image, mask) if fn is not None else None


@dataclass
class TransitionOutputs:
    """The synthesised images in order, and each transition's displacement (or ``None``)."""

    images: list[np.ndarray]
    displacements: list[np.ndarray | None]


def run_transitions(
    image: np.ndarray,
    mask: np.ndarray,
    transitions: Sequence[Transition],
    *,
    with_displacements: bool = False,
) -> TransitionOutputs:
    """Apply ``transitions`` in order to a canonical image; each step feeds the next (same mask).

    ``with_displacements``: also ask each transition for its displacement of its own input.
    """
    current = np.asarray(image, dtype=np.uint8)
    images: list[np.ndarray] = []
    displacements: list[np.ndarray | None] = []
    for transition in transitions:
        if with_displacements:
            displacements.append(displacement_of(transition, current, mask))
        current = transition(current, mask)
        images.append(current)
    return TransitionOutputs(images, displacements)


def transitions_from(from_stage: str | int) -> list[tuple[str, int, int]]:
    """The ``(slug, source, target)`` transitions from ``from_stage`` up to Moderate (none from Moderate)."""
    start = stage_index(from_stage)
    return [t for t in TRANSITIONS if t[1] >= start]


# --------------------------------------------------------------------------- the library chain
@dataclass
class ChainGenerator:
    """One transition generator ready to run, with the registered name/version it came from."""

    transition: str
    model: "nn.Module"
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


def load_chain_generators(alias: str = CHAMPION_ALIAS, device: "str | torch.device" = "cpu") -> dict[str, ChainGenerator]:
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


def _as_generator(slug: str, g: "ChainGenerator | nn.Module") -> ChainGenerator:
    if isinstance(g, ChainGenerator):
        return g
    return ChainGenerator(slug, g, progression_model_name(slug), "unregistered")


def chain_canonical(
    image: np.ndarray,
    mask: np.ndarray,
    from_stage: int,
    generators: Mapping[str, "ChainGenerator | nn.Module"],
) -> list[ChainStep]:
    """Run the transitions from ``from_stage`` to Moderate on an already canonical image."""
    todo = transitions_from(from_stage)
    missing = [slug for slug, _, _ in todo if slug not in generators]
    if missing:
        raise LookupError(f"no generator for transition {missing[0]}")
    chosen = [_as_generator(slug, generators[slug]) for slug, _, _ in todo]
    outputs = run_transitions(image, mask, [TorchTransition(g.model) for g in chosen])
    return [
        ChainStep(STAGES[tgt], tgt, out, {"name": g.name, "version": str(g.version)})
        for (_, _, tgt), g, out in zip(todo, chosen, outputs.images)
    ]


def run_chain(
    image_uint8: np.ndarray,
    from_stage: str | int,
    generators: Mapping[str, "ChainGenerator | nn.Module"],
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
