"""Reduced-precision inference for the progression generators, and the check that allows it.

On a CPU with native bfloat16 (AVX-512 BF16 or AMX; oneDNN reports it), eager PyTorch under
``torch.autocast("cpu", dtype=torch.bfloat16)`` runs the lite U-Net about twice as fast as
fp32 (docs/performance.md). bfloat16 keeps 8 bits of mantissa, so the output image can move
by a grey level or two; whether that is acceptable depends on the trained weights. So every
model is checked before bf16 may serve it: :func:`bf16_fidelity` runs fp32 and bf16 on
deterministic brain-like probe slices (:func:`probe_slices`) and compares the uint8 outputs
the user would see; :data:`BF16_TOLERANCE` is the bound (grey levels, 0-255). A model outside
it is served in fp32, and the figures are reported either way.

The classifier is not offered bf16: it measured no faster than ONNX Runtime fp32 on the CPUs
tried (docs/performance.md), and its probabilities are the product.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
import torch
from scipy import ndimage as ndi

# Bounds on |bf16 - fp32| of the uint8 output over the probes' brain pixels, in grey levels.
# They sit well above what bf16 does to the served generators (a few pixels off by one level;
# measured with benchmarks/measure_bf16_fidelity.py, figures in docs/performance.md) and refuse a
# model whose output bf16 visibly changes (a high-gain head: tests/test_precision.py).
BF16_TOLERANCE = {"mean_abs": 0.5, "p999_abs": 4.0}


@lru_cache(maxsize=1)
def cpu_bf16_native() -> bool:
    """True when oneDNN runs bfloat16 natively on this CPU (otherwise it is emulated: slow)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def probe_slices(size: int = 256, n: int = 3, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` deterministic brain-like canonical slices (uint8) with their brain masks.

    An elliptic head with a bright scalp ring, a dark skull gap, brain tissue with smooth
    random grey/white texture and dark ventricles: the generator's input statistics, so the
    comparison exercises the weights the way real slices do. Same seed, same probes.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    out = []
    for i in range(n):
        ax, ay = 0.40 + 0.03 * i, 0.44 - 0.02 * i
        r = np.sqrt((xx / ax) ** 2 + (yy / ay) ** 2)
        texture = ndi.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), 3.0 + i)
        texture /= np.abs(texture).max() + 1e-6
        brain = r < 0.86
        img = np.zeros((size, size), np.float32)
        img[(r >= 0.92) & (r < 1.0)] = 200.0  # scalp
        img[brain] = 110.0 + 45.0 * texture[brain]
        vent = ((xx / 0.07) ** 2 + ((yy + 0.02) / (0.16 + 0.02 * i)) ** 2) < 1
        img[vent] = 25.0
        img += np.where(r < 1.0, rng.normal(0.0, 3.0, img.shape), 0.0).astype(np.float32)  # scanner noise in the head
        out.append((np.clip(img, 0, 255).astype(np.uint8), brain))
    return out


@dataclass(frozen=True)
class Fidelity:
    """|low precision - fp32| of the uint8 outputs over the probes' brain pixels (grey levels)."""

    mean_abs: float
    p999_abs: float
    max_abs: float
    within: bool

    def as_dict(self) -> dict[str, float | bool]:
        return asdict(self)


def compare_outputs(reference: list[np.ndarray], candidate: list[np.ndarray], masks: list[np.ndarray],
                    tolerance: dict[str, float] = BF16_TOLERANCE) -> Fidelity:
    """Fidelity of ``candidate`` uint8 images against ``reference`` inside ``masks``."""
    diffs = np.concatenate([
        np.abs(c.astype(np.int16) - r.astype(np.int16))[m].ravel() for r, c, m in zip(reference, candidate, masks)
    ]).astype(np.float64)
    if diffs.size == 0:
        return Fidelity(0.0, 0.0, 0.0, True)
    mean, p999, mx = float(diffs.mean()), float(np.percentile(diffs, 99.9)), float(diffs.max())
    return Fidelity(round(mean, 4), round(p999, 2), mx, mean <= tolerance["mean_abs"] and p999 <= tolerance["p999_abs"])


def bf16_fidelity(run_fp32: Callable[[np.ndarray, np.ndarray], np.ndarray],
                  run_bf16: Callable[[np.ndarray, np.ndarray], np.ndarray], size: int = 256) -> Fidelity:
    """Run both on :func:`probe_slices` (uint8 image, mask -> uint8 image) and compare."""
    probes = probe_slices(size)
    ref = [run_fp32(img, m) for img, m in probes]
    low = [run_bf16(img, m) for img, m in probes]
    return compare_outputs(ref, low, [m for _, m in probes])


def autocast_bf16() -> torch.autocast:
    """The CPU bfloat16 autocast context every bf16 forward runs under."""
    return torch.autocast("cpu", dtype=torch.bfloat16)


def generator_runner(model: torch.nn.Module, bf16: bool) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """uint8 canonical image + brain mask -> the generator's uint8 output, in fp32 or under bf16
    autocast (channels_last, the serving layout): what :func:`bf16_fidelity` compares."""
    from alzprog.preprocessing import generator_input, generator_output_to_uint8

    def run(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        x = torch.cat([generator_input(image), torch.from_numpy(mask.astype(np.float32))[None]])[None]
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), (autocast_bf16() if bf16 else contextlib.nullcontext()):
            out = model(x)
        return generator_output_to_uint8(out[0])

    return run
