"""``alzprog predict``: stage every slice and every subject of an archive, resumably.

Follow one run:

1. :func:`collect_items` expands the inputs (image files, folders, a manifest CSV, NIfTI
   volumes) into slice items. The subject id is parsed from the file name exactly as
   ``alzprog data index`` parses it (``manifest.OASIS_NAME``); a file without one is its own
   subject, and a NIfTI volume is one subject whose slices are picked by
   ``alzprog.volume.select_slices`` (the level range the models were trained on).
2. The items are sharded BY SUBJECT over ``RANK`` / ``WORLD_SIZE`` (set by ``torchrun``), so
   each rank owns whole subjects and writes its own part file.
3. Items already in the output CSV (read back on start) are not redone. The rest are decoded
   and canonicalised in a process pool (``alzprog.preprocessing.load_canonical``, the one
   preprocessing path) and classified in batches by the library's one inference path
   (``alzprog.inference.classifier``: ``model_input`` + model forward + calibrated softmax).
   Each batch is appended and flushed, so an interruption loses at most one batch.
4. Files that cannot be read are written to ``<out>.errors.csv`` with their reason and the run
   goes on. At the end the slice rows are soft-voted per subject into ``<out>.subjects.csv``.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alzprog.constants import CHAMPION_ALIAS, CLASSIFIER_MODEL_NAME, STAGES
from alzprog.data.manifest import IMAGE_SUFFIXES, OASIS_NAME, read_manifest

log = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".nii", ".nii.gz")
SLICE_SUFFIXES = frozenset(IMAGE_SUFFIXES | {".dcm"})
PROB_COLUMNS = tuple(f"p_{i}" for i in range(len(STAGES)))
SLICE_COLUMNS = ("source", "slice", "subject", "stage", "stage_index", *PROB_COLUMNS, "confidence", "model")
ERROR_COLUMNS = ("source", "reason")
SUBJECT_COLUMNS = ("subject", "n_slices", "stage", "stage_index", *PROB_COLUMNS, "confidence", "model")
# Slice key of a 2-D image (a volume's slices carry their axial index).
WHOLE = -1
# A volume named like the OASIS raw data (OAS1_0001_MR1_mpr-1_anon.nii) still names its subject.
_OASIS_SUBJECT = re.compile(r"^(?P<subject>OAS\d+_\d+)(?:_|$)", re.IGNORECASE)


@dataclass(frozen=True)
class Item:
    """One file to score: a slice image, or a volume whose picked slices are scored."""

    source: str
    subject: str
    volume: bool


@dataclass
class PredictSummary:
    """What one rank did."""

    out: str
    errors: str
    subjects: str | None
    rank: int
    world_size: int
    files_total: int
    files_skipped_done: int
    slices_scored: int
    files_failed: int
    seconds: float
    model: str
    extra: dict[str, Any] = field(default_factory=dict)


def is_volume_path(path: str | Path) -> bool:
    name = str(path).lower()
    return any(name.endswith(s) for s in VOLUME_SUFFIXES)


def subject_of(path: str | Path) -> str:
    """Subject id of a file: the OASIS id in its name (as ``alzprog data index`` parses it),
    else a stable id of the file itself (the file is its own subject)."""
    p = Path(path)
    stem = p.name
    for suffix in (".nii.gz", *sorted(SLICE_SUFFIXES | {".nii"}, key=len, reverse=True)):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    m = OASIS_NAME.match(stem)
    if m:
        return m["subject"].upper()
    m = _OASIS_SUBJECT.match(stem)
    if m:
        return m["subject"].upper()
    return "file-" + hashlib.sha1(str(p.resolve()).encode("utf-8")).hexdigest()[:12]


def _walk(folder: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath) / name


def collect_items(inputs: Sequence[str | Path]) -> list[Item]:
    """Expand files, folders (recursively), manifest CSVs and NIfTI volumes into items.

    Raises FileNotFoundError for an input that does not exist; files with other suffixes found
    inside folders are ignored (an explicitly named file is always tried, so a bad one is reported).
    """
    items: dict[str, Item] = {}

    def add(path: Path, subject: str | None = None) -> None:
        key = str(path.resolve())
        if key not in items:
            items[key] = Item(key, subject or subject_of(path), is_volume_path(path))

    for raw in inputs:
        p = Path(raw).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"input {p} does not exist")
        if p.is_dir():
            for f in _walk(p):
                if is_volume_path(f) or f.suffix.lower() in SLICE_SUFFIXES:
                    add(f)
        elif p.suffix.lower() == ".csv":
            frame = read_manifest(p)
            base = p.parent
            for path, subject in zip(frame["path"].astype(str), frame["subject"].astype(str), strict=True):
                fp = Path(path)
                add(fp if fp.is_absolute() else base / fp, subject)
        else:
            add(p)
    return list(items.values())


def shard_by_subject(items: Sequence[Item], rank: int, world_size: int) -> list[Item]:
    """The items of the subjects this rank owns: subjects sorted, dealt round-robin."""
    if world_size <= 1:
        return list(items)
    subjects = sorted({it.subject for it in items})
    mine = {s for i, s in enumerate(subjects) if i % world_size == rank}
    return [it for it in items if it.subject in mine]


def part_path(out: Path, rank: int, world_size: int) -> Path:
    """``results.csv`` -> ``results.part-0-of-2.csv`` under more than one rank."""
    out = Path(out)
    if world_size <= 1:
        return out
    return out.with_name(f"{out.stem}.part-{rank}-of-{world_size}{out.suffix}")


def errors_path(out: Path) -> Path:
    out = Path(out)
    return out.with_name(f"{out.stem}.errors{out.suffix}")


def subjects_path(out: Path) -> Path:
    out = Path(out)
    return out.with_name(f"{out.stem}.subjects{out.suffix}")


# ------------------------------------------------------------------ resumable CSVs


def _repair_tail(path: Path) -> None:
    """Drop a partial last line (a run killed mid-write) so appends start on a fresh line."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        data = f.seek(0) or f.read()
        cut = data.rfind(b"\n") + 1
        f.truncate(cut)


def read_done(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    """Complete rows of an append-only CSV written by this module (header checked)."""
    path = Path(path)
    _repair_tail(path)
    if not path.is_file() or path.stat().st_size == 0:
        return []
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != list(columns):
            raise ValueError(f"{path} was not written by `alzprog predict` (header {header}); choose another --out")
        return [dict(zip(columns, row)) for row in reader if len(row) == len(columns)]


class _Appender:
    """An append-only CSV, flushed (and fsynced) after each block of rows."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.is_file() or path.stat().st_size == 0
        self._f = path.open("a", newline="")
        self._w = csv.writer(self._f)
        if new:
            self._w.writerow(columns)
            self.flush()

    def write(self, rows: Iterable[Sequence[Any]]) -> None:
        self._w.writerows(rows)
        self.flush()

    def flush(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


# ------------------------------------------------------------------ decoding (worker processes)


def _decode_item(source: str, volume: bool, max_slices: int) -> tuple[list[tuple[int, np.ndarray]], str | None]:
    """Canonical slices of one file: ``[(slice key, uint8 image)]`` or a reason it failed."""
    try:
        from alzprog.preprocessing import canonicalize, load_canonical

        if not volume:
            return [(WHOLE, load_canonical(source).image)], None
        from alzprog.volume import decode_volume, select_slices

        vol = decode_volume(Path(source).read_bytes())
        choice = select_slices(vol, max_slices)
        return [(int(z), canonicalize(vol.slices[z]).image) for z in choice.indices], None
    except Exception as exc:  # noqa: BLE001 - a bad file is listed, never fatal
        code = getattr(exc, "code", None)
        text = f"{type(exc).__name__}: {exc}".strip()
        return [], (f"{code}: {text}" if code else text)


def _pool_init(threads: int) -> None:
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


# ------------------------------------------------------------------ the model


class StageScorer:
    """A stage classifier behind the library's one inference path, batched."""

    def __init__(self, model: str | Path | None = None, device: str = "cpu") -> None:
        from alzprog.inference.classifier import load_classifier

        spec = str(model) if model is not None else None
        if spec is not None and Path(spec).expanduser().is_dir():
            from alzprog.artifacts import load_artifact

            art = load_artifact(Path(spec).expanduser(), device=device)
            self.model, self.config = art.model, art.config
            self.name = str(Path(spec).expanduser().resolve())
        else:
            uri = _model_uri(spec)
            self.model, self.config, version = load_classifier(uri, device=device)
            self.name = f"{uri} (v{version})" if "/" in uri and "@" in uri else uri
        if self.config.get("kind") != "stage_classifier":
            raise ValueError(f"{self.name} is not a stage classifier (kind={self.config.get('kind')!r})")
        self.model.eval()
        self.device = device
        self.temperature = float(self.config.get("temperature", 1.0))

    def probabilities(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Calibrated stage probabilities ``(N, 4)`` of canonical uint8 slices, one forward."""
        import torch

        from alzprog.inference.classifier import calibrated_probabilities, model_input

        x = torch.stack([model_input(im, self.config) for im in images])
        with torch.inference_mode():
            logits = self.model(x.to(self.device)).float().cpu().numpy()
        return calibrated_probabilities(logits, self.temperature)


def _model_uri(spec: str | None) -> str:
    """``None`` -> the champion; ``name:version`` / ``name@alias`` / ``models:/...`` -> a registry URI."""
    if spec is None:
        return f"models:/{CLASSIFIER_MODEL_NAME}@{CHAMPION_ALIAS}"
    if spec.startswith("models:/"):
        return spec
    if "@" in spec:
        name, alias = spec.split("@", 1)
        return f"models:/{name}@{alias}"
    if ":" in spec:
        name, version = spec.rsplit(":", 1)
        return f"models:/{name}/{version}"
    raise ValueError(f"--model {spec!r}: expected a model folder, NAME:VERSION, NAME@ALIAS or models:/...")


# ------------------------------------------------------------------ the run


def dist_env() -> tuple[int, int]:
    """(rank, world size) from the ``torchrun`` environment (1 process when unset)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def predict_archive(
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    model: str | Path | None = None,
    scorer: StageScorer | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    max_slices: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = True,
    limit: int | None = None,
) -> PredictSummary:
    """Score every slice of ``inputs`` into ``out`` (this rank's part under ``torchrun``).

    Resumes: rows already in the output and files already in ``<out>.errors.csv`` are not
    redone. ``workers`` decode processes (default: every CPU but one for the forward, at least
    one). With one rank, ``<out>.subjects.csv`` (soft voting) is written at the end; with
    several, call :func:`merge_parts` once every rank is done (``alzprog predict --merge``).
    ``limit``: stop after that many new files (for measuring a subset; resumable like a kill).
    """
    import time

    import torch
    from tqdm.auto import tqdm

    from alzprog.volume import MAX_SLICES

    t0 = time.perf_counter()
    env_rank, env_world = dist_env()
    rank = env_rank if rank is None else rank
    world_size = env_world if world_size is None else world_size
    max_slices = max_slices or MAX_SLICES
    out = Path(out)
    items = shard_by_subject(collect_items(inputs), rank, world_size)
    mine = part_path(out, rank, world_size)
    err_file = errors_path(mine)
    done_rows = read_done(mine, SLICE_COLUMNS)
    done_files = {r["source"] for r in done_rows}
    failed = {r["source"] for r in read_done(err_file, ERROR_COLUMNS)}
    # A volume counts as done once any of its slices is written: its slices go out in one block.
    todo = [it for it in items if it.source not in done_files and it.source not in failed]
    skipped_done = len(items) - len(todo)
    if limit is not None:
        todo = todo[:limit]

    scorer = scorer or StageScorer(model)
    # Ranks on one machine share its cores (torchrun sets LOCAL_WORLD_SIZE).
    cpus = max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    n_workers = workers if workers is not None else max(1, cpus - 1)
    torch.set_num_threads(cpus)
    rows_out = _Appender(mine, SLICE_COLUMNS)
    errs_out = _Appender(err_file, ERROR_COLUMNS)
    scored = n_failed = 0
    bar = tqdm(total=len(todo), desc=f"predict[{rank}/{world_size}]" if world_size > 1 else "predict",
               unit="file", disable=not progress)
    pending: list[tuple[Item, int, np.ndarray]] = []

    def flush_batch(final: bool = False) -> None:
        nonlocal scored, pending
        # A volume's slices stay together in one block (the done-check reads them as one file).
        while pending and (final or len(pending) >= batch_size):
            cut = min(len(pending), max(batch_size, 1))
            while cut < len(pending) and pending[cut][0].source == pending[cut - 1][0].source:
                cut += 1
            block, pending = pending[:cut], pending[cut:]
            probs = scorer.probabilities([im for _, _, im in block])
            rows_out.write(_slice_row(it, key, p, scorer.name) for (it, key, _), p in zip(block, probs, strict=True))
            scored += len(block)

    try:
        if n_workers > 0 and len(todo) > 1:
            ctx = _mp_context()
            with ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx, initializer=_pool_init,
                                     initargs=(1,)) as pool:
                window = max(4 * batch_size, 2 * n_workers)
                futures: list[tuple[Item, Future]] = []
                it_todo = iter(todo)
                for item in it_todo:
                    futures.append((item, pool.submit(_decode_item, item.source, item.volume, max_slices)))
                    if len(futures) >= window:
                        break
                while futures:
                    item, fut = futures.pop(0)
                    nxt = next(it_todo, None)
                    if nxt is not None:
                        futures.append((nxt, pool.submit(_decode_item, nxt.source, nxt.volume, max_slices)))
                    n_failed += _collect(item, *fut.result(), pending, errs_out)
                    bar.update(1)
                    flush_batch()
        else:
            for item in todo:
                n_failed += _collect(item, *_decode_item(item.source, item.volume, max_slices), pending, errs_out)
                bar.update(1)
                flush_batch()
        flush_batch(final=True)
    finally:
        bar.close()
        rows_out.close()
        errs_out.close()

    subjects = None
    if world_size <= 1:
        subjects = str(write_subjects(mine, subjects_path(out)))
    return PredictSummary(
        out=str(mine), errors=str(err_file), subjects=subjects, rank=rank, world_size=world_size,
        files_total=len(items), files_skipped_done=skipped_done, slices_scored=scored, files_failed=n_failed,
        seconds=round(time.perf_counter() - t0, 3), model=scorer.name,
    )


def _mp_context():
    import multiprocessing as mp

    # fork shares the already-imported library; spawn where fork is unavailable.
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def _collect(item: Item, slices: list[tuple[int, np.ndarray]], reason: str | None,
             pending: list[tuple[Item, int, np.ndarray]], errs_out: _Appender) -> int:
    if reason is not None:
        log.warning("skipped %s (%s)", item.source, reason)
        errs_out.write([(item.source, reason)])
        return 1
    pending.extend((item, key, im) for key, im in slices)
    return 0


def _slice_row(item: Item, key: int, probs: np.ndarray, model: str) -> list[Any]:
    idx = int(np.argmax(probs))
    return [item.source, key, item.subject, STAGES[idx], idx, *(f"{float(p):.6f}" for p in probs),
            f"{float(probs[idx]):.6f}", model]


def soft_vote_subjects(rows: Iterable[dict[str, str]]) -> list[list[Any]]:
    """Per subject: the mean of its slice probabilities (soft voting), renormalised."""
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    models: dict[str, str] = {}
    for r in rows:
        p = np.array([float(r[c]) for c in PROB_COLUMNS])
        s = r["subject"]
        sums[s] = sums.get(s, 0.0) + p
        counts[s] = counts.get(s, 0) + 1
        models[s] = r["model"]
    out = []
    for s in sorted(sums):
        mean = sums[s] / counts[s]
        mean = mean / mean.sum()
        idx = int(np.argmax(mean))
        out.append([s, counts[s], STAGES[idx], idx, *(f"{v:.6f}" for v in mean), f"{mean[idx]:.6f}", models[s]])
    return out


def write_subjects(slice_csv: Path, out: Path) -> Path:
    """Soft-vote the slice rows of ``slice_csv`` into the subject CSV ``out`` (rewritten whole)."""
    rows = soft_vote_subjects(read_done(slice_csv, SLICE_COLUMNS))
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(SUBJECT_COLUMNS)
        w.writerows(rows)
    os.replace(tmp, out)
    return out


def merge_parts(out: str | Path, world_size: int | None = None) -> tuple[Path, Path, Path]:
    """Join the part files of every rank into ``out``, ``<out>.errors.csv`` and the subject CSV.

    ``world_size``: the number of parts expected (default: whatever parts exist, all of one run).
    Raises FileNotFoundError when a part is missing.
    """
    out = Path(out)
    parts = sorted(out.parent.glob(f"{out.stem}.part-*-of-*{out.suffix}"))
    parts = [p for p in parts if ".errors" not in p.name and ".subjects" not in p.name]
    if not parts:
        raise FileNotFoundError(f"no part files {out.stem}.part-*-of-*{out.suffix} in {out.parent}")
    sizes = {int(p.stem.rsplit("-of-", 1)[1]) for p in parts}
    n = world_size or max(sizes)
    expected = [part_path(out, r, n) for r in range(n)]
    missing = [p for p in expected if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"missing part file(s): {', '.join(map(str, missing))}")
    for target, columns, paths in ((out, SLICE_COLUMNS, expected),
                                   (errors_path(out), ERROR_COLUMNS, [errors_path(p) for p in expected])):
        tmp = target.with_name(target.name + ".tmp")
        with tmp.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(columns)
            for p in paths:
                for r in read_done(p, columns) if p.is_file() else []:
                    w.writerow([r[c] for c in columns])
        os.replace(tmp, target)
    return out, errors_path(out), write_subjects(out, subjects_path(out))
