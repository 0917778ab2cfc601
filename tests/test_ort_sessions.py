"""ONNX Runtime sessions of the model services: the adaptive thread policy (services/common/ort.py)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from services.common.ort import AdaptiveSession, ThreadPolicy, make_session, thread_policy


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
    monkeypatch.setattr("services.common.ort.available_cpus", lambda: 4)
    assert thread_policy(0, 2) == ThreadPolicy(solo=4, shared=2)
    assert thread_policy(0, 4).adaptive
    assert thread_policy(3, 2) == ThreadPolicy(3, 3) and not thread_policy(3, 2).adaptive
    assert thread_policy(0, 8) == ThreadPolicy(4, 1)


def test_adaptive_session_runs_alone_on_the_solo_session_and_overlapping_on_the_shared_one(conv_onnx: Path) -> None:
    session = make_session(conv_onnx, ["CPUExecutionProvider"], ThreadPolicy(solo=2, shared=1))
    assert isinstance(session, AdaptiveSession)
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((1, 2, 128, 128)).astype(np.float32)
    alone = [session.run(None, {name: x})[0] for _ in range(3)]
    assert (session.solo_runs, session.shared_runs) == (3, 0)

    results: list[np.ndarray] = []
    start = threading.Barrier(2)

    def worker() -> None:
        start.wait()
        for _ in range(15):
            results.append(session.run(None, {name: x})[0])

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert session.shared_runs > 0, "two threads running 15 inferences each never overlapped"
    assert session.solo_runs + session.shared_runs == 33
    for out in results:  # both sessions compute the same function
        np.testing.assert_allclose(out, alone[0], rtol=1e-4, atol=1e-5)


def test_fixed_threads_or_a_gpu_provider_list_give_one_plain_session(conv_onnx: Path) -> None:
    assert not isinstance(make_session(conv_onnx, ["CPUExecutionProvider"], ThreadPolicy(2, 2)), AdaptiveSession)
    assert not isinstance(make_session(conv_onnx, ["CPUExecutionProvider"], 1), AdaptiveSession)
