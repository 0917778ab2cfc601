"""The seeded tiny models behind the golden answers, and the library's answers with them.

``tests/data/make_golden.py`` writes the library's answers as golden files; ``test_golden.py``
checks the library against those files and the services against the library.
"""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
from service_helpers import tiny_generator_artifact

from alzprog.constants import TRANSITIONS

CLASSIFIER_SEED = 11


def perturbed_classifier_artifact(out: Path, seed: int, temperature: float) -> Path:
    """A 64-px tiny classifier whose weights are perturbed so that its probabilities differ
    between classes and inputs (a freshly initialised one answers nearly uniform)."""
    import torch

    from alzprog.artifacts import save_artifact
    from alzprog.models import build_model
    from alzprog.models.stage_classifier import classifier_config

    cfg = classifier_config("efficientnet_b0", 64, width_mult=0.1, depth_mult=0.1, temperature=temperature, pretrained="none")
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.25 * torch.randn_like(p))
    save_artifact(out, model, cfg, torch.randn(1, 3, 64, 64))
    return out


@lru_cache(maxsize=1)
def golden_artifacts() -> tuple[Path, dict[str, Path]]:
    """The tiny classifier and the three tiny generators (same seeds every time), built once."""
    root = Path(tempfile.mkdtemp(prefix="alzprog-golden-"))
    classifier = perturbed_classifier_artifact(root / "classifier", seed=CLASSIFIER_SEED, temperature=1.5)
    generators = {slug: tiny_generator_artifact(root / slug, seed=20 + i) for i, (slug, _, _) in enumerate(TRANSITIONS)}
    return classifier, generators


def library_answers(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """The library's calibrated probabilities and chain steps (from Non Demented) for a canonical slice."""
    from alzprog.artifacts import load_artifact
    from alzprog.inference.chain import chain_canonical
    from alzprog.inference.classifier import classify_stage

    classifier, generators = golden_artifacts()
    art = load_artifact(classifier)
    _, probs = classify_stage(image, art.model, art.config)
    models = {slug: load_artifact(path).model for slug, path in generators.items()}
    steps = chain_canonical(image, mask, 0, models)
    return probs, [s.image for s in steps]
