"""Subject-level, stage-stratified train/val/test split with a leakage guard.

Every image of one subject (all sessions, all repeat acquisitions, all slices) lands on one
side. A random split over slices instead leaks near-identical slices of one person into
train and test and inflates accuracy by about 30 points (Yagis et al., Sci Rep 11:22544, 2021).

Subjects are assigned per stage: each stage with at least 3 subjects gets at least one
subject on every side, and the requested fractions apply within each stage. Stages with
fewer subjects cannot fill every side; they are named in the output and in
``split_report.json`` instead of being silently dropped.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from alzprog.constants import STAGES
from alzprog.data.manifest import MANIFEST_COLUMNS, read_manifest
from alzprog.hashing import sha256_file

log = logging.getLogger(__name__)

SIDES: tuple[str, ...] = ("train", "val", "test")
REPORT_NAME = "split_report.json"


class LeakageError(RuntimeError):
    """One subject appears on two sides of a split."""


@dataclass
class SplitReport:
    """What ``split_manifest`` did; written as ``split_report.json``."""

    seed: int
    test_fraction: float
    val_fraction: float
    manifest: str
    manifest_sha256: str
    split_sha256: str
    # counts[side][stage] = {"subjects": n, "images": n}
    counts: dict[str, dict[str, dict[str, int]]]
    # Stage names that do not appear on every side (too few subjects), in severity order.
    underfilled_stages: list[str] = field(default_factory=list)
    # stage -> {"subjects": n, "sides": [...sides it is on...], "missing": [...]}
    underfilled_detail: dict[str, dict] = field(default_factory=dict)
    # Subjects whose images carried more than one stage label (resolved to the most common).
    conflicting_subjects: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """Human-readable table of subjects/images per stage per side plus the warnings."""
        lines = [f"subject-level split, seed {self.seed}, test {self.test_fraction}, val {self.val_fraction}"]
        header = f"  {'stage':<20}" + "".join(f"{s:>18}" for s in SIDES)
        lines.append(header + "   (subjects/images)")
        for stage in STAGES:
            cells = "".join(
                f"{str(self.counts[s][stage]['subjects']) + '/' + str(self.counts[s][stage]['images']):>18}"
                for s in SIDES
            )
            lines.append(f"  {stage:<20}{cells}")
        if self.underfilled_stages:
            lines.append(
                f"WARNING: {len(self.underfilled_stages)} stage(s) cannot fill every side (need >= 3 subjects): "
                + "; ".join(
                    f"{s} ({self.underfilled_detail[s]['subjects']} subjects, missing from "
                    f"{', '.join(self.underfilled_detail[s]['missing'])})"
                    for s in self.underfilled_stages
                )
            )
        return "\n".join(lines)


def manifest_hash(manifest_csv: Path) -> str:
    """SHA-256 of the manifest file's bytes."""
    return sha256_file(Path(manifest_csv))


def split_hash(split_dir: Path) -> str:
    """SHA-256 over ``train.csv``, ``val.csv``, ``test.csv`` (names and bytes, fixed order).

    Identifies the exact split a model was trained and evaluated on (logged to MLflow).
    """
    h = hashlib.sha256()
    for side in SIDES:
        path = Path(split_dir) / f"{side}.csv"
        if not path.exists():
            raise FileNotFoundError(f"split side {path} is missing")
        h.update(side.encode() + b"\0")
        h.update(sha256_file(path).encode() + b"\n")
    return h.hexdigest()


def side_counts(n: int, test_fraction: float, val_fraction: float) -> tuple[int, int, int]:
    """(train, val, test) subject counts for a stage of ``n`` subjects.

    With n >= 3 every side gets at least one subject; the fractions are rounded and then
    clamped so that train keeps at least one. With n < 3: 1 -> train only; 2 -> train + test
    (a test subject is worth more than a validation one when only two people exist).
    """
    if n <= 0:
        return 0, 0, 0
    if n == 1:
        return 1, 0, 0
    if n == 2:
        return 1, 0, 1 if test_fraction > 0 else 0
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    # Keep train >= 1: take back from the larger of test/val, never below 1.
    while n - n_test - n_val < 1:
        if n_test >= n_val and n_test > 1:
            n_test -= 1
        elif n_val > 1:
            n_val -= 1
        else:  # pragma: no cover - impossible for n >= 3
            break
    return n - n_test - n_val, n_val, n_test


def subject_stages(frame: pd.DataFrame) -> tuple[pd.Series, list[str]]:
    """Stage index of each subject (most common label; ties -> more severe) and the conflicting subjects."""
    counts = frame.groupby(["subject", "stage_index"]).size().reset_index(name="n")
    counts = counts.sort_values(["subject", "n", "stage_index"], ascending=[True, False, False])
    labels = counts.drop_duplicates("subject").set_index("subject")["stage_index"]
    n_labels = counts.groupby("subject").size()
    conflicting = sorted(n_labels[n_labels > 1].index)
    return labels.astype(int), conflicting


def assign_subjects(
    frame: pd.DataFrame, seed: int, test_fraction: float, val_fraction: float
) -> tuple[dict[str, str], list[str]]:
    """Map subject -> side, stratified by the subject's stage. Deterministic for a seed."""
    labels, conflicting = subject_stages(frame)
    rng = np.random.default_rng(seed)
    side_of: dict[str, str] = {}
    for idx in range(len(STAGES)):
        subjects = np.array(sorted(labels[labels == idx].index), dtype=object)
        order = subjects[rng.permutation(len(subjects))]
        n_train, n_val, n_test = side_counts(len(subjects), test_fraction, val_fraction)
        for s in order[:n_test]:
            side_of[s] = "test"
        for s in order[n_test : n_test + n_val]:
            side_of[s] = "val"
        for s in order[n_test + n_val :]:
            side_of[s] = "train"
    return side_of, conflicting


def split_frame(
    frame: pd.DataFrame, seed: int, test_fraction: float = 0.2, val_fraction: float = 0.15
) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Split a manifest frame into sides (no files written). Returns (sides, conflicting subjects)."""
    if not (0 <= test_fraction < 1 and 0 <= val_fraction < 1 and test_fraction + val_fraction < 1):
        raise ValueError(f"bad fractions: test {test_fraction}, val {val_fraction} (each in [0,1), sum < 1)")
    side_of, conflicting = assign_subjects(frame, seed, test_fraction, val_fraction)
    side = frame["subject"].map(side_of)
    sides = {s: frame[side == s].reset_index(drop=True) for s in SIDES}
    return sides, conflicting


def _counts(sides: Mapping[str, pd.DataFrame]) -> dict[str, dict[str, dict[str, int]]]:
    out: dict[str, dict[str, dict[str, int]]] = {}
    for side in SIDES:
        f = sides[side]
        out[side] = {}
        for i, stage in enumerate(STAGES):
            part = f[f["stage_index"] == i]
            out[side][stage] = {"subjects": int(part["subject"].nunique()), "images": int(len(part))}
    return out


def split_manifest(
    manifest_csv: Path,
    out_dir: Path,
    seed: int,
    test_fraction: float = 0.2,
    val_fraction: float = 0.15,
) -> SplitReport:
    """Write ``train.csv``, ``val.csv``, ``test.csv`` and ``split_report.json`` under ``out_dir``.

    The split is by subject and stratified by stage; the leakage guard runs on the result
    before anything is written.
    """
    manifest_csv = Path(manifest_csv)
    frame = read_manifest(manifest_csv)
    if frame.empty:
        raise ValueError(f"manifest {manifest_csv} has no rows")
    sides, conflicting = split_frame(frame, seed, test_fraction, val_fraction)
    assert_no_leakage(sides)
    if conflicting:
        log.warning(
            "%d subject(s) carry more than one stage label; each was assigned by its most common label: %s",
            len(conflicting), ", ".join(conflicting[:10]) + (" ..." if len(conflicting) > 10 else ""),
        )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for side, f in sides.items():
        f.loc[:, list(MANIFEST_COLUMNS)].to_csv(out_dir / f"{side}.csv", index=False)

    counts = _counts(sides)
    underfilled: list[str] = []
    detail: dict[str, dict] = {}
    for stage in STAGES:
        present = [s for s in SIDES if counts[s][stage]["subjects"] > 0]
        if len(present) < len(SIDES):
            underfilled.append(stage)
            detail[stage] = {
                "subjects": sum(counts[s][stage]["subjects"] for s in SIDES),
                "sides": present,
                "missing": [s for s in SIDES if s not in present],
            }
    report = SplitReport(
        seed=int(seed),
        test_fraction=float(test_fraction),
        val_fraction=float(val_fraction),
        manifest=str(manifest_csv.resolve()),
        manifest_sha256=manifest_hash(manifest_csv),
        split_sha256=split_hash(out_dir),
        counts=counts,
        underfilled_stages=underfilled,
        underfilled_detail=detail,
        conflicting_subjects=conflicting,
    )
    (out_dir / REPORT_NAME).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    if underfilled:
        log.warning(report.describe().splitlines()[-1])
    return report


def _side_frames(split: Path | Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    if isinstance(split, Mapping):
        return dict(split)
    split_dir = Path(split)
    if not split_dir.is_dir():
        raise FileNotFoundError(f"split folder {split_dir} does not exist")
    frames = {
        side: pd.read_csv(split_dir / f"{side}.csv", dtype={"subject": str}, usecols=["subject", "path"])
        for side in SIDES
        if (split_dir / f"{side}.csv").exists()
    }
    if not frames:
        raise FileNotFoundError(f"no train/val/test CSV in {split_dir}")
    return frames


def assert_no_leakage(split: Path | Mapping[str, pd.DataFrame]) -> None:
    """Raise ``LeakageError`` naming every subject (and image path) found on two sides.

    ``split`` is a split folder (all of its side CSVs are checked) or a mapping side -> frame.
    """
    frames = _side_frames(split)
    names = list(frames)
    subjects = {side: set(frames[side]["subject"].astype(str)) for side in names}
    problems: list[str] = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = sorted(subjects[a] & subjects[b])
            if shared:
                shown = ", ".join(shared[:20]) + (f" ... ({len(shared)} in all)" if len(shared) > 20 else "")
                problems.append(f"{len(shared)} subject(s) on both {a} and {b}: {shown}")
            if "path" in frames[a] and "path" in frames[b]:
                paths = set(frames[a]["path"]) & set(frames[b]["path"])
                if paths:
                    problems.append(f"{len(paths)} image(s) on both {a} and {b}, e.g. {sorted(paths)[0]}")
    if problems:
        raise LeakageError("subject leakage between split sides: " + "; ".join(problems))


def load_split(split_dir: Path, sides: Iterable[str] = ("train", "val")) -> dict[str, pd.DataFrame]:
    """Load split sides after checking the WHOLE split (all sides on disk) for subject leakage."""
    split_dir = Path(split_dir)
    assert_no_leakage(split_dir)
    out: dict[str, pd.DataFrame] = {}
    for side in sides:
        if side not in SIDES:
            raise ValueError(f"unknown split side {side!r}; expected one of {', '.join(SIDES)}")
        out[side] = read_manifest(split_dir / f"{side}.csv")
    return out


def read_report(split_dir: Path) -> dict:
    """The ``split_report.json`` of a split folder."""
    return json.loads((Path(split_dir) / REPORT_NAME).read_text())

