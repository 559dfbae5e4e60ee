"""The API page (``/docs.json``, rendered at ``/``) as seqserve's own: its name, version, routes and errors.

BentoML builds the OpenAPI spec from the ``@bentoml.api`` methods (``_bentoml_sdk.service.openapi``): the
request and answer schemas come from ``service.schemas`` and are right. What it cannot know, ``describe``
corrects in one pass over BentoML's spec:

* title, version and description: BentoML writes its own README, its contact and ``"version": "None"``;
* ``GET /models``, a Starlette route mounted beside the APIs (BentoML documents only mounted FastAPI apps);
* ``POST /v2/models/{name}[/versions/{version}]/infer``, the Open Inference Protocol's infer route, with
  its JSON as ``service.v2.schemas`` describes it and its binary form, and the protocol's ``GET`` routes
  (health, server and model metadata, Triton's model configuration);
* the errors: BentoML lists 404 and 500 in its own shapes and none of the answers seqserve gives
  (400 from our checks, 401/408/413/415 from ``service.guard``, 503 with ``Retry-After`` when overloaded);
* the OpenAPI version: pydantic writes JSON Schema 2020-12 (``"type": "null"``, ``examples``), which is
  OpenAPI 3.1, not the 3.0.2 BentoML announces.

``SeqServeService`` applies it through ``@bentoml.service(service_class=...)``, the hook BentoML offers
for a service class of one's own, so the live page and the spec ``bentoml build`` stores agree.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any, NamedTuple

import attrs
import bentoml
from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

from service.config import Settings
from service.framework import Info, OpenAPISpecification, PathItem
from service.schemas import ModelInfo
from service.v2.schemas import INFER_SCHEMAS

REF = "#/components/schemas/{model}"


class ErrorAnswer(BaseModel):
    """Every error answer seqserve gives."""

    error: str = Field(
        description="What is wrong, in one line: the instance, the field and the problem when there is one; "
        "at most a few problems, then how many more.",
        examples=["instances[0].sequence: step 0 has 3 features; italypower-gru expects 1"],
    )
    detail: list[dict[str, Any]] | None = Field(
        default=None,
        description="Bodies that fail validation only: the first few problems as pydantic reports them "
        "(loc, msg, type), for programs that read them.",
        examples=[[{"type": "finite_number", "loc": ["instances", 0, "sequence", 0, 0], "msg": "Input should be a finite number"}]],
    )
    retry_after_s: int | None = Field(
        default=None,
        description="503 only: whole seconds to wait before retrying, at least 1, the same as the `Retry-After` header.",
        examples=[1],
    )
    retry_after_ms: int | None = Field(
        default=None,
        description="503 only: the estimated wait in milliseconds, for clients that can retry sooner than a second.",
        examples=[140],
    )


def seqserve_version(svc: bentoml.Service | None = None) -> str:
    """The installed package's version; a bento carries the code but not the package, so there the bento's."""
    try:
        return importlib.metadata.version("seqserve")
    except importlib.metadata.PackageNotFoundError:
        if svc is not None and svc.bento is not None and svc.bento.tag.version:
            return f"bento {svc.bento.tag.version}"
        return "unknown"


def page_description(settings: Settings) -> str:
    keys = (
        "This server needs an API key on every path but "
        + ", ".join(settings.open_paths)
        + ": send `Authorization: Bearer <key>` (401 otherwise)."
        if settings.api_keys
        else "This server needs no API key (set `SEQSERVE_API_KEYS` to require one)."
    )
    return f"""\
Recurrent sequence classifiers and forecasters (RNN, GRU, LSTM) trained by seqserve, served with batching.

* `GET /models`: the served models, with each one's task, input features, labels or lookback and horizon,
  test metrics and warnings. Read it first: it says what each model accepts.
* `POST /classify`: a label and class probabilities per sequence.
* `POST /forecast`: the next steps of each history, in that history's own scale, with quantiles when the
  model has them.
* `POST /stream/classify`, `POST /stream/forecast`: streaming with a state token. Send only a stream's new
  `steps` and the `state` from its previous answer (none to start); the answer equals `/classify` or
  `/forecast` on everything the stream has sent so far, and carries the next `state`. The server keeps
  nothing, so any worker or replica can continue a stream. Tokens are signed and bound to the model
  version that made it (another model's, an altered or a truncated token gets a 400 that says so); they
  are not encrypted. Only causal models stream: `GET /models` says `streamable`, and why not.
* WebSocket `/stream?model=<name>` (or `?task=classify|forecast`): one connection is one stream whose state
  stays in the server. The server sends `{{"model", "task", "features", "max_steps", "idle_timeout_s"}}`,
  then answers every message `{{"steps": [...], "every_step": false}}` as `/stream/<task>` does, without a
  token; bad input gets `{{"error": ...}}` and the stream goes on. At most {settings.stream_max_open} open
  streams per worker (close code 1013 past it), closed after {settings.stream_idle_s:g} s without a message
  (4408); an unknown or non-streamable model closes with 4400. With API keys, a browser (which cannot
  send `Authorization`) offers the subprotocols `seqserve` and `seqserve.bearer.<key>`; the answer selects
  `seqserve`. Not listed below: OpenAPI has no WebSockets.
* The Open Inference Protocol (KServe v2, Triton's REST API) with binary tensors: `GET /v2`,
  `/v2/health/live`, `/v2/health/ready`, `GET /v2/models/<name>[/versions/<version>]` (inputs and outputs)
  and its `/ready` and `/config` (Triton's model configuration, for `perf_analyzer`), `POST .../infer`. Same models, batchers and limits; binary bodies up to
  {settings.max_binary_body_bytes / 2**20:g} MiB. The infer route is listed below; the others follow the protocol's
  own specification.

A request is `{{"instances": [...]}}`, answered in order. An instance may name its model (`name`, the newest
served version, or `name:version`); a request's own `"model"` answers the instances that name none; without
either, the endpoint's default model answers. Concurrent
requests are merged into shared forward passes.

Limits of this server: {settings.max_instances} instances per request, {settings.max_length} steps per
sequence or history, {settings.stream_max_steps} new steps per stream instance or message, {settings.max_body_bytes / 2**20:g} MiB per body, an answer within
{settings.request_timeout_s:g} s. {keys}

Every error is `{{"error": "..."}}`: 400 names the instance, the field and the problem (or the request's own field, such as its `model`); 413 a body over the
limit; 410 a model version (named, or the maker of a state token) unloaded since a newer one of its name was
loaded; 415 a content type other than `application/json`; 408 a body that arrived too slowly; 503 (with
`Retry-After` in whole seconds, and `retry_after_s` and `retry_after_ms` in the body) an overloaded server or
a missed deadline: retry later."""


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _error(description: str, retry_after: bool = False) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, "content": _json({"$ref": REF.format(model="ErrorAnswer")})}
    if retry_after:
        answer["headers"] = {
            "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}
        }
    return answer


UNAUTHORIZED = _error("No valid API key: only when the server has keys (`SEQSERVE_API_KEYS`).")
NOT_SERVED = _error("No such model or version is served.")
API_ERRORS = {
    "400": _error("The request cannot be answered as sent: the error names the instance, the field and the problem "
                  "(or the request's own field, such as its model)."),
    "401": UNAUTHORIZED,
    "408": _error("The body did not arrive within the server's body timeout."),
    "410": _error("A model version this server served and has unloaded since newer versions of its name were loaded: "
                  "named as name:version, or the maker of a stream's state token. Name the model alone, or start a new "
                  "stream without a state."),
    "413": _error("The body is over the server's size limit (`SEQSERVE_MAX_BODY_MB`): send fewer instances per request."),
    "415": _error("The content type is not `application/json`."),
    "503": _error("Overloaded, or the answer missed the request deadline: retry after `Retry-After` seconds "
                  "(the body's `retry_after_ms` gives the estimated wait in milliseconds).", retry_after=True),
}

MODELS_PATH = {
    "get": {
        "tags": ["Service APIs"],
        "summary": "The served models",
        "description": "Every served model: task, architecture, input features, labels (classifiers), lookback, "
        "horizon and quantiles (forecasters), the longest input accepted, test metrics and training warnings.",
        "operationId": "seqserve__models",
        "responses": {
            "200": {
                "description": "One entry per served model.",
                "content": _json({"type": "array", "items": {"$ref": REF.format(model="ModelInfo")}}),
            },
            "401": UNAUTHORIZED,
        },
    }
}


BINARY = {"type": "string", "format": "binary"}
# What a stored model's name and version are made of (BentoML's tags: bentoml._internal.tag.tag_fmt).
TAG_PART = {"type": "string", "pattern": "^[a-z0-9]([-._a-z0-9]*[a-z0-9])?$", "maxLength": 63}
HEADER_LENGTH = {
    "description": "With binary tensors: the length in bytes of the JSON header that starts the body; the tensors' "
    "bytes follow it.",
    "schema": {"type": "integer", "minimum": 0},
}


def infer_operation(with_version: bool) -> dict[str, Any]:
    """``POST /v2/models/{name}[/versions/{version}]/infer``: JSON, or a JSON header and binary tensors."""
    path_parameters = [("name", "A served model's name.")] + ([("version", "Its stored version.")] if with_version else [])
    return {
        "tags": ["Open Inference Protocol"],
        "summary": "Infer (Open Inference Protocol)",
        "description": "The model's outputs for a batch of sequences or histories, as tensors: the JSON below alone, "
        "or its JSON followed by binary tensors (Triton's binary tensor data extension) with the JSON's length in "
        "`Inference-Header-Content-Length`. `GET /v2/models/<name>` lists the model's inputs and outputs.",
        "operationId": "seqserve__v2_infer" + ("_version" if with_version else ""),
        "parameters": [
            *({"name": name, "in": "path", "required": True, "description": text, "schema": TAG_PART}
              for name, text in path_parameters),
            {"name": "Inference-Header-Content-Length", "in": "header", "required": False, **HEADER_LENGTH},
        ],
        "requestBody": {
            "required": True,
            "content": {
                **_json({"$ref": REF.format(model="InferRequestBody")}),
                "application/octet-stream": {"schema": BINARY},
            },
        },
        "responses": {
            "200": {
                "description": "The outputs asked for: JSON, or with binary outputs a JSON header and their bytes.",
                "headers": {"Inference-Header-Content-Length": HEADER_LENGTH},
                "content": {**_json({"$ref": REF.format(model="InferAnswer")}), "application/octet-stream": {"schema": BINARY}},
            },
            **API_ERRORS,
            "404": NOT_SERVED,
            "413": _error("The body is over the server's size limit (`SEQSERVE_MAX_BINARY_BODY_MB` with binary tensors, "
                          "`SEQSERVE_MAX_BODY_MB` for JSON and for the JSON header)."),
            "415": _error("The content type is neither `application/json` nor `application/octet-stream`."),
        },
    }


TENSOR_METADATA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "datatype": {"type": "string"},
                   "shape": {"type": "array", "items": {"type": "integer"}, "description": "-1: any size"},
                   "parameters": {"type": "object"}},
}

TENSOR_CONFIG = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "data_type": {"type": "string", "examples": ["TYPE_FP32"]},
                   "dims": {"type": "array", "items": {"type": "integer"}, "description": "-1: any size"},
                   "optional": {"type": "boolean"}},
}


class V2Read(NamedTuple):
    """A ``GET`` route of the Open Inference Protocol, and what the API page says of it."""

    path: str
    summary: str
    description: str
    answer: dict[str, Any]  # the 200 answer's schema
    with_model: bool = False  # names a model, so it has a versioned twin and may answer 404 or 410


V2_READS = [
    V2Read("/v2", "Server metadata", "The server's name and version, and the protocol extensions it supports.",
           {"type": "object", "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                                             "extensions": {"type": "array", "items": {"type": "string"}}}}),
    V2Read("/v2/health/live", "Live", "Always `{\"live\": true}` while the worker answers.",
           {"type": "object", "properties": {"live": {"type": "boolean"}}}),
    V2Read("/v2/health/ready", "Ready", "`{\"ready\": true}` once a model serves.",
           {"type": "object", "properties": {"ready": {"type": "boolean"}}}),
    V2Read("/v2/models/{name}", "Model metadata", "The model's versions, inputs and outputs (datatypes and shapes, -1 "
           "for any size; a forecaster's quantile levels in its `quantiles` output's parameters) and its limits.",
           {"type": "object", "properties": {
               "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
               "platform": {"type": "string"}, "inputs": {"type": "array", "items": TENSOR_METADATA},
               "outputs": {"type": "array", "items": TENSOR_METADATA}, "parameters": {"type": "object"}}},
           with_model=True),
    V2Read("/v2/models/{name}/ready", "Model ready", "`{\"name\": ..., \"ready\": true}` when the model serves.",
           {"type": "object", "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}}}, with_model=True),
    V2Read("/v2/models/{name}/config", "Model configuration", "The model in Triton's model configuration format "
           "(the `model_configuration` extension, read by Triton's `perf_analyzer`): `max_batch_size` is 0, so "
           "each tensor's `dims` are its whole shape, the metadata's, instances first.",
           {"type": "object", "properties": {
               "name": {"type": "string"}, "platform": {"type": "string"}, "backend": {"type": "string"},
               "max_batch_size": {"type": "integer"}, "input": {"type": "array", "items": TENSOR_CONFIG},
               "output": {"type": "array", "items": TENSOR_CONFIG}}},
           with_model=True),
]


def v2_read_operation(read: V2Read, path: str, open_paths: tuple[str, ...]) -> dict[str, Any]:
    """``read``'s operation at ``path`` (its own, or its versioned twin's); an open path never answers 401."""
    versioned = "{version}" in path
    parameters = [("name", "A served model's name.")] if read.with_model else []
    parameters += [("version", "Its stored version.")] if versioned else []
    operation_id = read.path.removeprefix("/v2").replace("/", "_").replace("{", "").replace("}", "")
    responses: dict[str, Any] = {"200": {"description": read.summary, "content": _json(read.answer)}}
    if path not in open_paths:
        responses["401"] = UNAUTHORIZED
    if read.with_model:
        responses |= {"404": NOT_SERVED, "410": API_ERRORS["410"]}
    return {
        "tags": ["Open Inference Protocol"],
        "summary": f"{read.summary} (Open Inference Protocol)",
        "description": read.description,
        "operationId": "seqserve__v2" + operation_id + ("_version" if versioned else ""),
        "parameters": [{"name": name, "in": "path", "required": True, "description": text, "schema": TAG_PART}
                       for name, text in parameters],
        "responses": responses,
    }


def describe(spec: OpenAPISpecification, settings: Settings, version: str) -> OpenAPISpecification:
    """BentoML's spec with seqserve's title, version, description, ``GET /models`` and real error answers."""
    paths = dict(spec.paths)
    for route, item in spec.paths.items():
        if isinstance(item.post, dict) and "x-bentoml-name" in item.post:  # a @bentoml.api route
            paths[route] = attrs.evolve(item, post={**item.post, "responses": {"200": item.post["responses"][200], **API_ERRORS}})
    paths["/models"] = PathItem(get=MODELS_PATH["get"])
    paths["/v2/models/{name}/infer"] = PathItem(post=infer_operation(with_version=False))
    paths["/v2/models/{name}/versions/{version}/infer"] = PathItem(post=infer_operation(with_version=True))
    for read in V2_READS:
        twins = [read.path, read.path.replace("{name}", "{name}/versions/{version}")] if read.with_model else [read.path]
        for path in twins:
            paths[path] = PathItem(get=v2_read_operation(read, path, settings.open_paths))
    paths["/readyz"] = attrs.evolve(
        paths["/readyz"], get=attrs.evolve(paths["/readyz"].get, responses={
            **paths["/readyz"].get.responses, "503": {"description": "Not ready yet: the models are still loading."}
        })
    )

    schemas = {
        name: schema for name, schema in spec.components["schemas"].items()
        # BentoML's error shapes and its task-queue status: no seqserve route answers with them.
        if name not in ("InvalidArgument", "NotFound", "InternalServerError", "TaskStatusResponse")
    }
    for model in (ModelInfo, ErrorAnswer):
        schemas[model.__name__] = model.model_json_schema(ref_template=REF)
    _, infer = models_json_schema([(model, "validation") for model in INFER_SCHEMAS], ref_template=REF)
    schemas |= infer["$defs"]
    return attrs.evolve(
        spec,
        openapi="3.1.0",
        info=Info(title="seqserve", version=version, description=page_description(settings)),
        tags=[
            attrs.evolve(spec.tags[0], description="Classification, forecasting and the models that answer."),
            *spec.tags[1:],
            attrs.evolve(spec.tags[0], name="Open Inference Protocol",
                         description="KServe v2 / Triton's REST API, with binary tensors."),
        ],
        paths=paths,
        components={**spec.components, "schemas": schemas},
    )


class SeqServeService(bentoml.Service):
    """A BentoML service whose API page is seqserve's (see ``describe``)."""

    @property
    def openapi_spec(self) -> OpenAPISpecification:
        # The settings service.app read once, at import, and gave its service class (SeqServe.settings).
        return describe(super().openapi_spec, self.inner.settings, seqserve_version(self))
