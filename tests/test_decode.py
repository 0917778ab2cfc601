"""decode.py against real files of every accepted format and every hostile case we know.

All files are generated here (tests/fixtures_images.py) with the real writers (Pillow,
pydicom, nibabel) or crafted byte by byte; the decoder must either return a 2-D uint8 slice
or raise ImageDecodeError with the right code, never anything else.
"""

from __future__ import annotations

import gzip
import tracemalloc
from typing import Callable

import numpy as np
import pytest

import fixtures_images as fx
from alzprog.decode import (
    MAX_PIXELS,
    ImageDecodeError,
    decode_slice,
    deidentify_dicom,
    encode_png,
    read_slice,
    sniff_format,
    window_to_uint8,
)


def expect_error(data: bytes, code: str, **kwargs) -> ImageDecodeError:
    with pytest.raises(ImageDecodeError) as info:
        decode_slice(data, **kwargs)
    err = info.value
    assert err.code == code, f"expected {code}, got {err.code}: {err.message}"
    assert 400 <= err.status < 500
    assert isinstance(err, ValueError)
    return err


# ---------------------------------------------------------------------------------------
# Accepted formats


def test_png_8bit_roundtrip_exact():
    arr = fx.head_phantom()
    out = decode_slice(fx.png_bytes(arr))
    assert out.dtype == np.uint8 and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


def test_png_16bit_scaled_to_8bit_monotonically():
    arr16 = (fx.gradient().astype(np.uint16) * 16)  # 0..4080, MRI-like depth
    out = decode_slice(fx.png16_bytes(arr16))
    assert out.dtype == np.uint8 and out.shape == arr16.shape
    assert out.min() == 0 and out.max() == 255
    # order preserved: sorting by the 16-bit value sorts the 8-bit value
    order = np.argsort(arr16.ravel(), kind="stable")
    assert np.all(np.diff(out.ravel()[order].astype(int)) >= 0)


def test_rgba_composited_on_black():
    arr = np.full((64, 64), 200, np.uint8)
    alpha = np.zeros((64, 64), np.uint8)
    alpha[:, 32:] = 255
    out = decode_slice(fx.rgba_png_bytes(arr, alpha))
    assert np.all(out[:, :32] == 0)
    assert np.all(out[:, 32:] == 200)


def test_rgb_to_gray_by_luminance():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    out = decode_slice(fx.rgb_png_bytes(rgb)).astype(float)
    expected = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    assert np.abs(out - expected).max() <= 1.0


def test_jpeg_gray():
    arr = fx.head_phantom()
    out = decode_slice(fx.jpeg_bytes(arr))
    assert out.shape == arr.shape
    assert np.abs(out.astype(int) - arr).mean() < 3


def test_cmyk_jpeg_not_inverted():
    arr = fx.head_phantom()
    data = fx.cmyk_jpeg_bytes(arr)
    from PIL import Image
    import io

    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = decode_slice(data)
    assert out.shape == arr.shape
    assert np.abs(out.astype(int) - arr).mean() < 6


def test_exif_rotated_jpeg_is_turned_upright():
    arr = np.zeros((64, 96), np.uint8)
    arr[:16, :16] = 255  # bright block top-left of the stored pixels
    out = decode_slice(fx.exif_rotated_jpeg_bytes(arr, orientation=6))
    # Orientation 6: the stored image must be rotated 90 degrees clockwise to display.
    assert out.shape == (96, 64)
    assert out[:16, -16:].mean() > 200 and out[-16:, :16].mean() < 30


def test_mpo_jpeg_yields_primary_picture():
    import io

    from PIL import Image

    first, second = fx.head_phantom(), 255 - fx.head_phantom()
    buf = io.BytesIO()
    Image.fromarray(first).save(buf, "MPO", save_all=True, append_images=[Image.fromarray(second)], quality=95)
    out = decode_slice(buf.getvalue())
    assert np.abs(out.astype(int) - first).mean() < 4
    assert np.abs(out.astype(int) - second).mean() > 50


def test_palette_and_la_pngs():
    from PIL import Image

    arr = fx.head_phantom()
    pal = Image.fromarray(arr).convert("P")
    out = decode_slice(fx.pil_bytes(pal, "PNG"))
    assert np.abs(out.astype(int) - arr).mean() < 3
    la = Image.merge("LA", [Image.fromarray(arr), Image.fromarray(np.full_like(arr, 255))])
    np.testing.assert_array_equal(decode_slice(fx.pil_bytes(la, "PNG")), arr)


def test_animated_png_is_refused():
    frames = [fx.head_phantom(seed=i) for i in range(3)]
    expect_error(fx.apng_bytes(frames), "multi_frame")


def test_single_frame_apng_style_png_is_accepted():
    out = decode_slice(fx.apng_bytes([fx.head_phantom()]))
    assert out.shape == (96, 128)


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
@pytest.mark.parametrize("trailer", [fx.ZIP_TRAILER, fx.HTML_TRAILER])
def test_polyglot_trailer_is_ignored_and_never_returned(fmt, trailer):
    arr = fx.head_phantom()
    clean = fx.png_bytes(arr) if fmt == "png" else fx.jpeg_bytes(arr)
    out_clean = decode_slice(clean)
    out = decode_slice(clean + trailer)
    np.testing.assert_array_equal(out, out_clean)
    reencoded = encode_png(out)
    assert trailer[:12] not in reencoded and b"script" not in reencoded


def test_encode_png_has_no_metadata_and_roundtrips():
    arr = fx.head_phantom()
    png = encode_png(arr)
    assert b"tEXt" not in png and b"iTXt" not in png and b"zTXt" not in png and b"eXIf" not in png
    np.testing.assert_array_equal(decode_slice(png), arr)


def test_read_slice_real_oasis_file(oasis_sample_files):
    out = read_slice(oasis_sample_files[0])
    assert out.dtype == np.uint8 and out.shape == (248, 496)


def test_read_slice_missing_file_or_directory(tmp_path):
    for path in (tmp_path / "nope.png", tmp_path):
        with pytest.raises(ImageDecodeError) as info:
            read_slice(path)
        assert info.value.code == "unreadable_file"


# ---------------------------------------------------------------------------------------
# DICOM


def test_dicom_rescale_and_window_applied():
    raw = np.tile(np.arange(0, 640, 10, dtype=np.uint16), (64, 1))  # 0..630
    data = fx.dicom_bytes(raw, slope=2.0, intercept=-100.0, window=(300.0, 400.0))
    assert sniff_format(data) == "dicom"
    out = decode_slice(data)
    values = raw.astype(float) * 2 - 100
    expected = window_to_uint8(values, 300.0, 400.0)
    np.testing.assert_array_equal(out, expected)
    assert out[0, 0] == 0 and out[0, -1] == 255  # below / above the window


def test_dicom_without_window_uses_percentiles():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 3000, size=(64, 64)).astype(np.uint16)
    raw[0, 0] = 60000  # a hot pixel must not squash the contrast
    out = decode_slice(fx.dicom_bytes(raw))
    assert out.max() == 255 and out.min() == 0
    assert 100 < out.mean() < 155


def test_dicom_monochrome1_inverted():
    raw = np.tile(np.arange(64, dtype=np.uint16), (64, 1))
    m2 = decode_slice(fx.dicom_bytes(raw, window=(32, 64)))
    m1 = decode_slice(fx.dicom_bytes(raw, window=(32, 64), photometric="MONOCHROME1"))
    np.testing.assert_array_equal(m1, 255 - m2)


def test_dicom_multiframe_central_frame():
    frames = np.stack([np.full((40, 40), 100 * (i + 1), np.uint16) for i in range(5)])
    frames[:, :20, :] = 0  # give each frame contrast
    out = decode_slice(fx.dicom_bytes(frames, window=(300, 20)))
    # window 290..310: frame 2 (300) -> mid-gray; frames 1 (200) or 3 (400) would be 0 / 255
    assert out[30, 30] == 128 and out[5, 5] == 0


def test_rle_compressed_dicom_equals_plain():
    import io

    import pydicom
    from pydicom.uid import RLELossless

    raw = fx.head_phantom().astype(np.uint16) * 10
    ds = pydicom.dcmread(io.BytesIO(fx.dicom_bytes(raw)))
    ds.compress(RLELossless)
    buf = io.BytesIO()
    ds.save_as(buf)
    np.testing.assert_array_equal(decode_slice(buf.getvalue()), decode_slice(fx.dicom_bytes(raw)))


def test_dicom_with_unsupported_compression_refused():
    import io

    import pydicom
    from pydicom.uid import JPEG2000Lossless

    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(io.BytesIO(fx.dicom_bytes(fx.head_phantom().astype(np.uint16))))
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 64])  # a J2K codestream start
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False)
    err = expect_error(buf.getvalue(), "unsupported_dicom_compression")
    assert err.status == 415


def test_deflated_dicom_equals_plain():
    raw = (fx.head_phantom().astype(np.uint16) * 10)
    plain = decode_slice(fx.dicom_bytes(raw))
    deflated_bytes = fx.dicom_bytes(raw, deflated=True)
    assert len(deflated_bytes) < len(fx.dicom_bytes(raw))
    np.testing.assert_array_equal(decode_slice(deflated_bytes), plain)


def test_dicom_phi_never_in_errors_and_deidentify_blanks_it():
    raw = fx.head_phantom().astype(np.uint16)
    data = fx.dicom_bytes(raw)
    for value in fx.PHI.values():
        assert value.encode() in data
    clean = deidentify_dicom(data)
    for value in fx.PHI.values():
        assert value.encode() not in clean
    assert b"private secret" not in clean
    np.testing.assert_array_equal(decode_slice(clean), decode_slice(data))
    # A broken DICOM with PHI: the error message must not quote any header value.
    broken = fx.dicom_bytes(raw, pixel_bytes=b"\x00" * 10)
    err = expect_error(broken, "bad_dicom")
    for value in fx.PHI.values():
        assert value not in str(err) and value not in err.message


def test_deidentify_deflated_dicom():
    raw = fx.head_phantom().astype(np.uint16)
    clean = deidentify_dicom(fx.dicom_bytes(raw, deflated=True))
    assert b"Doe^Jane" not in clean
    np.testing.assert_array_equal(decode_slice(clean), decode_slice(fx.dicom_bytes(raw)))


def peak_bytes(fn: Callable[[], object]) -> int:
    """Peak memory (bytes, Python and NumPy allocations) while ``fn`` runs: the work it did."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_dicom_huge_dimensions_tiny_data():
    data = fx.dicom_bytes(np.zeros((4, 4), np.uint16), rows=60000, columns=60000)
    # Refused from the header: nothing near the declared 60000 x 60000 x 2 bytes is allocated.
    assert peak_bytes(lambda: expect_error(data, "too_many_pixels")) < 16 * 2**20


def test_dicom_huge_frame_count():
    data = fx.dicom_bytes(np.zeros((512, 512), np.uint16)[:64, :64], rows=2048, columns=2048, frames=5000)
    expect_error(data, "too_many_pixels")


def test_dicom_deflate_bomb():
    data = fx.dicom_deflate_bomb()
    assert len(data) < 1_000_000
    expect_error(data, "decompression_bomb")


def test_dicom_without_preamble_is_never_force_read():
    data = fx.dicom_bytes(fx.head_phantom().astype(np.uint16))
    expect_error(data[128:], "unsupported_format")  # "DICM" at 0, not at 128
    expect_error(data[132:], "unsupported_format")  # bare dataset


# ---------------------------------------------------------------------------------------
# NIfTI


def _marked_volume() -> np.ndarray:
    """40 (L->R) x 50 (P->A) x 30 (I->S) volume; a bright block right-anterior at z=15."""
    vol = np.zeros((40, 50, 30), np.int16)
    vol[5:35, 5:45, :] = 100
    vol[30:36, 40:46, 15] = 1000  # right (high x), anterior (high y)
    vol[:, :, 10] = 7  # a distinct other slice
    return vol


def test_nifti_central_axial_slice_oriented_like_oasis():
    out = decode_slice(fx.nifti_bytes(_marked_volume()))
    # rows: patient's right at the top; columns: face (anterior) to the right
    assert out.shape == (40, 50)
    assert out[:10, -10:].max() == 255  # block at top-right
    assert out[-10:, :10].max() < 255


def test_nifti_orientation_follows_affine():
    vol = _marked_volume()
    # Store the same anatomy as LPS-ordered voxels: flip x and y, affine says so.
    lps = vol[::-1, ::-1, :].copy()
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    np.testing.assert_array_equal(decode_slice(fx.nifti_bytes(lps, affine)), decode_slice(fx.nifti_bytes(vol)))
    # Axes permuted: voxels stored (z, y, x) with an affine mapping them back.
    zyx = np.transpose(vol, (2, 1, 0)).copy()
    perm = np.zeros((4, 4))
    perm[0, 2] = perm[1, 1] = perm[2, 0] = perm[3, 3] = 1.0
    np.testing.assert_array_equal(decode_slice(fx.nifti_bytes(zyx, perm)), decode_slice(fx.nifti_bytes(vol)))


def test_nifti_gz_equals_nii_and_slice_selection():
    vol = _marked_volume().astype(np.float32)
    nii = fx.nifti_bytes(vol)
    gz = fx.nifti_gz_bytes(vol)
    assert sniff_format(gz) == "gzip"
    np.testing.assert_array_equal(decode_slice(gz), decode_slice(nii))
    other = decode_slice(nii, nifti_slice=10)
    assert not np.array_equal(other, decode_slice(nii))
    expect_error(nii, "bad_slice_index", nifti_slice=30)
    expect_error(nii, "bad_slice_index", nifti_slice=-1)


def test_nifti_big_endian():
    vol = _marked_volume()
    data = fx.nifti_bytes(vol, big_endian=True)
    assert data[:4] == (348).to_bytes(4, "big")
    np.testing.assert_array_equal(decode_slice(data), decode_slice(fx.nifti_bytes(vol)))


def test_nifti_4d_takes_first_volume():
    vol = _marked_volume()
    four = np.stack([vol, np.zeros_like(vol)], axis=-1)
    np.testing.assert_array_equal(decode_slice(fx.nifti_bytes(four)), decode_slice(fx.nifti_bytes(vol)))


def test_nifti2_and_pair_headers_refused():
    import nibabel as nib

    nifti2 = nib.Nifti2Image(_marked_volume(), np.eye(4)).to_bytes()
    expect_error(nifti2, "unsupported_format")
    pair = bytearray(fx.nifti_bytes(_marked_volume()))
    pair[344:348] = b"ni1\x00"  # header of a .hdr/.img pair: the pixels are elsewhere
    expect_error(bytes(pair), "bad_nifti")


def test_nifti_header_claiming_huge_dims():
    expect_error(fx.nifti_header_only((4000, 4000, 4000)), "too_many_pixels")
    expect_error(fx.nifti_header_only((30000, 30000, 1)), "too_many_pixels")
    expect_error(gzip.compress(fx.nifti_header_only((4000, 4000, 4000))), "too_many_pixels")


def test_nifti_truncated():
    expect_error(fx.nifti_header_only((64, 64, 64)), "bad_nifti")
    data = fx.nifti_gz_bytes(_marked_volume())
    expect_error(data[: len(data) // 2], "bad_nifti")


def test_gzip_bomb_without_nifti_is_refused_after_the_header():
    data = fx.gzip_zero_bomb()
    # Only the bytes that could hold a NIfTI header are inflated, not the bomb.
    assert peak_bytes(lambda: expect_error(data, "unsupported_format")) < 16 * 2**20


def test_gzip_nifti_with_bomb_tail_inflates_only_what_the_header_needs():
    vol = _marked_volume()
    data = fx.nifti_gz_with_bomb_tail(vol)
    out: list[np.ndarray] = []
    # The 256 MiB tail is never inflated: the peak stays near the volume's own size.
    assert peak_bytes(lambda: out.append(decode_slice(data))) < vol.nbytes + 32 * 2**20
    np.testing.assert_array_equal(out[0], decode_slice(fx.nifti_bytes(vol)))


# ---------------------------------------------------------------------------------------
# Hostile and malformed inputs


def test_empty_file():
    err = expect_error(b"", "empty_file")
    assert err.status == 400


@pytest.mark.parametrize(
    "data",
    [fx.TEXT_BYTES, fx.ELF_BYTES, fx.EPS_BYTES, b"\x00" * 1000, b"GIF89a", b"%PDF-1.7\n" + b"x" * 500],
    ids=["text", "elf", "eps", "zeros", "gif-magic", "pdf"],
)
def test_not_an_image(data):
    err = expect_error(data, "unsupported_format")
    assert err.status == 415


@pytest.mark.parametrize("writer", [fx.gif_bytes, fx.bmp_bytes, fx.tiff_bytes, fx.webp_bytes])
def test_other_image_formats_unsupported(writer):
    expect_error(writer(fx.head_phantom()), "unsupported_format")


def test_png_named_file_with_eps_content_never_reaches_ghostscript():
    # The decoder never sees a name; EPS bytes are refused by sniffing alone.
    expect_error(fx.EPS_BYTES, "unsupported_format")
    assert sniff_format(fx.EPS_BYTES) is None


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_truncated(fmt):
    arr = fx.head_phantom(256, 256)
    data = fx.png_bytes(arr) if fmt == "png" else fx.jpeg_bytes(arr)
    for cut in (20, len(data) // 3, len(data) - 30):
        expect_error(data[:cut], "corrupt_image")


def test_png_decompression_bomb_rejected_before_decoding(monkeypatch):
    data = fx.bomb_png_bytes()
    assert len(data) < 200_000
    from PIL import ImageFile

    loads = []
    original = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self) or original(self))
    err = expect_error(data, "decompression_bomb")
    assert err.status == 413
    assert loads == [], "refused from the header: no pixel was decoded"


def test_png_too_many_pixels_in_a_plausibly_big_file():
    # 6000 x 5000 = 30 Mpx declared in a file of ~0.5 MB: too large, not a bomb
    rng = np.random.default_rng(0)
    data = fx.png_with_dims(6000, 5000)
    data = data[:-12] + fx._png_chunk(b"tEXt", b"c\x00" + rng.bytes(500_000)) + data[-12:]
    assert 6000 * 5000 > MAX_PIXELS
    err = expect_error(data, "too_many_pixels")
    assert err.status == 413


def test_too_small_and_too_elongated():
    expect_error(fx.png_bytes(np.zeros((1, 1), np.uint8)), "too_small")
    expect_error(fx.png_bytes(np.zeros((31, 200), np.uint8)), "too_small")
    expect_error(fx.png_bytes(np.zeros((40, 400), np.uint8)), "bad_aspect_ratio")
    assert decode_slice(fx.png_bytes(np.zeros((32, 256), np.uint8))).shape == (32, 256)


def test_non_bytes_input():
    with pytest.raises(ImageDecodeError):
        decode_slice("not bytes")  # type: ignore[arg-type]


def _mutations(data: bytes, n: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        b = bytearray(data)
        for pos in rng.integers(0, len(b), size=int(rng.integers(1, 8))):
            b[pos] = int(rng.integers(0, 256))
        if rng.random() < 0.3:
            b = b[: int(rng.integers(1, len(b)))]
        out.append(bytes(b))
    return out


def test_fuzzed_files_only_ever_raise_image_decode_error(caplog):
    """Random byte flips / truncations of valid files of every format: decode or a clean error.

    Nothing logged on the way may quote a DICOM header value (PHI)."""
    caplog.set_level("DEBUG")
    arr = fx.head_phantom()
    valid = {
        "png": fx.png_bytes(arr),
        "png16": fx.png16_bytes(arr.astype(np.uint16) * 100),
        "jpeg": fx.jpeg_bytes(arr),
        "dicom": fx.dicom_bytes(arr.astype(np.uint16)),
        "dicom-deflated": fx.dicom_bytes(arr.astype(np.uint16), deflated=True),
        "nii": fx.nifti_bytes(np.stack([arr] * 4, axis=-1).astype(np.int16)),
        "niigz": fx.nifti_gz_bytes(np.stack([arr] * 4, axis=-1).astype(np.int16)),
    }
    outcomes = {"ok": 0, "error": 0}
    for i, (name, data) in enumerate(valid.items()):
        for mutated in _mutations(data, 40, seed=i):
            try:
                out = decode_slice(mutated)
            except ImageDecodeError as err:
                assert err.code and 400 <= err.status < 500
                outcomes["error"] += 1
            else:
                assert out.dtype == np.uint8 and out.ndim == 2
                outcomes["ok"] += 1
    assert outcomes["error"] > 0 and outcomes["ok"] > 0
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for value in fx.PHI.values():
        assert value not in logged
