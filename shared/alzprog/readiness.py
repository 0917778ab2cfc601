"""Waiting for a service to be ready: the one ``/readyz`` poll of scripts, benchmarks and tests.

A started service answers ``/readyz`` 503 while its models load and 200 once it can serve.
:func:`wait_ready` polls a URL until it answers as wanted, fails at once with the log's tail when
the process behind it dies, and names the last answer when the time runs out.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any, Callable


def log_tail(path: Path | str | None, chars: int = 3000) -> str:
    """The end of a log file ('' when there is none)."""
    if path is None:
        return ""
    try:
        return Path(path).read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def is_2xx(response: Any) -> bool:
    return 200 <= response.status_code < 300


def wait_ready(
    url: str,
    *,
    timeout: float = 120.0,
    proc: subprocess.Popen | None = None,
    log_path: Path | str | None = None,
    name: str | None = None,
    accept: Callable[[Any], bool] = is_2xx,
    headers: dict[str, str] | None = None,
    interval: float = 0.3,
    get: Callable[..., Any] | None = None,
    on_wait: Callable[[float], None] | None = None,
    note_every: float = 15.0,
) -> Any:
    """Poll ``GET url`` until ``accept(response)`` (default: any 2xx); return that response.

    ``proc``: the process serving it; when it exits first, ``RuntimeError`` with ``log_path``'s
    tail. On timeout ``TimeoutError`` with the last answer (status and body start, or the
    connection error) and the log's tail. ``get``: the client's get (default ``httpx.get``
    without proxies; a FastAPI ``TestClient.get`` for an in-process app). ``on_wait(elapsed)``
    is called every ``note_every`` seconds while waiting (progress for people).
    """
    import httpx

    what = name or url
    if get is None:
        def get(u: str, headers: dict[str, str] | None = None) -> httpx.Response:  # noqa: ANN202
            return httpx.get(u, headers=headers, timeout=5.0, trust_env=False)
    start = time.monotonic()
    deadline = start + timeout
    last_note = start
    last = "no answer yet"
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before it was ready:\n{log_tail(log_path)}")
        try:
            r = get(url, headers=headers)
            if accept(r):
                return r
            last = f"HTTP {r.status_code}: {r.text[:300]}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        now = time.monotonic()
        if now >= deadline:
            raise TimeoutError(f"{what} not ready within {timeout:.0f} s (last: {last})\n{log_tail(log_path)}".rstrip())
        if on_wait is not None and now - last_note >= note_every:
            on_wait(now - start)
            last_note = now
        time.sleep(min(interval, max(0.0, deadline - now)))
