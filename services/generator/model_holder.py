"""The three transition generators, ready to run, and the chain from a stage to Moderate.

Each transition (``alzprog.constants.TRANSITIONS``) has its own :class:`ModelSlot`; each
loaded version is a :class:`GeneratorRuntime` that runs ONNX Runtime, eager PyTorch fp32, or
eager PyTorch under bfloat16 autocast, whichever was fastest at warm-up (which one wins
depends on the model and the CPU: docs/performance.md), unless a setting forces one. bf16 is
offered only for a model whose bf16 output stays within
:data:`alzprog.precision.BF16_TOLERANCE` of its fp32 output (checked at load). The chain is the
library's one loop (:func:`alzprog.inference.chain.run_transitions`), the eager backend the
library's :class:`~alzprog.inference.chain.TorchTransition`; every returned image is marked
SYNTHETIC and re-encoded from pixels (no metadata).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Executor
from typing import Any, Callable

import numpy as np

from alzprog.artifacts import ONNX_FILE
from alzprog.constants import STAGES
from alzprog.inference.chain import TorchTransition, generator_feed, run_transitions
from alzprog.inference.runtime import ThreadPolicy, TorchThreads, make_session, model_work, prepare_session, run_session

from services.common.model_slot import ModelRef, Served
from services.common.timing import ServerTiming

log = logging.getLogger("generator.model")
WARMUP_RUNS = 4  # untimed: first runs allocate (an adaptive ORT session has two sessions to warm)
TIMED_RUNS = 5  # median of these decides the backend


class GeneratorRuntime:
    """One loaded transition generator version: uint8 canonical image + mask -> uint8 image."""

    def __init__(self, ref: ModelRef, backend: str, providers: list[str], threads: ThreadPolicy,
                 timing_pool: Executor | None = None, precision: str = "auto") -> None:
        cfg = ref.config
        if cfg.get("kind") != "progression_generator":
            raise ValueError(f"{ref.name} v{ref.version} is not a progression generator (kind={cfg.get('kind')!r})")
        self.ref = ref
        self.size = int(cfg.get("image_size", 256))
        self.session = None
        self.torch: TorchTransition | None = None
        self.bf16_fidelity: dict[str, float | bool] | None = None
        self._lock = threading.Lock()
        onnx_path = ref.local_dir / ONNX_FILE
        candidates: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {}
        if backend in ("auto", "onnxruntime") and onnx_path.is_file():
            self.session = make_session(onnx_path, providers, threads)
            self.input_name = self.session.get_inputs()[0].name
            probe = np.zeros((self.size, self.size), np.uint8)
            prepare_session(self.session, {self.input_name: generator_feed(probe, np.ones_like(probe, dtype=bool))})
            candidates["onnxruntime"] = self._run_ort
        if backend in ("auto", "torch") or self.session is None:
            from alzprog.artifacts import load_artifact

            # Prepared for serving: channels-last (docs/performance.md).
            self.torch = TorchTransition(load_artifact(ref.local_dir).model, serving=True)
            candidates["torch"] = self._run_torch
            if self._bf16_allowed(precision):
                candidates["torch-bf16"] = self._run_torch_bf16
        if precision == "bf16" and "torch-bf16" in candidates:
            candidates = {"torch-bf16": candidates["torch-bf16"]}
        timings = self._time(candidates, timing_pool)
        self.backend = min(timings, key=timings.get)
        self.timings_ms = {k: round(v * 1000, 2) for k, v in timings.items()}
        # Drop what we do not use, so memory holds one copy of the weights.
        if self.backend == "onnxruntime":
            self.torch = None
        else:
            self.session = None

    def _time(self, candidates: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]],
              pool: Executor | None) -> dict[str, float]:
        """Median seconds per call of each backend, after warm-up, timed where requests run.

        Each timed call goes through ``pool`` (the service's worker pool) when given: eager
        torch can be slower off the main thread and ONNX Runtime is not, so a measurement made
        elsewhere may pick the wrong one (docs/performance.md). The backends are
        timed in alternation, so a change in the machine's load falls on both alike.
        """
        image = np.zeros((self.size, self.size), np.uint8)
        mask = np.ones((self.size, self.size), bool)

        def call(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> float:
            t0 = time.perf_counter()
            fn(image, mask)
            return time.perf_counter() - t0

        def run(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> float:
            return pool.submit(call, fn).result() if pool is not None else call(fn)

        for fn in candidates.values():
            for _ in range(WARMUP_RUNS):
                run(fn)
        times: dict[str, list[float]] = {name: [] for name in candidates}
        for _ in range(TIMED_RUNS):
            for name, fn in candidates.items():
                times[name].append(run(fn))
        return {name: float(np.median(ts)) for name, ts in times.items()}

    def _bf16_allowed(self, precision: str) -> bool:
        """Whether bf16 may serve this model: asked for (``auto`` / ``bf16``), native on this CPU,
        and within tolerance of fp32 on the probe slices (the figures are kept for ``/v1/info``)."""
        from alzprog.precision import bf16_fidelity, cpu_bf16_native

        if precision == "fp32":
            return False
        if not cpu_bf16_native():
            if precision == "bf16":
                log.warning("GENERATOR_PRECISION=bf16 but this CPU has no native bfloat16; serving fp32",
                            extra={"model": self.ref.name})
            return False
        fidelity = bf16_fidelity(self._run_torch, self._run_torch_bf16, self.size)
        self.bf16_fidelity = fidelity.as_dict()
        if not fidelity.within:
            log.warning("bf16 output of this model is outside tolerance; serving fp32",
                        extra={"model": self.ref.name, "version": self.ref.version, "bf16_fidelity": self.bf16_fidelity})
        return fidelity.within

    def _run_ort(self, image: np.ndarray, mask: np.ndarray, overlapped: bool = False) -> np.ndarray:
        from alzprog.preprocessing import generator_output_to_uint8

        out = run_session(self.session, {self.input_name: generator_feed(image, mask)}, overlapped)[0]
        return generator_output_to_uint8(_as_tensor(out[0]))

    def _run_torch(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with self._lock:  # one torch forward at a time per module
            return self.torch(image, mask)

    def _run_torch_bf16(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        from alzprog.precision import autocast_bf16

        with autocast_bf16():
            return self._run_torch(image, mask)

    def displacement(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
        """The pixel displacement field ``(2, H, W)`` (x then y) of this transition, where the model
        predicts one (a deformation generator served by torch); ``None`` otherwise."""
        if self.torch is None:
            return None
        with self._lock:
            return self.torch.displacement(image, mask)

    def __call__(self, image: np.ndarray, mask: np.ndarray, overlapped: bool = False) -> np.ndarray:
        """One transition. ``overlapped`` (or an enclosing ``runtime.overlapping``): other model
        work shares the machine (ORT: its one-thread session; eager PyTorch takes its threads
        from the chain's :class:`TorchThreads`)."""
        if self.backend == "onnxruntime":
            return self._run_ort(image, mask, overlapped)
        if self.backend == "torch-bf16":
            return self._run_torch_bf16(image, mask)
        return self._run_torch(image, mask)


def _as_tensor(arr: np.ndarray):  # noqa: ANN202
    import torch

    return torch.from_numpy(np.ascontiguousarray(arr))


def make_loader(backend: str, providers: list[str], threads: ThreadPolicy, timing_pool: Executor | None = None,
                precision: str = "auto"):  # noqa: ANN201
    """The ``ModelSlot`` loader: ``ModelRef`` -> warmed-up ``GeneratorRuntime`` (backends timed in ``timing_pool``)."""

    def load(ref: ModelRef) -> GeneratorRuntime:
        runtime = GeneratorRuntime(ref, backend, providers, threads, timing_pool, precision)
        log.info(
            "generator ready",
            extra={"model": ref.name, "version": ref.version, "backend": runtime.backend, "warmup_ms": runtime.timings_ms,
                   "bf16_fidelity": runtime.bf16_fidelity},
        )
        return runtime

    return load


def png_data_url(image: np.ndarray) -> str:
    """Re-encode pixels as a metadata-free PNG data URL."""
    from alzprog.decode import png_data_url as data_url

    return data_url(image)


def run_chain(
    chain: list[tuple[int, Served[GeneratorRuntime]]], image: np.ndarray, mask: np.ndarray,
    timing: ServerTiming | None = None, *, overlapped: bool = False, torch_threads: TorchThreads | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Apply the transition generators in order; each step feeds the next (same brain mask).

    ``chain`` is ``[(target stage index, served generator), ...]``. Returns one step per
    transition with the synthetic image (marked SYNTHETIC, PNG data URL), the model version and
    its change map, change figures and morphometrics (:func:`alzprog.change_map.describe_chain`),
    and the input's morphometrics.
    The forwards run in turn (each needs the previous output), then every step is described
    and marked + PNG-encoded. ``timing`` gets ``forward`` (all forwards), ``describe`` (the
    change maps and measurements) and ``png`` (marking and encoding).
    ``overlapped`` (the caller runs other model work beside this chain) and ``torch_threads``
    (the process's eager-PyTorch thread policy) set the threads per forward.
    """
    t0 = time.perf_counter()
    with model_work(torch_threads, overlapped):
        outputs = run_transitions(image, mask, [served.model for _, served in chain], with_displacements=True)
    t1 = time.perf_counter()
    # Change maps and measurements of every step against the input (alzprog.change_map).
    from alzprog.change_map import describe_chain

    input_morphometry, described = describe_chain(image, outputs.images, mask, outputs.displacements)
    t2 = time.perf_counter()
    images = [_synthetic_data_url(out) for out in outputs.images]
    if timing is not None:
        timing.add("forward", t1 - t0)
        timing.add("describe", t2 - t1)
        timing.add("png", time.perf_counter() - t2)
    return [
        {
            "stage": STAGES[target],
            "stage_index": target,
            "image": url,
            "synthetic": True,
            "model": {"name": served.ref.name, "version": served.version},
            **about,
        }
        for (target, served), url, about in zip(chain, images, described)
    ], input_morphometry


def _synthetic_data_url(image: np.ndarray) -> str:
    from alzprog.preprocessing import mark_synthetic

    return png_data_url(mark_synthetic(image))

