"""Input quality gate: is a decoded upload an axial brain MRI slice at all?

A magnitude MRI slice has a black background around one compact, roughly elliptical head,
smooth at the pixel scale, with a brain inside it. :func:`assess` measures exactly that on the
canonical slice (:func:`alzprog.preprocessing.canonicalize`) and refuses what fails any rule:

- ``blank_image``: (almost) constant pixels;
- ``noise_image``: neighbouring pixels barely correlate (white noise, not anatomy);
- ``no_dark_background``: the frame's border is not mostly black (a photograph, a document
  scan, most radiographs);
- ``no_head_outline``: the foreground is not one compact blob filling a plausible share of the
  frame (text, scattered objects, a chest with dark lungs inside a bright body);
- ``no_brain``: the brain mask covers too little of the head.

The thresholds are set with room on both sides from the sets in tests/test_quality.py (the
phantom's slices and the real OASIS samples on one side; photographs, document scans, blank,
noise and radiograph-like images on the other); docs/api.md gives the measured rates.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

BLANK_STD = 3.0  # grey levels
MIN_NEIGHBOUR_CORRELATION = 0.5
BORDER_FRACTION = 0.06  # width of the border band, as a share of the side
BORDER_DARK_LEVEL = 40  # grey level under which a border pixel counts as background
MIN_DARK_BORDER = 0.93  # share of the border band that must be background
HEAD_AREA_RANGE = (0.15, 0.92)  # head mask / frame
MIN_HEAD_SOLIDITY = 0.85  # head area / its convex hull's area
MIN_BRAIN_IN_HEAD = 0.1  # brain mask / head mask


class NotABrainSlice(ValueError):
    """The upload is not a brain MRI slice; ``code`` names the rule, ``message`` is for a person."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class QualityFigures:
    """The statistics the gate reads (all scale-free)."""

    std: float
    neighbour_correlation: float
    dark_border: float
    head_area: float
    head_solidity: float
    brain_in_head: float

    def as_dict(self) -> dict[str, float]:
        """Plain floats (JSON-ready)."""
        return {k: float(v) for k, v in asdict(self).items()}


def _neighbour_correlation(g: np.ndarray) -> float:
    a = g[:, :-1].ravel()
    b = g[:, 1:].ravel()
    if a.std() == 0 or b.std() == 0:
        return 1.0
    return float(np.corrcoef(a, b)[0, 1])


def _solidity(mask: np.ndarray) -> float:
    from scipy.spatial import ConvexHull, QhullError

    ys, xs = np.nonzero(mask)
    if len(ys) < 10:
        return 0.0
    try:
        hull = ConvexHull(np.column_stack([ys, xs]))
    except QhullError:
        return 0.0
    return float(min(1.0, mask.sum() / max(hull.volume, 1.0)))  # .volume is the area in 2-D


def measure(image: np.ndarray, brain: np.ndarray | None = None) -> QualityFigures:
    """The gate's statistics of a canonical uint8 slice (``brain``: its brain mask, if known)."""
    from alzprog.preprocessing import brain_mask, head_mask

    g = np.asarray(image, dtype=np.float32)
    h, w = g.shape
    std = float(g.std())
    if std < BLANK_STD:
        return QualityFigures(std, 1.0, 1.0, 0.0, 0.0, 0.0)
    band = max(2, int(round(BORDER_FRACTION * min(h, w))))
    border = np.concatenate([g[:band].ravel(), g[-band:].ravel(), g[:, :band].ravel(), g[:, -band:].ravel()])
    head = head_mask(np.asarray(image, dtype=np.uint8))
    head_area = float(head.mean())
    m = brain_mask(np.asarray(image, dtype=np.uint8)) if brain is None else np.asarray(brain, dtype=bool)
    return QualityFigures(
        std=std,
        neighbour_correlation=_neighbour_correlation(g),
        dark_border=float((border < BORDER_DARK_LEVEL).mean()),
        head_area=head_area,
        head_solidity=_solidity(head),
        brain_in_head=float((m & head).sum() / max(head.sum(), 1)),
    )


def check(figures: QualityFigures) -> None:
    """Raise :class:`NotABrainSlice` for the first rule ``figures`` fail."""
    if figures.std < BLANK_STD:
        raise NotABrainSlice("blank_image", "the image is blank (almost constant): not a brain MRI slice")
    if figures.neighbour_correlation < MIN_NEIGHBOUR_CORRELATION:
        raise NotABrainSlice("noise_image", "the image is noise, not anatomy: not a brain MRI slice")
    if figures.dark_border < MIN_DARK_BORDER:
        raise NotABrainSlice(
            "no_dark_background", "the image has no dark background around a head, as an MRI slice has (a photograph or a scan?)")
    lo, hi = HEAD_AREA_RANGE
    if not lo <= figures.head_area <= hi or figures.head_solidity < MIN_HEAD_SOLIDITY:
        raise NotABrainSlice("no_head_outline", "no single head outline was found: not an axial brain MRI slice")
    if figures.brain_in_head < MIN_BRAIN_IN_HEAD:
        raise NotABrainSlice("no_brain", "no brain was found inside the head outline")


def assess(image: np.ndarray, brain: np.ndarray | None = None) -> QualityFigures:
    """:func:`measure` then :func:`check`: the figures of a slice that passes, else :class:`NotABrainSlice`."""
    figures = measure(image, brain)
    check(figures)
    return figures


# ---------------------------------------------------------------------- warnings (a 200, not a 422)
OUT_OF_DISTRIBUTION = "out_of_distribution"
SALIENCY_OUTSIDE_BRAIN = "saliency_outside_brain"
# Below this fraction of Grad-CAM saliency inside the brain, the explanation raises a shortcut
# alarm. Here, not in alzprog.explain (torch), so the gateway's warnings need no torch.
SHORTCUT_THRESHOLD = 0.5


def warnings_for(ood: dict | None, saliency_in_brain: float | None) -> list[dict[str, str]]:
    """The notices for a slice that passed the gate: unlike the model's training data (``ood``:
    the classifier's score, :mod:`alzprog.ood`), or a Grad-CAM mostly outside the brain."""
    out: list[dict[str, str]] = []
    if ood is not None and ood.get("out_of_distribution"):
        out.append({
            "code": OUT_OF_DISTRIBUTION,
            "message": (
                "This slice is unlike the slices the model was trained on (feature distance "
                f"{ood['score']:.2f}, threshold {ood['threshold']:.2f}): another kind of scan, plane, level or "
                "contrast. The stage and the synthetic images may not mean anything for it."),
        })
    if saliency_in_brain is not None and saliency_in_brain < SHORTCUT_THRESHOLD:
        out.append({
            "code": SALIENCY_OUTSIDE_BRAIN,
            "message": (
                f"Only {100 * saliency_in_brain:.0f} % of the Grad-CAM saliency lies inside the brain: the model "
                "looked mostly elsewhere (skull, background, border), which suggests a shortcut, not anatomy."),
        })
    return out


def report(ood: dict | None, explain: dict | None) -> dict:
    """The ``quality`` object of an answer: warnings, and the OOD score with its threshold (nulls
    when the served model has no reference)."""
    fraction = explain.get("saliency_in_brain_fraction") if explain else None
    return {
        "warnings": warnings_for(ood, fraction),
        "ood_score": None if ood is None else float(ood["score"]),
        "ood_threshold": None if ood is None else float(ood["threshold"]),
        "out_of_distribution": None if ood is None else bool(ood["out_of_distribution"]),
    }
