"""The gateway runs without torch: it decodes and canonicalises with ``alzprog.preprocessing.canonical``
and its image installs ``deploy/docker/install_deps.sh gateway`` (no torch, torchvision,
onnxruntime or CUDA libraries). Each probe runs in its own interpreter with those imports
blocked, as in that image."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SLICE = REPO / "tests" / "data" / "oasis_OAS1_0001_MR1_mpr-1_111.jpg"
HEAVY = ("torch", "torchvision", "onnxruntime")
# A real T1 volume (the MNI152 template nilearn ships), as tests/test_service_gateway.py uses.
_NILEARN = importlib.util.find_spec("nilearn")
MNI = Path(_NILEARN.origin).parent / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz" if _NILEARN else None



def blocker(blocked: set[str]) -> str:
    """Code that makes ``import <name>`` fail for every top-level module in ``blocked``, as if its
    distribution were not installed (optional imports then take their fallback, as in the image)."""
    return f"""
import importlib.abc, sys

class _NotInTheGatewayImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {sorted(blocked)!r}:
            raise ImportError(f"{{name}} is not installed in the gateway image")
        return None

sys.meta_path.insert(0, _NotInTheGatewayImage())
"""


PROBE = f"""
import sys
import services.gateway.app as gateway
from alzprog.decode import read_slice
from alzprog.preprocessing import brain_mask, canonical_image, canonical_sha256, canonicalize

gateway.create_app()
c = canonicalize(read_slice({str(SLICE)!r}))
assert c.mask.any() and brain_mask(c.image).any()
canonical_sha256(canonical_image(read_slice({str(SLICE)!r})))
heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
"""

# The gateway's request path up to the backends (dead here: every model call is a 503), with
# the lifespan's warm-up.
REQUESTS = f"""
import socket

from fastapi.testclient import TestClient

from services.gateway.app import create_app
from services.gateway.settings import Settings

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{{s.getsockname()[1]}}"
app = create_app(Settings(classifier_url=dead, generator_url=dead, redis_url="", retries=0))
data = open({str(SLICE)!r}, "rb").read()
volume = open({str(MNI)!r}, "rb").read()
with TestClient(app) as c:
    assert c.get("/livez").status_code == 200
    assert c.get("/readyz").status_code == 503
    for path, body in (("/predict", data), ("/progression", data), ("/volume", volume)):
        r = c.post(path, files={{"file": ("upload", body)}})
        assert r.status_code == 503 and r.json()["error"]["code"] == "backend_unavailable", (path, r.status_code, r.text)
print("OK")
"""

# What every answer and the model card need besides the backends.
ANSWERS = """
import alzprog.registry
from alzprog.quality import report

report(None, {"overlay": "", "saliency_in_brain_fraction": 0.2})
print("OK")
"""


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def gateway_variant_closure() -> set[str]:
    """The distributions ``install_deps.sh gateway`` installs: the names it asks for and,
    recursively, what they require (markers evaluated here, extras not taken)."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    script = (REPO / "deploy" / "docker" / "install_deps.sh").read_text()
    block = script.split("\n  gateway)\n", 1)[1].split(";;", 1)[0]
    command = block.split("-c /tmp/service-requirements.txt", 1)[1].replace("\\\n", " ")
    todo = [n for n in command.split() if re.fullmatch(r"[A-Za-z0-9_.-]+", n)]
    seen: set[str] = set()
    while todo:
        name = _normal(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        for line in md.requires(name) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def not_in_the_gateway_image() -> set[str]:
    """Top-level modules installed here whose distributions ``install_deps.sh gateway`` does
    not install (torch among them)."""
    import importlib.metadata as md

    closure = gateway_variant_closure()
    return {top for top, dists in md.packages_distributions().items()
            if not any(_normal(d) in closure or _normal(d) == "alzprog" for d in dists)}


def test_gateway_variant_installs_no_torch_or_cuda() -> None:
    closure = gateway_variant_closure()
    assert {"fastapi", "uvicorn", "numpy", "scipy", "pillow", "pydicom", "nibabel", "redis", "mlflow-skinny"} <= closure
    assert not closure & {"torch", "torchvision", "onnxruntime", "onnxruntime-gpu", "triton", "mlflow"}, closure
    assert not {n for n in closure if n.startswith(("nvidia-", "cuda-"))}, closure
    assert set(HEAVY) <= not_in_the_gateway_image()


def test_gateway_app_and_canonical_path_load_no_torch() -> None:
    proc = _run(PROBE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY=", proc.stdout


@pytest.mark.skipif(MNI is None or not MNI.is_file(), reason="nilearn ships no MNI152 T1 here")
def test_gateway_request_path_runs_on_what_the_gateway_image_installs() -> None:
    """Lifespan, health, and /predict, /progression, /volume up to the (dead) backends, with
    every distribution the gateway variant leaves out made unimportable."""
    proc = _run(blocker(not_in_the_gateway_image()) + REQUESTS)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-3000:]


def test_quality_report_and_registry_need_no_torch() -> None:
    proc = _run(blocker(not_in_the_gateway_image()) + ANSWERS)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-3000:]


def test_tensor_helpers_still_importable_from_the_old_path() -> None:
    from alzprog.preprocessing import classifier_input, generator_input, generator_output_to_uint8, mask_tensor
    from alzprog.preprocessing import tensors

    assert classifier_input is tensors.classifier_input and mask_tensor is tensors.mask_tensor
    assert generator_input is tensors.generator_input and generator_output_to_uint8 is tensors.generator_output_to_uint8
