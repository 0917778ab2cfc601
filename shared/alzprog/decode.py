"""Bytes from an untrusted upload -> one 2-D ``uint8`` grayscale slice.

Accepted formats (sniffed from magic bytes only, never from a file name or a claimed type):
PNG, JPEG, DICOM (``DICM`` at offset 128) and NIfTI-1 (``.nii`` and ``.nii.gz``). Everything
else is refused with :class:`ImageDecodeError` before any third-party parser sees it.

Why so strict: an upload endpoint is a parser exposed to the internet. So:

- Pillow is only ever asked for the one plugin the magic bytes chose (``formats=[...]``),
  so EPS (Ghostscript), TIFF, GIF, ... are unreachable.
- The pixel count a header declares is checked against :data:`MAX_PIXELS` *before* any pixel
  is decoded; every decompression (gzip, deflated DICOM) is bounded by ``max_length``.
- Every failure of every parser is wrapped into :class:`ImageDecodeError`: a caller never sees
  another exception type for bad bytes, and services turn it into a 4xx JSON error.
- DICOM and NIfTI headers may carry personal data; the decoder returns pixels only and its
  error messages never quote a header value (de-identification by construction).

Policies (tested in tests/test_decode.py):

- Trailing bytes after a PNG ``IEND`` or a JPEG ``EOI`` (polyglots, camera trailers) are
  ignored: only decoded pixels are returned, so the trailer can never travel further.
- Animated PNG (more than one frame) is refused (``multi_frame``): which frame the user meant
  is ambiguous. A multi-picture JPEG (MPO) yields its primary picture. Multi-frame DICOM
  yields its central frame; 4-D NIfTI its first volume.
- Images smaller than :data:`MIN_SIDE` on a side (``too_small``) or more elongated than
  :data:`MAX_ASPECT` (``bad_aspect_ratio``) are refused: they cannot be a brain slice.
- Colour is converted to grayscale by luminance (ITU-R 601); alpha is composited on black;
  CMYK goes through RGB; EXIF orientation is applied to JPEGs.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------------------
# Limits. Far below Pillow's own MAX_IMAGE_PIXELS (~89 Mpx): a brain slice is < 1 Mpx.
MAX_INPUT_BYTES = 128 * 1024 * 1024
MAX_PIXELS = 25_000_000  # per 2-D image / frame
MIN_SIDE = 32
MAX_ASPECT = 8.0
# Declared pixels per input byte above which an over-sized image is called a bomb rather
# than merely too large (a 20000x20000 1-bit PNG of a few kB has a ratio of ~10^5).
BOMB_RATIO = 100.0
# Volumes (NIfTI, multi-frame DICOM): total voxels and bytes after decompression.
MAX_VOXELS = 2**27  # 134 M voxels, e.g. 512^3
MAX_VOLUME_BYTES = 512 * 1024 * 1024
# A deflated DICOM dataset may inflate to at most this (an MR image is < 1 MiB; a
# multi-frame series a few tens of MiB).
MAX_DICOM_INFLATED = 64 * 1024 * 1024

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
GZIP_MAGIC = b"\x1f\x8b"
NIFTI1_HEADER_SIZE = 348
# Percentiles used to window data that is not already 8-bit (16-bit PNG, DICOM, NIfTI).
WINDOW_PERCENTILES = (0.5, 99.5)

# NIfTI-1 datatype codes we can turn into a grayscale slice (no complex, no RGB).
_NIFTI_DTYPES = {2: 8, 4: 16, 8: 32, 16: 32, 64: 64, 256: 8, 512: 16, 768: 32, 1024: 64, 1280: 64}

_DEFLATED_TS = "1.2.840.10008.1.2.1.99"
# DICOM transfer syntaxes whose pixel data we decode: native (implicit/explicit VR little
# endian, explicit big endian, deflated), RLE Lossless (pydicom's own numpy decoder) and
# JPEG Baseline/Extended (Pillow's JPEG plugin). JPEG 2000, JPEG-LS, JPEG Lossless, HTJ2K,
# MPEG/HEVC video are refused: either no decoder is installed or it would expose one more
# native parser (OpenJPEG, ...) to uploads for no benefit to MRI slices.
_DICOM_TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    _DEFLATED_TS,
    "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
}


@contextmanager
def untrusted_parse(what: str, code: str, failure: str) -> Iterator[None]:
    """Parsing untrusted bytes: an :class:`ImageDecodeError` passes through, running out of
    memory becomes ``too_many_pixels`` and any other parser failure ``code`` (a 4xx, never a 500)."""
    try:
        yield
    except ImageDecodeError:
        raise
    except MemoryError:
        raise ImageDecodeError("too_many_pixels", f"the {what} is too large to decode") from None
    except Exception as exc:  # noqa: BLE001 - any parser failure on untrusted bytes is a 4xx
        raise ImageDecodeError(code, f"{failure} ({type(exc).__name__})") from None


class ImageDecodeError(ValueError):
    """An upload that cannot be turned into a grayscale slice.

    ``code`` is a short machine string (``empty_file``, ``unsupported_format``,
    ``corrupt_image``, ``too_many_pixels``, ``decompression_bomb``, ``too_small``,
    ``bad_aspect_ratio``, ``multi_frame``, ``bad_dicom``, ``unsupported_dicom_compression``,
    ``bad_nifti``, ``bad_slice_index``, ``file_too_large``, ``unreadable_file``); ``status`` is the HTTP status a service should answer with;
    ``message`` is safe to show to the user (it never quotes a header value).
    """

    STATUS = {
        "file_too_large": 413,
        "too_many_pixels": 413,
        "decompression_bomb": 413,
        "unsupported_format": 415,
        "empty_file": 400,
    }

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status if status is not None else self.STATUS.get(code, 422)

    def to_dict(self) -> dict[str, str]:
        """The ``{"code", "message"}`` body of the services' error JSON."""
        return {"code": self.code, "message": self.message}


# ---------------------------------------------------------------------------------------
# Sniffing


def sniff_format(data: bytes) -> str | None:
    """Return ``png``, ``jpeg``, ``dicom``, ``nifti``, ``gzip`` or None from magic bytes only."""
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    if len(data) >= NIFTI1_HEADER_SIZE and _nifti_endian(data) is not None:
        return "nifti"
    if data.startswith(GZIP_MAGIC):
        return "gzip"
    return None


def _nifti_endian(header: bytes) -> str | None:
    if len(header) < 4:
        return None
    if struct.unpack("<i", header[:4])[0] == NIFTI1_HEADER_SIZE:
        return "<"
    if struct.unpack(">i", header[:4])[0] == NIFTI1_HEADER_SIZE:
        return ">"
    return None


# ---------------------------------------------------------------------------------------
# Public API


def decode_slice(data: bytes, *, nifti_slice: int | None = None) -> np.ndarray:
    """Decode an uploaded image into a 2-D ``uint8`` grayscale array (source orientation).

    ``nifti_slice`` picks the axial slice of a NIfTI volume (default: the central one); it is
    ignored for other formats. Raises :class:`ImageDecodeError` for any bad input and never
    any other exception.
    """
    with untrusted_parse("image", "corrupt_image", "the file could not be decoded"):
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ImageDecodeError("unsupported_format", "expected the raw bytes of an image file")
        data = bytes(data)
        if len(data) == 0:
            raise ImageDecodeError("empty_file", "the uploaded file is empty")
        if len(data) > MAX_INPUT_BYTES:
            raise ImageDecodeError(
                "file_too_large", f"the file is larger than {MAX_INPUT_BYTES // (1024 * 1024)} MiB"
            )
        kind = sniff_format(data)
        if kind == "png":
            image = _decode_pillow(data, "PNG")
        elif kind == "jpeg":
            image = _decode_pillow(data, "JPEG")
        elif kind == "dicom":
            image = _decode_dicom(data)
        elif kind == "nifti":
            image = _decode_nifti(data, nifti_slice)
        elif kind == "gzip":
            image = _decode_nifti(_gunzip_nifti(data), nifti_slice)
        else:
            raise ImageDecodeError(
                "unsupported_format",
                "not a PNG, JPEG, DICOM (with the DICM preamble) or NIfTI-1 (.nii/.nii.gz) file",
            )
        _check_shape(image.shape)
        return np.ascontiguousarray(image, dtype=np.uint8)


def read_slice(path: str | Path, *, nifti_slice: int | None = None) -> np.ndarray:
    """Read a file and decode it with :func:`decode_slice`."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_INPUT_BYTES:
            raise ImageDecodeError(
                "file_too_large", f"the file is larger than {MAX_INPUT_BYTES // (1024 * 1024)} MiB"
            )
        data = p.read_bytes()
    except OSError as exc:
        raise ImageDecodeError("unreadable_file", f"cannot read {p.name}: {exc.strerror}", 400) from None
    return decode_slice(data, nifti_slice=nifti_slice)


def encode_png(image: np.ndarray) -> bytes:
    """Re-encode pixels as a plain PNG (no metadata, no text chunks): safe to send or store."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"encode_png expects uint8 pixels, got {arr.dtype}")
    if arr.ndim == 2:
        pil = Image.fromarray(arr, mode="L")
    elif arr.ndim == 3 and arr.shape[2] in (3, 4):
        pil = Image.fromarray(arr, mode="RGB" if arr.shape[2] == 3 else "RGBA")
    else:
        raise ValueError(f"encode_png expects HxW or HxWx3/4 pixels, got shape {arr.shape}")
    buf = io.BytesIO()
    # zlib level 3: nearly as small as level 6 and much quicker to write for the marked RGB
    # synthetic images (three per /progression answer; figures in docs/performance.md).
    pil.save(buf, format="PNG", optimize=False, compress_level=3)
    return buf.getvalue()


def png_data_url(image: np.ndarray) -> str:
    """:func:`encode_png` as a ``data:image/png;base64,...`` URL (what the services return)."""
    import base64

    return "data:image/png;base64," + base64.b64encode(encode_png(image)).decode("ascii")


# ---------------------------------------------------------------------------------------
# Shared helpers


def _check_shape(shape: tuple[int, ...]) -> None:
    if len(shape) != 2:
        raise ImageDecodeError("corrupt_image", "the decoded image is not two-dimensional")
    h, w = int(shape[0]), int(shape[1])
    if min(h, w) < MIN_SIDE:
        raise ImageDecodeError("too_small", f"the image is smaller than {MIN_SIDE}x{MIN_SIDE} pixels")
    if max(h, w) / min(h, w) > MAX_ASPECT:
        raise ImageDecodeError(
            "bad_aspect_ratio", f"the image is more elongated than {MAX_ASPECT:g}:1 and cannot be a brain slice"
        )


def _check_pixels(width: int, height: int, n_bytes: int, compressed: bool) -> None:
    """Refuse a declared size above :data:`MAX_PIXELS` before any pixel is decoded."""
    pixels = int(width) * int(height)
    if width <= 0 or height <= 0:
        raise ImageDecodeError("corrupt_image", "the image declares an empty size")
    if pixels > MAX_PIXELS:
        if compressed and pixels > BOMB_RATIO * max(n_bytes, 1):
            raise ImageDecodeError(
                "decompression_bomb",
                f"the image declares more than {MAX_PIXELS:,} pixels in a tiny file (decompression bomb)",
            )
        raise ImageDecodeError("too_many_pixels", f"the image declares more than {MAX_PIXELS:,} pixels")


def window_to_uint8(
    arr: np.ndarray,
    center: float | None = None,
    width: float | None = None,
    percentiles: tuple[float, float] = WINDOW_PERCENTILES,
) -> np.ndarray:
    """Map any numeric 2-D array to ``uint8``: an explicit window, else a percentile window.

    A constant image maps to zeros (nothing to show) rather than dividing by zero.
    """
    a = np.asarray(arr, dtype=np.float64)
    a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    if center is not None and width is not None and width > 0:
        lo, hi = center - width / 2.0, center + width / 2.0
    else:
        lo, hi = (float(v) for v in np.percentile(a, percentiles))
        if hi <= lo:  # percentiles collapsed (mostly-constant image): fall back to min-max
            lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    out = (a - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _bounded_inflate(data: bytes, wbits: int, limit: int) -> tuple[bytes, bool]:
    """Inflate at most ``limit`` bytes; return (output, exhausted) where exhausted means more
    output was pending beyond the limit. Never allocates more than ``limit`` + one chunk."""
    d = zlib.decompressobj(wbits)
    out = d.decompress(data, limit)
    more = bool(d.unconsumed_tail) or (len(out) >= limit and not d.eof)
    if more and len(out) >= limit:
        # Peek one more byte to tell "exactly limit" from "over the limit".
        extra = d.decompress(d.unconsumed_tail, 1) if d.unconsumed_tail else d.flush(1)
        return out, bool(extra)
    return out, False


# ---------------------------------------------------------------------------------------
# PNG / JPEG through an allowlisted Pillow


def _decode_pillow(data: bytes, fmt: str) -> np.ndarray:
    from PIL import Image, ImageOps

    try:
        im = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError:
        raise ImageDecodeError(
            "decompression_bomb", "the image declares far too many pixels (decompression bomb)"
        ) from None
    except Exception as exc:  # noqa: BLE001
        raise ImageDecodeError("corrupt_image", f"not a readable {fmt} file ({type(exc).__name__})") from None
    with im:
        # Header-declared size, known before a single pixel is decoded.
        _check_pixels(im.width, im.height, len(data), compressed=True)
        _check_shape((im.height, im.width))  # too small / too elongated: refuse before decoding
        n_frames = getattr(im, "n_frames", 1)
        if fmt == "PNG" and n_frames > 1:
            raise ImageDecodeError("multi_frame", "animated PNGs are not accepted; upload a single slice")
        # MPO (multi-picture JPEG): frame 0, the primary picture, is what Image.open selects.
        try:
            im.load()
        except Image.DecompressionBombError:
            raise ImageDecodeError("decompression_bomb", "the image expands to far too many pixels") from None
        except Exception as exc:  # noqa: BLE001 - truncated / corrupt stream
            raise ImageDecodeError("corrupt_image", f"the {fmt} data is truncated or corrupt ({type(exc).__name__})") from None
        if fmt == "JPEG":
            try:
                transposed = ImageOps.exif_transpose(im)
            except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the picture
                transposed = None
            if transposed is not None:
                im = transposed
        return _pil_to_gray(im)


def _pil_to_gray(im) -> np.ndarray:  # noqa: ANN001 - PIL.Image.Image
    from PIL import Image

    mode = im.mode
    if mode == "L":
        return np.asarray(im, dtype=np.uint8)
    if mode in ("1", "P", "PA", "RGB", "RGBA", "RGBa", "LA", "La", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode == "P" and "transparency" in im.info)
        if has_alpha:
            rgba = im.convert("RGBA")
            black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            return np.asarray(Image.alpha_composite(black, rgba).convert("L"), dtype=np.uint8)
        if mode in ("1", "P", "L"):
            return np.asarray(im.convert("L"), dtype=np.uint8)
        return np.asarray(im.convert("RGB").convert("L"), dtype=np.uint8)
    if mode.startswith("I;16") or mode in ("I", "F"):
        # 16-bit / 32-bit grayscale (e.g. an MRI slice exported at full depth).
        arr = np.asarray(im)
        if arr.ndim != 2:
            arr = np.asarray(im.convert("I"))
        return window_to_uint8(arr.astype(np.float64))
    raise ImageDecodeError("unsupported_format", "unsupported pixel mode in the image")


# ---------------------------------------------------------------------------------------
# DICOM


def _dicom_dataset(data: bytes, stop_before_pixels: bool):  # noqa: ANN202 - pydicom.FileDataset
    """Parse a DICOM file from bytes; a deflated dataset is inflated with a bound first."""
    import pydicom
    from pydicom.filereader import _read_file_meta_info
    from pydicom.filewriter import write_file_meta_info

    # pydicom's value validation warns *and logs* offending header values, which may be
    # personal data: never validate while reading untrusted uploads (this process only
    # reads DICOM to get pixels out).
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    fp = io.BytesIO(data)
    fp.seek(132)
    meta = _read_file_meta_info(fp)
    ts = str(getattr(meta, "TransferSyntaxUID", "") or "")
    if ts == _DEFLATED_TS:
        # pydicom would inflate the rest without any bound: do it ourselves, bounded.
        body, exhausted = _bounded_inflate(data[fp.tell():], -zlib.MAX_WBITS, MAX_DICOM_INFLATED)
        if exhausted:
            raise ImageDecodeError(
                "decompression_bomb", "the deflated DICOM dataset expands beyond the size limit"
            )
        meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        buf = io.BytesIO()
        buf.write(data[:132])
        write_file_meta_info(buf, meta, enforce_standard=False)
        buf.write(body)
        fp = io.BytesIO(buf.getvalue())
    else:
        fp.seek(0)
    return pydicom.dcmread(fp, stop_before_pixels=stop_before_pixels)


def _ds_int(ds, keyword: str, default: int | None = None) -> int | None:  # noqa: ANN001
    value = getattr(ds, keyword, None)
    if value is None or value == "":
        return default
    return int(value)


def _ds_first_float(ds, keyword: str) -> float | None:  # noqa: ANN001
    value = getattr(ds, keyword, None)
    if value is None or value == "":
        return None
    try:
        if hasattr(value, "__len__") and not isinstance(value, (str, bytes)):
            value = value[0]
        return float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _decode_dicom(data: bytes) -> np.ndarray:
    try:
        header = _dicom_dataset(data, stop_before_pixels=True)
    except ImageDecodeError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ImageDecodeError("bad_dicom", f"the DICOM header could not be read ({type(exc).__name__})") from None

    ts = str(getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", "") or "")
    if ts and ts not in _DICOM_TRANSFER_SYNTAXES:
        raise ImageDecodeError(
            "unsupported_dicom_compression",
            "this DICOM pixel compression is not supported; send uncompressed, RLE or baseline JPEG DICOM",
            415,
        )
    try:
        rows = _ds_int(header, "Rows")
        cols = _ds_int(header, "Columns")
        spp = _ds_int(header, "SamplesPerPixel", 1) or 1
        frames = _ds_int(header, "NumberOfFrames", 1) or 1
        bits = _ds_int(header, "BitsAllocated", 16) or 16
    except (TypeError, ValueError):
        raise ImageDecodeError("bad_dicom", "the DICOM image dimensions are not numbers") from None
    if rows is None or cols is None:
        raise ImageDecodeError("bad_dicom", "the DICOM file holds no image (no Rows/Columns)")
    if rows <= 0 or cols <= 0 or spp not in (1, 3) or frames <= 0 or bits not in (1, 8, 16, 32, 64):
        raise ImageDecodeError("bad_dicom", "the DICOM image attributes are invalid")
    _check_pixels(cols, rows, len(data), compressed=False)
    total_bytes = rows * cols * spp * frames * max(bits, 8) // 8
    if rows * cols * frames > MAX_VOXELS or total_bytes > MAX_VOLUME_BYTES:
        raise ImageDecodeError("too_many_pixels", "the DICOM pixel data declares more than the size limit")

    try:
        ds = _dicom_dataset(data, stop_before_pixels=False)
        if "PixelData" not in ds:
            raise ImageDecodeError("bad_dicom", "the DICOM file holds no pixel data")
        from pydicom.pixels import pixel_array

        index = frames // 2 if frames > 1 else None  # central frame of a multi-frame image
        arr = pixel_array(ds, index=index)
    except ImageDecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated data, unsupported compression, ...
        raise ImageDecodeError("bad_dicom", f"the DICOM pixel data could not be decoded ({type(exc).__name__})") from None

    arr = np.asarray(arr)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").strip()
    if arr.ndim == 3 and spp == 3:
        rgb = arr.astype(np.float64)
        if photometric.startswith("YBR"):
            gray = rgb[..., 0]  # the Y channel is luminance already
        else:
            gray = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
        return window_to_uint8(gray, 127.5, 255.0) if bits == 8 else window_to_uint8(gray)
    if arr.ndim != 2:
        raise ImageDecodeError("bad_dicom", "the DICOM pixel data is not a 2-D grayscale image")
    if photometric == "PALETTE COLOR":
        raise ImageDecodeError("bad_dicom", "palette-colour DICOM images are not supported")

    values = arr.astype(np.float64)
    slope = _ds_first_float(ds, "RescaleSlope")
    intercept = _ds_first_float(ds, "RescaleIntercept")
    if slope is not None and np.isfinite(slope) and slope != 0:
        values = values * slope
    if intercept is not None and np.isfinite(intercept):
        values = values + intercept
    center = _ds_first_float(ds, "WindowCenter")
    width = _ds_first_float(ds, "WindowWidth")
    if center is None or width is None or not np.isfinite(center) or not np.isfinite(width) or width <= 0:
        center = width = None
    out = window_to_uint8(values, center, width)
    if photometric == "MONOCHROME1":  # minimum value is white in MONOCHROME1
        out = 255 - out
    return out


# Attributes blanked by deidentify_dicom (a subset of the DICOM PS3.15 basic profile that
# covers the direct identifiers of patient, institution and staff).
_DEID_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "PatientSex", "PatientAge",
    "PatientAddress", "PatientTelephoneNumbers", "PatientMotherBirthName", "OtherPatientIDs",
    "OtherPatientNames", "OtherPatientIDsSequence", "PatientBirthName", "MilitaryRank",
    "EthnicGroup", "PatientComments", "PatientWeight", "PatientSize",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
    "ReferringPhysicianName", "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers",
    "PerformingPhysicianName", "NameOfPhysiciansReadingStudy", "OperatorsName",
    "PhysiciansOfRecord", "RequestingPhysician", "AccessionNumber", "StudyID", "StationName",
    "DeviceSerialNumber", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate",
    "StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime", "StudyDescription",
    "SeriesDescription", "RequestAttributesSequence", "ImageComments",
)


def deidentify_dicom(data: bytes) -> bytes:
    """Return a copy of a DICOM file with direct identifiers blanked and private tags removed.

    Use it wherever a DICOM file must be stored as a file; the decoder itself never returns
    header values, so ordinary requests need no such step.
    """
    if sniff_format(data) != "dicom":
        raise ImageDecodeError("unsupported_format", "not a DICOM file with the DICM preamble")
    try:
        ds = _dicom_dataset(data, stop_before_pixels=False)
        for keyword in _DEID_KEYWORDS:
            if keyword in ds:
                element = ds.data_element(keyword)
                if element.VR == "SQ":
                    delattr(ds, keyword)
                else:
                    element.value = ""
        ds.remove_private_tags()
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "alzprog basic blanking"
        # Re-encode without deflate: the decoder bound the expansion already.
        ds.file_meta.TransferSyntaxUID = ds.file_meta.TransferSyntaxUID if str(
            ds.file_meta.TransferSyntaxUID) != _DEFLATED_TS else "1.2.840.10008.1.2.1"
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()
    except ImageDecodeError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ImageDecodeError("bad_dicom", f"the DICOM file could not be de-identified ({type(exc).__name__})") from None


# ---------------------------------------------------------------------------------------
# NIfTI-1


def _nifti_header_info(header: bytes) -> tuple[str, tuple[int, ...], int, int, int]:
    """Check a raw NIfTI-1 header; return (endian, dims, datatype, bitpix, vox_offset)."""
    endian = _nifti_endian(header)
    if endian is None or len(header) < NIFTI1_HEADER_SIZE:
        raise ImageDecodeError("bad_nifti", "not a NIfTI-1 header")
    magic = header[344:348]
    if magic != b"n+1\x00":
        # "ni1" means the pixels live in a separate .img file that an upload cannot carry.
        raise ImageDecodeError("bad_nifti", "only single-file NIfTI-1 (.nii / .nii.gz) is supported")
    dim = struct.unpack(endian + "8h", header[40:56])
    datatype, bitpix = struct.unpack(endian + "2h", header[70:74])
    vox_offset = struct.unpack(endian + "f", header[108:112])[0]
    ndim = dim[0]
    if not 2 <= ndim <= 7:
        raise ImageDecodeError("bad_nifti", "the NIfTI header declares an invalid number of dimensions")
    dims = tuple(int(d) for d in dim[1 : ndim + 1])
    if any(d <= 0 for d in dims):
        raise ImageDecodeError("bad_nifti", "the NIfTI header declares an empty dimension")
    if datatype not in _NIFTI_DTYPES or _NIFTI_DTYPES[datatype] != bitpix:
        raise ImageDecodeError("bad_nifti", "unsupported NIfTI data type (complex, RGB or inconsistent)")
    if not np.isfinite(vox_offset) or vox_offset < NIFTI1_HEADER_SIZE or vox_offset > 1 << 20:
        raise ImageDecodeError("bad_nifti", "the NIfTI header declares an invalid data offset")
    # A slice and the volume we may have to hold must fit the limits.
    if dims[0] * (dims[1] if len(dims) > 1 else 1) > MAX_PIXELS:
        raise ImageDecodeError("too_many_pixels", f"a NIfTI slice declares more than {MAX_PIXELS:,} pixels")
    voxels = int(np.prod(dims[:3], dtype=np.int64))  # only the first volume of 4-D data is read
    if voxels > MAX_VOXELS or voxels * bitpix // 8 > MAX_VOLUME_BYTES:
        raise ImageDecodeError("too_many_pixels", "the NIfTI volume declares more voxels than the size limit")
    return endian, dims, datatype, bitpix, int(vox_offset)


def _gunzip_nifti(data: bytes) -> bytes:
    """Inflate a ``.nii.gz`` upload, never more than its header says the first volume needs."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        head = d.decompress(data, NIFTI1_HEADER_SIZE)
        while len(head) < NIFTI1_HEADER_SIZE and d.unconsumed_tail:
            head += d.decompress(d.unconsumed_tail, NIFTI1_HEADER_SIZE - len(head))
    except zlib.error:
        raise ImageDecodeError("corrupt_image", "the gzip stream is corrupt") from None
    if len(head) < NIFTI1_HEADER_SIZE or _nifti_endian(head) is None:
        raise ImageDecodeError("unsupported_format", "a gzip file that does not hold a NIfTI-1 image")
    _, dims, _, bitpix, vox_offset = _nifti_header_info(head)
    needed = vox_offset + int(np.prod(dims[:3], dtype=np.int64)) * bitpix // 8
    chunks = [head]
    have = len(head)
    tail = d.unconsumed_tail
    try:
        # Inflate in bounded steps up to what the header needs; anything the stream holds
        # beyond that (a bomb's payload, further volumes) is never inflated.
        while have < needed and not d.eof:
            step = min(needed - have, 16 * 1024 * 1024)
            chunk = d.decompress(tail, step) if tail else d.decompress(b"", step)
            tail = d.unconsumed_tail
            if not chunk:
                if not tail:
                    break
                continue
            chunks.append(chunk)
            have += len(chunk)
    except zlib.error:
        raise ImageDecodeError("corrupt_image", "the gzip stream is corrupt") from None
    if have < needed:
        raise ImageDecodeError("bad_nifti", "the NIfTI file is shorter than its header declares")
    return b"".join(chunks)


def _decode_nifti(data: bytes, nifti_slice: int | None) -> np.ndarray:
    import nibabel as nib

    endian, dims, _, bitpix, vox_offset = _nifti_header_info(data[:NIFTI1_HEADER_SIZE])
    needed = vox_offset + int(np.prod(dims[:3], dtype=np.int64)) * bitpix // 8
    if len(data) < needed:
        raise ImageDecodeError("bad_nifti", "the NIfTI file is shorter than its header declares")
    try:
        fh = nib.FileHolder(fileobj=io.BytesIO(data))
        img = nib.Nifti1Image.from_file_map({"header": fh, "image": fh})
        if len(img.shape) > 3:
            img = img.slicer[(slice(None),) * 3 + (0,) * (len(img.shape) - 3)]
        if len(img.shape) == 2:
            return window_to_uint8(np.asarray(img.dataobj, dtype=np.float64))
        # Find the source axis closest to inferior->superior and read only that one slice
        # (no reorientation of the whole volume in memory).
        ornt = nib.io_orientation(img.affine)  # per source axis: (RAS axis, +1/-1)
        src_axis = {int(ax): i for i, (ax, _) in enumerate(ornt)}
        s_axis = src_axis[2]
        depth = img.shape[s_axis]
        k = depth // 2 if nifti_slice is None else int(nifti_slice)
        if not 0 <= k < depth:
            raise ImageDecodeError("bad_slice_index", f"nifti_slice must be between 0 and {depth - 1}")
        k_src = k if ornt[s_axis, 1] > 0 else depth - 1 - k
        index: list = [slice(None)] * 3
        index[s_axis] = k_src
        plane = np.asarray(img.dataobj[tuple(index)], dtype=np.float64)
        # Remaining source axes, in order; make them (R, A) with increasing coordinates.
        rest = [i for i in range(3) if i != s_axis]
        if int(ornt[rest[0], 0]) != 0:  # first remaining axis is A: swap to (R, A)
            plane = plane.T
            rest = rest[::-1]
        if ornt[rest[0], 1] < 0:
            plane = plane[::-1, :]
        if ornt[rest[1], 1] < 0:
            plane = plane[:, ::-1]
        axial = plane  # rows: left->right, columns: posterior->anterior
    except ImageDecodeError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ImageDecodeError("bad_nifti", f"the NIfTI data could not be read ({type(exc).__name__})") from None
    # Lay the slice out like the OASIS slices the models are trained on: head horizontal,
    # face (anterior) to the right, patient's right at the top (the radiological axial view
    # turned 90 degrees clockwise).
    return window_to_uint8(axial[::-1, :])
