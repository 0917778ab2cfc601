"""``alzprog data index``: a folder of MRI slices -> one manifest CSV row per readable image.

Two layouts are understood:

* the Kaggle OASIS slice layout ``ROOT/Data/<Stage>/OAS1_<subject>_MR<session>_mpr-<acq>_<slice>.jpg``
  (``ROOT`` may also be the ``Data`` folder itself). The subject id is parsed from the file
  name, which is what makes a subject-level split possible.
* a generic ``ROOT/<class>/*.{jpg,jpeg,png}`` layout whose file names carry no subject id.
  It is accepted with a loud warning: each file becomes its own group (``subject`` is a
  stable id derived from its path), so slices of one person may land on both sides of a
  split and any accuracy measured on it is optimistic.

Every file is decoded once (thread pool) so that a corrupt file is listed and skipped here
instead of crashing a training run hours later.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from alzprog.constants import STAGES, stage_index

log = logging.getLogger(__name__)

MANIFEST_COLUMNS: tuple[str, ...] = ("path", "stage", "stage_index", "subject", "session", "acquisition", "slice")
IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png"})
# Value of session/acquisition/slice when the file name does not carry it (generic layout).
UNKNOWN = -1

# OAS1_0001_MR1_mpr-1_100.jpg -> subject OAS1_0001, session 1, acquisition 1, slice 100.
OASIS_NAME = re.compile(
    r"^(?P<subject>OAS\d+_\d+)_MR(?P<session>\d+)_mpr-(?P<acquisition>\d+)_(?P<slice>\d+)$",
    re.IGNORECASE,
)

# Class-folder spellings seen in public Alzheimer MRI datasets, normalised (lower case, no
# spaces/underscores/hyphens) -> stage index. The exact OASIS names come from STAGES.
_ALIASES: dict[str, int] = {
    **{re.sub(r"[\s_\-]", "", s.lower()): i for i, s in enumerate(STAGES)},
    "nondemented": 0,
    "verymilddemented": 1,
    "milddemented": 2,
    "moderatedemented": 3,
}

GENERIC_WARNING = (
    "file names under {root} carry no OASIS subject id ({n} of {total} images): "
    "SUBJECT-LEVEL SPLITTING IS IMPOSSIBLE for them; each file is treated as its own subject, "
    "so near-identical slices of one person can land in train and test and inflate accuracy."
)


@dataclass(frozen=True)
class SkippedFile:
    """A file that was found but could not be decoded."""

    path: str
    reason: str


def class_folder_stage(name: str) -> int | None:
    """Stage index of a class folder name (exact OASIS names, slugs, digits, common variants), else None."""
    key = re.sub(r"[\s_\-]", "", name.strip().lower())
    if key in _ALIASES:
        return _ALIASES[key]
    try:
        return stage_index(name)
    except ValueError:
        return None


def resolve_data_root(root: Path) -> Path:
    """The folder holding the stage folders: ``root/Data`` if it has them, else ``root``.

    Raises FileNotFoundError / ValueError with a clear message when neither holds a stage folder.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} is not a folder")
    for candidate in (root / "Data", root):
        if candidate.is_dir() and any(
            p.is_dir() and class_folder_stage(p.name) is not None for p in candidate.iterdir()
        ):
            return candidate
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    raise ValueError(
        f"no stage folder under {root} or {root / 'Data'}; expected folders named "
        f"{', '.join(repr(s) for s in STAGES)} (found: {', '.join(found) or 'none'})"
    )


def generic_subject_id(relative_path: str) -> str:
    """Stable group id for a file without a subject id: a hash of its path relative to the root."""
    return "file-" + hashlib.sha1(relative_path.encode("utf-8")).hexdigest()[:12]


def default_decode_check() -> Callable[[Path], None]:
    """The decode check: ``alzprog.decode.read_slice`` (full decode), PIL full load if it is absent."""
    try:
        from alzprog.decode import read_slice
    except ImportError:  # decode.py not installed in this checkout: same guarantee via PIL
        from PIL import Image

        def read_slice(path: Path) -> None:  # type: ignore[misc]
            with Image.open(path) as im:
                im.load()  # decodes every pixel: a truncated JPEG raises here, verify() would not

    def check(path: Path) -> None:
        read_slice(path)

    return check


def _check_one(check: Callable[[Path], None], path: Path) -> str | None:
    """None when ``path`` decodes, else a one-line reason. Catches everything by design."""
    try:
        check(path)
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "skip this file", never crash
        code = getattr(exc, "code", None)
        text = f"{type(exc).__name__}: {exc}".strip()
        return f"{code}: {text}" if code else text


def _image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, symlinked files included), sorted by path."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        base = Path(dirpath)
        found.extend(base / f for f in filenames if os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES)
    return sorted(found)


def scan(root: Path) -> tuple[Path, list[dict], list[str]]:
    """Walk the stage folders. Returns (data root, rows without decode check, ignored folder names)."""
    data_root = resolve_data_root(root)
    rows: list[dict] = []
    ignored: list[str] = []
    for folder in sorted(p for p in data_root.iterdir() if p.is_dir()):
        idx = class_folder_stage(folder.name)
        if idx is None:
            ignored.append(folder.name)
            continue
        # os.walk + one resolve per folder: no per-file stat or resolve on archives of ~100k files.
        for path in _image_files(folder.resolve()):
            m = OASIS_NAME.match(path.stem)
            if m:
                subject = m["subject"].upper()
                session, acquisition, sl = int(m["session"]), int(m["acquisition"]), int(m["slice"])
            else:
                rel = path.relative_to(data_root).as_posix()
                subject, session, acquisition, sl = generic_subject_id(rel), UNKNOWN, UNKNOWN, UNKNOWN
            rows.append(
                {
                    "path": str(path),
                    "stage": STAGES[idx],
                    "stage_index": idx,
                    "subject": subject,
                    "session": session,
                    "acquisition": acquisition,
                    "slice": sl,
                    "_generic": m is None,
                }
            )
    return data_root, rows, ignored


def build_manifest(
    root: Path,
    out_csv: Path | None = None,
    *,
    workers: int | None = None,
    check: Callable[[Path], None] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Index a dataset folder into a manifest DataFrame (and write it to ``out_csv`` if given).

    Columns are ``MANIFEST_COLUMNS``; ``session``/``acquisition``/``slice`` are -1 when the
    file name does not carry them. Undecodable files are left out, listed in
    ``frame.attrs["skipped"]`` and, when ``out_csv`` is given, in ``<out>.skipped.csv``.
    ``frame.attrs["generic"]`` is the number of files without a subject id.
    """
    data_root, rows, ignored = scan(Path(root))
    if ignored:
        log.warning("ignored folders that are not stage folders under %s: %s", data_root, ", ".join(ignored))
    if not rows:
        raise ValueError(f"no .jpg/.jpeg/.png images in the stage folders under {data_root}")

    check = check or default_decode_check()
    # Decoding is I/O + C code that releases the GIL, so threads give a real speed-up.
    n_workers = workers or min(16, (os.cpu_count() or 2) * 2)
    paths = [Path(r["path"]) for r in rows]
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        reasons = list(
            tqdm(
                pool.map(lambda p: _check_one(check, p), paths, chunksize=64),
                total=len(paths),
                desc="decode check",
                unit="img",
                disable=not progress,
            )
        )
    skipped = [SkippedFile(r["path"], why) for r, why in zip(rows, reasons, strict=True) if why is not None]
    good = [r for r, why in zip(rows, reasons, strict=True) if why is None]
    for s in skipped:
        log.warning("skipped undecodable file %s (%s)", s.path, s.reason)

    if not good:
        if out_csv is not None:
            Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame([s.__dict__ for s in skipped], columns=["path", "reason"]).to_csv(
                skipped_csv_path(out_csv), index=False
            )
        raise ValueError(f"none of the {len(rows)} images under {data_root} could be decoded (first: {skipped[0].reason})")
    frame = pd.DataFrame(good, columns=[*MANIFEST_COLUMNS, "_generic"])
    n_generic = int(frame["_generic"].sum()) if len(frame) else 0
    frame = frame.drop(columns="_generic")
    frame = frame.sort_values(["stage_index", "subject", "session", "acquisition", "slice", "path"], kind="stable")
    frame = frame.reset_index(drop=True)
    for col in ("stage_index", "session", "acquisition", "slice"):
        frame[col] = frame[col].astype("int64")
    frame.attrs["skipped"] = [s.__dict__ for s in skipped]
    frame.attrs["generic"] = n_generic
    frame.attrs["data_root"] = str(data_root)

    if n_generic:
        message = GENERIC_WARNING.format(root=data_root, n=n_generic, total=len(frame))
        log.warning(message)
        print(f"WARNING: {message}", flush=True)

    if out_csv is not None:
        out_csv = Path(out_csv)
        out_csv.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(out_csv, index=False)
        # Always written (possibly empty) so a stale list from an earlier run never lingers.
        pd.DataFrame([s.__dict__ for s in skipped], columns=["path", "reason"]).to_csv(
            skipped_csv_path(out_csv), index=False
        )
    return frame


def skipped_csv_path(out_csv: Path) -> Path:
    """``manifest.csv`` -> ``manifest.skipped.csv`` (the list of undecodable files)."""
    out_csv = Path(out_csv)
    return out_csv.with_name(out_csv.stem + ".skipped.csv")


def read_manifest(path: Path) -> pd.DataFrame:
    """Read a manifest (or split side) CSV with the right dtypes; checks the required columns."""
    frame = pd.read_csv(path, dtype={"subject": str, "stage": str, "path": str})
    missing = [c for c in MANIFEST_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path} is not a manifest: missing columns {', '.join(missing)}")
    return frame


def summarize(frame: pd.DataFrame) -> str:
    """A short human summary: images and subjects per stage."""
    lines = [f"{len(frame)} images, {frame['subject'].nunique()} subjects"]
    for i, stage in enumerate(STAGES):
        part = frame[frame["stage_index"] == i]
        lines.append(f"  {stage:<20} {len(part):>7} images {part['subject'].nunique():>5} subjects")
    return "\n".join(lines)


def data_source(paths: Iterable[str | Path], probe: int = 16) -> str:
    """What a set of training images is, for the model card: ``synthetic phantom`` when they lie
    in a folder that ``alzprog data synth`` wrote (its summary file is a few levels up),
    ``real (OASIS)`` for OASIS-named files, else ``unknown``."""
    from alzprog.data.phantom import SUMMARY_NAME

    sample = [Path(p) for _, p in zip(range(probe), paths)]
    for p in sample:
        if any((parent / SUMMARY_NAME).is_file() for parent in list(p.parents)[:5]):
            return "synthetic phantom"
    if sample and all(p.name.upper().startswith("OAS") for p in sample):
        return "real (OASIS)"
    return "unknown"
