"""Model inputs and outputs as torch tensors, from and to canonical uint8 slices.

The only part of the preprocessing that needs torch (training, the model services); the
canonical slice itself is :mod:`alzprog.preprocessing.canonical`.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from alzprog.preprocessing.canonical import IMAGENET_MEAN, IMAGENET_STD, _resize, _to_uint8_gray


def classifier_input(
    image: np.ndarray,
    size: int,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> torch.Tensor:
    """uint8 HxW -> float32 (3, size, size): grayscale replicated, normalised per channel."""
    g8 = _to_uint8_gray(image)
    g8 = _resize(g8, (size, size), Image.BILINEAR)
    x = torch.from_numpy(g8.astype(np.float32) / 255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x.unsqueeze(0).expand(3, -1, -1) - m) / s


def generator_input(image: np.ndarray, size: int | None = None) -> torch.Tensor:
    """uint8 HxW -> float32 (1, H, W) in [-1, 1] (resized to ``size`` x ``size`` if given)."""
    g8 = _to_uint8_gray(image)
    if size is not None:
        g8 = _resize(g8, (size, size), Image.BILINEAR)
    return torch.from_numpy(g8.astype(np.float32) / 127.5 - 1.0).unsqueeze(0)


def generator_output_to_uint8(t: torch.Tensor) -> np.ndarray:
    """Generator output in [-1, 1], shaped (H, W), (1, H, W) or (1, 1, H, W) -> uint8 HxW."""
    x = t.detach().to("cpu", torch.float32)
    while x.ndim > 2 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 2:
        raise ValueError(f"expected one single-channel image, got shape {tuple(t.shape)}")
    x = torch.nan_to_num(x, nan=0.0).clamp(-1.0, 1.0)
    return ((x + 1.0) * 127.5).round().to(torch.uint8).numpy()


def mask_tensor(mask: np.ndarray, size: int | None = None) -> torch.Tensor:
    """Boolean HxW mask -> float32 (1, H, W) of 0/1 (nearest-neighbour resize if ``size``)."""
    m = np.asarray(mask).astype(bool)
    if size is not None and m.shape != (size, size):
        m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)) >= 128
    return torch.from_numpy(m.astype(np.float32)).unsqueeze(0)
