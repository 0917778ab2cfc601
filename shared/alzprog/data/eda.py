"""``alzprog eda``: exploratory analysis of a slice dataset, done with the brain mask and subjects in mind.

What it measures, and why each choice:

* class balance in images AND subjects per stage (the subject count is the real sample size);
* per-stage mean images and the consecutive mean-difference maps, computed pixel-wise over
  brain pixels only (``preprocessing`` brain mask after canonicalisation), so skull, scalp
  and background do not dominate the differences;
* per-stage histograms of brain-masked intensities, plus the brain-mask area per stage;
* SSIM between adjacent stages, restricted to the brain mask: PAIRED by subject and slice
  where longitudinal data exist (the phantom's ``longitudinal/longitudinal.csv``), otherwise
  explicitly labelled UNPAIRED (different people, matched on slice index where known), next
  to a within-stage unpaired baseline that shows how much of an unpaired difference is just
  between-person variation. OASIS-1 is cross-sectional, so real data is always unpaired.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from alzprog.constants import STAGE_SLUGS, STAGES
from alzprog.data.dataset import CanonicalCache
from alzprog.data.manifest import GENERIC_WARNING, build_manifest

log = logging.getLogger(__name__)

# A pixel enters a stage's mean image when it is brain in at least this share of the images.
MIN_COVERAGE = 0.5
FIGURES = (
    "eda_class_balance.png",
    "eda_mean_images.png",
    "eda_mean_differences.png",
    "eda_histograms.png",
    "eda_ssim.png",
)
# Written only when longitudinal (paired) data exist.
PAIRED_FIGURE = "eda_paired_differences.png"


@dataclass
class StageStats:
    """Brain-masked statistics of the sampled images of one stage."""

    n_images: int
    mean_image: np.ndarray  # float64 HxW, NaN outside the coverage mask
    coverage: np.ndarray  # float64 HxW, share of images whose mask covers the pixel
    histogram: np.ndarray  # density over 256 intensity bins of brain pixels
    intensity_mean: float
    intensity_median: float
    intensity_std: float
    mask_area_mean: float  # brain pixels per canonical image
    mask_area_std: float


def find_longitudinal(root: Path) -> Path | None:
    """``longitudinal/longitudinal.csv`` of a phantom root (``root`` may also be its ``Data`` folder)."""
    root = Path(root).resolve()
    for candidate in (root, root.parent):
        csv = candidate / "longitudinal" / "longitudinal.csv"
        if csv.is_file():
            return csv
    return None


def sample_per_stage(frame: pd.DataFrame, max_per_stage: int, seed: int) -> pd.DataFrame:
    """At most ``max_per_stage`` rows per stage, spread over subjects (round-robin over a
    shuffled subject order, so one subject with many slices does not fill a stage's sample)."""
    rng = np.random.default_rng(seed)
    parts = []
    for idx in sorted(frame["stage_index"].unique()):
        part = frame[frame["stage_index"] == idx]
        part = part.iloc[rng.permutation(len(part))]
        # rank of each row within its subject -> take rank 0 of every subject first, then rank 1, ...
        rank = part.groupby("subject").cumcount()
        subj_order = {s: i for i, s in enumerate(rng.permutation(part["subject"].unique()))}
        key = rank.to_numpy() * (len(subj_order) + 1) + part["subject"].map(subj_order).to_numpy()
        parts.append(part.iloc[np.argsort(key, kind="stable")[:max_per_stage]])
    return pd.concat(parts).reset_index(drop=True) if parts else frame.iloc[:0]


# Images folded into the running sums at a time: memory is bounded whatever the sample size.
STATS_CHUNK = 64


class RunningStageStats:
    """Brain-masked statistics accumulated chunk by chunk (running sums and a 256-bin histogram),
    so a stage's statistics never need its images in memory at once."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self.n = 0
        self.count = np.zeros(shape, np.float64)
        self.total = np.zeros(shape, np.float64)
        self.hist = np.zeros(256, np.int64)
        self.areas: list[int] = []

    def add(self, images: np.ndarray, masks: np.ndarray) -> None:
        """Fold a chunk of uint8 images (N, H, W) and their boolean brain masks in."""
        images = np.asarray(images)
        masks = np.asarray(masks, dtype=bool)
        self.n += len(images)
        self.count += masks.sum(axis=0)
        self.total += np.where(masks, images, 0).sum(axis=0, dtype=np.float64)
        self.hist += np.bincount(images[masks], minlength=256)
        self.areas.extend(int(a) for a in masks.reshape(len(masks), -1).sum(axis=1))

    def result(self) -> StageStats:
        coverage = self.count / max(self.n, 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_image = np.where(coverage >= MIN_COVERAGE, self.total / np.maximum(self.count, 1), np.nan)
        n_brain = int(self.hist.sum())
        levels = np.arange(256, dtype=np.float64)
        if n_brain:
            mean = float((self.hist * levels).sum() / n_brain)
            std = float(np.sqrt((self.hist * (levels - mean) ** 2).sum() / n_brain))
            cum = np.cumsum(self.hist)
            # the median of integer data, as np.median computes it (mean of the two middle values)
            lo = int(np.searchsorted(cum, (n_brain - 1) // 2 + 1))
            hi = int(np.searchsorted(cum, n_brain // 2 + 1))
            median = (lo + hi) / 2.0
        else:
            mean = median = std = float("nan")
        area = np.asarray(self.areas, dtype=np.float64)
        return StageStats(
            n_images=int(self.n),
            mean_image=mean_image,
            coverage=coverage,
            histogram=self.hist / n_brain if n_brain else self.hist.astype(np.float64),
            intensity_mean=mean,
            intensity_median=median,
            intensity_std=std,
            mask_area_mean=float(area.mean()) if len(area) else float("nan"),
            mask_area_std=float(area.std()) if len(area) else float("nan"),
        )


def stage_stats(images: np.ndarray, masks: np.ndarray, chunk: int = STATS_CHUNK) -> StageStats:
    """Pixel-wise brain-masked mean and intensity statistics of one stage's images.

    ``images`` / ``masks`` may be memory maps or row views of a cache: they are read ``chunk``
    images at a time.
    """
    acc = RunningStageStats(tuple(images.shape[1:]))
    for start in range(0, len(images), chunk):
        acc.add(images[start : start + chunk], masks[start : start + chunk])
    return acc.result()


def cache_stage_stats(cache: CanonicalCache, rows: np.ndarray, chunk: int = STATS_CHUNK) -> StageStats:
    """``stage_stats`` of the cache rows ``rows``, gathered ``chunk`` rows at a time."""
    acc = RunningStageStats((cache.size, cache.size))
    rows = np.sort(np.asarray(rows))
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        acc.add(np.asarray(cache.images[part]), np.asarray(cache.masks[part]))
    return acc.result()


def masked_ssim(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Mean SSIM (skimage, 7x7 window, data_range 255) over the pixels inside ``mask``."""
    from skimage.metrics import structural_similarity

    _, smap = structural_similarity(a, b, data_range=255, full=True)
    return float(smap[mask].mean()) if mask.any() else float("nan")


def _pairs_summary(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {"n": 0, "mean": None, "std": None}
    return {"n": int(arr.size), "mean": round(float(arr.mean()), 4), "std": round(float(arr.std()), 4)}


def _unpaired_pairs(
    a: pd.DataFrame, b: pd.DataFrame, n: int, rng: np.random.Generator
) -> tuple[list[tuple[str, str]], int]:
    """Random pairs of images of DIFFERENT subjects, matched on slice index when possible.

    Returns (pairs, number of pairs whose slice indices match).
    """
    pairs: list[tuple[str, str]] = []
    matched = 0
    if a.empty or b.empty:
        return pairs, matched
    by_slice = {k: g for k, g in b.groupby("slice") if k >= 0}
    for i in rng.permutation(len(a))[: n * 3]:
        row = a.iloc[i]
        pool = by_slice.get(row["slice"])
        if pool is not None:
            pool = pool[pool["subject"] != row["subject"]]
        same_slice = pool is not None and not pool.empty
        if not same_slice:  # no other person with this slice index: any slice of another person
            pool = b[b["subject"] != row["subject"]]
        if pool.empty:
            continue
        other = pool.iloc[int(rng.integers(len(pool)))]
        pairs.append((row["path"], other["path"]))
        matched += int(same_slice)
        if len(pairs) >= n:
            break
    return pairs, matched


def run_eda(
    root: Path,
    out_dir: Path,
    *,
    max_per_stage: int = 400,
    max_pairs: int = 200,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Run the analysis on a dataset root; writes the PNG figures, ``summary.md`` and ``summary.json``.

    Returns the summary dict (also written as ``summary.json``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = Path(root)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    manifest = build_manifest(root, None, workers=workers, progress=progress)
    skipped = manifest.attrs.get("skipped", [])
    generic = int(manifest.attrs.get("generic", 0))

    # --- class balance (full dataset) -------------------------------------------------------
    balance = {
        stage: {
            "images": int((manifest["stage_index"] == i).sum()),
            "subjects": int(manifest.loc[manifest["stage_index"] == i, "subject"].nunique()),
        }
        for i, stage in enumerate(STAGES)
    }

    # --- canonical, brain-masked sample per stage --------------------------------------------
    sample = sample_per_stage(manifest, max_per_stage, seed)
    longitudinal_csv = find_longitudinal(root)
    long_frame: pd.DataFrame | None = None
    paired_paths: list[str] = []
    if longitudinal_csv is not None:
        long_frame = pd.read_csv(longitudinal_csv, dtype={"subject": str})
        long_frame["path"] = [str((longitudinal_csv.parent / p).resolve()) for p in long_frame["path"]]
        keys = long_frame[["subject", "slice"]].drop_duplicates()
        keys = keys.iloc[rng.permutation(len(keys))[:max_pairs]]
        long_frame = long_frame.merge(keys, on=["subject", "slice"])
        paired_paths = list(long_frame["path"])

    cache = CanonicalCache.build(
        list(sample["path"]) + paired_paths, persist=False, workers=workers, progress=progress
    )
    stats: dict[int, StageStats] = {}
    for i in range(len(STAGES)):
        rows = cache.index_of(list(sample.loc[sample["stage_index"] == i, "path"]))
        if len(rows):
            stats[i] = cache_stage_stats(cache, rows)

    # --- SSIM between adjacent stages ----------------------------------------------------------
    ssim: dict[str, dict] = {}
    paired_diff: dict[tuple[int, int], np.ndarray] = {}
    transitions = [(k, k + 1) for k in range(len(STAGES) - 1)]
    for k, k1 in tqdm(transitions, desc="ssim", disable=not progress):
        name = f"{STAGE_SLUGS[k]}-{STAGE_SLUGS[k1]}"
        entry: dict = {"from": STAGES[k], "to": STAGES[k1]}
        # paired: the same subject and slice at both stages (longitudinal truth)
        if long_frame is not None:
            values, abs_diffs = [], []
            size = cache.size
            diff_sum, diff_n = np.zeros((size, size)), np.zeros((size, size))
            a_rows = long_frame[long_frame["stage_index"] == k].set_index(["subject", "slice"])["path"]
            b_rows = long_frame[long_frame["stage_index"] == k1].set_index(["subject", "slice"])["path"]
            for key in a_rows.index.intersection(b_rows.index):
                ia, ib = cache.index_of([a_rows[key], b_rows[key]])
                img_a, img_b = np.asarray(cache.images[ia]), np.asarray(cache.images[ib])
                mask = np.asarray(cache.masks[ia]) | np.asarray(cache.masks[ib])
                values.append(masked_ssim(img_a, img_b, mask))
                d = img_b.astype(np.float64) - img_a.astype(np.float64)
                abs_diffs.append(float(np.abs(d[mask]).mean()) if mask.any() else float("nan"))
                diff_sum += np.where(mask, d, 0.0)
                diff_n += mask
            entry["paired_by_subject"] = _pairs_summary(values)
            entry["paired_values"] = values
            entry["paired_mean_abs_difference"] = _pairs_summary(abs_diffs)
            if len(values):
                with np.errstate(invalid="ignore", divide="ignore"):
                    paired_diff[(k, k1)] = np.where(
                        diff_n >= MIN_COVERAGE * len(values), diff_sum / np.maximum(diff_n, 1), np.nan
                    )
        # unpaired: different people at adjacent stages, and the within-stage baseline
        a = sample[sample["stage_index"] == k]
        b = sample[sample["stage_index"] == k1]
        for label, (x, y) in (("unpaired_adjacent", (a, b)), ("unpaired_within_stage", (a, a))):
            values = []
            pairs, matched = _unpaired_pairs(x, y, max_pairs, rng)
            for pa, pb in pairs:
                ia, ib = cache.index_of([pa, pb])
                mask = np.asarray(cache.masks[ia]) | np.asarray(cache.masks[ib])
                values.append(masked_ssim(np.asarray(cache.images[ia]), np.asarray(cache.images[ib]), mask))
            entry[label] = {**_pairs_summary(values), "slice_matched": matched}
            entry[f"{label}_values"] = values
        # SSIM of the two stage mean images (population-level, unpaired by construction)
        if k in stats and k1 in stats:
            ma, mb = stats[k].mean_image, stats[k1].mean_image
            both = ~np.isnan(ma) & ~np.isnan(mb)
            if both.any():
                entry["mean_image_ssim"] = round(
                    masked_ssim(np.nan_to_num(ma).astype(np.float64), np.nan_to_num(mb).astype(np.float64), both), 4
                )
                entry["mean_abs_difference"] = round(float(np.abs(mb - ma)[both].mean()), 3)
                entry["mean_signed_difference"] = round(float((mb - ma)[both].mean()), 3)
        ssim[name] = entry

    # --- figures -------------------------------------------------------------------------------
    figures = []

    def save(fig, name: str) -> None:
        fig.savefig(out_dir / name, dpi=110, bbox_inches="tight")
        plt.close(fig)
        figures.append(name)

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    x = np.arange(len(STAGES))
    for ax, key in zip(axes, ("images", "subjects"), strict=True):
        vals = [balance[s][key] for s in STAGES]
        ax.bar(x, vals, color=["#4c72b0", "#55a868", "#dd8452", "#c44e52"])
        ax.set_xticks(x, [s.replace(" ", "\n", 1) for s in STAGES], fontsize=8)
        ax.set_title(f"{key} per stage")
        for xi, v in zip(x, vals, strict=True):
            ax.text(xi, v, str(v), ha="center", va="bottom", fontsize=8)
    save(fig, "eda_class_balance.png")

    fig, axes = plt.subplots(1, len(STAGES), figsize=(3.2 * len(STAGES), 3.4))
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i in stats:
            ax.imshow(stats[i].mean_image, cmap="gray", vmin=0, vmax=255)
            ax.set_title(f"{STAGES[i]}\nmean of {stats[i].n_images} (brain only)", fontsize=8)
        else:
            ax.set_title(f"{STAGES[i]}\nno images", fontsize=8)
    save(fig, "eda_mean_images.png")

    fig, axes = plt.subplots(1, len(transitions), figsize=(3.6 * len(transitions), 3.4))
    diffs = [
        stats[k1].mean_image - stats[k].mean_image if k in stats and k1 in stats else None for k, k1 in transitions
    ]
    vmax = max([np.nanmax(np.abs(d)) for d in diffs if d is not None and not np.all(np.isnan(d))] or [1.0])
    for ax, (k, k1), d in zip(np.atleast_1d(axes), transitions, diffs, strict=True):
        ax.axis("off")
        if d is None:
            ax.set_title(f"{STAGE_SLUGS[k1]} - {STAGE_SLUGS[k]}: n/a", fontsize=8)
            continue
        im = ax.imshow(d, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        ax.set_title(f"mean({STAGES[k1]}) - mean({STAGES[k]})", fontsize=7)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    save(fig, "eda_mean_differences.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, st in stats.items():
        ax.plot(np.arange(256), st.histogram, label=f"{STAGES[i]} (n={st.n_images})")
    ax.set_xlabel("intensity (canonical uint8), brain pixels only")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    save(fig, "eda_histograms.png")

    fig, ax = plt.subplots(figsize=(8, 4))
    kinds = [("paired_by_subject", "paired (same subject)"), ("unpaired_adjacent", "UNPAIRED adjacent stages"),
             ("unpaired_within_stage", "UNPAIRED within stage (baseline)")]
    width = 0.27
    for j, (key, label) in enumerate(kinds):
        means = [ssim[t].get(key, {}).get("mean") for t in ssim]
        stds = [ssim[t].get(key, {}).get("std") for t in ssim]
        pos = np.arange(len(ssim)) + (j - 1) * width
        ax.bar(pos, [m if m is not None else 0 for m in means], width,
               yerr=[s if s is not None else 0 for s in stds], label=label, capsize=3)
        for p, m, sd in zip(pos, means, stds, strict=True):
            ax.text(p, (m or 0) + (sd or 0) + 0.02, "n/a" if m is None else f"{m:.2f}", ha="center", fontsize=7)
    ax.set_xticks(np.arange(len(ssim)), list(ssim))
    ax.set_ylabel("brain-masked SSIM")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("SSIM between adjacent stages" + ("" if long_frame is not None else " (no longitudinal data: unpaired only)"))
    save(fig, "eda_ssim.png")

    if paired_diff:
        fig, axes = plt.subplots(1, len(transitions), figsize=(3.6 * len(transitions), 3.4))
        vmax = max(float(np.nanmax(np.abs(d))) for d in paired_diff.values() if not np.all(np.isnan(d)))
        for ax, (k, k1) in zip(np.atleast_1d(axes), transitions, strict=True):
            ax.axis("off")
            d = paired_diff.get((k, k1))
            if d is None:
                continue
            im = ax.imshow(d, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
            ax.set_title(f"same subject: {STAGE_SLUGS[k1]} - {STAGE_SLUGS[k]}\n(mean over {len(ssim[f'{STAGE_SLUGS[k]}-{STAGE_SLUGS[k1]}']['paired_values'])} pairs)", fontsize=7)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        save(fig, PAIRED_FIGURE)

    # --- summary -------------------------------------------------------------------------------
    summary = {
        "root": str(Path(root).resolve()),
        "images": int(len(manifest)),
        "subjects": int(manifest["subject"].nunique()),
        "generic_files_without_subject_id": generic,
        "skipped_undecodable": skipped,
        "class_balance": balance,
        "max_per_stage": max_per_stage,
        "seed": seed,
        "longitudinal": str(longitudinal_csv) if longitudinal_csv else None,
        "per_stage": {
            STAGES[i]: {
                "sampled_images": st.n_images,
                "brain_intensity_mean": round(st.intensity_mean, 2),
                "brain_intensity_median": round(st.intensity_median, 2),
                "brain_intensity_std": round(st.intensity_std, 2),
                "brain_area_px_mean": round(st.mask_area_mean, 1),
                "brain_area_px_std": round(st.mask_area_std, 1),
                "histogram_density": [round(float(v), 6) for v in st.histogram],
            }
            for i, st in stats.items()
        },
        "ssim": {t: {k: v for k, v in e.items() if not k.endswith("_values")} for t, e in ssim.items()},
        "figures": figures,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "summary.md").write_text(_markdown(summary))
    return summary


def _fmt(d: dict | None) -> str:
    if not d or not d.get("n"):
        return "n/a"
    text = f"{d['mean']:.3f} ± {d['std']:.3f} (n={d['n']}"
    if "slice_matched" in d:
        text += f", {d['slice_matched']} slice-matched"
    return text + ")"


def _markdown(s: dict) -> str:
    lines = [
        "# EDA summary",
        "",
        f"Root: `{s['root']}`; {s['images']} images of {s['subjects']} subjects; "
        f"image statistics on at most {s['max_per_stage']} images per stage (seed {s['seed']}).",
        "",
    ]
    if s["generic_files_without_subject_id"]:
        lines += ["**WARNING:** " + GENERIC_WARNING.format(
            root=s["root"], n=s["generic_files_without_subject_id"], total=s["images"]), ""]
    if s["skipped_undecodable"]:
        lines += [f"Skipped {len(s['skipped_undecodable'])} undecodable file(s).", ""]
    lines += ["## Class balance", "", "| stage | images | subjects |", "|---|---:|---:|"]
    for stage, v in s["class_balance"].items():
        lines.append(f"| {stage} | {v['images']} | {v['subjects']} |")
    lines += ["", "![class balance](eda_class_balance.png)", "", "## Brain-masked intensities", "",
              "| stage | sampled | mean | median | std | brain area (px, mean ± std) |",
              "|---|---:|---:|---:|---:|---:|"]
    for stage, v in s["per_stage"].items():
        lines.append(
            f"| {stage} | {v['sampled_images']} | {v['brain_intensity_mean']} | {v['brain_intensity_median']} | "
            f"{v['brain_intensity_std']} | {v['brain_area_px_mean']} ± {v['brain_area_px_std']} |"
        )
    lines += ["", "![mean images](eda_mean_images.png)", "", "![mean differences](eda_mean_differences.png)", "",
              "![histograms](eda_histograms.png)", ""]
    if PAIRED_FIGURE in s["figures"]:
        lines += ["Paired differences (same subject and slice, one stage apart; longitudinal truth):", "",
                  f"![paired differences]({PAIRED_FIGURE})", ""]
    lines += ["## SSIM between adjacent stages (brain-masked)", ""]
    if s["longitudinal"]:
        lines.append(f"Paired pairs come from the longitudinal truth `{s['longitudinal']}` (same subject, same slice).")
    else:
        lines.append("No longitudinal data: every SSIM below is **UNPAIRED** (different people); "
                     "it measures between-person variation as much as disease.")
    lines += ["", "| transition | paired (same subject) | UNPAIRED adjacent | UNPAIRED within-stage baseline | "
              "mean-image SSIM | mean abs diff of means | paired mean abs diff |", "|---|---|---|---|---:|---:|---|"]
    for t, e in s["ssim"].items():
        lines.append(
            f"| {t} | {_fmt(e.get('paired_by_subject'))} | {_fmt(e.get('unpaired_adjacent'))} | "
            f"{_fmt(e.get('unpaired_within_stage'))} | {e.get('mean_image_ssim', 'n/a')} | "
            f"{e.get('mean_abs_difference', 'n/a')} | {_fmt(e.get('paired_mean_abs_difference'))} |"
        )
    lines += ["", "![ssim](eda_ssim.png)", ""]
    return "\n".join(lines)
