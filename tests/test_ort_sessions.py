"""ONNX Runtime sessions of the model services: the adaptive thread policy (alzprog/inference/runtime.py)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from alzprog.inference.runtime import AdaptiveSession, ThreadPolicy, make_session, thread_policy


@pytest.fixture(scope="module")
def conv_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small convolutional net (a few ms per run), exported with the project's exporter."""
    from alzprog.artifacts import export_onnx_model

    net = torch.nn.Sequential(
        torch.nn.Conv2d(2, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 1, 3, padding=1),
    ).eval()
    path = tmp_path_factory.mktemp("ort") / "net.onnx"
    export_onnx_model(net, torch.zeros(1, 2, 128, 128), path)
    return path


def test_thread_policy_gives_a_lone_request_every_cpu_and_overlapping_ones_a_share(monkeypatch) -> None:
    monkeypatch.setattr("alzprog.inference.runtime.available_cpus", lambda: 4)
    assert thread_policy(0, 2) == ThreadPolicy(solo=4, shared=2)
    assert thread_policy(0, 4).adaptive
    assert thread_policy(3, 2) == ThreadPolicy(3, 3) and not thread_policy(3, 2).adaptive
    assert thread_policy(0, 8) == ThreadPolicy(4, 1)


def _run_overlapping(session: AdaptiveSession, x: np.ndarray, per_thread: int = 15) -> list[np.ndarray]:
    name = session.get_inputs()[0].name
    results: list[np.ndarray] = []
    start = threading.Barrier(2)

    def worker() -> None:
        start.wait()
        for _ in range(per_thread):
            results.append(session.run(None, {name: x})[0])

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_adaptive_session_times_both_sessions_alone_then_overlapping_runs_go_shared(conv_onnx: Path) -> None:
    session = make_session(conv_onnx, ["CPUExecutionProvider"], ThreadPolicy(solo=2, shared=1))
    assert isinstance(session, AdaptiveSession)
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((1, 2, 128, 128)).astype(np.float32)
    # Lone runs before any calibration: solo first (its first run allocates and is not timed),
    # then shared, until both are timed.
    alone = [session.run(None, {name: x})[0] for _ in range(4)]
    assert session.solo_runs >= 2 and session.shared_runs >= 2
    assert session.lone_ms["solo"] is not None and session.lone_ms["shared"] is not None

    shared_before = session.shared_runs
    results = _run_overlapping(session, x)
    assert session.shared_runs > shared_before, "two threads running 15 inferences each never overlapped"
    assert session.solo_runs + session.shared_runs == 4 + 30
    for out in results:  # both sessions compute the same function
        np.testing.assert_allclose(out, alone[0], rtol=1e-4, atol=1e-5)
    stats = session.stats()
    assert stats["solo"]["threads"] == 2 and stats["shared"]["threads"] == 1


def test_calibrate_times_both_sessions_alone(conv_onnx: Path) -> None:
    session = AdaptiveSession(conv_onnx, ["CPUExecutionProvider"], ThreadPolicy(solo=2, shared=1))
    name = session.get_inputs()[0].name
    ms = session.calibrate({name: np.zeros((1, 2, 128, 128), np.float32)}, runs=3)
    assert ms["solo"] > 0 and ms["shared"] > 0
    assert len(session._lone_times["solo"]) == len(session._lone_times["shared"]) == 3


def _set_lone(session: AdaptiveSession, solo: float, shared: float) -> None:
    for kind, value in (("solo", solo), ("shared", shared)):
        session._lone_times[kind].clear()
        session._lone_times[kind].extend([value] * session._lone_times[kind].maxlen)


@pytest.mark.parametrize("faster", ["solo", "shared"])
def test_a_lone_run_uses_the_session_that_was_faster_alone_and_sometimes_checks_the_other(conv_onnx: Path, faster: str) -> None:
    """On a busy machine one thread beats all CPUs for a lone run; the session follows the measurements."""
    session = AdaptiveSession(conv_onnx, ["CPUExecutionProvider"], ThreadPolicy(solo=2, shared=1), explore_every=8)
    name = session.get_inputs()[0].name
    x = np.zeros((1, 2, 128, 128), np.float32)
    session.calibrate({name: x}, runs=1)
    before = dict(session._runs)
    for _ in range(32):
        # Frozen figures (reset before every run): only the choice is under test.
        _set_lone(session, 5.0, 20.0) if faster == "solo" else _set_lone(session, 20.0, 5.0)
        session.run(None, {name: x})
    used = {k: session._runs[k] - before[k] for k in before}
    other = "shared" if faster == "solo" else "solo"
    assert used[other] == 32 // 8, used  # the exploration runs only
    assert used[faster] == 32 - 32 // 8, used


def test_one_slow_outlier_does_not_flip_the_choice(conv_onnx: Path) -> None:
    """The figure is a median over a window: a single slow lone run (a hiccup) changes nothing."""
    session = AdaptiveSession(conv_onnx, ["CPUExecutionProvider"], ThreadPolicy(solo=2, shared=1), window=5)
    session._lone = 1  # not an exploration turn
    _set_lone(session, 10.0, 20.0)
    session._lone_times["solo"].append(500.0)
    assert session._lone_choice() == "solo"
    for _ in range(3):  # a lasting change (another process took a core) does flip it
        session._lone_times["solo"].append(500.0)
    assert session._lone_choice() == "shared"


def test_an_overlapped_run_goes_shared_and_leaves_the_lone_timings_alone(conv_onnx: Path) -> None:
    """The caller knows another process works beside this run: one thread, and not a lone sample."""
    session = AdaptiveSession(conv_onnx, ["CPUExecutionProvider"], ThreadPolicy(solo=2, shared=1))
    name = session.get_inputs()[0].name
    x = np.zeros((1, 2, 128, 128), np.float32)
    session.calibrate({name: x}, runs=2)
    _set_lone(session, 5.0, 20.0)  # solo faster alone: a lone run would take it
    before, lone = dict(session._runs), {k: list(v) for k, v in session._lone_times.items()}
    out = session.run(None, {name: x}, overlapped=True)
    assert np.allclose(out[0], session.solo.run(None, {name: x})[0], atol=1e-5)
    assert session._runs["shared"] == before["shared"] + 1 and session._runs["solo"] == before["solo"]
    assert {k: list(v) for k, v in session._lone_times.items()} == lone
    session.run(None, {name: x})  # a plain lone run still takes solo
    assert session._runs["solo"] == before["solo"] + 1


def test_fixed_threads_or_a_gpu_provider_list_give_one_plain_session(conv_onnx: Path) -> None:
    assert not isinstance(make_session(conv_onnx, ["CPUExecutionProvider"], ThreadPolicy(2, 2)), AdaptiveSession)
    assert not isinstance(make_session(conv_onnx, ["CPUExecutionProvider"], 1), AdaptiveSession)


def test_torch_threads_follow_the_adaptive_policy() -> None:
    """Eager PyTorch's process-wide thread count: all CPUs for a lone chain, the shared count
    while chains overlap or the caller says other work shares the machine, back after."""
    from alzprog.inference.runtime import TorchThreads

    before = torch.get_num_threads()
    threads = TorchThreads(ThreadPolicy(solo=2, shared=1))
    try:
        with threads.run():
            assert torch.get_num_threads() == 2
            with threads.run():  # a second chain starts: both on one thread
                assert torch.get_num_threads() == 1
            assert torch.get_num_threads() == 2  # alone again
        with threads.run(overlapped=True):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2  # idle: ready for a lone chain
    finally:
        torch.set_num_threads(before)
