"""Adaptive batching: instances from concurrent requests share one forward pass.

The batcher is greedy. When the model is idle an instance runs at once, so a lone request waits for
nothing; while a forward pass runs, new instances queue up and leave together as the next batch
(at most ``max_batch_size``). Under load batches grow by themselves and shrink again when it passes,
which is what a fixed wait window cannot do without trading latency for throughput. ``max_wait_ms``
adds that window anyway, for models where a bigger batch is worth a little latency (e.g. on a GPU).

It also keeps overload from turning into latency for everyone:

* **Admission**: it learns how long the model takes per step of input and refuses new work
  (:class:`~service.errors.RetryLater`, answered 503 with ``Retry-After``) once the queue ahead would take longer than
  ``max_queue_ms`` to drain. Admitted requests therefore wait at most about that long.
* **Deadline**: a caller that is not answered by its deadline gets :class:`DeadlineExceeded`, and its
  instances are dropped from the queue.
* **Abandoned work**: before a batch runs, instances whose caller is gone (timed out, or the HTTP
  client hung up) are dropped, so nobody's forward pass is spent on answers nobody reads. Asking
  whether a client is gone is a plain function call (``service.framework`` reads the server's own flag),
  never an await: it happens for every request in every batch.
* **The event loop stays free**: a batch estimated to take longer than ``OFFLOAD_SECONDS`` runs on a
  thread (torch releases the GIL), so health checks and parsing go on meanwhile. Shorter batches run
  inline: on a busy worker the event loop holds the GIL, and a forward-pass thread then waits for it
  after every torch op, which cost about 10% of the throughput of a small model.

Instances reach the batcher only after their request was validated, so one bad request can never
fail the good ones batched beside it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from service.errors import UNKNOWN_WAIT_MS, RetryLater

log = logging.getLogger(__name__)

# One forward-pass thread per worker: with one torch thread per worker, forward passes run one at a time.
_FORWARD_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seqserve-forward")
OFFLOAD_SECONDS = 0.02  # batches estimated longer than this leave the event loop (/livez waits at most this)
OFFLOAD_STEPS = 32_768  # ... and so does any batch this large (padded steps) before the speed is known


class DeadlineExceeded(RetryLater):
    """The request was not answered within its deadline; its queued work was dropped. Overload, answered like
    the rest (503), with the retry hint of a wait nobody can estimate."""

    def __init__(self, message: str):
        super().__init__(message, UNKNOWN_WAIT_MS)


class ClientGone(RetryLater):
    """The HTTP client hung up before its work ran; the work was dropped. Answered like any overload (503),
    should anyone still read it."""

    def __init__(self, message: str):
        super().__init__(message, UNKNOWN_WAIT_MS)


@dataclass(eq=False)
class Caller:
    """One submit(): its deadline (on the batcher's clock) and its client (is it still there?)."""

    deadline: float
    client: Client | None = None
    gone: bool = False
    futures: list[asyncio.Future] = field(default_factory=list)


def _wanted(job: tuple[Any, asyncio.Future, Caller]) -> bool:
    _, future, caller = job
    return not caller.gone and not future.done()


class BatchWork(Protocol):
    """What a batcher runs: ``service.inference``'s passes (ClassifyPass, ForecastPass, StreamPass)."""

    def cost(self, item: Any) -> int:
        """The item's work in steps (its length): what admission and offloading estimate time by."""

    def run_batch(self, items: list[Any]) -> list[Any]:
        """One result per item, in order; a result may be an ``Exception`` about that item alone."""


class Client(Protocol):
    """A request's client: ``service.framework.Client`` under uvicorn."""

    def gone(self) -> bool:
        """Whether the client has hung up: a plain call, asked for every request in every batch."""


class BatchSizes(Protocol):
    """Hears every batch run: its items and their steps (``service.metrics.BatchSizes``)."""

    def observe(self, size: int, steps: int) -> None: ...


class MicroBatcher:
    """Runs ``work.run_batch(items) -> results`` over items submitted by concurrent callers.

    ``work.run_batch`` must return one result per item, in order; a result may be an ``Exception`` that
    says what is wrong with that item alone (returned to its caller, not raised). When it raises, every
    caller in the batch gets the error. ``work.cost(item)`` is the item's work in steps (its length).
    ``sizes.observe(n, steps)`` hears every batch's size and steps. ``clock()`` is the time in seconds the batcher times
    passes and checks deadlines by; tests pass a fake one.
    """

    def __init__(
        self,
        work: BatchWork,
        *,
        max_batch_size: int = 64,
        max_wait_ms: float = 0.0,
        max_queue_ms: float = 100.0,
        sizes: BatchSizes | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.work = work
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.max_queue_s = max_queue_ms / 1000
        self.sizes = sizes
        self.clock = clock
        self.seconds_per_step = 0.0  # learnt from the batches run (see _learn); 0 until the first one
        self._recent_seconds = self._recent_steps = 0.0
        self._queue: deque[tuple[Any, asyncio.Future, Caller]] = deque()
        self._queued_steps = 0
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._running = False  # a batch of the drain task is running (perhaps on the forward-pass thread)

    def queue_seconds(self) -> float:
        """Estimated time to drain what is queued now."""
        return self._queued_steps * self.seconds_per_step

    async def admit(self) -> None:
        """Raise :class:`~service.errors.RetryLater` when the work queued now would take longer than ``max_queue_ms`` to drain.

        Before refusing, the queue is cleared of work nobody waits for any more (clients that hung up,
        deadlines passed), so abandoned requests do not cause a 503 for a live one once the server has
        seen them go. That path first lets the event loop run once: hang-ups it has read but not yet
        handled then count.
        """
        if not self._queue or self.queue_seconds() <= self.max_queue_s:
            return
        await asyncio.sleep(0)
        self._mark_abandoned(list(self._queue))
        self._queue = deque(job for job in self._queue if _wanted(job))
        self._queued_steps = sum(self.work.cost(item) for item, _, _ in self._queue)
        waiting = self.queue_seconds()
        if self._queue and waiting > self.max_queue_s:
            raise RetryLater(
                f"the model is busy: about {waiting * 1000:.0f} ms of work is queued (limit {self.max_queue_s * 1000:.0f} ms)",
                retry_after_ms=round(waiting * 1000),
            )

    async def submit(
        self, items: Sequence[Any], *, timeout_s: float = 60.0, client: Client | None = None,
        alone: bool = False,
    ) -> list[Any]:
        """Queue ``items`` and wait for their results (in order; a per-item problem comes back as an Exception).

        Raises :class:`~service.errors.RetryLater` at once when the queue is too long (see :meth:`admit`), and
        :class:`DeadlineExceeded` after ``timeout_s``. ``alone``: the caller knows nothing else is on its
        way to this batcher (a lone stream's message); then, if the model is idle and the work light, it
        runs at once in the caller's task, two event-loop turns sooner. Never guess it: requests that
        would have been batched together would each run alone.
        """
        await self.admit()
        if alone and not self._queue and not self._running and self._light(items):
            return self._run_now(items)
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._wake = asyncio.Event()
            self._worker = loop.create_task(self._drain())
        caller = Caller(deadline=self.clock() + timeout_s, client=client)
        for item in items:
            future = loop.create_future()
            self._queue.append((item, future, caller))
            self._queued_steps += self.work.cost(item)
            caller.futures.append(future)
        self._wake.set()
        try:
            async with asyncio.timeout(timeout_s):
                # One after another rather than asyncio.gather: a batch answers its futures in one loop turn,
                # so after the first the rest are done and cost no wait; gather's callback per future cost
                # 0.1 ms for a request of 64 instances (1% of its forward pass).
                return [await future for future in caller.futures]
        except TimeoutError:
            raise DeadlineExceeded(f"not answered within the deadline of {timeout_s:g} s; the server is overloaded") from None
        finally:
            caller.gone = True  # answered, timed out or cancelled: nothing left of it needs running
            for future in caller.futures:  # nobody reads them now: pending ones are cancelled, errors marked read
                if not future.done():
                    future.cancel()
                elif not future.cancelled():
                    future.exception()  # asyncio would log an error never read

    async def close(self, within_s: float, poll_s: float = 0.05) -> None:
        """Stop the drain task once nothing is queued or running, waiting at most ``within_s`` (a deadline: every
        caller has its answer or its 503 by then). A later :meth:`submit` starts the task again."""
        deadline = self.clock() + within_s
        while (self._queue or self._running) and self.clock() < deadline:
            await asyncio.sleep(poll_s)
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None

    async def _drain(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            # Let requests that arrived in the same event-loop turn join this batch.
            await asyncio.sleep(self.max_wait_s if len(self._queue) < self.max_batch_size else 0)
            while self._queue:
                jobs = [self._queue.popleft() for _ in range(min(len(self._queue), self.max_batch_size))]
                self._queued_steps -= sum(self.work.cost(item) for item, _, _ in jobs)
                self._mark_abandoned(jobs)
                jobs = [job for job in jobs if _wanted(job)]
                if jobs:
                    self._running = True
                    try:
                        await self._run(jobs)
                    finally:
                        self._running = False
                await asyncio.sleep(0)  # let waiting requests be parsed before the next batch

    def _mark_abandoned(self, jobs: list[tuple[Any, asyncio.Future, Caller]]) -> None:
        """Mark the callers of ``jobs`` that are past their deadline or whose client hung up as gone."""
        now = self.clock()
        checked: set[int] = set()
        for _, _, caller in jobs:
            if caller.gone or id(caller) in checked:
                continue
            checked.add(id(caller))
            if caller.client is not None and caller.client.gone():
                caller.gone = True
                for future in caller.futures:  # its handler can finish now rather than at the deadline
                    if not future.done():
                        future.set_exception(ClientGone("the client hung up before its work ran"))
            elif caller.deadline <= now:
                caller.gone = True  # submit() raises DeadlineExceeded for it

    def _light(self, items: Sequence[Any]) -> bool:
        """Whether a batch of ``items`` is short enough to run on the event loop."""
        padded = len(items) * max(self.work.cost(item) for item in items)
        return padded * self.seconds_per_step <= OFFLOAD_SECONDS and padded <= OFFLOAD_STEPS

    def _run_now(self, items: Sequence[Any]) -> list[Any]:
        """Run one caller's light batch here and now (the model is idle and nothing else is coming)."""
        steps = self._steps(items)
        started = self.clock()
        try:
            results = self.work.run_batch(list(items))
        except Exception:
            log.exception("forward pass over %d instances failed", len(items))
            raise
        self._learn(started, steps)
        return results

    async def _run(self, jobs: list[tuple[Any, asyncio.Future, Caller]]) -> None:
        items = [item for item, _, _ in jobs]
        steps = self._steps(items)
        started = self.clock()
        try:
            if self._light(items):
                results = self.work.run_batch(items)
            else:
                results = await asyncio.get_running_loop().run_in_executor(_FORWARD_THREAD, self.work.run_batch, items)
        except Exception as err:  # a server-side failure: every caller in the batch hears about it
            log.exception("forward pass over %d instances failed", len(jobs))
            for _, future, _ in jobs:
                if not future.done():
                    future.set_exception(err)
            return
        self._learn(started, steps)
        for (_, future, _), result in zip(jobs, results):
            if not future.done():
                future.set_result(result)  # an item's own problem (an Exception) is a result too

    def _steps(self, items: Sequence[Any]) -> int:
        """The steps of a batch about to run; ``sizes`` hears them with the batch's size."""
        steps = sum(self.work.cost(item) for item in items)
        if self.sizes is not None:
            self.sizes.observe(len(items), steps)
        return steps

    def _learn(self, started: float, steps: int) -> None:
        """Fold a batch of ``steps`` that started at ``started`` (on :attr:`clock`) into the learnt seconds per step.

        The recent batches' seconds over their steps, each a moving average that follows changes in load
        within a few batches: a batch counts by its steps. A pass has a fixed cost, so one step alone costs
        far more than its share of a full pass (0.4 ms vs 0.03 ms for a stream's step here). Averaging
        each batch's own rate let a few lone steps multiply the estimate; the next full pass then looked
        long enough to leave the event loop, on a thread it waited for the GIL, ran 10-30x slower, and
        kept the estimate there: a stream batcher at 256 streams refused steps and lost 2/3 of its speed.
        """
        self._recent_seconds = 0.8 * self._recent_seconds + 0.2 * (self.clock() - started)
        self._recent_steps = 0.8 * self._recent_steps + 0.2 * max(steps, 1)
        self.seconds_per_step = self._recent_seconds / self._recent_steps
