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
