"""Code-free model artifacts: ``config.json`` + ``model.safetensors`` + ``model.onnx`` + ``digests.json``.

A model directory never holds code or pickles. Loading rebuilds the architecture from the JSON
config (:func:`alzprog.models.build_model`), checks the SHA-256 of every file against
``digests.json`` and loads the weights with safetensors, so a tampered or foreign file is refused
before a single byte of it is interpreted as a tensor.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from alzprog.hashing import sha256_file  # noqa: F401 - re-exported: artifacts.sha256_file

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ONNX_FILE = "model.onnx"
DIGESTS_FILE = "digests.json"
# The only file kinds a model directory may contain; everything else is refused on load.
ALLOWED_SUFFIXES = (".json", ".safetensors", ".onnx")
# Leading bytes of formats that can execute code when loaded: pickle protocols 2-5 and the
# zip container of ``torch.save``.
FORBIDDEN_MAGIC = (b"\x80", b"PK\x03\x04")


class ArtifactIntegrityError(RuntimeError):
    """A model directory is incomplete, tampered with, or holds a forbidden file."""


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


def _check_file_kind(path: Path) -> None:
    """Refuse anything that is not JSON, safetensors or ONNX, whatever its name claims."""
    if path.suffix not in ALLOWED_SUFFIXES:
        raise ArtifactIntegrityError(f"refusing {path.name}: only .json, .safetensors and .onnx files are allowed")
    with open(path, "rb") as f:
        head = f.read(16)
    if any(head.startswith(m) for m in FORBIDDEN_MAGIC):
        raise ArtifactIntegrityError(f"refusing {path.name}: it looks like a pickle / torch.save file")
    if path.suffix == ".safetensors":
        # safetensors: 8-byte little-endian header length, then a JSON object.
        size = path.stat().st_size
        if len(head) < 9:
            raise ArtifactIntegrityError(f"{path.name}: too short for a safetensors file")
        (n,) = struct.unpack("<Q", head[:8])
        if n <= 0 or 8 + n > size or head[8:9] != b"{":
            raise ArtifactIntegrityError(f"{path.name}: not a safetensors file (bad header)")
    elif path.suffix == ".json":
        try:
            json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArtifactIntegrityError(f"{path.name}: not valid JSON ({exc})") from exc


def verify_digests(model_dir: str | Path) -> dict[str, str]:
    """Check every file of a model directory against ``digests.json``; return the digests.

    Raises ``ArtifactIntegrityError`` when the digest file is missing, a listed file is missing
    or differs, an unlisted file is present, or any file is not JSON / safetensors / ONNX.
    """
    d = Path(model_dir)
    dig_path = d / DIGESTS_FILE
    if not dig_path.is_file():
        raise ArtifactIntegrityError(f"{d}: no {DIGESTS_FILE}")
    _check_file_kind(dig_path)
    data = json.loads(dig_path.read_text())
    digests: dict[str, str] = data.get("files", data) if isinstance(data, dict) else {}
    if not digests or CONFIG_FILE not in digests or WEIGHTS_FILE not in digests:
        raise ArtifactIntegrityError(f"{d}: {DIGESTS_FILE} must list {CONFIG_FILE} and {WEIGHTS_FILE}")
    present = {p.name for p in d.iterdir() if p.is_file()} - {DIGESTS_FILE}
    unexpected = present - set(digests)
    if unexpected:
        raise ArtifactIntegrityError(f"{d}: unexpected file(s) not covered by digests: {sorted(unexpected)}")
    for name, expected in digests.items():
        p = d / name
        if os.sep in name or name.startswith(".") or not p.is_file():
            raise ArtifactIntegrityError(f"{d}: listed file {name!r} is missing")
        _check_file_kind(p)
        actual = sha256_file(p)
        if actual != expected:
            raise ArtifactIntegrityError(f"{d}: digest mismatch for {name} (expected {expected[:12]}..., got {actual[:12]}...)")
    return dict(digests)


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
