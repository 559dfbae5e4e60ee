"""The Open Inference Protocol's REST routes, beside the JSON API and through the same service.

``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``, ``GET /v2/models/{name}[/versions/{version}]``
and its ``/ready``, and ``POST .../infer``. A model's name is its stored name and its version the stored
version (``name:version``); without a version, the name's served version answers. Every request passes
the same door, guard (API keys, body caps), metrics and batchers as ``/classify`` and ``/forecast``: an
infer request's instances are queued on the model's batcher by :func:`infer_arrays`, the one call these
handlers make into the service, so v2 and JSON instances of one model share forward passes.
"""

from __future__ import annotations

from typing import Any, Callable

import bentoml
import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from models.artifact import LoadedModel
from service.admission import CLIENT_GONE
from service.errors import RetryLater, refusal
from service.inference import TASKS, InstanceError, answer_json
from service.openapi import seqserve_version
from service.served import ServedModels, shown
from service.v2.protocol import HEADER_LENGTH, ModelInterface, ProtocolError, read_infer_request, server_metadata
from service.v2.protocol import write_infer_response


async def infer_arrays(
    served: ServedModels,
    model: LoadedModel,
    values: np.ndarray,
    lengths: np.ndarray,
    client_gone: Callable[[], bool] | None = None,
) -> dict[str, np.ndarray]:
    """``values`` (N, T, F) float32, instance ``i`` its first ``lengths[i]`` steps, answered by ``model``.

    The instances go through the model's batcher with every other request's. Returns, for a classifier,
    ``probabilities`` (N, C) float32, ``label_index`` (N,) int64 and ``label`` (N,) str; for a forecaster,
    ``forecast`` (N, H, K) float32 and, when it has quantiles, ``quantiles`` (N, Q, H, K) float32.
    Raises InstanceError (400) and RetryLater (503) as ``ServedModels.answer`` does.
    """
    task = TASKS[model.card.task]
    arrays = [task.prepare(i, values[i, :n], model) for i, n in enumerate(lengths.tolist())]  # each (T_i, F)
    answers = await served.answer_prepared(model, arrays, client_gone)
    card, n = model.card, len(answers)
    if card.task == "classify":
        return {
            "probabilities": np.array([[a["probabilities"][label] for label in card.labels] for a in answers], np.float32),
            "label_index": np.array([a["label_index"] for a in answers], np.int64),
            "label": np.array([a["label"] for a in answers], dtype=object),
        }
    h, k = card.horizon, len(card.targets)
    outputs = {"forecast": np.array([a["forecast"] for a in answers], np.float32).reshape(n, h, k)}
    if card.quantiles:
        levels = [[a["quantiles"][str(q)] for q in card.quantiles] for a in answers]
        outputs["quantiles"] = np.array(levels, np.float32).reshape(n, len(card.quantiles), h, k)
    return outputs


def interface(model: LoadedModel, served: ServedModels) -> ModelInterface:
    """What the protocol says of ``model``: its inputs, outputs and this server's limits."""
    card = model.card
    name, version = model.tag.split(":")
    return ModelInterface(
        name=name, version=version, task=card.task, features=card.features,
        max_instances=served.limits.max_instances, max_length=served.limits.max_length,
        labels=card.labels, targets=card.targets, lookback=card.lookback or 0, horizon=card.horizon or 0,
        quantiles=card.quantiles,
    )


class UnknownModel(LookupError):
    """The path names a model or version this server does not serve (404)."""


def _served() -> ServedModels:
    return bentoml.get_current_service().served


def _resolve(request: Request) -> tuple[ServedModels, LoadedModel]:
    served = _served()
    name, version = request.path_params["name"], request.path_params.get("version")
    model = served.models.get(f"{name}:{version}") if version else (None if ":" in name else served.by_name.get(name))
    if model is None:
        asked = f"{name} version {version}" if version else name
        raise UnknownModel(f"model: {shown(asked)} is not served; served models: {', '.join(served.models)}")
    return served, model


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(answer_json(body), status_code=status, media_type="application/json", headers=headers)


async def server(request: Request) -> Response:
    """GET /v2: the server's name, version and protocol extensions."""
    return _json(200, server_metadata(seqserve_version(bentoml.get_current_service())))


async def live(request: Request) -> Response:
    """GET /v2/health/live: the server answers at all."""
    return _json(200, {"live": True})


async def ready(request: Request) -> Response:
    """GET /v2/health/ready: every served model is loaded (a worker answers only once they are)."""
    return _json(200, {"ready": bool(_served().models)})


async def model_metadata(request: Request) -> Response:
    """GET /v2/models/{name}[/versions/{version}]: the model's inputs and outputs."""
    try:
        served, model = _resolve(request)
    except UnknownModel as err:
        return _json(404, {"error": str(err)})
    return _json(200, interface(model, served).metadata())


async def model_ready(request: Request) -> Response:
    """GET /v2/models/{name}[/versions/{version}]/ready."""
    try:
        _, model = _resolve(request)
    except UnknownModel as err:
        return _json(404, {"error": str(err)})
    return _json(200, {"name": model.tag.split(":")[0], "ready": True})


async def infer(request: Request) -> Response:
    """POST /v2/models/{name}[/versions/{version}]/infer: JSON or binary tensors in, the outputs asked for out."""
    try:
        served, model = _resolve(request)
        contract = interface(model, served)
        body = await request.body()  # read by the guard already, within its caps
        max_json_bytes = bentoml.get_current_service().settings.max_body_bytes
        asked = read_infer_request(body, request.headers.get(HEADER_LENGTH), contract, max_json_bytes)
        outputs = await infer_arrays(served, model, asked.values, asked.lengths, request.scope.get(CLIENT_GONE))
    except UnknownModel as err:
        return _json(404, {"error": str(err)})
    except ProtocolError as err:
        return _json(err.status, {"error": str(err)})
    except InstanceError as err:
        return _json(400, {"error": f"{err.field}[{err.index}]: {err.problem}"})
    except RetryLater as err:
        status, headers, body = refusal(err, request.scope)
        return _json(status, body, headers)
    answer, headers = write_infer_response(contract, asked, outputs)
    return Response(answer, headers=headers)


def _model_routes(prefix: str) -> list[Route]:
    return [
        Route(prefix, model_metadata, methods=["GET"]),
        Route(f"{prefix}/ready", model_ready, methods=["GET"]),
        Route(f"{prefix}/infer", infer, methods=["POST"]),
    ]


ROUTES = [
    Route("/v2", server, methods=["GET"]),
    Route("/v2/health/live", live, methods=["GET"]),
    Route("/v2/health/ready", ready, methods=["GET"]),
    *_model_routes("/v2/models/{name}"),
    *_model_routes("/v2/models/{name}/versions/{version}"),
]
