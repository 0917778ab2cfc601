"""ONNX Runtime sessions sized to the container: CUDA when present, threads capped to our CPUs."""

from __future__ import annotations

from pathlib import Path

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


def intra_op_threads(setting: int, concurrency: int) -> int:
    """Threads per inference so that ``concurrency`` parallel runs do not oversubscribe the CPUs."""
    if setting > 0:
        return setting
    return max(1, available_cpus() // max(1, concurrency))


def make_session(path: Path, providers: list[str], threads: int):  # noqa: ANN201 - ort.InferenceSession
    """An inference session for ``path`` with ``threads`` intra-op threads and one inter-op thread."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=so, providers=providers)
