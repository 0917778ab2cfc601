"""Evaluation of the progression generators against the true future (``alzprog evaluate progression``).

On the *test* subjects of a split (never seen in training or validation), every transition's
registered ``champion`` generator is compared with the true future image of the same subject
and slice, beside two baselines: ``identity`` (output = input, "nothing changes") and ``dcgan``
(the published design, registered under the ``dcgan`` alias, same training budget). The chain
(Non Demented -> ... -> Moderate, each step fed the previous output) is scored against the true
Moderate image.

Reported: MSE, PSNR, SSIM whole-frame and inside the brain mask (union of the input's and the
truth's masks), LPIPS and Inception FID when their standard weights are on disk (else the
reason), a domain FID on the stage classifier's penultimate features, stage consistency (share
of generated images the classifier assigns to the target stage) and anatomy: the share of
generated steps (and of whole chains) along which the ventricle / CSF area inside the brain
grows.

The anatomy and change-fidelity measures are :mod:`alzprog.metrics.change` (training's gain
calibration uses them too). The ROI ablation, which trains models before scoring them, is
:mod:`alzprog.ablation`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from alzprog.constants import CHAMPION_ALIAS, DCGAN_ALIAS, PROGRESSION_EXPERIMENT, STAGES, TRANSITIONS, progression_model_name
from alzprog.metrics import image as im
from alzprog.metrics.change import (  # noqa: F401 - re-exported
    CSF_ERODE,
    CSF_FRACTION,
    CHANGE_SIGMA_256,
    GROWTH_MIN_PX,
    change_correlation,
    change_fidelity,
    change_sigma,
    csf_threshold,
    grows,
    growth_areas,
    smoothed_change,
    ventricle_area,
)

log = logging.getLogger(__name__)

CONTRACT_KEYS = ("ssim_brain", "mse_brain", "psnr_brain")
EXTRA_KEYS = ("ssim", "mse", "psnr")
# --------------------------------------------------------------------------- models


@dataclass
class Generators:
    """Generators per transition for one label (``model`` or ``dcgan``); None where unavailable."""

    models: dict[str, nn.Module | None]
    versions: dict[str, str | None]
    reasons: dict[str, str]


def load_registered(alias: str, device: torch.device) -> Generators:
    """Load ``alzheimer-progression-<t>@<alias>`` for every transition that has it."""
    from alzprog.artifacts import load_artifact
    from alzprog.registry import resolve_model

    models, versions, reasons = {}, {}, {}
    for slug, _, _ in TRANSITIONS:
        try:
            r = resolve_model(f"models:/{progression_model_name(slug)}@{alias}")
            models[slug] = load_artifact(r.local_dir, device=device).model
            versions[slug] = r.version
        except Exception as exc:  # noqa: BLE001 - reported, not fatal: a baseline may be missing
            models[slug], versions[slug] = None, None
            reasons[slug] = f"{progression_model_name(slug)}@{alias} unavailable: {exc}"
    return Generators(models, versions, reasons)


@dataclass
class Classifier:
    model: nn.Module
    config: dict[str, Any]
    version: str

    def predict(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Stage index per canonical uint8 image."""
        return self.logits(images, batch_size).argmax(1)

    def inputs(self, images: np.ndarray) -> torch.Tensor:
        from alzprog import preprocessing as pp

        size = int(self.config.get("image_size", 256))
        mean = tuple(self.config.get("mean", pp.IMAGENET_MEAN))
        std = tuple(self.config.get("std", pp.IMAGENET_STD))
        return torch.stack([pp.classifier_input(np.asarray(i), size, mean, std) for i in images])

    def logits(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        self.model.eval()
        device = next(self.model.parameters()).device
        out = []
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                out.append(self.model(self.inputs(images[i : i + batch_size]).to(device)).float().cpu())
        return torch.cat(out).numpy()

    def features(self, images: np.ndarray) -> np.ndarray:
        return im.penultimate_features(self.model, self.inputs(images))


def load_classifier_or_reason(uri: str | None, device: torch.device) -> tuple[Classifier | None, str | None]:
    from alzprog.inference.classifier import load_classifier

    try:
        model, config, version = load_classifier(uri, device=device)
        return Classifier(model, config, version), None
    except Exception as exc:  # noqa: BLE001
        return None, f"stage classifier unavailable: {exc}"


# --------------------------------------------------------------------------- scoring


def score_outputs(
    outputs: dict[str, np.ndarray | None],
    target: np.ndarray,
    mask: np.ndarray,
    reasons: dict[str, str],
) -> dict[str, dict[str, Any]]:
    """Pixel metrics of each labelled output set against the truth (contract keys first)."""
    result: dict[str, dict[str, Any]] = {}
    for label, pred in outputs.items():
        if pred is None:
            result[label] = {k: None for k in CONTRACT_KEYS} | {"unavailable": reasons.get(label, "not available")}
            continue
        m = im.summarize(im.pixel_metrics(pred, target, mask))
        result[label] = {k: m[k] for k in (*CONTRACT_KEYS, *EXTRA_KEYS)}
    return result


def optional_networks(pred: np.ndarray, target: np.ndarray) -> dict[str, Any]:
    """LPIPS and Inception FID with the standard networks, or why they are unavailable."""
    return {
        "lpips": im.optional_metric(lambda: im.lpips_distance(pred, target), im.lpips_status),
        "inception_fid": im.optional_metric(lambda: im.inception_fid(target, pred), im.inception_fid_status),
    }


def lite_distances(pred: np.ndarray, target: np.ndarray) -> dict[str, Any]:
    """Frechet and perceptual distances on ImageNet EfficientNet-Lite0 features, labelled
    non-standard (not comparable to published FID or LPIPS), or why they are unavailable."""
    out: dict[str, Any] = {"label": "non-standard (ImageNet Lite0 features; not comparable to published FID/LPIPS)"}
    try:
        out["lite_frechet"] = im.lite_frechet_distance(target, pred) if len(pred) >= 2 else None
        out["lite_perceptual"] = im.lite_perceptual_distance(pred, target)
    except Exception as exc:  # noqa: BLE001 - reported, not fatal: the weights package may be missing
        out.update(lite_frechet=None, lite_perceptual=None, unavailable=str(exc))
    return out


def domain_fid(classifier: Classifier | None, reason: str | None, real: np.ndarray, fake: np.ndarray) -> dict[str, Any]:
    """FID on the stage classifier's penultimate features (needs at least 2 images each side)."""
    if classifier is None:
        return {"value": None, "unavailable": reason}
    if len(real) < 2 or len(fake) < 2:
        return {"value": None, "unavailable": "fewer than 2 images"}
    return {"value": im.fid_from_features(classifier.features(real), classifier.features(fake))}


def _generate(model: nn.Module | None, images: np.ndarray, masks: np.ndarray, device: torch.device) -> np.ndarray | None:
    from alzprog.training.progression import generate

    return None if model is None else generate(model, images, masks, device)


def evaluate_transition_outputs(
    source: np.ndarray,
    target: np.ndarray,
    mask_src: np.ndarray,
    mask_tgt: np.ndarray,
    outputs: dict[str, np.ndarray | None],
    reasons: dict[str, str],
    target_stage: int,
    classifier: Classifier | None,
    classifier_reason: str | None,
) -> dict[str, Any]:
    """Every metric of one transition for the labelled outputs (``model``, ``identity``, ``dcgan``)."""
    mask = mask_src | mask_tgt
    res: dict[str, Any] = score_outputs(outputs, target, mask, reasons)
    res["n_pairs"] = int(len(source))
    if classifier is not None:
        consistency = {k: float((classifier.predict(v) == target_stage).mean()) for k, v in outputs.items() if v is not None}
        consistency["truth"] = float((classifier.predict(target) == target_stage).mean())
        res["stage_consistency"] = consistency.get("model")
        res["stage_consistency_all"] = consistency
    else:
        res["stage_consistency"] = None
        res["stage_consistency_unavailable"] = classifier_reason
    # Anatomy: does the CSF area inside the input's brain grow from input to output?
    thr = [csf_threshold(s, m) for s, m in zip(source, mask_src)]
    src_area = [ventricle_area(s, m, t) for s, m, t in zip(source, mask_src, thr)]
    shares = {}
    for label, pred in list(outputs.items()) + [("truth", target)]:
        if pred is None:
            continue
        shares[label] = float(np.mean([ventricle_area(p, m, t) > a for p, m, t, a in zip(pred, mask_src, thr, src_area)]))
    res["ventricle_monotonic_share"] = shares.get("model")
    res["ventricle_growth_share_all"] = shares
    res["domain_fid"] = {k: domain_fid(classifier, classifier_reason, target, v) if v is not None else None for k, v in outputs.items()}
    add_change_fidelity(res, source, outputs, target, mask_src, mask)
    res["non_standard"] = {k: lite_distances(v, target) for k, v in outputs.items() if v is not None}
    if outputs.get("model") is not None:
        res["standard_networks"] = optional_networks(outputs["model"], target)
    return res


CHANGE_KEYS = ("change_corr", "growth_ratio", "growth_ratio_median")


def add_change_fidelity(
    res: dict[str, Any],
    source: np.ndarray,
    outputs: dict[str, np.ndarray | None],
    target: np.ndarray,
    source_mask: np.ndarray,
    mask: np.ndarray,
) -> None:
    """Put :func:`change_fidelity` of every available output (and of the truth itself, the
    ceiling) into ``res["change_fidelity"]``, and its headline keys into each label's row."""
    fid: dict[str, Any] = {}
    for label, pred in list(outputs.items()) + [("truth", target)]:
        if pred is None:
            fid[label] = None
            continue
        fid[label] = change_fidelity(source, pred, target, source_mask, mask)
        if label in res and isinstance(res[label], dict):
            res[label].update({k: fid[label][k] for k in CHANGE_KEYS})
    res["change_fidelity"] = fid
    res["change_fidelity_rule"] = (
        f"change_corr: Pearson correlation in the brain of G(x)-x and y-x, both Gaussian-smoothed (sigma "
        f"{CHANGE_SIGMA_256} px at 256 x 256); a zero generated change scores 0. growth_ratio: sum of generated over "
        f"sum of true CSF/ventricle growth (headline); growth_ratio_median: median per-pair ratio over pairs with "
        f"true growth >= {GROWTH_MIN_PX} px"
    )


def chain_table(pairs_by_transition: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """(subject, slice) with all four stages: the stage-k image paths as columns ``p0..p3``."""
    frame = None
    for k, (slug, src, tgt) in enumerate(TRANSITIONS):
        p = pairs_by_transition[slug][["subject", "slice", "source_path", "target_path"]]
        p = p.rename(columns={"source_path": f"p{src}", "target_path": f"p{tgt}"})
        frame = p if frame is None else frame.merge(p.drop(columns=[f"p{src}"]), on=["subject", "slice"], how="inner")
    return frame.reset_index(drop=True) if frame is not None else pd.DataFrame()


def evaluate_progression(
    split_dir: Path | str,
    out_dir: Path | str,
    *,
    pairs_csv: Path | str | None = None,
    device: str = "auto",
    alias: str = CHAMPION_ALIAS,
    baseline_alias: str = DCGAN_ALIAS,
    classifier_uri: str | None = None,
    max_pairs: int | None = None,
    log_mlflow: bool = True,
    generators: dict[str, dict[str, nn.Module | None]] | None = None,
) -> dict[str, Any]:
    """Evaluate the registered generators on the split's test subjects; write ``report.json``.

    ``generators`` (``{"model": {slug: module}, "dcgan": {...}}``) replaces the registry lookup
    (the ROI ablation uses it for unregistered runs).
    """
    from alzprog.data.split import load_split
    from alzprog.inference.chain import chain_canonical
    from alzprog.training.common import select_device
    from alzprog.training.progression import find_pairs, split_pair_cache

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = select_device(device)
    test = load_split(Path(split_dir), sides=("test",))["test"]  # leakage guard over the whole split
    pairs = {slug: find_pairs(test, slug, pairs_csv) for slug, _, _ in TRANSITIONS}
    if max_pairs:
        pairs = {k: subsample(v, max_pairs) for k, v in pairs.items()}
    if generators is None:
        model_g, dcgan_g = load_registered(alias, dev), load_registered(baseline_alias, dev)
    else:
        model_g = Generators(generators.get("model", {}), {k: "unregistered" for k in generators.get("model", {})}, {})
        dc = generators.get("dcgan", {})
        dcgan_g = Generators({s: dc.get(s) for s, _, _ in TRANSITIONS}, {s: None for s, _, _ in TRANSITIONS}, {s: "not trained in this run" for s, _, _ in TRANSITIONS})
    classifier, classifier_reason = load_classifier_or_reason(classifier_uri, dev)

    all_paths = [p for v in pairs.values() for p in (*v["source_path"], *v["target_path"])]
    if not all_paths:
        raise RuntimeError(f"no same-subject pairs on the test side of {split_dir}: nothing to compare against a true future")
    cache = split_pair_cache({"test": test}, pairs_csv)  # same path list every time: reused from disk

    def load(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
        idx = cache.index_of(paths)
        return np.asarray(cache.images[idx]), np.asarray(cache.masks[idx])

    report: dict[str, Any] = {
        "split": str(Path(split_dir).resolve()),
        "models": {"model": model_g.versions, "dcgan": dcgan_g.versions},
        "classifier": {"version": classifier.version} if classifier else {"unavailable": classifier_reason},
        "change_fidelity_rule": f"smoothed change correlation (sigma {CHANGE_SIGMA_256} px at 256) and CSF growth ratio (ratio of sums), see change_fidelity",
        "ventricle_rule": f"dark CSF = brain pixels below {CSF_FRACTION} x median brain intensity of the input, "
        f"inside the input's brain mask eroded by {CSF_ERODE} px",
    }
    for slug, src, tgt in TRANSITIONS:
        p = pairs[slug]
        if len(p) == 0:
            report[slug] = {"unavailable": "no test pairs"}
            continue
        s_img, s_mask = load(list(p["source_path"]))
        t_img, t_mask = load(list(p["target_path"]))
        outputs = {
            "model": _generate(model_g.models.get(slug), s_img, s_mask, dev),
            "identity": s_img,
            "dcgan": _generate(dcgan_g.models.get(slug), s_img, s_mask, dev),
        }
        reasons = {"model": model_g.reasons.get(slug, ""), "dcgan": dcgan_g.reasons.get(slug, "")}
        report[slug] = evaluate_transition_outputs(s_img, t_img, s_mask, t_mask, outputs, reasons, tgt, classifier, classifier_reason)
        report[slug]["transition"] = f"{STAGES[src]} -> {STAGES[tgt]}"
        log.info("%s: model %s | identity %s | dcgan %s", slug, *(_short(report[slug][k]) for k in ("model", "identity", "dcgan")))
        if slug == TRANSITIONS[0][0]:
            _save_examples(out / f"examples_{slug}.png", s_img, outputs, t_img)

    report["chain"] = _evaluate_chain(pairs, load, model_g, dcgan_g, classifier, classifier_reason, dev, out, chain_canonical)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=to_json))
    (out / "report.md").write_text(report_markdown(report))
    if log_mlflow:
        from alzprog.model_card import record_progression_evaluation

        _log_report(report, out)
        record_progression_evaluation(report)  # change fidelity on each generator version: the model card's
    return report


def _evaluate_chain(pairs, load, model_g, dcgan_g, classifier, classifier_reason, dev, out, chain_canonical) -> dict[str, Any]:
    """The whole chain from Non Demented, scored at the last step against the true Moderate image."""
    table = chain_table(pairs)
    if len(table) == 0:
        return {"unavailable": "no test subject has all four stages"}
    imgs, masks = zip(*(load(list(table[f"p{k}"])) for k in range(4)))
    truth = list(imgs)
    steps: dict[str, list[np.ndarray] | None] = {}
    for label, g in (("model", model_g), ("dcgan", dcgan_g)):
        if any(g.models.get(s) is None for s, _, _ in TRANSITIONS):
            steps[label] = None
            continue
        per_step: list[list[np.ndarray]] = [[], [], []]
        for i in range(len(table)):
            for k, st in enumerate(chain_canonical(truth[0][i], masks[0][i], 0, g.models)):
                per_step[k].append(st.image)
        steps[label] = [np.stack(s) for s in per_step]
    steps["identity"] = [truth[0], truth[0], truth[0]]
    reasons = {"model": "; ".join(model_g.reasons.values()), "dcgan": "; ".join(dcgan_g.reasons.values())}
    final = {k: (v[-1] if v is not None else None) for k, v in steps.items()}
    res: dict[str, Any] = score_outputs(final, truth[3], masks[0] | masks[3], reasons)
    res["n_chains"] = int(len(table))
    add_change_fidelity(res, truth[0], final, truth[3], masks[0], masks[0] | masks[3])
    res["non_standard"] = {k: lite_distances(v, truth[3]) for k, v in final.items() if v is not None}
    res["per_step"] = {}
    for k in range(3):
        step_out = {k2: (v[k] if v is not None else None) for k2, v in steps.items()}
        row = score_outputs(step_out, truth[k + 1], masks[0] | masks[k + 1], reasons)
        add_change_fidelity(row, truth[0], step_out, truth[k + 1], masks[0], masks[0] | masks[k + 1])
        res["per_step"][STAGES[k + 1]] = row
    if classifier is not None:
        cons = {}
        for label, v in list(steps.items()) + [("truth", truth[1:])]:
            if v is None:
                continue
            hits = [classifier.predict(v[k]) == k + 1 for k in range(3)]
            cons[label] = float(np.concatenate(hits).mean())
        res["stage_consistency"] = cons.get("model")
        res["stage_consistency_all"] = cons
    else:
        res["stage_consistency"] = None
        res["stage_consistency_unavailable"] = classifier_reason
    shares = {}
    for label, v in list(steps.items()) + [("truth", truth[1:])]:
        if v is None or label == "identity":
            continue
        ok = []
        for i in range(len(table)):
            thr = csf_threshold(truth[0][i], masks[0][i])
            areas = [ventricle_area(truth[0][i], masks[0][i], thr)] + [ventricle_area(v[k][i], masks[0][i], thr) for k in range(3)]
            ok.append(grows(areas))
        shares[label] = float(np.mean(ok))
    res["ventricle_monotonic_share"] = shares.get("model")
    res["ventricle_monotonic_share_all"] = shares
    if steps.get("model") is not None:
        res["domain_fid"] = domain_fid(classifier, classifier_reason, truth[3], steps["model"][-1])
        _save_chain_figure(out / "chains.png", truth, steps)
    return res


def subsample(frame: pd.DataFrame, n: int) -> pd.DataFrame:
    if len(frame) <= n:
        return frame
    idx = np.unique(np.linspace(0, len(frame) - 1, n).round().astype(int))
    return frame.iloc[idx].reset_index(drop=True)


def _short(d: dict[str, Any]) -> str:
    return " ".join(f"{k}={d[k]:.4f}" if isinstance(d.get(k), float) else f"{k}={d.get(k)}" for k in CONTRACT_KEYS)


def to_json(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(type(obj).__name__)


def _save_examples(path: Path, source: np.ndarray, outputs: dict[str, np.ndarray | None], target: np.ndarray, n: int = 3) -> None:
    from PIL import Image

    cols = [source[:n]] + [v[:n] for k, v in outputs.items() if k != "identity" and v is not None] + [target[:n]]
    Image.fromarray(np.concatenate([np.concatenate([c[i] for c in cols], axis=1) for i in range(min(n, len(source)))], axis=0)).save(path)


def _save_chain_figure(path: Path, truth: list[np.ndarray], steps: dict[str, list[np.ndarray] | None], n: int = 2) -> None:
    """Rows per chain: true stages 0-3 above the model's chain (and dcgan's when present)."""
    from PIL import Image

    rows = []
    for i in range(min(n, len(truth[0]))):
        rows.append(np.concatenate([truth[k][i] for k in range(4)], axis=1))
        for label in ("model", "dcgan"):
            v = steps.get(label)
            if v is not None:
                rows.append(np.concatenate([truth[0][i]] + [v[k][i] for k in range(3)], axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


def report_markdown(report: dict[str, Any]) -> str:
    """The report's headline table: in-brain SSIM / MSE / PSNR of model, identity and dcgan."""
    lines = [
        "| transition | n | model SSIM_b | identity SSIM_b | dcgan SSIM_b | model MSE_b | identity MSE_b | dcgan MSE_b | model PSNR_b | stage cons. | ventricle grows |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(v: Any, p: int = 4) -> str:
        return f"{v:.{p}f}" if isinstance(v, (int, float)) and v is not None else "n/a"

    for key in [t[0] for t in TRANSITIONS] + ["chain"]:
        r = report.get(key, {})
        if "model" not in r:
            lines.append(f"| {key} | - | {r.get('unavailable', 'n/a')} |||||||||")
            continue
        lines.append(
            f"| {key} | {r.get('n_pairs', r.get('n_chains'))} | {f(r['model']['ssim_brain'])} | {f(r['identity']['ssim_brain'])} | "
            f"{f(r['dcgan']['ssim_brain'])} | {f(r['model']['mse_brain'], 5)} | {f(r['identity']['mse_brain'], 5)} | "
            f"{f(r['dcgan']['mse_brain'], 5)} | {f(r['model']['psnr_brain'], 2)} | {f(r.get('stage_consistency'), 3)} | "
            f"{f(r.get('ventricle_monotonic_share'), 3)} |"
        )
    lines += [
        "",
        "Change fidelity (smoothed change correlation; CSF/ventricle growth ratio, pooled ratio of sums, "
        "and the median per-pair ratio; identity's zero change scores correlation 0 and ratio 0):",
        "",
        "| transition | model corr | dcgan corr | identity corr | model growth ratio | model growth (median) | dcgan growth ratio | identity growth ratio | true growth px | model / identity Lite FD (non-standard) | model / identity Lite perceptual (non-standard) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in [t[0] for t in TRANSITIONS] + ["chain"]:
        r = report.get(key, {})
        fid = r.get("change_fidelity")
        if not fid:
            continue

        def g(label: str, k: str, p: int = 3) -> str:
            return f((fid.get(label) or {}).get(k), p)

        def ns(label: str, k: str, p: int) -> str:
            return f((r.get("non_standard", {}).get(label) or {}).get(k), p)

        lines.append(
            f"| {key} | {g('model', 'change_corr')} | {g('dcgan', 'change_corr')} | {g('identity', 'change_corr')} | "
            f"{g('model', 'growth_ratio')} | {g('model', 'growth_ratio_median')} | {g('dcgan', 'growth_ratio')} | "
            f"{g('identity', 'growth_ratio')} | {g('truth', 'true_growth_px', 1)} | "
            f"{ns('model', 'lite_frechet', 2)} / {ns('identity', 'lite_frechet', 2)} | "
            f"{ns('model', 'lite_perceptual', 4)} / {ns('identity', 'lite_perceptual', 4)} |"
        )
    return "\n".join(lines) + "\n"


def _log_report(report: dict[str, Any], out: Path) -> None:
    import mlflow

    from alzprog import registry

    try:
        registry.tracking_uri()
        mlflow.set_experiment(experiment_id=registry.ensure_experiment(PROGRESSION_EXPERIMENT))
        with mlflow.start_run(run_name="evaluate-progression"):
            mlflow.set_tag("kind", "evaluation")
            metrics = {}
            for key in [t[0] for t in TRANSITIONS] + ["chain"]:
                r = report.get(key, {})
                for label in ("model", "identity", "dcgan"):
                    for m in (*CONTRACT_KEYS, *CHANGE_KEYS):
                        v = (r.get(label) or {}).get(m)
                        if isinstance(v, float) and np.isfinite(v):
                            metrics[f"{key}.{label}.{m}"] = v
            mlflow.log_metrics(metrics)
            for name in ("report.json", "report.md", "chains.png"):
                if (out / name).exists():
                    mlflow.log_artifact(str(out / name))
    except Exception as exc:  # noqa: BLE001 - the report on disk is the result; MLflow is a copy
        log.warning("could not log the evaluation to MLflow: %s", exc)
