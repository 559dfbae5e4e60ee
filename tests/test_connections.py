"""Keep-alive connections close at their bound (service.connection_limits): the bound with a fake clock, and through
a real ``bentoml serve`` with a keep-alive httpx client that must reconnect without an error."""

import dataclasses
import json
from itertools import groupby

import httpx
import pytest

from loadtests.server import running_server
from service.config import Settings
from service.connection_limits import ConnectionLimits
from tests import tiny_models

SETTINGS = Settings.from_env()


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def limits(max_requests: int, max_age_s: float, draw: float = 0.0, clock=None) -> ConnectionLimits:
    settings = dataclasses.replace(SETTINGS, connection_max_requests=max_requests, connection_max_age_s=max_age_s)
    return ConnectionLimits(settings, clock=clock or Clock(), draw=lambda: draw)


def test_the_request_that_reaches_the_request_bound_is_the_last_and_the_next_connection_starts_afresh():
    app = limits(max_requests=3, max_age_s=0)
    first, second = app.opened(), app.opened()
    assert [first.last() for _ in range(3)] == [False, False, True]
    assert [second.last() for _ in range(3)] == [False, False, True]


def test_the_first_request_past_the_age_bound_is_the_last():
    clock = Clock()
    app = limits(max_requests=0, max_age_s=20, clock=clock)
    bound = app.opened()
    assert not bound.last()
    clock.now += 19.9
    assert not bound.last()
    later = app.opened()  # a new connection: its age counts from its own opening
    clock.now += 0.1
    assert bound.last()
    clock.now += 19.8
    assert not later.last()
    clock.now += 0.1
    assert later.last()


def test_each_connection_draws_its_bound_up_to_a_fifth_lower():
    app = limits(max_requests=10, max_age_s=100, draw=1.0)  # the lowest draw: 8 requests, 80 s
    bound = app.opened()
    assert [bound.last() for _ in range(8)] == [False] * 7 + [True]
    assert bound.closes_at == 100.0 + 80.0


def test_without_bounds_a_connection_has_none():
    assert limits(max_requests=0, max_age_s=0).opened() is None


@pytest.fixture(scope="module")
def server():
    clf = tiny_models.store_classifier("bounded-clf")
    streaming = tiny_models.store_streaming_classifier("bounded-stream", "gru")
    env = {"SEQSERVE_MODELS": f"{clf},{streaming}", "SEQSERVE_CONNECTION_MAX_REQUESTS": "5", "SEQSERVE_CONNECTION_MAX_AGE_S": "0"}
    with running_server(env) as url:
        yield url, clf, streaming


def note_local_port(response: httpx.Response) -> None:
    """A response hook: the client's port of the connection, read before a closing response closes it."""
    response.extensions["local_port"] = response.extensions["network_stream"].get_extra_info("client_addr")[1]


def test_a_keep_alive_client_reconnects_cleanly_after_the_bound_and_websockets_stay_open(server):
    url, clf, streaming = server
    body = {"instances": [{"sequence": [[0.1, 0.2, 0.3]] * 4, "model": clf}]}
    with httpx.Client(base_url=url, timeout=30, limits=httpx.Limits(max_connections=1), event_hooks={"response": [note_local_port]}) as client:
        responses = [client.post("/classify", json=body) for _ in range(16)]
    assert [r.status_code for r in responses] == [200] * 16
    # One run of responses per connection: each closes after 4 or 5 requests (the bound, drawn with the
    # jitter), on a response that says so; the client's next request opens the next connection.
    runs = [[r.headers.get("connection") == "close" for r in run] for _, run in groupby(responses, key=lambda r: r.extensions["local_port"])]
    assert len(runs) >= 3
    for closed in runs[:-1]:
        assert len(closed) in (4, 5) and closed == [False] * (len(closed) - 1) + [True]
    assert len(runs[-1]) <= 5 and not any(runs[-1][:-1])
    from websocket import create_connection

    ws = create_connection(f"{url.replace('http', 'ws')}/stream?model={streaming}", timeout=30)
    try:
        ws.recv()  # the hello
        for n in range(1, 9):  # more messages than the HTTP bound
            ws.send(json.dumps({"steps": [[0.1, 0.2, 0.3]]}))
            assert json.loads(ws.recv())["seen"] == n
    finally:
        ws.close()
    metrics = httpx.get(f"{url}/metrics").text
    assert "seqserve_worker_requests_total{worker=" in metrics


def test_a_pipelined_request_behind_an_answer_that_closes_is_never_started(monkeypatch):
    """A response with ``connection: close`` closes at once even when the client has already sent the next request's
    headers and part of its body: that request is the one still arriving, not the one answered, so the connection
    does not linger for it, and uvicorn does not start it on a connection that will write no more."""
    import asyncio
    import socket

    import uvicorn

    from service.framework import connections

    monkeypatch.setattr(connections.HeaderTimeoutProtocol, "door", None)
    started = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        started.append(scope["path"])
        await asyncio.sleep(0.1)  # the pipelined request's headers and first bytes arrive while this one runs
        close = [(b"connection", b"close")] if scope["path"] == "/first" else []
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2"), *close]})
        await send({"type": "http.response.body", "body": b"ok"})

    async def exchange() -> bytes:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        config = uvicorn.Config(app, host="127.0.0.1", port=port, http=connections.HeaderTimeoutProtocol,
                                lifespan="off", log_level="warning")
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /first HTTP/1.1\r\nhost: x\r\n\r\n"
                         b"POST /second HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n" + b"x" * 10)
            answer = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            return answer
        finally:
            server.should_exit = True
            await serving

    answer = asyncio.run(exchange())
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.count(b"HTTP/1.1 ") == 1 and answer.endswith(b"ok")
    assert started == ["/first"]
