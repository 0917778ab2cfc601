"""Canonical cache, torch datasets, batched augmentation and the subject-balanced sampler."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from alzprog.data.dataset import (
    AugmentParams,
    CanonicalCache,
    CanonicalSliceDataset,
    StageSliceDataset,
    apply_augment,
    augment_batch,
    classifier_batch,
    make_loader,
    make_subject_balanced_sampler,
    subject_balanced_weights,
)
from alzprog.data.manifest import build_manifest

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def real_manifest(oasis_samples: Path) -> pd.DataFrame:
    return build_manifest(oasis_samples, progress=False)


@pytest.fixture(scope="module")
def real_cache(real_manifest: pd.DataFrame) -> CanonicalCache:
    return CanonicalCache.build(list(real_manifest["path"]), persist=False, progress=False)


def test_cache_holds_canonical_uint8_and_masks(real_cache: CanonicalCache, real_manifest: pd.DataFrame) -> None:
    assert real_cache.images.shape == (20, 256, 256) and real_cache.images.dtype == np.uint8
    assert real_cache.masks.shape == (20, 256, 256) and real_cache.masks.dtype == np.bool_
    # the brain is a sizeable part of a canonical slice, not empty and not everything
    frac = real_cache.masks.reshape(20, -1).mean(axis=1)
    assert (frac > 0.05).all() and (frac < 0.95).all()
    image, mask = real_cache.get(real_manifest["path"].iloc[3])
    assert np.array_equal(image, real_cache.images[3]) and np.array_equal(mask, real_cache.masks[3])
    with pytest.raises(KeyError, match="not in the canonical cache"):
        real_cache.index_of(["/nope.jpg"])


def test_persisted_cache_is_reused_memory_mapped_and_invalidated(oasis_samples: Path, tmp_path: Path) -> None:
    files = sorted(oasis_samples.rglob("*.jpg"))[:3]
    copies = []
    for f in files:
        dst = tmp_path / "imgs" / f.name
        dst.parent.mkdir(exist_ok=True)
        dst.write_bytes(f.read_bytes())
        copies.append(str(dst))
    root = tmp_path / "cache"
    first = CanonicalCache.build(copies, cache_root=root, progress=False)
    assert first.directory is not None and (first.directory / "images.npy").exists()
    assert isinstance(first.images, np.memmap)
    second = CanonicalCache.build(copies, cache_root=root, progress=False)
    assert second.directory == first.directory
    assert np.array_equal(np.asarray(first.images), np.asarray(second.images))
    # a persisted cache pickles as its folder (DataLoader workers) and reopens the same data
    blob = pickle.dumps(second)
    assert len(blob) < 10_000
    again = pickle.loads(blob)
    assert np.array_equal(np.asarray(again.masks), np.asarray(second.masks))
    # a touched file changes the key
    st = os.stat(copies[0])
    os.utime(copies[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = CanonicalCache.build(copies, cache_root=root, progress=False)
    assert third.directory != first.directory
    assert sorted(p.name for p in root.iterdir() if ".tmp-" in p.name) == []


def test_stage_slice_dataset_shapes_and_augmentation(real_manifest: pd.DataFrame, real_cache: CanonicalCache) -> None:
    ev = StageSliceDataset(real_manifest, real_cache, 64, train=False, mean=MEAN, std=STD)
    assert len(ev) == 20 and ev.subjects == sorted(real_manifest["subject"].unique())
    x, y, s = ev[7]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert y == int(real_manifest["stage_index"].iloc[7])
    assert ev.subjects[s] == real_manifest["subject"].iloc[7]
    assert torch.equal(ev[7][0], x)  # eval: deterministic
    tr = StageSliceDataset(real_manifest, real_cache, 64, train=True, mean=MEAN, std=STD)
    torch.manual_seed(0)
    outs = [tr[7][0] for _ in range(4)]
    assert all(o.shape == (3, 64, 64) for o in outs)
    assert any(not torch.allclose(outs[0], o) for o in outs[1:])  # augmentation changes the input
    assert (outs[0] - x).abs().mean() < 1.0  # but stays an augmented copy of the same slice
    loader = torch.utils.data.DataLoader(
        StageSliceDataset(real_manifest, real_cache, 64, train=True, mean=MEAN, std=STD, augment_in_dataset=False),
        batch_size=8, sampler=make_subject_balanced_sampler(real_manifest, generator=torch.Generator().manual_seed(0)),
    )
    xb, yb, sb = next(iter(loader))
    assert xb.shape == (8, 3, 64, 64) and yb.dtype == torch.int64 and sb.shape == (8,)
    assert augment_batch(xb, MEAN, STD, generator=torch.Generator().manual_seed(1)).shape == xb.shape


def test_pixels_path_equals_classifier_input(real_manifest: pd.DataFrame, real_cache: CanonicalCache) -> None:
    """The fast path (uint8 through the loader, normalised on the device) is the same function."""
    ref = StageSliceDataset(real_manifest, real_cache, 96, train=False, mean=MEAN, std=STD)
    fast = StageSliceDataset(real_manifest, real_cache, 96, train=True, mean=MEAN, std=STD, pixels=True)
    u8, y, s = fast[5]
    assert u8.shape == (1, 96, 96) and u8.dtype == torch.uint8 and (y, s) == ref[5][1:]
    loader = make_loader(fast, 4, num_workers=0)
    xb, _, _ = next(iter(loader))
    expected = torch.stack([ref[i][0] for i in range(4)])
    assert torch.allclose(classifier_batch(xb, MEAN, STD, augment=False), expected, atol=1e-6)
    # augmenting uint8 pixels (one channel) == augmenting the normalised float input, same draws
    a = augment_batch(expected, MEAN, STD, generator=torch.Generator().manual_seed(5))
    b = classifier_batch(xb, MEAN, STD, augment=True, generator=torch.Generator().manual_seed(5))
    assert b.shape == (4, 3, 96, 96) and torch.allclose(a, b, atol=1e-5)


def test_canonical_slice_dataset_for_generators(real_manifest: pd.DataFrame, real_cache: CanonicalCache) -> None:
    ds = CanonicalSliceDataset(real_manifest, real_cache)
    image, mask, y, s = ds[0]
    assert image.shape == (1, 256, 256) and image.dtype == torch.float32
    assert image.min() >= -1 and image.max() <= 1
    assert mask.shape[-2:] == (256, 256)
    assert y == int(real_manifest["stage_index"].iloc[0])


def _params(angle=0.0, flip=False, b=1.0, c=1.0, n=1) -> AugmentParams:
    return AugmentParams(
        torch.full((n,), angle), torch.full((n,), flip), torch.full((n,), b), torch.full((n,), c)
    )


def test_augmentation_matches_torchvision_per_sample_ops() -> None:
    g = torch.Generator().manual_seed(0)
    x01 = torch.rand(1, 1, 40, 40, generator=g).expand(1, 3, 40, 40).contiguous()  # gray as 3 channels
    m = torch.tensor(MEAN).view(1, 3, 1, 1)
    s = torch.tensor(STD).view(1, 3, 1, 1)
    x = (x01 - m) / s
    back = lambda t: t * s + m  # noqa: E731
    assert torch.allclose(apply_augment(x, MEAN, STD, _params()), x, atol=1e-5)
    assert torch.allclose(back(apply_augment(x, MEAN, STD, _params(flip=True))), TF.hflip(x01), atol=1e-5)
    ours = back(apply_augment(x, MEAN, STD, _params(angle=12.0)))
    ref = TF.rotate(x01, 12.0, interpolation=TF.InterpolationMode.BILINEAR)
    assert torch.allclose(ours, ref, atol=1e-4)
    ours = back(apply_augment(x, MEAN, STD, _params(flip=True, angle=-9.0)))
    ref = TF.rotate(TF.hflip(x01), -9.0, interpolation=TF.InterpolationMode.BILINEAR)
    assert torch.allclose(ours, ref, atol=1e-4)
    ours = back(apply_augment(x, MEAN, STD, _params(b=1.1)))
    assert torch.allclose(ours, TF.adjust_brightness(x01, 1.1), atol=1e-5)
    ours = back(apply_augment(x, MEAN, STD, _params(c=0.9)))
    assert torch.allclose(ours, TF.adjust_contrast(x01, 0.9), atol=1e-4)


def test_batched_augmentation_is_per_sample_and_fills_with_black() -> None:
    x01 = torch.ones(64, 3, 32, 32)
    x = (x01 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    out = augment_batch(x, MEAN, STD, generator=torch.Generator().manual_seed(0), brightness=0, contrast=0)
    corner = out[:, 0, 0, 0] * STD[0] + MEAN[0]
    # rotated samples bring black (background) into the corner, unrotated ones would not
    assert corner.min() < 0.5 and (corner < 0.99).float().mean() > 0.8
    # different samples get different parameters
    assert out.flatten(1).std(dim=0).max() > 0.01


def test_subject_balanced_sampler_weights() -> None:
    rows = []
    # stage 0: subject a (10 images), b (2 images); stage 1: c (5 images); stage 3: d (1 image)
    for subj, stage, n in (("a", 0, 10), ("b", 0, 2), ("c", 1, 5), ("d", 3, 1)):
        rows += [{"path": f"{subj}{i}", "stage_index": stage, "subject": subj} for i in range(n)]
    frame = pd.DataFrame(rows)
    w = subject_balanced_weights(frame)
    assert np.isclose(w.sum(), 1.0)
    per_stage = pd.Series(w).groupby(frame["stage_index"]).sum()
    assert np.allclose(per_stage.to_numpy(), 1 / 3)  # three stages present, equal mass
    per_subject = pd.Series(w).groupby(frame["subject"]).sum()
    assert np.isclose(per_subject["a"], per_subject["b"])
    sampler = make_subject_balanced_sampler(frame, num_samples=3000, generator=torch.Generator().manual_seed(0))
    drawn = frame.iloc[list(sampler)]
    share = drawn["stage_index"].value_counts(normalize=True)
    assert abs(share[3] - 1 / 3) < 0.05 and abs(share[0] - 1 / 3) < 0.05


def test_process_pool_build_equals_thread_build(oasis_sample_files: list[Path], real_cache: CanonicalCache) -> None:
    paths = [str(p.resolve()) for p in oasis_sample_files[:6]]
    by_process = CanonicalCache.build(paths, persist=False, processes=True, workers=2, progress=False)
    rows = real_cache.index_of(paths)
    assert np.array_equal(np.asarray(by_process.images), np.asarray(real_cache.images[rows]))
    assert np.array_equal(np.asarray(by_process.masks), np.asarray(real_cache.masks[rows]))
