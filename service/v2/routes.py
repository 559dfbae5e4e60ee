"""The Open Inference Protocol's REST routes, beside the JSON API and through the same service.

``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``, ``GET /v2/models/{name}[/versions/{version}]``
and its ``/ready`` and ``/config`` (Triton's model configuration), and ``POST .../infer``. A model's name is
its stored name and its version the stored version (``name:version``); without a version, the name's served
version answers. Every request passes the same door, guard (API keys, body caps) and metrics as ``/classify``
and ``/forecast``, and :func:`infer_arrays` hands an infer request's instances to the model's lane
(``service.lanes``), whose batcher admits them and runs them with the JSON API's: one model, one queue, shared
forward passes.

One infer request: :func:`infer` -> ``protocol.read_infer_request`` (the tensors as (N, T, F) and (N,)
arrays) -> :func:`infer_arrays` -> :meth:`ModelLane.infer` -> the model's batcher and forward pass;
then ``protocol.write_infer_response``.
"""

from __future__ import annotations

from typing import Any, Callable

import bentoml
import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

from service.admission import CLIENT
from service.batching import Client
from service.errors import RetryLater, refusal
from service.inference import OutOfRange
from service.inputs import InstanceError
from service.lanes import Lanes, ModelLane, answer_json, shown
from service.openapi import seqserve_version
from service.v2 import HEADER_LENGTH
from service.v2.protocol import ModelInterface, ProtocolError, read_infer_request, server_metadata
from service.v2.protocol import write_infer_response


async def infer_arrays(lane: ModelLane, values: np.ndarray, lengths: np.ndarray, client: Client | None = None) -> dict[str, np.ndarray]:
    """``values`` (N, T, F) float32, instance ``i`` its first ``lengths[i]`` steps, answered by ``lane``'s model.

    Returns, for a classifier, ``probabilities`` (N, C) float32, ``label_index`` (N,) int64 and ``label``
    (N,) str; for a forecaster, ``forecast`` (N, H, K) float32 and, when it has quantiles, ``quantiles``
    (N, Q, H, K) float32. Raises InstanceError (400) and RetryLater (503) as the JSON API's requests do.
    """
    arrays = [lane.validate_array(i, values[i, :n]) for i, n in enumerate(lengths.tolist())]  # each (T_i, F)
    outputs = await lane.infer(arrays, client)
    refused = next((index for index, output in enumerate(outputs) if isinstance(output, OutOfRange)), None)
    if refused is not None:  # inputs far outside what the model learnt overflowed float32
        raise InstanceError(refused, "sequence" if lane.task == "classify" else "history", str(outputs[refused]))
    card = lane.model.card
    if lane.task == "classify":
        probabilities = np.stack(outputs)  # (N, C)
        best = probabilities.argmax(axis=1)
        return {"probabilities": probabilities, "label_index": best.astype(np.int64), "label": np.array(card.labels, dtype=object)[best]}
    forecasts = np.stack(outputs)  # (N, H, K, Q)
    answer = {"forecast": forecasts[..., lane.model.module.point_index]}  # (N, H, K)
    if card.quantiles:
        answer["quantiles"] = np.moveaxis(forecasts, -1, 1)  # (N, Q, H, K)
    return answer


def interface(lane: ModelLane, lanes: Lanes) -> ModelInterface:
    """What the protocol says of ``lane``'s model: its inputs, outputs and this server's limits."""
    card = lane.model.card
    return ModelInterface(
        name=lane.name, version=lane.tag.split(":")[1], task=card.task,
        versions=[loaded.tag.split(":")[1] for loaded in lanes.versions(lane.name)], features=card.features,
        max_instances=lane.limits.max_instances, max_length=lane.limits.max_length,
        labels=card.labels, targets=card.targets, lookback=card.lookback or 0, horizon=card.horizon or 0,
        quantiles=card.quantiles,
    )


class UnknownModel(LookupError):
    """The path names a model or version this server does not serve: 404, or 410 for a version unloaded since newer
    ones of its name came (as the JSON API answers it)."""

    def __init__(self, message: str, status: int = 404):
        super().__init__(message)
        self.status = status


def _lanes() -> Lanes:
    return bentoml.get_current_service().lanes


def _resolve(request: Request) -> tuple[ModelLane, Lanes]:
    lanes = _lanes()
    name, version = request.path_params["name"], request.path_params.get("version")
    lane = lanes.get(f"{name}:{version}") if version else (None if ":" in name else lanes.get(name))
    if lane is None and version and (gone := lanes.why_unloaded(f"{name}:{version}")):
        raise UnknownModel(f"model: {gone}", status=410)
    if lane is None:
        asked = f"{name} version {version}" if version else name
        raise UnknownModel(f"model: {shown(asked)} is not served; served models: {', '.join(served.tag for served in lanes)}")
    return lane, lanes


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
    return _json(200, {"ready": any(_lanes())})


def _about_model(request: Request, answer: Callable[[ModelLane, Lanes], dict[str, Any]]) -> Response:
    """A GET about the model its path names: ``answer(lane, lanes)``, or the 404/410 of a model not served."""
    try:
        lane, lanes = _resolve(request)
    except UnknownModel as err:
        return _json(err.status, {"error": str(err)})
    return _json(200, answer(lane, lanes))


async def model_metadata(request: Request) -> Response:
    """GET /v2/models/{name}[/versions/{version}]: the model's inputs and outputs."""
    return _about_model(request, lambda lane, lanes: interface(lane, lanes).metadata())


async def model_config(request: Request) -> Response:
    """GET /v2/models/{name}[/versions/{version}]/config: the model in Triton's model configuration format."""
    return _about_model(request, lambda lane, lanes: interface(lane, lanes).config())


async def model_ready(request: Request) -> Response:
    """GET /v2/models/{name}[/versions/{version}]/ready."""
    return _about_model(request, lambda lane, _: {"name": lane.name, "ready": True})


async def infer(request: Request) -> Response:
    """POST /v2/models/{name}[/versions/{version}]/infer: JSON or binary tensors in, the outputs asked for out."""
    try:
        lane, lanes = _resolve(request)
        contract = interface(lane, lanes)
        body = await request.body()  # read by the guard already, within its caps
        max_json_bytes = bentoml.get_current_service().settings.max_body_bytes
        asked = read_infer_request(body, request.headers.get(HEADER_LENGTH), contract, max_json_bytes)
        outputs = await infer_arrays(lane, asked.values, asked.lengths, request.scope.get(CLIENT))
    except UnknownModel as err:
        return _json(err.status, {"error": str(err)})
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
        Route(f"{prefix}/config", model_config, methods=["GET"]),
        Route(f"{prefix}/infer", infer, methods=["POST"]),
    ]


PROTOCOL_ROUTES = [
    Route("/v2", server, methods=["GET"]),
    Route("/v2/health/live", live, methods=["GET"]),
    Route("/v2/health/ready", ready, methods=["GET"]),
    *_model_routes("/v2/models/{name}"),
    *_model_routes("/v2/models/{name}/versions/{version}"),
]


async def not_found(request: Request) -> Response:
    """Any other /v2 path, or a route asked with a method it does not take: 404 or 405, as JSON like every v2 error."""
    allowed = sorted({method for route in PROTOCOL_ROUTES if route.matches(request.scope)[0] is Match.PARTIAL for method in route.methods})
    path = shown(request.url.path)
    if allowed:
        return _json(405, {"error": f"method: {request.method} is not allowed on {path}; send {' or '.join(allowed)}"},
                     {"allow": ", ".join(allowed)})
    return _json(404, {"error": f"path: {path} is not a route of the Open Inference Protocol; its routes are /v2, /v2/health/live, /v2/health/ready and /v2/models/<name>[/versions/<version>][/ready|/config|/infer]; GET /models lists the names"})


# Last: it answers whatever the routes above do not (HEAD comes with GET).
ROUTES = [*PROTOCOL_ROUTES, Route("/v2{rest:path}", not_found, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])]
