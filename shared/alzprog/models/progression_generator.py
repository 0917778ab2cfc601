"""Stage-transition generators and their discriminators, in one readable file.

Two variants, chosen by ``config["variant"]``:

``dcgan``  -- the published design, reproduced as the baseline: an encoder-decoder generator
             (three 4x4 stride-2 convolutions down to 256 feature maps with batch norm and ReLU,
             three transposed convolutions back to one channel, Tanh) and a four-layer
             discriminator (LeakyReLU(0.2), batch norm, a realness score) that sees only the
             output image. Trained with the adversarial loss alone, nothing ties its output to the
             input brain.

``default`` -- keeps that spirit but preserves identity: a U-Net (skip connections at every
             scale) whose head predicts a *change*, added to the input and confined to the brain
             mask (``output = input + mask * change``), so the background and the skull are the
             input's by construction and a freshly initialised generator is the identity. Its
             discriminator is conditional (PatchGAN-style: it judges the (input, output) pair,
             one score per patch), and with ``roi`` it looks at the brain only: the pair is masked
             to the brain before judging and the patch scores are weighted by the brain fraction
             of each patch (``patch_weights``), as the original study's ROI discriminator.

             Two U-Net architectures, ``config["arch"]``:

             ``lite`` (the presets' choice) -- a stride-2 stem, one 3x3 convolution per stage,
               and a full-resolution head that sees the upsampled features *and* the input image
               and mask. Nothing heavy runs at 256 x 256 (a fraction of the dcgan's work;
               measured cost: docs/progression.md). The disease changes it predicts (ventricles, sulci) are smooth and the
               fine detail is the input's, carried by the residual, so width is spent where the
               change is decided, at low resolution.
             ``unet`` -- the first design: two 3x3 convolutions per stage, starting at full
               resolution (many times the lite design's work). Kept for
               comparison and for artifacts written before ``arch`` existed.
             ``deform`` (the presets' choice) -- not a U-Net: a small encoder at low
               resolution predicts a smooth displacement field (at 1/8 of the frame, upsampled
               bilinearly, bounded by ``max_disp`` pixels through tanh) and a small smooth
               intensity residual; the output is the input resampled along the displacement
               (``grid_sample``) inside the brain, plus the residual, and the input outside it.
               Atrophy is mostly tissue moving (ventricles widening, cortex thinning), which a
               warp expresses with a handful of numbers per 8 x 8 block, where a per-pixel
               change head has to redraw every edge; and the displacement and its Jacobian
               determinant (:meth:`DeformGenerator.displacement`, :meth:`DeformGenerator.jacobian`)
               explain the change for free (> 1 expansion, < 1 contraction).

Every generator has the same interface, ``forward(x, mask=None)``: ``x`` is ``(N, 1, H, W)`` in
[-1, 1] and ``mask`` ``(N, 1, H, W)`` with 0/1 brain mask. For a single-tensor export (ONNX,
:func:`alzprog.artifacts.save_artifact`) the two are stacked as channels: ``x`` of shape
``(N, 2, H, W)`` with ``mask=None`` means channel 0 = image, channel 1 = mask. ``dcgan`` accepts
and ignores the mask. Discriminators return *logits*; the trainer applies the sigmoid inside
``BCEWithLogits`` (the same loss as Sigmoid + BCE, numerically safer).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

VARIANTS = ("default", "dcgan")
ARCHS = ("lite", "unet", "deform")


@dataclass
class GeneratorConfig:
    """Architecture of one transition generator (what ``config.json`` stores besides metadata)."""

    variant: str = "default"
    arch: str = "lite"  # default-variant U-Net: "lite" (fast, the presets') or "unet" (the first, heavy one)
    base_channels: int = 16  # U-Net width of the first stage (lite: at half resolution; unet: at full)
    depth: int = 4  # number of stride-2 downsamplings in the U-Net
    max_change: float = 1.0  # bound of the per-pixel change (tanh-scaled), in [-1, 1] units
    image_size: int = 256  # canonical size the model was trained for (fully convolutional)
    norm: str = "batch"  # U-Net normalisation: "batch" or "none" (no train/eval gap when training on crops)
    max_disp: float = 4.0  # deform: bound of the displacement, in pixels of the frame
    max_residual: float = 0.1  # deform: bound of the smooth intensity residual, in [-1, 1] units
    gain: float = 1.0  # deform: scale of the predicted fields, calibrated on validation pairs after training

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> "GeneratorConfig":
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in config.items() if k in names}
        if "kind" in config and "arch" not in config:
            values["arch"] = "unet"  # a stored artifact from before ``arch`` existed: the first U-Net
        return cls(**values)


def split_input(x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(image, mask)`` from either the pair or the 2-channel stacked tensor."""
    if mask is None:
        if x.shape[1] == 2:
            return x[:, :1], x[:, 1:2]
        # No mask given with a 1-channel image: the whole frame may change.
        return x, torch.ones_like(x)
    return x, mask


def stack_input(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Stack image and mask into the 2-channel tensor used for ONNX export and serving."""
    return torch.cat([x, mask.to(x.dtype)], dim=1)


# --------------------------------------------------------------------------- dcgan (baseline)


class DCGANGenerator(nn.Module):
    """The original encoder-decoder: 1 -> 64 -> 128 -> 256 -> 128 -> 64 -> 1, Tanh output."""

    def __init__(self) -> None:
        super().__init__()

        def down(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]

        def up(cin: int, cout: int) -> list[nn.Module]:
            return [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]

        self.net = nn.Sequential(
            *down(1, 64), *down(64, 128), *down(128, 256),
            *up(256, 128), *up(128, 64),
            nn.ConvTranspose2d(64, 1, 4, 2, 1), nn.Tanh(),
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        image, _ = split_input(x, mask)  # the original never used a brain mask
        return self.net(image)


class DCGANDiscriminator(nn.Module):
    """The original four-layer discriminator; sees only the (possibly ROI-masked) output image.

    Returns a map of realness logits (one per receptive field); the original's single score is
    their mean after the sigmoid, which BCE over the map reproduces.
    """

    def __init__(self, roi: bool = False) -> None:
        super().__init__()
        self.roi = roi
        self.net = nn.Sequential(
            nn.Conv2d(1, 64, 4, 2, 1), nn.LeakyReLU(0.2, True),
            nn.Conv2d(64, 128, 4, 2, 1, bias=False), nn.BatchNorm2d(128), nn.LeakyReLU(0.2, True),
            nn.Conv2d(128, 256, 4, 2, 1, bias=False), nn.BatchNorm2d(256), nn.LeakyReLU(0.2, True),
            nn.Conv2d(256, 1, 4, 1, 1),
        )

    def forward(self, source: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        del source  # unconditional: the original discriminator never saw the input
        if self.roi:
            image = roi_masked(image, mask)
        return self.net(image)


# --------------------------------------------------------------------------- default (ours)


def norm_layer(norm: str, channels: int) -> nn.Module:
    """Batch norm, or nothing (``none``): a crop-trained net then behaves the same on whole frames."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r}; expected 'batch' or 'none'")


def conv_block(cin: int, cout: int, norm: str = "batch") -> nn.Sequential:
    """Two 3x3 convolutions with normalisation and ReLU (one U-Net stage)."""
    bias = norm == "none"
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, 1, 1, bias=bias), norm_layer(norm, cout), nn.ReLU(True),
        nn.Conv2d(cout, cout, 3, 1, 1, bias=bias), norm_layer(norm, cout), nn.ReLU(True),
    )


class ResidualGenerator(nn.Module):
    """Base of the default variant's generators: ``output = clamp(x + mask * change(x, mask), -1, 1)``."""

    downs: nn.ModuleList
    ups: nn.ModuleList
    merges: nn.ModuleList

    def change(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def down_and_up(self, h: torch.Tensor) -> torch.Tensor:
        """The U: down through ``downs`` keeping each scale, back up through ``ups``, each
        followed by a ``merges`` convolution of the upsampled map and that scale's skip."""
        skips = [h]
        for down in self.downs:
            h = down(h)
            skips.append(h)
        skips.pop()  # the bottleneck is h itself
        for up, merge in zip(self.ups, self.merges):
            h = merge(torch.cat([up(h), skips.pop()], dim=1))
        return h

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        image, m = split_input(x, mask)
        m = m.to(image.dtype)
        return torch.clamp(image + m * self.change(image, m), -1.0, 1.0)


class ResidualUNetGenerator(ResidualGenerator):
    """U-Net predicting a brain-confined change: ``output = clamp(x + mask * change, -1, 1)``.

    Downsampling uses the dcgan's 4x4 stride-2 convolutions, upsampling its 4x4 transposed
    convolutions; skip connections carry the subject's anatomy at every scale. The change head is
    zero-initialised, so training starts from the identity and learns only what the disease
    changes. The mask is also an input channel, so the network knows where the brain ends.
    """

    def __init__(self, base_channels: int = 32, depth: int = 3, max_change: float = 1.0, norm: str = "batch") -> None:
        super().__init__()
        self.max_change = float(max_change)
        chans = [base_channels * 2**i for i in range(depth + 1)]
        bias = norm == "none"
        self.stem = conv_block(2, chans[0], norm)
        self.downs = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(chans[i], chans[i + 1], 4, 2, 1, bias=bias), norm_layer(norm, chans[i + 1]), nn.ReLU(True),
                conv_block(chans[i + 1], chans[i + 1], norm),
            )
            for i in range(depth)
        )
        self.ups = nn.ModuleList(
            nn.Sequential(
                nn.ConvTranspose2d(chans[i + 1], chans[i], 4, 2, 1, bias=bias), norm_layer(norm, chans[i]), nn.ReLU(True)
            )
            for i in reversed(range(depth))
        )
        self.merges = nn.ModuleList(conv_block(2 * chans[i], chans[i], norm) for i in reversed(range(depth)))
        self.head = nn.Conv2d(chans[0], 1, 3, 1, 1)
        nn.init.zeros_(self.head.weight)  # identity at initialisation
        nn.init.zeros_(self.head.bias)

    def change(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The predicted change before masking, bounded to ``[-max_change, max_change]``."""
        h = self.down_and_up(self.stem(torch.cat([image, mask], dim=1)))
        return self.max_change * torch.tanh(self.head(h))


def conv_norm_relu(cin: int, cout: int, norm: str, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """One convolution (3x3, or 4x4 stride 2 to downsample), normalisation, ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, 1, bias=norm == "none"), norm_layer(norm, cout), nn.ReLU(True)
    )


def up_norm_relu(cin: int, cout: int, norm: str) -> nn.Sequential:
    """4x4 stride-2 transposed convolution (the dcgan's upsampling), normalisation, ReLU."""
    return nn.Sequential(
        nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=norm == "none"), norm_layer(norm, cout), nn.ReLU(True)
    )


class LiteUNetGenerator(ResidualGenerator):
    """The fast residual U-Net: ``output = clamp(x + mask * change, -1, 1)``, no heavy full-res work.

    Stem: 4x4 stride-2 convolution of (image, mask) to ``base_channels`` at half resolution.
    Encoder: ``depth - 1`` stages of (4x4 stride-2 conv, 3x3 conv), widths doubling. Decoder:
    transposed conv up, concatenate the skip, one 3x3 conv. Head: a transposed conv back to full
    resolution, concatenated with the input image and mask, one zero-initialised 3x3 conv -> the
    change (tanh-bounded). At initialisation the generator is the identity.
    """

    def __init__(self, base_channels: int = 16, depth: int = 4, max_change: float = 1.0, norm: str = "batch") -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.max_change = float(max_change)
        chans = [base_channels * 2**i for i in range(depth)]  # at 1/2, 1/4, ... of the input size
        self.stem = conv_norm_relu(2, chans[0], norm, kernel=4, stride=2)
        self.downs = nn.ModuleList(
            nn.Sequential(conv_norm_relu(chans[i], chans[i + 1], norm, 4, 2), conv_norm_relu(chans[i + 1], chans[i + 1], norm))
            for i in range(depth - 1)
        )
        self.ups = nn.ModuleList(up_norm_relu(chans[i + 1], chans[i], norm) for i in reversed(range(depth - 1)))
        self.merges = nn.ModuleList(conv_norm_relu(2 * chans[i], chans[i], norm) for i in reversed(range(depth - 1)))
        self.final_up = up_norm_relu(chans[0], chans[0], norm)
        # A thin full-resolution path: pixel-scale features of the input, merged with the
        # upsampled context by one more convolution before the head.
        self.full = conv_norm_relu(2, chans[0], norm)
        self.refine = conv_norm_relu(2 * chans[0], chans[0], norm)
        self.head = nn.Conv2d(chans[0] + 2, 1, 3, 1, 1)
        nn.init.zeros_(self.head.weight)  # identity at initialisation
        nn.init.zeros_(self.head.bias)

    def change(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The predicted change before masking, bounded to ``[-max_change, max_change]``."""
        inp = torch.cat([image, mask], dim=1)
        h = self.down_and_up(self.stem(inp))
        h = self.refine(torch.cat([self.final_up(h), self.full(inp)], dim=1))
        return self.max_change * torch.tanh(self.head(torch.cat([h, inp], dim=1)))


class DeformGenerator(nn.Module):
    """Smooth deformation plus a small smooth residual, confined to the brain.

    ``output = clamp(where(mask, warp(x, d) + r, x), -1, 1)`` where ``d`` (pixels) and ``r`` come
    from one encoder at 1/8 resolution: three 4x4 stride-2 convolutions (widths ``base``,
    ``2 base``, ``4 base``), then a small U over 1/16 and 1/32 for context, back at 1/8; the
    head gives (dx, dy, residual), zero-initialised, so training starts from the identity.
    ``d`` and ``r`` are upsampled bilinearly to the frame: both are smooth by construction.
    """

    def __init__(self, base_channels: int = 16, depth: int = 2, max_disp: float = 4.0, max_residual: float = 0.1,
                 norm: str = "none", gain: float = 1.0) -> None:
        super().__init__()
        c = base_channels
        # A regression to a noisy future learns the expected change, which under-states the
        # change of any one subject; the gain (fitted on validation pairs after training, see
        # training.progression.calibrate_gain) restores its amount and leaves its pattern as is.
        self.gain = float(gain)
        self.max_disp = float(max_disp)
        self.max_residual = float(max_residual)
        self.encoder = nn.Sequential(
            conv_norm_relu(2, c, norm, 4, 2), conv_norm_relu(c, 2 * c, norm, 4, 2), conv_norm_relu(2 * c, 4 * c, norm, 4, 2),
            conv_norm_relu(4 * c, 4 * c, norm),
        )
        chans = [4 * c * 2**i for i in range(depth + 1)]  # at 1/8, 1/16, ... of the frame
        self.downs = nn.ModuleList(
            nn.Sequential(conv_norm_relu(chans[i], chans[i + 1], norm, 4, 2), conv_norm_relu(chans[i + 1], chans[i + 1], norm))
            for i in range(depth)
        )
        self.ups = nn.ModuleList(up_norm_relu(chans[i + 1], chans[i], norm) for i in reversed(range(depth)))
        self.merges = nn.ModuleList(conv_norm_relu(2 * chans[i], chans[i], norm) for i in reversed(range(depth)))
        self.head = nn.Conv2d(chans[0], 3, 3, 1, 1)
        nn.init.zeros_(self.head.weight)  # identity at initialisation
        nn.init.zeros_(self.head.bias)

    down_and_up = ResidualGenerator.down_and_up

    def fields(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(displacement ``(N, 2, H, W)`` in pixels, x then y; residual ``(N, 1, H, W)``)."""
        h = self.down_and_up(self.encoder(torch.cat([image, mask], dim=1)))
        raw = F.interpolate(self.head(h), size=image.shape[-2:], mode="bilinear", align_corners=False)
        g = self.gain
        return g * self.max_disp * torch.tanh(raw[:, :2]), g * self.max_residual * torch.tanh(raw[:, 2:3])

    def displacement(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The displacement field ``(N, 2, H, W)`` in pixels (channel 0 along x, 1 along y): output
        pixel ``p`` inside the brain is the input sampled at ``p + d(p)``."""
        image, m = split_input(x, mask)
        return self.fields(image, m.to(image.dtype))[0]

    def jacobian(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Jacobian determinant ``(N, 1, H, W)`` of the output-to-input map ``p -> p + d(p)``.

        Below 1 the output pixel draws on a smaller input area: the tissue there is shown
        expanded (a widening ventricle); above 1 it is contracted (shrinking tissue).
        """
        return jacobian_determinant(self.displacement(x, mask))

    def compose(self, image: torch.Tensor, mask: torch.Tensor, disp: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """The output from given fields (the trainer reuses the fields for their smoothness)."""
        m = mask.to(image.dtype)
        return torch.clamp(image + m * (warp(image, disp) + residual - image), -1.0, 1.0)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        image, m = split_input(x, mask)
        m = m.to(image.dtype)
        disp, residual = self.fields(image, m)
        return self.compose(image, m, disp, residual)


def warp(image: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
    """``image`` sampled at ``p + disp(p)`` (pixels; bilinear, border values outside the frame)."""
    n, _, h, w = image.shape
    ys = torch.arange(h, dtype=image.dtype, device=image.device).view(1, h, 1).expand(n, h, w)
    xs = torch.arange(w, dtype=image.dtype, device=image.device).view(1, 1, w).expand(n, h, w)
    # Pixel centres to grid_sample's [-1, 1] coordinates (align_corners=False).
    gx = (2.0 * (xs + disp[:, 0]) + 1.0) / w - 1.0
    gy = (2.0 * (ys + disp[:, 1]) + 1.0) / h - 1.0
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)


def jacobian_determinant(disp: torch.Tensor) -> torch.Tensor:
    """det(I + grad d) of a pixel displacement ``(N, 2, H, W)``, central differences, ``(N, 1, H, W)``."""
    pad = F.pad(disp, (1, 1, 1, 1), mode="replicate")
    ddx = (pad[:, :, 1:-1, 2:] - pad[:, :, 1:-1, :-2]) / 2.0  # derivative along x of (dx, dy)
    ddy = (pad[:, :, 2:, 1:-1] - pad[:, :, :-2, 1:-1]) / 2.0
    return ((1.0 + ddx[:, 0]) * (1.0 + ddy[:, 1]) - ddy[:, 0] * ddx[:, 1]).unsqueeze(1)


def displacement_smoothness(disp: torch.Tensor) -> torch.Tensor:
    """Mean squared finite difference of a displacement (the diffusion regulariser of registration)."""
    return ((disp[..., 1:, :] - disp[..., :-1, :]) ** 2).mean() + ((disp[..., 1:] - disp[..., :-1]) ** 2).mean()


class ConditionalPatchDiscriminator(nn.Module):
    """PatchGAN judging the (input, output) pair: one realness logit per ~70-pixel patch.

    With ``roi`` both images are masked to the brain (background set to -1, black) before
    judging, so skull and background cannot give a fake away, and the trainer weights the patch
    losses by :func:`patch_weights`.
    """

    def __init__(self, base_channels: int = 32, roi: bool = True) -> None:
        super().__init__()
        self.roi = roi
        c = base_channels
        self.net = nn.Sequential(
            nn.Conv2d(2, c, 4, 2, 1), nn.LeakyReLU(0.2, True),
            nn.Conv2d(c, 2 * c, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * c), nn.LeakyReLU(0.2, True),
            nn.Conv2d(2 * c, 4 * c, 4, 2, 1, bias=False), nn.BatchNorm2d(4 * c), nn.LeakyReLU(0.2, True),
            nn.Conv2d(4 * c, 4 * c, 4, 1, 1, bias=False), nn.BatchNorm2d(4 * c), nn.LeakyReLU(0.2, True),
            nn.Conv2d(4 * c, 1, 4, 1, 1),
        )

    def forward(self, source: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.roi:
            source, image = roi_masked(source, mask), roi_masked(image, mask)
        return self.net(torch.cat([source, image], dim=1))


# --------------------------------------------------------------------------- ROI helpers


def roi_masked(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Keep the brain, paint everything else black (-1), so only the ROI can be judged."""
    m = mask.to(image.dtype)
    return image * m - (1.0 - m)


def patch_weights(mask: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Brain fraction of each discriminator patch, resized to the logit map and normalised.

    Weights sum to the number of patches per image, so the weighted loss keeps the scale of the
    plain mean; an image with no brain at all falls back to uniform weights.
    """
    w = F.adaptive_avg_pool2d(mask.to(logits.dtype), logits.shape[-2:])
    total = w.sum(dim=(-2, -1), keepdim=True)
    n = float(logits.shape[-2] * logits.shape[-1])
    uniform = torch.ones_like(w)
    return torch.where(total > 0, w * n / total.clamp_min(1e-8), uniform)


# --------------------------------------------------------------------------- builders


def build_generator(config: dict[str, Any]) -> nn.Module:
    """Rebuild a generator from its config (``config["variant"]`` in ``default`` / ``dcgan``)."""
    cfg = GeneratorConfig.from_dict(config)
    if cfg.variant == "dcgan":
        return DCGANGenerator()
    if cfg.variant == "default":
        if cfg.arch == "lite":
            return LiteUNetGenerator(cfg.base_channels, cfg.depth, cfg.max_change, cfg.norm)
        if cfg.arch == "unet":
            return ResidualUNetGenerator(cfg.base_channels, cfg.depth, cfg.max_change, cfg.norm)
        if cfg.arch == "deform":
            return DeformGenerator(cfg.base_channels, cfg.depth, cfg.max_disp, cfg.max_residual, cfg.norm, cfg.gain)
        raise ValueError(f"unknown generator arch {cfg.arch!r}; expected one of {ARCHS}")
    raise ValueError(f"unknown progression generator variant {cfg.variant!r}; expected one of {VARIANTS}")


def build_discriminator(config: dict[str, Any]) -> nn.Module:
    """The discriminator that goes with a generator config; ``config["roi"]`` turns the ROI on."""
    variant = config.get("variant", "default")
    roi = bool(config.get("roi", True))
    if variant == "dcgan":
        return DCGANDiscriminator(roi=roi)
    if variant == "default":
        return ConditionalPatchDiscriminator(int(config.get("disc_channels", config.get("base_channels", 32))), roi=roi)
    raise ValueError(f"unknown progression generator variant {variant!r}; expected one of {VARIANTS}")


def generator_config(variant: str = "default", **overrides: Any) -> dict[str, Any]:
    """A complete ``config.json`` body for a generator of ``variant`` (kind included)."""
    cfg = asdict(GeneratorConfig(variant=variant))
    cfg.update(overrides)
    cfg["kind"] = "progression_generator"
    cfg["onnx_input"] = "(N, 2, H, W) float32: channel 0 image in [-1, 1], channel 1 brain mask 0/1"
    cfg["onnx_output"] = "(N, 1, H, W) float32 image in [-1, 1]"
    return cfg


def init_dcgan_weights(module: nn.Module) -> None:
    """DCGAN initialisation: N(0, 0.02) convolutions, N(1, 0.02) batch-norm scales."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
