"""Internal wire format of a canonical slice between the gateway and the model services.

The gateway decodes and canonicalises an upload once (``alzprog.preprocessing``) and sends
the result as raw bytes, so the model services never run an image decoder on untrusted
input:

- ``Content-Type: application/octet-stream``
- ``X-Canonical-Shape: <H>x<W>`` (the canonical size, 256x256)
- body: ``H*W`` bytes of the uint8 image, row-major, optionally followed by ``H*W`` bytes of
  the brain mask (0 or 1). Any other length is refused with 400.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from services.common.errors import ServiceError

CONTENT_TYPE = "application/octet-stream"
SHAPE_HEADER = "X-Canonical-Shape"
# Sent by the gateway when it runs this request beside other model work on the same machine
# (the speculative /progression chain): the model service should then use its one-thread
# session and not count the run as a lone one (alzprog.inference.runtime.AdaptiveSession).
OVERLAP_HEADER = "X-Overlapped-Work"
_SHAPE = re.compile(r"^\s*(\d{1,4})x(\d{1,4})\s*$")


def canonical_openapi(example: str | None = None) -> dict[str, Any]:
    """``openapi_extra`` of a route whose body is a canonical slice: the raw bytes (``example``
    describes them) and the required shape header."""
    media: dict[str, Any] = {"schema": {"type": "string", "format": "binary"}}
    if example is not None:
        media["example"] = example
    return {
        "requestBody": {"required": True, "content": {CONTENT_TYPE: media}},
        "parameters": [
            {"name": SHAPE_HEADER, "in": "header", "required": True, "schema": {"type": "string", "example": "256x256"}}
        ],
    }


def encode_canonical(image: np.ndarray, mask: np.ndarray | None = None) -> tuple[bytes, dict[str, str]]:
    """Serialise a canonical uint8 image (and its mask) to ``(body, headers)``."""
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError("canonical image must be a 2-D uint8 array")
    body = np.ascontiguousarray(image).tobytes()
    if mask is not None:
        if mask.shape != image.shape:
            raise ValueError("mask shape differs from image shape")
        body += np.ascontiguousarray(mask.astype(np.uint8) > 0).astype(np.uint8).tobytes()
    h, w = image.shape
    return body, {"Content-Type": CONTENT_TYPE, SHAPE_HEADER: f"{h}x{w}"}


def decode_canonical(body: bytes, shape_header: str | None, expected: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Parse ``(image, mask or None)``; 400 on any mismatch with the canonical size ``expected``."""
    m = _SHAPE.match(shape_header or "")
    if not m:
        raise ServiceError(400, "bad_shape", f"{SHAPE_HEADER} header must be '<H>x<W>'")
    h, w = int(m.group(1)), int(m.group(2))
    if (h, w) != (expected, expected):
        raise ServiceError(400, "bad_shape", f"canonical images are {expected}x{expected}, got {h}x{w}")
    n = h * w
    if len(body) not in (n, 2 * n):
        raise ServiceError(400, "bad_length", f"body must be {n} (image) or {2 * n} (image + mask) bytes, got {len(body)}")
    image = np.frombuffer(body[:n], dtype=np.uint8).reshape(h, w).copy()
    mask = None
    if len(body) == 2 * n:
        raw = np.frombuffer(body[n:], dtype=np.uint8).reshape(h, w)
        if raw.max(initial=0) > 1:
            raise ServiceError(400, "bad_mask", "mask bytes must be 0 or 1")
        mask = raw.astype(bool)
    return image, mask
