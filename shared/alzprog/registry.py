"""MLflow tracking URI, model registration, aliases and a digest-checked local model cache.

Registered models are plain artifact folders (see :mod:`alzprog.artifacts`), not MLflow
"flavors": a version is created from the run's ``model/`` artifact folder with
``MlflowClient.create_model_version``, and a ``models:/`` URI is resolved by downloading that
folder once into the local cache, keyed by the registry (its normalised URI, hashed), the version,
its run id and the per-file digests recorded at registration (atomically, digest-checked).
Services start from :func:`cached_versions` when the tracking server is down: only the version
last resolved for that same registry and alias.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from alzprog.artifact_files import CONFIG_FILE, ArtifactIntegrityError, verify_digests
from alzprog.constants import CHAMPION_ALIAS
from alzprog.paths import data_home

log = logging.getLogger(__name__)

MODEL_ARTIFACT_PATH = "model"
# Model-version tag holding the JSON {file: sha256} of the artifact, recorded at registration.
DIGESTS_TAG = "alzprog.artifact_sha256"
# Cache entries live under this folder; the old ``<name>/<version>`` layout beside it is ignored.
CACHE_LAYOUT = "v2"
_URI_ALIAS = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)/?$")
_URI_VERSION = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)/?$")


@dataclass
class ResolvedModel:
    """A registered model version available locally, digests verified."""

    name: str
    version: str
    local_dir: Path
    config: dict[str, Any]
    run_id: str | None = None


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

    The directory is digest-checked first, so a broken artifact is never registered, and its
    per-file SHA-256 is recorded as the version tag :data:`DIGESTS_TAG`: the model cache checks
    every download and every cached folder against it.
    """
    from mlflow.exceptions import MlflowException

    digests = verify_digests(local_dir)
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
    mv = c.create_model_version(name=name, source=source, run_id=run_id, tags={**{k: str(v) for k, v in (tags or {}).items()},
                                                                              DIGESTS_TAG: json.dumps(digests, sort_keys=True)})
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


def normalise_registry_uri(uri: str) -> str:
    """The tracking URI in one spelling per registry, without credentials.

    Local stores (``sqlite:///``, ``file:`` and plain paths) become absolute resolved paths;
    server URIs get a lower-case scheme and host, no default port, no trailing slash and no
    user or password. Two URIs that reach the same registry by different routes (a proxy, another
    host name) stay different: the cache then downloads once more rather than guess.
    """
    uri = uri.strip()
    if uri.startswith("sqlite:///"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).expanduser().resolve())
    parts = urlsplit(uri)
    if parts.scheme in ("", "file") or (len(parts.scheme) == 1 and uri[1:3] in (":\\", ":/")):
        path = parts.path if parts.scheme == "file" else uri
        return "file://" + str(Path(path).expanduser().resolve())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    default = {"http": 80, "https": 443}.get(scheme)
    port = f":{parts.port}" if parts.port and parts.port != default else ""
    return urlunsplit((scheme, host + port, parts.path.rstrip("/"), parts.query, ""))


def registry_key(uri: str | None = None) -> str:
    """A short stable key of a registry: SHA-256 of :func:`normalise_registry_uri` (hex, 16).

    ``uri`` defaults to :func:`tracking_uri`.
    """
    norm = normalise_registry_uri(uri if uri is not None else tracking_uri())
    return hashlib.sha256(norm.encode()).hexdigest()[:16]


def registered_digests(tags: dict[str, str] | None) -> dict[str, str] | None:
    """The per-file SHA-256 recorded at registration (tag :data:`DIGESTS_TAG`), or None.

    Versions registered outside :func:`register_artifact` carry no such tag; their cache
    entries are then keyed and checked by run id and source only.
    """
    raw = (tags or {}).get(DIGESTS_TAG)
    if not raw:
        return None
    try:
        got = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return {str(k): str(v) for k, v in got.items()} if isinstance(got, dict) else None


@dataclass(frozen=True)
class _Identity:
    """What identifies one registered version: registry, name, version, run, source, digests."""

    registry: str
    name: str
    version: str
    run_id: str | None
    source: str
    digests: dict[str, str] | None

    def record(self) -> dict[str, Any]:
        return {"registry": self.registry, "name": self.name, "version": self.version, "run_id": self.run_id,
                "source": self.source, "registered_digests": self.digests}

    @property
    def entry(self) -> str:
        """``<version>/<run id prefix>-<hash of the identity>``, relative to the name's folder."""
        h = hashlib.sha256(json.dumps(self.record(), sort_keys=True).encode()).hexdigest()[:20]
        run = re.sub(r"[^0-9A-Za-z]", "", self.run_id or "")[:12] or "norun"
        return f"{self.version}/{run}-{h}"


def _safe_component(value: str) -> str:
    # Model names and aliases are free text in MLflow; a path component must not be.
    if re.fullmatch(r"[0-9A-Za-z][0-9A-Za-z._-]{0,120}", value):
        return value
    return "x-" + hashlib.sha256(value.encode()).hexdigest()[:24]


def _name_root(name: str, uri: str | None = None) -> Path:
    return cache_root() / CACHE_LAYOUT / registry_key(uri) / _safe_component(name)


def _pointer_path(name: str, alias: str, uri: str | None = None) -> Path:
    return _name_root(name, uri) / f"@{_safe_component(alias)}.json"


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _check_entry(folder: Path, expected: dict[str, Any]) -> str | None:
    """Why a cache entry cannot be served for the identity ``expected``; None when it can.

    The entry's record (written beside the folder at download) must name the same registry,
    version, run and source, the folder must pass its own digests, and where the registry
    recorded digests at registration the folder's digests must equal them.
    """
    record = _read_json(folder.with_name(folder.name + ".json"))
    if record is None or not folder.is_dir():
        return "not cached"
    for key in ("registry", "name", "version", "run_id", "source", "registered_digests"):
        if record.get(key) != expected.get(key):
            return f"cached {key} {record.get(key)!r} differs from the registry's {expected.get(key)!r}"
    try:
        digests = verify_digests(folder)
    except ArtifactIntegrityError as exc:
        return str(exc)
    if expected.get("registered_digests") is not None and digests != expected["registered_digests"]:
        return "files differ from the digests recorded at registration"
    if digests != record.get("digests"):
        return "files differ from the digests recorded at download"
    return None


def _identity(mv: Any, uri: str) -> _Identity:
    return _Identity(registry=normalise_registry_uri(uri), name=str(mv.name), version=str(mv.version),
                     run_id=str(mv.run_id) if mv.run_id else None, source=str(mv.source or ""),
                     digests=registered_digests(dict(mv.tags or {})))


def _download_version(ident: _Identity, uri: str) -> Path:
    """The verified cache folder of one version, downloaded atomically (temp folder + rename) unless
    a matching entry is already there."""
    import mlflow.artifacts

    root = _name_root(ident.name, uri)
    target = root / ident.entry
    why = _check_entry(target, ident.record())
    if why is None:
        return target
    if why != "not cached":
        log.warning("cached model %s v%s is not served (%s); downloading it again", ident.name, ident.version, why)
    source = client().get_model_version_download_uri(ident.name, ident.version)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp), tracking_uri=uri)
        # download_artifacts puts a folder's files under dst/<basename>.
        candidates = [tmp / Path(source.rstrip("/")).name, tmp]
        got = next((p for p in candidates if (p / CONFIG_FILE).is_file()), None)
        if got is None:
            raise ArtifactIntegrityError(f"{ident.name} v{ident.version}: downloaded artifacts have no {CONFIG_FILE}")
        digests = verify_digests(got)
        if ident.digests is not None and digests != ident.digests:
            raise ArtifactIntegrityError(
                f"{ident.name} v{ident.version}: downloaded files differ from the digests recorded at registration"
            )
        record_path = target.with_name(target.name + ".json")
        record_path.unlink(missing_ok=True)  # no record points at a half-replaced folder
        if target.exists():
            shutil.rmtree(target)
        os.replace(got, target)
        _write_json_atomic(record_path, {**ident.record(), "digests": digests})
        _write_json_atomic(root.parent / "registry.json", {"uri": ident.registry})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _resolved(ident: _Identity, folder: Path) -> ResolvedModel:
    config = json.loads((folder / CONFIG_FILE).read_text())
    return ResolvedModel(name=ident.name, version=ident.version, local_dir=folder, config=config, run_id=ident.run_id)


def resolve_model(uri: str) -> ResolvedModel:
    """Resolve ``models:/name@alias`` or ``models:/name/version`` to a verified local folder.

    The registry is asked every time for the version's run id, source and the digests recorded at
    registration; the cache entry is keyed by all of them under the registry's key
    (``<data_home>/model-cache/v2/<registry key>/<name>/<version>/<run>-<hash>/``), so another
    registry, or a re-created one, that also has this version number is never answered from the
    old folder. An entry whose files or record disagree is downloaded again. Resolving an alias
    also records the entry as the one last resolved for that alias on this registry, which is
    what :func:`cached_versions` may serve while the registry is unreachable. Folders of the old
    ``<name>/<version>`` layout are never read.
    """
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_model_uri(uri)
    reg_uri = tracking_uri()
    c = client()
    if alias is not None:
        try:
            mv = c.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            raise LookupError(f"registered model {name!r} has no alias {alias!r} ({exc})") from exc
    else:
        mv = c.get_model_version(name, str(version))
    ident = _identity(mv, reg_uri)
    local = _download_version(ident, reg_uri)
    if alias is not None:
        pointer = {"name": ident.name, "alias": alias, "version": ident.version, "entry": ident.entry}
        path = _pointer_path(name, alias, reg_uri)
        if _read_json(path) != pointer:
            _write_json_atomic(path, pointer)
    return _resolved(ident, local)


def cached_versions(name: str, alias: str = CHAMPION_ALIAS) -> list[ResolvedModel]:
    """What may be served for ``name@alias`` while the registry is unreachable: at most one version.

    Only the folder last resolved (by :func:`resolve_model`) for ``alias`` on the registry that
    :func:`tracking_uri` names now, and only while its files still match both the digests
    recorded at registration and those of its download. A folder resolved from any other registry
    URI, or left in the old ``<name>/<version>`` layout, is never returned. No network is used.
    The limit: a registry re-created at the same URI cannot be told apart while it is unreachable,
    so its previous champion is served until the registry answers again.
    """
    reg_uri = tracking_uri()
    pointer = _read_json(_pointer_path(name, alias, reg_uri))
    if pointer is None or not isinstance(pointer.get("entry"), str):
        return []
    folder = _name_root(name, reg_uri) / pointer["entry"]
    record = _read_json(folder.with_name(folder.name + ".json"))
    if record is None or record.get("registry") != normalise_registry_uri(reg_uri):
        return []
    why = _check_entry(folder, record)
    if why is not None:
        log.warning("cached model %s v%s is not served: %s", name, record.get("version"), why)
        return []
    ident = _Identity(registry=record["registry"], name=name, version=str(record["version"]),
                      run_id=record.get("run_id"), source=str(record.get("source", "")),
                      digests=record.get("registered_digests"))
    if ident.entry != pointer["entry"]:
        return []
    return [_resolved(ident, folder)]


def store_in_cache(local_dir: str | Path, name: str, version: str | int, alias: str = CHAMPION_ALIAS,
                   run_id: str | None = None, uri: str | None = None) -> Path:
    """Copy a verified model folder into the cache as the version last resolved for ``name@alias``
    on registry ``uri`` (default :func:`tracking_uri`); return the cached folder.

    For sites that start without a reachable registry (an air-gapped install, the service tests):
    :func:`cached_versions` serves it for that registry only. The entry carries no registered
    digests and no real run id, so once the registry answers, :func:`resolve_model` keys the
    registry's own version differently and downloads it rather than trust this copy.
    """
    digests = verify_digests(local_dir)
    reg_uri = uri if uri is not None else tracking_uri()
    norm = normalise_registry_uri(reg_uri)
    ident = _Identity(registry=norm, name=name, version=str(version), run_id=run_id,
                      source=f"local:{Path(local_dir).resolve()}", digests=None)
    root = _name_root(name, reg_uri)
    target = root / ident.entry
    target.parent.mkdir(parents=True, exist_ok=True)
    record_path = target.with_name(target.name + ".json")
    record_path.unlink(missing_ok=True)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(local_dir, target)
    _write_json_atomic(record_path, {**ident.record(), "digests": digests})
    _write_json_atomic(root.parent / "registry.json", {"uri": norm})
    _write_json_atomic(_pointer_path(name, alias, reg_uri),
                       {"name": name, "alias": alias, "version": ident.version, "entry": ident.entry})
    return target


# --------------------------------------------------------------------------- int8 variants
# Model-version tags of the int8 graph of a version (alzprog.quantization): the check as JSON
# (figures, tolerance, calibration, provenance, the run holding the graph), and pass/fail alone.
INT8_CHECK_TAG = "alzprog.int8.check"
INT8_PASSED_TAG = "alzprog.int8.passed"
INT8_ARTIFACT_PATH = "int8"


@dataclass(frozen=True)
class Int8Variant:
    """The int8 graph of one registered version, on local disk and digest-checked, with its check."""

    path: Path
    record: dict[str, Any]

    @property
    def passed(self) -> bool:
        return bool((self.record.get("check") or {}).get("passed"))


def record_int8(name: str, version: str | int, folder: str | Path, record: dict[str, Any]) -> str:
    """Log an int8 folder (``model_int8.onnx`` + ``int8_check.json``) as the artifacts of a new run
    of the classifier experiment and tag the version with the check; returns the run id.

    The version's own files stay as registered (their digests are the version's identity); the
    int8 graph is found through :data:`INT8_CHECK_TAG`, whose ``int8_sha256`` every download is
    checked against.
    """
    from alzprog.constants import CLASSIFIER_EXPERIMENT

    c = client()
    run = c.create_run(ensure_experiment(CLASSIFIER_EXPERIMENT), run_name=f"int8 {name} v{version}",
                       tags={"alzprog.kind": "int8_quantization", "model": name, "model_version": str(version)})
    run_id = run.info.run_id
    check = record.get("check") or {}
    try:
        for k in ("macro_f1_fp32", "macro_f1_int8", "max_abs_prob", "mean_abs_prob", "slice_agreement", "subject_agreement"):
            if isinstance(check.get(k), (int, float)):
                c.log_metric(run_id, f"int8_{k}", float(check[k]))
        c.log_param(run_id, "calibration_slices", str((record.get("calibration") or {}).get("slices")))
        c.log_param(run_id, "format", str((record.get("quantization") or {}).get("format")))
        c.log_artifacts(run_id, str(folder), artifact_path=INT8_ARTIFACT_PATH)
        c.set_terminated(run_id, "FINISHED")
    except Exception:
        c.set_terminated(run_id, "FAILED")
        raise
    full = {**record, "run_id": run_id, "artifact_path": INT8_ARTIFACT_PATH}
    set_version_tag(name, version, INT8_CHECK_TAG, json.dumps(full, sort_keys=True))
    set_version_tag(name, version, INT8_PASSED_TAG, "true" if check.get("passed") else "false")
    log.info("int8 check of %s v%s recorded (run %s): %s", name, version, run_id, "passed" if check.get("passed") else "failed")
    return run_id


def int8_record(name: str, version: str | int) -> dict[str, Any] | None:
    """The int8 check recorded on a version (:data:`INT8_CHECK_TAG`), or None when there is none."""
    raw = get_version_tags(name, version).get(INT8_CHECK_TAG)
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        log.warning("int8 check tag of %s v%s is not JSON; ignored", name, version)
        return None
    return data if isinstance(data, dict) else None


def _int8_folder(name: str, version: str | int, fp32_onnx_sha256: str, uri: str | None = None) -> Path:
    # Keyed by the fp32 graph it was made from: another version or registry never shares it.
    return _name_root(name, uri) / str(version) / f"int8-{fp32_onnx_sha256[:20]}"


def _verified_int8(folder: Path, record: dict[str, Any], fp32_onnx_sha256: str) -> Path | None:
    from alzprog.hashing import sha256_file

    path = folder / str(record.get("int8_file") or "model_int8.onnx")
    if record.get("fp32_onnx_sha256") != fp32_onnx_sha256:
        return None
    if not path.is_file() or sha256_file(path) != record.get("int8_sha256"):
        return None
    return path


def resolve_int8(name: str, version: str | int, fp32_onnx_sha256: str, offline: bool = False) -> Int8Variant | None:
    """The int8 graph recorded for ``name`` v``version``, verified, or None when there is none.

    The registry's tag is the truth: its record must name the fp32 graph being served
    (``fp32_onnx_sha256``) and the downloaded file must have the recorded ``int8_sha256``. The
    download is cached beside the version's cache entry with the record; ``offline`` (the registry
    is unreachable, the service serves a cached version) uses only that cached copy, re-verified.
    """
    import mlflow.artifacts

    reg_uri = tracking_uri()
    folder = _int8_folder(name, version, fp32_onnx_sha256, reg_uri)
    record_path = folder.with_name(folder.name + ".json")
    if offline:
        record = _read_json(record_path)
        if record is None:
            return None
        path = _verified_int8(folder, record, fp32_onnx_sha256)
        return Int8Variant(path, record) if path is not None else None
    record = int8_record(name, version)
    if record is None:
        return None
    if record.get("fp32_onnx_sha256") != fp32_onnx_sha256:
        log.warning("int8 check of %s v%s was made from another fp32 graph; ignored", name, version)
        return None
    path = _verified_int8(folder, record, fp32_onnx_sha256)
    if path is not None and _read_json(record_path) == record:
        return Int8Variant(path, record)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        mlflow.artifacts.download_artifacts(run_id=record["run_id"], artifact_path=record.get("artifact_path", INT8_ARTIFACT_PATH),
                                            dst_path=str(tmp), tracking_uri=reg_uri)
        got = next((p for p in (tmp / record.get("artifact_path", INT8_ARTIFACT_PATH), tmp) if p.is_dir()
                    and (p / str(record.get("int8_file") or "model_int8.onnx")).is_file()), None)
        if got is None or _verified_int8(got, record, fp32_onnx_sha256) is None:
            raise ArtifactIntegrityError(f"{name} v{version}: the downloaded int8 graph differs from the recorded sha256")
        record_path.unlink(missing_ok=True)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(got, folder)
        _write_json_atomic(record_path, record)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Int8Variant(folder / str(record.get("int8_file") or "model_int8.onnx"), record)


def download_run_split(run_id: str | None, dst: str | Path) -> Path:
    """The split folder (``train.csv``, ``val.csv``, ``test.csv``) logged with a training run."""
    import mlflow.artifacts

    if not run_id:
        raise LookupError("the model version has no training run to take its split from; pass the split folder")
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="split", dst_path=str(dst), tracking_uri=tracking_uri())
    folder = dst / "split"
    if not (folder / "test.csv").is_file():
        raise LookupError(f"run {run_id} has no split/test.csv artifact; pass the split folder")
    return folder
