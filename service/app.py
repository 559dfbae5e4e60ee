"""The seqserve HTTP service: batched /classify and /forecast over stored recurrent models.

Run it with ``bentoml serve service.app:SeqServe``. This file only maps HTTP to
``service.served.ServedModels`` and errors to 4xx answers; the work happens there and in
``service.inference``. Settings come from ``SEQSERVE_*`` environment variables (``service.config``).
"""

from __future__ import annotations

import gc
import json
import logging

import bentoml
import torch
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.config import Settings
from service.errors import ReadableValidationErrors
from service.inference import InstanceError
from service.metrics import observe_batch
from service.schemas import ClassifyInstance, ClassifyResult, ForecastInstance, ForecastResult
from service.served import RequestError, ServedModels, served_tags
from service.startup import start_up, stop_server_on_failure

# Read at import for the decorator (workers, threads). In `bentoml serve`'s main process this also
# loads every model that would be served, and exits with one line saying why if one cannot be.
SETTINGS = start_up()


class ClientErrorsWithoutTracebacks(logging.Filter):
    """BentoML logs every body that fails pydantic validation at ERROR with a traceback; that is the
    client's mistake, already answered with a 400 that says what is wrong. Keep one WARNING line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if type(error).__name__ == "ValidationError":
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            where = record.getMessage().removeprefix("Exception on ")
            record.msg, record.args = "%s: %s (answered 400)", (where, str(error).splitlines()[0])
            record.exc_info = record.exc_text = None
        return True


logging.getLogger("bentoml._internal.server.http_app").addFilter(ClientErrorsWithoutTracebacks())
# BentoML sets only its own loggers to INFO; ours say which models and device were chosen.
for _name in ("service", "models"):
    logging.getLogger(_name).setLevel(logging.INFO)


def _json(body) -> Response:
    # Answers are already plain lists and dicts; skipping BentoML's per-field pydantic
    # serialisation of the response is a measurable share of a small request's cost.
    return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")


async def list_models(request: Request) -> Response:
    """GET /models: every served model with its task, architecture, features, labels and test metrics."""
    return _json(bentoml.get_current_service().served.describe())


# BentoML APIs answer POST; GET /models is a plain route mounted beside them.
extra_routes = Starlette(routes=[Route("/models", list_models, methods=["GET"])])


@bentoml.service(
    name="seqserve",
    workers=SETTINGS.workers,
    envs=[{"name": "OMP_NUM_THREADS", "value": str(SETTINGS.torch_threads)}],
    traffic={"timeout": 60},
    # An access-log line per request costs ~3% of throughput; SEQSERVE_ACCESS_LOG=1 turns it on.
    logging={"access": {"enabled": SETTINGS.access_log}},
    # A tracing span per request costs about a third of the throughput of a small model; keep
    # tracing for everything else, and turn it back on by editing this list if you need it.
    tracing={"excluded_urls": ["/classify", "/forecast"]},
)
@bentoml.asgi_app(extra_routes, path="/")
class SeqServe:
    """Serves every stored seqserve model (or those in ``SEQSERVE_MODELS``) with adaptive batching."""

    # One BentoModel attribute per served model: `bentoml build` bundles exactly these into the bento.
    vars().update({f"model_{i}": bentoml.models.BentoModel(tag) for i, tag in enumerate(served_tags(SETTINGS.models))})

    def __init__(self) -> None:
        settings = Settings.from_env()
        torch.set_num_threads(settings.torch_threads)
        with stop_server_on_failure():  # in a worker: stop the server, not restart this worker forever
            self.served = ServedModels(settings, on_batch=observe_batch)
        # Everything loaded so far lives for the whole process: keep the garbage collector from
        # walking it again and again (gen-2 passes over torch's objects stalled requests 100-200 ms
        # every ~2 s under load). Each request also leaves a few objects alive until BentoML's
        # timeout timer fires, so young-generation collections are made rarer too.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)

    @bentoml.api(route="/classify")
    async def classify(self, instances: list[ClassifyInstance]) -> list[ClassifyResult]:
        """Classify sequences: one answer per instance, in order."""
        return await self._answer("classify", instances)

    @bentoml.api(route="/forecast")
    async def forecast(self, instances: list[ForecastInstance]) -> list[ForecastResult]:
        """Forecast the next steps of each history, in that history's own scale."""
        return await self._answer("forecast", instances)

    async def _answer(self, task: str, instances: list) -> Response:
        try:
            return _json(await self.served.answer(task, instances))
        except (InstanceError, RequestError) as err:
            return JSONResponse({"error": str(err)}, status_code=400)


# Every 400 names the instance, the field and the problem, also the ones BentoML answers for pydantic.
SeqServe.add_asgi_middleware(ReadableValidationErrors)
