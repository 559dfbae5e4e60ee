"""Keep-alive connections with a bound, so that the load spreads again over workers that start later.

The kernel hands each new connection to one worker, and a keep-alive client (a pooled HTTP client, a
proxy) then sends every request of that connection to the same worker for as long as it keeps it. A
worker that starts later (a replacement for one that died) gets only connections opened after it is
up, which behind a pool can mean none for hours: one pooled client of 16 connections put 89% of the
CPU on one of two workers, and after a kill 100% / 0% (issue 20).

:class:`ConnectionLimits` answers ``Connection: close`` on the response that reaches a connection's bound
on requests (``SEQSERVE_CONNECTION_MAX_REQUESTS``) or age (``SEQSERVE_CONNECTION_MAX_AGE_S``), the
lever nginx (``keepalive_requests``, ``keepalive_time``) and Envoy (``max_requests_per_connection``,
``max_connection_duration``) offer. HTTP/1.1 clients then open a new connection for their next request,
which any idle worker may accept. Each connection's bounds are drawn 0-20% below the settings, so
connections opened together (a pool starting) do not all reconnect at once.

The close happens only after a complete response, never with a request in flight: uvicorn 0.55's
``protocols/http/httptools_impl.py`` reads a ``connection: close`` response header in
``RequestResponseCycle.send``, sets ``keep_alive = False`` and closes the transport once that response's
last body chunk is written; ``h11_impl.py`` does the same when h11 puts the connection in ``MUST_CLOSE``. (A client that pipelines requests behind it must send those
again on a new connection, as HTTP/1.1 says for any ``Connection: close``.)

A connection is known by its ASGI scope's ``client`` and ``server`` addresses, in a table of at most
:data:`TRACKED_CONNECTIONS` per worker that forgets the connection used longest ago when full; a
forgotten connection that comes back starts counting again. The entry of a connection the client
closed stays until it is forgotten that way; a new connection from the same address and port meanwhile
inherits its count and may be closed early, once. Behind a proxy that uvicorn trusts
(``FORWARDED_ALLOW_IPS``) the client address is the one the proxy forwards, so the bound counts that
client's requests over all the proxy's connections; the responses that reach it still close the
connection they travel on.

The same layer counts each request in ``seqserve_worker_requests_total{worker="<pid>"}``: it sees every
HTTP request once, and a second middleware for that would add a second layer to every request.
WebSocket connections (``/stream``) are neither bounded nor counted.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from service.config import Settings
from service.metrics import count_worker_request

TRACKED_CONNECTIONS = 10_000  # per worker: ~2 MB; far more keep-alive connections than one worker serves well
JITTER = 0.2  # each connection's bounds are drawn between (1 - JITTER) and 1 times the settings
CLOSE = (b"connection", b"close")


@dataclass(slots=True)
class _Connection:
    opened: float  # clock() when its first request arrived
    max_requests: float  # this connection's bounds, drawn with the jitter (inf: none)
    max_age_s: float
    requests: int = 0


class ConnectionLimits:
    """ASGI middleware: ``Connection: close`` on the response that reaches its connection's bound on requests
    or age; counts every HTTP request per worker. ``clock`` and ``draw`` (a number in [0, 1)) are injectable."""

    def __init__(self, app, settings: Settings, clock: Callable[[], float] = time.monotonic,
                 draw: Callable[[], float] = random.random, tracked: int = TRACKED_CONNECTIONS):
        self.app = app
        self.max_requests = settings.connection_max_requests or float("inf")
        self.max_age_s = settings.connection_max_age_s or float("inf")
        self.bounded = bool(settings.connection_max_requests or settings.connection_max_age_s)
        self.clock, self.draw, self.tracked = clock, draw, tracked
        self.connections: OrderedDict[tuple, _Connection] = OrderedDict()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        count_worker_request()
        client = scope.get("client")
        if not self.bounded or client is None:  # no address (an in-process client): nothing to rebalance
            return await self.app(scope, receive, send)
        if self._reaches_bound((tuple(client), tuple(scope.get("server") or ()))):
            return await self.app(scope, receive, _closing(send))
        return await self.app(scope, receive, send)

    def _reaches_bound(self, key: tuple) -> bool:
        """Count a request of connection ``key``; True when it is that connection's last."""
        now = self.clock()
        connection = self.connections.get(key)
        if connection is None:
            scale = 1.0 - JITTER * self.draw()
            connection = self.connections[key] = _Connection(now, self.max_requests * scale, self.max_age_s * scale)
            if len(self.connections) > self.tracked:
                self.connections.popitem(last=False)  # the connection used longest ago
        else:
            self.connections.move_to_end(key)
        connection.requests += 1
        if connection.requests >= connection.max_requests or now - connection.opened >= connection.max_age_s:
            del self.connections[key]  # its next connection from the same address starts afresh
            return True
        return False


def _closing(send):
    """``send`` with ``connection: close`` added to the response's headers."""

    async def send_closing(message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), CLOSE]}
        await send(message)

    return send_closing
