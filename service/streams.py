"""WebSocket streams: one connection is one stream, its state kept in the worker between messages.

``GET /stream?model=<name[:version]>`` (or ``?task=classify|forecast`` for the task's default model)
upgrades to a WebSocket. The server first sends ``{"model", "task", "features", "max_steps",
"idle_timeout_s"}``; then every message ``{"steps": [...], "every_step": false}`` gets the answer after
its last step (``every_step``: one message per new step), as ``/stream/<task>`` answers it, without a
token. Steps of every open stream of a model go through that model's stream batcher, so concurrent
streams share forward passes.

Limits and lifecycle:

* at most ``SEQSERVE_STREAM_MAX_OPEN`` open streams per worker: the next connection is accepted and
  closed at once with code 1013 (try again later) and a reason, so nobody else is slowed;
* a stream with no message for ``SEQSERVE_STREAM_IDLE_S`` is closed with 4408;
* a message over ``SEQSERVE_MAX_BODY_MB`` closes the stream with 1009 (message too big), as it arrives;
* a message with more than ``SEQSERVE_STREAM_MAX_STEPS`` steps, or bad input (wrong feature count,
  not finite, not JSON) gets ``{"error": ...}`` and the stream goes on with its state unchanged; so
  does an overloaded model (``{"error", "retry_after_s", "retry_after_ms"}``: whole seconds, as HTTP's
  ``Retry-After``, and the estimated wait in milliseconds);
* an unknown model, or one that cannot stream, closes with 4400 and the reason;
* on server shutdown uvicorn closes every stream with 1012 (service restart).

Each of these closes but shutdown's is counted in ``seqserve_stream_closes_total{reason}`` (``too_many_open``,
``idle``, ``too_big``, ``bad_request``), so an operator sees how often clients are turned away and why.

API keys apply to the handshake (``service.guard``): ``Authorization: Bearer <key>``, or from a browser
the subprotocols ``seqserve`` and ``seqserve.bearer.<key>``. A stream selects ``seqserve`` when it is
offered (a browser fails a handshake whose answer selects none of the subprotocols it offered), else none.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect

from models.streaming import State
from service.config import Settings
from service.errors import RetryLater, readable_error
from service.guard import STREAM_PROTOCOL
from service.inference import OutOfRange
from service.inputs import InstanceError
from service.lanes import ModelLane, Lanes
from service.metrics import change_open_streams, count_stream_close
from service.schemas import StreamMessage

log = logging.getLogger(__name__)

MESSAGE_TOO_BIG = 1009
TRY_AGAIN_LATER = 1013
BAD_REQUEST = 4400
IDLE = 4408
CLOSE_REASONS = {TRY_AGAIN_LATER: "too_many_open", IDLE: "idle", MESSAGE_TOO_BIG: "too_big", BAD_REQUEST: "bad_request"}


class StreamSessions:
    """The WebSocket streams of one worker: the open-stream cap, the idle timeout, one state per connection."""

    def __init__(self, lanes: Lanes, settings: Settings):
        self.lanes = lanes
        self.max_open = settings.stream_max_open
        self.idle_s = settings.stream_idle_s
        self.max_message_bytes = settings.max_body_bytes
        self.open = 0

    async def asgi(self, scope, receive, send) -> None:
        """Run one stream, an ASGI WebSocket connection, from the handshake to its close."""
        websocket = WebSocket(scope, receive, send)  # for the handshake, the hello and the early closes
        if self.open >= self.max_open:
            _count_close(TRY_AGAIN_LATER)
            await websocket.accept(_protocol(scope))
            return await websocket.close(TRY_AGAIN_LATER, f"this worker has {self.open} open streams, its limit (SEQSERVE_STREAM_MAX_OPEN); retry later")
        try:
            lane = self._lane(websocket.query_params.get("model"), websocket.query_params.get("task"))
        except InstanceError as err:
            _count_close(BAD_REQUEST)
            await websocket.accept(_protocol(scope))
            return await websocket.close(BAD_REQUEST, f"{err.field}: {err.problem}"[:120])
        self._count(+1)
        try:
            await websocket.accept(_protocol(scope))
            await websocket.send_text(json.dumps({
                "model": lane.tag, "task": lane.task, "features": lane.model.card.features,
                "max_steps": lane.max_steps, "idle_timeout_s": self.idle_s,
            }))
            await self._run(receive, send, lane)
        except (WebSocketDisconnect, OSError):  # OSError: a send after the client left (uvicorn's ClientDisconnected)
            pass
        finally:
            self._count(-1)

    def _lane(self, name: str | None, task: str | None) -> ModelLane:
        """The lane a connection asked for, which must be able to stream; InstanceError naming the problem."""
        if name is None and task is None:
            raise InstanceError(0, "model", "name the model (?model=name) or the task (?task=classify or ?task=forecast)")
        if task is not None and task not in ("classify", "forecast"):
            raise InstanceError(0, "task", f"unknown task {task[:40]!r}; use classify or forecast")
        named = self.lanes.get(name) if name is not None else None
        if named is not None and task is not None and named.task != task:
            raise InstanceError(0, "task", f"{named.tag} is a {named.task} model; use ?task={named.task}, or leave task out")
        if task is None:
            task = named.task if named is not None else "classify"
        lane = self.lanes.lane_for(0, name, task)
        lane.check_streamable(0)
        return lane

    async def _run(self, receive, send, lane: ModelLane) -> None:
        """The stream's messages until the client leaves or stays silent too long.

        Plain ASGI messages: past the handshake, Starlette's WebSocket only adds checks, ~3% of a step. One
        idle timer per stream, moved at every message, rather than a new timeout per message."""
        state = lane.stream.initial()
        loop = asyncio.get_running_loop()
        idle = asyncio.timeout(None)
        try:
            async with idle:
                while True:
                    idle.reschedule(loop.time() + self.idle_s)
                    message = await receive()
                    idle.reschedule(None)  # a slow step (an overloaded model) is not the client's silence
                    if message["type"] == "websocket.disconnect":
                        if message.get("code") == MESSAGE_TOO_BIG:  # uvicorn closed it as the message arrived
                            _count_close(MESSAGE_TOO_BIG)
                        return
                    text = message.get("text")
                    if text is None:
                        text = (message.get("bytes") or b"").decode("utf-8", errors="replace")
                    if len(text) > self.max_message_bytes:  # uvicorn closes such a stream itself; in-process clients get the same
                        reason = f"message over {self.max_message_bytes} bytes (SEQSERVE_MAX_BODY_MB)"
                        _count_close(MESSAGE_TOO_BIG)
                        return await send({"type": "websocket.close", "code": MESSAGE_TOO_BIG, "reason": reason})
                    state, replies = await self._step(text, lane, state)
                    for reply in replies:
                        await send({"type": "websocket.send", "text": reply})
        except TimeoutError:
            if not idle.expired():
                raise
            _count_close(IDLE)
            await send({"type": "websocket.close", "code": IDLE, "reason": f"no message for {self.idle_s:g} s (SEQSERVE_STREAM_IDLE_S)"})

    async def _step(self, text: str, lane: ModelLane, state: State) -> tuple[State, list[str]]:
        """One message: the stream's state after it and the texts to send back (its answers, or one error)."""
        try:
            message = self._parse(text)
            # With one stream open no other message can join its pass: it may skip the batcher's queue.
            state, replies = await lane.step_message(state, message.steps, message.every_step, alone=self.open == 1)
        except _StreamError as err:
            return state, [_error(str(err))]
        except InstanceError as err:
            return state, [_error(f"{err.field}: {err.problem}")]
        except OutOfRange as err:
            return state, [_error(f"steps: {err}")]
        except RetryLater as err:  # the model's queue is full, or the deadline passed
            return state, [json.dumps(err.body())]
        return state, replies

    @staticmethod
    def _parse(text: str) -> StreamMessage:
        try:
            return StreamMessage.model_validate_json(text)
        except ValidationError as err:
            details = [{"loc": e["loc"], "msg": e["msg"]} for e in err.errors(include_url=False)]
            raise _StreamError(readable_error({"detail": details})["error"].replace("body: ", "message: ")) from None

    def _count(self, delta: int) -> None:
        self.open += delta
        change_open_streams(delta)


def _protocol(scope) -> str | None:
    return STREAM_PROTOCOL if STREAM_PROTOCOL in scope.get("subprotocols", []) else None


def _count_close(code: int) -> None:
    """Count a stream the server closes with ``code`` in ``seqserve_stream_closes_total``."""
    count_stream_close(CLOSE_REASONS[code])


def _error(problem: str) -> str:
    return json.dumps({"error": problem})


class _StreamError(ValueError):
    """A message that cannot be used; the stream goes on."""
