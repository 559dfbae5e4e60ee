"""Keep-alive connections with a bound, so that the load spreads again over workers that start later.

The kernel hands each new connection to one worker, and a keep-alive client (a pooled HTTP client, a
proxy) then sends every request of that connection to the same worker for as long as it keeps it. A
worker that starts later (a replacement for one that died) gets only connections opened after it is
up, which behind a pool can mean none for hours: one pooled client of 16 connections put 89% of the
CPU on one of two workers, and after a kill 100% / 0% (issue 20).

So a connection's last request is its ``SEQSERVE_CONNECTION_MAX_REQUESTS``-th, or its first once it has
been open ``SEQSERVE_CONNECTION_MAX_AGE_S``, the lever nginx (``keepalive_requests``, ``keepalive_time``)
and Envoy (``max_requests_per_connection``, ``max_connection_duration``) offer. Its response says
``Connection: close``, and HTTP/1.1 clients open a new connection for their next request, which any idle
worker may accept. Each connection's bounds are drawn 0-20% below the settings, so connections opened
together (a pool starting) do not all reconnect at once.

Each worker's HTTP protocol (``service.framework.connections``) asks :meth:`ConnectionLimits.opened` for
the bound of every connection it accepts and :meth:`ConnectionBound.last` for every request on it, and
lets uvicorn close the connection after the last one's complete response, never with a request in
flight. The count lives with the connection: a request costs a subtraction and a clock read, with no
table of connections and no ASGI layer of its own. A reconnection costs ~0.6 ms of a worker's CPU: at
the defaults and 64 busy connections ~0.1% of the workers' CPU (measured in the README's operations
section, with the A/B of bounds on against off). A pipelined request behind the last one must be sent
again on a new connection, as HTTP/1.1 says for any ``Connection: close``. WebSocket connections
(``/stream``) are not bounded, and requests from in-process clients (no connection) are not either.
"""

from __future__ import annotations

import random
import time
from typing import Callable

from service.config import Settings

JITTER = 0.2  # each connection's bounds are drawn between (1 - JITTER) and 1 times the settings


class ConnectionBound:
    """One connection's bound, drawn when it opened: :meth:`last` says which request is its last."""

    __slots__ = ("requests_left", "closes_at", "clock")

    def __init__(self, requests_left: float, closes_at: float, clock: Callable[[], float]):
        self.requests_left = requests_left  # inf: no bound on requests
        self.closes_at = closes_at  # on clock(); inf: no bound on age
        self.clock = clock

    def last(self) -> bool:
        """Count a request that begins now; True when it is this connection's last."""
        self.requests_left -= 1
        return self.requests_left <= 0 or self.clock() >= self.closes_at


class ConnectionLimits:
    """The bound of every keep-alive connection of a worker, from ``SEQSERVE_CONNECTION_MAX_REQUESTS`` and
    ``SEQSERVE_CONNECTION_MAX_AGE_S`` (0: none). ``clock`` and ``draw`` (a number in [0, 1)) are injectable."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic,
                 draw: Callable[[], float] = random.random):
        self.max_requests = settings.connection_max_requests or float("inf")
        self.max_age_s = settings.connection_max_age_s or float("inf")
        self.bounded = bool(settings.connection_max_requests or settings.connection_max_age_s)
        self.clock, self.draw = clock, draw

    def opened(self) -> ConnectionBound | None:
        """The bound of a connection that opens now, drawn 0-20% below the settings; None when there is none."""
        if not self.bounded:
            return None
        scale = 1.0 - JITTER * self.draw()
        return ConnectionBound(self.max_requests * scale, self.clock() + self.max_age_s * scale, self.clock)
