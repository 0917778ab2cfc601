"""Small helpers over raw ASGI scopes, shared by the pure-ASGI middlewares."""

from __future__ import annotations

from starlette.types import Scope


def scope_header(scope: Scope, name: bytes) -> bytes:
    """The first value of header ``name`` (lower-case bytes, as ASGI gives them), or b"" when absent."""
    for k, v in scope.get("headers", ()):
        if k == name:
            return v
    return b""
