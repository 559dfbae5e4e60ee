"""seqserve's hooks into BentoML where BentoML has no public one (the list and the reasons: ``service.framework``)."""

from __future__ import annotations

import logging
from pathlib import Path

from _bentoml_impl.server.mount import PassiveMount
from _bentoml_sdk.io_models import IORootModel
from bentoml._internal.configuration.containers import BentoMLContainer
from bentoml._internal.server.http import instruments
from bentoml._internal.service.openapi.specification import Info, OpenAPISpecification, PathItem
from starlette.routing import Match, Mount

__all__ = [
    "IORootModel", "Info", "OpenAPISpecification", "PathItem", "label_unknown_paths_together", "quiet_validation_tracebacks",
    "serve_command", "set_prometheus_dir",
]

VALIDATION_LOGGER = "bentoml._internal.server.http_app"  # where BentoML logs bodies that fail pydantic validation
UNKNOWN_ENDPOINT = "/<unknown>"
_ORIGINAL_PATH = "seqserve.original_path"
_exact_labels: dict[str, str] = {}  # path -> label, for paths that are routes: as many as the app has


def set_prometheus_dir(path: Path) -> None:
    """Make ``path`` this run's Prometheus multiprocess folder (``service.workers``).

    BentoML's own hook (its pytest plugin sets it the same way): ``serve`` reads it after importing the
    service, creates the folder and passes it to the workers as PROMETHEUS_MULTIPROC_DIR."""
    BentoMLContainer.prometheus_multiproc_dir.set(str(path))


def serve_command():
    """The click context of ``bentoml serve`` when this process is its main process, else None."""
    try:
        import click
    except ImportError:
        return None
    ctx = click.get_current_context(silent=True)
    if ctx is None or ctx.info_name != "serve":
        return None
    if not type(ctx.find_root().command).__module__.startswith("bentoml_cli"):
        return None
    return ctx


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


def quiet_validation_tracebacks() -> None:
    """Turn BentoML's traceback for each body that fails validation into one WARNING line (once per process)."""
    logger = logging.getLogger(VALIDATION_LOGGER)
    if not any(isinstance(f, ClientErrorsWithoutTracebacks) for f in logger.filters):
        logger.addFilter(ClientErrorsWithoutTracebacks())


def endpoint_label(scope) -> str:
    """The ``endpoint`` label of a request: its route, or one shared label for a path no route serves.

    BentoML labels its request metrics with the raw path, so every made-up path would add series to
    ``/metrics`` for good (2,000 random paths: 15.5 MB, 1.5 s a scrape).
    """
    path = scope["path"]
    label = _exact_labels.get(path)
    if label is not None:
        return label
    label = UNKNOWN_ENDPOINT
    for route in getattr(getattr(scope.get("app"), "router", None), "routes", ()):
        match, child_scope = route.matches(scope)
        if match is Match.NONE:
            continue
        if isinstance(route, PassiveMount):  # an app mounted at "/": its route's template, e.g. "/v2/models/{name}/infer"
            label = _inner_template(route, {**scope, **child_scope}) or path
        elif isinstance(route, Mount):  # static files: one label for the whole folder
            label = route.path + "/{path}"
        else:
            label = route.path  # the route's template, e.g. "/classify"
        break
    if label == path:
        _exact_labels[path] = label
    return label


def _inner_template(mount, scope) -> str | None:
    """The path template of the route of ``mount``'s app that serves ``scope``, if it has one."""
    for route in getattr(mount.app, "routes", ()):
        if route.matches(scope)[0] is Match.FULL:
            return getattr(route, "path", None)
    return None


class _RestorePath:
    """Hands the request on with its real path, after the metrics middleware has read its label."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if _ORIGINAL_PATH in scope:
            scope = {**scope, "path": scope[_ORIGINAL_PATH]}
            del scope[_ORIGINAL_PATH]
        await self.app(scope, receive, send)


def label_unknown_paths_together() -> None:
    """Make BentoML's request metrics label unknown paths ``/<unknown>``; known routes keep their path.

    BentoML has no setting for this: its ``RunnerTrafficMetricsMiddleware`` reads ``scope["path"]``.
    The subclass swapped in here shows it the label instead and gives the app below it the real path.
    Called at import of ``service.app``, before BentoML builds the app's middleware (it imports the
    class from the module at that moment).
    """
    base = instruments.RunnerTrafficMetricsMiddleware
    if getattr(base, "seqserve_labels_routes", False):
        return

    class RouteLabelledTrafficMetrics(base):
        seqserve_labels_routes = True

        def __init__(self, app, **options):
            super().__init__(_RestorePath(app), **options)

        async def __call__(self, scope, receive, send):
            if scope["type"] in ("http", "websocket"):
                label = endpoint_label(scope)
                if label != scope["path"]:
                    scope = {**scope, "path": label, _ORIGINAL_PATH: scope["path"]}
            await super().__call__(scope, receive, send)

    instruments.RunnerTrafficMetricsMiddleware = RouteLabelledTrafficMetrics
