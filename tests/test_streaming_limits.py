"""WebSocket streams with settings of their own: the idle timeout, and API keys on the handshake."""

import pytest
from starlette.testclient import WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect

from tests import tiny_models
from tests.service_client import in_process


@pytest.fixture(scope="module")
def tag():
    return tiny_models.store_streaming_classifier("idle-gru", "gru", 2)


def test_idle_streams_are_closed_and_api_keys_guard_the_handshake(tag):
    env = {"SEQSERVE_MODELS": tag, "SEQSERVE_STREAM_IDLE_S": "0.2", "SEQSERVE_API_KEYS": "secret-key"}
    with in_process(env) as client:
        with pytest.raises(WebSocketDenialResponse) as denied:
            with client.websocket_connect(f"/stream?model={tag}"):
                pass
        assert denied.value.status_code == 401
        with client.websocket_connect(f"/stream?model={tag}", headers={"authorization": "Bearer secret-key"}) as ws:
            ws.receive_json()
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()  # nothing sent: closed after 0.2 s
        assert closed.value.code == 4408


def test_a_browser_sends_the_api_key_as_a_subprotocol_and_the_stream_selects_seqserve(tag):
    """A browser's WebSocket cannot send Authorization: it offers seqserve and seqserve.bearer.<key>; the answer
    selects seqserve (never the key), and a browser fails a handshake that selects none of its offers."""
    env = {"SEQSERVE_MODELS": tag, "SEQSERVE_API_KEYS": "k-one,secret-key"}
    with in_process(env) as client:
        with client.websocket_connect(f"/stream?model={tag}", subprotocols=["seqserve", "seqserve.bearer.secret-key"]) as ws:
            assert ws.accepted_subprotocol == "seqserve"
            assert ws.receive_json()["model"] == tag
            ws.send_json({"steps": [[0.5, 1.0, -1.0]] * 3})
            assert set(ws.receive_json()["probabilities"]) == {"walk", "run", "sit", "jump"}
        for offered, problem in [
            (["seqserve"], "authorization: missing; send Authorization: Bearer <API key>, or offer the subprotocols "
                           "seqserve and seqserve.bearer.<API key>"),
            (["seqserve", "seqserve.bearer.wrong"], "authorization: the API key is not valid"),
            (["seqserve", "seqserve.bearer."], "authorization: missing; send Authorization: Bearer <API key>"),
        ]:
            with pytest.raises(WebSocketDenialResponse) as denied:
                with client.websocket_connect(f"/stream?model={tag}", subprotocols=offered):
                    pass
            assert denied.value.status_code == 401 and denied.value.json()["error"].startswith(problem), offered
        # With the header, a client that offers no subprotocol is answered with none, as before.
        with client.websocket_connect(f"/stream?model={tag}", headers={"authorization": "Bearer k-one"}) as ws:
            assert ws.accepted_subprotocol is None
            assert ws.receive_json()["model"] == tag


def test_the_real_servers_stream_lane_checks_keys_and_closes_idle_streams_and_on_shutdown(tag):
    """Through `bentoml serve`, /stream skips BentoML's app (service.framework): the guard, the message
    size cap and the lifecycle still hold."""
    import json

    from websocket import WebSocketBadStatusException, create_connection

    from loadtests.server import running_server

    env = {"SEQSERVE_MODELS": tag, "SEQSERVE_STREAM_IDLE_S": "0.5", "SEQSERVE_API_KEYS": "secret-key", "SEQSERVE_MAX_BODY_MB": "0.05"}
    key = "Authorization: Bearer secret-key"
    with running_server(env) as url:
        ws_url = f"{url.replace('http', 'ws', 1)}/stream?model={tag}"
        with pytest.raises(WebSocketBadStatusException) as denied:
            create_connection(ws_url, timeout=10)
        assert denied.value.status_code == 401
        # A browser's way: the key as a subprotocol, through uvicorn's own handshake.
        browser = create_connection(ws_url, timeout=10, subprotocols=["seqserve", "seqserve.bearer.secret-key"])
        try:
            assert browser.getsubprotocol() == "seqserve"
            assert json.loads(browser.recv())["model"] == tag
        finally:
            browser.close()

        # A message over the body cap (50 KiB here) closes the stream as it arrives, before it is buffered
        # whole; per-message deflate, which would let a small upload inflate to the cap, is not agreed to.
        big = create_connection(ws_url, timeout=10, header=[key, "Sec-WebSocket-Extensions: permessage-deflate"])
        try:
            assert "sec-websocket-extensions" not in {name.lower() for name in big.getheaders()}
            big.recv()  # hello
            # Just over the cap, in one write that loopback delivers as one segment: the server reads all of it
            # before it closes. (Bytes it left unread would make the kernel reset the connection, and the
            # client could lose the close frame.)
            big.send(json.dumps({"steps": [[0.5, 1.0, -1.0]]}) + " " * 53_000)
            opcode, frame = big.recv_data_frame(control_frame=True)
            assert opcode == 0x8 and int.from_bytes(frame.data[:2], "big") == 1009
        finally:
            big.close()

        ws = create_connection(ws_url, timeout=10, header=[key])
        try:
            assert json.loads(ws.recv())["model"] == tag
            ws.send(json.dumps({"steps": [[0.5, 1.0, -1.0]] * 3}))
            assert set(json.loads(ws.recv())["probabilities"]) == {"walk", "run", "sit", "jump"}
            opcode, frame = ws.recv_data_frame(control_frame=True)  # nothing sent for 0.5 s: the server closes
            assert opcode == 0x8 and int.from_bytes(frame.data[:2], "big") == 4408
        finally:
            ws.close()
        open_at_shutdown = create_connection(ws_url, timeout=10, header=[key])
        open_at_shutdown.recv()  # hello
    # The server was stopped (SIGTERM) with the stream open: it closed it cleanly, "service restart".
    opcode, frame = open_at_shutdown.recv_data_frame(control_frame=True)
    assert opcode == 0x8 and int.from_bytes(frame.data[:2], "big") == 1012
    open_at_shutdown.close()


def test_uvicorn_hands_stream_websockets_to_the_sessions_and_the_rest_to_the_app(monkeypatch):
    """uvicorn's WebSocket protocol hands /stream to the sessions (service.framework): what `bentoml serve` relies on,
    without a server."""
    import asyncio

    from uvicorn import config as uvicorn_config

    from service.config import Settings
    from service.framework import connections

    monkeypatch.setitem(uvicorn_config.HTTP_PROTOCOLS, "auto", uvicorn_config.HTTP_PROTOCOLS["auto"])
    monkeypatch.setitem(uvicorn_config.WS_PROTOCOLS, "auto", uvicorn_config.WS_PROTOCOLS["auto"])
    monkeypatch.setattr(connections.HeaderTimeoutProtocol, "door", None)
    monkeypatch.setattr(connections.StreamSocketProtocol, "streams", None)
    connections.install_protocols(Settings.from_env())
    assert uvicorn_config.WS_PROTOCOLS["auto"] == "service.framework.connections:StreamSocketProtocol"

    served = []

    async def app(scope, receive, send):
        served.append(("app", scope["path"]))

    async def streams(scope, receive, send):
        served.append(("streams", scope["path"]))

    route = connections.StreamRoute(app)

    def visit(path: str, root_path: str = "") -> None:
        asyncio.run(route({"type": "websocket", "path": path, "root_path": root_path}, None, None))

    visit("/stream")  # before the service registers its sessions: the app's own route
    connections.serve_streams(streams)
    visit("/stream")
    visit("/api/stream", root_path="/api")
    visit("/other")
    assert served == [("app", "/stream"), ("streams", "/stream"), ("streams", "/api/stream"), ("app", "/other")]


def test_streams_the_server_refuses_or_closes_are_counted_by_both_and_the_bench_goes_on(tag):
    """Past SEQSERVE_STREAM_MAX_OPEN a stream is closed with 1013, after SEQSERVE_STREAM_IDLE_S silent with 4408:
    `/metrics` counts both by reason, and `loadtests bench`'s WebSocket cell counts them as lost streams and
    measures the others, where it crashed on the first closed transport."""
    import asyncio

    import httpx

    from loadtests.server import running_server
    from loadtests.stream_bench import BenchModel, WebSocketWay, streaming_markdown

    async def cell(url: str) -> dict:
        way = WebSocketWay(url, BenchModel(tag, 3), history=8, streams=3)
        try:
            await way.open()  # two streams open, the third is refused
            await way.window(0.3)
            await asyncio.sleep(4.5)  # silent past the idle limit: the server closes both
            await way.window(0.3)
        finally:
            await way.close()
        return way.tally.row()

    env = {"SEQSERVE_MODELS": tag, "SEQSERVE_STREAM_MAX_OPEN": "2", "SEQSERVE_STREAM_IDLE_S": "2"}
    with running_server(env) as url:
        row = asyncio.run(cell(url))
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert row["steps"] > 0 and row["windows"] == 2 and row["lost_streams"] == 3, row
    reasons = sorted(why.split(":")[0] for why, n in row["lost_because"].items() for _ in range(n))
    assert reasons == ["stream closed with 1013", "stream closed with 4408", "stream closed with 4408"], row
    assert 'seqserve_stream_closes_total{reason="too_many_open"} 1.0' in metrics
    assert 'seqserve_stream_closes_total{reason="idle"} 2.0' in metrics
    assert "websocket, history 8, 3 streams: 3 streams refused or closed by the server" in streaming_markdown([row], 0.6)


def test_a_client_that_answers_pings_only_while_reading_keeps_its_stream(monkeypatch):
    """uvicorn pings every stream; aiohttp and websocket-client (the README's client) answer a ping only when the
    application next reads. A device silent longer than the ping interval and timeout (20 s + 20 s by default)
    keeps its stream up to SEQSERVE_STREAM_IDLE_S: the server goes on pinging and closes nothing for a late pong."""
    import asyncio

    import aiohttp
    import uvicorn

    from service.framework import connections

    monkeypatch.setattr(connections.StreamSocketProtocol, "streams", None)

    async def echo(scope, receive, send):
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": message["text"]})

    async def silent_client() -> tuple[list, str]:
        config = uvicorn.Config(
            echo, host="127.0.0.1", port=0, ws=connections.StreamSocketProtocol, ws_ping_interval=0.1,
            ws_ping_timeout=0.1, lifespan="off", log_level="warning",
        )
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            async with aiohttp.ClientSession() as session:
                # autoping=False: the pings come to the application, which reads nothing for 6 ping intervals
                async with session.ws_connect(f"ws://127.0.0.1:{port}/other", autoping=False) as ws:
                    await asyncio.sleep(0.6)
                    await ws.send_str("reading")
                    kinds = []
                    while (message := await ws.receive(timeout=5)).type == aiohttp.WSMsgType.PING:
                        kinds.append(message.type)
                    return kinds, message.data
        finally:
            server.should_exit = True
            await serving

    pings, answer = asyncio.run(silent_client())
    assert answer == "reading"
    assert len(pings) >= 3, pings  # the server went on pinging the silent client
