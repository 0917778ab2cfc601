"""A deformation generator served by torch exposes its displacement, and the chain's steps
then carry a deformation map and its Jacobian figures (services.generator.model_holder)."""

from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def deform_runtime(tmp_path_factory):
    import torch

    from alzprog.artifacts import save_artifact
    from alzprog.models import build_model
    from alzprog.models.progression_generator import ARCHS, generator_config
    from services.common.model_slot import ModelRef
    from alzprog.inference.runtime import thread_policy
    from services.generator.model_holder import GeneratorRuntime

    if "deform" not in ARCHS:
        pytest.skip("this checkout has no deformation generator")
    torch.set_num_threads(1)
    cfg = generator_config("default", arch="deform", base_channels=4, depth=1)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():  # away from the identity it starts at
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    out = tmp_path_factory.mktemp("deform")
    # A random-weight generator: ORT's and PyTorch's float32 kernels round differently, and
    # more so on CPUs without AVX-512 (other kernels); the tolerance covers both.
    save_artifact(out, model, cfg, torch.randn(1, 2, 256, 256), onnx_atol=2e-3)
    ref = ModelRef("alzheimer-progression-nd-vmd", "1", out, json.loads((out / "config.json").read_text()))
    return GeneratorRuntime(ref, "torch", ["CPUExecutionProvider"], thread_policy(1, 1), None, "fp32")


def _slice():
    from alzprog.preprocessing import canonicalize

    yy, xx = np.mgrid[:220, :200]
    img = np.zeros((220, 200), np.uint8)
    img[((yy - 110) / 95.0) ** 2 + ((xx - 100) / 85.0) ** 2 < 1] = 150
    img[((yy - 110) / 20.0) ** 2 + ((xx - 100) / 12.0) ** 2 < 1] = 30  # a ventricle
    return canonicalize(img)


def test_the_chain_of_a_deformation_generator_shows_its_jacobian(deform_runtime):
    from alzprog.change_map import deformation_numbers
    from services.common.model_slot import Served
    from services.generator.model_holder import run_chain

    c = _slice()
    disp = deform_runtime.displacement(c.image, c.mask)
    assert disp is not None and disp.shape == (2, 256, 256) and np.abs(disp).max() > 0
    served = Served(ref=deform_runtime.ref, model=deform_runtime)
    steps, input_morphometry = run_chain([(1, served)], c.image, c.mask)
    step = steps[0]
    assert step["deformation_map"].startswith("data:image/png;base64,")
    assert step["deformation"] == deformation_numbers(disp, c.mask)
    assert input_morphometry["brain_area_px"] == int(c.mask.sum())


def test_an_intensity_generator_has_no_displacement(tmp_path):
    from service_helpers import tiny_generator_artifact

    from services.common.model_slot import ModelRef
    from alzprog.inference.runtime import thread_policy
    from services.generator.model_holder import GeneratorRuntime

    out = tiny_generator_artifact(tmp_path / "g")
    ref = ModelRef("alzheimer-progression-nd-vmd", "1", out, json.loads((out / "config.json").read_text()))
    runtime = GeneratorRuntime(ref, "torch", ["CPUExecutionProvider"], thread_policy(1, 1), None, "fp32")
    c = _slice()
    assert runtime.displacement(c.image, c.mask) is None
