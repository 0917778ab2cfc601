"""Shared training plumbing: device choice, seeds, torchrun / DDP context, AMP, environment, curves."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import random
from dataclasses import dataclass, field
from datetime import timedelta
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


def select_device(pref: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU; any other value is used as given."""
    pref = (pref or "auto").lower()
    if pref != "auto":
        return torch.device(pref)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; ``deterministic`` also forces deterministic kernels (slower)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


@dataclass
class DistContext:
    """Process-group context from the torchrun environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).

    Without torchrun it is a single process (rank 0 of 1) and every helper is a no-op.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def from_env(cls, device_pref: str = "auto") -> "DistContext":
        """Initialise the process group when launched by torchrun (nccl on CUDA, gloo otherwise)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = select_device(device_pref)
        if world <= 1:
            return cls(device=device)
        if device.type == "cuda":
            torch.cuda.set_device(local)
            device = torch.device("cuda", local)
            backend = "nccl"
        else:
            # MPS has no collective backend; gloo on CPU.
            device = torch.device("cpu")
            backend = "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
        return cls(rank=rank, world_size=world, local_rank=local, backend=backend, device=device)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over all processes (in place; returned for chaining)."""
        if self.distributed:
            if self.backend == "nccl":
                t = t.to(self.device)
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Gather one picklable Python object (e.g. a list of predictions) from each process."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def cleanup(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


@contextlib.contextmanager
def autocast_context(device: torch.device, enabled: bool = True) -> Iterator[None]:
    """Mixed precision on CUDA (bfloat16 when supported, else float16); a no-op elsewhere."""
    if enabled and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        with torch.autocast(device_type="cuda", dtype=dtype):
            yield
    else:
        yield


def environment_info() -> dict[str, Any]:
    """Python, platform, accelerator and the versions of the packages that shape results."""
    packages = (
        "torch", "torchvision", "numpy", "scipy", "scikit-learn", "scikit-image", "pandas",
        "pillow", "onnx", "onnxruntime", "mlflow", "safetensors", "alzprog",
    )
    versions = {}
    for p in packages:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "packages": versions,
    }
    if torch.cuda.is_available():
        info["cuda"] = torch.version.cuda
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def plot_curves(history: list[dict[str, Any]], path: Path | str, metrics: tuple[str, ...] = ("loss", "accuracy", "macro_f1"), title: str = "") -> Path:
    """Plot per-epoch ``train_<m>`` / ``val_<m>`` curves, one panel per metric, phases shaded.

    ``history`` rows hold ``epoch`` (global), optional ``phase`` and the metric keys.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    epochs = [row["epoch"] for row in history]
    phases = [row.get("phase") for row in history]
    for ax, m in zip(axes[0], metrics):
        for split, style in (("train", "-o"), ("val", "-s")):
            key = f"{split}_{m}"
            ys = [row.get(key) for row in history]
            if any(y is not None for y in ys):
                ax.plot(epochs, [np.nan if y is None else y for y in ys], style, ms=3, label=split)
        # Mark where a new phase starts (e.g. backbone unfrozen).
        for i in range(1, len(phases)):
            if phases[i] != phases[i - 1]:
                ax.axvline(epochs[i] - 0.5, color="grey", ls="--", lw=1)
                ax.text(epochs[i] - 0.4, ax.get_ylim()[1], f" {phases[i]}", va="top", fontsize=7, color="grey")
        ax.set_xlabel("epoch")
        ax.set_title(m.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
