"""A minimal WebSocket client for the streaming benchmark: what wrk is to HTTP.

The bench times one new step at a time, and on a small machine the client shares the cores with the
server: the Python client libraries spend 0.1-0.2 ms of their own per message, about what the server
spends on a step, so their numbers say as much about the client as about seqserve. This client does
only what the bench needs, cheaply: each step message is framed and masked once and then replayed
(RFC 6455 lets a client choose any mask), answers are cut out of the byte stream with a few slices, and
a stream's timed loop runs in the protocol's callback, without a task switch per message.

Not a general client: text messages only, answers must be single frames (uvicorn sends them so), pings
are answered, a close frame ends the stream. Using a stream that has ended raises ConnectionError with
the server's close code and reason, so that a caller can count streams the server closed.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import time
from urllib.parse import urlsplit

import numpy as np

TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA


def client_frame(payload: str | bytes, opcode: int = TEXT) -> bytes:
    """One final, masked client frame holding ``payload`` (RFC 6455, 5.2); text is sent as UTF-8."""
    if isinstance(payload, str):
        payload = payload.encode()
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    mask = os.urandom(4)
    masked = np.frombuffer(payload, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8), n)
    return header + mask + masked.tobytes()


class FrameReader:
    """Cuts the server's bytes into ``(opcode, payload)`` frames (a server does not mask)."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Add received bytes; every frame they complete, in order."""
        buffer, frames = self.buffer + data, []
        while len(buffer) >= 2:
            n, start = buffer[1] & 0x7F, 2
            if n == 126:
                if len(buffer) < 4:
                    break
                n, start = struct.unpack_from("!H", buffer, 2)[0], 4
            elif n == 127:
                if len(buffer) < 10:
                    break
                n, start = struct.unpack_from("!Q", buffer, 2)[0], 10
            if len(buffer) < start + n:
                break
            frames.append((buffer[0] & 0x0F, buffer[start : start + n]))
            buffer = buffer[start + n :]
        self.buffer = buffer
        return frames


def _upgrade_request(url: str, path: str) -> bytes:
    host = urlsplit(url).netloc
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def _after_upgrade(response: bytes) -> bytes:
    """The bytes after the 101 response's head; ConnectionError when the server did not upgrade."""
    head, _, rest = response.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if b" 101 " not in status + b" ":
        raise ConnectionError(f"no WebSocket upgrade: {status.decode(errors='replace')}")
    return rest


class BlockingStream:
    """One stream on a blocking socket: the lowest per-message cost Python has, for a lone stream's latency."""

    def __init__(self, url: str, path: str, timeout_s: float = 60):
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(_upgrade_request(url, path))
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed during the WebSocket upgrade")
            response += chunk
        self.reader = FrameReader()
        self.pending = self.reader.feed(_after_upgrade(response))

    def send(self, frame: bytes) -> None:
        self.sock.sendall(frame)

    def receive(self) -> bytes:
        """The next text message; ConnectionError when the stream closes."""
        while True:
            while self.pending:
                opcode, payload = self.pending.pop(0)
                if opcode == TEXT:
                    return payload
                if opcode == PING:
                    self.sock.sendall(client_frame(payload, PONG))
                elif opcode == CLOSE:
                    raise ConnectionError(f"stream closed: {payload[2:].decode(errors='replace')}")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("stream closed")
            self.pending = self.reader.feed(chunk)

    def close(self) -> None:
        self.sock.close()


class AsyncStream(asyncio.Protocol):
    """One stream on an asyncio connection, for many concurrent streams in one process.

    ``receive()`` awaits the next message (setting a stream up); :meth:`replay` then sends one frame
    over and over, from the protocol's callback, timing each answer."""

    def __init__(self) -> None:
        self.reader = FrameReader()
        self.upgraded = False
        self.head = b""
        self.messages: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.transport: asyncio.Transport | None = None
        self._replay: tuple[bytes, float, list[float], list[int], asyncio.Future] | None = None
        self._sent_at = 0.0
        self.closed_because = "the connection dropped"

    @classmethod
    async def open(cls, url: str, path: str) -> "AsyncStream":
        parts = urlsplit(url)
        _, stream = await asyncio.get_running_loop().create_connection(cls, parts.hostname, parts.port or 80)
        stream.transport.write(_upgrade_request(url, path))
        return stream

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.upgraded:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            try:
                data = _after_upgrade(self.head)
            except ConnectionError as err:
                self.messages.put_nowait(None)
                self.transport.close()
                self.closed_because = str(err)
                return
            self.upgraded = True
        for opcode, payload in self.reader.feed(data):
            if opcode == TEXT:
                self._on_message(payload)
            elif opcode == PING:
                self.transport.write(client_frame(payload, PONG))
            elif opcode == CLOSE:
                code = struct.unpack_from("!H", payload)[0] if len(payload) >= 2 else None
                self.closed_because = f"closed with {code}: {payload[2:].decode(errors='replace')}"
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.messages.put_nowait(None)
        if self._replay is not None and not self._replay[4].done():  # closed before its time was up
            self._replay[4].set_exception(ConnectionError(f"stream {self.closed_because}"))

    async def receive(self) -> bytes:
        """The next text message; ConnectionError when the stream closed."""
        message = await self.messages.get()
        if message is None:
            raise ConnectionError(f"stream {self.closed_because}")
        return message

    def send(self, frame: bytes) -> None:
        """Send ``frame``; ConnectionError when the stream has ended (the transport would refuse it)."""
        if self.transport.is_closing():
            raise ConnectionError(f"stream {self.closed_because}")
        self.transport.write(frame)

    async def replay(self, frame: bytes, seconds: float) -> tuple[list[float], int]:
        """Send ``frame``, wait for its answer, again, for ``seconds``: (seconds per answered step, error answers).

        ConnectionError when the server closes the stream before the time is up."""
        done = asyncio.get_running_loop().create_future()
        self._replay = (frame, time.perf_counter() + seconds, [], [0], done)
        self._sent_at = time.perf_counter()
        try:
            self.send(frame)  # a stream that ended before would never answer
        except ConnectionError:
            self._replay = None
            raise
        await done
        _, _, latencies, errors, _ = self._replay
        self._replay = None
        return latencies, errors[0]

    def _on_message(self, payload: bytes) -> None:
        if self._replay is None:
            self.messages.put_nowait(payload)
            return
        frame, stop_at, latencies, errors, done = self._replay
        now = time.perf_counter()
        if b'"error"' in payload:
            errors[0] += 1
        else:
            latencies.append(now - self._sent_at)
        if now < stop_at:
            self._sent_at = now
            self.transport.write(frame)
        elif not done.done():
            done.set_result(None)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(b"", CLOSE))
            self.transport.close()
