"""One served model behind a registry alias, swapped atomically when the alias moves.

A :class:`ModelSlot` resolves ``models:/<name>@<alias>`` with ``alzprog.registry`` (download
into the local cache by version, digest-checked), builds the ready-to-run object with the
service's ``loader`` (ONNX Runtime session, warm-up) and only then replaces one reference.
A request reads ``slot.current`` once and keeps using that object, so a swap never drops or
mixes requests.

Failure policy:
- MLflow down at start: serve the version last resolved for this alias on the same registry
  URI, if its digests still verify (``alzprog.registry.cached_versions``); without it the slot
  stays empty (service not ready) and the watcher keeps retrying.
- MLflow down while serving: keep serving; retry at the next poll.
- A new version that fails its digest, is a pickle, or fails to load: refused, logged, the
  last good model keeps serving.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

from services.common import metrics

log = logging.getLogger("services.model_slot")
T = TypeVar("T")


@dataclass(frozen=True)
class ModelRef:
    """A registry model version available on local disk."""

    name: str
    version: str
    local_dir: Path
    config: dict[str, Any]
    source: str = "registry"  # "registry" or "cache" (MLflow was unreachable)


@dataclass(frozen=True)
class Served(Generic[T]):
    """What a request uses: the model object plus where it came from."""

    ref: ModelRef
    model: T
    loaded_at: float = field(default_factory=time.time)

    @property
    def version(self) -> str:
        return self.ref.version


def resolve_alias(name: str, alias: str) -> ModelRef:
    """Resolve ``models:/name@alias`` through the shared registry into the local cache."""
    from alzprog.registry import resolve_model

    r = resolve_model(f"models:/{name}@{alias}")
    return ModelRef(name=r.name, version=str(r.version), local_dir=Path(r.local_dir), config=dict(r.config))


def cached_refs(name: str, alias: str) -> list[ModelRef]:
    """The cached version last resolved for ``name@alias`` on this registry, if it still verifies
    (used when MLflow is down)."""
    from alzprog.registry import cached_versions

    return [
        ModelRef(name=name, version=str(r.version), local_dir=Path(r.local_dir), config=dict(r.config), source="cache")
        for r in cached_versions(name, alias)
    ]


class ModelSlot(Generic[T]):
    """The model currently served for one registered name and alias."""

    def __init__(self, service: str, name: str, alias: str, loader: Callable[[ModelRef], T]) -> None:
        self.service = service
        self.name = name
        self.alias = alias
        self.loader = loader
        self._current: Served[T] | None = None
        self._lock = threading.Lock()  # one refresh at a time; readers never take it
        self.last_error: str | None = None
        self.last_check: float | None = None
        self.refused: dict[str, str] = {}  # version -> why it was refused

    @property
    def current(self) -> Served[T] | None:
        """The served model (one atomic reference read)."""
        return self._current

    @property
    def ready(self) -> bool:
        return self._current is not None

    def info(self) -> dict[str, Any]:
        cur = self._current
        return {
            "name": self.name,
            "alias": self.alias,
            "ready": cur is not None,
            "version": cur.version if cur else None,
            "source": cur.ref.source if cur else None,
            "last_error": self.last_error,
        }

    def _swap(self, ref: ModelRef) -> None:
        t0 = time.perf_counter()
        model = self.loader(ref)  # builds and warms up fully before anyone sees it
        old = self._current
        self._current = Served(ref=ref, model=model)
        if old is not None:
            metrics.MODEL_INFO.labels(self.service, self.name, old.version).set(0)
            metrics.MODEL_SWAPS.labels(self.service, self.name).inc()
        metrics.MODEL_INFO.labels(self.service, self.name, ref.version).set(1)
        log.info(
            "model loaded",
            extra={
                "model": self.name,
                "version": ref.version,
                "previous": old.version if old else None,
                "source": ref.source,
                "load_s": round(time.perf_counter() - t0, 3),
            },
        )

    def refresh(self) -> bool:
        """Check the alias once; load and swap if it moved. Returns True when a swap happened."""
        with self._lock:
            self.last_check = time.time()
            if self._current is None and self.last_error is None:
                # Until the first answer, /readyz says where the model is being looked for: a
                # wrong or unreachable registry is then visible while its client still waits.
                import os
                import re

                # Credentials in the URI never reach /readyz or the logs.
                uri = re.sub(r"//[^/@]*@", "//", os.environ.get("MLFLOW_TRACKING_URI", "<local store>"))
                self.last_error = f"waiting for the registry at {uri} to resolve {self.name}@{self.alias}"
                log.info("resolving model", extra={"model": self.name, "error": self.last_error})
            try:
                ref = resolve_alias(self.name, self.alias)
            except Exception as exc:  # noqa: BLE001 - registry down, alias missing, digest failure
                self.last_error = f"resolve failed: {type(exc).__name__}: {str(exc)[:200]}"
                log.warning("alias resolve failed", extra={"model": self.name, "error": self.last_error})
                if self._current is None:
                    return self._fallback_to_cache()
                return False
            cur = self._current
            if cur is not None and cur.version == ref.version and cur.ref.source == "registry":
                self.last_error = None
                return False
            if cur is not None and cur.version == ref.version:
                # Same version as the cached one we already serve: now confirmed by the registry.
                self._current = Served(ref=ref, model=cur.model, loaded_at=cur.loaded_at)
                self.last_error = None
                return False
            try:
                self._swap(ref)
                self.last_error = None
                return True
            except Exception as exc:  # noqa: BLE001 - keep the last good model
                self.refused[ref.version] = f"{type(exc).__name__}: {str(exc)[:200]}"
                self.last_error = f"version {ref.version} refused: {self.refused[ref.version]}"
                log.error("new model version refused", extra={"model": self.name, "version": ref.version, "error": self.last_error})
                if self._current is None:
                    return self._fallback_to_cache(exclude=ref.version)
                return False

    def _fallback_to_cache(self, exclude: str | None = None) -> bool:
        try:
            refs = [r for r in cached_refs(self.name, self.alias) if r.version != exclude]
        except Exception as exc:  # noqa: BLE001
            log.warning("model cache unreadable", extra={"model": self.name, "error": type(exc).__name__})
            return False
        for ref in refs:
            try:
                self._swap(ref)
                log.warning("serving cached model while the registry is unreachable", extra={"model": self.name, "version": ref.version})
                return True
            except Exception as exc:  # noqa: BLE001 - try the next older one
                log.warning("cached model failed to load", extra={"model": self.name, "version": ref.version, "error": type(exc).__name__})
        return False


class SlotWatcher:
    """Background thread that refreshes slots: quickly while any is empty, then every ``poll_s``."""

    def __init__(self, slots: list[ModelSlot[Any]], poll_s: float, retry_s: float = 2.0) -> None:
        self.slots = slots
        self.poll_s = poll_s
        self.retry_s = retry_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh_all(self) -> None:
        for slot in self.slots:
            if self._stop.is_set():
                return
            try:
                slot.refresh()
            except Exception:  # noqa: BLE001 - the watcher must never die
                log.exception("slot refresh crashed", extra={"model": slot.name})

    def _run(self) -> None:
        while not self._stop.is_set():
            self.refresh_all()
            wait = self.retry_s if not all(s.ready for s in self.slots) else self.poll_s
            self._stop.wait(wait)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="champion-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def limit_mlflow_client(timeout_s: int) -> None:
    """Keep the MLflow client from retrying for minutes when the server is down: the watcher
    retries on its own schedule, so each registry call should fail fast instead."""
    import os

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout_s))
