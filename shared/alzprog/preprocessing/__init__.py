"""The one preprocessing path, shared by training, evaluation and every service.

- :mod:`alzprog.preprocessing.canonical` (NumPy/SciPy/Pillow): :func:`brain_mask`,
  :func:`canonicalize`, the canonical hash, the SYNTHETIC mark and display overlays.
- :mod:`alzprog.preprocessing.tensors` (torch): :func:`classifier_input`,
  :func:`generator_input`, :func:`generator_output_to_uint8`, :func:`mask_tensor`.

Every name of both is importable from here as before. The tensor functions are loaded on first
use, so ``import alzprog.preprocessing`` (the gateway's) does not import torch.
"""

from __future__ import annotations

from typing import Any

from alzprog.preprocessing.canonical import (  # noqa: F401 - the public names, re-exported
    brain_mask,
    canonical_image,
    canonical_sha256,
    CANONICAL_SIZE,
    canonicalize,
    CanonicalSlice,
    head_bbox,
    head_mask,
    IMAGENET_MEAN,
    IMAGENET_STD,
    load_canonical,
    mark_synthetic,
    overlay_mask,
)
from alzprog.preprocessing.canonical import _banner, _otsu3, _resize, _to_uint8_gray  # noqa: F401 - used by tests and benchmarks

_TENSOR_NAMES = frozenset({"classifier_input", "generator_input", "generator_output_to_uint8", "mask_tensor"})


def __getattr__(name: str) -> Any:
    if name in _TENSOR_NAMES:
        from alzprog.preprocessing import tensors

        return getattr(tensors, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _TENSOR_NAMES)
