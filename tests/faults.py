"""A small TCP fault proxy for the reliability tests (a toxiproxy of our own).

:class:`FaultProxy` listens on a free local port and forwards every connection to an upstream
``host:port``. Its mode can be switched at any time, also for connections already open:

- ``pass``: forward both ways unchanged;
- ``delay``: add ``delay_s`` of latency to every byte the upstream sends back (like
  toxiproxy's latency toxic: chunks are queued with their arrival time and released
  ``delay_s`` later, so a response in several chunks is delayed once, not once per chunk);
- ``blackhole``: accept, read everything, forward nothing, answer nothing, never close;
- ``drop``: close every connection at once (new ones right after accept, open ones at their
  next chunk) with a TCP reset, like a backend that crashes mid-request;
- ``refuse``: the process is gone: open connections are reset and the listening port is
  closed, so new connections get "connection refused"; leaving ``refuse`` listens again on
  the same port (a restarted server).

It runs its own asyncio loop in a daemon thread, so synchronous tests (httpx, TestClient,
subprocesses) can use it. It counts accepted connections (with their accept times, for the
retry/back-off checks) and the bytes sent towards the upstream.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

MODES = ("pass", "delay", "blackhole", "drop", "refuse")


@dataclass
class ProxyStats:
    """What the proxy saw; read from the test thread (plain ints/lists, GIL-safe appends)."""

    accepted: int = 0
    accept_times: list[float] = field(default_factory=list)  # time.monotonic() of each accept
    bytes_up: int = 0  # client -> upstream, forwarded
    bytes_down: int = 0  # upstream -> client, forwarded


class FaultProxy:
    """TCP proxy ``127.0.0.1:<port>`` -> ``upstream``, with switchable faults."""

    def __init__(self, upstream_host: str, upstream_port: int, mode: str = "pass", delay_s: float = 0.0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode = mode
        self.delay_s = delay_s
        self.stats = ProxyStats()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()

    # ------------------------------------------------------------------ control (test thread)
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_mode(self, mode: str, delay_s: float | None = None) -> None:
        """Switch the fault; applies to new connections and to the next chunk of open ones."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        if delay_s is not None:
            self.delay_s = delay_s
        was = self.mode
        self.mode = mode
        if self._loop is not None and (mode == "refuse") != (was == "refuse"):
            action = self._close_port() if mode == "refuse" else self._listen()
            asyncio.run_coroutine_threadsafe(action, self._loop).result(timeout=10)

    def reset_stats(self) -> None:
        self.stats = ProxyStats()

    def start(self) -> "FaultProxy":
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fault proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        try:
            fut.result(timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=10)

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ the loop (proxy thread)
    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)

        loop.run_until_complete(self._listen())
        if self.mode == "refuse":
            loop.run_until_complete(self._close_port())
        self._ready.set()
        loop.run_forever()
        loop.close()

    async def _listen(self) -> None:
        # Port 0 the first time, then the same port again (SO_REUSEADDR is asyncio's default).
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, backlog=256)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close_port(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._writers):
            _abort(w)
        self._writers.clear()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            _abort(w)
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        self.stats.accept_times.append(time.monotonic())
        self._writers.add(writer)
        if self.mode in ("drop", "refuse"):
            _abort(writer)
            self._writers.discard(writer)
            return
        if self.mode == "blackhole":
            await self._swallow(reader, writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _abort(writer)  # upstream down: the client sees the connection die
            self._writers.discard(writer)
            return
        self._writers.add(up_writer)
        tasks = [
            asyncio.ensure_future(self._pump(reader, up_writer, writer, up=True)),
            asyncio.ensure_future(self._pump(up_reader, writer, up_writer, up=False)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        for w in (writer, up_writer):
            if self.mode in ("drop", "refuse"):
                _abort(w)
            else:
                w.close()
            self._writers.discard(w)

    async def _swallow(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.read(65536):
                pass
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, peer: asyncio.StreamWriter, *, up: bool) -> None:
        """Copy ``src`` to ``dst`` under the current fault (``up``: client -> upstream)."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

        async def writer_task() -> None:
            while True:
                item = await queue.get()
                if item is None:
                    return
                due, data = item
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if self.mode == "blackhole":
                    continue
                dst.write(data)
                await dst.drain()
                if up:
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)

        w = asyncio.ensure_future(writer_task())
        try:
            while True:
                data = await src.read(65536)
                if not data or self.mode in ("drop", "refuse"):
                    break
                delay = self.delay_s if (self.mode == "delay" and not up) else 0.0
                await queue.put((time.monotonic() + delay, data))
            await queue.put(None)
            await w
        except (ConnectionError, asyncio.CancelledError):
            w.cancel()


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashed peer would."""
    sock = writer.get_extra_info("socket")
    try:
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    writer.transport.abort()
