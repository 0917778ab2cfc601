"""Torch datasets over manifest rows, fed by a cache of canonical slices.

Canonicalisation (decode, brain mask, crop/pad/resize: ``alzprog.preprocessing``) is the
expensive part, so ``CanonicalCache`` does it once per image and keeps the uint8 images and
brain masks as ``N x 256 x 256`` arrays, optionally persisted as ``.npy`` under
``<data_home>/cache/canonical-<key>/`` and memory-mapped on reuse. The key hashes the paths,
their mtimes and sizes, the canonical size and the sources of ``alzprog.decode`` and
``alzprog.preprocessing``, so a
changed file or a changed preprocessing path never serves stale pixels.

Training augmentation works on batched tensors (``augment_batch``): one ``affine_grid`` +
``grid_sample`` call does per-sample flips and rotations, brightness/contrast are per-sample
broadcasts. Run it on the training device after collation (``StageSliceDataset(...,
augment_in_dataset=False)``) so DataLoader workers never become the bottleneck; with the
default ``augment_in_dataset=True`` the same function runs per sample inside the dataset.

Fastest path (``StageSliceDataset(..., pixels=True)``): samples are the uint8 pixels that
``classifier_input`` normalises, shaped (1, S, S), i.e. 12x fewer bytes through worker
queues, pinned memory and the host-to-device copy than float (3, S, S) inputs; then
``classifier_batch(x.to(device), mean, std, augment=train)`` (or ``augment_batch``, which
accepts uint8 too) finishes the batch on the device with the same arithmetic as
``classifier_input`` (tests/test_dataset.py checks they agree).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, WeightedRandomSampler
from tqdm.auto import tqdm

from alzprog.paths import data_home

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the on-disk layout of the cache changes


def _preprocessing():
    # Imported lazily: the module is the one preprocessing path shared with serving.
    from alzprog import preprocessing

    return preprocessing


def _preprocessing_fingerprint() -> str:
    """Hash of the decode + preprocessing sources: a change to the one preprocessing path
    (or to how files are decoded) invalidates every cache built with the old one."""
    from alzprog import decode
    from alzprog.preprocessing import canonical, tensors

    h = hashlib.sha256()
    for module in (decode, canonical, tensors):
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()


def cache_key(paths: Sequence[str | Path], size: int) -> str:
    """Key of a canonical cache: paths + mtimes + file sizes + canonical size + preprocessing source."""
    h = hashlib.sha256()
    h.update(f"format={CACHE_FORMAT};size={size};pp={_preprocessing_fingerprint()}\n".encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}\0{st.st_mtime_ns}\0{st.st_size}\n".encode())
    return h.hexdigest()


def _canonicalize_chunk(paths: list[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Canonicalise a chunk of paths in a worker process; (images, masks) stacked."""
    images = np.empty((len(paths), size, size), dtype=np.uint8)
    masks = np.empty((len(paths), size, size), dtype=np.bool_)
    for j, path in enumerate(paths):
        try:
            c = _canonicalize_path(path, size)
        except Exception as exc:
            raise RuntimeError(f"cannot canonicalise {path}: {exc}") from exc
        images[j], masks[j] = c.image, c.mask
    return images, masks


def _canonicalize_path(path: str, size: int):
    pp = _preprocessing()
    if hasattr(pp, "load_canonical"):
        return pp.load_canonical(path, size=size)
    from alzprog.decode import read_slice

    return pp.canonicalize(read_slice(path), size=size)


class CanonicalCache:
    """Canonical uint8 slices and brain masks of a list of image paths, computed once.

    ``images[i]`` / ``masks[i]`` belong to ``paths[i]``; ``index_of(paths)`` maps paths to rows.
    Build with ``CanonicalCache.build(paths, ...)``.
    """

    def __init__(self, paths: Sequence[str], images: np.ndarray, masks: np.ndarray, directory: Path | None = None):
        if images.shape[0] != len(paths) or masks.shape != images.shape:
            raise ValueError("cache arrays do not match the path list")
        self.paths = [str(p) for p in paths]
        self.images = images
        self.masks = masks
        self.directory = directory
        self._row = {p: i for i, p in enumerate(self.paths)}

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    def __len__(self) -> int:
        return len(self.paths)

    def index_of(self, paths: Sequence[str | Path]) -> np.ndarray:
        """Row of each path (KeyError naming the first path that is not cached)."""
        try:
            return np.fromiter((self._row[str(p)] for p in paths), dtype=np.int64, count=len(paths))
        except KeyError as exc:
            raise KeyError(f"path not in the canonical cache: {exc.args[0]}") from None

    def get(self, path: str | Path) -> tuple[np.ndarray, np.ndarray]:
        """(image uint8 HxW, mask bool HxW) of one cached path."""
        i = self._row[str(path)]
        return np.asarray(self.images[i]), np.asarray(self.masks[i])

    # A persisted cache pickles as its folder (DataLoader workers reopen the memory map
    # instead of copying gigabytes through a pipe).
    def __getstate__(self) -> dict:
        if self.directory is not None:
            return {"directory": str(self.directory)}
        return {"paths": self.paths, "images": self.images, "masks": self.masks, "directory": None}

    def __setstate__(self, state: dict) -> None:
        if state.get("directory"):
            other = CanonicalCache.open(Path(state["directory"]))
            self.__dict__.update(other.__dict__)
        else:
            self.__init__(state["paths"], state["images"], state["masks"], None)

    @classmethod
    def open(cls, directory: Path) -> CanonicalCache:
        """Memory-map a persisted cache folder."""
        directory = Path(directory)
        meta = json.loads((directory / "meta.json").read_text())
        if meta.get("format") != CACHE_FORMAT:
            raise ValueError(f"cache {directory} has format {meta.get('format')}, expected {CACHE_FORMAT}")
        paths = json.loads((directory / "paths.json").read_text())
        images = np.load(directory / "images.npy", mmap_mode="r")
        masks = np.load(directory / "masks.npy", mmap_mode="r")
        return cls(paths, images, masks, directory)

    @classmethod
    def build(
        cls,
        paths: Sequence[str | Path],
        size: int = 256,
        *,
        persist: bool = True,
        cache_root: Path | None = None,
        workers: int | None = None,
        processes: bool | None = None,
        progress: bool = True,
    ) -> CanonicalCache:
        """Canonicalise every (unique) path once, or reopen the persisted cache of the same inputs.

        ``persist=True`` writes ``<cache_root or data_home()/cache>/canonical-<key>/`` (arrays are
        filled straight into memory-mapped ``.npy`` files, so the full 86k-slice dataset never
        needs ~11 GB of RAM) and memory-maps it; ``persist=False`` keeps everything in memory.

        The brain mask is mostly scipy.ndimage morphology, which holds the GIL, so large builds
        use worker processes (``processes=None``: when there are > 256 paths and more than one
        CPU); small ones use threads (no process start-up cost).
        """
        unique = list(dict.fromkeys(str(Path(p)) for p in paths))
        if not unique:
            raise ValueError("no paths to cache")
        directory: Path | None = None
        if persist:
            key = cache_key(unique, size)
            directory = Path(cache_root or data_home() / "cache") / f"canonical-{key[:24]}"
            if (directory / "meta.json").exists():
                try:
                    cache = cls.open(directory)
                    if cache.paths == unique:
                        log.info("reusing canonical cache %s (%d slices)", directory, len(unique))
                        return cache
                except Exception as exc:  # noqa: BLE001 - a damaged cache is rebuilt, not fatal
                    log.warning("rebuilding damaged canonical cache %s: %s", directory, exc)
                shutil.rmtree(directory, ignore_errors=True)

        n = len(unique)
        tmp: Path | None = None
        if directory is not None:
            tmp = directory.with_name(directory.name + f".tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, size, size))
            masks = np.lib.format.open_memmap(tmp / "masks.npy", mode="w+", dtype=np.bool_, shape=(n, size, size))
        else:
            images = np.empty((n, size, size), dtype=np.uint8)
            masks = np.empty((n, size, size), dtype=np.bool_)

        def work(i: int) -> None:
            try:
                c = _canonicalize_path(unique[i], size)
            except Exception as exc:
                raise RuntimeError(f"cannot canonicalise {unique[i]}: {exc}") from exc
            images[i] = c.image
            masks[i] = c.mask

        cpus = os.cpu_count() or 2
        if processes is None:
            processes = n > 256 and cpus > 1
        try:
            if processes:
                from concurrent.futures import ProcessPoolExecutor

                chunk = 32
                starts = list(range(0, n, chunk))
                with ProcessPoolExecutor(max_workers=workers or min(16, cpus)) as pool, tqdm(
                    total=n, desc="canonicalise", unit="img", disable=not progress
                ) as bar:
                    for start, (imgs, msks) in zip(
                        starts, pool.map(_canonicalize_chunk, [unique[i : i + chunk] for i in starts], [size] * len(starts))
                    ):
                        images[start : start + len(imgs)] = imgs
                        masks[start : start + len(msks)] = msks
                        bar.update(len(imgs))
            else:
                with ThreadPoolExecutor(max_workers=workers or min(8, cpus)) as pool:
                    for _ in tqdm(pool.map(work, range(n)), total=n, desc="canonicalise", unit="img",
                                  disable=not progress):
                        pass
        except BaseException:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            raise

        if directory is None:
            return cls(unique, images, masks, None)
        images.flush()
        masks.flush()
        del images, masks
        (tmp / "paths.json").write_text(json.dumps(unique))
        (tmp / "meta.json").write_text(json.dumps({"format": CACHE_FORMAT, "size": size, "n": n}))
        try:
            os.replace(tmp, directory)  # atomic: readers never see a half-written cache
        except OSError:  # another process won the race; use its copy
            shutil.rmtree(tmp, ignore_errors=True)
        return cls.open(directory)


# ---------------------------------------------------------------------------------------------
# Batched augmentation


@dataclass
class AugmentParams:
    """Per-sample augmentation parameters (tensors of length B)."""

    angle_deg: torch.Tensor  # counter-clockwise, like torchvision.transforms.v2.functional.rotate
    flip: torch.Tensor  # bool: horizontal flip (applied before the rotation)
    brightness: torch.Tensor  # multiplicative factor, like adjust_brightness
    contrast: torch.Tensor  # blend factor towards the image mean, like adjust_contrast


def sample_augment_params(
    n: int,
    *,
    max_rotation: float = 15.0,
    flip_p: float = 0.5,
    brightness: float = 0.1,
    contrast: float = 0.1,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> AugmentParams:
    """Draw per-sample parameters: rotation U(-r, r) degrees, flip p, factors U(1-b, 1+b)."""
    # Drawn where the generator lives (on the batch's device when there is none: no host sync).
    u = torch.rand(4, n, generator=generator, device=generator.device if generator is not None else device)
    u = u.to(device)
    return AugmentParams(
        angle_deg=(u[0] * 2 - 1) * max_rotation,
        flip=u[1] < flip_p,
        brightness=1 + (u[2] * 2 - 1) * brightness,
        contrast=1 + (u[3] * 2 - 1) * contrast,
    )


def _stats(values: Sequence[float] | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=x.dtype, device=x.device).reshape(-1)
    if t.numel() == 1:
        t = t.expand(x.shape[1])
    return t.reshape(1, -1, 1, 1)


def apply_augment(
    x: torch.Tensor, mean: Sequence[float], std: Sequence[float], params: AugmentParams
) -> torch.Tensor:
    """Apply ``params`` to a normalised batch (B, C, H, W); returns a new normalised batch.

    Works in the un-normalised [0, 1] domain so that rotation fills with black (the MRI
    background) and the brightness/contrast factors mean what torchvision means by them.
    """
    if x.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) batch, got shape {tuple(x.shape)}")
    m, s = _stats(mean, x), _stats(std, x)
    return (_augment01(x * s + m, params) - m) / s


def _augment01(x01: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """The augmentation proper, on (B, C, H, W) intensities in [0, 1]."""
    x = x01
    b, _, h, w = x.shape
    dev = x.device
    a = params.angle_deg.to(device=dev, dtype=x.dtype) * (math.pi / 180)
    f = torch.where(params.flip.to(dev), -1.0, 1.0).to(x.dtype)
    cos, sin = torch.cos(a), torch.sin(a)
    # affine_grid maps each output location to the input location it samples, in normalised
    # coordinates. This theta equals torchvision's rotate (counter-clockwise, about the centre)
    # after hflip; the h/w factors keep the rotation rigid in pixel units on non-square images.
    # tests/test_dataset.py checks it against torchvision.transforms.v2.functional.
    theta = torch.zeros(b, 2, 3, dtype=x.dtype, device=dev)
    theta[:, 0, 0] = f * cos
    theta[:, 0, 1] = f * -sin * (h / w)
    theta[:, 1, 0] = sin * (w / h)
    theta[:, 1, 1] = cos
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    out = torch.nn.functional.grid_sample(x01, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = out * params.brightness.to(device=dev, dtype=x.dtype).view(b, 1, 1, 1)
    out = out.clamp(0, 1)
    c = params.contrast.to(device=dev, dtype=x.dtype).view(b, 1, 1, 1)
    gray_mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return (c * out + (1 - c) * gray_mean).clamp(0, 1)


def pixels_to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (B, 1, H, W) -> float32 in [0, 1], as ``classifier_input`` divides (by 255)."""
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"expected uint8 (B, 1, H, W) pixels, got {x.dtype} {tuple(x.shape)}")
    return x.to(torch.float32) / 255.0


def normalize_unit(x01: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """[0, 1] grayscale (B, 1, H, W) -> normalised (B, 3, H, W): replicate, subtract mean, divide by std
    (the last step of ``classifier_input``)."""
    x3 = x01.expand(-1, 3, -1, -1)
    return (x3 - _stats(mean, x3)) / _stats(std, x3)


def classifier_batch(
    x: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    augment: bool,
    generator: torch.Generator | None = None,
    **augment_kwargs: float,
) -> torch.Tensor:
    """Finish a collated batch on its device: uint8 pixels (B, 1, S, S) from a ``pixels=True``
    dataset or normalised floats (B, 3, S, S) -> normalised (B, 3, S, S), augmented if asked."""
    if augment:
        return augment_batch(x, mean, std, generator=generator, **augment_kwargs)
    if x.dtype == torch.uint8:
        return normalize_unit(pixels_to_unit(x), mean, std)
    return x


def augment_batch(
    x: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    generator: torch.Generator | None = None,
    max_rotation: float = 15.0,
    flip_p: float = 0.5,
    brightness: float = 0.1,
    contrast: float = 0.1,
) -> torch.Tensor:
    """Training augmentation of a batch on whatever device it lives on; returns normalised (B, 3, H, W).

    Horizontal flip (p=0.5), rotation U(-15, 15) degrees, brightness and contrast factors
    U(0.9, 1.1), each drawn per sample. ``x`` is a normalised float batch (B, 3, H, W) or uint8
    pixels (B, 1, H, W) from a ``pixels=True`` dataset (augmented on one channel: 3x cheaper).
    """
    params = sample_augment_params(
        x.shape[0], max_rotation=max_rotation, flip_p=flip_p, brightness=brightness, contrast=contrast,
        generator=generator, device=x.device,
    )
    if x.dtype == torch.uint8:
        return normalize_unit(_augment01(pixels_to_unit(x), params), mean, std)
    return apply_augment(x, mean, std, params)


# ---------------------------------------------------------------------------------------------
# Datasets and sampler


def _subject_codes(frame: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    subjects = sorted(frame["subject"].astype(str).unique())
    code = {s: i for i, s in enumerate(subjects)}
    return subjects, frame["subject"].astype(str).map(code).to_numpy(dtype=np.int64)


class StageSliceDataset(Dataset):
    """Classifier samples ``(input (3, size, size) float, stage_index, subject_idx)``.

    ``subject_idx`` indexes ``self.subjects`` (sorted subject ids of ``frame``) so evaluation
    can aggregate per subject. With ``train=True`` and ``augment_in_dataset=True`` each sample
    is augmented here; set ``augment_in_dataset=False`` and call ``augment_batch`` on the
    device after collation for speed. With ``pixels=True`` the input is instead the uint8
    (1, size, size) pixels of ``classifier_input`` (never augmented here): finish batches with
    ``classifier_batch`` / ``augment_batch`` on the device (the fastest path).
    """

    def __init__(
        self,
        frame: pd.DataFrame,
        cache: CanonicalCache,
        size: int,
        train: bool,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        augment_in_dataset: bool = True,
        pixels: bool = False,
    ):
        self.frame = frame.reset_index(drop=True)
        self.cache = cache
        self.size = int(size)
        self.train = bool(train)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.augment_in_dataset = augment_in_dataset and not pixels
        self.pixels = pixels
        self.rows = cache.index_of(list(self.frame["path"]))
        self.labels = self.frame["stage_index"].to_numpy(dtype=np.int64)
        self.subjects, self.subject_idx = _subject_codes(self.frame)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        image = np.asarray(self.cache.images[self.rows[i]])
        if self.pixels:
            # classifier_input with an identity normalisation is exactly g8 / 255 in [0, 1]:
            # recover g8 (resized by the one preprocessing path) losslessly as uint8.
            x01 = _preprocessing().classifier_input(image, self.size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
            x = (x01[:1] * 255.0).round_().to(torch.uint8)
            return x, int(self.labels[i]), int(self.subject_idx[i])
        x = _preprocessing().classifier_input(image, self.size, self.mean, self.std)
        if self.train and self.augment_in_dataset:
            x = augment_batch(x.unsqueeze(0), self.mean, self.std)[0]
        return x, int(self.labels[i]), int(self.subject_idx[i])


class CanonicalSliceDataset(Dataset):
    """Generator samples ``(image (1, H, W) in [-1, 1], mask (1, H, W), stage_index, subject_idx)``."""

    def __init__(self, frame: pd.DataFrame, cache: CanonicalCache):
        self.frame = frame.reset_index(drop=True)
        self.cache = cache
        self.rows = cache.index_of(list(self.frame["path"]))
        self.labels = self.frame["stage_index"].to_numpy(dtype=np.int64)
        self.subjects, self.subject_idx = _subject_codes(self.frame)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        pp = _preprocessing()
        r = self.rows[i]
        image = pp.generator_input(np.asarray(self.cache.images[r]))
        mask = pp.mask_tensor(np.asarray(self.cache.masks[r]))
        return image, mask, int(self.labels[i]), int(self.subject_idx[i])


def subject_balanced_weights(frame: pd.DataFrame) -> np.ndarray:
    """Per-row sampling weight: every present stage has equal total mass, and within a stage
    every subject has equal mass, shared evenly by its images. Sums to 1."""
    stage = frame["stage_index"].to_numpy()
    subject = frame["subject"].astype(str).to_numpy()
    key = pd.Series(list(zip(stage, subject)))
    images_per_subject = key.map(key.value_counts()).to_numpy(dtype=np.float64)
    subjects_per_stage = (
        frame.groupby("stage_index")["subject"].nunique().reindex(stage).to_numpy(dtype=np.float64)
    )
    n_stages = float(len(np.unique(stage)))
    return 1.0 / (n_stages * subjects_per_stage * images_per_subject)


def make_subject_balanced_sampler(
    frame: pd.DataFrame, num_samples: int | None = None, generator: torch.Generator | None = None
) -> WeightedRandomSampler:
    """WeightedRandomSampler (with replacement) over ``frame`` rows using ``subject_balanced_weights``.

    Counteracts both the 266/58/21/2 subject imbalance of OASIS and the uneven number of
    images per subject. ``num_samples`` defaults to ``len(frame)`` (one "epoch").
    """
    weights = torch.as_tensor(subject_balanced_weights(frame), dtype=torch.double)
    return WeightedRandomSampler(weights, num_samples or len(frame), replacement=True, generator=generator)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    sampler: torch.utils.data.Sampler | None = None,
    shuffle: bool = False,
    num_workers: int | None = None,
    device: torch.device | str = "cpu",
    drop_last: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader tuned for these datasets: worker processes, pinned memory on CUDA,
    persistent workers and a deep prefetch queue so the accelerator never waits on the CPU.

    ``num_workers`` defaults to min(8, CPUs - 1) (0 on a machine with 1-2 CPUs, where
    worker processes only add copying).
    """
    cpus = os.cpu_count() or 1
    if num_workers is None:
        num_workers = 0 if cpus <= 2 else min(8, cpus - 1)
    cuda = torch.device(device).type == "cuda"
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=shuffle if sampler is None else False,
        num_workers=num_workers,
        pin_memory=cuda,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
        drop_last=drop_last,
    )


# ---------------------------------------------------------------------------------------------
# Throughput check: the training loop fed by this pipeline vs by in-memory tensors
# (run it with ``python -m benchmarks.loader_throughput``)


def loader_step_rates(
    *,
    arch: str = "efficientnet_b4",
    image_size: int = 256,
    batch_size: int = 64,
    steps: int = 60,
    warmup: int = 15,
    num_workers: int | None = None,
    n_images: int = 4096,
    device: str = "cuda",
    seed: int = 0,
) -> dict:
    """Steps/s of one classifier training step (bf16 autocast on CUDA, AdamW, batched on-device
    augmentation) fed (a) by normalised tensors already on the device, (b) by ``StageSliceDataset``
    float inputs and (c) by ``pixels=True`` uint8 inputs, both through ``make_loader``.
    Synthetic canonical slices stand in for a dataset: the pipeline's cost does not depend on
    the pixel values. Ratios are (b)/(a) and (c)/(a).

    Use ``pixels=True``: the float path starves the step (measured figures: docs/performance.md,
    section 5; command: ``python -m benchmarks.loader_throughput``).
    """
    import time

    from alzprog import preprocessing as pp
    from alzprog.models.stage_classifier import build_stage_classifier

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n_images, 256, 256), dtype=np.uint8)
    masks = np.zeros_like(images, dtype=bool)
    masks[:, 32:224, 32:224] = True
    paths = [f"synthetic/{i}.png" for i in range(n_images)]
    frame = pd.DataFrame({
        "path": paths, "stage_index": rng.integers(0, 4, n_images), "subject": [f"S{i // 20}" for i in range(n_images)],
    })
    cache = CanonicalCache(paths, images, masks)
    mean, std = pp.IMAGENET_MEAN, pp.IMAGENET_STD
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    model = build_stage_classifier({"arch": arch}).to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        x = augment_batch(x, mean, std).contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def timed(fn) -> float:
        for _ in range(warmup):
            fn()
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        sync()
        return steps / (time.perf_counter() - t0)

    # (a) in-memory: a few batches of real classifier inputs resident on the device
    ds = StageSliceDataset(frame, cache, image_size, train=True, mean=mean, std=std, augment_in_dataset=False)
    k = 8
    xs = torch.stack([ds[i][0] for i in range(k * batch_size)]).to(dev).view(k, batch_size, 3, image_size, image_size)
    ys = torch.tensor(frame["stage_index"].to_numpy()[: k * batch_size], device=dev).view(k, batch_size)
    counter = iter(range(10**9))

    def memory_step() -> None:
        i = next(counter) % k
        step(xs[i], ys[i])

    result: dict = {
        "arch": arch, "image_size": image_size, "batch_size": batch_size, "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if cuda else "cpu", "steps": steps,
        "memory_steps_per_s": round(timed(memory_step), 2),
    }
    for name, pixels in (("float", False), ("pixels", True)):
        ds = StageSliceDataset(frame, cache, image_size, train=True, mean=mean, std=std,
                               augment_in_dataset=False, pixels=pixels)
        sampler = make_subject_balanced_sampler(frame, num_samples=(2 * steps + 2 * warmup + 4) * batch_size)
        loader = make_loader(ds, batch_size, sampler=sampler, num_workers=num_workers, device=device, drop_last=True)
        it = iter(loader)

        def loader_step() -> None:
            x, y, _ = next(it)
            step(x.to(dev, non_blocking=True), y.to(dev, non_blocking=True))

        def pipeline_only() -> None:
            x, _, _ = next(it)
            augment_batch(x.to(dev, non_blocking=True), mean, std)

        result["num_workers"] = loader.num_workers
        result[f"loader_{name}_steps_per_s"] = round(timed(loader_step), 2)
        result[f"pipeline_only_{name}_steps_per_s"] = round(timed(pipeline_only), 2)
        result[f"ratio_{name}"] = round(result[f"loader_{name}_steps_per_s"] / result["memory_steps_per_s"], 3)
        del it, loader
    return result
