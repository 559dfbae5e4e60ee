"""uvicorn's HTTP protocol with a header read timeout (slowloris protection), a hang-up flag and the door.

uvicorn waits for a request's headers forever: a client that opens connections and sends a header
line now and then holds them open. This protocol closes a connection whose request headers are not
complete ``SEQSERVE_HEADER_TIMEOUT_S`` after the connection opened or the request began. The body has
its own deadline in :mod:`service.guard`.

It also puts a :class:`Client` in every request's scope (``seqserve.client``): its ``gone()`` says
whether the client has hung up (uvicorn's own flag, set as soon as the connection drops). The batcher
asks it for every request before computing its work. Starlette's ``Request.is_disconnected`` asks the
same by awaiting ``receive`` under a cancelled scope, an event-loop turn each time: too slow to ask
for every request of every batch.

And it puts :class:`service.admission.Door` in front of the app, outside BentoML's middleware, so
that a request the worker is too busy for is refused in a few microseconds.

It bounds each keep-alive connection (:mod:`service.connection_limits`): the bound is drawn when the
connection opens and counted as each request's headers complete; on the last request it sets the
cycle's ``keep_alive`` to False, so uvicorn answers that request with ``connection: close`` and closes
the connection once the response's last body chunk is written (``RequestResponseCycle.send``). It also
counts each request in ``seqserve_worker_requests_total{worker="<pid>"}``, refused ones included.

A response sent before its request's body was read (413 for a body over the cap, 408 for a slow one) closes
the connection lingeringly, as nginx's ``lingering_close`` does: a connection closed with unread data is
reset, and the reset can drop the answer before a client still sending the body reads it (httpx's async
client then sees a ReadError, not the 413). So the protocol stops writing, reads on and drops what comes
for up to :data:`LINGER_S` and :data:`LINGER_BYTES`, and then closes (:class:`CycleTransport`).

WebSockets get :class:`StreamSocketProtocol`: uvicorn's wsproto protocol, with ``/stream`` handed
straight to the worker's stream sessions (behind the guard's key check) instead of through BentoML's
app. A stream's messages are many and small, and each one crossed a dozen ASGI layers twice (metrics,
timeout, context, Starlette's error handling and routing, mounted twice): ~12% of a step at 64 streams.
Its messages are capped at the request body cap, and it does not offer per-message deflate.

BentoML starts uvicorn with ``http="auto"`` and ``ws="auto"``; :func:`install_protocols` points those names
at these classes, once, in the worker process, before uvicorn builds its config.
"""

from __future__ import annotations

import asyncio
import logging
import random
import weakref

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.wsproto_impl import WSProtocol

from service.admission import CLIENT, Door, WorkerQueue
from service.config import Settings
from service.connection_limits import ConnectionLimits
from service.errors import REFUSED
from service.guard import V2_PREFIX
from service.metrics import count_worker_request
from service.v2 import HEADER_LENGTH

log = logging.getLogger(__name__)

READ_ON_CONNECTIONS = 32
LINGER_S = 1.0  # how long a connection answered before its body came reads on: a body sent at once arrives within it
# ... and how much of it: a client that keeps sending would otherwise hold the event loop reading for the whole
# second (5.9 GB dropped in 1.05 s on loopback); 64 MiB is ~10 ms of reading, and covers any body a client
# meant to send to a server whose caps are a few MiB.
LINGER_BYTES = 64 << 20
BINARY_HEADER_BYTES = HEADER_LENGTH.encode()


class Client:
    """One request's client, as the door and the batcher ask about it: has it hung up?"""

    __slots__ = ("cycle",)

    def __init__(self, cycle):
        # Weakly: the scope belongs to the cycle, and a strong reference to the cycle in its own scope
        # would make each request a reference cycle only the garbage collector frees (long full passes
        # under load). The cycle lives while its request runs; once it is gone, so is anyone who asks.
        self.cycle = weakref.ref(cycle)  # uvicorn's RequestResponseCycle of the request

    def gone(self) -> bool:
        """True once uvicorn saw the connection drop (a plain attribute read: asked for every request of every batch)."""
        return getattr(self.cycle(), "disconnected", True)


class CycleTransport:
    """The connection as one request's uvicorn cycle sees it: ``close()`` while the request's body is still coming
    closes lingeringly (:meth:`HeaderTimeoutProtocol.linger`); everything else is the transport's own."""

    __slots__ = ("protocol", "cycle")

    def __init__(self, protocol: "HeaderTimeoutProtocol", cycle):
        # Weakly, as Client does: the protocol holds the cycle, which holds this.
        self.protocol = weakref.ref(protocol)
        self.cycle = weakref.ref(cycle)

    def __getattr__(self, name: str):
        return getattr(self.protocol().transport, name)

    def close(self) -> None:
        self.protocol().linger(self.cycle())

    def is_closing(self) -> bool:
        protocol = self.protocol()
        return protocol.lingering or protocol.transport.is_closing()


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with seqserve's connection rules: a header timeout, the hang-up flag,
    the door in front of the app, refused connections left unread until their Retry-After, request
    bodies read on up to the cap, and a bound on each keep-alive connection's requests and age."""

    header_timeout_s: float = 10.0
    max_body_bytes: int = 1 << 20
    max_binary_body_bytes: int = 4 << 20  # the cap of a /v2/ body with binary tensors (service.guard)
    door: Door | None = None  # one per worker, made by install_protocols(); wraps the app uvicorn loaded
    reading_on = 0  # connections of this worker read past uvicorn's 64 KiB pause (see on_body)
    limits: ConnectionLimits | None = None  # the keep-alive bounds, set by install_protocols()

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._reading_on = False
        self._body_cap = self.max_body_bytes  # this request's: set again once its headers are in
        self.lingering = False
        self._lingered = 0  # bytes dropped while lingering
        self._linger_timer: asyncio.TimerHandle | None = None
        door = HeaderTimeoutProtocol.door
        if door is not None:
            if door.app is None:
                door.app = self.app
            self.app = door

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._bound = self.limits.opened() if self.limits is not None else None
        self._header_timer: asyncio.TimerHandle | None = None
        self._start_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._start_header_timer()

    def on_headers_complete(self) -> None:
        self._stop_header_timer()
        super().on_headers_complete()  # makes the request's cycle; its app task starts on the next loop turn
        # The upgrade guard: on a WebSocket upgrade uvicorn's WebSocket protocol takes the connection over.
        if self.cycle is None or self.cycle.scope is not self.scope:
            return
        count_worker_request()
        if self._bound is not None and self._bound.last():
            self.cycle.keep_alive = False  # uvicorn says connection: close and closes after this response
        self.scope[CLIENT] = Client(self.cycle)
        self.cycle.transport = CycleTransport(self, self.cycle)
        binary = self.scope["path"].startswith(V2_PREFIX) and any(name == BINARY_HEADER_BYTES for name, _ in self.headers)
        self._body_cap = self.max_binary_body_bytes if binary else self.max_body_bytes

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        # uvicorn stops reading a request past 64 KiB of body until the app asks for more, and a socket
        # it does not read cannot tell it that the client hung up: once the body is in, the door would
        # count, and the guard parse, work nobody waits for. Bodies up to the cap (the guard refuses bigger
        # ones) are read on, for at most READ_ON_CONNECTIONS connections of the worker at a time, so that
        # unread bodies hold at most that many times the cap (32 MiB at the default 1 MiB; 128 MiB if all
        # were binary bodies of the Open Inference Protocol at their default 4 MiB cap, service.guard).
        if not (self.flow.read_paused and self.cycle is not None and len(self.cycle.body) <= self._body_cap):
            return
        if not self._reading_on:
            if HeaderTimeoutProtocol.reading_on >= READ_ON_CONNECTIONS:
                return
            HeaderTimeoutProtocol.reading_on += 1
            self._reading_on = True
        self.flow.resume_reading()

    def _stop_reading_on(self) -> None:
        if self._reading_on:
            HeaderTimeoutProtocol.reading_on -= 1
            self._reading_on = False

    def on_response_complete(self) -> None:
        self._stop_reading_on()
        super().on_response_complete()
        retry_after_s = self.scope.get(REFUSED)
        if retry_after_s and not self.transport.is_closing() and not self.lingering:
            # The client was told when to retry. One that does not listen would send again at once, and
            # here a refusal costs the event loop half as much as an answer (uvicorn's own work per
            # request), so a flood of retries would take it from the requests let in. Its next request
            # on this connection waits in the socket until the time it was given (at most 1 s).
            self.flow.pause_reading()
            # At most a second: uvicorn closes a keep-alive connection it has not read from in 5 s. Spread
            # over the second half of that, so connections refused together do not come back together.
            self.loop.call_later(min(retry_after_s, 1.0) * random.uniform(0.5, 1.0), self._resume_after_refusal)

    def _resume_after_refusal(self) -> None:
        if not self.transport.is_closing():
            self.flow.resume_reading()

    def linger(self, cycle) -> None:
        """Close the connection once ``cycle``'s answer is out. With that request's body still coming, first stop
        writing (the client reads the answer and then the end) and drop what arrives for up to :data:`LINGER_S`: a
        connection closed with unread data is reset, and a reset can drop the answer before the client reads it.

        Only the newest request's body can still be coming: an earlier one that closes (a pipelining client's, whose
        next request is parsed and queued) closes at once, so that uvicorn starts no request queued behind it."""
        if self.lingering:
            return
        if cycle is None or cycle is not self.cycle or not cycle.more_body or self.transport.is_closing() or not self.transport.can_write_eof():
            self.transport.close()
            return
        self.lingering = True
        self.transport.write_eof()
        self.flow.resume_reading()
        self._linger_timer = self.loop.call_later(LINGER_S, self.transport.close)

    def data_received(self, data: bytes) -> None:
        if not self.lingering:
            super().data_received(data)
            return
        # Once lingering, whatever comes is the rest of an answered body: dropped unparsed, up to LINGER_BYTES.
        self._lingered += len(data)
        if self._lingered > LINGER_BYTES:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        self._stop_reading_on()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        super().connection_lost(exc)

    def _start_header_timer(self) -> None:
        self._stop_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _stop_header_timer(self) -> None:
        if getattr(self, "_header_timer", None) is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            log.warning("closed a connection from %s: no complete request headers within %g s", self.client, self.header_timeout_s)
            self.transport.close()


class StreamSocketProtocol(WSProtocol):
    """uvicorn's wsproto WebSocket protocol, with ``/stream`` served by :attr:`streams` directly.

    Other paths, and ``/stream`` before the service has called :func:`serve_streams`, go to the app.
    Keep-alive pings are sent and a late pong is not held against the client (see ``__init__``).
    Streams thereby skip BentoML's own per-request metrics and access log (seqserve's stream metrics
    count them) and uvicorn's proxy-headers rewrite of the client address (nothing on /stream reads it).
    """

    streams = None  # ASGI app for /stream in this worker (the guard in front of the stream sessions)
    max_message_bytes = 1 << 20  # SEQSERVE_MAX_BODY_MB, set by install_protocols()

    def __init__(self, config, *args, **kwargs) -> None:
        # uvicorn buffers a message whole before the app sees it, up to 16 MiB by default, inflated from
        # as little as 16 KiB with per-message deflate: 100 such streams took 1.5 GiB of a worker. So a
        # message over the request body cap closes the stream with 1009 (message too big) as it arrives,
        # and deflate is off: a stream's messages are a few hundred bytes, and each compressed stream
        # would also keep ~27 KiB of zlib state.
        config.ws_max_size = self.max_message_bytes
        config.ws_per_message_deflate = False
        # uvicorn pings every 20 s and closes a stream whose pong is 20 s late (1011). websocket-client (the
        # README's client) and aiohttp answer a ping only when the application next reads, so a device sending
        # a reading a minute was cut off after ~40 s. The pings go on (they keep proxies' idle timers open);
        # a silent client is closed by SEQSERVE_STREAM_IDLE_S alone (4408), a dead one too.
        config.ws_ping_timeout = None
        super().__init__(config, *args, **kwargs)
        self.app = StreamRoute(self.app)


class StreamRoute:
    """ASGI: ``/stream`` to :attr:`StreamSocketProtocol.streams` once there is one, everything else to ``app``.

    An object of its own, not a bound method of the protocol: that would make every connection a
    reference cycle, left for the garbage collector the service runs rarely (service.app)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        streams = StreamSocketProtocol.streams
        if streams is not None and scope["path"].removeprefix(scope.get("root_path", "")) == "/stream":
            return await streams(scope, receive, send)
        return await self.app(scope, receive, send)


def serve_streams(app) -> None:
    """Serve ``/stream`` WebSockets of this worker with the ASGI ``app`` (see :class:`StreamSocketProtocol`)."""
    StreamSocketProtocol.streams = app


def install_protocols(settings: Settings) -> None:
    """Make uvicorn's default protocols (``http="auto"``, ``ws="auto"``) the ones above: HTTP with the settings'
    header timeout, keep-alive bounds and a door that lets requests wait at most ``SEQSERVE_MAX_QUEUE_MS``;
    WebSockets with the /stream lane."""
    from uvicorn import config

    HeaderTimeoutProtocol.header_timeout_s = settings.header_timeout_s
    HeaderTimeoutProtocol.max_body_bytes = settings.max_body_bytes
    HeaderTimeoutProtocol.max_binary_body_bytes = max(settings.max_body_bytes, settings.max_binary_body_bytes)
    HeaderTimeoutProtocol.limits = ConnectionLimits(settings)
    StreamSocketProtocol.max_message_bytes = settings.max_body_bytes
    queue = WorkerQueue(settings.max_queue_ms / 1000)
    HeaderTimeoutProtocol.door = Door(None, queue, settings.max_body_bytes)
    config.HTTP_PROTOCOLS["auto"] = f"{__name__}:HeaderTimeoutProtocol"
    config.WS_PROTOCOLS["auto"] = f"{__name__}:StreamSocketProtocol"
