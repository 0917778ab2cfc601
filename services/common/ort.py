"""ONNX Runtime sessions sized to the container: CUDA when present, threads fitted to the load.

On a CPU the best thread count depends on how many requests run at once (measured on two
AVX-512 cores, EfficientNet-B4 at 256 x 256, docs/performance.md): one request alone is fastest
with every core (25 ms with 2 threads against 46 ms with 1), while overlapping requests get the
most throughput with one thread each (42.6 images/s against 40.6 with 2 threads each, whose
threads then fight over the cores). :class:`AdaptiveSession` does both: it holds two sessions of
the same model, ``solo`` (all CPUs) for a request that runs alone and ``shared`` (CPUs /
concurrency) as soon as requests overlap, and picks per run; a lone request goes to whichever
of the two has been faster alone lately (all CPUs lose on a machine whose cores are busy with
other work).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.cpu import available_cpus


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
    # (the generator chain runs three sessions in turn: 101 ms with spinning left on, 50 ms
    # with this; the classifier and generator processes share cores too).
    so.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(str(path), sess_options=so, providers=providers)


class AdaptiveSession:
    """Two sessions of one model, chosen per run: ``shared`` when runs overlap, and for a run
    alone whichever of ``solo`` / ``shared`` has been faster alone lately.

    A run that starts while another is in progress takes ``shared``, so under steady load every
    run is single-threaded (best throughput). For a lone run, all CPUs are fastest on a quiet
    machine but about twice *slower* than one thread when another process busies a core (ONNX
    Runtime's threads wait for the preempted one: 95 ms against 47 ms for B4 on this machine,
    docs/performance.md). So lone runs are timed per session (the median of the last
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


def run_session(session: Any, feeds: dict[str, Any], overlapped: bool = False) -> list[Any]:
    """``session.run(None, feeds)``, passing the overlap hint where the session takes it
    (:class:`AdaptiveSession`; a plain ``InferenceSession`` has one thread count anyway)."""
    if overlapped and isinstance(session, AdaptiveSession):
        return session.run(None, feeds, overlapped=True)
    return session.run(None, feeds)


def make_session(path: Path, providers: list[str], threads: int | ThreadPolicy):  # noqa: ANN201
    """A session for ``path``: fixed ``threads``, or adaptive for a CPU-only :class:`ThreadPolicy`.

    On a GPU the CPU threads only feed the device, so one session with the shared count serves.
    """
    if isinstance(threads, int):
        return _session(path, providers, threads)
    if threads.adaptive and providers == ["CPUExecutionProvider"]:
        return AdaptiveSession(path, providers, threads)
    return _session(path, providers, threads.shared)
