"""The framework internals seqserve relies on, as data, and :func:`check`, which looks for every one of them.

Importing this module imports no internal: :func:`check` runs before anything that would (``service.framework``).
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass


class FrameworkChanged(RuntimeError):
    """An internal that seqserve relies on is missing or changed; the message names it and the versions pinned."""


@dataclass(frozen=True)
class Internal:
    """``module.name``, and what seqserve uses of it: ``members`` it reads or overrides (methods and class
    attributes, or attributes its instances are given in the class's own code), and ``keys`` it must have."""

    module: str
    name: str = ""
    members: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()

    @property
    def where(self) -> str:
        return f"{self.module}.{self.name}" if self.name else self.module


INTERNALS = (
    Internal("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol", (
        "__init__", "connection_made", "on_message_begin", "on_headers_complete", "on_body", "on_response_complete",
        "connection_lost", "data_received", "app", "cycle", "scope", "headers", "flow", "transport", "loop", "client",
    )),
    Internal("uvicorn.protocols.http.httptools_impl", "RequestResponseCycle", ("body", "disconnected", "keep_alive", "more_body", "transport")),
    Internal("uvicorn.protocols.http.flow_control", "FlowControl", ("read_paused", "pause_reading", "resume_reading")),
    Internal("uvicorn.protocols.websockets.wsproto_impl", "WSProtocol", ("__init__", "app")),
    Internal("uvicorn.config", "Config", ("ws_max_size", "ws_per_message_deflate", "ws_ping_timeout")),
    Internal("uvicorn.config", "HTTP_PROTOCOLS", keys=("auto",)),
    Internal("uvicorn.config", "WS_PROTOCOLS", keys=("auto",)),
    Internal("bentoml._internal.server.http.instruments", "RunnerTrafficMetricsMiddleware", ("__init__", "__call__")),
    # BentoML must import the metrics middleware from its module when it builds the app, or the swap does nothing.
    Internal("_bentoml_impl.server.app", "", ("from bentoml._internal.server.http.instruments import",)),
    Internal("_bentoml_impl.server.mount", "PassiveMount"),
    Internal("bentoml._internal.configuration.containers", "BentoMLContainer", ("prometheus_multiproc_dir",)),
    Internal("_bentoml_sdk.io_models", "IORootModel"),
    Internal("bentoml._internal.service.openapi.specification", "OpenAPISpecification", ("paths", "components", "tags")),
    Internal("bentoml._internal.service.openapi.specification", "Info"),
    Internal("bentoml._internal.service.openapi.specification", "PathItem"),
    Internal("bentoml._internal.server.http_app"),  # its logger reports bodies that fail validation
    Internal("bentoml_cli.cli", "cli", keys=("serve",)),
)


def check(internals: tuple[Internal, ...] = INTERNALS) -> None:
    """Raise :class:`FrameworkChanged` naming the first of ``internals`` that is missing or changed."""
    for internal in internals:
        problem = _problem(internal)
        if problem:
            raise FrameworkChanged(
                f"{internal.where} {problem}; seqserve is tested with the bentoml, uvicorn and starlette versions "
                "pinned in pyproject.toml (see service/framework/__init__.py)"
            )


def _problem(internal: Internal) -> str | None:
    try:
        found = importlib.import_module(internal.module)
    except ImportError as err:
        return f"cannot be imported ({err})"
    if internal.name:
        if not hasattr(found, internal.name):
            return "is missing"
        found = getattr(found, internal.name)
    missing = [member for member in internal.members if not _has(found, member)]
    missing += [key for key in internal.keys if key not in getattr(found, "commands", found)]  # a click group's, or a dict's
    return f"has no {', '.join(map(repr, missing))} any more" if missing else None


def _has(found, member: str) -> bool:
    """Whether ``found`` (a module, or a class) still has ``member``: in a module's source; as a class's
    attribute, an attrs field, or an attribute its instances are given in the class's own code."""
    if inspect.ismodule(found):
        return member in inspect.getsource(found)
    if hasattr(found, member) or any(field.name == member for field in getattr(found, "__attrs_attrs__", ())):
        return True
    return any(f"self.{member}" in inspect.getsource(cls) for cls in found.__mro__ if cls.__module__ != "builtins")
