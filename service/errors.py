"""One shape for every 400: ``{"error": "instances[2].sequence[0][1]: <problem>", ...}``, and one retry hint.

Our own checks already answer that way. Bodies that fail pydantic are answered by BentoML before our
code runs, as ``{"error": "1 validation error for Input", "detail": [{"loc": [...], "msg": ...}]}``;
this middleware rewrites the ``error`` of those answers so it names the instance, the field and the
problem like every other 400, and keeps the first few entries of BentoML's ``detail`` list for
programs that read it. Lists in the request schemas validate fail-fast, so there are few to begin with.

Overload has one account too. Every layer that sheds load raises :class:`RetryLater`: the worker's door
(its queue would take too long, ``service.admission``), the guard (bodies in flight would pass the memory
budget, ``service.guard``) and a model's batcher (its queue would take too long, the deadline passed or
the client hung up, ``service.batching``). :func:`refusal` turns it into the 503, and a stream's message
refused for overload says the same (:meth:`RetryLater.body`).
"""

from __future__ import annotations

import json
import math
from typing import Any


MAX_PROBLEMS = 3  # problems named in one answer; the rest are counted
MAX_MESSAGE = 200  # characters of one problem's message
UNKNOWN_WAIT_MS = 1000  # the retry hint of a 503 whose wait the server cannot estimate (Retry-After: 1)
REFUSED = "seqserve.refused"  # scope key: the Retry-After seconds of a refused request (service.framework reads it)


class RetryLater(Exception):
    """Overload: the same work is likely to be taken after ``retry_after_ms`` milliseconds (at least 1)."""

    def __init__(self, message: str, retry_after_ms: int):
        super().__init__(message)
        self.retry_after_ms = max(1, retry_after_ms)

    @property
    def retry_after_s(self) -> int:
        """The same wait in whole seconds, at least 1, as the ``Retry-After`` header gives it."""
        return retry_fields(self.retry_after_ms)["retry_after_s"]

    def body(self) -> dict[str, Any]:
        """``{"error", "retry_after_s", "retry_after_ms"}``: the 503's JSON body, and a stream's error message."""
        return {"error": str(self), **retry_fields(self.retry_after_ms)}


def refusal(err: RetryLater, scope: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
    """The HTTP answer to ``err``, whichever layer raised it: 503, a ``Retry-After`` header, :meth:`RetryLater.body`.

    It also marks the request's ``scope`` (:data:`REFUSED`): ``service.framework`` then reads nothing
    more from that connection until the time it gave (at most 1 s), so a client that retries at once
    does not take the worker's time from the requests let in.
    """
    body = err.body()
    scope[REFUSED] = body["retry_after_s"]
    return 503, {"retry-after": str(body["retry_after_s"])}, body


def retry_fields(retry_after_ms: int) -> dict[str, int]:
    """When to retry, as a 503's JSON body and a stream's error message say it.

    ``retry_after_s`` is what the ``Retry-After`` header says: HTTP allows only whole seconds there
    (RFC 9110, delay-seconds), so a wait of 3 ms is 1 s. ``retry_after_ms`` is the wait itself, for a
    client that can act on less than a second.
    """
    retry_after_ms = max(1, retry_after_ms)
    return {"retry_after_s": max(1, math.ceil(retry_after_ms / 1000)), "retry_after_ms": retry_after_ms}


def _is_field(part: Any) -> bool:
    """Location parts that are fields or indexes, not the names pydantic gives union branches (``list[float]``)."""
    return isinstance(part, int) or (isinstance(part, str) and part.isidentifier() and part not in ("float", "int", "str"))


def describe_location(loc: list[Any]) -> str:
    """``["instances", 2, "sequence", 0, 1]`` -> ``instances[2].sequence[0][1]``; union branch names are left out."""
    text = ""
    for part in filter(_is_field, loc):
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def _failed_value(loc: list[Any]) -> tuple[Any, ...]:
    """Where the value a problem is about sits: ``loc`` up to its first union branch name
    (``["steps", 1, "list[float]", 0]`` -> ``("steps", 1)``), or all of ``loc`` outside a union."""
    for end, part in enumerate(loc):
        if not _is_field(part):
            return tuple(loc[:end])
    return tuple(loc)


def readable_error(body: dict[str, Any]) -> dict[str, Any]:
    """Replace BentoML's "N validation errors" headline with the first few problems themselves.

    A value that fails every branch of a union is reported once, by the branch that got furthest into
    it: a step ``[NaN, 1.0]`` of ``list[float | list[float]]`` is ``steps[1][0]: Input should be a
    finite number`` (the list branch), a step ``NaN`` is ``steps[1]: Input should be a finite number``
    (the first branch, as deep as the list branch's "not an array"). The ``detail`` list is cut to the
    same few entries, so an answer stays small however many values a body got wrong.
    """
    details = body.get("detail")
    if not isinstance(details, list) or not details:
        return body
    problems: dict[tuple[Any, ...], dict[str, Any]] = {}  # one per failed value, first seen first
    for detail in details:
        loc = list(detail.get("loc", []))
        value = _failed_value(loc)
        kept = problems.get(value)
        if kept is None or _depth(loc) > _depth(kept.get("loc", [])):
            problems[value] = {**detail, "msg": str(detail.get("msg", "is invalid"))[:MAX_MESSAGE]}
    named = list(problems.values())[:MAX_PROBLEMS]
    headline = [f"{describe_location(detail.get('loc', []))}: {detail['msg']}" for detail in named]
    if len(problems) > MAX_PROBLEMS:
        headline.append(f"and {len(problems) - MAX_PROBLEMS} more")
    return {**body, "error": "; ".join(headline), "detail": named}


def _depth(loc: Any) -> int:
    return sum(1 for part in loc if _is_field(part))


class ReadableValidationErrors:
    """ASGI middleware: touches only 400 JSON answers that carry a pydantic ``detail`` list."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start: dict | None = None  # a 400's start message, held until its whole body is in
        chunks: list[bytes] = []

        async def wrapped_send(message):
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] == 400:
                start = message
                return
            if start is not None and message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                body = _rewrite(b"".join(chunks))
                headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
                await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body, "more_body": False})
                return
            await send(message)

        await self.app(scope, receive, wrapped_send)


def _rewrite(raw: bytes) -> bytes:
    try:
        body = json.loads(raw)
    except ValueError:
        return raw
    return json.dumps(readable_error(body)).encode() if isinstance(body, dict) else raw
