"""Two plain ASGI endpoints on uvicorn, no BentoML, no batching:

* ``POST /parse-only`` parses and validates the body with pydantic, then returns a constant: the HTTP+JSON
  ceiling of a Python server on this machine;
* ``POST /classify`` runs the model once per request: what a hand-written FastAPI-style wrapper does.

    BENCH_MODEL=name:version uvicorn loadtests.baselines.plain_http:app --host 127.0.0.1 --port 3100
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from models.artifact import load_artifact
from models.padding import pad_sequences


class Instance(BaseModel):
    sequence: list[list[float]]


class Body(BaseModel):
    instances: list[Instance]


torch.set_num_threads(1)
MODEL = load_artifact(os.environ["BENCH_MODEL"])
CONSTANT = json.dumps([{"label": "0"}])


async def parse_only(request: Request) -> Response:
    Body.model_validate_json(await request.body())
    return Response(CONSTANT, media_type="application/json")


async def classify(request: Request) -> Response:
    body = Body.model_validate_json(await request.body())
    x, lengths = pad_sequences([np.asarray(i.sequence, dtype=np.float32) for i in body.instances])
    with torch.inference_mode():
        probabilities = torch.softmax(MODEL.module(x, lengths), dim=-1).numpy()
    labels = MODEL.card.labels
    answer = [{"label": labels[int(p.argmax())], "probabilities": dict(zip(labels, p.tolist()))} for p in probabilities]
    return Response(json.dumps(answer), media_type="application/json")


async def healthz(request: Request) -> Response:
    return Response("ok")


app = Starlette(
    routes=[
        Route("/parse-only", parse_only, methods=["POST"]),
        Route("/classify", classify, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
)
