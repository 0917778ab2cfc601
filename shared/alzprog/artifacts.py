"""Code-free model artifacts: ``config.json`` + ``model.safetensors`` + ``model.onnx`` + ``digests.json``.

A model directory never holds code or pickles. Loading rebuilds the architecture from the JSON
config (:func:`alzprog.models.build_model`), checks the SHA-256 of every file against
``digests.json`` and loads the weights with safetensors, so a tampered or foreign file is refused
before a single byte of it is interpreted as a tensor.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from alzprog.artifact_files import (  # noqa: F401 - re-exported: the folder rules live there, torch-free
    ALLOWED_SUFFIXES, CONFIG_FILE, DIGESTS_FILE, FORBIDDEN_MAGIC, ONNX_FILE, WEIGHTS_FILE, ArtifactIntegrityError,
    verify_digests,
)
from alzprog.hashing import sha256_file  # noqa: F401 - re-exported: artifacts.sha256_file

log = logging.getLogger(__name__)

@dataclass
class LoadedArtifact:
    """A model rebuilt from a verified directory."""

    model: nn.Module
    config: dict[str, Any]
    digests: dict[str, str]
    dir: Path


def _unwrap(model: nn.Module) -> nn.Module:
    # DistributedDataParallel / DataParallel keep the real module in ``.module``.
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def export_onnx_model(model: nn.Module, example_input: torch.Tensor, path: Path, opset: int = 17) -> None:
    """Export ``model`` to ONNX with a dynamic batch axis (input ``input``, output ``logits``).

    The TorchScript-based exporter is tried first: on the convolutional models of this project
    it is exact and needs no graph capture; the dynamo exporter is the fallback for what it cannot trace.
    """
    path = Path(path)
    model = model.eval()
    io = {"input_names": ["input"], "output_names": ["logits"]}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example_input,), str(path), **io, opset_version=opset, dynamo=False,
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        return
    except Exception as exc:  # noqa: BLE001 - fall back to the other exporter
        log.warning("TorchScript ONNX export failed (%s); trying the dynamo exporter", exc)
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(model, (example_input,), str(path), **io, opset_version=max(opset, 18), dynamo=True,
                      external_data=False, dynamic_shapes=({0: batch},))


def onnx_parity(onnx_path: Path, model: nn.Module, example_input: torch.Tensor) -> float:
    """Max absolute difference between ONNX Runtime and PyTorch outputs on ``example_input``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    got = session.run(None, {name: example_input.detach().cpu().numpy().astype(np.float32)})[0]
    with torch.no_grad():
        ref = model(example_input.detach().cpu().float()).cpu().numpy()
    return float(np.abs(got - ref).max())


def save_artifact(
    out_dir: str | Path,
    model: nn.Module,
    config: dict[str, Any],
    example_input: torch.Tensor,
    export_onnx: bool = True,
    onnx_atol: float = 1e-4,
) -> dict[str, str]:
    """Write a code-free model directory and return the SHA-256 of each file.

    Writes ``config.json``, ``model.safetensors`` (the state dict, contiguous CPU tensors),
    ``model.onnx`` (dynamic batch axis; parity with PyTorch on ``example_input`` checked with
    ONNX Runtime, raising ``ArtifactIntegrityError`` above ``onnx_atol``) and ``digests.json``.
    The model is exported from a CPU copy in eval mode, so the caller's module is untouched.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cpu_model = copy.deepcopy(_unwrap(model)).cpu().float().eval()
    example = example_input.detach().cpu().float()

    config = dict(config)
    if "kind" not in config:
        raise ValueError("config needs a 'kind' (e.g. 'stage_classifier') so build_model can rebuild it")
    config.setdefault("format", {"weights": WEIGHTS_FILE, "onnx": ONNX_FILE if export_onnx else None})
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True, default=_json_default))

    state = {k: v.detach().cpu().contiguous() for k, v in cpu_model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE), metadata={"kind": str(config["kind"])})

    if export_onnx:
        export_onnx_model(cpu_model, example, out / ONNX_FILE)
        diff = onnx_parity(out / ONNX_FILE, cpu_model, example)
        log.info("ONNX parity: max |logit diff| = %.3g (atol %.1g)", diff, onnx_atol)
        if not diff <= onnx_atol:
            raise ArtifactIntegrityError(f"ONNX parity failed: max abs diff {diff:.3g} > {onnx_atol:.1g}")

    files = sorted(p.name for p in out.iterdir() if p.is_file() and p.name != DIGESTS_FILE)
    digests = {name: sha256_file(out / name) for name in files}
    (out / DIGESTS_FILE).write_text(json.dumps({"algorithm": "sha256", "files": digests}, indent=2))
    return digests


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (Path,)):
        return str(obj)
    if isinstance(obj, (tuple, set)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")




def load_artifact(model_dir: str | Path, device: str | torch.device = "cpu") -> LoadedArtifact:
    """Verify a model directory, rebuild the architecture from its config and load the weights.

    Returns the model in eval mode on ``device``. Never unpickles anything.
    """
    from safetensors.torch import load_file

    from alzprog.models import build_model

    d = Path(model_dir)
    digests = verify_digests(d)
    config = json.loads((d / CONFIG_FILE).read_text())
    model = build_model(config)
    state = load_file(str(d / WEIGHTS_FILE), device="cpu")
    model.load_state_dict(state, strict=True)
    model = model.to(device).eval()
    return LoadedArtifact(model=model, config=config, digests=digests, dir=d)
