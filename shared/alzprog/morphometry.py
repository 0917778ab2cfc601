"""2-D morphometry of one slice from the library's own segmentation (numpy/scipy only).

From a grayscale slice and its brain mask (:func:`alzprog.preprocessing.brain_mask`), the
brain is split by intensity and by depth:

- **CSF**: brain pixels darker than :data:`CSF_FRACTION` of the brain's median intensity,
  counted inside the mask eroded by :data:`CSF_ERODE` pixels, so the dark edge of the mask
  itself is not counted;
- **ventricles**: the CSF deep inside the brain (farther than :data:`VENTRICLE_DEPTH` of
  the brain's largest depth from its edge), where sulcal CSF cannot be;
- **cortical rim**: the outer band of the brain (depth below :data:`RIM_DEPTH`), where
  cortical atrophy widens the sulci (rim CSF) and thins the grey matter.

Every measure is scale-free where it can be (fractions of the brain area) and in pixels of
the given frame otherwise, so areas from images of different sizes are compared as ratios.
These are the measures the morphometric baseline classifier, the per-step measurements of
``/progression`` and the change-fidelity metric use: one definition for all three.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi

# Dark CSF: darker than this fraction of the median brain intensity.
CSF_FRACTION = 0.55
# Erosion (pixels at 256 x 256) of the brain mask before counting CSF, so the dark rim
# outside the cortex (the mask's edge) is not counted.
CSF_ERODE = 6
# Ventricles: CSF deeper than this fraction of the brain's largest depth.
VENTRICLE_DEPTH = 0.3
# Cortical rim: brain pixels shallower than this fraction of the brain's largest depth.
RIM_DEPTH = 0.2
# The frame in which CSF_ERODE is given.
REFERENCE_SIZE = 256

FEATURE_NAMES = (
    "brain_area_frac",
    "csf_frac",
    "ventricle_frac",
    "rim_csf_frac",
    "rim_intensity",
    "rim_contrast",
    "deep_intensity",
    "brain_compactness",
)


@dataclass(frozen=True)
class Morphometry:
    """The measures of one slice (areas in pixels of the measured frame)."""

    brain_area_px: int
    csf_area_px: int
    ventricle_area_px: int
    rim_csf_area_px: int
    ventricle_to_brain: float
    csf_to_brain: float
    rim_csf_to_rim: float
    rim_intensity: float
    rim_contrast: float
    deep_intensity: float
    brain_compactness: float
    frame_area_px: int

    def as_dict(self) -> dict[str, float]:
        """Plain floats and ints (JSON-ready)."""
        return asdict(self)

    def features(self) -> np.ndarray:
        """The scale-free feature vector (:data:`FEATURE_NAMES`) a morphometric model reads."""
        return np.array(
            [
                self.brain_area_px / max(self.frame_area_px, 1),
                self.csf_to_brain,
                self.ventricle_to_brain,
                self.rim_csf_to_rim,
                self.rim_intensity,
                self.rim_contrast,
                self.deep_intensity,
                self.brain_compactness,
            ],
            dtype=np.float64,
        )


def csf_threshold(image: np.ndarray, mask: np.ndarray) -> float:
    """Intensity below which a brain pixel counts as CSF (a fraction of the median brain intensity)."""
    vals = np.asarray(image)[np.asarray(mask, dtype=bool)]
    return float(CSF_FRACTION * np.median(vals)) if vals.size else 0.0


def _erode_px(shape: tuple[int, ...]) -> int:
    return max(1, round(CSF_ERODE * max(shape) / REFERENCE_SIZE))


def inner_mask(mask: np.ndarray) -> np.ndarray:
    """The brain mask eroded so that its dark edge is not counted as CSF."""
    m = np.asarray(mask, dtype=bool)
    return ndi.binary_erosion(m, iterations=_erode_px(m.shape))


def csf_area(image: np.ndarray, mask: np.ndarray, threshold: float) -> int:
    """Number of dark (CSF) pixels inside the eroded brain mask, below ``threshold``."""
    return int(((np.asarray(image) < threshold) & inner_mask(mask)).sum())


def measure(image: np.ndarray, mask: np.ndarray, threshold: float | None = None) -> Morphometry:
    """Measure one slice. ``threshold``: the CSF intensity cut (default: from this image).

    To follow one brain through synthetic steps, pass the input's threshold for every step, so
    that a change of contrast is not read as a change of anatomy.
    """
    img = np.asarray(image, dtype=np.float32)
    m = np.asarray(mask, dtype=bool)
    if img.shape != m.shape:
        raise ValueError(f"image {img.shape} and mask {m.shape} differ in shape")
    brain = int(m.sum())
    frame = int(m.size)
    if brain == 0:
        return Morphometry(0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, frame)
    thr = csf_threshold(img, m) if threshold is None else float(threshold)
    erode = _erode_px(m.shape)
    # Everything below reads the brain and a band around it only: the brain's box with a
    # background margin wider than the erosion gives the same distances and erosions as the
    # whole frame (outside the box is background either way), on fewer pixels.
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    pad = erode + 2
    box = (slice(max(rows[0] - pad, 0), rows[-1] + pad + 1), slice(max(cols[0] - pad, 0), cols[-1] + pad + 1))
    img, m = img[box], m[box]
    depth = ndi.distance_transform_edt(m)
    dmax = float(depth.max())
    dark = img < thr
    inner = ndi.binary_erosion(m, iterations=erode)
    csf = dark & inner
    deep = m & (depth > VENTRICLE_DEPTH * dmax)
    rim = m & (depth <= RIM_DEPTH * dmax)
    ventricles = csf & deep
    rim_csf = csf & rim
    median = float(np.median(img[m])) or 1.0
    rim_vals = img[rim & ~dark]
    deep_vals = img[deep & ~dark]
    rim_intensity = float(rim_vals.mean() / median) if rim_vals.size else 0.0
    deep_intensity = float(deep_vals.mean() / median) if deep_vals.size else 0.0
    # Perimeter^2 / (4 pi area): 1 for a disk, larger for a folded or shrunken outline.
    edge = m & ~ndi.binary_erosion(m)
    compactness = float(edge.sum() ** 2 / (4 * np.pi * brain))
    return Morphometry(
        brain_area_px=brain,
        csf_area_px=int(csf.sum()),
        ventricle_area_px=int(ventricles.sum()),
        rim_csf_area_px=int(rim_csf.sum()),
        ventricle_to_brain=float(ventricles.sum() / brain),
        csf_to_brain=float(csf.sum() / brain),
        rim_csf_to_rim=float(rim_csf.sum() / max(int(rim.sum()), 1)),
        rim_intensity=rim_intensity,
        rim_contrast=float(rim_vals.std() / median) if rim_vals.size else 0.0,
        deep_intensity=deep_intensity,
        brain_compactness=compactness,
        frame_area_px=frame,
    )


def percent_change(before: Morphometry, after: Morphometry) -> dict[str, float | None]:
    """% change of the areas and ratios from ``before`` to ``after`` (None where ``before`` is 0)."""
    out: dict[str, float | None] = {}
    for key in ("brain_area_px", "csf_area_px", "ventricle_area_px", "ventricle_to_brain", "csf_to_brain"):
        a, b = float(getattr(before, key)), float(getattr(after, key))
        out[key] = None if a == 0 else 100.0 * (b - a) / a
    return out
