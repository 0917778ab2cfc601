"""How models run fast on this machine, behind a few calls: the one runtime policy.

- ONNX Runtime sessions (:func:`make_session`) sized to the container: CUDA when present, and on
  a CPU threads fitted to the load. The best thread count depends on how many requests run at
  once: one request alone is fastest with every core, overlapping requests get the most
  throughput with one thread each. :class:`AdaptiveSession` holds two sessions of one model,
  ``solo`` (all CPUs) and ``shared`` (CPUs / concurrency), and picks per run; a lone request
  goes to whichever has been faster alone lately (all CPUs lose when other work busies a core).
  :func:`prepare_session` times both at load, for any session.
- The overlap hint: a caller that knows other model work shares the machine (another process)
  says so with :func:`overlapping` around its model calls, and every session run inside takes
  the shared thread count (:func:`run_session`).
- Precision of an ONNX model (:func:`choose_precision`): fp32, or the model's int8 graph
  (:mod:`alzprog.quantization`) where its recorded admission check passed.
- Eager PyTorch: :func:`prepare_torch_serving` sets the process-wide thread count once at
  start and returns the :class:`TorchThreads` policy for overlapping runs.

Measured figures behind these choices: docs/performance.md.
"""

from __future__ import annotations

import contextvars
import logging
import math
import os
import statistics
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- CPUs
def _cgroup_quota_cpus() -> float | None:
    # cgroup v2: "max 100000" or "200000 100000" (quota, period in microseconds).
    v2 = Path("/sys/fs/cgroup/cpu.max")
    try:
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            if quota != "max":
                return int(quota) / int(period)
            return None
        # cgroup v1
        q = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
        p = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
        if q.is_file() and p.is_file():
            quota_us, period_us = int(q.read_text()), int(p.read_text())
            if quota_us > 0 and period_us > 0:
                return quota_us / period_us
    except (OSError, ValueError):
        return None
    return None


def available_cpus() -> int:
    """min(CPU affinity, ceil(cgroup quota)), at least 1: what a thread pool should be sized to."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_quota_cpus()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


# --------------------------------------------------------------------------- sessions
def choose_providers(setting: str) -> list[str]:
    """``auto``: CUDA first when this onnxruntime build has it, then CPU; else the listed ones."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if setting.strip().lower() == "auto":
        wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        wanted = [p.strip() for p in setting.split(",") if p.strip()]
    chosen = [p for p in wanted if p in available]
    return chosen or ["CPUExecutionProvider"]


@dataclass(frozen=True)
class ThreadPolicy:
    """Intra-op threads for a run alone (``solo``) and for runs that overlap (``shared``)."""

    solo: int
    shared: int

    @property
    def adaptive(self) -> bool:
        return self.solo != self.shared

    def describe(self) -> str:
        return f"{self.solo} alone, {self.shared} when overlapping" if self.adaptive else str(self.solo)


class TorchThreads:
    """The adaptive policy of :class:`AdaptiveSession` for eager PyTorch, whose intra-op thread
    count is one process-wide setting: a chain that runs alone gets ``solo`` threads; while two
    overlap, or when the caller says other model work shares the machine (``overlapped``),
    every forward runs on ``shared``. Two 2-thread OpenMP teams on two cores wait on each
    other's preempted threads at every barrier; one thread each does not."""

    def __init__(self, policy: ThreadPolicy) -> None:
        self.policy = policy
        self._lock = threading.Lock()
        self._active = 0
        self._overlapped = 0
        self._current: int | None = None

    def _apply(self) -> None:  # under the lock
        import torch

        n = self.policy.solo if self._active <= 1 and self._overlapped == 0 else self.policy.shared
        if n != self._current:
            torch.set_num_threads(n)
            self._current = n

    @contextmanager
    def run(self, overlapped: bool = False) -> Iterator[None]:
        with self._lock:
            self._active += 1
            self._overlapped += overlapped
            self._apply()
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                self._overlapped -= overlapped
                self._apply()


@contextmanager
def model_work(torch_threads: TorchThreads | None = None, overlapped: bool = False) -> Iterator[None]:
    """The runtime context of one request's model work: the overlap hint (:func:`overlapping`)
    and, for eager PyTorch, the thread policy (:meth:`TorchThreads.run`)."""
    with overlapping(overlapped):
        if torch_threads is None:
            yield
        else:
            with torch_threads.run(overlapped):
                yield


def thread_policy(setting: int, concurrency: int) -> ThreadPolicy:
    """``setting`` > 0 fixes the threads per run; 0 = all CPUs alone, CPUs / concurrency when overlapping."""
    if setting > 0:
        return ThreadPolicy(setting, setting)
    cpus = available_cpus()
    return ThreadPolicy(cpus, max(1, cpus // max(1, concurrency)))


def intra_op_threads(setting: int, concurrency: int) -> int:
    """Threads per run when ``concurrency`` runs overlap (no oversubscription of the CPUs)."""
    return thread_policy(setting, concurrency).shared


def _session(path: Path, providers: list[str], threads: int):  # noqa: ANN202 - ort.InferenceSession
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Worker threads still spin *during* a run (fast hand-offs between operators) but sleep as
    # soon as it ends: otherwise they spin on after it and steal the cores from the next model
    # (the generator chain runs three sessions in turn; the classifier and generator processes
    # share cores too).
    so.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(str(path), sess_options=so, providers=providers)


class AdaptiveSession:
    """Two sessions of one model, chosen per run: ``shared`` when runs overlap, and for a run
    alone whichever of ``solo`` / ``shared`` has been faster alone lately.

    A run that starts while another is in progress takes ``shared``, so under steady load every
    run is single-threaded (best throughput). For a lone run, all CPUs are fastest on a quiet
    machine but slower than one thread when another process busies a core (ONNX Runtime's
    threads wait for the preempted one; docs/performance.md). So lone runs are timed per session (the median of the last
    ``window`` runs that no other run overlapped: one slow outlier cannot flip the choice) and
    the faster one is used; every ``explore_every``-th lone run tries the other to keep its
    figure current. :meth:`calibrate` fills both figures at load. The cost is a second copy of
    the weights in memory. Same ``run`` / ``get_inputs`` surface as an ``InferenceSession``.
    """

    def __init__(self, path: Path, providers: list[str], policy: ThreadPolicy, *, explore_every: int = 16,
                 window: int = 5) -> None:
        self.policy = policy
        self.solo = _session(path, providers, policy.solo)
        self.shared = _session(path, providers, policy.shared)
        self.explore_every = explore_every
        self._lock = threading.Lock()
        self._active = 0
        self._starts = 0
        self._lone = 0
        self._runs = {"solo": 0, "shared": 0}
        self._lone_times: dict[str, deque[float]] = {"solo": deque(maxlen=window), "shared": deque(maxlen=window)}

    @property
    def lone_ms(self) -> dict[str, float | None]:
        """Median lone-run latency (ms) of each session over its window; None before any."""
        return {k: (statistics.median(v) if v else None) for k, v in self._lone_times.items()}

    def _lone_choice(self) -> str:
        ms = self.lone_ms
        solo, shared = ms["solo"], ms["shared"]
        if solo is None or shared is None:
            return "solo" if solo is None else "shared"  # measure both first
        choice = "solo" if solo <= shared else "shared"
        if self._lone % self.explore_every == 0:
            choice = "shared" if choice == "solo" else "solo"
        return choice

    def calibrate(self, feeds: dict[str, Any], runs: int = 5) -> dict[str, float | None]:
        """Time ``runs`` lone runs of each session, alternating (after one untimed run each)."""
        for sess in (self.solo, self.shared):
            sess.run(None, feeds)
        for _ in range(runs):
            for kind, sess in (("solo", self.solo), ("shared", self.shared)):
                t0 = time.perf_counter()
                sess.run(None, feeds)
                self._lone_times[kind].append((time.perf_counter() - t0) * 1000)
        return self.lone_ms

    def run(self, output_names: list[str] | None, feeds: dict[str, Any], *, overlapped: bool = False) -> list[Any]:
        """Run on the session this moment calls for. ``overlapped``: the caller knows other
        model work shares the machine now (another process, which this session cannot see):
        one thread, and the run is not timed as a lone one."""
        with self._lock:
            self._active += 1
            self._starts += 1
            started = self._starts
            alone = self._active == 1 and not overlapped
            if alone:
                self._lone += 1
                kind = self._lone_choice()
            else:
                kind = "shared"
            first = self._runs[kind] == 0  # a session's first run allocates: never timed
            self._runs[kind] += 1
        t0 = time.perf_counter()
        try:
            return (self.solo if kind == "solo" else self.shared).run(output_names, feeds)
        finally:
            ms = (time.perf_counter() - t0) * 1000
            with self._lock:
                self._active -= 1
                # Timed only if it ran alone from start to end (no other run started meanwhile).
                if alone and not first and self._starts == started:
                    self._lone_times[kind].append(ms)

    @property
    def solo_runs(self) -> int:
        return self._runs["solo"]

    @property
    def shared_runs(self) -> int:
        return self._runs["shared"]

    def stats(self) -> dict[str, Any]:
        """Threads, runs and lone-run latency (ms, median of the window) per session."""
        ms = self.lone_ms
        return {
            kind: {"threads": getattr(self.policy, kind), "runs": self._runs[kind],
                   "lone_ms": None if ms[kind] is None else round(ms[kind], 2)}
            for kind in ("solo", "shared")
        }

    def get_inputs(self) -> list[Any]:
        return self.solo.get_inputs()

    def get_providers(self) -> list[str]:
        return self.solo.get_providers()


_OVERLAPPING: contextvars.ContextVar[bool] = contextvars.ContextVar("alzprog_overlapping", default=False)


@contextmanager
def overlapping(flag: bool = True) -> Iterator[None]:
    """Model runs inside (in this thread or task) are told that other model work shares the
    machine now: :func:`run_session` then takes the shared thread count and does not time the
    run as a lone one. ``flag=False`` leaves the hint as it is."""
    if not flag:
        yield
        return
    token = _OVERLAPPING.set(True)
    try:
        yield
    finally:
        _OVERLAPPING.reset(token)


def overlap_hinted() -> bool:
    """Whether the caller is inside :func:`overlapping`."""
    return _OVERLAPPING.get()


def run_session(session: Any, feeds: dict[str, Any], overlapped: bool = False) -> list[Any]:
    """``session.run(None, feeds)``, passing the overlap hint (``overlapped`` or an enclosing
    :func:`overlapping`) where the session takes it (:class:`AdaptiveSession`; a plain
    ``InferenceSession`` has one thread count anyway)."""
    overlapped = overlapped or _OVERLAPPING.get()
    if overlapped and isinstance(session, AdaptiveSession):
        return session.run(None, feeds, overlapped=True)
    return session.run(None, feeds)


PRECISIONS = ("auto", "fp32", "int8")


class PrecisionUnavailable(RuntimeError):
    """The precision asked for cannot serve this model (``int8`` without a passing check)."""


@dataclass(frozen=True)
class PrecisionChoice:
    """Which graph serves (``fp32`` or ``int8``) and why, in words for logs and ``/v1/info``."""

    precision: str
    reason: str


def choose_precision(setting: str, int8_passed: bool | None, providers: list[str], why_not: str = "") -> PrecisionChoice:
    """The precision to serve under ``setting`` (``auto`` | ``fp32`` | ``int8``).

    ``int8_passed``: the model's recorded int8 check (None: there is no int8 graph). ``auto``
    serves int8 only where the check passed and the CPU provider runs the model (the int8 graph
    is made and measured for CPUs; a GPU serves fp32). ``int8`` serves it wherever the check
    passed and raises :class:`PrecisionUnavailable` otherwise: a forced int8 never silently
    becomes fp32. ``why_not`` adds the reason no passing graph is there.
    """
    setting = setting.strip().lower()
    if setting not in PRECISIONS:
        raise ValueError(f"precision {setting!r}: expected one of {', '.join(PRECISIONS)}")
    if setting == "fp32":
        return PrecisionChoice("fp32", "precision fp32 asked for")
    if not int8_passed:
        missing = why_not or ("its int8 check failed" if int8_passed is False else "no int8 graph is recorded for it")
        if setting == "int8":
            raise PrecisionUnavailable(f"int8 asked for, but {missing}: run `alzprog serving quantize`, or serve fp32 "
                                       "(CLASSIFIER_PRECISION=auto or fp32)")
        return PrecisionChoice("fp32", f"auto: {missing}")
    if setting == "auto" and providers[:1] != ["CPUExecutionProvider"]:
        return PrecisionChoice("fp32", f"auto: int8 is for the CPU provider, serving on {providers[0]}")
    return PrecisionChoice("int8", f"{setting}: the int8 check passed")


def make_session(path: Path, providers: list[str], threads: int | ThreadPolicy):  # noqa: ANN201
    """A session for ``path``: fixed ``threads``, or adaptive for a CPU-only :class:`ThreadPolicy`.

    On a GPU the CPU threads only feed the device, so one session with the shared count serves.
    """
    if isinstance(threads, int):
        return _session(path, providers, threads)
    if threads.adaptive and providers == ["CPUExecutionProvider"]:
        return AdaptiveSession(path, providers, threads)
    return _session(path, providers, threads.shared)


def prepare_session(session: Any, feeds: dict[str, Any]) -> dict[str, float | None] | None:
    """Make ``session`` ready to serve: an :class:`AdaptiveSession` times both of its sessions
    alone on ``feeds`` now (so its first lone request already picks the faster one); any other
    session needs nothing. Returns the lone-run figures, or ``None``."""
    if isinstance(session, AdaptiveSession):
        return session.calibrate(feeds)
    return None


def session_threads(session: Any, policy: ThreadPolicy) -> Any:
    """What ``/v1/info`` reports about a session's threads: an :class:`AdaptiveSession`'s per-session
    runs and lone-run latency, else the policy in words."""
    return session.stats() if isinstance(session, AdaptiveSession) else policy.describe()


def prepare_torch_serving(policy: ThreadPolicy) -> TorchThreads | None:
    """Set up this process for serving eager PyTorch forwards, once at start.

    The process-wide intra-op thread count goes to ``policy.solo`` (a lone forward gets every
    core). Returns the :class:`TorchThreads` that moves forwards to ``policy.shared`` while runs
    overlap, or ``None`` for a fixed policy.
    """
    import torch

    torch.set_num_threads(policy.solo)
    return TorchThreads(policy) if policy.adaptive else None
