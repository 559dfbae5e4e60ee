"""A WebSocket ceiling: uvicorn's wsproto WebSockets (what seqserve's /stream runs on) answering every step
message with a constant after parsing it, no model, no state. What one stream message costs a Python
server on this machine before any work is done; the streaming table sets seqserve's WebSocket rows beside it.

    uvicorn loadtests.baselines.websocket_echo:app --ws wsproto --host 127.0.0.1 --port 3100
"""

from __future__ import annotations

import json
import sys

from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect


class Message(BaseModel):
    steps: list[list[float]]


HELLO = json.dumps({"model": "ceiling", "task": "classify"})
CONSTANT = json.dumps({"label": "0", "seen": 1})


async def stream(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text(HELLO)
    try:
        while True:
            Message.model_validate_json(await websocket.receive_text())
            await websocket.send_text(CONSTANT)
    except WebSocketDisconnect:
        pass


async def healthz(request: Request) -> Response:
    return Response("ok")


app = Starlette(routes=[WebSocketRoute("/stream", stream), Route("/healthz", healthz)])


def serve_command(port: int) -> list[str]:
    """The command that serves this ceiling on 127.0.0.1:``port`` (the bench and its test run the same one)."""
    return [sys.executable, "-m", "uvicorn", "loadtests.baselines.websocket_echo:app", "--ws", "wsproto", "--no-access-log",
            "--host", "127.0.0.1", "--port", str(port)]
