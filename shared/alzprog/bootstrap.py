"""``alzprog bootstrap``: give an empty registry working champions, from nothing, on a CPU.

When the registry lacks a champion (the stage classifier or any of the three transition
generators), bootstrap synthesises a phantom (:func:`alzprog.data.phantom.synthesize`),
indexes and splits it by subject, trains the ``quick`` models that are missing through the
same library functions as ``alzprog train``, registers them and points ``champion`` at them,
then evaluates them on the split's held-out test subjects as ``alzprog evaluate`` does, which
records the model card's figures on the versions.
Champions that already exist are left alone, so running it twice costs one registry query.

The plan is sized to finish in under 10 minutes on 2 CPU cores (``make run`` calls it on a
fresh clone); every step prints how long it took. The models are demo models trained on a
synthetic phantom: they make the stack work end to end, they are not the project's results.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alzprog.constants import CHAMPION_ALIAS, CLASSIFIER_MODEL_NAME, TRANSITIONS, progression_model_name
from alzprog.paths import data_home

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BootstrapPlan:
    """How much data and training a bootstrap spends (overrides go to ``load_config``)."""

    subjects: int
    slices_per_subject: int
    classifier_overrides: dict[str, Any]
    progression_overrides: dict[str, Any]
    seed: int = 0
    classifier_preset: str = "transfer"


PLANS: dict[str, BootstrapPlan] = {
    # make run on a fresh clone: the transfer preset (packaged ImageNet Lite0 weights; phase 1
    # on cached features, a short phase 2) on 64 phantom subjects, and short generator runs.
    # The time and the held-out figures are in the README and docs/classifier.md.
    "quick": BootstrapPlan(
        subjects=64,
        slices_per_subject=6,
        classifier_overrides={"phase2.epochs": 0},
        # Generators: the quick preset's deform design with a step budget (a busy machine gets the
        # same models, only later); the time limit is only a guard. Their validation pairs also
        # fit the field gain. Times and held-out figures: README and docs/progression.md.
        progression_overrides={"epochs": 2, "samples_per_epoch": 320, "max_steps": 80, "time_limit_s": 600, "val_max_pairs": 24},
    ),
    # Tests: seconds, on the session's tiny phantom split.
    "tiny": BootstrapPlan(
        subjects=12,
        slices_per_subject=4,
        classifier_overrides={
            "model.image_size": 64,
            "model.width_mult": 0.25,
            "model.depth_mult": 0.25,
            "phase1.epochs": 1,
            "phase2.epochs": 1,
            "batch_size": 16,
        },
        progression_overrides={"epochs": 1, "samples_per_epoch": 16, "max_steps": 2, "base_channels": 4, "crop_size": 64, "val_max_pairs": 4},
        classifier_preset="quick",
    ),
}


# Test pairs per transition the bootstrap's progression evaluation scores (bounded time).
EVAL_MAX_PAIRS = 24
PENDING_CARD_FILE = "pending_card_figures.json"


@dataclass
class BootstrapReport:
    """What bootstrap did: the seconds per step and the champion versions afterwards."""

    steps: list[tuple[str, float]] = field(default_factory=list)
    trained: list[str] = field(default_factory=list)
    champions: dict[str, str | None] = field(default_factory=dict)

    @property
    def total_s(self) -> float:
        return sum(s for _, s in self.steps)


def champion_versions(alias: str = CHAMPION_ALIAS) -> dict[str, str | None]:
    """``{registered name: version or None}`` for the classifier and the three generators."""
    from alzprog.registry import get_alias_version

    names = [CLASSIFIER_MODEL_NAME] + [progression_model_name(slug) for slug, _, _ in TRANSITIONS]
    return {name: get_alias_version(name, alias) for name in names}


class _Timer:
    def __init__(self, report: BootstrapReport, name: str, echo: bool) -> None:
        self.report, self.name, self.echo = report, name, echo

    def __enter__(self) -> "_Timer":
        if self.echo:
            print(f"[bootstrap] {self.name} ...", flush=True)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        seconds = time.perf_counter() - self.t0
        self.report.steps.append((self.name, seconds))
        if self.echo:
            status = "failed" if exc[0] else "done"
            print(f"[bootstrap] {self.name}: {status} in {seconds:.1f} s", flush=True)


def _evaluate_for_card(split_dir: Path, out: Path, champions: dict[str, str | None], classifier: bool,
                       generators: bool, echo: bool) -> None:
    """``alzprog evaluate classifier`` / ``progression`` on the split's test subjects for what was
    just trained: they record the held-out figures on the versions (alzprog.model_card). A failed
    evaluation leaves the card without figures and says why; the models still serve."""
    if classifier:
        from alzprog.evaluation.classifier import evaluate_classifier

        try:
            uri = f"models:/{CLASSIFIER_MODEL_NAME}/{champions[CLASSIFIER_MODEL_NAME]}"
            evaluate_classifier(split_dir, uri, out / "classifier", baselines=False, progress=echo)
        except Exception as exc:  # noqa: BLE001 - the card then has no classifier figures
            log.warning("classifier evaluation for the model card failed: %s", exc)
    if generators:
        from alzprog.evaluation.progression import evaluate_progression

        try:
            evaluate_progression(split_dir, out / "progression", max_pairs=EVAL_MAX_PAIRS)
        except Exception as exc:  # noqa: BLE001 - the card then has no change fidelity
            log.warning("progression evaluation for the model card failed: %s", exc)


def evaluate_pending(work_dir: Path | str | None = None, echo: bool = True) -> bool:
    """Run the held-out evaluation a ``bootstrap(evaluate=False)`` left pending; False if none was."""
    work = Path(work_dir) if work_dir else data_home() / "bootstrap"
    note = work / PENDING_CARD_FILE
    if not note.is_file():
        return False
    pending = json.loads(note.read_text())
    report = BootstrapReport()
    with _Timer(report, "evaluate on the held-out test subjects (the model card's figures)", echo):
        _evaluate_for_card(Path(pending["split"]), work / "evaluation", pending["champions"],
                           bool(pending["classifier"]), bool(pending["generators"]), echo)
    note.unlink()
    return True


def bootstrap(
    plan: str | BootstrapPlan = "quick",
    *,
    work_dir: Path | str | None = None,
    split_dir: Path | str | None = None,
    force: bool = False,
    echo: bool = True,
    evaluate: bool = True,
) -> BootstrapReport:
    """Train, register and promote the missing champions; return what was done and how long it took.

    ``split_dir``: reuse an existing subject-level split instead of synthesising a phantom.
    ``force``: train and promote all four even when champions exist.
    ``evaluate=False``: skip the held-out evaluation of what was trained and leave a note of it
    in the work folder for :func:`evaluate_pending` (``alzprog bootstrap --card-figures``).
    """
    from alzprog.registry import tracking_uri

    p = PLANS[plan] if isinstance(plan, str) else plan
    report = BootstrapReport()
    work = Path(work_dir) if work_dir else data_home() / "bootstrap"
    with _Timer(report, "check the registry", echo):
        uri = tracking_uri()
        before = champion_versions()
    missing = [name for name, v in before.items() if v is None or force]
    if echo:
        print(f"[bootstrap] registry {uri}: champions {before}", flush=True)
    if not missing:
        report.champions = before
        if echo:
            print("[bootstrap] every champion exists; nothing to train", flush=True)
        return report

    if split_dir is None:
        from alzprog.data.manifest import build_manifest
        from alzprog.data.phantom import synthesize
        from alzprog.data.split import split_manifest

        phantom = work / "phantom"
        with _Timer(report, f"synthesise a phantom ({p.subjects} subjects x {p.slices_per_subject} slices)", echo):
            synthesize(phantom, n_subjects=p.subjects, seed=p.seed, mix="balanced", slices_per_subject=p.slices_per_subject)
        with _Timer(report, "index and split by subject", echo):
            manifest = work / "manifest.csv"
            build_manifest(phantom, manifest)
            split_dir = work / "split"
            split_manifest(manifest, split_dir, seed=p.seed, test_fraction=0.2, val_fraction=0.2)
    split_dir = Path(split_dir)

    if CLASSIFIER_MODEL_NAME in missing:
        from alzprog.training.classifier import train_classifier
        from alzprog.training.config import load_config

        cfg = load_config("classifier", p.classifier_preset, overrides=p.classifier_overrides)
        with _Timer(report, f"train the {p.classifier_preset} stage classifier", echo):
            result = train_classifier(cfg, split_dir, out_dir=work / "classifier", register=True, promote=True, progress=echo)
        report.trained.append(f"{CLASSIFIER_MODEL_NAME} v{result.version} (val macro-F1 {result.best_val_macro_f1:.3f})")

    transitions = [slug for slug, _, _ in TRANSITIONS if progression_model_name(slug) in missing]
    if transitions:
        from alzprog.data.split import load_split
        from alzprog.training.config import load_config
        from alzprog.training.progression import split_pair_cache, train_transition

        overrides = dict(p.progression_overrides)
        overrides.setdefault("progress", echo)
        cfg = load_config("progression", "quick", overrides=overrides)
        frames = load_split(split_dir, sides=("train", "val"))
        # A middle stage is one transition's target and the next one's source: canonicalise once.
        with _Timer(report, "canonicalise the generators' pairs", echo):
            cache = split_pair_cache(frames, progress=echo)
        for slug in transitions:
            with _Timer(report, f"train the quick {slug} generator", echo):
                r = train_transition(split_dir, slug, cfg, out_dir=work / "progression" / slug, register=True, promote=True,
                                     frames=frames, cache=cache)
            report.trained.append(f"{r.model_name} v{r.version}")

    report.champions = champion_versions()
    absent = [name for name, v in report.champions.items() if v is None]
    if absent:
        raise RuntimeError(f"bootstrap finished but these have no {CHAMPION_ALIAS}: {', '.join(absent)}")
    pending = {"split": str(split_dir), "champions": report.champions,
               "classifier": CLASSIFIER_MODEL_NAME in missing, "generators": bool(transitions)}
    if evaluate:
        with _Timer(report, "evaluate on the held-out test subjects (the model card's figures)", echo):
            _evaluate_for_card(split_dir, work / "evaluation", report.champions, pending["classifier"],
                               pending["generators"], echo)
    elif pending["classifier"] or pending["generators"]:
        # The evaluation is left for later (`make run` starts it once the services answer).
        (work / PENDING_CARD_FILE).write_text(json.dumps(pending, indent=2))
    if echo:
        print("[bootstrap] time per step:", flush=True)
        for name, seconds in report.steps:
            print(f"  {seconds:7.1f} s  {name}", flush=True)
        print(f"  {report.total_s:7.1f} s  total; champions: {report.champions}", flush=True)
    return report
