"""The files of a model folder: their names, the kinds allowed, and the digest check.

No torch here: the registry (and through it the gateway's model card) checks folders without
loading a model; :mod:`alzprog.artifacts` saves and loads the models themselves.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from alzprog.hashing import sha256_file

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
