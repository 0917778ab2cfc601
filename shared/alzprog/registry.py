"""MLflow tracking URI, model registration, aliases and a digest-checked local model cache.

Registered models are plain artifact folders (see :mod:`alzprog.artifacts`), not MLflow
"flavors": a version is created from the run's ``model/`` artifact folder with
``MlflowClient.create_model_version``, and a ``models:/`` URI is resolved by downloading that
folder once into ``<data_home>/model-cache/<name>/<version>/`` (atomically, digest-checked).
Services start from :func:`cached_versions` when the tracking server is down.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alzprog.artifacts import CONFIG_FILE, ArtifactIntegrityError, verify_digests
from alzprog.constants import CHAMPION_ALIAS
from alzprog.paths import data_home

log = logging.getLogger(__name__)

MODEL_ARTIFACT_PATH = "model"
_URI_ALIAS = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)/?$")
_URI_VERSION = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)/?$")


@dataclass
class ResolvedModel:
    """A registered model version available locally, digests verified."""

    name: str
    version: str
    local_dir: Path
    config: dict[str, Any]


def tracking_uri() -> str:
    """The tracking (and registry) URI, also set on mlflow.

    ``$MLFLOW_TRACKING_URI`` when set, else a local sqlite store at
    ``<data_home>/mlflow/mlflow.db`` (the folder is created).
    """
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        folder = data_home() / "mlflow"
        folder.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def client():
    """An ``MlflowClient`` bound to :func:`tracking_uri`."""
    from mlflow import MlflowClient

    uri = tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(name: str) -> str:
    """Return the id of experiment ``name``, creating it when missing.

    Without a tracking server, artifacts go next to the sqlite store (``<data_home>/mlflow/artifacts``)
    rather than into ``./mlruns`` of whatever folder the command was started in.
    """
    c = client()
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if tracking_uri().startswith("sqlite:"):
        location = (data_home() / "mlflow" / "artifacts").as_uri()
    return c.create_experiment(name, artifact_location=location)


def register_artifact(
    local_dir: str | Path,
    name: str,
    run_id: str,
    alias: str | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Log a model directory as run artifacts under ``model/`` and register it; return the version.

    The directory is digest-checked first, so a broken artifact is never registered.
    """
    from mlflow.exceptions import MlflowException

    verify_digests(local_dir)
    c = client()
    c.log_artifacts(run_id, str(local_dir), artifact_path=MODEL_ARTIFACT_PATH)
    run = c.get_run(run_id)
    source = f"{run.info.artifact_uri.rstrip('/')}/{MODEL_ARTIFACT_PATH}"
    try:
        c.get_registered_model(name)
    except MlflowException:
        try:
            c.create_registered_model(name)
        except MlflowException:  # created concurrently by another process
            pass
    mv = c.create_model_version(name=name, source=source, run_id=run_id, tags={k: str(v) for k, v in (tags or {}).items()})
    version = str(mv.version)
    if alias:
        set_alias(name, alias, version)
    log.info("registered %s version %s from run %s", name, version, run_id)
    return version


def set_alias(name: str, alias: str, version: str | int) -> None:
    """Point ``alias`` of registered model ``name`` at ``version``."""
    client().set_registered_model_alias(name, alias, str(version))


def get_alias_version(name: str, alias: str) -> str | None:
    """The version ``alias`` points at, or None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def set_version_tag(name: str, version: str | int, key: str, value: Any) -> None:
    """Attach a tag (e.g. the validation macro-F1) to a model version."""
    client().set_model_version_tag(name, str(version), key, str(value))


def get_version_tags(name: str, version: str | int) -> dict[str, str]:
    """Tags of one model version."""
    return dict(client().get_model_version(name, str(version)).tags or {})


def promote_if_better(
    name: str,
    version: str | int,
    metric_key: str,
    value: float,
    force: bool = False,
    alias: str = CHAMPION_ALIAS,
) -> bool:
    """Move ``alias`` to ``version`` when its metric beats the current holder's, or when forced.

    The metric is recorded on the new version as a tag ``metric_key`` either way, so the next
    candidate has something to beat. Higher is better; a tie keeps the champion. Returns
    whether the alias moved.
    """
    version = str(version)
    # Full precision: a rounded tag would let an equal candidate "beat" the champion.
    set_version_tag(name, version, metric_key, repr(float(value)))
    current = get_alias_version(name, alias)
    if force or current is None:
        set_alias(name, alias, version)
        log.info("%s@%s -> version %s (%s)", name, alias, version, "forced" if force else "first version")
        return True
    if current == version:
        return True
    try:
        current_value = float(get_version_tags(name, current).get(metric_key, "nan"))
    except ValueError:
        current_value = float("nan")
    # A champion without the metric tag cannot be compared, so the measured candidate wins.
    if current_value != current_value or float(value) > current_value + 1e-9:
        set_alias(name, alias, version)
        log.info("%s@%s -> version %s (%s %.4f > %.4f)", name, alias, version, metric_key, value, current_value)
        return True
    log.info(
        "%s@%s stays at version %s (%s %.4f <= %.4f); use --promote to force",
        name, alias, current, metric_key, value, current_value,
    )
    return False


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """Split ``models:/name@alias`` or ``models:/name/version`` into (name, alias, version)."""
    m = _URI_ALIAS.match(uri.strip())
    if m:
        return m["name"], m["alias"], None
    m = _URI_VERSION.match(uri.strip())
    if m:
        return m["name"], None, m["version"]
    raise ValueError(f"not a model URI: {uri!r} (expected models:/<name>@<alias> or models:/<name>/<version>)")


def cache_root() -> Path:
    """``<data_home>/model-cache``."""
    return data_home() / "model-cache"


def _valid_cached(dir_: Path) -> bool:
    try:
        verify_digests(dir_)
        return True
    except ArtifactIntegrityError as exc:
        log.warning("cached model %s is invalid: %s", dir_, exc)
        return False


def _download_version(name: str, version: str) -> Path:
    """Download one version into the cache atomically (temp folder + rename); return its folder."""
    import mlflow.artifacts

    target = cache_root() / name / version
    if target.is_dir() and _valid_cached(target):
        return target
    c = client()
    source = c.get_model_version_download_uri(name, version)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=target.parent))
    try:
        mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp), tracking_uri=tracking_uri())
        # download_artifacts puts a folder's files under dst/<basename>.
        candidates = [tmp / Path(source.rstrip("/")).name, tmp]
        got = next((p for p in candidates if (p / CONFIG_FILE).is_file()), None)
        if got is None:
            raise ArtifactIntegrityError(f"{name} v{version}: downloaded artifacts have no {CONFIG_FILE}")
        verify_digests(got)
        if target.exists():
            shutil.rmtree(target)
        os.replace(got, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(uri: str) -> ResolvedModel:
    """Resolve ``models:/name@alias`` or ``models:/name/version`` to a verified local folder.

    Downloads a version once into ``<data_home>/model-cache/<name>/<version>/`` and reuses it
    while its digests match.
    """
    name, alias, version = parse_model_uri(uri)
    if alias is not None:
        version = get_alias_version(name, alias)
        if version is None:
            raise LookupError(f"registered model {name!r} has no alias {alias!r}")
    assert version is not None
    local = _download_version(name, version)
    config = json.loads((local / CONFIG_FILE).read_text())
    return ResolvedModel(name=name, version=version, local_dir=local, config=config)


def cached_versions(name: str) -> list[ResolvedModel]:
    """Valid cached versions of ``name``, newest first (no tracking server needed)."""
    root = cache_root() / name
    if not root.is_dir():
        return []
    out: list[ResolvedModel] = []
    for d in sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: -int(p.name)):
        if _valid_cached(d):
            out.append(ResolvedModel(name=name, version=d.name, local_dir=d, config=json.loads((d / CONFIG_FILE).read_text())))
    return out
