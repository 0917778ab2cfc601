"""Optional dynamic batching for the classifier (off by default: ``CLASSIFIER_BATCH_MAX_SIZE=1``).

Concurrent requests are gathered for at most ``max_wait_ms`` (or until ``max_size`` are
waiting) and run as one ONNX Runtime call on a stacked batch. This trades a little latency
for throughput when many requests arrive at once; whether it pays depends on the model and
the hardware, so it stays off until measured (see docs/api.md). Requests that arrive during a
champion swap are grouped by the model object they started with, so versions never mix.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from typing import Any

import numpy as np


class MicroBatcher:
    """Collects (runtime, image) pairs and runs them in batches on ``pool``."""

    def __init__(self, pool: Executor, max_size: int, max_wait_ms: float) -> None:
        self.pool = pool
        self.max_size = max_size
        self.max_wait_s = max_wait_ms / 1000.0
        self._queue: asyncio.Queue[tuple[Any, np.ndarray, asyncio.Future]] = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self.batches = 0
        self.items = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def submit(self, runtime: Any, image: np.ndarray) -> dict[str, Any]:
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._queue.put((runtime, image, fut))
        return await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            batch = [first]
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), timeout=remaining))
                except TimeoutError:
                    break
            groups: dict[int, list[tuple[Any, np.ndarray, asyncio.Future]]] = {}
            for item in batch:
                groups.setdefault(id(item[0]), []).append(item)
            for items in groups.values():
                runtime = items[0][0]
                images = [img for _, img, _ in items]
                self.batches += 1
                self.items += len(items)
                try:
                    results = await loop.run_in_executor(self.pool, runtime.predict_batch, images)
                except Exception as exc:  # noqa: BLE001 - every waiter gets the error
                    for _, _, fut in items:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for (_, _, fut), result in zip(items, results):
                    if not fut.done():
                        fut.set_result(result)
