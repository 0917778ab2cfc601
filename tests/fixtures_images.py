"""Generate real image files of every accepted and hostile format, in memory, for tests.

Each helper returns the exact bytes a user could upload. Nothing here is a mock: PNG/JPEG
come from Pillow, DICOM from pydicom, NIfTI from nibabel, and the hostile files are
crafted byte by byte where a library would refuse to write them (a 20000x20000 PNG, a DICOM
header with huge dimensions, a gzip bomb).
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib

import numpy as np
from PIL import Image

# ---------------------------------------------------------------------------------------
# Pixel content


def head_phantom(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """A small uint8 'head': bright scalp ring, dark skull gap, mid-gray brain, dark background."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    cy, cx = (h - 1) / 2, (w - 1) / 2
    r = np.hypot((y - cy) / (0.45 * h), (x - cx) / (0.45 * w))
    img = np.zeros((h, w), dtype=np.float64)
    img[r < 1.0] = 200  # scalp
    img[r < 0.9] = 20  # skull
    img[r < 0.82] = 90  # brain
    img[(r < 0.2)] = 30  # a ventricle
    img += rng.normal(0, 3, size=img.shape) * (r < 1.0)
    return np.clip(img, 0, 255).astype(np.uint8)


def gradient(h: int = 64, w: int = 80) -> np.ndarray:
    """A uint8 gradient with a distinct value per corner (to check orientation)."""
    y, x = np.mgrid[0:h, 0:w]
    return ((y * 3 + x) % 256).astype(np.uint8)


# ---------------------------------------------------------------------------------------
# PNG / JPEG (and formats we refuse) through Pillow


def pil_bytes(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def png_bytes(arr: np.ndarray) -> bytes:
    return pil_bytes(Image.fromarray(arr), "PNG")


def png16_bytes(arr16: np.ndarray) -> bytes:
    """16-bit grayscale PNG of a uint16 array."""
    im = Image.fromarray(arr16.astype(np.uint16))
    assert im.mode.startswith("I;16"), im.mode
    return pil_bytes(im, "PNG")


def rgba_png_bytes(arr: np.ndarray, alpha: np.ndarray) -> bytes:
    rgba = np.stack([arr, arr, arr, alpha], axis=-1).astype(np.uint8)
    return pil_bytes(Image.fromarray(rgba, mode="RGBA"), "PNG")


def rgb_png_bytes(rgb: np.ndarray) -> bytes:
    return pil_bytes(Image.fromarray(rgb.astype(np.uint8), mode="RGB"), "PNG")


def jpeg_bytes(arr: np.ndarray, quality: int = 95, **kwargs) -> bytes:
    return pil_bytes(Image.fromarray(arr), "JPEG", quality=quality, **kwargs)


def cmyk_jpeg_bytes(arr: np.ndarray) -> bytes:
    rgb = Image.fromarray(np.stack([arr] * 3, axis=-1), mode="RGB")
    return pil_bytes(rgb.convert("CMYK"), "JPEG", quality=95)


def exif_rotated_jpeg_bytes(arr: np.ndarray, orientation: int = 6) -> bytes:
    """A JPEG whose stored pixels are ``arr`` with an EXIF Orientation tag."""
    im = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return pil_bytes(im, "JPEG", quality=95, exif=exif.tobytes())


def apng_bytes(frames: list[np.ndarray]) -> bytes:
    ims = [Image.fromarray(f) for f in frames]
    return pil_bytes(ims[0], "PNG", save_all=True, append_images=ims[1:], duration=100)


def gif_bytes(arr: np.ndarray) -> bytes:
    return pil_bytes(Image.fromarray(arr), "GIF")


def bmp_bytes(arr: np.ndarray) -> bytes:
    return pil_bytes(Image.fromarray(arr), "BMP")


def tiff_bytes(arr: np.ndarray) -> bytes:
    return pil_bytes(Image.fromarray(arr), "TIFF")


def webp_bytes(arr: np.ndarray) -> bytes:
    return pil_bytes(Image.fromarray(arr), "WEBP")


EPS_BYTES = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n"
    b"%%EndComments\n/Times-Roman findfont 12 scalefont setfont 10 10 moveto (x) show\n"
    b"(%pipe%id) (w) file\nshowpage\n%%EOF\n"
)
ELF_BYTES = b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 8 + struct.pack("<HHI", 2, 0x3E, 1) + b"\x00" * 200
TEXT_BYTES = b"<?php system($_GET['c']); ?>\n" * 20
HTML_TRAILER = b"<html><script>alert(document.cookie)</script></html>"
ZIP_TRAILER = b"PK\x03\x04" + b"\x14\x00" + b"\x00" * 24 + b"evil.sh" + b"#!/bin/sh\nrm -rf /\n"


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def bomb_png_bytes(width: int = 20000, height: int = 20000) -> bytes:
    """A valid 1-bit grayscale PNG of width x height zeros: ~50 kB on disk, 400 Mpx decoded."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    parts = []
    block = row * 256
    for _ in range(height // 256):
        parts.append(comp.compress(block))
    parts.append(comp.compress(row * (height % 256)))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", b"".join(parts)) + _png_chunk(b"IEND", b"")


def png_with_dims(width: int, height: int) -> bytes:
    """A PNG header declaring width x height 8-bit gray with only a tiny (invalid) IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b"")
    )


# ---------------------------------------------------------------------------------------
# DICOM through pydicom

PHI = {
    "PatientName": "Doe^Jane",
    "PatientID": "SECRET-ID-4711",
    "PatientBirthDate": "19400101",
    "InstitutionName": "Hospital of Secrets",
    "ReferringPhysicianName": "House^Gregory",
}


def dicom_bytes(
    pixels: np.ndarray,
    *,
    deflated: bool = False,
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple[float, float] | None = None,
    photometric: str = "MONOCHROME2",
    rows: int | None = None,
    columns: int | None = None,
    frames: int | None = None,
    pixel_bytes: bytes | None = None,
    private_tag: bool = True,
) -> bytes:
    """A DICOM Part-10 file (MR image) with ``pixels`` (uint16 HxW or FxHxW) and PHI in the header.

    ``rows`` / ``columns`` / ``frames`` / ``pixel_bytes`` override the honest values to craft
    hostile headers.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, MRImageStorage, generate_uid

    arr = np.asarray(pixels).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian if deflated else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    for k, v in PHI.items():
        setattr(ds, k, v)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    if arr.ndim == 3:
        ds.NumberOfFrames = frames or arr.shape[0]
    elif frames:
        ds.NumberOfFrames = frames
    ds.Rows = rows if rows is not None else arr.shape[-2]
    ds.Columns = columns if columns is not None else arr.shape[-1]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if private_tag:
        ds.add_new(0x00091010, "LO", "private secret")
        ds.add_new(0x00090010, "LO", "ACME")
    ds.PixelData = pixel_bytes if pixel_bytes is not None else arr.tobytes()
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def dicom_deflate_bomb(expanded: int = 100 * 1024 * 1024) -> bytes:
    """A deflated DICOM whose dataset inflates to ``expanded`` zero bytes (~100 kB on disk)."""
    from pydicom.filereader import _read_file_meta_info

    # Keep the file meta of an honest deflated file; replace its dataset by deflated zeros.
    deflated = dicom_bytes(np.zeros((32, 32), np.uint16), deflated=True)
    fp = io.BytesIO(deflated)
    fp.seek(132)
    _read_file_meta_info(fp)
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunk = b"\x00" * (8 * 1024 * 1024)
    parts = [comp.compress(chunk) for _ in range(expanded // len(chunk))]
    parts.append(comp.flush())
    return deflated[: fp.tell()] + b"".join(parts)


# ---------------------------------------------------------------------------------------
# NIfTI through nibabel


def nifti_bytes(vol: np.ndarray, affine: np.ndarray | None = None, big_endian: bool = False) -> bytes:
    import nibabel as nib

    img = nib.Nifti1Image(vol, np.eye(4) if affine is None else affine)
    if big_endian:
        hdr = img.header.as_byteswapped(">")
        img = nib.Nifti1Image(vol.astype(vol.dtype.newbyteorder(">")), img.affine, header=hdr)
    return img.to_bytes()


def nifti_gz_bytes(vol: np.ndarray, affine: np.ndarray | None = None) -> bytes:
    return gzip.compress(nifti_bytes(vol, affine), compresslevel=6)


def nifti_header_only(shape: tuple[int, ...], dtype=np.int16, payload: bytes = b"\x00" * 64) -> bytes:
    """A single-file NIfTI-1 header claiming ``shape`` followed by a tiny payload."""
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(dtype)
    hdr.set_data_shape(shape)
    hdr["vox_offset"] = 352
    hdr["magic"] = b"n+1"
    return hdr.binaryblock + b"\x00" * 4 + payload


def gzip_zero_bomb(expanded: int = 256 * 1024 * 1024) -> bytes:
    """gzip of ``expanded`` zero bytes (about 1 kB per MB)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b"\x00" * (16 * 1024 * 1024)
    parts = [comp.compress(chunk) for _ in range(expanded // len(chunk))]
    parts.append(comp.flush())
    return b"".join(parts)


def nifti_gz_with_bomb_tail(vol: np.ndarray, tail: int = 256 * 1024 * 1024) -> bytes:
    """An honest small .nii.gz whose gzip stream goes on with ``tail`` zero bytes."""
    raw = nifti_bytes(vol)
    comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [comp.compress(raw)]
    chunk = b"\x00" * (16 * 1024 * 1024)
    parts += [comp.compress(chunk) for _ in range(tail // len(chunk))]
    parts.append(comp.flush())
    return b"".join(parts)
