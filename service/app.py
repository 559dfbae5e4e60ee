"""The seqserve HTTP service: batched /classify and /forecast over stored recurrent models.

Run it with ``bentoml serve service.app:SeqServe``. This file only maps HTTP to the served models'
lanes (``service.lanes``) and errors to 4xx/503 answers; the work happens there. Every request first
passes ``service.guard.RequestGuard`` (body size, content type, API keys). Settings come from
``SEQSERVE_*`` environment variables (``service.config``), read once, here, at import. What seqserve
needs of BentoML and uvicorn beyond their public APIs is in ``service.framework``.
"""

from __future__ import annotations

import gc
import logging
import os
from typing import Awaitable

import bentoml
import torch
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute

from service import framework, workers
from service.admission import CLIENT
from service.errors import ReadableValidationErrors, RetryLater, refusal
from service.guard import RequestGuard
from service.inputs import InstanceError
from service.lanes import RequestError, VersionGone, answer_json, load_lanes, served_tags
from service.openapi import SeqServeService
from service.reload import StoreWatcher, watched
from service.schemas import (
    CLASSIFY_INSTANCES,
    CLASSIFY_REQUEST_MODEL,
    FORECAST_INSTANCES,
    FORECAST_REQUEST_MODEL,
    STREAM_CLASSIFY_INSTANCES,
    STREAM_FORECAST_INSTANCES,
    ClassifyAnswers,
    ClassifyInstance,
    ForecastAnswers,
    ForecastInstance,
    StreamClassifyAnswers,
    StreamClassifyInstance,
    StreamForecastAnswers,
    StreamForecastInstance,
)
from service.streams import StreamSessions
from service.startup import start_up, stop_server_on_failure
from service.v2 import routes as open_inference

log = logging.getLogger(__name__)

ONEDNN_PRIMITIVE_CACHE_CAPACITY = 32  # see SeqServe.__init__

# Read once, at import: the decorator, the middlewares and the workers use these. In `bentoml serve`'s
# main process this also loads every model that would be served, and exits with one line saying why
# if one cannot be (service.startup).
SETTINGS = start_up()
SERVED_TAGS = served_tags(SETTINGS.models)  # bundled by `bentoml build`, loaded by each worker
framework.install(SETTINGS)
# BentoML sets only its own loggers to INFO; ours say which models and device were chosen.
for _name in ("service", "models"):
    logging.getLogger(_name).setLevel(logging.INFO)


def _json(body) -> Response:
    # Skipping BentoML's per-field pydantic serialisation of the response is a measurable share of a small request.
    return Response(answer_json(body), media_type="application/json")


async def list_models(request: Request) -> Response:
    """GET /models: every served model with its task, architecture, features, labels, metrics and warnings."""
    return _json([info.model_dump() for info in bentoml.get_current_service().lanes.describe()])


class StreamSocket:
    """The /stream WebSocket as an ASGI app (service.streams). uvicorn hands real connections to the sessions
    directly (service.framework); this route serves the ones that come through the app (in-process clients)."""

    async def __call__(self, scope, receive, send) -> None:
        await bentoml.get_current_service().sessions.asgi(scope, receive, send)


# BentoML APIs answer POST; GET /models, the /stream WebSocket and the Open Inference Protocol's /v2 routes
# (service.v2.routes) are plain routes mounted beside them.
extra_routes = Starlette(routes=[
    Route("/models", list_models, methods=["GET"]), WebSocketRoute("/stream", StreamSocket()), *open_inference.ROUTES,
])


@bentoml.service(
    name="seqserve",
    workers=SETTINGS.workers,
    envs=[{"name": "OMP_NUM_THREADS", "value": str(SETTINGS.torch_threads)}],
    # BentoML's own timeout answers 504 after this; ours (503 with Retry-After) comes first.
    traffic={"timeout": SETTINGS.request_timeout_s + 5},
    # An access-log line per request costs ~3% of throughput; SEQSERVE_ACCESS_LOG=1 turns it on.
    logging={"access": {"enabled": SETTINGS.access_log}},
    # A tracing span per request costs about a third of the throughput of a small model; keep
    # tracing for everything else, and turn it back on by editing this list if you need it.
    # (The /stream WebSocket too: a span per message cost ~5% of a stream's step.)
    tracing={"excluded_urls": ["/classify", "/forecast", "/stream/classify", "/stream/forecast", "/stream", "/v2/models"]},
    # The API page says seqserve, its version, GET /models and the errors we answer (service/openapi.py).
    service_class=SeqServeService,
)
@bentoml.asgi_app(extra_routes, path="/")
class SeqServe:
    """Serves every stored seqserve model (or those in ``SEQSERVE_MODELS``) with adaptive batching."""

    settings = SETTINGS  # what the API page describes (service.openapi.SeqServeService)
    # One BentoModel attribute per served model: `bentoml build` bundles exactly these into the bento.
    vars().update({f"model_{i}": bentoml.models.BentoModel(tag) for i, tag in enumerate(SERVED_TAGS)})

    def __init__(self) -> None:
        torch.set_num_threads(SETTINGS.torch_threads)
        # oneDNN caches its primitives (about six per input shape, each with its own buffers) up to 1,024 by
        # default, and requests of many shapes grew a worker without bound in sight: one minute of random batches
        # up to 64 x 4,096 steps took the forward passes alone 253 -> 1,064 MiB and climbing, where 32 hold them
        # near 590. The cost: a batch of a shape not cached builds its primitives again, ~25% fewer instances/s
        # when batch sizes vary at 24 steps (a fixed 64 x 64 x 8 batch is as fast). Read at the first forward
        # pass, so set here, before any; an operator's own value stands.
        os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_PRIMITIVE_CACHE_CAPACITY))
        with stop_server_on_failure():  # in a worker: stop the server, not restart this worker forever
            self.lanes = load_lanes(SETTINGS, SERVED_TAGS)
        self.sessions = StreamSessions(self.lanes, SETTINGS)
        # uvicorn hands /stream WebSockets to the sessions directly (past BentoML's per-message layers);
        # the route below serves in-process clients (tests), the same sessions either way.
        framework.serve_streams(RequestGuard(self.sessions.asgi, SETTINGS))
        # Everything loaded so far lives for the whole process: keep the garbage collector from
        # walking it again and again (gen-2 passes over torch's objects stalled requests 100-200 ms
        # every ~2 s under load). A request leaves no reference cycle behind (service.framework.connections), so
        # what a pass walks is mostly live: 10,000 new objects between young passes keeps each one near
        # 10 ms (32 users on one worker: 2 in 70 s; `python -m loadtests soak --gc-pauses`), where 50,000
        # made passes of 30-80 ms and a middle-generation pass, every 50th, walked all their survivors.
        gc.collect()
        gc.freeze()
        gc.set_threshold(10_000, 10, 10)

    @bentoml.on_startup
    def watch_store(self) -> None:
        """Serve new versions of the served names as they are stored, without a restart (service.reload)."""
        self.watcher = StoreWatcher(self.lanes, SETTINGS, *watched(SETTINGS.models, self.lanes))
        try:
            self.watcher.retire_older_versions()
        except Exception:  # a store being written to (a half-copied version): the 410s are a courtesy, not a need
            log.exception("could not read the store's older versions; they are answered as unknown models")
        self.watcher.start()

    @bentoml.on_shutdown
    def stopping(self) -> None:
        self.watcher.stop()
        workers.forget_this_worker()  # a graceful stop, not a death (service.workers)

    # The handlers return the finished JSON (see _json); output_spec says what it holds, for the API page.
    @bentoml.api(route="/classify", output_spec=ClassifyAnswers)
    async def classify(self, ctx: bentoml.Context, instances: list[ClassifyInstance] = CLASSIFY_INSTANCES,
                       model: str | None = CLASSIFY_REQUEST_MODEL) -> Response:
        """Classify sequences: one answer per instance, in order."""
        return await _answered(ctx, self.lanes.classify(instances, ctx.request.scope.get(CLIENT), model))

    @bentoml.api(route="/forecast", output_spec=ForecastAnswers)
    async def forecast(self, ctx: bentoml.Context, instances: list[ForecastInstance] = FORECAST_INSTANCES,
                       model: str | None = FORECAST_REQUEST_MODEL) -> Response:
        """Forecast the next steps of each history, in that history's own scale."""
        return await _answered(ctx, self.lanes.forecast(instances, ctx.request.scope.get(CLIENT), model))

    @bentoml.api(route="/stream/classify", output_spec=StreamClassifyAnswers)
    async def stream_classify(self, ctx: bentoml.Context, instances: list[StreamClassifyInstance] = STREAM_CLASSIFY_INSTANCES,
                              model: str | None = CLASSIFY_REQUEST_MODEL) -> Response:
        """Advance classification streams by their new steps: each answer equals /classify on the stream so far
        and carries the state token for the next steps."""
        return await _answered(ctx, self.lanes.step_streams("classify", instances, ctx.request.scope.get(CLIENT), model))

    @bentoml.api(route="/stream/forecast", output_spec=StreamForecastAnswers)
    async def stream_forecast(self, ctx: bentoml.Context, instances: list[StreamForecastInstance] = STREAM_FORECAST_INSTANCES,
                              model: str | None = FORECAST_REQUEST_MODEL) -> Response:
        """Advance forecasting streams by their new values: each forecast equals /forecast on the history so far
        and carries the state token for the next values."""
        return await _answered(ctx, self.lanes.step_streams("forecast", instances, ctx.request.scope.get(CLIENT), model))


async def _answered(ctx: bentoml.Context, answers: Awaitable[str]) -> Response:
    """A request's ``answers`` (a call to the lanes, their JSON text); its errors as 400, an overload as 503 (service.errors)."""
    try:
        return Response(await answers, media_type="application/json")
    except VersionGone as err:  # a model version unloaded since: the client starts again on a served one
        return _answer_with(ctx, 410, {"error": str(err)})
    except (InstanceError, RequestError) as err:
        return _answer_with(ctx, 400, {"error": str(err)})
    except RetryLater as err:  # the model's queue is full, the deadline passed or the client hung up
        status, headers, body = refusal(err, ctx.request.scope)
        return _answer_with(ctx, status, body, headers)


def _answer_with(ctx: bentoml.Context, status: int, body: dict, headers: dict[str, str] | None = None) -> Response:
    # With a Context parameter BentoML answers with ctx.response's status and headers, not the Response's.
    ctx.response.status_code = status
    ctx.response.metadata.update(headers or {})
    return _json(body)


# Outermost first. (Keep-alive connections are bounded by the worker's protocol: service.connection_limits.)
# CORS answers browsers' preflights before the guard asks them for a key.
if SETTINGS.cors_origins:
    SeqServe.add_asgi_middleware(
        CORSMiddleware, allow_origins=list(SETTINGS.cors_origins), allow_methods=["GET", "POST"],
        allow_headers=["authorization", "content-type"],
    )
SeqServe.add_asgi_middleware(RequestGuard, settings=SETTINGS)
# Every 400 names the instance, the field and the problem, also the ones BentoML answers for pydantic.
SeqServe.add_asgi_middleware(ReadableValidationErrors)
