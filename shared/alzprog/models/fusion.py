"""Inference-time folding of batch normalisation into the convolution before it.

In eval mode a BatchNorm2d is a per-channel affine map, so ``bn(conv(x))`` equals one
convolution with rescaled weights and a shifted bias. Eager PyTorch otherwise makes a separate
pass over every activation for each BatchNorm; folding removes it (about 10 % of the lite
U-Net's eager CPU forward, docs/performance.md; ONNX Runtime does the same at session
creation). The result differs from the unfolded model by float rounding only (~6e-7 on the
generator's [-1, 1] output). Used on a copy that serves; training never sees it.
"""

from __future__ import annotations

import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every (Conv2d | ConvTranspose2d, BatchNorm2d) pair inside an ``nn.Sequential``, in place.

    The model must be in eval mode (running statistics are used). Each folded BatchNorm is
    replaced by ``nn.Identity``; pairs not adjacent in a Sequential are left as they are.
    Returns ``model``.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode")
    for seq in model.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                seq[i] = fuse_conv_bn_eval(conv, bn, transpose=isinstance(conv, nn.ConvTranspose2d))
                seq[i + 1] = nn.Identity()
    return model
