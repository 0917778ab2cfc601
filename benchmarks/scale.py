"""The data commands at the real dataset's scale (``make bench-scale``).

Builds (once, cached in ``--work``) an OASIS-shaped tree of the Kaggle set's real size and
naming (``Data/<Stage>/OAS1_<id>_MR<session>_mpr-<acq>_<slice>.jpg``; 347 subjects, 266/58/21/2
by stage, 1,417 volumes of 61 slices = 86,437 files, the per-stage file counts of the Kaggle set),
then runs each command on it as a subprocess and records its wall time and peak RSS:

* ``alzprog data index`` (files/s), ``alzprog data split``, ``alzprog eda``;
* the canonical cache build (images/s, bytes on disk);
* one epoch of the ``transfer`` preset's training input pipeline (its dataset, sampler, loader
  and batched augmentation, no model) over the memory-mapped cache, against the same pipeline
  over images held in RAM;
* ``alzprog predict`` on a stated subset (images/s, subjects/s);

and projects, from those rates and the last GPU figures, the time of a ``full`` and a ``transfer``
training run on one GPU (a projection, labelled as such).

How the tree is built cheaply: 8 phantom subjects (``alzprog.data.phantom.synthesize``, 61 slices,
all four stages each from the longitudinal truth) are rendered once. Each of the 347 subjects
takes one of those 8 at its own stage; each of its acquisitions is a variant of those pixels
(a per-subject and per-acquisition shift, intensity gain and noise field), JPEG-encoded like the
Kaggle files. Nothing is hard-linked: every file has its own bytes.

Peak RSS: ``ru_maxrss`` of the command's process tree from ``wait4`` (the largest single
process), plus the largest sum over the tree sampled from ``/proc`` every 0.2 s.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
STAGES = ("Non Demented", "Very mild Dementia", "Mild Dementia", "Moderate Dementia")
# The Kaggle OASIS slice set: subjects and 61-slice volumes per stage (67,222 / 13,725 / 5,002 /
# 488 files = 86,437).
REAL_SUBJECTS = (266, 58, 21, 2)
REAL_VOLUMES = (1102, 225, 82, 8)
REAL_SLICES = 61
BASE_SUBJECTS = 8
DOCS_BEGIN = "<!-- scale-benchmark:begin -->"
DOCS_END = "<!-- scale-benchmark:end -->"
TARGETS = {
    "index_seconds_max": 120.0,
    "cache_images_per_s_min": 150.0,
    "eda_seconds_max": 600.0,
    "eda_peak_rss_gb_max": 4.0,
    "pipeline_ratio_min": 0.90,
}


# ----------------------------------------------------------------------------- the tree


def tree_plan(subjects: int, slices: int, acquisitions: float | None = None) -> dict:
    """Subjects and volumes per stage, and each subject's (session, acquisition) list.

    The real size (347 subjects, 61 slices, ``acquisitions`` unset) uses the Kaggle set's counts;
    a smaller tree keeps its stage proportions with ``acquisitions`` volumes per subject.
    """
    from alzprog.data.phantom import default_slices, stage_counts

    if subjects == sum(REAL_SUBJECTS) and acquisitions is None:
        per_stage, volumes = list(REAL_SUBJECTS), list(REAL_VOLUMES)
    else:
        per_stage = stage_counts(subjects, "oasis")
        volumes = [max(n, round(n * (acquisitions or 4))) for n in per_stage]
    rng = np.random.default_rng(20261202)
    stage_of = np.repeat(np.arange(4), per_stage)
    rng.shuffle(stage_of)  # ids not sorted by stage, as in OASIS
    subjects_out = []
    for k in range(4):
        ids = [i for i, s in enumerate(stage_of) if s == k]
        base, extra = divmod(volumes[k], len(ids))
        for j, i in enumerate(ids):
            n = base + (1 if j < extra else 0)
            # mpr-1..4 in session MR1; a fifth volume is a second visit (MR2), as in OASIS-1's reliability scans
            acqs = [(1 + a // 4, 1 + a % 4) for a in range(n)]
            subjects_out.append({"subject": f"OAS1_{i + 1:04d}", "stage_index": k, "base": i % BASE_SUBJECTS,
                                 "acquisitions": acqs})
    subjects_out.sort(key=lambda s: s["subject"])
    sl = default_slices(slices)
    n_files = sum(len(s["acquisitions"]) for s in subjects_out) * len(sl)
    return {"subjects_per_stage": per_stage, "volumes_per_stage": volumes, "slices": sl, "subjects": subjects_out,
            "files": n_files}


def _variant(base: np.ndarray, rng: np.random.Generator, shift: tuple[int, int], gain: float,
             noise: np.ndarray) -> np.ndarray:
    img = np.roll(base.astype(np.float32), shift, axis=(0, 1)) * gain + noise
    return np.clip(img, 0, 255).astype(np.uint8)


def _write_subject(base_dir: str, out_dir: str, subject: dict, slices: list[int]) -> int:
    from PIL import Image

    from alzprog.data.phantom import encode_jpeg, longitudinal_name

    k = subject["stage_index"]
    base_name = f"OAS1_{subject['base'] + 1:04d}"
    bases = {}
    for sl in slices:
        with Image.open(Path(base_dir) / "longitudinal" / base_name / longitudinal_name(k, sl)) as im:
            bases[sl] = np.asarray(im.convert("L"))
    seed = int(hashlib.sha256(subject["subject"].encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng(seed)
    subject_shift = (int(rng.integers(-6, 7)), int(rng.integers(-10, 11)))
    subject_gain = float(rng.uniform(0.9, 1.1))
    stage_dir = Path(out_dir) / "Data" / STAGES[k]
    stage_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    for session, acq in subject["acquisitions"]:
        shift = (subject_shift[0] + int(rng.integers(-2, 3)), subject_shift[1] + int(rng.integers(-2, 3)))
        gain = subject_gain * float(rng.uniform(0.96, 1.04))
        noise = rng.normal(0.0, 2.0, size=next(iter(bases.values())).shape).astype(np.float32)
        for sl in slices:
            data = encode_jpeg(_variant(bases[sl], rng, shift, gain, noise))
            (stage_dir / f"{subject['subject']}_MR{session}_mpr-{acq}_{sl}.jpg").write_bytes(data)
            written += 1
    return written


def build_tree(work: Path, subjects: int, slices: int, acquisitions: float | None, workers: int) -> dict:
    """The tree under ``work/tree`` (reused when its ``tree.json`` matches the plan)."""
    from alzprog.data.phantom import synthesize

    plan = tree_plan(subjects, slices, acquisitions)
    spec = {"subjects": subjects, "slices": plan["slices"], "acquisitions": acquisitions, "files": plan["files"],
            "volumes_per_stage": plan["volumes_per_stage"], "format": 1}
    tree = work / "tree"
    marker = tree / "tree.json"
    if marker.is_file():
        old = json.loads(marker.read_text())
        if old.get("spec") == spec:
            old["reused"] = True
            return old
    shutil.rmtree(tree, ignore_errors=True)
    base = work / f"base-{len(plan['slices'])}"
    t0 = time.perf_counter()
    if not (base / "longitudinal" / "longitudinal.csv").is_file():
        synthesize(base, n_subjects=BASE_SUBJECTS, seed=0, mix="balanced", slices_per_subject=len(plan["slices"]),
                   workers=workers, progress=False)
    t_base = time.perf_counter() - t0
    t1 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        n = sum(pool.map(_write_subject, [str(base)] * len(plan["subjects"]), [str(tree)] * len(plan["subjects"]),
                         plan["subjects"], [plan["slices"]] * len(plan["subjects"]), chunksize=4))
    t_files = time.perf_counter() - t1
    size = sum(f.stat().st_size for f in (tree / "Data").rglob("*.jpg"))
    info = {
        "spec": spec, "files": n, "bytes": size, "base_render_seconds": round(t_base, 1),
        "variant_write_seconds": round(t_files, 1), "workers": workers,
        "reuses": f"{BASE_SUBJECTS} phantom subjects x {len(plan['slices'])} slices x 4 stages rendered once "
                  f"({BASE_SUBJECTS * len(plan['slices']) * 4} renders, cached in {base.name}/); every file is a "
                  "shifted, gain-scaled, noised variant of one of them, encoded as its own JPEG",
        "subjects_per_stage": plan["subjects_per_stage"], "volumes_per_stage": plan["volumes_per_stage"],
    }
    marker.write_text(json.dumps(info, indent=2))
    info["reused"] = False
    return info


# ----------------------------------------------------------------------------- measuring


def _tree_rss_kb(pid: int) -> tuple[int, int]:
    """(RSS, anonymous RSS) in kB summed over ``pid`` and its descendants. RSS counts the pages
    of memory-mapped files too (the cache's ``.npy`` maps), which the kernel can drop at will;
    the anonymous part is the memory the processes really hold."""
    total = anon = 0
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                    elif line.startswith("RssAnon:"):
                        anon += int(line.split()[1])
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total, anon


def measure(name: str, cmd: list[str], env: dict[str, str], log_dir: Path) -> dict:
    """Run ``cmd``; wall seconds, exit code, peak RSS (largest process; sampled tree sum), stdout tail."""
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path = log_dir / f"{name}.log"
    with out_path.open("w") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        peak = [0, 0]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.2):
                total, anon = _tree_rss_kb(proc.pid)
                peak[0], peak[1] = max(peak[0], total), max(peak[1], anon)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        stop.set()
        th.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    text = out_path.read_text(errors="replace")
    result = {
        "step": name, "command": " ".join(cmd), "seconds": round(wall, 2), "rc": proc.returncode,
        "peak_rss_mb_largest_process": round(usage.ru_maxrss / 1024, 1),
        "peak_rss_mb_tree_sampled": round(peak[0] / 1024, 1),
        "peak_anon_rss_mb_tree_sampled": round(peak[1] / 1024, 1),
        "log": str(out_path),
    }
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed (rc {proc.returncode}): {text[-2000:]}")
    last = [ln for ln in text.strip().splitlines() if ln.startswith("{")]
    if last:
        try:
            result["report"] = json.loads(last[-1])
        except json.JSONDecodeError:
            pass
    return result


# ----------------------------------------------------------------------------- helper subcommands


def _cmd_cache(manifest: str, cache_root: str) -> None:
    """Build the canonical cache of every manifest row from scratch; print one JSON line."""
    from alzprog.data.dataset import CanonicalCache
    from alzprog.data.manifest import read_manifest
    from alzprog.preprocessing import CANONICAL_SIZE

    shutil.rmtree(cache_root, ignore_errors=True)
    paths = list(read_manifest(Path(manifest))["path"].astype(str))
    t0 = time.perf_counter()
    cache = CanonicalCache.build(paths, size=CANONICAL_SIZE, cache_root=Path(cache_root), progress=False)
    seconds = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in Path(cache.directory).iterdir())
    print(json.dumps({"images": len(cache), "build_seconds": round(seconds, 2),
                      "images_per_s": round(len(cache) / seconds, 1), "bytes_on_disk": size,
                      "directory": str(cache.directory), "workers": os.cpu_count()}))


def _pipeline_rate(ds, frame, cfg: dict, samples: int | None) -> tuple[float, int]:
    import torch
    from torch.utils.data import DataLoader

    from alzprog.data.dataset import augment_batch, make_subject_balanced_sampler

    aug = cfg.get("augment", {})
    gen = torch.Generator().manual_seed(0)
    sampler = make_subject_balanced_sampler(frame, num_samples=samples or len(frame), generator=gen)
    loader = DataLoader(ds, batch_size=int(cfg["batch_size"]), sampler=sampler,
                        num_workers=int(cfg.get("num_workers", 0)), drop_last=False)
    n = 0
    t0 = time.perf_counter()
    for x, _, _ in loader:
        augment_batch(x, ds.mean, ds.std, generator=gen, max_rotation=float(aug.get("max_rotation", 15.0)),
                      flip_p=float(aug.get("flip_p", 0.5)), brightness=float(aug.get("brightness", 0.1)),
                      contrast=float(aug.get("contrast", 0.1)))
        n += len(x)
    return n / (time.perf_counter() - t0), n


def _cmd_pipeline(split: str, cache_root: str, manifest: str, preset: str, memory_images: int, samples: int) -> None:
    """``samples`` subject-balanced draws of a preset's training input pipeline over the
    memory-mapped cache of the whole tree, and as many over ``memory_images`` rows copied into
    RAM; print one JSON line."""
    import torch

    from alzprog.data.dataset import CanonicalCache, StageSliceDataset
    from alzprog.data.manifest import read_manifest
    from alzprog.data.split import load_split
    from alzprog.models.stage_classifier import input_normalisation
    from alzprog.preprocessing import CANONICAL_SIZE
    from alzprog.training.config import load_config

    cfg = load_config("classifier", preset)
    threads = cfg.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    size = int(cfg["model"]["image_size"])
    mean, std = input_normalisation(cfg["model"]["arch"])
    train = load_split(Path(split), ("train",))["train"]
    # the cache built over the whole manifest (reopened, memory-mapped: nothing decoded here)
    if (Path(cache_root) / "meta.json").is_file():  # the folder the cache step built
        cache = CanonicalCache.open(Path(cache_root))
    else:
        paths = list(read_manifest(Path(manifest))["path"].astype(str))
        cache = CanonicalCache.build(paths, size=CANONICAL_SIZE, cache_root=Path(cache_root), progress=False)
    ds = StageSliceDataset(train, cache, size, True, mean, std, augment_in_dataset=False, pixels=True)
    mapped_rate, mapped_n = _pipeline_rate(ds, train, cfg, samples or None)

    sub = train.sample(n=min(memory_images, len(train)), random_state=0).reset_index(drop=True)
    rows = cache.index_of(list(sub["path"]))
    order = np.argsort(rows)
    mem = CanonicalCache([sub["path"][i] for i in order], np.ascontiguousarray(cache.images[rows[order]]),
                         np.ascontiguousarray(cache.masks[rows[order]]))
    ds_mem = StageSliceDataset(sub, mem, size, True, mean, std, augment_in_dataset=False, pixels=True)
    mem_rate, mem_n = _pipeline_rate(ds_mem, sub, cfg, mapped_n)
    print(json.dumps({
        "preset": preset, "image_size": size, "batch_size": int(cfg["batch_size"]),
        "num_workers": int(cfg.get("num_workers", 0)), "torch_threads": torch.get_num_threads(),
        "epoch_samples": mapped_n, "preset_epoch_samples": (cfg.get("phase2") or {}).get("samples_per_epoch"), "mapped_samples_per_s": round(mapped_rate, 1),
        "memory_samples": mem_n, "memory_samples_per_s": round(mem_rate, 1),
        "ratio": round(mapped_rate / mem_rate, 3),
    }))


def _cmd_model(out: str, preset: str) -> None:
    """An artifact with the preset's architecture and input size (ImageNet backbone, untrained
    head): throughput does not depend on the head's weights."""
    import torch

    from alzprog.artifacts import save_artifact
    from alzprog.models.stage_classifier import build_stage_classifier, classifier_config, load_imagenet_weights
    from alzprog.training.config import load_config

    cfg = load_config("classifier", preset)["model"]
    mcfg = classifier_config(cfg["arch"], int(cfg["image_size"]), pretrained="imagenet",
                             feature_stages=cfg.get("feature_stages"))
    torch.manual_seed(0)
    model = build_stage_classifier(mcfg)
    load_imagenet_weights(model, cfg["arch"])
    model.eval()
    s = int(cfg["image_size"])
    save_artifact(out, model, mcfg, torch.randn(1, 3, s, s), export_onnx=False)
    print(json.dumps({"model": out, "arch": cfg["arch"], "image_size": s}))


# ----------------------------------------------------------------------------- the projection


def project(results: dict, gpu_json: Path) -> dict:
    """Time of a full and a transfer training run on one GPU, PROJECTED from measured rates."""
    import yaml

    gpu = json.loads(gpu_json.read_text())
    b4 = gpu["classifier_b4_model_only"]
    train_rate, infer_rate = float(b4["train_images_per_second"]), float(b4["inference_images_per_second"])
    split = results["split"]["sides"]
    n_train, n_val = split["train"], split["val"]
    pipe = results["pipeline"]["report"]
    presets = REPO / "shared" / "alzprog" / "presets"
    full = yaml.safe_load((presets / "classifier_full.yaml").read_text())
    tr = yaml.safe_load((presets / "classifier_transfer.yaml").read_text())
    # full: phase 1 (frozen backbone) still runs the forward of every image; phase 2 trains every layer
    e1, e2 = int(full["phase1"]["epochs"]), int(full["phase2"]["epochs"])
    full_s = e1 * (n_train / infer_rate + n_val / infer_rate) + e2 * (n_train / train_rate + n_val / infer_rate)
    # transfer: features computed once (train + val), head epochs on features (negligible), phase 2
    # on samples_per_epoch draws per epoch. Lite0 at 384 px costs fewer FLOPs than B4 at 256 px, so
    # the B4 rates make this an upper bound.
    p2 = tr["phase2"]
    spe = int(p2.get("samples_per_epoch") or n_train)
    transfer_s = (n_train + n_val) / infer_rate + int(p2["epochs"]) * (spe / train_rate + n_val / infer_rate)
    cpu_feed = float(pipe["mapped_samples_per_s"])
    return {
        "label": "PROJECTION (not measured): GPU model rates from the last GPU run, split sizes from this tree",
        "gpu_source": _rel(gpu_json), "gpu": gpu.get("device"),
        "gpu_b4_train_images_per_s": round(train_rate, 1), "gpu_b4_inference_images_per_s": round(infer_rate, 1),
        "train_slices": n_train, "val_slices": n_val,
        "full_model_bound_hours": round(full_s / 3600, 2),
        "full_epochs": [e1, e2],
        "transfer_model_bound_minutes": round(transfer_s / 60, 1),
        "transfer_phase2_samples_per_epoch": spe,
        "input_pipeline_samples_per_s_on_these_2_cpus": cpu_feed,
        "note": "the training input pipeline measured here on 2 CPUs feeds "
                f"{cpu_feed:.0f} samples/s, below the GPU's {train_rate:.0f} images/s: on a 2-CPU host "
                "the run would be input-bound; the GPU host used for the rates has 16 CPUs",
        "full_input_bound_hours_on_2_cpus": round((e1 + e2) * n_train / cpu_feed / 3600, 2),
    }


# ----------------------------------------------------------------------------- main


def _count_sides(split_dir: Path) -> dict:
    out = {}
    for side in ("train", "val", "test"):
        with (split_dir / f"{side}.csv").open() as f:
            out[side] = sum(1 for _ in f) - 1
    return out


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def run(args: argparse.Namespace) -> dict:
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ALZPROG_HOME": str(work / "home"), "PYTHONUNBUFFERED": "1"}
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    py, alz = sys.executable, [sys.executable, "-m", "alzprog"]
    me = [py, str(Path(__file__).resolve())]
    logs = work / "logs"
    results: dict = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "uptime_before": _uptime(),
                     "cpus": os.cpu_count()}
    t0 = time.perf_counter()
    results["tree"] = build_tree(work, args.subjects, args.slices, args.acquisitions, args.workers)
    results["tree"]["seconds_this_run"] = round(time.perf_counter() - t0, 1)
    tree = work / "tree"
    n_files = results["tree"]["files"]
    steps = [s.strip() for s in args.steps.split(",")]
    if "index" in steps:
        r = measure("index", [*alz, "data", "index", str(tree), "--out", str(work / "manifest.csv")], env, logs)
        r["files"] = n_files
        r["files_per_s"] = round(n_files / r["seconds"], 1)
        results["index"] = r
        (work / "partial.json").write_text(json.dumps(results, indent=2))
    if "split" in steps:
        r = measure("split", [*alz, "data", "split", str(work / "manifest.csv"), "--out", str(work / "split"),
                              "--seed", "0"], env, logs)
        r["sides"] = _count_sides(work / "split")
        results["split"] = r
        (work / "partial.json").write_text(json.dumps(results, indent=2))
    if "eda" in steps:
        results["eda"] = measure("eda", [*alz, "eda", str(tree), "--out", str(work / "eda")], env, logs)
        (work / "partial.json").write_text(json.dumps(results, indent=2))
    if "cache" in steps:
        r = measure("cache", [*me, "_cache", str(work / "manifest.csv"), str(work / "cache")], env, logs)
        results["cache"] = r
    if "cache" not in results and (logs / "cache.log").is_file():
        # the cache step of an earlier run (its own report line), so later steps can be rerun alone
        line = [ln for ln in (logs / "cache.log").read_text().splitlines() if ln.startswith("{")]
        if line:
            results["cache_earlier_run"] = {"report": json.loads(line[-1])}
    cache_dir = ((results.get("cache") or results.get("cache_earlier_run") or {}).get("report") or {}).get("directory")
    (work / "partial.json").write_text(json.dumps(results, indent=2))
    if "pipeline" in steps:
        results["pipeline"] = measure(
            "pipeline", [*me, "_pipeline", str(work / "split"), cache_dir or str(work / "cache"), str(work / "manifest.csv"),
                         args.preset, str(args.memory_images), str(args.pipeline_samples)], env, logs)
    if "predict" in steps:
        model = work / f"model-{args.preset}"
        if not (model / "config.json").is_file():
            measure("model", [*me, "_model", str(model), args.preset], env, logs)
        out = work / "predict" / "results.csv"
        shutil.rmtree(out.parent, ignore_errors=True)
        out.parent.mkdir(parents=True)
        r = measure("predict", [*alz, "predict", str(work / "manifest.csv"), "--out", str(out), "--model", str(model),
                                "--limit", str(args.predict_files), "--no-progress"], env, logs)
        rep = r.get("report", {})
        with (out.with_name("results.subjects.csv")).open() as f:
            subjects = list(csv.DictReader(f))
        complete = [s for s in subjects if int(s["n_slices"]) > 0]
        r["images"] = rep.get("slices_scored")
        r["scoring_seconds"] = rep.get("seconds")
        r["images_per_s"] = round(rep["slices_scored"] / rep["seconds"], 2) if rep.get("seconds") else None
        r["subjects_touched"] = len(complete)
        r["images_per_subject_full_tree"] = round(n_files / args.subjects, 1)
        r["subjects_per_s"] = round(r["images_per_s"] / (n_files / args.subjects), 4) if r["images_per_s"] else None
        r["subset"] = f"the first {args.predict_files} manifest rows (sorted by stage and subject)"
        results["predict"] = r
    results["uptime_after"] = _uptime()
    results["total_seconds"] = round(time.perf_counter() - t0, 1)
    if "pipeline" in results and "split" in results:
        gpu_json = REPO / "benchmarks" / "results" / "2026-11-27-h100-gpu_check.json"
        if gpu_json.is_file():
            results["projection"] = project(results, gpu_json)
    results["targets"] = targets(results)
    return results


def targets(r: dict) -> dict:
    t = {}
    if "index" in r:
        t["index_under_2_min"] = r["index"]["seconds"] < TARGETS["index_seconds_max"]
    if "cache" in r and "report" in r["cache"]:
        t["cache_at_least_150_img_s"] = r["cache"]["report"]["images_per_s"] >= TARGETS["cache_images_per_s_min"]
    if "eda" in r:
        rss_gb = r["eda"]["peak_rss_mb_tree_sampled"] / 1024  # all of it, file pages included
        t["eda_under_10_min"] = r["eda"]["seconds"] < TARGETS["eda_seconds_max"]
        t["eda_peak_rss_under_4_gb"] = rss_gb < TARGETS["eda_peak_rss_gb_max"]
    if "pipeline" in r and "report" in r["pipeline"]:
        t["pipeline_at_least_90_pct_of_memory"] = r["pipeline"]["report"]["ratio"] >= TARGETS["pipeline_ratio_min"]
    return t


def write_outputs(results: dict, out_dir: Path, docs: Path | None) -> tuple[Path, Path]:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d-%H%M")
    out_dir.mkdir(parents=True, exist_ok=True)
    jpath = out_dir / f"{stamp}-scale.json"
    cpath = out_dir / f"{stamp}-scale.csv"
    jpath.write_text(json.dumps(results, indent=2))
    rows = table_rows(results)
    _write_csv(cpath, rows)
    if docs is not None:
        update_docs(docs, results, rows, jpath)
    return jpath, cpath


def _write_csv(path: Path, rows: list[list]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "seconds", "rate", "peak_rss_mb_largest_process", "peak_rss_mb_tree_sampled",
                    "peak_anon_rss_mb_tree_sampled", "detail"])
        w.writerows(rows)


def table_rows(r: dict) -> list[list]:
    rows = []

    def add(step, rate, detail):
        m = r[step]
        if m.get("note"):
            detail = f"{detail}; {m['note']}"
        rows.append([step, m["seconds"], rate, m["peak_rss_mb_largest_process"], m["peak_rss_mb_tree_sampled"],
                     m.get("peak_anon_rss_mb_tree_sampled", ""), detail])

    if "index" in r:
        add("index", f"{r['index']['files_per_s']} files/s", f"{r['index']['files']} files, full decode check")
    if "split" in r:
        add("split", "", f"sides {r['split']['sides']}")
    if "eda" in r:
        add("eda", "", "decode check of every file + 400 canonical slices per stage, streamed statistics")
    if "cache" in r and "report" in r["cache"]:
        c = r["cache"]["report"]
        add("cache", f"{c['images_per_s']} images/s", f"{c['images']} images, {c['bytes_on_disk'] / 1e9:.2f} GB on disk "
            f"(build {c['build_seconds']} s)")
    if "pipeline" in r and "report" in r["pipeline"]:
        p = r["pipeline"]["report"]
        add("pipeline", f"{p['mapped_samples_per_s']} samples/s",
            f"{p['preset']} preset input pipeline, {p['epoch_samples']} subject-balanced draws (its phase-2 epoch: "
            f"{p['preset_epoch_samples']}) over the memory map of all files; "
            f"in RAM {p['memory_samples_per_s']} samples/s ({p['memory_samples']} samples); ratio {p['ratio']}")
    if "predict" in r:
        p = r["predict"]
        add("predict", f"{p['images_per_s']} images/s", f"{p['images']} images ({p['subset']}); "
            f"{p['subjects_per_s']} subjects/s at {p['images_per_subject_full_tree']} images per subject")
    return rows


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def update_docs(docs: Path, r: dict, rows: list[list], jpath: Path) -> None:
    t = r["tree"]
    lines = [
        DOCS_BEGIN,
        "## The data commands at the real dataset's scale (86,437 files)",
        "",
        f"`make bench-scale` (`python benchmarks/scale.py`), {r['started']}, {r['cpus']} CPUs. Load: "
        f"before `{r['uptime_before']}`, after `{r['uptime_after']}` (the machine was shared). Raw data: "
        f"`{_rel(jpath)}` and the `.csv` beside it.",
        "",
        f"Tree: {t['files']} files ({t.get('bytes', 0) / 1e9:.2f} GB), subjects per stage {t['subjects_per_stage']}, "
        f"volumes per stage {t['volumes_per_stage']}, Kaggle names. Built in {t.get('base_render_seconds')} s "
        f"(base renders) + {t.get('variant_write_seconds')} s (variants, {t.get('workers')} processes); "
        f"{t.get('reuses')}. Reruns reuse the cached tree.",
        "",
        "| step | seconds | rate | peak RSS largest process (MB) | peak RSS process tree (MB) | "
        "peak anonymous RSS process tree (MB) | detail |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    lines += ["", "RSS counts the pages of memory-mapped files (the cache's `.npy` maps), which the kernel "
              "reclaims at will; the anonymous RSS is the memory the processes hold themselves.", ""]
    lines += ["", "Targets: " + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in r["targets"].items()), ""]
    if "projection" in r:
        p = r["projection"]
        lines += [
            f"**{p['label']}.** From {p['gpu']} rates (`{p['gpu_source']}`: B4 train "
            f"{p['gpu_b4_train_images_per_s']} images/s, inference {p['gpu_b4_inference_images_per_s']} images/s) and "
            f"this tree's split ({p['train_slices']} train / {p['val_slices']} val slices): a `full` run "
            f"({p['full_epochs'][0]} + {p['full_epochs'][1]} epochs) is model-bound at about "
            f"{p['full_model_bound_hours']} h on one GPU; a `transfer` run (features once, phase 2 on "
            f"{p['transfer_phase2_samples_per_epoch']} draws per epoch) about {p['transfer_model_bound_minutes']} min "
            f"(an upper bound: Lite0 at 384 px is cheaper than B4 at 256 px). {p['note']} "
            f"(a `full` run fed at that rate: {p['full_input_bound_hours_on_2_cpus']} h).",
            "",
        ]
    lines.append(DOCS_END)
    block = "\n".join(lines)
    text = docs.read_text() if docs.is_file() else ""
    if DOCS_BEGIN in text and DOCS_END in text:
        before, rest = text.split(DOCS_BEGIN, 1)
        after = rest.split(DOCS_END, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    docs.write_text(text)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_cache":
        _cmd_cache(*argv[1:3])
        return 0
    if argv and argv[0] == "_pipeline":
        _cmd_pipeline(*argv[1:5], int(argv[5]), int(argv[6]))
        return 0
    if argv and argv[0] == "_model":
        _cmd_model(*argv[1:3])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=os.environ.get("ALZPROG_SCALE_WORK", str(Path.home() / ".cache" / "alzprog-scale")),
                   help="work folder (tree, manifest, cache, logs); the tree is reused across runs")
    p.add_argument("--subjects", type=int, default=sum(REAL_SUBJECTS))
    p.add_argument("--slices", type=int, default=REAL_SLICES)
    p.add_argument("--acquisitions", type=float, default=None,
                   help="volumes per subject for a smaller tree (default: the Kaggle counts at full size, else 4)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes that build the tree")
    p.add_argument("--steps", default="index,split,eda,cache,pipeline,predict")
    p.add_argument("--preset", default="transfer")
    p.add_argument("--memory-images", type=int, default=4096, help="rows copied into RAM for the in-memory rate")
    p.add_argument("--pipeline-samples", type=int, default=4096,
                   help="subject-balanced draws through the input pipeline (0: one pass over the training slices; "
                        "the transfer preset's phase-2 epoch is 512 draws)")
    p.add_argument("--predict-files", type=int, default=600, help="files scored by `alzprog predict` (a subset)")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--docs", default=str(REPO / "docs" / "performance.md"), help="'' to leave the docs alone")
    p.add_argument("--render", default=None, help="only rewrite the CSV and the docs table from this results JSON")
    args = p.parse_args(argv)
    docs = Path(args.docs) if args.docs else None
    if args.render:
        jpath = Path(args.render)
        results = json.loads(jpath.read_text())
        results["targets"] = targets(results)
        jpath.write_text(json.dumps(results, indent=2))
        cpath = jpath.with_suffix(".csv")
        _write_csv(cpath, table_rows(results))
        if docs is not None:
            update_docs(docs, results, table_rows(results), jpath)
        print(json.dumps({"json": str(jpath), "csv": str(cpath), "targets": results["targets"]}))
        return 0
    results = run(args)
    jpath, cpath = write_outputs(results, Path(args.results), docs)
    print(json.dumps({"json": str(jpath), "csv": str(cpath), "targets": results["targets"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
