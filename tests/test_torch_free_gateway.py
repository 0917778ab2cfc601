"""The gateway decodes and canonicalises without torch (alzprog.preprocessing.canonical)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SLICE = REPO / "tests" / "data" / "oasis_OAS1_0001_MR1_mpr-1_111.jpg"

PROBE = f"""
import sys
import services.gateway.app as gateway
from alzprog.decode import read_slice
from alzprog.preprocessing import brain_mask, canonical_image, canonical_sha256, canonicalize

gateway.create_app()
c = canonicalize(read_slice({str(SLICE)!r}))
assert c.mask.any() and brain_mask(c.image).any()
canonical_sha256(canonical_image(read_slice({str(SLICE)!r})))
heavy = sorted(m for m in ("torch", "torchvision", "onnxruntime") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
"""


def test_gateway_app_and_canonical_path_load_no_torch() -> None:
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY=", proc.stdout


def test_tensor_helpers_still_importable_from_the_old_path() -> None:
    from alzprog.preprocessing import classifier_input, generator_input, generator_output_to_uint8, mask_tensor
    from alzprog.preprocessing import tensors

    assert classifier_input is tensors.classifier_input and mask_tensor is tensors.mask_tensor
    assert generator_input is tensors.generator_input and generator_output_to_uint8 is tensors.generator_output_to_uint8
