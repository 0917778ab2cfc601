"""Image-similarity metrics for the progression generators: MSE, PSNR, SSIM, FID, LPIPS.

All pixel metrics take images scaled to [0, 1] (``to_unit``) and come whole-frame and inside a
brain mask. SSIM follows Wang et al. (2004) with scikit-image's defaults (7x7 uniform window,
sample covariance, K1 = 0.01, K2 = 0.03, the border of half a window left out), so our numbers
are comparable with ``skimage.metrics.structural_similarity``; the test suite checks that.

FID is the Frechet distance between Gaussians fitted to feature vectors. The standard Inception
FID and LPIPS need network weights that are downloaded on first use; this machine has no
internet, so they run only when the weights are already on disk and are otherwise reported as
unavailable with the reason, never replaced by a made-up number. The *domain FID* uses the
trained stage classifier's penultimate features and always works. ``lite_frechet_distance`` and
``lite_perceptual_distance`` use the packaged ImageNet EfficientNet-Lite0 weights instead:
non-standard, not comparable to published FID/LPIPS.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SSIM_K1, SSIM_K2, SSIM_WIN = 0.01, 0.03, 7


def to_unit(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [-1, 1] images -> float64 tensor in [0, 1], shape (N, 1, H, W)."""
    t = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if t.dtype == torch.uint8:
        t = t.double() / 255.0
    else:
        t = (t.double() + 1.0) / 2.0  # generator range [-1, 1]
    return _nchw(t)


def _nchw(t: torch.Tensor) -> torch.Tensor:
    """(H,W) -> (1,1,H,W); (N,H,W) -> (N,1,H,W); 4-D unchanged."""
    if t.dim() == 2:
        return t[None, None]
    if t.dim() == 3:
        return t[:, None]
    return t


def _as_mask(mask: np.ndarray | torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    if mask is None:
        return torch.ones_like(like)
    m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
    return _nchw(m).to(device=like.device, dtype=like.dtype).expand_as(like)


def mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image mean squared error of [0, 1] images (N,1,H,W), over the mask when given."""
    m = _as_mask(mask, a)
    err = ((a - b) ** 2 * m).sum(dim=(1, 2, 3))
    return err / m.sum(dim=(1, 2, 3)).clamp_min(1.0)


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB, ``10 log10(range^2 / MSE)``; identical images give +inf."""
    e = mse(a, b, mask)
    return 10.0 * torch.log10(data_range**2 / e)


def ssim_map(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, win_size: int = SSIM_WIN) -> torch.Tensor:
    """SSIM map over the valid region (border of ``win_size // 2`` dropped), shape (N,1,H-6,W-6).

    Uniform window with the unbiased (sample) covariance, as scikit-image's default.
    """
    a, b = a.double(), b.double()

    def filt(t: torch.Tensor) -> torch.Tensor:
        # The uniform window as a pooling: the same sums as a convolution with ones / n, and
        # float64 pooling has a fast CPU kernel where a float64 convolution has none.
        return F.avg_pool2d(t, win_size, stride=1)

    n = win_size**2
    cov_norm = n / (n - 1.0)
    ux, uy = filt(a), filt(b)
    vx = cov_norm * (filt(a * a) - ux * ux)
    vy = cov_norm * (filt(b * b) - uy * uy)
    vxy = cov_norm * (filt(a * b) - ux * uy)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))


def ssim(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None, data_range: float = 1.0) -> torch.Tensor:
    """Per-image mean SSIM; with a mask, the mean of the SSIM map over brain pixels only."""
    return _ssim_mean(ssim_map(a, b, data_range), mask, a)


def _ssim_mean(s: torch.Tensor, mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    pad = SSIM_WIN // 2
    if mask is None:
        return s.mean(dim=(1, 2, 3))
    m = _as_mask(mask, like)[..., pad:-pad, pad:-pad]
    return (s * m).sum(dim=(1, 2, 3)) / m.sum(dim=(1, 2, 3)).clamp_min(1.0)


def pixel_metrics(pred: Any, target: Any, mask: Any | None = None) -> dict[str, np.ndarray]:
    """All pixel metrics per image: ``mse, psnr, ssim`` whole frame and ``*_brain`` in the mask.

    ``pred``/``target``: uint8 (N,H,W)/(H,W) or generator-range float tensors; ``mask``: bool/0-1.
    """
    a, b = to_unit(pred), to_unit(target)
    s = ssim_map(a, b)  # once, for the whole frame and the brain
    out = {"mse": mse(a, b), "psnr": psnr(a, b), "ssim": _ssim_mean(s, None, a)}
    if mask is not None:
        m = _as_mask(mask, a)
        out.update(mse_brain=mse(a, b, m), psnr_brain=psnr(a, b, m), ssim_brain=_ssim_mean(s, m, a))
    return {k: v.cpu().numpy() for k, v in out.items()}


def summarize(per_image: dict[str, Iterable[float]]) -> dict[str, float]:
    """Mean of each per-image metric; infinite PSNRs (perfect copies) are capped at 100 dB."""
    result = {}
    for k, v in per_image.items():
        arr = np.asarray(list(v) if not isinstance(v, np.ndarray) else v, dtype=np.float64)
        if k.startswith("psnr"):
            arr = np.minimum(arr, 100.0)
        result[k] = float(arr.mean()) if arr.size else float("nan")
    return result


# --------------------------------------------------------------------------- FID


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased, as pytorch-fid) of an (N, D) feature matrix."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need at least two feature vectors of shape (N, D), got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``|mu1 - mu2|^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))``; a small ridge is added when
    the product is singular (few samples), as in pytorch-fid.
    """
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    diff = mu1 - mu2
    covmean, _ = linalg.sqrtm(sigma1.dot(sigma2), disp=False)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real  # numerical noise from sqrtm
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """FID between two sets of feature vectors (N1, D) and (N2, D).

    With fewer samples than dimensions (the usual case for a held-out test set and a
    classifier's 1000+-d features) the D x D matrix square root is singular and slow; the same
    trace is then computed exactly from the samples: with centred ``X1``, ``X2``,
    ``Tr((S1 S2)^(1/2)) = sum of singular values of X1 X2^T / sqrt((N1-1)(N2-1))``
    (the non-zero eigenvalues of ``X1^T X1 X2^T X2`` are those of ``(X1 X2^T)(X1 X2^T)^T``).
    """
    a, b = np.asarray(real, dtype=np.float64), np.asarray(fake, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] < 2 or b.shape[0] < 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need two (N, D) feature sets with N >= 2, got {a.shape} and {b.shape}")
    if a.shape[1] <= min(a.shape[0], b.shape[0]):
        return frechet_distance(*feature_stats(a), *feature_stats(b))
    mu1, mu2 = a.mean(axis=0), b.mean(axis=0)
    x1, x2 = a - mu1, b - mu2
    n1, n2 = a.shape[0] - 1.0, b.shape[0] - 1.0
    tr1, tr2 = float((x1 * x1).sum() / n1), float((x2 * x2).sum() / n2)
    tr_cross = float(np.linalg.svd(x1 @ x2.T, compute_uv=False).sum() / np.sqrt(n1 * n2))
    diff = mu1 - mu2
    return float(diff.dot(diff) + tr1 + tr2 - 2.0 * tr_cross)


def penultimate_features(model: nn.Module, inputs: torch.Tensor, batch_size: int = 32) -> np.ndarray:
    """Inputs of the model's last ``nn.Linear`` layer (its penultimate features), (N, D).

    Works for any classifier whose head ends in a linear layer (EfficientNet, ResNet, ...).
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("model has no nn.Linear head to take penultimate features from")
    captured: list[torch.Tensor] = []
    handle = linears[-1].register_forward_hook(lambda _m, inp, _out: captured.append(inp[0].detach().flatten(1).cpu()))
    try:
        model.eval()
        device = next(model.parameters()).device
        with torch.no_grad():
            for i in range(0, len(inputs), batch_size):
                model(inputs[i : i + batch_size].to(device))
    finally:
        handle.remove()
    return torch.cat(captured).double().numpy()


# --------------------------------------------------------------------------- standard networks


def _torch_hub_dir() -> Path:
    return Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"


def inception_fid_status() -> tuple[bool, str]:
    """Whether the standard (pytorch-fid) Inception FID can run offline, and why not."""
    if importlib.util.find_spec("pytorch_fid") is None:
        return False, "pytorch-fid is not installed and there is no internet to fetch it"
    weights = list(_torch_hub_dir().glob("pt_inception-2015-12-05-*.pth"))
    if not weights:
        return False, f"Inception weights pt_inception-2015-12-05-*.pth not in {_torch_hub_dir()} (no internet to download)"
    return True, str(weights[0])


def lpips_status() -> tuple[bool, str]:
    """Whether LPIPS (AlexNet backbone) can run offline, and why not."""
    if importlib.util.find_spec("lpips") is None:
        return False, "the lpips package (its linear calibration weights) is not installed and there is no internet"
    if not list(_torch_hub_dir().glob("alexnet-owt-*.pth")):
        return False, f"AlexNet weights alexnet-owt-*.pth not in {_torch_hub_dir()} (no internet to download)"
    return True, "lpips + torchvision AlexNet weights found"


def inception_fid(real_uint8: np.ndarray, fake_uint8: np.ndarray) -> float:
    """Standard FID with pytorch-fid's Inception (2048-d pool features); needs the weights on disk."""
    ok, why = inception_fid_status()
    if not ok:
        raise RuntimeError(why)
    from pytorch_fid.inception import InceptionV3

    net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()

    def feats(images: np.ndarray) -> np.ndarray:
        t = torch.as_tensor(images).float().div(255.0).unsqueeze(1).repeat(1, 3, 1, 1)
        out = []
        with torch.no_grad():
            for i in range(0, len(t), 32):
                out.append(net(t[i : i + 32])[0].flatten(1))
        return torch.cat(out).double().numpy()

    return fid_from_features(feats(real_uint8), feats(fake_uint8))


def lpips_distance(a_uint8: np.ndarray, b_uint8: np.ndarray) -> float:
    """Mean LPIPS (AlexNet) between paired uint8 images; needs the weights on disk."""
    ok, why = lpips_status()
    if not ok:
        raise RuntimeError(why)
    import lpips

    net = lpips.LPIPS(net="alex", verbose=False).eval()
    a = torch.as_tensor(a_uint8).float().div(127.5).sub(1).unsqueeze(1).repeat(1, 3, 1, 1)
    b = torch.as_tensor(b_uint8).float().div(127.5).sub(1).unsqueeze(1).repeat(1, 3, 1, 1)
    with torch.no_grad():
        return float(torch.cat([net(a[i : i + 16], b[i : i + 16]).flatten() for i in range(0, len(a), 16)]).mean())


def optional_metric(fn: Callable[[], float], status: Callable[[], tuple[bool, str]]) -> dict[str, Any]:
    """``{"value": x}`` when the metric's network is available, else ``{"value": None, "unavailable": why}``."""
    ok, why = status()
    if not ok:
        return {"value": None, "unavailable": why}
    return {"value": fn()}


# --------------------------------------------------------------------------- ImageNet Lite features
# Non-standard metrics on the packaged ImageNet EfficientNet-Lite0 weights: the only ImageNet
# network available offline (no Inception for FID, no AlexNet/VGG for LPIPS). They rank models
# against each other here; they are not comparable to published FID or LPIPS values.

LITE_ARCH = "efficientnet_lite0"
LITE_SIZE = 224
# Outputs of these ``features`` entries (stages at 1/2, 1/4, 1/8, 1/16, 1/32 of the input) feed
# the perceptual distance, as LPIPS taps one layer per resolution.
LITE_PERCEPTUAL_STAGES = (1, 2, 3, 5, 7)


@functools.lru_cache(maxsize=1)
def _lite_backbone() -> nn.Module:
    from alzprog.models.efficientnet_lite import build_efficientnet_lite, pretrained_state_dict

    model = build_efficientnet_lite(LITE_ARCH).eval()
    model.load_state_dict(pretrained_state_dict(LITE_ARCH))
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _lite_inputs(images_uint8_gray: np.ndarray) -> torch.Tensor:
    """(N, H, W) uint8 canonical slices -> (N, 3, 224, 224) Lite inputs, via the one preprocessing path."""
    from alzprog.models.efficientnet_lite import INPUT_MEAN, INPUT_STD
    from alzprog.preprocessing import classifier_input

    images = np.asarray(images_uint8_gray)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3:
        raise ValueError(f"expected (N, H, W) grey images, got shape {images.shape}")
    return torch.stack([classifier_input(im, LITE_SIZE, INPUT_MEAN, INPUT_STD) for im in images])


def lite_features(images_uint8_gray: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Pooled 1280-d ImageNet EfficientNet-Lite0 features of grey slices, (N, 1280) float64.

    Non-standard: a Lite0 ImageNet backbone, not Inception; not comparable to published FID.
    Each slice is resized to 224 x 224, replicated to RGB and normalised as the packaged
    weights expect ((x - 127) / 128).
    """
    model = _lite_backbone()
    x = _lite_inputs(images_uint8_gray)
    with torch.no_grad():
        out = [model.forward_features(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return torch.cat(out).double().numpy()


def lite_frechet_distance(real_uint8: np.ndarray, fake_uint8: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to the Lite0 features of two image sets.

    Non-standard: not comparable to published FID (Inception) values; it compares models
    with each other on the same data. Needs at least two images per side.
    """
    return fid_from_features(lite_features(real_uint8), lite_features(fake_uint8))


def _lite_stage_maps(x: torch.Tensor) -> list[torch.Tensor]:
    maps = []
    for i, layer in enumerate(_lite_backbone().features):
        x = layer(x)
        if i in LITE_PERCEPTUAL_STAGES:
            maps.append(x)
        if i >= max(LITE_PERCEPTUAL_STAGES):
            break
    return maps


def lite_perceptual_distances(a_uint8: np.ndarray, b_uint8: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Per-pair LPIPS-like distance on Lite0 feature maps, (N,).

    Non-standard: not comparable to published LPIPS. As LPIPS, at each tapped stage every
    spatial position's channel vector is scaled to unit length and the squared difference is
    averaged over positions; unlike LPIPS, stages are averaged with equal weights (no learned
    linear calibration). 0 for identical images; at most 4 (opposite unit vectors).
    """
    xa, xb = _lite_inputs(a_uint8), _lite_inputs(b_uint8)
    if xa.shape != xb.shape:
        raise ValueError(f"paired image sets differ in shape: {tuple(xa.shape)} vs {tuple(xb.shape)}")
    out = []
    with torch.no_grad():
        for i in range(0, len(xa), batch_size):
            per_stage = []
            for fa, fb in zip(_lite_stage_maps(xa[i : i + batch_size]), _lite_stage_maps(xb[i : i + batch_size])):
                na = fa / (fa.norm(dim=1, keepdim=True) + 1e-10)
                nb = fb / (fb.norm(dim=1, keepdim=True) + 1e-10)
                per_stage.append((na - nb).pow(2).sum(dim=1).mean(dim=(1, 2)))
            out.append(torch.stack(per_stage).mean(dim=0))
    return torch.cat(out).double().numpy()


def lite_perceptual_distance(a_uint8: np.ndarray, b_uint8: np.ndarray) -> float:
    """Mean of ``lite_perceptual_distances`` over the pairs (non-standard, not comparable to LPIPS)."""
    return float(lite_perceptual_distances(a_uint8, b_uint8).mean())
