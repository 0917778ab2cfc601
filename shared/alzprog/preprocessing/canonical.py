"""The canonical slice, without torch: brain mask, canonicalisation, hashes, display helpers.

A slice goes ``decode`` -> :func:`canonicalize` (crop to the head, pad to a square, resize to
:data:`CANONICAL_SIZE`, brain mask) -> the model inputs of :mod:`alzprog.preprocessing.tensors`.
Anything a model sees, in training or in serving, passes through these functions, so a
change here changes both sides at once. NumPy, SciPy and Pillow only: the gateway
canonicalises with this module and never loads torch.

The brain mask is computed from the image alone (no atlas, no registration): the head is
found by an Otsu threshold; the skull/scalp band at the head border is cut off; tissue of
brain intensity is split by the dark skull gap and CSF from the bright scalp fat; the brain
is the tissue component nearest the head centre grown by its close neighbours (temporal
lobes, brainstem), smoothed and hole-filled. It is tuned on the real OASIS-1 slices in
``shared/oasis-samples`` (docs/img/brain_mask_real.png) and checked against the phantom's
true intracranial masks (docs/img/brain_mask_phantom.png; the agreement figures, and where
the mask runs into the face in the phantom's lowest slices, are in docs/ARCHITECTURE.md).
It works on the head's box resampled to a fixed resolution, so its cost does not depend on
the upload size.
"""

from __future__ import annotations

import hashlib
import math
from functools import lru_cache
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage as ndi

CANONICAL_SIZE = 256
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# Masks are computed on a copy whose longest side is this many pixels: morphology cost is
# then constant (~ a few ms) whatever the upload size, and the parameters below are tuned
# in these units.
_WORK_SIDE = 160
_BBOX_SIDE = 112
# Brain masks are computed on the head's box resampled so that its short side has at most
# _WORK_SHORT pixels (and its long side at most _WORK_LONG); the parameters of
# _brain_mask_box are tuned in these units.
_WORK_SHORT = 112
_WORK_LONG = 256
# Margin around the head's bounding box, as a fraction of the box's longer side.
_CROP_MARGIN = 0.04


# ---------------------------------------------------------------------------------------
# Small image-analysis helpers (numpy/scipy only: fast to import, deterministic)


def _disk(radius: int) -> np.ndarray:
    r = max(int(radius), 1)
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return x * x + y * y <= r * r


@lru_cache(maxsize=64)
def _disk_widths(sq_radius: int) -> tuple[int, ...]:
    """Half-width of each row |dy| = 0, 1, ... of the disk {dy^2 + dx^2 <= sq_radius}."""
    m = int(sq_radius)
    return tuple(math.isqrt(m - k * k) for k in range(math.isqrt(m) + 1))


def _morph_disk(mask: np.ndarray, sq_radius: int, erode: bool) -> np.ndarray:
    """Binary erosion (or dilation) by the disk {dy^2 + dx^2 <= sq_radius}; outside the image
    counts as background for both.

    The disk is a stack of centred row segments, so the result is the AND (OR) over its rows
    dy of the image shifted by dy and eroded (dilated) along x by that row's segment; the
    segments of all half-widths come from one pass that widens them one pixel at a time.
    Shifts are slices of a copy padded with background, so no pixel outside the image is
    ever foreground.
    """
    m = np.asarray(mask, dtype=bool)
    widths = _disk_widths(sq_radius)
    r = widths[0]
    if r == 0:
        return m.copy()
    H, W = m.shape
    op = np.logical_and if erode else np.logical_or
    padded = np.zeros((H + 2 * r, W + 2 * r), dtype=bool)
    padded[r : r + H, r : r + W] = m
    # rows[w]: every row of the padded image, eroded (dilated) along x by the segment |dx| <= w
    rows = [padded[:, r : r + W]]
    for w in range(1, r + 1):
        t = op(rows[-1], padded[:, r - w : r - w + W])
        op(t, padded[:, r + w : r + w + W], out=t)
        rows.append(t)
    out = rows[widths[0]][r : r + H].copy()
    for k in range(1, r + 1):
        seg = rows[widths[k]]
        op(out, seg[r - k : r - k + H], out=out)
        op(out, seg[r + k : r + k + H], out=out)
    return out


def _sq_below(threshold: float) -> int:
    """The largest integer n with sqrt(n) < threshold, sqrt in float64 as a distance
    transform computes it (-1 if there is none). sqrt is monotone, so these n are 0..result."""
    n = int(math.ceil(max(float(threshold), 0.0) ** 2)) + 2
    while n >= 0 and not np.sqrt(np.float64(n)) < threshold:
        n -= 1
    return n


def _erode_sq(mask: np.ndarray, sq_radius: int) -> np.ndarray:
    """The pixels of ``mask`` whose squared distance to the background (outside the image
    included) exceeds ``sq_radius``: erosion by the disk {dy^2 + dx^2 <= sq_radius}."""
    if sq_radius < 0:  # the empty structuring element
        return np.ones_like(mask, dtype=bool)
    return _morph_disk(mask, sq_radius, erode=True)


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary erosion by the disk {x^2 + y^2 <= r^2}; outside the image counts as background.

    The same pixels as scipy's binary_erosion by :func:`_disk` with border_value=0, and as
    thresholding a distance transform: a pixel survives iff its distance to the nearest
    background pixel exceeds the radius.
    """
    r = max(int(radius), 1)
    return _morph_disk(mask, r * r, erode=True)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by the disk {x^2 + y^2 <= r^2} (the pixels within the radius of the mask)."""
    r = max(int(radius), 1)
    return _morph_disk(mask, r * r, erode=False)


def _close(mask: np.ndarray, radius: int) -> np.ndarray:
    # Pad so that shapes touching the border close as if the image went on.
    p = radius + 1
    padded = np.zeros((mask.shape[0] + 2 * p, mask.shape[1] + 2 * p), dtype=bool)
    padded[p:-p, p:-p] = mask
    return _erode(_dilate(padded, radius), radius)[p:-p, p:-p]


def _open(mask: np.ndarray, radius: int) -> np.ndarray:
    return _dilate(_erode(mask, radius), radius)


# scipy's default structuring element for label and binary_fill_holes in 2-D (4-connectivity),
# built once instead of on every call.
_CROSS = ndi.generate_binary_structure(2, 1)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """scipy's binary_fill_holes (default structure): background not 4-connected to the image
    border becomes foreground. Labelling the background once finds the same pixels as
    scipy's propagation from the border."""
    labels, n = ndi.label(~mask, _CROSS)
    if n == 0:
        return np.ones_like(mask, dtype=bool)
    outer = np.zeros(n + 1, dtype=bool)
    for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
        outer[edge] = True
    outer[0] = False
    if outer[1:].all():  # no hole
        return mask.copy()
    return ~outer[labels]


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndi.label(mask, _CROSS)
    if n == 0:
        return mask.copy()
    sizes = np.bincount(labels[labels > 0], minlength=n + 1)  # label 0 (background) counts 0
    return labels == int(np.argmax(sizes))


def _otsu(values: np.ndarray) -> float:
    """Otsu threshold of uint8-range values (between-class variance maximised)."""
    hist = np.bincount(np.clip(values, 0, 255).astype(np.uint8).ravel(), minlength=256).astype(np.float64)
    if hist.sum() == 0:
        return 0.0
    p = hist / hist.sum()
    w = np.cumsum(p)
    mu = np.cumsum(p * np.arange(256))
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * w - mu) ** 2 / (w * (1.0 - w))
    return float(np.argmax(np.nan_to_num(between)))


def _otsu3(values: np.ndarray) -> tuple[float, float]:
    """Two thresholds splitting values into three classes (dark / tissue / bright).

    Exhaustive search over a 64-bin histogram: 2k candidate pairs, vectorised.
    """
    hist = np.bincount((np.clip(values, 0, 255).astype(np.uint8) >> 2).ravel(), minlength=64).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0.0, 0.0
    p = hist / total
    levels = np.arange(64) * 4.0 + 1.5
    w = np.concatenate([[0.0], np.cumsum(p)])
    m = np.concatenate([[0.0], np.cumsum(p * levels)])
    mt = m[-1]
    i = np.arange(1, 63)[:, None]
    j = np.arange(2, 64)[None, :]
    valid = j > i
    w0, m0 = w[i], m[i]
    w1, m1 = w[j] - w[i], m[j] - m[i]
    w2, m2 = 1.0 - w[j], mt - m[j]
    with np.errstate(divide="ignore", invalid="ignore"):
        var = m0**2 / w0 + m1**2 / w1 + m2**2 / w2
    var = np.where(valid & (w0 > 0) & (w1 > 0) & (w2 > 0), var, -1.0)
    a, b = np.unravel_index(int(np.argmax(var)), var.shape)
    if var[a, b] < 0:  # fewer than three occupied levels
        t = _otsu(values)
        return t, t
    t1, t2 = int(i[a, 0]), int(j[0, b])
    return t1 * 4.0, t2 * 4.0


def _resize(arr: np.ndarray, shape: tuple[int, int], resample: int = Image.BILINEAR) -> np.ndarray:
    """Resize a uint8 2-D array to (height, width) with PIL (antialiased when shrinking)."""
    h, w = shape
    if arr.shape == (h, w):
        return arr
    return np.asarray(Image.fromarray(arr).resize((w, h), resample=resample))


def _resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if mask.shape == tuple(shape):
        return mask.astype(bool)
    up = _resize(mask.astype(np.uint8) * 255, shape, Image.BILINEAR)
    return up >= 128


def _to_uint8_gray(gray: np.ndarray) -> np.ndarray:
    a = np.asarray(gray)
    if a.ndim == 3 and a.shape[2] in (3, 4):  # tolerate RGB(A) arrays: luminance
        a = a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {a.shape}")
    if a.dtype != np.uint8:
        a = np.clip(np.rint(a.astype(np.float64)), 0, 255).astype(np.uint8)
    return a


def _work_copy(gray: np.ndarray, side: int = _WORK_SIDE) -> tuple[np.ndarray, float]:
    """A smoothed float copy whose longer side is at most ``side``, and its scale."""
    h, w = gray.shape
    scale = min(1.0, side / max(h, w))
    small = _resize(gray, (max(1, round(h * scale)), max(1, round(w * scale))))
    return ndi.gaussian_filter(small.astype(np.float32), 0.7), scale


def _head_mask_work(g: np.ndarray) -> np.ndarray:
    """Head foreground (tissue + skull + scalp) at working resolution."""
    t = _otsu(g)
    head = g > max(0.5 * t, 8.0)
    head = _close(head, 2)
    head = _fill_holes(head)
    head = _open(head, 1)
    return _largest_component(head)


def head_mask(gray: np.ndarray) -> np.ndarray:
    """Boolean mask of the whole head (brain, skull, scalp) against the dark background."""
    g8 = _to_uint8_gray(gray)
    g, _ = _work_copy(g8)
    return _resize_mask(_head_mask_work(g), g8.shape)


def _brain_mask_work(g: np.ndarray, head: np.ndarray) -> np.ndarray:
    area = int(head.sum())
    if area < 64:
        return np.zeros_like(head)
    # Work inside the head's bounding box only (background costs time, adds nothing); the
    # brain lies inside the head, so the result is the same as on the full frame.
    rows = np.flatnonzero(head.any(axis=1))
    cols = np.flatnonzero(head.any(axis=0))
    box = (slice(max(rows[0] - 1, 0), rows[-1] + 2), slice(max(cols[0] - 1, 0), cols[-1] + 2))
    out = np.zeros_like(head)
    out[box] = _brain_mask_box(g[box], head[box])
    return out


def _label_centres(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel counts and row and column centres of labels 1..n of ``ndi.label``; the centres are
    ndi.center_of_mass(labels > 0, labels, range(1, n + 1)).

    scipy divides per-label sums of the pixel coordinates by the pixel counts. Those sums are
    of integers far below 2**53, so every summation order gives them exactly (here: over the
    labelled pixels only), and the one division per label then gives the same float64.
    """
    idx = np.flatnonzero(labels)
    lab = labels.ravel()[idx]
    rows = idx // labels.shape[1]
    cols = idx - rows * labels.shape[1]
    counts = np.bincount(lab, minlength=n + 1)[1 : n + 1]
    cy = np.bincount(lab, weights=rows, minlength=n + 1)[1 : n + 1] / counts
    cx = np.bincount(lab, weights=cols, minlength=n + 1)[1 : n + 1] / counts
    return counts, cy, cx


def _centre(mask: np.ndarray) -> tuple[float, float]:
    """ndi.center_of_mass(mask) of a boolean mask: exact integer coordinate sums over the pixel
    count, the same float64 division as scipy's."""
    count = int(mask.sum())
    cy = np.float64(int(mask.sum(axis=1) @ np.arange(mask.shape[0]))) / count
    cx = np.float64(int(mask.sum(axis=0) @ np.arange(mask.shape[1]))) / count
    return cy, cx


def _brain_mask_box(g: np.ndarray, head: np.ndarray) -> np.ndarray:
    area = int(head.sum())
    radius = np.sqrt(area / np.pi)  # radius of a disc of the head's area
    # The skull and scalp form a band along the head border: never brain. The band is the
    # pixels whose Euclidean distance to the background (outside the image included) is
    # below 0.06 * radius: distances are square roots of integers, so that is erosion by the
    # disk of the largest squared distance still below the threshold.
    rim = ~_erode_sq(head, _sq_below(0.06 * radius))
    lo, hi = _otsu3(g[head])
    # Brain tissue: brighter than the skull gap / CSF, darker than scalp and orbital fat.
    tissue = head & ~rim & (g > 0.65 * lo) & (g < 1.3 * hi)
    r = max(1, int(round(0.03 * radius)))
    # Erode so that thin tissue bridges across the skull gap (to scalp, muscles) break.
    core = _erode(tissue, r)
    labels, n = ndi.label(core, _CROSS)
    if n == 0:
        return np.zeros_like(head)
    counts, ys, xs = _label_centres(labels, n)
    sizes = np.zeros(n + 1)
    sizes[1:] = counts
    # Brain tissue forms smooth compact lobes; facial tissue (muscle, glands, sinuses
    # mucosa) forms ragged patches. The part of each component that survives an opening
    # measures that: count it instead of the raw size.
    opened = _open(core, 2 * r)
    solid = np.bincount(labels[opened], minlength=n + 1).astype(np.float64)
    solid[0] = 0
    cy, cx = _centre(head)
    # Prefer large solid components near the head centre (the brain, not a piece of face).
    score = np.zeros(n + 1)
    d = np.hypot((ys - cy) / head.shape[0], (xs - cx) / head.shape[1])
    score[1:] = solid[1:] / (1.0 + 4.0 * d)
    best = int(np.argmax(score))
    brain = labels == best
    # Grow by sizeable solid components lying close to the accepted region: the temporal
    # lobes and the brainstem are cut off from the cerebrum / cerebellum by thin CSF spaces.
    min_size = 0.02 * sizes[best]
    with np.errstate(divide="ignore", invalid="ignore"):
        solidity = np.nan_to_num(solid / sizes)
    taken = np.zeros(n + 1, dtype=bool)
    taken[0] = taken[best] = True
    while True:
        near = np.zeros(n + 1, dtype=bool)
        near[labels[_dilate(brain, 3 * r)]] = True
        new = [int(i) for i in np.flatnonzero(near) if not taken[i] and sizes[i] >= min_size and solidity[i] >= 0.5]
        if not new:
            break
        taken[new] = True
        members = taken.copy()
        # Label 0 (not core) is taken only so that it is never added; it is brain only if
        # it was chosen as best (no component survived the opening).
        members[0] = best == 0
        brain = members[labels]
    out = np.zeros_like(head)
    if not brain.any():
        return out
    # The steps below grow the brain by at most 3r pixels (dilation by r, closing by 2r) and
    # otherwise only remove pixels or fill holes, so they run on the brain's box with a
    # margin of 3r + 1: beyond it every step's answer is background, inside it the same as
    # on the whole box (the margin keeps a background ring around the closed mask, so filling
    # holes and labelling see the same components, numbered in the same raster order).
    rows = np.flatnonzero(brain.any(axis=1))
    cols = np.flatnonzero(brain.any(axis=0))
    m = 3 * r + 1
    bb = (slice(max(rows[0] - m, 0), rows[-1] + 1 + m), slice(max(cols[0] - m, 0), cols[-1] + 1 + m))
    brain = _dilate(brain[bb], r) & tissue[bb]
    brain = _close(brain, 2 * r)
    brain = _fill_holes(brain)
    brain = _open(brain, 2 * r)
    out[bb] = _largest_component(brain) & head[bb] & ~rim[bb]
    return out


def brain_mask(gray: np.ndarray) -> np.ndarray:
    """Boolean mask of the brain (no skull, scalp or background), from the image alone.

    Works on any 2-D grayscale slice (uint8, or any numeric array, which is rounded and
    clipped to 0-255); returns an array of the input's shape. An image with no head (blank)
    gives an all-False mask.
    """
    g8 = _to_uint8_gray(gray)
    H, W = g8.shape
    # Work on the head's box at a resolution set by the head's *short* side: the skull gap
    # that separates brain from scalp is only a few pixels wide across that axis (the
    # Kaggle OASIS slices are squashed 2:1), so it must keep enough pixels, whatever the
    # size of the upload or of the background around the head.
    top, bottom, left, right = head_bbox(g8)
    crop = g8[top:bottom, left:right]
    h, w = crop.shape
    scale = min(1.0, _WORK_SHORT / min(h, w), _WORK_LONG / max(h, w))
    small = _resize(crop, (max(1, round(h * scale)), max(1, round(w * scale))))
    g = ndi.gaussian_filter(small.astype(np.float32), 0.7)
    head = _head_mask_work(g)
    out = np.zeros((H, W), dtype=bool)
    out[top:bottom, left:right] = _resize_mask(_brain_mask_work(g, head), (h, w))
    return out


# ---------------------------------------------------------------------------------------
# Canonical slice


@dataclass(frozen=True, eq=False)
class CanonicalSlice:
    """A slice in the canonical frame: head centred, square, ``size`` x ``size``.

    ``image`` is uint8, ``mask`` is the boolean brain mask of ``image``; both read-only.
    """

    image: np.ndarray
    mask: np.ndarray

    @property
    def sha256(self) -> str:
        """Hex SHA-256 over the shape and pixel bytes: the services' cache key."""
        return canonical_sha256(self.image)

    @property
    def size(self) -> int:
        return int(self.image.shape[0])


def head_bbox(gray: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right), exclusive ends, of the head with a small margin.

    The whole image when no head is found.
    """
    g8 = _to_uint8_gray(gray)
    # A coarse copy is enough for a bounding box: the margin covers its rounding.
    g, scale = _work_copy(g8, _BBOX_SIDE)
    head = _head_mask_work(g)
    H, W = g8.shape
    if head.sum() < 16:
        return 0, H, 0, W
    rows = np.flatnonzero(head.any(axis=1))
    cols = np.flatnonzero(head.any(axis=0))
    # Back to full-resolution coordinates (a working pixel covers 1/scale source pixels).
    top, bottom = rows[0] / scale, (rows[-1] + 1) / scale
    left, right = cols[0] / scale, (cols[-1] + 1) / scale
    margin = _CROP_MARGIN * max(bottom - top, right - left)
    top = max(0, int(np.floor(top - margin)))
    left = max(0, int(np.floor(left - margin)))
    bottom = min(H, int(np.ceil(bottom + margin)))
    right = min(W, int(np.ceil(right + margin)))
    return top, bottom, left, right


def canonicalize(gray: np.ndarray, size: int = CANONICAL_SIZE) -> CanonicalSlice:
    """Crop to the head (small margin), pad to a square with background, resize to ``size``.

    Deterministic; the mask is :func:`brain_mask` of the canonical image, so a canonical
    image always carries the same mask whoever computes it.
    """
    image = canonical_image(gray, size)
    mask = brain_mask(image)
    mask.setflags(write=False)
    return CanonicalSlice(image=image, mask=mask)


def canonical_image(gray: np.ndarray, size: int = CANONICAL_SIZE) -> np.ndarray:
    """The image of :func:`canonicalize` without its brain mask (read-only uint8 ``size`` x ``size``).

    For callers that may not need the mask (the gateway computes it only when a request uses
    it): ``brain_mask(canonical_image(g))`` equals ``canonicalize(g).mask``.
    """
    if int(size) < 16:
        raise ValueError(f"size must be at least 16, got {size}")
    g8 = _to_uint8_gray(gray)
    top, bottom, left, right = head_bbox(g8)
    crop = g8[top:bottom, left:right]
    h, w = crop.shape
    side = max(h, w)
    square = np.zeros((side, side), dtype=np.uint8)  # background is black in MRI
    y0, x0 = (side - h) // 2, (side - w) // 2
    square[y0 : y0 + h, x0 : x0 + w] = crop
    image = _resize(square, (size, size), Image.BILINEAR).copy()
    image.setflags(write=False)
    return image


def canonical_sha256(image: np.ndarray) -> str:
    """Hex SHA-256 over a canonical image's shape and pixel bytes (:attr:`CanonicalSlice.sha256`)."""
    h = hashlib.sha256()
    h.update(f"{image.shape[0]}x{image.shape[1]}:".encode())
    h.update(np.ascontiguousarray(image, dtype=np.uint8).tobytes())
    return h.hexdigest()


def load_canonical(path_or_bytes: str | Path | bytes, size: int = CANONICAL_SIZE) -> CanonicalSlice:
    """Decode a file (path) or an upload (bytes) and canonicalize it."""
    from alzprog.decode import decode_slice, read_slice

    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        gray = decode_slice(bytes(path_or_bytes))
    else:
        gray = read_slice(path_or_bytes)
    return canonicalize(gray, size)


# ---------------------------------------------------------------------------------------
# Model inputs and outputs


def mark_synthetic(image: np.ndarray) -> np.ndarray:
    """Return an RGB uint8 copy with a visible "SYNTHETIC" banner burnt into the pixels.

    Every generated image shown to a person carries it, so a synthetic slice cannot be
    mistaken for a scan. The banner spans most of the width whatever the image size: yellow
    text on an opaque black box at the top. The box hides the pixels under it, so the banner
    is drawn once per image size (:func:`_banner`) and pasted.
    """
    a = np.asarray(image)
    if a.ndim == 2:
        rgb = np.stack([_to_uint8_gray(a)] * 3, axis=-1)
    elif a.ndim == 3 and a.shape[2] in (3, 4):
        rgb = np.ascontiguousarray(a[..., :3]).astype(np.uint8)
    else:
        raise ValueError(f"expected HxW or HxWx3 pixels, got shape {a.shape}")
    h, w = rgb.shape[:2]
    box, pixels = _banner(w, h)
    top, bottom, left, right = box
    rgb[top:bottom, left:right] = pixels
    return rgb


@lru_cache(maxsize=8)
def _banner(w: int, h: int) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """The banner of a ``w`` x ``h`` image: its box (top, bottom, left, right) inside the image
    and its RGB pixels there (read-only)."""
    text = "SYNTHETIC"
    # Pick the font size that makes the word about 60 % of the image width.
    font_size = max(8, int(w * 0.6 / 6.0))
    font = ImageFont.load_default(size=font_size)
    stroke = max(1, font_size // 14)  # thicker strokes: readable when shrunk in a browser
    canvas = Image.new("RGB", (w, h), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    l, t_, r, b = draw.textbbox((0, 0), text, font=font, stroke_width=stroke)
    tw, th = r - l, b - t_
    pad = max(2, font_size // 6)
    x = (w - tw) // 2
    y = pad
    draw.rectangle([x - pad, y - pad, x + tw + pad, y + th + pad], fill=(0, 0, 0))
    draw.text((x - l, y - t_), text, font=font, fill=(255, 210, 0), stroke_width=stroke, stroke_fill=(255, 210, 0))
    # PIL's rectangle includes both corners; clip the box to the image.
    top, bottom = max(0, y - pad), min(h, y + th + pad + 1)
    left, right = max(0, x - pad), min(w, x + tw + pad + 1)
    pixels = np.asarray(canvas, dtype=np.uint8)[top:bottom, left:right].copy()
    pixels.flags.writeable = False
    return (top, bottom, left, right), pixels


def overlay_mask(gray: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (255, 60, 60)) -> np.ndarray:
    """RGB uint8 picture of ``gray`` with ``mask`` tinted and its outline drawn (for figures)."""
    g8 = _to_uint8_gray(gray)
    m = np.asarray(mask, dtype=bool)
    if m.shape != g8.shape:
        raise ValueError(f"mask shape {m.shape} differs from image shape {g8.shape}")
    rgb = np.stack([g8] * 3, axis=-1).astype(np.float32)
    tint = np.asarray(color, dtype=np.float32)
    rgb[m] = rgb[m] * 0.65 + tint * 0.35
    outline = m & ~ndi.binary_erosion(m)
    rgb[outline] = tint
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
