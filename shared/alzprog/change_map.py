"""Change maps: where, and by how much, a synthesized step differs from the input slice.

For one step ``after = G(before)`` (both canonical uint8 slices, the same brain mask):

- :func:`change_numbers`: the signed and absolute mean change inside the brain, in grey levels,
  and the share of brain pixels changed by at least :data:`CHANGED_GREY_LEVELS`.
- :func:`change_overlay`: the input in grey with the change coloured inside the brain only, on
  a fixed scale (full colour at :data:`SCALE_GREY_LEVELS` or more). In T1 a darkening pixel is
  either tissue losing signal (thinning, still tissue after) or new CSF (it ends at CSF
  intensity): they get different colours, as does brightening (tissue gain).
- :func:`jacobian_determinant` and :func:`deformation_overlay`: for a generator that predicts a
  displacement field ``d`` (output pixel ``p`` is the step's input sampled at ``p + d(p)``, the
  convention of :class:`alzprog.models.progression_generator.DeformGenerator`), the local
  expansion and contraction of the tissue it shows: det J < 1 means the output draws on a
  smaller input area, so the tissue there is shown expanded (a widening ventricle).
- :func:`describe_chain`: all of the above plus the 2-D morphometrics
  (:func:`alzprog.morphometry.measure`) of the input and of every step, with their % change
  from the input: what the services return per step.

The tissue loss / CSF gain split uses the morphometry's CSF threshold of the input
(:func:`alzprog.morphometry.csf_threshold`), the same cut the measurements use.

Every picture made here is derived from a synthetic image, so it carries the SYNTHETIC banner
(:func:`alzprog.preprocessing.mark_synthetic`) and a legend burnt into the PNG, so a saved map
still says what its colours mean.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# The fixed colour scale: a change of this many grey levels (of 255) or more is drawn at full
# colour; smaller changes fade linearly towards the grey input. Fixed, so two maps compare.
SCALE_GREY_LEVELS = 40.0
# A pixel counts as changed (and is coloured at all) from this many grey levels: below it,
# the generators' reconstruction noise on an unchanged brain would colour everything.
CHANGED_GREY_LEVELS = 8.0
# The difference is smoothed by a Gaussian of this sigma (pixels) before it is thresholded and
# classified, so that independent pixel noise is not drawn or counted as change.
SMOOTH_SIGMA_PX = 1.0
# Deformation scale: |log det J| of this value is full colour.
SCALE_LOG_JACOBIAN = 0.3
# A pixel counts as expanding/contracting from this |log det J| (about 5 %).
CHANGED_LOG_JACOBIAN = 0.05

TISSUE_LOSS_RGB = (255, 140, 0)  # orange: darker, still tissue
CSF_GAIN_RGB = (40, 120, 255)  # blue: darker, now at CSF intensity
TISSUE_GAIN_RGB = (0, 200, 90)  # green: brighter
EXPANSION_RGB = (230, 40, 40)  # red: det J < 1, the tissue shown expanded
CONTRACTION_RGB = (40, 200, 230)  # cyan: det J > 1, the tissue shown contracted

LEGEND = {
    "tissue_loss": {"rgb": TISSUE_LOSS_RGB, "meaning": "darker, still tissue (tissue loss)"},
    "csf_gain": {"rgb": CSF_GAIN_RGB, "meaning": "darker, now at CSF intensity (CSF gain)"},
    "tissue_gain": {"rgb": TISSUE_GAIN_RGB, "meaning": "brighter (tissue gain)"},
}
DEFORMATION_LEGEND = {
    "expansion": {"rgb": EXPANSION_RGB, "meaning": "tissue shown expanded (Jacobian determinant of the sampling map < 1)"},
    "contraction": {"rgb": CONTRACTION_RGB, "meaning": "tissue shown contracted (Jacobian determinant > 1)"},
}


def _check(before: np.ndarray, after: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    b = np.asarray(before)
    a = np.asarray(after)
    m = np.asarray(mask, dtype=bool)
    if b.ndim != 2 or b.shape != a.shape or b.shape != m.shape:
        raise ValueError(f"before {b.shape}, after {a.shape} and mask {m.shape} must be the same 2-D shape")
    return b.astype(np.float32), a.astype(np.float32), m


def change_numbers(before: np.ndarray, after: np.ndarray, mask: np.ndarray) -> dict[str, float | int | None]:
    """The numbers behind a change map, inside the brain mask only.

    ``mean_change`` (signed, grey levels; negative = darker), ``mean_abs_change``,
    ``changed_fraction`` (smoothed |change| >= :data:`CHANGED_GREY_LEVELS`), and the shares of brain
    pixels coloured as tissue loss, CSF gain and tissue gain. ``None`` values when the mask is empty.
    """
    b, a, m = _check(before, after, mask)
    return _numbers(b, a, m, *_parts(b, a, m))


def _numbers(b: np.ndarray, a: np.ndarray, m: np.ndarray, d: np.ndarray,
             classes: dict[str, np.ndarray]) -> dict[str, float | int | None]:
    n = int(m.sum())
    out: dict[str, float | int | None] = {
        "brain_pixels": n,
        "scale_grey_levels": SCALE_GREY_LEVELS,
        "changed_threshold_grey_levels": CHANGED_GREY_LEVELS,
        "smooth_sigma_px": SMOOTH_SIGMA_PX,
    }
    if n == 0:
        out.update(mean_change=None, mean_abs_change=None, changed_fraction=None,
                   tissue_loss_fraction=None, csf_gain_fraction=None, tissue_gain_fraction=None)
        return out
    raw = (a - b)[m]
    smooth = d[m]
    out.update(
        mean_change=float(raw.mean()),
        mean_abs_change=float(np.abs(raw).mean()),
        changed_fraction=float((np.abs(smooth) >= CHANGED_GREY_LEVELS).mean()),
        tissue_loss_fraction=float(classes["tissue_loss"][m].mean()),
        csf_gain_fraction=float(classes["csf_gain"][m].mean()),
        tissue_gain_fraction=float(classes["tissue_gain"][m].mean()),
    )
    return out


def _difference(b: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``a - b`` smoothed by :data:`SMOOTH_SIGMA_PX` (grey levels)."""
    from scipy import ndimage as ndi

    return ndi.gaussian_filter(a - b, SMOOTH_SIGMA_PX)


def _parts(b: np.ndarray, a: np.ndarray, m: np.ndarray, csf: float | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The smoothed difference and the boolean maps of the three coloured kinds of change
    (inside ``m`` only), computed once for a step's numbers and its picture. ``csf``: the
    input's CSF threshold, when the caller already has it."""
    d = _difference(b, a)
    changed = m & (np.abs(d) >= CHANGED_GREY_LEVELS)
    if csf is None:
        from alzprog.morphometry import csf_threshold

        csf = csf_threshold(b, m)
    darker = changed & (d < 0)
    return d, {
        "tissue_loss": darker & (a >= csf),
        "csf_gain": darker & (a < csf),
        "tissue_gain": changed & (d > 0),
    }


def _grey_rgb(image: np.ndarray) -> np.ndarray:
    g = np.clip(np.asarray(image, dtype=np.float32), 0, 255)
    # Dimmed so that the colours stand out; the anatomy stays readable.
    return np.repeat((g * 0.75)[..., None], 3, axis=-1)


def _paint(rgb: np.ndarray, where: np.ndarray, strength: np.ndarray, colour: tuple[int, int, int]) -> None:
    # Only the pixels of ``where`` change (elsewhere the blend has alpha 0 and keeps rgb as it is).
    alpha = np.clip(strength[where], 0.0, 1.0)[:, None]
    rgb[where] = rgb[where] * (1.0 - alpha) + np.asarray(colour, dtype=np.float32) * alpha


def change_overlay(before: np.ndarray, after: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGB uint8 picture: ``before`` in grey, the change to ``after`` coloured inside the brain.

    Opacity grows linearly from :data:`CHANGED_GREY_LEVELS` to full at :data:`SCALE_GREY_LEVELS`.
    No banner or legend (see :func:`change_map_png`).
    """
    b, a, m = _check(before, after, mask)
    return _overlay(b, *_parts(b, a, m))


def _overlay(b: np.ndarray, d: np.ndarray, classes: dict[str, np.ndarray]) -> np.ndarray:
    rgb = _grey_rgb(b)
    strength = (np.abs(d) - CHANGED_GREY_LEVELS) / (SCALE_GREY_LEVELS - CHANGED_GREY_LEVELS)
    # Full colour from the threshold's start would hide the grade; start at a visible opacity.
    strength = 0.35 + 0.65 * np.clip(strength, 0.0, 1.0)
    for name, where in classes.items():
        _paint(rgb, where, strength, LEGEND[name]["rgb"])
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def jacobian_determinant(displacement: np.ndarray) -> np.ndarray:
    """det(I + grad d) of the sampling map ``p -> p + d(p)``; ``d`` shaped (2, H, W) in pixels,
    channel 0 along x, channel 1 along y."""
    d = np.asarray(displacement, dtype=np.float64)
    if d.ndim != 3 or d.shape[0] != 2:
        raise ValueError(f"displacement must be (2, H, W), got {d.shape}")
    dx_dy, dx_dx = np.gradient(d[0])
    dy_dy, dy_dx = np.gradient(d[1])
    return (1.0 + dx_dx) * (1.0 + dy_dy) - dx_dy * dy_dx


def deformation_numbers(displacement: np.ndarray, mask: np.ndarray) -> dict[str, float | None]:
    """Inside the brain: mean log det J, the shares shown expanded (log det J <= -
    :data:`CHANGED_LOG_JACOBIAN`) and contracted (>= it), and the share folding (det J <= 0)."""
    jac = jacobian_determinant(displacement)
    m = np.asarray(mask, dtype=bool)
    if jac.shape != m.shape:
        raise ValueError(f"displacement {jac.shape} and mask {m.shape} differ")
    out: dict[str, float | None] = {"scale_log_jacobian": SCALE_LOG_JACOBIAN, "changed_log_jacobian": CHANGED_LOG_JACOBIAN}
    if not m.any():
        out.update(mean_log_jacobian=None, expansion_fraction=None, contraction_fraction=None, folding_fraction=None)
        return out
    j = jac[m]
    logj = np.log(np.clip(j, 1e-6, None))
    out.update(
        mean_log_jacobian=float(logj.mean()),
        expansion_fraction=float((logj <= -CHANGED_LOG_JACOBIAN).mean()),
        contraction_fraction=float((logj >= CHANGED_LOG_JACOBIAN).mean()),
        folding_fraction=float((j <= 0).mean()),
    )
    return out


def deformation_overlay(before: np.ndarray, displacement: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGB uint8 picture: ``before`` (the step's input) in grey, the tissue shown expanded red and
    contracted cyan, inside the brain."""
    b = np.asarray(before, dtype=np.float32)
    m = np.asarray(mask, dtype=bool)
    logj = np.log(np.clip(jacobian_determinant(displacement), 1e-6, None))
    if logj.shape != b.shape or m.shape != b.shape:
        raise ValueError(f"before {b.shape}, displacement {logj.shape} and mask {m.shape} differ")
    rgb = _grey_rgb(b)
    strength = 0.35 + 0.65 * np.clip((np.abs(logj) - CHANGED_LOG_JACOBIAN) / (SCALE_LOG_JACOBIAN - CHANGED_LOG_JACOBIAN), 0.0, 1.0)
    _paint(rgb, m & (logj <= -CHANGED_LOG_JACOBIAN), strength, EXPANSION_RGB)
    _paint(rgb, m & (logj >= CHANGED_LOG_JACOBIAN), strength, CONTRACTION_RGB)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


@lru_cache(maxsize=8)
def _legend_strip(width: int, kind: str) -> np.ndarray:
    """The legend drawn under a map: one swatch per colour and the fixed scale."""
    entries = LEGEND if kind == "intensity" else DEFORMATION_LEGEND
    if kind == "intensity":
        scale = f"full colour at >= {SCALE_GREY_LEVELS:g} grey levels; none below {CHANGED_GREY_LEVELS:g}"
        labels = {"tissue_loss": "tissue loss", "csf_gain": "CSF gain", "tissue_gain": "tissue gain"}
    else:
        scale = f"full colour at |log det J| >= {SCALE_LOG_JACOBIAN:g}; none below {CHANGED_LOG_JACOBIAN:g}"
        labels = {"expansion": "expansion", "contraction": "contraction"}
    font_size = max(8, width // 24)
    font = ImageFont.load_default(size=font_size)
    line = font_size + 4
    canvas = Image.new("RGB", (width, 2 * line + 6), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    x = 4
    for key, entry in entries.items():
        draw.rectangle([x, 4, x + font_size, 4 + font_size], fill=tuple(entry["rgb"]))
        x += font_size + 3
        draw.text((x, 3), labels[key], font=font, fill=(235, 235, 235))
        x += int(draw.textlength(labels[key], font=font)) + 10
    draw.text((4, line + 3), scale, font=font, fill=(200, 200, 200))
    return np.asarray(canvas, dtype=np.uint8)


def _with_banner_and_legend(rgb: np.ndarray, kind: str) -> np.ndarray:
    from alzprog.preprocessing import mark_synthetic

    marked = mark_synthetic(rgb)
    return np.concatenate([marked, _legend_strip(marked.shape[1], kind)], axis=0)


def change_map_png(before: np.ndarray, after: np.ndarray, mask: np.ndarray) -> str:
    """:func:`change_overlay` with the SYNTHETIC banner and the legend, as a PNG data URL."""
    return _map_png(change_overlay(before, after, mask))


def _map_png(overlay: np.ndarray) -> str:
    from alzprog.decode import png_data_url

    return png_data_url(_with_banner_and_legend(overlay, "intensity"))


def deformation_map_png(before: np.ndarray, displacement: np.ndarray, mask: np.ndarray) -> str:
    """:func:`deformation_overlay` with the SYNTHETIC banner and the legend, as a PNG data URL."""
    from alzprog.decode import png_data_url

    return png_data_url(_with_banner_and_legend(deformation_overlay(before, displacement, mask), "deformation"))


def morphometry_dict(measured: Any, reference: Any | None = None) -> dict[str, Any]:
    """A :class:`alzprog.morphometry.Morphometry` as JSON-ready fields, plus ``tissue_area_px``
    (brain minus CSF: the area that atrophy shrinks) and, given ``reference``, ``pct_change``
    of the areas and ratios from it."""
    from alzprog.morphometry import percent_change

    out: dict[str, Any] = {k: v for k, v in measured.as_dict().items()}
    out["tissue_area_px"] = int(measured.brain_area_px - measured.csf_area_px)
    if reference is not None:
        pct = percent_change(reference, measured)
        ref_tissue = reference.brain_area_px - reference.csf_area_px
        pct["tissue_area_px"] = None if ref_tissue == 0 else 100.0 * (out["tissue_area_px"] - ref_tissue) / ref_tissue
        out["pct_change"] = pct
    return out


def describe_chain(
    before: np.ndarray,
    steps: list[np.ndarray],
    mask: np.ndarray,
    displacements: list[np.ndarray | None] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The input's morphometrics and, per step, what a person needs to read it.

    Each step's entry: ``change_map`` (PNG data URL), ``change`` (:func:`change_numbers`),
    ``morphometry`` (:func:`morphometry_dict` of the step, with % change from the input) and,
    where a displacement is given for it, ``deformation_map`` and ``deformation``. Change and
    morphometry compare every step with the input ``before``; a displacement belongs to its own
    transition, so its map is drawn over that step's input (the previous step). The change is read inside
    the input's brain mask (where the generators act); each step's morphometry uses its own
    brain mask (:func:`alzprog.preprocessing.brain_mask`) and the input's CSF threshold, so a
    shrinking brain shows and a contrast drift is not read as anatomy.
    """
    from alzprog.morphometry import csf_threshold, measure
    from alzprog.preprocessing import brain_mask

    m = np.asarray(mask, dtype=bool)
    b8 = np.asarray(before, dtype=np.uint8)
    reference = measure(b8, m)
    threshold = csf_threshold(b8, m)
    displacements = displacements or [None] * len(steps)
    out = []
    step_inputs = [b8] + [np.asarray(s, dtype=np.uint8) for s in steps[:-1]]
    bf = b8.astype(np.float32)
    for after, disp, step_input in zip(steps, displacements, step_inputs):
        a8 = np.asarray(after, dtype=np.uint8)
        b, a, _ = _check(bf, a8, m)
        d, classes = _parts(b, a, m, threshold)
        entry: dict[str, Any] = {
            "change_map": _map_png(_overlay(b, d, classes)),
            "change": _numbers(b, a, m, d, classes),
            "morphometry": morphometry_dict(measure(a8, brain_mask(a8), threshold=threshold), reference),
            "deformation_map": None,
            "deformation": None,
        }
        if disp is not None:
            entry["deformation_map"] = deformation_map_png(step_input, disp, m)
            entry["deformation"] = deformation_numbers(disp, m)
        out.append(entry)
    return morphometry_dict(reference), out
