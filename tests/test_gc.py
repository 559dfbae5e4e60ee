"""Requests leave nothing for the garbage collector: a reference cycle per request made its passes long (issue 20)."""

import asyncio
import gc

from uvicorn.config import Config
from uvicorn.server import ServerState

from service.admission import CLIENT
from service.framework import connections


class Transport(asyncio.Transport):
    """What uvicorn's protocol needs of a socket: addresses, writes, closing."""

    def __init__(self):
        super().__init__()
        self.written, self.closing = bytearray(), False

    def get_extra_info(self, name, default=None):
        return {"sockname": ("127.0.0.1", 3000), "peername": ("127.0.0.1", 5000)}.get(name, default)

    def write(self, data):
        self.written += data

    def is_closing(self):
        return self.closing

    def close(self):
        self.closing = True

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


async def app(scope, receive, send):
    assert scope[CLIENT].gone() is False  # the hang-up flag still answers while the request runs
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def test_keep_alive_requests_through_the_protocol_leave_no_reference_cycles(monkeypatch):
    monkeypatch.setattr(connections.HeaderTimeoutProtocol, "door", None)

    async def serve(requests: int) -> tuple[int, int]:
        config = Config(app=app, http="httptools", access_log=False)
        config.load()
        protocol = connections.HeaderTimeoutProtocol(config=config, server_state=ServerState(), app_state={})
        transport = Transport()
        protocol.connection_made(transport)
        gc.collect()
        gc.disable()
        try:
            for _ in range(requests):
                protocol.data_received(b"POST /classify HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}")
                for _ in range(5):  # the request's task runs and answers
                    await asyncio.sleep(0)
            unreachable = gc.collect()
        finally:
            gc.enable()
        protocol.connection_lost(None)
        return unreachable, transport.written.count(b"HTTP/1.1 200 OK")

    unreachable, answered = asyncio.run(serve(50))
    assert answered == 50
    assert unreachable == 0
