"""Keep-alive connections close at their bound (service.connection_limits): in-process with a fake clock, and through
a real ``bentoml serve`` with a keep-alive httpx client that must reconnect without an error."""

import asyncio
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


async def ok(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def limits(max_requests: int, max_age_s: float, draw: float = 0.0, tracked: int = 100, clock=None) -> ConnectionLimits:
    settings = dataclasses.replace(SETTINGS, connection_max_requests=max_requests, connection_max_age_s=max_age_s)
    return ConnectionLimits(ok, settings, clock=clock or Clock(), draw=lambda: draw, tracked=tracked)


def closes(app: ConnectionLimits, port: int = 5000, kind: str = "http") -> bool:
    """One request of the connection from 127.0.0.1:``port``: whether its response says ``connection: close``."""
    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": kind, "client": ("127.0.0.1", port), "server": ("127.0.0.1", 3000), "path": "/classify"}
    asyncio.run(app(scope, None, send))
    return (b"connection", b"close") in sent[0].get("headers", [])


def test_the_response_that_reaches_the_request_bound_closes_and_the_next_connection_starts_afresh():
    app = limits(max_requests=3, max_age_s=0)
    assert [closes(app) for _ in range(7)] == [False, False, True, False, False, True, False]


def test_the_first_request_past_the_age_bound_closes():
    clock = Clock()
    app = limits(max_requests=0, max_age_s=20, clock=clock)
    assert not closes(app)
    clock.now += 19.9
    assert not closes(app)
    clock.now += 0.1
    assert closes(app)
    clock.now += 19.9  # a new connection: its age counts from its own first request
    assert not closes(app)


def test_each_connection_draws_its_bound_up_to_a_fifth_lower():
    app = limits(max_requests=10, max_age_s=0, draw=1.0)  # the lowest draw: 8 requests
    assert [closes(app) for _ in range(8)] == [False] * 7 + [True]


def test_connections_are_counted_apart_and_the_least_recently_used_is_forgotten_when_the_table_is_full():
    app = limits(max_requests=2, max_age_s=0, tracked=2)
    assert not closes(app, 1) and not closes(app, 2)
    assert closes(app, 1)  # its second request; port 2 has had one
    assert not closes(app, 1) and not closes(app, 3)  # 1 and 3 tracked now: port 2 was used longest ago
    assert not closes(app, 2)  # forgotten, so this counts as its first request
    assert len(app.connections) == 2


def test_without_bounds_no_connection_is_closed_and_websockets_are_never_touched():
    assert not any(closes(limits(max_requests=0, max_age_s=0)) for _ in range(5))
    app = limits(max_requests=1, max_age_s=0)
    assert not closes(app, kind="websocket") and not app.connections


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
