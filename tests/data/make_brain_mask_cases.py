"""Regenerate tests/data/brain_mask_cases.npz of tests/test_brain_mask_equivalence.py (deliberately).

    .venv/bin/python tests/data/make_brain_mask_cases.py

Computes, with the alzprog that Python imports, the outputs that test pins for each of its
inputs. Only rerun after a change that is meant to change brain masks, and say why in the
commit; a change meant to keep them must pass the test against the committed file instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/

import alzprog  # noqa: E402
from test_brain_mask_equivalence import CASES, build_cases, outputs  # noqa: E402


def main() -> None:
    arrays: dict[str, np.ndarray] = {}
    for name, gray in build_cases().items():
        for field, value in outputs(gray).items():
            if value.dtype == bool:
                arrays[f"{name}/{field}_bits"] = np.packbits(value.ravel())
                arrays[f"{name}/{field}_shape"] = np.array(value.shape)
            else:
                arrays[f"{name}/{field}"] = value
    np.savez_compressed(CASES, **arrays)
    print(f"wrote {CASES} ({CASES.stat().st_size} bytes) with {alzprog.__file__}")


if __name__ == "__main__":
    main()
