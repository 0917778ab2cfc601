"""Regenerate the golden files of tests/test_golden.py (run from the repo root, deliberately).

    .venv/bin/python tests/data/make_golden.py

Inputs (committed): a real OASIS-1 slice and one phantom slice. Expected outputs written to
tests/data/golden/: the brain mask of each decoded input, its canonical image and mask, and the
library's answers of the seeded tiny test models (calibrated probabilities, chain steps). Only
rerun after a change that is meant to change these numbers, and say why in the commit.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/ (service_helpers, conftest)

OASIS = Path(__file__).resolve().parents[3] / "shared" / "oasis-samples" / "Data" / "Non Demented" / "OAS1_0001_MR1_mpr-1_111.jpg"
INPUTS = {"oasis": HERE / "oasis_OAS1_0001_MR1_mpr-1_111.jpg", "phantom": HERE / "phantom_slice.jpg"}
GOLDEN = HERE / "golden"


def ensure_inputs() -> None:
    """Copy the OASIS slice and synthesise the phantom slice where they are missing."""
    if not INPUTS["oasis"].is_file():
        shutil.copyfile(OASIS, INPUTS["oasis"])
    if not INPUTS["phantom"].is_file():
        from alzprog.data.phantom import synthesize

        with tempfile.TemporaryDirectory() as tmp:
            synthesize(tmp, n_subjects=8, seed=3, mix="balanced", slices_per_subject=1, progress=False)
            found = sorted(Path(tmp, "Data").rglob("*.jpg"))
            shutil.copyfile(found[0], INPUTS["phantom"])


def save_mask(mask: np.ndarray, path: Path) -> None:
    Image.fromarray(np.asarray(mask, bool)).save(path, format="PNG")


def main() -> None:
    from golden_models import library_answers

    from alzprog.decode import read_slice
    from alzprog.preprocessing import brain_mask, canonicalize

    ensure_inputs()
    GOLDEN.mkdir(exist_ok=True)
    answers = {}
    for name, path in INPUTS.items():
        gray = read_slice(path)
        save_mask(brain_mask(gray), GOLDEN / f"{name}_brain_mask.png")
        c = canonicalize(gray)
        Image.fromarray(c.image).save(GOLDEN / f"{name}_canonical.png", format="PNG")
        save_mask(c.mask, GOLDEN / f"{name}_canonical_mask.png")
        probs, steps = library_answers(c.image, c.mask)
        for k, step in enumerate(steps, start=1):
            Image.fromarray(step).save(GOLDEN / f"{name}_step{k}.png", format="PNG")
        answers[name] = {"sha256": c.sha256, "probabilities": [float(p) for p in probs]}
    (GOLDEN / "answers.json").write_text(json.dumps(answers, indent=1) + "\n")
    print(f"golden files written to {GOLDEN}")


if __name__ == "__main__":
    main()
