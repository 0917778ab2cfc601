"""Test-time augmentation: how much a stage probability moves under harmless changes of the slice.

A fixed set of views of the canonical slice (mirror, small rotations, intensity gamma, and
combinations) is classified with the served model's own inference path, and the spread of each
stage's probability over the views is reported. A large spread says the answer hangs on details
that should not matter. The views are fixed (no randomness) so the same upload always gets the
same spread and the result can be cached.

The mirror is the patient's left-right mirror: in the canonical layout (as the OASIS slices:
face to the right, the patient's right at the top) that is an up-down flip of the array; a
left-right flip would turn the face backwards, which no scan looks like.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from alzprog.constants import STAGES

# (mirror, rotation in degrees, gamma): the first view is the slice itself.
VIEWS: tuple[tuple[bool, float, float], ...] = (
    (False, 0.0, 1.0),
    (True, 0.0, 1.0),
    (False, 7.0, 1.0),
    (False, -7.0, 1.0),
    (False, 0.0, 0.85),
    (False, 0.0, 1.15),
    (True, 4.0, 1.1),
    (True, -4.0, 0.9),
)


def view(image: np.ndarray, mirror: bool, degrees: float, gamma: float) -> np.ndarray:
    """One augmented copy of a uint8 canonical slice (same shape and dtype)."""
    from scipy import ndimage

    g = np.asarray(image, dtype=np.float32)
    if mirror:
        g = g[::-1, :]
    if degrees:
        g = ndimage.rotate(g, degrees, reshape=False, order=1, mode="constant", cval=0.0)
    if gamma != 1.0:
        g = 255.0 * np.power(np.clip(g, 0, 255) / 255.0, gamma)
    return np.clip(np.rint(g), 0, 255).astype(np.uint8)


def views(image: np.ndarray) -> list[np.ndarray]:
    """Every view of :data:`VIEWS`, in order."""
    return [view(image, *v) for v in VIEWS]


def summarise(probabilities: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Spread per stage over the views' probabilities (V, 4): mean, SD, 10th and 90th percentiles."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(STAGES) or len(p) == 0:
        raise ValueError("probabilities must be (views, 4)")

    def per_stage(values: np.ndarray) -> dict[str, float]:
        return {name: float(v) for name, v in zip(STAGES, values)}

    return {
        "views": int(len(p)),
        "mean": per_stage(p.mean(axis=0)),
        "std": per_stage(p.std(axis=0)),
        "p10": per_stage(np.quantile(p, 0.1, axis=0)),
        "p90": per_stage(np.quantile(p, 0.9, axis=0)),
        "agreement": float((p.argmax(axis=1) == p[0].argmax()).mean()),
    }
