"""bfloat16 inference of the generators and the fidelity check that allows it (alzprog.precision)."""

from __future__ import annotations

import numpy as np
from service_helpers import make_precision_sensitive, tiny_generator_artifact

from alzprog.artifacts import load_artifact
from alzprog.precision import BF16_TOLERANCE, bf16_fidelity, compare_outputs, cpu_bf16_native, generator_runner, probe_slices


def test_probes_are_deterministic_brain_like_slices():
    a, b = probe_slices(), probe_slices()
    assert len(a) == 3
    for (img, mask), (img2, mask2) in zip(a, b):
        assert img.dtype == np.uint8 and img.shape == (256, 256) and mask.dtype == bool
        assert np.array_equal(img, img2) and np.array_equal(mask, mask2)
        # A head on a dark background, textured tissue inside the mask, not a flat disc.
        assert img[0, 0] == 0 and 0.2 < mask.mean() < 0.7
        assert img[mask].std() > 10
    assert not np.array_equal(a[0][0], probe_slices(seed=1)[0][0])


def test_compare_outputs_measures_grey_levels_inside_the_mask_only():
    ref = np.full((8, 8), 100, np.uint8)
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    same = compare_outputs([ref], [ref.copy()], [mask])
    assert same.within and same.mean_abs == 0 and same.max_abs == 0
    outside = ref.copy()
    outside[0, 0] = 255  # outside the brain: not counted
    assert compare_outputs([ref], [outside], [mask]).max_abs == 0
    shifted = ref.copy()
    shifted[mask] += 1  # every brain pixel one level off: mean 1 > the 0.5 bound
    off = compare_outputs([ref], [shifted], [mask])
    assert off.mean_abs == 1.0 and off.max_abs == 1.0 and not off.within
    one = ref.copy()
    one[3, 3] = 180  # one pixel far off: the 99.9th percentile and max see it
    far = compare_outputs([ref], [one], [mask])
    assert far.max_abs == 80 and far.p999_abs > BF16_TOLERANCE["p999_abs"] and not far.within


def test_bf16_of_a_perturbed_generator_is_close_to_fp32(tmp_path):
    model = load_artifact(tiny_generator_artifact(tmp_path / "g", seed=3)).model.eval()
    fp32 = generator_runner(model, False)
    probe, mask = probe_slices()[0]
    assert not np.array_equal(fp32(probe, mask), probe)  # the weights do change the slice
    fid = bf16_fidelity(fp32, generator_runner(model, True))
    assert fid.within, fid
    assert fid.mean_abs <= BF16_TOLERANCE["mean_abs"]


def test_a_precision_sensitive_generator_is_refused(tmp_path):
    """A high-gain head: bf16 rounding (0.4 %) becomes visible grey levels."""
    model = load_artifact(tiny_generator_artifact(tmp_path / "g", seed=4)).model.eval()
    make_precision_sensitive(model)
    fid = bf16_fidelity(generator_runner(model, False), generator_runner(model, True))
    assert not fid.within, fid
    assert fid.mean_abs > BF16_TOLERANCE["mean_abs"]


def test_native_bf16_is_reported_as_a_bool():
    assert isinstance(cpu_bf16_native(), bool)
