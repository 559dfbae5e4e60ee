"""Admission at the door: how long a new request would wait in this worker, and whether to take it.

A worker's event loop reads, parses, validates and answers every request one after another; only
the forward pass leaves it (``service.batching``). So before a request reaches its model's queue,
the worker itself is a queue: one arriving behind N others waits for their HTTP and JSON work first.
With a small model that is where all the waiting is under overload (the model's own queue stays
short), and 256 clients then wait ~4x longer than 64 do, for no more answers per second.

:class:`WorkerQueue` keeps that wait bounded. Each request is weighed before its body is read: one
unit for the fixed cost of a request, plus one per ``BYTES_PER_UNIT`` of body (parsing is linear in
the body). While the worker is busy it learns the seconds it spends per unit answered, refusals and
forward passes included, so the estimate follows the machine, the model and the mix of requests.
A request whose estimated wait, the units ahead of it times that rate, is over ``max_wait_s`` is
refused at once (503 with ``Retry-After``), before anything is parsed. A request let in counts as work
only once its whole body has arrived: until then it costs the worker nothing but its connection (the
body timeout bounds that), and counting the seconds a slow client takes to send it would make the
worker look busy while it is idle (one client sending a body at 100 kB/s had most other requests
refused; one that sent a byte and stopped, nearly all of them until its 408).

:class:`Door` does the refusing, as the outermost ASGI app of the worker (``service.framework``
puts it there), because under overload refusals are most of the traffic (clients that ignore
``Retry-After`` send again at once) and their cost is taken from the requests that were let in:
refused before BentoML's middleware stack, a refusal skips all of it (metrics, tracing, timeouts,
routing). What remains, uvicorn's own work per request, is still about half a small request, hence
``REFUSAL_UNITS`` and the pause on refused connections in ``service.framework``.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Callable

from service.batching import Client
from service.errors import RetryLater
from service.guard import refused
from service.metrics import count_refused

# The body size whose parsing costs about as much as the rest of a request (routing, validation,
# batching, the answer): ~0.5 ms of each on one core here, and a MiB parses in ~45 ms.
BYTES_PER_UNIT = 12_000
LEARN_EVERY_S = 0.1  # busy time between updates of the learnt rate
# A refusal at the door costs about half a small request here: uvicorn's own work per request (parsing
# the head, a task, writing the answer) is most of what a small request costs. Counting it as work keeps
# the learnt rate the worker's own speed: otherwise refusals, taking time and answering nothing, would make
# each admitted request look slower, and the door would let in fewer and refuse more, and so on.
REFUSAL_UNITS = 0.5
PURGE_EVERY_S = 0.01
CLIENT = "seqserve.client"  # scope key: the request's Client, whose gone() says it hung up (service.framework)


@dataclass(eq=False)
class Ticket:
    """One request in flight: its units, and its client (to ask whether it has hung up)."""

    units: float
    entered: float
    client: Client | None = None
    counted: bool = True  # its units are in WorkerQueue.units (until its client is found gone)


class WorkerQueue:
    """The requests one worker has taken in and not answered yet, in units of work, and their expected wait."""

    def __init__(self, max_wait_s: float, clock: Callable[[], float] = time.perf_counter):
        self.max_wait_s = max_wait_s
        self.clock = clock
        self.units = 0.0  # the work in flight now
        self.seconds_per_unit = 0.0  # learnt while busy; 0 (admit everything) until then
        self._in_flight: dict[Ticket, None] = {}  # oldest first
        self._busy_s = 0.0
        self._units_done = 0.0
        self._last = clock()
        self._last_purge = -math.inf

    @staticmethod
    def weigh(body_bytes: int) -> float:
        """A request's work in units: one for the request, plus its body's share."""
        return 1.0 + body_bytes / BYTES_PER_UNIT

    def expected_wait_s(self) -> float:
        """How long a request arriving now would wait behind those in flight."""
        return self.units * self.seconds_per_unit

    def enter(self, units: float, client: Client | None = None) -> Ticket:
        """Take a request of ``units`` in, or raise :class:`~service.errors.RetryLater` when the wait ahead of it is
        too long: :meth:`admit`, then :meth:`count`."""
        self.admit()
        return self.count(units, client)

    def admit(self) -> None:
        """Raise :class:`~service.errors.RetryLater` when a request arriving now would wait too long.

        Before refusing, requests whose clients hung up stop counting: their work is dropped before
        it runs (service.batching), so nobody waits behind it.
        """
        now = self._tick()
        if self._overloaded(now):
            self._forget_abandoned()
        if self._overloaded(now):
            wait = self.expected_wait_s()
            self._units_done += REFUSAL_UNITS
            raise RetryLater(
                f"the server is busy: about {wait * 1000:.0f} ms of requests are ahead of this one "
                f"(limit {self.max_wait_s * 1000:.0f} ms, SEQSERVE_MAX_QUEUE_MS); retry shortly",
                retry_after_ms=round(wait * 1000),
            )

    def count(self, units: float, client: Client | None = None) -> Ticket:
        """Count an admitted request of ``units`` as work in flight from now on, until :meth:`leave`."""
        ticket = Ticket(units, self._tick(), client)
        self._in_flight[ticket] = None
        self.units += units
        return ticket

    def answered_unread(self) -> None:
        """An admitted request was answered before its body was read (401, 415, 413, a 408 or a hang-up): it
        never counted, but took the worker's time through the middleware; count its fixed cost as work done,
        as a refusal's is, while the worker is busy (when it is idle, no time is counted either)."""
        self._tick()
        if self._in_flight:
            self._units_done += 1.0

    def leave(self, ticket: Ticket) -> None:
        """A request taken in by :meth:`enter` was answered (or failed)."""
        self._tick()
        self._in_flight.pop(ticket, None)
        if ticket.counted:
            self.units -= ticket.units
            self._units_done += ticket.units
        if not self._in_flight:
            self.units = 0.0  # no float residue once idle
        if self._busy_s >= LEARN_EVERY_S and self._units_done:
            rate = self._busy_s / self._units_done
            # A moving average over the last few tenths of a busy second.
            self.seconds_per_unit = rate if not self.seconds_per_unit else 0.5 * self.seconds_per_unit + 0.5 * rate
            self._busy_s = self._units_done = 0.0

    def overloaded(self) -> bool:
        """Would a request arriving now be refused, unless some in flight are found abandoned?"""
        return self._overloaded(self.clock())

    def _overloaded(self, now: float) -> bool:
        """Would a request arriving ``now`` wait too long? Both signs must say so.

        The estimate alone is pessimistic when the rate was learnt at low concurrency (batches of a few
        cost more per request than full ones), so a burst after a quiet spell would be refused for
        nothing, and it is an average, so a steady load just under the limit would be refused now and
        then; a request in flight that has already waited the whole limit says the queue is real.
        """
        if not self._in_flight or self.expected_wait_s() <= self.max_wait_s:
            return False
        oldest = next((ticket for ticket in self._in_flight if ticket.counted), None)
        return oldest is not None and now - oldest.entered > self.max_wait_s

    def _tick(self) -> float:
        """Count the time since the last event as busy when anything was in flight; returns now."""
        now = self.clock()
        if self._in_flight:
            self._busy_s += now - self._last
        self._last = now
        return now

    def _forget_abandoned(self) -> None:
        """Stop counting the requests whose clients hung up (at most every ``PURGE_EVERY_S``: it looks at all)."""
        now = self.clock()
        if now - self._last_purge < PURGE_EVERY_S:
            return
        self._last_purge = now
        for ticket in self._in_flight:
            if ticket.counted and ticket.client is not None and ticket.client.gone():
                ticket.counted = False
                self.units -= ticket.units


class Door:
    """The worker's outermost ASGI app: every POST is admitted by :class:`WorkerQueue` or gets a 503 at once, and
    counts as work from when the app has read its whole body until it is answered.

    A POST is weighed by its ``Content-Length`` (at most ``max_body_bytes``: past that the guard answers
    413 unread). Everything else (probes, metrics, WebSockets) goes straight through. Each refusal is
    counted in ``seqserve_refused_total`` on ``/metrics``: the refusals never reach BentoML's own request metrics.
    """

    def __init__(self, app, queue: WorkerQueue, max_body_bytes: int):
        self.app = app
        self.queue = queue
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        units = self.queue.weigh(min(_content_length(scope), self.max_body_bytes))
        if self.queue.overloaded():
            await asyncio.sleep(0)  # let the event loop handle hang-ups it has read: they stop counting
        try:
            self.queue.admit()
        except RetryLater as busy:
            count_refused()
            return await refused(busy, scope)(send)
        ticket = None

        async def receive_then_count():
            nonlocal ticket
            message = await receive()
            if ticket is None and message["type"] == "http.request" and not message.get("more_body", False):
                ticket = self.queue.count(units, scope.get(CLIENT))  # the body is in: its work starts now
            return message

        try:
            await self.app(scope, receive_then_count, send)
        finally:
            if ticket is not None:
                self.queue.leave(ticket)
            else:
                self.queue.answered_unread()


def _content_length(scope) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0  # chunked: weighed as a request with a small body
