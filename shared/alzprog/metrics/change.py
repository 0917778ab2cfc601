"""Change fidelity: does a generated progression change the brain the way the true future does?

Anatomy: the CSF/ventricle area inside the eroded brain mask, under a threshold taken from the
chain's input. Change: the generated and the true change (each against the same input),
smoothed by the same Gaussian, correlated inside the brain; growth: generated over true growth
of the CSF area. Evaluation reports these; training calibrates the deformation gain on them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi

# Dark CSF: darker than this fraction of the median brain intensity of the chain's input.
CSF_FRACTION = 0.55
# Erosion (pixels) of the input's brain mask before counting CSF, so the dark rim outside the
# cortex (the mask's edge) is not counted as ventricle.
CSF_ERODE = 6


# --------------------------------------------------------------------------- anatomy


def csf_threshold(image: np.ndarray, mask: np.ndarray) -> float:
    """Intensity below which a brain pixel counts as CSF, from the chain's input image."""
    vals = np.asarray(image)[np.asarray(mask, dtype=bool)]
    return float(CSF_FRACTION * np.median(vals)) if vals.size else 0.0


def ventricle_area(image: np.ndarray, mask: np.ndarray, threshold: float) -> int:
    """Number of dark (CSF) pixels inside the eroded brain mask."""
    inner = ndi.binary_erosion(np.asarray(mask, dtype=bool), iterations=CSF_ERODE)
    return int(((np.asarray(image) < threshold) & inner).sum())


def grows(areas: list[int]) -> bool:
    """Strictly increasing along the sequence (never shrinks, never stalls)."""
    return all(b > a for a, b in zip(areas, areas[1:]))


# --------------------------------------------------------------------------- change fidelity

# The phantom draws independent noise into every stage image, so the raw change y - x is mostly
# noise; both changes are smoothed by the same Gaussian before they are compared (sigma in
# pixels of a 256 x 256 frame, scaled with the frame).
CHANGE_SIGMA_256 = 2.0
# Per-pair growth ratios are only meaningful where the true growth is clearly above the
# threshold's pixel jitter; smaller true growths are left out of the median (not of the pooled ratio).
GROWTH_MIN_PX = 20


def change_sigma(size: int) -> float:
    """Gaussian sigma (pixels) of the change comparison for a ``size`` x ``size`` frame."""
    return CHANGE_SIGMA_256 * float(size) / 256.0


def smoothed_change(source: np.ndarray, image: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """``image - source`` (float grey levels), smoothed by the change-fidelity Gaussian."""
    s = np.asarray(source, dtype=np.float64)
    sig = change_sigma(s.shape[-1]) if sigma is None else sigma
    return ndi.gaussian_filter(np.asarray(image, dtype=np.float64) - s, sig)


def change_correlation(source: np.ndarray, generated: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float:
    """Pearson correlation inside ``mask`` of the smoothed generated and true changes of one image.

    A generated change that is constant inside the brain (the identity's zero change) has no
    correlation defined; it is scored 0: it explains none of the true change. A constant true
    change (nothing to reproduce) gives NaN.
    """
    m = np.asarray(mask, dtype=bool)
    if m.sum() < 2:
        return float("nan")
    g = smoothed_change(source, generated)[m]
    t = smoothed_change(source, target)[m]
    g, t = g - g.mean(), t - t.mean()
    ng, nt = float(np.sqrt((g * g).sum())), float(np.sqrt((t * t).sum()))
    if nt <= 1e-9:
        return float("nan")
    if ng <= 1e-9:
        return 0.0
    return float((g * t).sum() / (ng * nt))


def growth_areas(source: np.ndarray, images: np.ndarray, source_mask: np.ndarray) -> np.ndarray:
    """CSF/ventricle area of each image, counted with its source's threshold and brain mask."""
    return np.array([
        ventricle_area(im_, m, csf_threshold(s, m)) for s, im_, m in zip(source, images, source_mask)
    ], dtype=np.float64)


def change_fidelity(
    source: np.ndarray, generated: np.ndarray, target: np.ndarray, source_mask: np.ndarray, mask: np.ndarray
) -> dict[str, Any]:
    """Change fidelity of a set of generated images against the true future of the same inputs.

    ``change_corr``: mean over pairs of :func:`change_correlation` (median beside it).
    ``growth_ratio`` (the headline growth figure): generated CSF/ventricle growth over true
    growth, pooled as a ratio of sums, ``sum(A(G(x)) - A(x)) / sum(A(y) - A(x))``, with
    :func:`ventricle_area` under the input's threshold and brain mask. ``growth_ratio_median``:
    the median of per-pair ratios over pairs whose true growth is at least ``GROWTH_MIN_PX``.
    """
    corr = np.array([change_correlation(s, g, t, m) for s, g, t, m in zip(source, generated, target, mask)])
    a_src = growth_areas(source, source, source_mask)
    a_gen = growth_areas(source, generated, source_mask)
    a_tgt = growth_areas(source, target, source_mask)
    gen_growth, true_growth = a_gen - a_src, a_tgt - a_src
    total_true = float(true_growth.sum())
    big = true_growth >= GROWTH_MIN_PX
    finite = corr[np.isfinite(corr)]
    return {
        "change_corr": float(finite.mean()) if finite.size else float("nan"),
        "change_corr_median": float(np.median(finite)) if finite.size else float("nan"),
        "growth_ratio": float(gen_growth.sum() / total_true) if abs(total_true) > 0 else float("nan"),
        "growth_ratio_median": float(np.median(gen_growth[big] / true_growth[big])) if big.any() else float("nan"),
        "generated_growth_px": float(gen_growth.mean()),
        "true_growth_px": float(true_growth.mean()),
        "n_growth_pairs": int(big.sum()),
    }
