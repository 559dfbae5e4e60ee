"""Adaptive batching: instances from concurrent requests share one forward pass.

The batcher is greedy. When the model is idle an instance runs at once, so a lone request waits for
nothing; while a forward pass runs, new instances queue up and leave together as the next batch
(at most ``max_batch_size``). Under load batches grow by themselves and shrink again when it passes,
which is what a fixed wait window cannot do without trading latency for throughput. ``max_wait_ms``
adds that window anyway, for models where a bigger batch is worth a little latency (e.g. on a GPU).

Instances reach the batcher only after their request was validated, so one bad request can never
fail the good ones batched beside it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)


class MicroBatcher:
    """Runs ``run_batch(items) -> results`` over items submitted by concurrent callers.

    ``run_batch`` must return one result per item, in order. It runs on the event loop's thread:
    with one torch thread per worker a forward pass of a small recurrent model takes about a
    millisecond, less than handing it to another thread would cost.
    """

    def __init__(
        self,
        run_batch: Callable[[list[Any]], list[Any]],
        *,
        max_batch_size: int = 64,
        max_wait_ms: float = 0.0,
        on_batch: Callable[[int], None] | None = None,
    ):
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.on_batch = on_batch
        self._queue: deque[tuple[Any, asyncio.Future]] = deque()
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None

    async def submit(self, items: Sequence[Any]) -> list[Any]:
        """Queue ``items`` and wait for their results (in order)."""
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._wake = asyncio.Event()
            self._worker = loop.create_task(self._drain())
        futures = []
        for item in items:
            future = loop.create_future()
            self._queue.append((item, future))
            futures.append(future)
        self._wake.set()
        return list(await asyncio.gather(*futures))

    async def _drain(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            # Let requests that arrived in the same event-loop turn join this batch.
            await asyncio.sleep(self.max_wait_s if len(self._queue) < self.max_batch_size else 0)
            while self._queue:
                jobs = [self._queue.popleft() for _ in range(min(len(self._queue), self.max_batch_size))]
                jobs = [(item, future) for item, future in jobs if not future.done()]  # caller gone
                if jobs:
                    self._run(jobs)
                await asyncio.sleep(0)  # let waiting requests be parsed before the next batch

    def _run(self, jobs: list[tuple[Any, asyncio.Future]]) -> None:
        if self.on_batch:
            self.on_batch(len(jobs))
        try:
            results = self.run_batch([item for item, _ in jobs])
        except Exception as err:  # a server-side failure: every caller in the batch hears about it
            log.exception("forward pass over %d instances failed", len(jobs))
            for _, future in jobs:
                future.set_exception(err)
            return
        for (_, future), result in zip(jobs, results):
            future.set_result(result)
