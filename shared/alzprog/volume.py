"""Whole-volume staging: a NIfTI volume or a zip of one DICOM series -> the axial slices the models were trained on.

Follow one volume: :func:`decode_volume` reads the bytes under the same limits as a single
slice (:mod:`alzprog.decode`: size, voxel count, bounded gzip inflation), reorients the volume
to the closest canonical (RAS+) orientation (``nibabel.as_closest_canonical``), so axis 2 runs
inferior -> superior whatever the scanner wrote, and windows the whole volume at once (one
intensity scale for every slice). Each axial plane is laid out like the OASIS slices (and
:func:`alzprog.decode.decode_slice`'s NIfTI slice): head horizontal, face to the right.

:func:`select_slices` then finds the brain in each scanned plane
(:func:`alzprog.preprocessing.brain_mask`), takes the widest brain slice as the landmark and
keeps the slices above it whose brain area, as a fraction of the widest, lies in
:data:`TRAINED_AREA_RANGE`: the level range of the training data. That range is measured on
the MNI152 template the phantom is drawn from: its training slices (template z 100-160, 
``alzprog.data.phantom.SLICE_MIN``/``SLICE_MAX``) hold 91 % down to 0-5 % of the widest
intracranial area, all above the widest slice. At most :data:`MAX_SLICES` slices, evenly
spread over that range, are returned: the work per volume is bounded whatever its size.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from alzprog.decode import (
    MAX_DICOM_INFLATED,
    MAX_INPUT_BYTES,
    MAX_VOXELS,
    NIFTI1_HEADER_SIZE,
    ImageDecodeError,
    _dicom_dataset,
    _gunzip_nifti,
    _nifti_header_info,
    sniff_format,
    untrusted_parse,
    window_to_uint8,
)

# At most this many slices are classified per volume (evenly spread over the trained range).
MAX_SLICES = 12
# At most this many planes are scanned for brain (evenly spread when the volume has more).
MAX_SCANNED = 48
# Brain area as a fraction of the widest brain slice, from the lowest to the highest trained
# level (see the module docstring for where it comes from).
TRAINED_AREA_RANGE = (0.10, 0.92)
# A zip of a DICOM series: at most this many files, this many bytes once inflated.
ZIP_MAGIC = b"PK\x03\x04"
MAX_SERIES_FILES = 1024
MAX_SERIES_INFLATED = 512 * 1024 * 1024
# A volume whose widest brain slice covers less than this share of its plane holds no brain.
MIN_BRAIN_FRACTION = 0.03


@dataclass(frozen=True)
class Volume:
    """Axial slices ``(n, H, W)`` uint8, index 0 the most inferior (RAS+ canonical order)."""

    slices: np.ndarray
    orientation: str  # the source axis codes, e.g. "LAS" (what the file said before reorienting)


@dataclass(frozen=True)
class SliceChoice:
    """The slices picked for staging, and what the scan saw."""

    indices: list[int]  # axial indices in the reoriented volume, inferior -> superior
    widest: int  # the widest brain slice (the landmark)
    scanned: int  # planes scanned for brain
    brain_area_fraction: dict[int, float]  # per picked index: brain area / widest brain area


def is_volume(data: bytes) -> bool:
    """True when ``data`` is a NIfTI file (plain or gzipped) holding a 3-D (or 4-D) volume."""
    kind = sniff_format(data)
    try:
        if kind == "gzip":
            import zlib

            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, NIFTI1_HEADER_SIZE)
        elif kind == "nifti":
            head = data[:NIFTI1_HEADER_SIZE]
        else:
            return False
        _, dims, _, _, _ = _nifti_header_info(head)
    except (ImageDecodeError, Exception):  # noqa: BLE001 - not a readable volume header
        return False
    return len(dims) >= 3 and dims[2] > 1


def decode_volume(data: bytes) -> Volume:
    """Decode a NIfTI-1 volume (``.nii`` / ``.nii.gz`` bytes) into reoriented axial slices.

    Raises :class:`alzprog.decode.ImageDecodeError` for any bad input, never another exception.
    """
    with untrusted_parse("volume", "bad_nifti", "the NIfTI volume could not be read"):
        if len(data) == 0:
            raise ImageDecodeError("empty_file", "the uploaded file is empty")
        if len(data) > MAX_INPUT_BYTES:
            raise ImageDecodeError("file_too_large", f"the file is larger than {MAX_INPUT_BYTES // (1024 * 1024)} MiB")
        if data[:4] == ZIP_MAGIC:
            return _volume_from_image(_dicom_series_image(data))
        kind = sniff_format(data)
        if kind == "gzip":
            data = _gunzip_nifti(data)
        elif kind != "nifti":
            raise ImageDecodeError("unsupported_format", "a volume must be a NIfTI-1 file (.nii or .nii.gz) or a zip of one DICOM series", 415)
        _, dims, _, bitpix, vox_offset = _nifti_header_info(data[:NIFTI1_HEADER_SIZE])
        if len(dims) < 3 or dims[2] < 2:
            raise ImageDecodeError("not_a_volume", "the NIfTI file holds a single slice, not a volume")
        if len(data) < vox_offset + int(np.prod(dims[:3], dtype=np.int64)) * bitpix // 8:
            raise ImageDecodeError("bad_nifti", "the NIfTI file is shorter than its header declares")
        import nibabel as nib

        fh = nib.FileHolder(fileobj=io.BytesIO(data))
        return _volume_from_image(nib.Nifti1Image.from_file_map({"header": fh, "image": fh}))


def _volume_from_image(img) -> Volume:  # noqa: ANN001 - nibabel.Nifti1Image
    """Reorient to RAS+, window once and lay the axial planes out as the OASIS slices."""
    import nibabel as nib

    with untrusted_parse("volume", "bad_volume", "the volume could not be read"):
        if len(img.shape) > 3:
            img = img.slicer[(slice(None),) * 3 + (0,) * (len(img.shape) - 3)]
        orientation = "".join(nib.aff2axcodes(img.affine))
        canonical = nib.as_closest_canonical(img)
        vol = np.asarray(canonical.dataobj, dtype=np.float32)  # (R, A, S)
        if vol.ndim != 3 or min(vol.shape) < 2:
            raise ImageDecodeError("not_a_volume", "the NIfTI file does not hold a 3-D volume")
        # One window for the whole volume: slices keep their relative brightness.
        u8 = window_to_uint8(vol)
        # Axial plane (R, A) -> OASIS layout: rows R reversed (patient's right at the top),
        # columns A (face to the right); slices inferior -> superior.
        slices = np.ascontiguousarray(np.transpose(u8, (2, 0, 1))[:, ::-1, :])
        return Volume(slices=slices, orientation=orientation)


def _dicom_series_image(data: bytes):  # noqa: ANN202 - nibabel.Nifti1Image
    """One DICOM series from a zip archive, as a NIfTI image with the scanner geometry.

    Bounded like every upload: at most :data:`MAX_SERIES_FILES` members, each at most
    ``MAX_DICOM_INFLATED`` bytes once inflated and :data:`MAX_SERIES_INFLATED` in all (read with
    a bound, whatever the archive declares), at most ``MAX_VOXELS`` voxels. Members that are not
    DICOM files (no ``DICM`` preamble) or hold no pixels (a DICOMDIR) are skipped; the rest must
    be one series (one ``SeriesInstanceUID``, one image size, one orientation), single-frame,
    uncompressed, with ``ImagePositionPatient``/``ImageOrientationPatient``/``PixelSpacing``.
    Slices are ordered along the normal of their plane, so file order does not matter.
    """
    import zipfile

    import nibabel as nib

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [m for m in archive.infolist() if not m.is_dir()]
    except (zipfile.BadZipFile, ValueError, OSError):
        raise ImageDecodeError("bad_zip", "the zip archive could not be read", 422) from None
    if len(members) > MAX_SERIES_FILES:
        raise ImageDecodeError("too_many_files", f"the archive holds more than {MAX_SERIES_FILES} files", 413)
    if sum(m.file_size for m in members) > MAX_SERIES_INFLATED:
        raise ImageDecodeError("decompression_bomb", "the archive expands beyond the size limit", 413)
    total = 0
    slices = []
    for m in members:
        try:
            with archive.open(m) as fh:
                raw = fh.read(MAX_DICOM_INFLATED + 1)
        except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError, EOFError, ValueError):
            raise ImageDecodeError("bad_zip", "a file of the archive could not be read (damaged or encrypted)", 422) from None
        total += len(raw)
        if len(raw) > MAX_DICOM_INFLATED or total > MAX_SERIES_INFLATED:
            raise ImageDecodeError("decompression_bomb", "the archive expands beyond the size limit", 413)
        if len(raw) < 132 or raw[128:132] != b"DICM":
            continue
        try:
            ds = _dicom_dataset(raw, stop_before_pixels=False)
        except ImageDecodeError:
            raise
        except Exception:  # noqa: BLE001 - a damaged member of untrusted bytes
            raise ImageDecodeError("bad_dicom", "a DICOM file of the archive could not be read", 422) from None
        if "PixelData" not in ds:
            continue
        slices.append(ds)
    if not slices:
        raise ImageDecodeError("no_dicom_series", "the archive holds no DICOM image", 422)
    if len({str(getattr(ds, "SeriesInstanceUID", "")) for ds in slices}) > 1:
        raise ImageDecodeError("mixed_series", "the archive holds more than one DICOM series: upload one series per request", 422)
    if len(slices) < 2:
        raise ImageDecodeError("not_a_volume", "the series holds a single slice, not a volume", 422)
    first = slices[0]
    try:
        if any(ds.file_meta.TransferSyntaxUID.is_compressed for ds in slices):
            raise ImageDecodeError("unsupported_dicom_compression", "compressed DICOM series are not supported", 415)
        rows, cols = int(first.Rows), int(first.Columns)
        iop = np.asarray([float(v) for v in first.ImageOrientationPatient])
        spacing = [float(v) for v in first.PixelSpacing]
        for ds in slices:
            if (int(ds.Rows), int(ds.Columns)) != (rows, cols) or int(getattr(ds, "NumberOfFrames", 1) or 1) != 1:
                raise ImageDecodeError("mixed_series", "the series' images differ in size or hold several frames", 422)
            if not np.allclose([float(v) for v in ds.ImageOrientationPatient], iop, atol=1e-3):
                raise ImageDecodeError("mixed_series", "the series' images differ in orientation", 422)
    except ImageDecodeError:
        raise
    except Exception:  # noqa: BLE001 - a missing or malformed geometry element
        raise ImageDecodeError("bad_dicom_series", "the series lacks its geometry (image position, orientation or pixel spacing)", 422) from None
    if rows * cols * len(slices) > MAX_VOXELS:
        raise ImageDecodeError("too_many_pixels", "the series has too many voxels", 413)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    pos = np.asarray([[float(v) for v in ds.ImagePositionPatient] for ds in slices])
    order = np.argsort(pos @ normal)
    pos = pos[order]
    steps = np.diff(pos @ normal)
    if len(steps) and (np.abs(steps) < 1e-4).any():
        raise ImageDecodeError("mixed_series", "two images of the series lie at the same position", 422)
    dz = float(np.median(steps)) if len(steps) else 1.0
    stack = []
    for i in order:
        ds = slices[int(i)]
        px = np.asarray(ds.pixel_array, dtype=np.float32)
        slope = float(getattr(ds, "RescaleSlope", 1) or 1)
        intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
        stack.append(px * slope + intercept)
    # voxel (column j, row i, slice k) -> array [j, i, k]; DICOM's patient frame is LPS, NIfTI's RAS.
    vol = np.stack(stack, axis=-1).transpose(1, 0, 2)
    affine = np.eye(4)
    affine[:3, 0] = row_dir * spacing[1]
    affine[:3, 1] = col_dir * spacing[0]
    affine[:3, 2] = normal * dz
    affine[:3, 3] = pos[0]
    affine[:2] *= -1
    return nib.Nifti1Image(vol, affine)


def select_slices(volume: Volume, max_slices: int = MAX_SLICES) -> SliceChoice:
    """The brain-bearing slices of ``volume`` in the trained level range (at most ``max_slices``).

    Raises :class:`alzprog.decode.ImageDecodeError` (``no_brain``, 422) when no slice holds a
    brain or none lies in the trained range.
    """
    from alzprog.preprocessing import brain_mask

    n = volume.slices.shape[0]
    scan = np.unique(np.linspace(0, n - 1, min(n, MAX_SCANNED)).round().astype(int))
    plane = float(volume.slices.shape[1] * volume.slices.shape[2])
    area = {}
    for z in scan:
        s = volume.slices[z]
        area[int(z)] = float(brain_mask(s).sum()) if s.max() > 0 else 0.0
    widest = max(area, key=area.get)
    if area[widest] < MIN_BRAIN_FRACTION * plane:
        raise ImageDecodeError("no_brain", "no slice of this volume holds a brain", 422)
    lo, hi = TRAINED_AREA_RANGE
    candidates = [z for z in sorted(area) if z > widest and lo <= area[z] / area[widest] <= hi]
    if not candidates:
        raise ImageDecodeError("no_brain", "no slice of this volume lies in the level range the models were trained on", 422)
    if len(candidates) > max_slices:
        picks = np.linspace(0, len(candidates) - 1, max_slices).round().astype(int)
        candidates = [candidates[i] for i in picks]
    return SliceChoice(
        indices=candidates,
        widest=widest,
        scanned=len(scan),
        brain_area_fraction={z: area[z] / area[widest] for z in candidates},
    )


def soft_vote(probabilities: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and standard deviation across slices of each stage's probability."""
    if not probabilities:
        raise ValueError("no slice probabilities to vote with")
    stages = list(probabilities[0])
    p = np.array([[float(d[s]) for s in stages] for d in probabilities])
    mean = p.mean(axis=0)
    mean = mean / mean.sum()
    return dict(zip(stages, map(float, mean))), dict(zip(stages, map(float, p.std(axis=0))))


def representative(probabilities: list[dict[str, float]], stage: str) -> int:
    """Position (in ``probabilities``) of the slice most confident in the voted ``stage``."""
    return int(np.argmax([float(d[stage]) for d in probabilities]))
