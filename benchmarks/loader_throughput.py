"""Training steps/s fed by the data pipeline against in-memory tensors (the classifier loader check).

    .venv/bin/python -m benchmarks.loader_throughput --arch efficientnet_b4 --batch-size 64 --workers 8

Prints the JSON of :func:`alzprog.data.dataset.loader_step_rates` (steps/s of one classifier
training step fed from device memory, from float ``StageSliceDataset`` inputs and from
``pixels=True`` uint8 inputs, and their ratios). Figures measured with it: docs/performance.md.
"""

from __future__ import annotations

import argparse
import json


def main(argv: list[str] | None = None) -> None:
    import torch

    from alzprog.data.dataset import loader_step_rates

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="efficientnet_b4")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=15)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = parser.parse_args(argv)
    print(json.dumps(loader_step_rates(
        arch=a.arch, image_size=a.image_size, batch_size=a.batch_size, steps=a.steps, warmup=a.warmup,
        num_workers=a.workers, device=a.device,
    )))


if __name__ == "__main__":
    main()
