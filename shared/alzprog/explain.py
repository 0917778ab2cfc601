"""Grad-CAM explanations and the in-brain saliency fraction (a shortcut alarm).

``grad_cam`` weights the last convolutional feature maps by the gradient of the target logit
(Selvaraju et al. 2017). ``saliency_in_brain_fraction`` says how much of that saliency falls
inside the brain mask: a classifier that looks mostly at the skull, the background or the
image border has learned a shortcut, not anatomy.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from alzprog.quality import SHORTCUT_THRESHOLD  # noqa: F401 - defined there (torch-free), used here


def default_target_layer(model: nn.Module) -> nn.Module:
    """The last convolutional block: ``model.features[-1]`` for torchvision EfficientNets."""
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential) and len(features) > 0:
        return features[-1]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("model has no convolutional layer for Grad-CAM")
    return convs[-1]


def grad_cam(
    model: nn.Module,
    input_tensor: torch.Tensor,
    target: int | None = None,
    layer: nn.Module | None = None,
) -> np.ndarray:
    """Grad-CAM heatmap in [0, 1] at the input's spatial size (H, W).

    ``input_tensor`` is one preprocessed image, shaped (C, H, W) or (1, C, H, W); ``target`` is
    the class index to explain (default: the predicted class). The model is left in eval mode
    and its parameters' gradients untouched.
    """
    x = input_tensor if input_tensor.ndim == 4 else input_tensor.unsqueeze(0)
    if x.shape[0] != 1:
        raise ValueError("grad_cam explains one image at a time")
    device = next(model.parameters()).device
    x = x.to(device=device, dtype=torch.float32)
    layer = layer or default_target_layer(model)
    store: dict[str, torch.Tensor] = {}

    def fwd_hook(_m, _inp, out):
        out.retain_grad()
        store["act"] = out

    was_training = model.training
    model.eval()
    handle = layer.register_forward_hook(fwd_hook)
    try:
        with torch.enable_grad():
            logits = model(x)
            cls = int(logits.argmax(1).item()) if target is None else int(target)
            act = store["act"]
            (grad,) = torch.autograd.grad(logits[0, cls], act)
    finally:
        handle.remove()
        model.train(was_training)
    weights = grad.mean(dim=(2, 3), keepdim=True)  # (1, K, 1, 1): global-average-pooled gradients
    cam = F.relu((weights * act).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    cam = cam.detach().float().cpu().numpy()
    peak = float(cam.max())
    return (cam / peak).astype(np.float32) if peak > 0 else np.zeros_like(cam, dtype=np.float32)


def _resize_float(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if a.shape == shape:
        return a
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    return F.interpolate(t, size=shape, mode="bilinear", align_corners=False)[0, 0].numpy()


def saliency_in_brain_fraction(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of the total saliency inside ``mask`` (heatmap resized to the mask when they differ).

    Returns NaN for an all-zero heatmap (nothing to attribute).
    """
    mask = np.asarray(mask).astype(bool)
    heat = _resize_float(np.asarray(heatmap, dtype=np.float32), mask.shape)
    heat = np.clip(heat, 0, None)
    total = float(heat.sum())
    if total <= 0:
        return float("nan")
    return float(heat[mask].sum() / total)


def overlay_rgb(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a jet-coloured heatmap over a grayscale uint8 image; returns uint8 (H, W, 3)."""
    from matplotlib import colormaps

    gray = np.asarray(image)
    if gray.ndim == 3:
        gray = gray[..., 0]
    heat = np.clip(_resize_float(np.asarray(heatmap, dtype=np.float32), gray.shape), 0, 1)
    colour = colormaps["jet"](heat)[..., :3]
    base = np.repeat(gray[..., None].astype(np.float32) / 255.0, 3, axis=2)
    # Weak saliency stays transparent so the anatomy remains readable.
    a = alpha * heat[..., None]
    out = (1 - a) * base + a * colour
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def overlay_png(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> bytes:
    """PNG bytes of :func:`overlay_rgb`."""
    buf = io.BytesIO()
    Image.fromarray(overlay_rgb(image, heatmap, alpha)).save(buf, format="PNG")
    return buf.getvalue()


def explain_image(model: nn.Module, config: dict[str, Any], data: bytes, target: int | None = None) -> dict[str, Any]:
    """Decode, canonicalise and classify one image; return prediction, Grad-CAM and overlay.

    The one library path the classifier service and ``alzprog explain`` share. Keys:
    ``stage``, ``stage_index``, ``probabilities`` (temperature-scaled), ``target``,
    ``in_brain_fraction``, ``shortcut_alarm``, ``heatmap`` (canonical size), ``overlay_png``.
    """
    from alzprog.inference.classifier import classify_stage, explain_stage, model_input
    from alzprog.preprocessing import load_canonical

    canon = load_canonical(data)
    pred, probs = classify_stage(canon.image, model, config)
    cls = pred if target is None else int(target)
    explained = explain_stage(model, model_input(canon.image, config), canon.image, canon.mask, cls)
    heat = explained.heatmap
    frac = float("nan") if explained.in_brain_fraction is None else explained.in_brain_fraction
    names = config.get("class_names")
    return {
        "stage": names[pred] if names else pred,
        "stage_index": pred,
        "probabilities": {(names[i] if names else str(i)): float(p) for i, p in enumerate(probs)},
        "target": cls,
        "in_brain_fraction": frac,
        "shortcut_alarm": bool(frac == frac and frac < SHORTCUT_THRESHOLD),
        "heatmap": heat,
        "overlay_png": explained.overlay_png,
    }
