"""Request body limit, enforced while reading, before any route or form parser runs.

Pure ASGI middleware. It reads the whole body into memory, counting as it goes, and only
then hands a replaying ``receive`` to the app:

- a ``Content-Length`` that is not one plain non-negative integer: 400 ``malformed_content_length``;
- a declared ``Content-Length`` over the limit: 413 at once, without reading a byte;
- a chunked body (no ``Content-Length``) that grows past the limit: 413 as soon as the
  counter passes it, without reading the rest;
- a body that is not complete within ``read_timeout`` seconds (slow-loris): 408.

Because the app sees the body only once it is complete and within the limit, nothing large
is ever spooled to disk by the multipart parser, and the handler never runs for an oversized
request. Exactly ``max_bytes`` is accepted.

Multipart bodies whose first boundary does not start within ``multipart_preamble_max`` bytes
are refused with 400 ``malformed_multipart`` before the multipart parser sees them: browsers and
HTTP clients never send a preamble, and a long one (a CR/LF flood) costs the parser seconds of
CPU per megabyte.
"""

from __future__ import annotations

import asyncio
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.asgi import scope_header
from services.common.errors import error_response

_BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` (413) and malformed lengths (400)."""

    def __init__(self, app: ASGIApp, max_bytes: int, read_timeout: float = 30.0, multipart_preamble_max: int = 1024) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)
        self.read_timeout = float(read_timeout)
        self.multipart_preamble_max = int(multipart_preamble_max)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        lengths = [v for k, v in scope.get("headers", ()) if k == b"content-length"]
        declared: int | None = None
        if lengths:
            raw = lengths[0].strip()
            if len(lengths) > 1 or not raw.isdigit() or len(raw) > 18:
                await error_response(400, "malformed_content_length", "Content-Length must be one non-negative integer")(
                    scope, receive, send
                )
                return
            declared = int(raw)
            if declared > self.max_bytes:
                await self._too_large(scope, receive, send)
                return

        chunks: list[bytes] = []
        total = 0
        deadline = time.monotonic() + self.read_timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), timeout=max(remaining, 0.001))
            except TimeoutError:
                await error_response(408, "request_timeout", "request body not received in time")(scope, receive, send)
                return
            if message["type"] == "http.disconnect":
                return  # client went away; nothing to answer
            body = message.get("body", b"")
            total += len(body)
            if total > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            if body:
                chunks.append(body)
            if not message.get("more_body", False):
                break
        if declared is not None and declared != total:
            # The server normally guarantees this; refuse rather than guess.
            await error_response(400, "malformed_content_length", "body length does not match Content-Length")(
                scope, receive, send
            )
            return

        payload = b"".join(chunks)
        if not _multipart_starts_early(scope, payload, self.multipart_preamble_max):
            await error_response(400, "malformed_multipart", "multipart body must start with its boundary")(scope, receive, send)
            return
        scope.setdefault("state", {})["body_bytes"] = total
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": payload, "more_body": False}
            # After the body, behave like a connection that stays open until the app is done.
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await error_response(
            413,
            "body_too_large",
            f"request body larger than the limit of {self.max_bytes} bytes",
            headers={"Connection": "close"},
        )(scope, receive, send)


def _multipart_starts_early(scope: Scope, body: bytes, preamble_max: int) -> bool:
    """False when a multipart/form-data body's first boundary is missing or starts late."""
    ctype = scope_header(scope, b"content-type")
    if not ctype.lower().startswith(b"multipart/form-data"):
        return True
    boundary = None
    for param in ctype.split(b";")[1:]:
        key, _, value = param.strip().partition(b"=")
        if key.strip().lower() == b"boundary":
            boundary = value.strip().strip(b'"')
    if not boundary:
        return True  # the form parser answers 400 "missing boundary" itself
    return body.find(b"--" + boundary, 0, preamble_max + len(boundary) + 2) != -1
