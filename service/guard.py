"""The gate every HTTP request passes before BentoML parses anything: size, type, keys, time.

``RequestGuard`` is an ASGI middleware with one job: refuse what must never reach the parser or
the models, cheaply and with a clear answer. (Before it, outside BentoML's middleware, the worker's
door refuses requests that would wait too long: :mod:`service.admission`.)

* **Paths** ending in ``/`` are served as the same path without it (``/classify/`` is ``/classify``),
  so no redirect is ever built from the client's ``Host`` header.
* **API keys** (``SEQSERVE_API_KEYS``): every path but the open ones (probes, metrics) needs
  ``Authorization: Bearer <key>``; keys are compared in constant time and never logged. 401 otherwise,
  also for a WebSocket handshake (``/stream``), before it is accepted. A browser's ``WebSocket`` cannot
  send headers, so a handshake may carry the key as a subprotocol instead (as Kubernetes' API server
  takes its token): it offers ``seqserve`` and ``seqserve.bearer.<key>``, and the stream selects
  ``seqserve``, so the key is never echoed back.
* **JSON only**: a POST must say ``Content-Type: application/json`` (415 otherwise). Browsers can only
  send such a request cross-site after a CORS preflight, which the service refuses unless
  ``SEQSERVE_CORS_ORIGINS`` allows the origin. The Open Inference Protocol's ``/v2/`` routes also take
  ``application/octet-stream`` and no content type at all, as Triton's clients send none: a page on
  another site could then make a browser send one without a preflight, but not read the answer, nor
  send an API key.
* **Uncompressed bodies**: a ``Content-Encoding`` (gzip, deflate) gets 415: inflated, a small body could
  pass the size cap by orders of magnitude.
* **Body size**: a ``Content-Length`` over the cap is refused before a byte is read, and a body that
  grows past it while streaming is refused as soon as it does (413). A ``/v2/`` request with binary
  tensors (an ``Inference-Header-Content-Length`` header) has the larger cap of binary bodies: its
  tensors are copied, not parsed, and its JSON part is held to the JSON cap (service.v2.protocol).
* **Slow bodies**: a body that does not arrive within ``SEQSERVE_BODY_TIMEOUT_S`` gets 408 (a
  ``Content-Length`` larger than the body sent would otherwise hold the request open).
* **Memory in flight**: bodies read but not yet answered share a per-worker budget; a request that
  would exceed it gets 503 with ``Retry-After`` before its body is read, so a flood of heavy requests
  cannot pile up parsed arrays in memory or parsing work on the event loop.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import Any

from service.config import Settings
from service.errors import UNKNOWN_WAIT_MS, RetryLater, refusal
from service.v2 import HEADER_LENGTH

JSON_TYPES = ("application/json",)
V2_PREFIX = "/v2/"
V2_TYPES = ("application/json", "application/octet-stream", "")  # "": no Content-Type (tritonclient sends none)
STREAM_PROTOCOL = "seqserve"  # the WebSocket subprotocol /stream selects when a client offers it
KEY_PROTOCOL_PREFIX = "seqserve.bearer."  # a subprotocol offered only to carry the API key (browsers)


def json_answer(status: int, answer: dict[str, Any], headers: dict[str, str] | None = None):
    """An ASGI-level JSON answer; ``await json_answer(...)(send)`` sends it."""
    body = json.dumps(answer).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]

    async def send_to(send) -> None:
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": body})

    return send_to


def json_error(status: int, message: str, headers: dict[str, str] | None = None):
    """An ASGI-level JSON error answer: ``{"error": message}``; ``await json_error(...)(send)`` sends it."""
    return json_answer(status, {"error": message}, headers)


def refused(err: RetryLater, scope):
    """The ASGI-level 503 for an overload (:func:`service.errors.refusal`); ``await refused(err, scope)(send)`` sends it."""
    status, headers, body = refusal(err, scope)
    return json_answer(status, body, headers)


class RequestGuard:
    """ASGI middleware: normalise the path, check the key, the content type and the body size."""

    def __init__(self, app, settings: Settings):
        self.app = app
        self.max_body = settings.max_body_bytes
        self.max_binary_body = max(settings.max_binary_body_bytes, settings.max_body_bytes)
        # Bodies are parsed on the event loop one at a time; more than two big ones in flight only lengthen
        # the wait of everything queued behind them (/livez included), and hold their memory meanwhile.
        # A binary body at its cap weighs as much as a JSON body at its cap.
        self.inflight_budget = 2 * settings.max_body_bytes
        self.inflight = 0  # weighed bytes of bodies read and not yet answered, in this worker
        self.body_timeout = settings.body_timeout_s
        self.keys = [key.encode() for key in settings.api_keys]
        self.open_paths = set(settings.open_paths)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket":
            return await self._websocket(scope, receive, send)
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        received, path = scope, scope["path"]  # the server's own scope: a refusal marks it (service.errors.refusal)
        if len(path) > 1 and path.endswith("/"):
            scope = {**scope, "path": path.rstrip("/") or "/", "raw_path": path.rstrip("/").encode() or b"/"}
        headers = _headers(scope)
        if self.keys and scope["path"] not in self.open_paths and scope["method"] != "OPTIONS":
            problem = self._key_problem(headers.get("authorization", ""))
            if problem:
                return await json_error(401, problem, {"www-authenticate": "Bearer"})(send)
        if scope["method"] != "POST":  # the only method with a body any route takes; routing answers the rest (405)
            return await self.app(scope, receive, send)

        v2 = scope["path"].startswith(V2_PREFIX)
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type not in (V2_TYPES if v2 else JSON_TYPES):
            shown = media_type[:60] or "none"
            accepted = "application/json or application/octet-stream" if v2 else "application/json"
            return await json_error(415, f"content-type: {shown} is not accepted; send {accepted}")(send)
        codings = {coding.strip() for coding in headers.get("content-encoding", "").lower().split(",")} - {"", "identity"}
        if codings:
            # A compressed body would have to be inflated past the size cap to be read (a zip bomb's way in).
            shown = ", ".join(sorted(codings))[:40]
            return await json_error(415, f"content-encoding: {shown} is not accepted; send the body uncompressed")(send)
        binary = v2 and HEADER_LENGTH in headers  # binary tensors follow the JSON
        cap = self.max_binary_body if binary else self.max_body
        declared = headers.get("content-length", "")
        if declared and (not declared.isdigit() or int(declared) > cap):
            return await json_error(413, self._too_large(declared, binary), {"connection": "close"})(send)
        expected = (int(declared) if declared else cap) * self.max_body // cap
        if self.inflight and self.inflight + expected > self.inflight_budget:
            busy = RetryLater("the server is busy with other large requests; retry shortly", UNKNOWN_WAIT_MS)
            return await refused(busy, received)(send)

        self.inflight += expected
        try:
            try:
                async with asyncio.timeout(self.body_timeout):
                    body = await self._read_body(receive, cap)
            except TimeoutError:
                return await json_error(
                    408, f"body: not received within {self.body_timeout:g} s", {"connection": "close"}
                )(send)
            if body is None:
                return await json_error(413, self._too_large("more", binary), {"connection": "close"})(send)
            await self.app(scope, _replay(body, receive), send)
        finally:
            self.inflight -= expected

    async def _websocket(self, scope, receive, send):
        """A WebSocket handshake (/stream) needs the API key like any request; refused with 401 before it is accepted."""
        if self.keys and scope["path"] not in self.open_paths:
            authorization = _headers(scope).get("authorization") or _key_protocol(scope.get("subprotocols", []))
            problem = self._key_problem(authorization)
            if problem and not authorization:
                problem += f", or offer the subprotocols {STREAM_PROTOCOL} and {KEY_PROTOCOL_PREFIX}<API key>"
            if problem:
                if "websocket.http.response" in scope.get("extensions", {}):  # uvicorn: a real 401 answer
                    body = json.dumps({"error": problem}).encode()
                    await send({"type": "websocket.http.response.start", "status": 401, "headers": [
                        (b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                        (b"content-length", str(len(body)).encode())]})
                    return await send({"type": "websocket.http.response.body", "body": body})
                return await send({"type": "websocket.close", "code": 1008, "reason": problem})
        return await self.app(scope, receive, send)

    def _key_problem(self, authorization: str) -> str | None:
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return "authorization: missing; send Authorization: Bearer <API key>"
        given = key.strip().encode()
        # Compare with every key, whatever matched, so timing says nothing about which key is close.
        matched = False
        for known in self.keys:
            matched |= hmac.compare_digest(given, known)
        return None if matched else "authorization: the API key is not valid"

    def _too_large(self, declared: str, binary: bool) -> str:
        limit = (self.max_binary_body if binary else self.max_body) / 2**20
        setting = "SEQSERVE_MAX_BINARY_BODY_MB" if binary else "SEQSERVE_MAX_BODY_MB"
        size = f"{int(declared) / 2**20:.1f} MiB" if declared.isdigit() else "more than that"
        return f"body: {size} is over the limit of {limit:g} MiB ({setting}); send fewer instances per request"

    async def _read_body(self, receive, cap: int) -> bytes | None:
        """The whole body, or None as soon as it passes ``cap`` bytes."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > cap:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _headers(scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _key_protocol(subprotocols: list[str]) -> str:
    """The ``Authorization`` value a handshake's ``seqserve.bearer.<key>`` subprotocol stands for, or ""."""
    keys = [p[len(KEY_PROTOCOL_PREFIX):] for p in subprotocols if p.startswith(KEY_PROTOCOL_PREFIX)]
    return f"Bearer {keys[0]}" if keys else ""


def _replay(body: bytes, receive):
    """A ``receive`` that hands the app the body already read, then the real channel (disconnects)."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
