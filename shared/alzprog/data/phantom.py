"""``alzprog data synth``: a synthetic OASIS phantom with a longitudinal ground truth.

Real OASIS-1 is cross-sectional, so progression has no ground truth there. The phantom
gives one: every synthetic subject is rendered at all four stages (same anatomy,
increasing AD-like atrophy), and its own stage is also written in the exact Kaggle layout
so the whole pipeline runs on it unchanged.

Method (see docs/phantom.md for the measured figures):

* Anatomy comes from the real MNI152 2009 template shipped with nilearn (T1, grey and
  white matter maps, brain mask), loaded once per process (``load_template``). A lateral
  ventricle label and an intracranial (head) outline are derived from it once.
* Per subject: an affine (head size about +-8 %, rotation, shift, slice offset and tilt)
  and a smooth random displacement field map every output pixel to a point of the
  template; the chosen axial slices are sampled in 2-D from the 3-D template (no 3-D warp
  per subject). The baseline ventricle size varies between people (log-normal, CV 35 %).
* Atrophy of continuous severity ``s`` in [0, 1] is applied on these 2-D maps, calibrated
  per slice to the published effect sizes at ``s = 1``: lateral ventricles 2x their area,
  medial temporal (hippocampal) grey matter -30 %, cortical grey matter -12 % removed
  from the side of the sulcal CSF (thinner cortex, wider sulci), and a global shrink of
  the brain inside a fixed skull. Stage = severity bin.
* Rendering: piecewise-linear T1 contrast per subject, a skull-and-scalp rim, a bias
  field, Rician noise, a noisy halo around the head and JPEG quality 75 at 496x248 with
  3 identical channels, like the Kaggle slices.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import multiprocessing
import os
import resource
import shutil
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from alzprog.constants import STAGES

log = logging.getLogger(__name__)

IMAGE_HEIGHT, IMAGE_WIDTH = 248, 496
SLICE_MIN, SLICE_MAX = 100, 160
# Slice index 130 sits at MNI z = 0 (basal ganglia, third ventricle); one index per mm.
SLICE_AT_Z0 = 130
# Default slices span the hippocampi (z about -20) to the bodies of the lateral ventricles.
DEFAULT_SLICE_RANGE = (108, 152)
PX_PER_MM = 1.5  # the real slices show a ~140 mm wide brain over ~205 rows
COLUMN_STRETCH = 1.07  # and a head slightly stretched along the columns
OASIS_STAGE_COUNTS = (266, 58, 21, 2)  # OASIS-1 subjects per stage (Kaggle slice set)
MIN_PER_STAGE = 2
MIXES = ("oasis", "balanced")

# Effect sizes at severity s = 1 (relative to the same subject at s = 0).
VENTRICLE_GROWTH_AT_S1 = 1.0  # +100 %: about twice the volume in AD vs controls
HIPPOCAMPAL_LOSS_AT_S1 = 0.30  # medial temporal / hippocampal grey matter -30 %
# Cortical grey matter thinning: the erosion removes this share of the cortical GM; with the
# global shrink the measured cortical GM loss at s = 1 is about -12 % (docs/phantom.md).
CORTICAL_LOSS_AT_S1 = 0.085
GLOBAL_SHRINK_AT_S1 = 0.02
VENTRICLE_PUSH_DECAY_PX = 24.0  # how far into the tissue the ventricle push reaches (px)
BASELINE_VENTRICLE_CV = 0.35  # between-person variation in elderly controls

LONGITUDINAL_COLUMNS = (
    "subject", "slice", "stage", "stage_index", "severity", "path",
    "ventricle_area_px", "brain_area_px", "hippocampus_area_px", "cortex_area_px", "icv_mask_path",
)
SUBJECT_COLUMNS = (
    "subject", "stage", "stage_index", "severity", "age", "sex", "baseline_ventricle_scale", "head_scale",
    "severity_0", "severity_1", "severity_2", "severity_3", "slice_offset_mm", "rotation_deg", "acquisition",
)
SUMMARY_NAME = "phantom_summary.json"


# ----------------------------------------------------------------------------- template


@dataclass(frozen=True)
class Template:
    """The MNI152 2009 template (1 mm) and maps derived from it, as float32 volumes (x, y, z)."""

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    mask: np.ndarray
    ventricles: np.ndarray
    icv: np.ndarray  # intracranial space per axial plane: the brain closed and slightly dilated
    skull: np.ndarray  # the inside of the head outline: convex hull of the brain in a +-6 mm slab
    origin_vox: tuple[float, float, float]  # voxel index of MNI (0, 0, 0)
    t1_csf: float
    t1_gm: float
    t1_wm: float
    t1_ventricle: float


@lru_cache(maxsize=1)
def load_template() -> Template:
    """Load the nilearn MNI152 template once per process and derive the label maps.

    Works offline: nilearn ships the 2009 template inside the package.
    """
    from nilearn import datasets
    from skimage.morphology import convex_hull_image

    t1_img = datasets.load_mni152_template(resolution=1)
    t1 = np.asarray(t1_img.get_fdata(), dtype=np.float32)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).get_fdata(), dtype=np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).get_fdata(), dtype=np.float32)
    mask_b = np.asarray(datasets.load_mni152_brain_mask(resolution=1).get_fdata()) > 0.5
    origin = tuple(float(v) for v in np.linalg.solve(t1_img.affine, [0, 0, 0, 1])[:3])

    # Tissue intensities of this template, used to remap contrast and to turn GM into CSF.
    csf_p = np.clip(mask_b - gm - wm, 0, 1)
    t1_wm = float(np.median(t1[(wm > 0.9) & mask_b]))
    t1_gm = float(np.median(t1[(gm > 0.9) & mask_b]))
    t1_csf = float(np.median(t1[(csf_p > 0.8) & mask_b]))

    # Lateral + third ventricles: dark voxels deep inside the brain, in a central box, above
    # the basal cisterns, grown back a little towards the walls.
    x, y, z = (np.arange(n, dtype=np.float32) - o for n, o in zip(t1.shape, origin, strict=True))
    X, Y, Z = np.meshgrid(x, y, z, indexing="ij", sparse=True)
    box = (np.abs(X) < 35) & (Y > -60) & (Y < 40) & (Z > -3) & (Z < 40)
    interhemispheric = (np.abs(X) <= 2) & ((Y > 22) | (Y < -40))
    # Depth in the brain, needed only up to 14 mm inside the box: computed on the box plus a
    # 16-voxel margin (exact for those depths, 10x less work than the whole volume).
    bi, bj, bk = (np.flatnonzero(np.broadcast_to(box, t1.shape).any(axis=ax)) for ax in ((1, 2), (0, 2), (0, 1)))
    sub = tuple(slice(max(int(a[0]) - 16, 0), int(a[-1]) + 17) for a in (bi, bj, bk))
    dist = np.zeros(t1.shape, dtype=np.float32)
    dist[sub] = ndi.distance_transform_edt(mask_b[sub])
    dark = mask_b & (t1 < 0.45) & box & ~interhemispheric
    seeds = dark & (dist > 14)
    lab, n = ndi.label(seeds)
    sizes = ndi.sum(seeds, lab, range(1, n + 1))
    keep = np.isin(lab, 1 + np.flatnonzero(sizes > 500))
    ventricles = ndi.binary_dilation(keep, iterations=4, mask=dark & (dist > 6))

    # Per plane: the intracranial space (brain closed over sulci and gaps, +2 mm) and the
    # head outline (convex hull of the brain in a +-6 mm slab, so the skull is smooth and
    # encloses the posterior fossa like a real head). Between them: skull-base bone.
    icv = np.zeros(t1.shape, dtype=np.float32)
    skull = np.zeros(t1.shape, dtype=np.float32)
    slab = ndi.maximum_filter1d(mask_b.astype(np.uint8), size=13, axis=2) > 0
    for k in range(t1.shape[2]):
        if slab[:, :, k].any():
            # hull at 2 mm (4x fewer points to test), back to 1 mm; smoothed below anyway
            half = convex_hull_image(slab[::2, ::2, k]).astype(np.float32)
            skull[:, :, k] = ndi.zoom(half, 2, order=1, grid_mode=True, mode="nearest")[: t1.shape[0], : t1.shape[1]] > 0.5
        if mask_b[:, :, k].any():
            # closing with a 6 mm disk and +2 mm dilation through distance maps (exact, faster)
            padded = np.pad(mask_b[:, :, k], 8)
            dilated = ndi.distance_transform_edt(~padded) <= 6
            closed = (ndi.distance_transform_edt(dilated) > 6)[8:-8, 8:-8]
            icv[:, :, k] = ndi.distance_transform_edt(~ndi.binary_fill_holes(closed)) <= 2
    icv = ndi.gaussian_filter(np.minimum(icv, skull), 1.0)
    skull = ndi.gaussian_filter(skull, 1.5)
    t1_ventricle = float(np.median(t1[ndi.binary_erosion(ventricles, iterations=1)]))
    return Template(
        t1=t1, gm=gm, wm=wm, mask=mask_b.astype(np.float32), ventricles=ventricles.astype(np.float32),
        icv=icv, skull=skull, origin_vox=origin, t1_csf=t1_csf, t1_gm=t1_gm, t1_wm=t1_wm, t1_ventricle=t1_ventricle,
    )


# ----------------------------------------------------------------------------- subjects


@dataclass(frozen=True)
class SubjectParams:
    """Everything random about one synthetic subject (drawn once from its own seed)."""

    subject: str
    stage_index: int
    severities: tuple[float, float, float, float]  # one per stage bin, increasing
    age: int
    sex: str
    head_scale: float
    aspect: float
    rotation_deg: float
    shift_rc: tuple[float, float]
    slice_offset_mm: float
    tilt: tuple[float, float]
    baseline_ventricle_scale: float
    seed: int


def stage_counts(n_subjects: int, mix: str = "oasis") -> list[int]:
    """Subjects per stage: OASIS-1 proportions (266:58:21:2) or balanced, at least 2 per stage."""
    if mix not in MIXES:
        raise ValueError(f"unknown mix {mix!r}; expected one of {', '.join(MIXES)}")
    if n_subjects < MIN_PER_STAGE * len(STAGES):
        raise ValueError(f"need at least {MIN_PER_STAGE * len(STAGES)} subjects ({MIN_PER_STAGE} per stage)")
    if mix == "balanced":
        base, extra = divmod(n_subjects, len(STAGES))
        return [base + (1 if i < extra else 0) for i in range(len(STAGES))]
    # Largest-remainder apportionment, then lift small stages to the minimum from the largest.
    total = sum(OASIS_STAGE_COUNTS)
    quotas = [n_subjects * c / total for c in OASIS_STAGE_COUNTS]
    counts = [math.floor(q) for q in quotas]
    for i in sorted(range(len(quotas)), key=lambda i: quotas[i] - counts[i], reverse=True)[: n_subjects - sum(counts)]:
        counts[i] += 1
    for i in range(len(counts)):
        while counts[i] < MIN_PER_STAGE:
            counts[int(np.argmax(counts))] -= 1
            counts[i] += 1
    return counts


def default_slices(k: int) -> list[int]:
    """``k`` distinct axial slice indices spread over the hippocampi and the lateral ventricles."""
    if k < 1 or k > SLICE_MAX - SLICE_MIN + 1:
        raise ValueError(f"slices per subject must be 1..{SLICE_MAX - SLICE_MIN + 1}, got {k}")
    if k == 1:
        return [136]
    lo, hi = DEFAULT_SLICE_RANGE
    if k > hi - lo + 1:
        lo, hi = SLICE_MIN, SLICE_MAX
    return [int(round(v)) for v in np.linspace(lo, hi, k)]


def draw_subjects(n_subjects: int, seed: int, mix: str) -> list[SubjectParams]:
    """Draw every subject's stage, severities and anatomy parameters, deterministically."""
    counts = stage_counts(n_subjects, mix)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    stages = np.repeat(np.arange(len(STAGES)), counts)
    rng.shuffle(stages)  # ids are not sorted by stage, as in OASIS
    child_seeds = np.random.SeedSequence([seed, 1]).generate_state(n_subjects)
    sigma = math.sqrt(math.log(1 + BASELINE_VENTRICLE_CV**2))
    out = []
    for i in range(n_subjects):
        r = np.random.default_rng(int(child_seeds[i]))
        k = int(stages[i])
        # One severity per stage bin [k/4, (k+1)/4), jittered per subject; bins keep them increasing.
        sev = tuple(float(round((j + r.uniform(0.1, 0.9)) / len(STAGES), 4)) for j in range(len(STAGES)))
        sex = "F" if r.random() < 0.58 else "M"
        head = float(np.clip(r.normal(1.02 if sex == "M" else 0.98, 0.035), 0.92, 1.08))
        out.append(
            SubjectParams(
                subject=f"OAS1_{i + 1:04d}",
                stage_index=k,
                severities=sev,  # type: ignore[arg-type]
                age=int(np.clip(round(r.normal(71 + 3 * k, 7)), 60, 96)),
                sex=sex,
                head_scale=round(head, 4),
                aspect=float(r.normal(1.0, 0.025)),
                rotation_deg=round(float(r.normal(0, 3.0)), 3),
                shift_rc=(float(r.normal(0, 3.0)), float(r.normal(0, 6.0))),
                slice_offset_mm=round(float(np.clip(r.normal(0, 2.0), -5, 5)), 3),
                # (roll, pitch): scanner planes are rarely AC-PC aligned; a forward pitch puts the
                # eyes and the midbrain in one slice, as in many OASIS slices.
                tilt=(float(r.normal(0, 0.03)), float(r.normal(0.2, 0.06))),
                baseline_ventricle_scale=round(float(np.clip(r.lognormal(-sigma**2 / 2, sigma), 0.4, 2.2)), 4),
                seed=int(r.integers(2**31)),
            )
        )
    return out


# ----------------------------------------------------------------------------- rendering


def _smooth_field(rng: np.random.Generator, coarse: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """A smooth random field: standard-normal control points upsampled with cubic splines."""
    return _upsample(rng.standard_normal(coarse).astype(np.float32), shape)


def _upsample(grid: np.ndarray, shape: tuple[int, int] = (IMAGE_HEIGHT, IMAGE_WIDTH)) -> np.ndarray:
    """Smooth upsampling of a coarse grid: cubic to a quarter of ``shape``, then linear (fast)."""
    h4, w4 = -(-shape[0] // 4), -(-shape[1] // 4)
    quarter = ndi.zoom(grid, (h4 / grid.shape[0], w4 / grid.shape[1]), order=3, mode="nearest", grid_mode=True)
    full = ndi.zoom(quarter, (shape[0] / quarter.shape[0], shape[1] / quarter.shape[1]), order=1, mode="nearest", grid_mode=True)
    return full[: shape[0], : shape[1]].astype(np.float32)


@dataclass
class _SliceAnatomy:
    """One subject's slice sampled from the template (severity 0 anatomy, template ventricles)."""

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    mask: np.ndarray
    vent: np.ndarray
    hipp: np.ndarray
    icv: np.ndarray  # bool, fixed across stages (the skull does not move)
    skull: np.ndarray  # bool, the inside of the head outline (icv plus skull-base bone)
    crop: tuple[slice, slice]
    face: dict[str, np.ndarray]  # soft maps of the face parts on the full canvas (outside the skull)


def _hippocampal_region(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Soft medial temporal region (hippocampus + amygdala) as two tilted ellipsoids in MNI mm."""
    out = np.zeros_like(x)
    for side in (-1.0, 1.0):
        # The long axis runs antero-inferiorly; the tail rises posteriorly (about 25 degrees).
        dy, dz = y + 22.0, z + 14.0
        a = math.radians(25)
        u = dy * math.cos(a) + dz * math.sin(a)
        w = -dy * math.sin(a) + dz * math.cos(a)
        dx = x - side * 27.0
        r2 = (dx / 9.0) ** 2 + (u / 22.0) ** 2 + (w / 9.0) ** 2
        out = np.maximum(out, np.clip(1.5 - r2, 0, 1))
    return out


def _ellipsoid(x: np.ndarray, y: np.ndarray, z: np.ndarray, c: tuple, r: tuple, edge: float = 0.15) -> np.ndarray:
    """Soft ellipsoid membership (1 inside, 0 outside, a thin linear edge)."""
    q = np.sqrt(((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2)
    return np.clip((1.0 - q) / edge, 0.0, 1.0).astype(np.float32)


def _face_parts(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> dict[str, np.ndarray]:
    """The front of the head below the forehead, in MNI mm: soft tissue, eyes, orbital fat, nasal cavity.

    The template is skull-stripped; the real slices show the orbits in front of the brain,
    so a simple face is added: it never changes with the disease, it only makes the
    slices look (and mask) like the real ones.
    """
    face = _ellipsoid(x, y, z, (0.0, 38.0, -45.0), (58.0, 78.0, 32.0), edge=0.05)
    if not face.any():
        return {"face": face, "globes": face, "fat": face, "nasal": face}
    globes = np.maximum(
        _ellipsoid(x, y, z, (-29.0, 74.0, -32.0), (11.5, 11.5, 11.5), 0.08),
        _ellipsoid(x, y, z, (29.0, 74.0, -32.0), (11.5, 11.5, 11.5), 0.08),
    )
    # orbital fat: an envelope around and behind each globe, bright on T1
    fat = np.maximum(
        _ellipsoid(x, y, z, (-30.0, 66.0, -32.0), (17.0, 25.0, 15.0), 0.3),
        _ellipsoid(x, y, z, (30.0, 66.0, -32.0), (17.0, 25.0, 15.0), 0.3),
    )
    nasal = _ellipsoid(x, y, z, (0.0, 70.0, -42.0), (12.0, 40.0, 30.0), 0.3)
    return {"face": face, "globes": globes * face, "fat": fat * face, "nasal": nasal * face}


def _sample_anatomy(tpl: Template, p: SubjectParams, slice_index: int, def_fields: np.ndarray) -> _SliceAnatomy:
    """Map every output pixel to the template (affine + smooth deformation) and sample it."""
    h, w = IMAGE_HEIGHT, IMAGE_WIDTH
    rr, cc = np.mgrid[0:h, 0:w].astype(np.float32)
    r0 = h / 2 + p.shift_rc[0]
    c0 = 188.0 + p.shift_rc[1]
    th = math.radians(p.rotation_deg)
    dr, dc = rr - r0, cc - c0
    u = math.cos(th) * dc + math.sin(th) * dr
    v = -math.sin(th) * dc + math.cos(th) * dr
    scale = PX_PER_MM * p.head_scale
    # Rows run left-right (x), columns posterior -> anterior (y): the face looks right.
    y = -17.0 + u / (scale * p.aspect * COLUMN_STRETCH)
    x = v / (scale / p.aspect)
    z = (slice_index - SLICE_AT_Z0) + p.slice_offset_mm + p.tilt[0] * x - p.tilt[1] * (y + 17.0)
    # Smooth random deformation (mm), varying slowly across slices of one subject.
    t = np.clip((slice_index - SLICE_MIN) / (SLICE_MAX - SLICE_MIN) * (def_fields.shape[1] - 1), 0, def_fields.shape[1] - 1)
    k0 = int(math.floor(t))
    k1 = min(k0 + 1, def_fields.shape[1] - 1)
    f = t - k0
    disp = (1 - f) * def_fields[:, k0] + f * def_fields[:, k1]
    x = x + disp[0]
    y = y + disp[1]
    z = z + 0.5 * disp[2]
    ox, oy, oz = tpl.origin_vox
    coords = np.stack([x + ox, y + oy, z + oz])

    def sample(vol: np.ndarray) -> np.ndarray:
        return ndi.map_coordinates(vol, coords, order=1, mode="constant", cval=0.0, output=np.float32)

    icv = sample(tpl.icv) > 0.5
    skull = sample(tpl.skull) > 0.5
    rows = np.flatnonzero(icv.any(axis=1))
    cols = np.flatnonzero(icv.any(axis=0))
    if rows.size == 0:
        raise RuntimeError(f"slice {slice_index} of {p.subject} misses the head")
    # Work only on the head's bounding box (plus a margin for the warps): the background is most of the frame.
    crop = (slice(max(rows[0] - 4, 0), min(rows[-1] + 5, h)), slice(max(cols[0] - 4, 0), min(cols[-1] + 5, w)))
    coords_c = coords[:, crop[0], crop[1]]

    def sample_c(vol: np.ndarray) -> np.ndarray:
        return ndi.map_coordinates(vol, coords_c, order=1, mode="constant", cval=0.0, output=np.float32)

    return _SliceAnatomy(
        t1=sample_c(tpl.t1), gm=sample_c(tpl.gm), wm=sample_c(tpl.wm), mask=sample_c(tpl.mask),
        vent=sample_c(tpl.ventricles),
        hipp=_hippocampal_region(x[crop], y[crop], z[crop]).astype(np.float32),
        icv=icv, skull=skull, crop=crop, face=_face_parts(x, y, z),
    )


def _bbox(m: np.ndarray, margin: int, shape: tuple[int, ...]) -> tuple[slice, slice] | None:
    """Bounding box of a boolean map plus a margin, or None when it is empty."""
    if not m.any():
        return None
    r, c = np.nonzero(m)
    return (
        slice(max(int(r.min()) - margin, 0), min(int(r.max()) + margin + 1, shape[0])),
        slice(max(int(c.min()) - margin, 0), min(int(c.max()) + margin + 1, shape[1])),
    )


def _inverse_push(d: np.ndarray, e: float, lam: float) -> np.ndarray:
    """Source distance of every pixel under the ventricle push with wall displacement ``e``.

    Outside the new wall (``d >= e``) solve ``d_src + e * exp(-d_src / lam) = d`` (Newton).
    Inside it, an expanding ventricle keeps its old interior in place and fills the new band
    with CSF from just inside the old wall (moving deeper would cross a thin ventricle and
    come out on the other side); a shrinking one slides its interior outwards.
    """
    if e >= 0:
        out = np.where(d < 0, d, np.float32(-0.5)).astype(np.float32)
    else:
        out = (d - e).astype(np.float32)
    outside = d >= e
    x = np.maximum(d[outside] - e, 0.0)
    for _ in range(8):
        ex = np.exp(-x / lam)
        x = x - (x + e * ex - d[outside]) / (1.0 - (e / lam) * ex)
    out[outside] = x
    return out


def _calibrate_erosion(dist: np.ndarray, weight: np.ndarray, fraction: float) -> np.ndarray:
    """Soft removal map ``clip(t - dist + 1, 0, 1)`` with ``t`` chosen so the removed weight is ``fraction``.

    Removing tissue in order of its distance from the CSF is what makes the cortex thinner
    and the sulci wider rather than the grey matter uniformly fainter.
    """
    if fraction <= 0 or weight.sum() <= 0:
        return np.zeros_like(dist)
    total = float(weight.sum())
    lo, hi = 0.0, float(dist.max()) + 1.0
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        removed = float((np.clip(mid - dist + 1.0, 0, 1) * weight).sum()) / total
        if removed < fraction:
            lo = mid
        else:
            hi = mid
    return np.clip(0.5 * (lo + hi) - dist + 1.0, 0, 1).astype(np.float32)


@dataclass
class _StageResult:
    image: np.ndarray  # uint8 (H, W)
    ventricle_area: float
    brain_area: float
    hippocampus_area: float
    cortex_area: float


class _SliceRenderer:
    """Renders one subject's slice at any severity (same anatomy, scanner and skull)."""

    def __init__(self, tpl: Template, p: SubjectParams, anat: _SliceAnatomy, rng: np.random.Generator) -> None:
        self.tpl, self.p, self.a = tpl, p, anat
        shape = anat.t1.shape
        self.rc = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
        # Ventricle warp: signed distance D to the ventricle wall (px, > 0 outside). Content at
        # distance d moves to d + e * exp(-d / lambda) along the ray from its nearest ventricle
        # pixel: the wall moves by e, the push fades into the tissue, and the map stays
        # one-to-one for |e| < lambda. Rays from the nearest wall pixel (not gradient lines)
        # keep a large push from missing a thin, curved ventricle.
        vent_b = anat.vent > 0.5
        self.has_vent = int(vent_b.sum()) >= 20
        if self.has_vent:
            d_out, nearest = ndi.distance_transform_edt(~vent_b, return_indices=True)
            dist = (d_out - ndi.distance_transform_edt(vent_b)).astype(np.float32)
            dist += np.where(vent_b, 0.5, -0.5).astype(np.float32)  # wall halfway between pixel centres
            self.vdist = dist
            self.vnear = nearest.astype(np.float32)
            g = np.stack(np.gradient(ndi.gaussian_filter(dist, 1.5))).astype(np.float32)
            self.vdir = g / np.maximum(np.sqrt((g**2).sum(axis=0)), 1e-3)
            self.vregion = _bbox(dist < VENTRICLE_PUSH_DECAY_PX, margin=2, shape=shape)
        self.vent_area0 = float(anat.vent.sum())
        self._vent_table: tuple[np.ndarray, np.ndarray] | None = None
        # Outside the brain but inside the skull is CSF; filled before warping so the brain's
        # global shrink opens a CSF gap under the skull.
        self.t1_filled = (anat.t1 + (1.0 - np.clip(anat.mask, 0, 1)) * tpl.t1_csf).astype(np.float32)
        self.hregion = _bbox(anat.hipp > 0, margin=8, shape=shape)
        mask = anat.mask > 0.5
        self.center = np.array(ndi.center_of_mass(mask)) if mask.any() else np.array(shape) / 2.0
        self.scanner = self._draw_scanner(rng)
        self._skull_and_scalp()

    def _draw_scanner(self, rng: np.random.Generator) -> dict:
        """Scanner and head-surface parameters: per subject (one session), textures per slice."""
        h, w = IMAGE_HEIGHT, IMAGE_WIDTH
        r = np.random.default_rng([self.p.seed, 7])  # same draws for every slice of the subject
        return {
            "levels": (r.uniform(8, 20), r.uniform(52, 68), r.uniform(98, 118)),
            "gamma": r.uniform(0.9, 1.1),
            "noise_sigma": r.uniform(4.0, 7.0),
            "fat_peak": r.uniform(160, 225),
            "scalp_scale": r.uniform(0.85, 1.3),
            "halo": r.uniform(8, 16),
            "face_level": r.uniform(28, 45),
            "bias": np.exp(0.10 * _smooth_field(rng, (3, 5), (h, w))).astype(np.float32),
            "scalp_texture": (1 + 0.15 * _smooth_field(rng, (40, 80), (h, w))).astype(np.float32),
            "scalp_thickness": (1 + 0.25 * _smooth_field(rng, (5, 8), (h, w))).astype(np.float32),
            "face_texture": _smooth_field(rng, (30, 60), (h, w)),
        }

    def _skull_and_scalp(self) -> None:
        """Skull, scalp and face outside the intracranial outline; the same at every stage.

        Outside the head outline (skull inside plus face): a CSF sliver, dark bone, the bright
        fat rim, fading through the skin into the background, as in the real slices. Inside
        the face: soft tissue with fat patches, dark eyes in bright orbital fat, the dark
        nasal cavity, separated from the brain by dark bone.
        """
        sc, a = self.scanner, self.a
        lc = sc["levels"][0]
        thick = sc["scalp_thickness"]
        s = sc["scalp_scale"] * self.p.head_scale
        d_icv = ndi.distance_transform_edt(~a.icv).astype(np.float32)
        bone = 2.4 * s * thick  # skull thickness (px), varying around the head
        # Head outline: the face, the skull-base hull, and the skull all around the brain.
        head = (a.face["face"] > 0.5) | a.skull | (d_icv < bone)
        inner = head & ~a.icv  # skull, skull base and face: not brain, never atrophy
        d_out = ndi.distance_transform_edt(~head).astype(np.float32) / thick
        # Outside the outline: bright subcutaneous fat, skin, then the background.
        knots = np.array([0.0, 3.6, 5.6, 7.8, 10.2]) * s
        vals = [sc["fat_peak"], sc["fat_peak"] * 0.9, 75.0, 22.0, 0.0]
        rim = np.interp(d_out, knots, vals).astype(np.float32)
        # Inside it: a CSF sliver then dark cortical bone next to the brain.
        bone_knots = np.array([0.0, 1.0, 2.4]) * s
        bone_vals = [lc, 22.0, 18.0]
        ft = sc["face_texture"]
        tissue = sc["face_level"] * (1 + 0.25 * ft)
        fat, globes, nasal = a.face["fat"], a.face["globes"], a.face["nasal"]
        base = a.skull & (a.face["face"] < 0.5)
        tissue = np.where(base, 28 + 30 * np.clip(ft, 0, 2), tissue)  # skull base: bone, some marrow
        tissue = tissue * (1 - fat) + sc["fat_peak"] * (0.9 + 0.1 * ft) * fat
        tissue = tissue * (1 - nasal) + (12 + 25 * np.clip(ft + 0.5, 0, 1.5)) * nasal
        tissue = tissue * (1 - globes) + 24.0 * globes  # vitreous: dark on T1
        # the floor of the skull (orbital roofs, sphenoid) is thicker than the vault: ~5 px of bone
        w_bone = np.clip((d_icv / thick - 5.0 * s) / (1.5 * s), 0, 1)
        tissue = np.interp(d_icv / thick, bone_knots, bone_vals).astype(np.float32) * (1 - w_bone) + tissue * w_bone
        self.rim = (np.where(inner, tissue, rim) * sc["scalp_texture"]).astype(np.float32)
        self.halo = d_out < knots[-1] + sc["halo"]

    def _warp_coords(self, e: float, shrink: float, region: tuple[slice, slice] | None = None) -> np.ndarray:
        """Backward map of one stage: global shrink about the brain centre, then the ventricle push."""
        region = region or (slice(None), slice(None))
        c = self.center[:, None, None]
        k = 1.0 / math.sqrt(1.0 - shrink)
        coords = c + (self.rc[:, region[0], region[1]] - c) * k
        if self.has_vent and e != 0.0:
            d = self.vdist[region]
            d_src = _inverse_push(d, e, VENTRICLE_PUSH_DECAY_PX)
            rc = self.rc[:, region[0], region[1]]
            near = self.vnear[:, region[0], region[1]]
            # Outside the old wall: slide along the ray from the nearest ventricle pixel.
            ray = near + (rc - near) * ((d_src + 0.5) / np.maximum(d + 0.5, 1e-3))[None]
            # Inside it (only moves when shrinking): step outwards along the smoothed gradient.
            grad = rc + (d_src - d)[None] * self.vdir[:, region[0], region[1]]
            moved = np.where((d >= 0)[None], ray, grad)
            coords = coords + (moved - rc) * k
        return coords

    def _ventricle_push(self, target_factor: float, shrink: float) -> float:
        """Wall displacement ``e`` (px) that scales the warped ventricle label by ``target_factor``.

        The area of the label actually warped is tabulated once per slice over a grid of
        ``e`` (it grows monotonically, nearly linearly, with ``e``) for a first guess, then
        refined with Newton steps on the real, shrunk warp: the ground-truth area lands
        within 0.3 % of the target whatever the ventricles' shape, in a few small warps.
        """
        if not self.has_vent:
            return 0.0
        if self._vent_table is None:
            grid = np.array([-0.9, -0.5, -0.25, -0.12, 0.0, 0.08, 0.16, 0.25, 0.37, 0.5, 0.7, 0.9]) * VENTRICLE_PUSH_DECAY_PX
            areas = []
            for e in grid:
                coords = self._warp_coords(float(e), 0.0, self.vregion)
                areas.append(float(ndi.map_coordinates(self.a.vent, coords, order=1, output=np.float32).sum()))
            self._vent_table = (grid, np.maximum.accumulate(np.asarray(areas)))
        grid, areas = self._vent_table
        target = self.vent_area0 * target_factor
        if target > areas[-1] * (1.0 - shrink):  # cannot grow that much: the largest push (logged, never silent)
            log.warning("%s: ventricle target x%.2f out of reach; capped", self.p.subject, target_factor)
            return float(grid[-1])
        # First guess from the table; then Newton steps on the real (shrunk) area with the
        # table's slope: one or two extra warps of the small region.
        e = float(np.interp(target / (1.0 - shrink), areas, grid))
        slopes = np.gradient(areas, grid)
        for _ in range(4):
            coords = self._warp_coords(e, shrink, self.vregion)
            area = float(ndi.map_coordinates(self.a.vent, coords, order=1, output=np.float32).sum())
            if abs(area - target) <= 0.003 * target:
                break
            slope = max(float(np.interp(e, grid, slopes)), 1.0)
            e = float(np.clip(e - (area - target) / slope, grid[0], grid[-1]))
        return e

    def render(self, severity: float, noise_rng: np.random.Generator) -> _StageResult:
        a, tpl, sc = self.a, self.tpl, self.scanner
        shrink = GLOBAL_SHRINK_AT_S1 * severity
        factor = self.p.baseline_ventricle_scale * (1 + VENTRICLE_GROWTH_AT_S1 * severity)
        e = self._ventricle_push(factor, shrink)
        coords = self._warp_coords(e, shrink)

        def warp(img: np.ndarray, region: tuple[slice, slice] | None = None) -> np.ndarray:
            if region is None:
                return ndi.map_coordinates(img, coords, order=1, mode="constant", cval=0.0, output=np.float32)
            # Labels that are zero far from their region are warped only there (saves time).
            out = np.zeros_like(img)
            c = coords[:, region[0], region[1]]
            out[region] = ndi.map_coordinates(img, c, order=1, mode="constant", cval=0.0, output=np.float32)
            return out

        t1, gm, wm = warp(self.t1_filled), warp(a.gm), warp(a.wm)
        vent = warp(a.vent, self.vregion) if self.has_vent else np.zeros_like(a.vent)
        hipp = warp(a.hipp, self.hregion) if self.hregion is not None else np.zeros_like(a.hipp)
        icv = a.icv[a.crop]

        # Grey matter -> CSF, first where it touches sulcal CSF (cortex) or its own border (MTL).
        # CSF by intensity (the GM/WM priors are unreliable in deep grey matter); ventricles excluded.
        csf_level = 0.5 * (tpl.t1_csf + tpl.t1_gm)
        sulcal = icv & (t1 < csf_level) & (vent < 0.5)
        d_csf = ndi.distance_transform_edt(~sulcal).astype(np.float32)
        cortex = (gm >= 0.5) & (gm > wm) & (d_csf <= 8) & (hipp < 0.5)
        loss_c = _calibrate_erosion(d_csf[cortex], gm[cortex], CORTICAL_LOSS_AT_S1 * severity)
        mtl = (hipp >= 0.5) & (gm >= 0.4)
        loss_h = _calibrate_erosion(d_csf[mtl], gm[mtl], HIPPOCAMPAL_LOSS_AT_S1 * severity)
        dgm = np.zeros_like(gm)
        dgm[cortex] = loss_c * gm[cortex]
        dgm[mtl] = loss_h * gm[mtl]
        gm_after = gm - dgm

        # T1 intensity: the template's own contrast, CSF outside the (shrunk) brain, eroded GM -> CSF.
        # The ventricles' new band is filled with ventricular CSF (the push copies the wall's
        # partial-volume edge outwards otherwise).
        t1 = t1 + np.clip(vent, 0, 1) * (tpl.t1_ventricle - t1)
        t1_eff = t1 + dgm * (tpl.t1_csf - tpl.t1_gm)
        t1_eff = np.where(icv, t1_eff, 0.0)
        image = self._compose(t1_eff, noise_rng)
        return _StageResult(
            image=image,
            ventricle_area=float(vent.sum()),
            brain_area=float((gm_after + wm)[icv].sum()),
            hippocampus_area=float(gm_after[hipp >= 0.5].sum()),
            cortex_area=float(gm_after[cortex].sum()),
        )

    def _compose(self, t1_eff: np.ndarray, noise_rng: np.random.Generator) -> np.ndarray:
        """Contrast, skull and scalp, bias field, Rician noise; returns the uint8 slice."""
        tpl, sc, a = self.tpl, self.scanner, self.a
        lc, lg, lw = sc["levels"]
        xs = [0.0, tpl.t1_csf, tpl.t1_gm, tpl.t1_wm, 1.0]
        ys = [0.0, lc, lg, lw, lw + 20]
        brain = np.interp(t1_eff, xs, ys).astype(np.float32)
        brain = (255.0 * (brain / 255.0) ** sc["gamma"]).astype(np.float32)
        full = np.zeros((IMAGE_HEIGHT, IMAGE_WIDTH), dtype=np.float32)
        full[a.crop] = brain
        full = np.where(a.icv, full, self.rim)
        full *= sc["bias"]
        # Rician noise (magnitude image) inside a halo around the head, pure black further out.
        sigma = sc["noise_sigma"]
        n1 = noise_rng.standard_normal(full.shape, dtype=np.float32) * sigma
        n2 = noise_rng.standard_normal(full.shape, dtype=np.float32) * sigma
        noisy = np.sqrt((full + n1) ** 2 + n2**2)
        halo = self.halo
        out = np.where(halo, noisy, 0.0)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def encode_jpeg(gray: np.ndarray) -> bytes:
    """JPEG bytes like the Kaggle slices: RGB with 3 identical channels, quality 75, 4:2:0, 100 dpi JFIF."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(gray, mode="L").convert("RGB").save(buf, format="JPEG", quality=75, dpi=(100, 100))
    return buf.getvalue()


def encode_mask_png(mask: np.ndarray) -> bytes:
    """A binary mask as a 1-bit PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(mask.astype(bool)).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


# ----------------------------------------------------------------------------- synthesis


def longitudinal_name(stage_index: int, slice_index: int) -> str:
    """File name of one longitudinal image inside its subject folder."""
    return f"{stage_index}_{STAGES[stage_index]}_{slice_index}.jpg"


def data_name(subject: str, slice_index: int, acquisition: int = 1) -> str:
    """Kaggle file name, e.g. ``OAS1_0001_MR1_mpr-1_120.jpg``."""
    return f"{subject}_MR1_mpr-{acquisition}_{slice_index}.jpg"


def _deformation_fields(rng: np.random.Generator) -> np.ndarray:
    """A subject's smooth random displacement (mm): 3 components x 4 slice levels x image.

    Control points 6 x 10 in-plane, sd 2.2 mm; interpolated between levels for each slice,
    so neighbouring slices of one subject deform alike.
    """
    coarse = rng.normal(0.0, 2.2, size=(3, 4, 6, 10)).astype(np.float32)
    return np.stack([np.stack([_upsample(coarse[c, k]) for k in range(coarse.shape[1])]) for c in range(3)])


def _synthesize_subject(p: SubjectParams, slices: list[int], out_dir: Path) -> list[dict]:
    tpl = load_template()
    rng = np.random.default_rng(p.seed)
    def_fields = _deformation_fields(rng)
    subject_dir = out_dir / "longitudinal" / p.subject
    subject_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for sl in slices:
        anat = _sample_anatomy(tpl, p, sl, def_fields)
        renderer = _SliceRenderer(tpl, p, anat, rng)
        icv_name = f"icv_{sl}.png"
        (subject_dir / icv_name).write_bytes(encode_mask_png(anat.icv))
        for k, severity in enumerate(p.severities):
            res = renderer.render(severity, np.random.default_rng([p.seed, sl, k]))
            name = longitudinal_name(k, sl)
            data = encode_jpeg(res.image)
            (subject_dir / name).write_bytes(data)
            if k == p.stage_index:  # the cross-sectional view: the subject's own stage only
                stage_dir = out_dir / "Data" / STAGES[k]
                stage_dir.mkdir(parents=True, exist_ok=True)
                (stage_dir / data_name(p.subject, sl)).write_bytes(data)
            rows.append(
                {
                    "subject": p.subject, "slice": sl, "stage": STAGES[k], "stage_index": k,
                    "severity": f"{severity:.4f}", "path": f"{p.subject}/{name}",
                    "ventricle_area_px": f"{res.ventricle_area:.1f}", "brain_area_px": f"{res.brain_area:.1f}",
                    "hippocampus_area_px": f"{res.hippocampus_area:.1f}", "cortex_area_px": f"{res.cortex_area:.1f}",
                    "icv_mask_path": f"{p.subject}/{icv_name}",
                }
            )
    return rows


@dataclass
class SynthSummary:
    """What ``synthesize`` wrote, how long it took and the figures measured on the result."""

    out_dir: str
    n_subjects: int
    slices_per_subject: int
    seed: int
    mix: str
    stage_counts: dict[str, int]
    slices: list[int]
    n_data_images: int
    n_longitudinal_images: int
    seconds: float
    # CPU seconds: this process (template, CSVs, measurement, and the subjects when
    # workers == 1), the worker processes, and the measurement alone. Wall time on a busy
    # machine says little; parent + workers / n_workers bounds it on an idle one.
    cpu_seconds: float = 0.0
    worker_cpu_seconds: float = 0.0
    measure_cpu_seconds: float = 0.0
    workers: int = 1
    figures: dict = field(default_factory=dict)

    def describe(self) -> str:
        """Human summary for the CLI."""
        lines = [
            f"phantom: {self.out_dir}",
            f"  {self.n_subjects} subjects x {self.slices_per_subject} slices {self.slices}, mix={self.mix}, seed={self.seed}",
            "  subjects per stage: " + ", ".join(f"{k}: {v}" for k, v in self.stage_counts.items()),
            f"  images: {self.n_data_images} under Data/, {self.n_longitudinal_images} under longitudinal/",
            f"  time: {self.seconds:.1f} s wall; CPU {self.cpu_seconds:.1f} s in this process "
            f"(measurement {self.measure_cpu_seconds:.1f} s) + {self.worker_cpu_seconds:.1f} s in {self.workers} worker(s)",
        ]
        lines += ["  " + line for line in format_figures(self.figures)]
        return "\n".join(lines)


def synthesize(
    out_dir: Path | str,
    n_subjects: int,
    seed: int,
    mix: str = "oasis",
    slices_per_subject: int = 8,
    *,
    workers: int | None = None,
    progress: bool = True,
) -> SynthSummary:
    """Write a synthetic OASIS phantom into ``out_dir`` and measure it.

    Layout: ``Data/<Stage>/OAS1_<id>_MR1_mpr-1_<slice>.jpg`` (each subject at its own stage),
    ``longitudinal/<subject>/<k>_<Stage>_<slice>.jpg`` (every subject at all four stages),
    ``longitudinal/longitudinal.csv``, ``subjects.csv`` and ``phantom_summary.json``.
    The bytes depend only on the arguments (same seed, same files), whatever ``workers``
    is: every subject draws from its own seed. ``workers`` processes (default: 1 for small
    phantoms, else up to 2) share the template loaded here through ``fork``. An existing
    ``out_dir`` is replaced only if it is a phantom (holds ``longitudinal/longitudinal.csv``).
    """
    from tqdm import tqdm

    start = time.perf_counter()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not (out_dir / "longitudinal" / "longitudinal.csv").is_file():
            raise FileExistsError(f"{out_dir} exists, is not empty and is not a phantom; refusing to overwrite")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    subjects = draw_subjects(n_subjects, seed, mix)
    slices = default_slices(slices_per_subject)
    load_template()
    if workers is None:
        workers = 1 if n_subjects * len(slices) < 100 else min(2, os.cpu_count() or 1)
    rows: list[dict] = []
    bar = tqdm(total=n_subjects, desc="phantom subjects", unit="subject", disable=not progress)
    job = partial(_synthesize_subject, slices=slices, out_dir=out_dir)
    if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("fork")  # children inherit the loaded template
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            for subject_rows in pool.map(job, subjects):  # in subject order: deterministic CSV
                rows.extend(subject_rows)
                bar.update(1)
    else:
        for p in subjects:
            rows.extend(job(p))
            bar.update(1)
    bar.close()

    with open(out_dir / "longitudinal" / "longitudinal.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LONGITUDINAL_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    with open(out_dir / "subjects.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=SUBJECT_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for p in subjects:
            writer.writerow(
                {
                    "subject": p.subject, "stage": STAGES[p.stage_index], "stage_index": p.stage_index,
                    "severity": f"{p.severities[p.stage_index]:.4f}", "age": p.age, "sex": p.sex,
                    "baseline_ventricle_scale": f"{p.baseline_ventricle_scale:.4f}", "head_scale": f"{p.head_scale:.4f}",
                    **{f"severity_{k}": f"{s:.4f}" for k, s in enumerate(p.severities)},
                    "slice_offset_mm": f"{p.slice_offset_mm:.3f}", "rotation_deg": f"{p.rotation_deg:.3f}",
                    "acquisition": 1,
                }
            )
    measure0 = time.process_time()
    figures = measure_phantom(out_dir)
    measure_cpu = time.process_time() - measure0
    params = {"n_subjects": n_subjects, "seed": seed, "mix": mix, "slices": slices}
    (out_dir / SUMMARY_NAME).write_text(json.dumps({"parameters": params, "figures": figures}, indent=2) + "\n")
    counts = stage_counts(n_subjects, mix)
    return SynthSummary(
        out_dir=str(out_dir), n_subjects=n_subjects, slices_per_subject=len(slices), seed=seed, mix=mix,
        stage_counts={STAGES[i]: c for i, c in enumerate(counts)}, slices=slices,
        n_data_images=n_subjects * len(slices), n_longitudinal_images=len(rows),
        seconds=round(time.perf_counter() - start, 2), figures=figures,
        cpu_seconds=round(_cpu(resource.RUSAGE_SELF) - _cpu(cpu0), 2),
        worker_cpu_seconds=round(_cpu(resource.RUSAGE_CHILDREN) - _cpu(kids0), 2),
        measure_cpu_seconds=round(measure_cpu, 2), workers=workers,
    )


def _cpu(usage: resource.struct_rusage | int) -> float:
    """User + system CPU seconds of a ``getrusage`` result (or of ``who`` now)."""
    if isinstance(usage, int):
        usage = resource.getrusage(usage)
    return usage.ru_utime + usage.ru_stime


# ----------------------------------------------------------------------------- ground truth


def find_phantom_root(paths: Iterable[Path | str]) -> Path | None:
    """The phantom root above any of ``paths``: the first folder holding ``longitudinal/longitudinal.csv``."""
    for raw in paths:
        path = Path(raw).resolve()
        for folder in (path, *path.parents):
            if (folder / "longitudinal" / "longitudinal.csv").is_file():
                return folder
    return None


def read_longitudinal(root: Path | str) -> list[dict]:
    """Rows of ``longitudinal.csv`` with numeric columns converted."""
    root = Path(root)
    with open(root / "longitudinal" / "longitudinal.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["slice"] = int(r["slice"])
        r["stage_index"] = int(r["stage_index"])
        for key in ("severity", "ventricle_area_px", "brain_area_px", "hippocampus_area_px", "cortex_area_px"):
            if key in r and r[key] != "":
                r[key] = float(r[key])
    return rows


def _effect_at_s1(sev: np.ndarray, area: np.ndarray) -> float:
    """Relative change at s = 1 vs s = 0 from a straight-line fit of area on severity."""
    slope, intercept = np.polyfit(sev, area, 1)
    return float(slope / intercept) if intercept > 0 else float("nan")


def measure_phantom(root: Path | str, max_pairs_per_stage: int = 200, seed: int = 0) -> dict:
    """Measure a phantom from its files: atrophy per stage and intra- vs inter-subject differences.

    * Areas (pixels, from the ground-truth maps known at synthesis) summed over each subject's
      slices: mean per stage, ratio to the subject's own stage 0, and the effect at ``s = 1``
      from a per-subject line fit on severity.
    * Mean absolute grey-level difference inside the intracranial mask between a subject's
      adjacent stages (intra) and between two subjects at the same stage and slice index
      (inter, inside both subjects' masks), read back from the JPEG files.
    """
    from PIL import Image

    root = Path(root)
    lon = root / "longitudinal"
    rows = read_longitudinal(root)
    subjects = sorted({r["subject"] for r in rows})
    slices = sorted({r["slice"] for r in rows})
    n_st = len(STAGES)
    by_key = {(r["subject"], r["slice"], r["stage_index"]): r for r in rows}

    figures: dict = {"n_subjects": len(subjects), "slices": slices}
    area_keys = {
        "ventricle": "ventricle_area_px", "hippocampus": "hippocampus_area_px",
        "cortex_gm": "cortex_area_px", "brain": "brain_area_px",
    }
    for label, key in area_keys.items():
        per = np.zeros((len(subjects), n_st))
        sev = np.zeros((len(subjects), n_st))
        for i, s in enumerate(subjects):
            for k in range(n_st):
                per[i, k] = sum(by_key[(s, sl, k)][key] for sl in slices)
                sev[i, k] = by_key[(s, slices[0], k)]["severity"]
        valid = per[:, 0] > 0
        ratio = per[valid] / per[valid, :1]
        effects = [_effect_at_s1(sev[i], per[i]) for i in np.flatnonzero(valid)]
        figures[label] = {
            "mean_area_px_by_stage": [round(float(v), 1) for v in per.mean(axis=0)],
            "mean_ratio_to_stage0": [round(float(v), 4) for v in ratio.mean(axis=0)] if valid.any() else [],
            "effect_at_s1_mean": round(float(np.nanmean(effects)), 4) if effects else None,
            "effect_at_s1_sd": round(float(np.nanstd(effects)), 4) if effects else None,
            "monotonic_subjects": int(np.sum(np.all(np.diff(per, axis=1) > 0, axis=1))),
            "decreasing_subjects": int(np.sum(np.all(np.diff(per, axis=1) < 0, axis=1))),
        }
        if label == "ventricle":
            base = per[valid, 0]
            figures[label]["between_subject_cv_stage0"] = round(float(base.std() / base.mean()), 4) if base.size else None

    cache: dict[str, np.ndarray] = {}

    def img(rel: str) -> np.ndarray:
        if rel not in cache:
            with Image.open(lon / rel) as im:
                cache[rel] = np.asarray(im.convert("L"), dtype=np.float32)
        return cache[rel]

    def mask(rel: str) -> np.ndarray:
        if rel not in cache:
            with Image.open(lon / rel) as im:
                cache[rel] = np.asarray(im.convert("L")) > 0
        return cache[rel]

    intra: list[float] = []
    intra_by_transition: list[list[float]] = [[] for _ in range(n_st - 1)]
    intra_max_by_subject: dict[str, float] = {}
    for s in subjects:
        for sl in slices:
            m = mask(by_key[(s, sl, 0)]["icv_mask_path"])
            for k in range(n_st - 1):
                d = float(np.abs(img(by_key[(s, sl, k + 1)]["path"]) - img(by_key[(s, sl, k)]["path"]))[m].mean())
                intra.append(d)
                intra_by_transition[k].append(d)
                intra_max_by_subject[s] = max(intra_max_by_subject.get(s, 0.0), d)
    rng = np.random.default_rng(seed)
    inter: list[float] = []
    inter_by_stage: list[list[float]] = [[] for _ in range(n_st)]
    pairs = [(a, b) for i, a in enumerate(subjects) for b in subjects[i + 1 :]]
    for k in range(n_st):
        chosen = pairs if len(pairs) <= max_pairs_per_stage else [pairs[j] for j in rng.choice(len(pairs), max_pairs_per_stage, replace=False)]
        for a, b in chosen:
            for sl in slices:
                ra, rb = by_key[(a, sl, k)], by_key[(b, sl, k)]
                m = mask(ra["icv_mask_path"]) & mask(rb["icv_mask_path"])
                d = float(np.abs(img(ra["path"]) - img(rb["path"]))[m].mean())
                inter.append(d)
                inter_by_stage[k].append(d)
        cache = {key: v for key, v in cache.items() if key.endswith(".png")}  # bound memory

    def stats(v: list[float]) -> dict:
        a = np.asarray(v)
        return {
            "n": int(a.size), "mean": round(float(a.mean()), 3), "p5": round(float(np.percentile(a, 5)), 3),
            "p95": round(float(np.percentile(a, 95)), 3), "min": round(float(a.min()), 3), "max": round(float(a.max()), 3),
        }

    figures["intra_adjacent_stage_mad"] = stats(intra)
    figures["intra_by_transition_mean"] = [round(float(np.mean(v)), 3) for v in intra_by_transition]
    figures["inter_subject_same_stage_mad"] = stats(inter)
    figures["inter_by_stage_mean"] = [round(float(np.mean(v)), 3) for v in inter_by_stage]
    figures["inter_over_intra_mean_ratio"] = round(float(np.mean(inter) / np.mean(intra)), 3)
    figures["intra_above_inter_median_fraction"] = round(float(np.mean(np.asarray(intra) > np.median(inter))), 4)
    return figures


def format_figures(f: dict) -> list[str]:
    """Readable lines of the measured figures."""
    if not f:
        return []
    out = []
    for label in ("ventricle", "hippocampus", "cortex_gm", "brain"):
        g = f.get(label)
        if not g or g.get("effect_at_s1_mean") is None:  # e.g. no hippocampus in the chosen slices
            continue
        ratios = ", ".join(f"{v:.3f}" for v in g["mean_ratio_to_stage0"])
        out.append(
            f"{label:<12} area / own stage 0 by stage: [{ratios}]; effect at s=1: {100 * g['effect_at_s1_mean']:+.1f} % "
            f"(sd {100 * g['effect_at_s1_sd']:.1f}); increasing in {g['monotonic_subjects']}, "
            f"decreasing in {g['decreasing_subjects']} of {f['n_subjects']} subjects"
        )
    if "between_subject_cv_stage0" in f.get("ventricle", {}):
        out.append(f"ventricle area between-subject CV at stage 0: {100 * f['ventricle']['between_subject_cv_stage0']:.1f} %")
    a, e = f["intra_adjacent_stage_mad"], f["inter_subject_same_stage_mad"]
    out.append(
        f"in-brain mean |difference| (grey levels): adjacent stages of one subject {a['mean']:.2f} "
        f"(p95 {a['p95']:.2f}, max {a['max']:.2f}, n={a['n']}) vs two subjects of one stage {e['mean']:.2f} "
        f"(p5 {e['p5']:.2f}, min {e['min']:.2f}, n={e['n']}); ratio {f['inter_over_intra_mean_ratio']:.2f}"
    )
    return out


__all__ = [
    "SynthSummary", "Template", "find_phantom_root", "load_template", "measure_phantom", "read_longitudinal",
    "stage_counts", "synthesize", "format_figures", "default_slices", "draw_subjects",
]


def measure_noise_split(
    n_subjects: int, seed: int, mix: str = "oasis", slices_per_subject: int = 8, max_subjects: int = 10
) -> dict:
    """Split the adjacent-stage difference into atrophy and scanner noise (re-renders, writes nothing).

    Every stage is a new scan with fresh noise, so the intra-subject figure of
    ``measure_phantom`` includes a noise floor. For the first ``max_subjects`` subjects of the
    phantom ``(n_subjects, seed, mix, slices_per_subject)`` this renders (uint8, before JPEG)
    adjacent stages with the same noise (atrophy only), one stage twice with different noise
    (noise only), and adjacent stages with fresh noise, and returns the in-skull mean
    absolute differences.
    """
    tpl = load_template()
    slices = default_slices(slices_per_subject)
    parts: dict[str, list[float]] = {"atrophy_only": [], "noise_only": [], "adjacent_fresh_noise": []}
    for p in draw_subjects(n_subjects, seed, mix)[:max_subjects]:
        rng = np.random.default_rng(p.seed)
        def_fields = _deformation_fields(rng)
        for sl in slices:
            anat = _sample_anatomy(tpl, p, sl, def_fields)
            renderer = _SliceRenderer(tpl, p, anat, rng)
            m = anat.icv
            for k in range(len(STAGES) - 1):
                a = renderer.render(p.severities[k], np.random.default_rng([p.seed, 1])).image.astype(np.float32)
                b = renderer.render(p.severities[k + 1], np.random.default_rng([p.seed, 1])).image.astype(np.float32)
                c = renderer.render(p.severities[k], np.random.default_rng([p.seed, 2])).image.astype(np.float32)
                d = renderer.render(p.severities[k + 1], np.random.default_rng([p.seed, 3])).image.astype(np.float32)
                parts["atrophy_only"].append(float(np.abs(a - b)[m].mean()))
                parts["noise_only"].append(float(np.abs(a - c)[m].mean()))
                parts["adjacent_fresh_noise"].append(float(np.abs(c - d)[m].mean()))
    return {
        k: {"mean": round(float(np.mean(v)), 3), "p95": round(float(np.percentile(v, 95)), 3),
            "max": round(float(np.max(v)), 3), "n": len(v)}
        for k, v in parts.items()
    }


def look_statistics(paths: Iterable[Path | str], head_threshold: int = 12) -> dict:
    """How slices look, to compare the phantom with real ones: grey-level percentiles of the
    head (pixels above ``head_threshold``), head area fraction and head extent (rows, columns),
    averaged over ``paths``."""
    from PIL import Image

    pct, area, rows, cols = [], [], [], []
    for path in paths:
        with Image.open(path) as im:
            g = np.asarray(im.convert("L"), dtype=np.float32)
        head = g > head_threshold
        pct.append(np.percentile(g[head], [10, 25, 50, 75, 90, 99]))
        area.append(float(head.mean()))
        r = np.flatnonzero(head.sum(axis=1) > 5)
        c = np.flatnonzero(head.sum(axis=0) > 5)
        rows.append(int(r[-1] - r[0] + 1))
        cols.append(int(c[-1] - c[0] + 1))
    return {
        "n": len(area),
        "percentiles_10_25_50_75_90_99": [round(float(v), 1) for v in np.mean(pct, axis=0)],
        "head_area_fraction": round(float(np.mean(area)), 3),
        "head_rows": round(float(np.mean(rows)), 1),
        "head_cols": round(float(np.mean(cols)), 1),
    }


# ----------------------------------------------------------------------------- figures


def save_figures(root: Path | str, out_dir: Path | str, real_image: Path | str | None = None) -> list[Path]:
    """Documentation figures of a phantom (PNG): ``phantom_vs_real.png`` (when ``real_image``
    is given), ``phantom_progression.png`` (one subject, all stages, two levels, with the
    change from stage 0) and ``phantom_ventricles.png`` (ventricle area by stage, every subject).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    root, out_dir = Path(root), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = read_longitudinal(root)
    lon = root / "longitudinal"
    subjects = sorted({r["subject"] for r in rows})
    slices = sorted({r["slice"] for r in rows})
    by_key = {(r["subject"], r["slice"], r["stage_index"]): r for r in rows}

    def gray(path: Path) -> np.ndarray:
        with Image.open(path) as im:
            return np.asarray(im.convert("L"))

    written = []
    if real_image is not None:
        real_image = Path(real_image)
        low = min(slices, key=lambda s: abs(s - 114))
        syn_row = by_key[(subjects[0], low, 0)]
        fig, axes = plt.subplots(1, 2, figsize=(12, 3.4))
        for ax, img, title in (
            (axes[0], gray(real_image), f"real OASIS-1: {real_image.parent.name}/{real_image.name}"),
            (axes[1], gray(lon / syn_row["path"]), f"phantom: {syn_row['subject']} slice {low}, {syn_row['stage']}"),
        ):
            ax.imshow(img, cmap="gray", vmin=0, vmax=255)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        fig.tight_layout()
        written.append(out_dir / "phantom_vs_real.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)

    subject = subjects[0]
    levels = [min(slices, key=lambda s: abs(s - 118)), min(slices, key=lambda s: abs(s - 146))]
    levels = sorted(set(levels))
    fig, axes = plt.subplots(2 * len(levels), 4, figsize=(16, 4.2 * len(levels)))
    axes = np.atleast_2d(axes)
    for li, sl in enumerate(levels):
        base = gray(lon / by_key[(subject, sl, 0)]["path"]).astype(np.float32)
        for k in range(len(STAGES)):
            r = by_key[(subject, sl, k)]
            img = gray(lon / r["path"]).astype(np.float32)
            ax = axes[2 * li, k]
            ax.imshow(img, cmap="gray", vmin=0, vmax=255)
            ax.set_title(f"{r['stage']} (s={r['severity']:.2f}), slice {sl}", fontsize=9)
            ax.axis("off")
            ax = axes[2 * li + 1, k]
            ax.imshow(img - base, cmap="RdBu_r", vmin=-60, vmax=60)
            ax.set_title(f"minus stage 0; ventricle {r['ventricle_area_px']:.0f} px", fontsize=9)
            ax.axis("off")
    fig.suptitle(f"{subject}: same anatomy at the four stages (longitudinal ground truth)", fontsize=11)
    fig.tight_layout()
    written.append(out_dir / "phantom_progression.png")
    fig.savefig(written[-1], dpi=80)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for s in subjects:
        area = [sum(by_key[(s, sl, k)]["ventricle_area_px"] for sl in slices) for k in range(len(STAGES))]
        sev = [by_key[(s, slices[0], k)]["severity"] for k in range(len(STAGES))]
        ax.plot(sev, area, "-o", ms=3, lw=0.8, alpha=0.7)
    for k in range(1, len(STAGES)):
        ax.axvline(k / len(STAGES), color="grey", lw=0.5, ls="--")
    ax.set_xlabel("severity s (stage = bin of width 0.25)")
    ax.set_ylabel("ventricle area, all slices (px)")
    ax.set_title("ventricle area per subject across its four stages", fontsize=10)
    fig.tight_layout()
    written.append(out_dir / "phantom_ventricles.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)
    return written
