"""The service's own Prometheus metrics, shown on BentoML's ``/metrics`` next to its request metrics."""

from __future__ import annotations

import os
from functools import lru_cache


@lru_cache(maxsize=None)
def batch_size_histogram():
    """``seqserve_batch_size``: instances per forward pass, by model.

    Created on first use, not at import: BentoML points ``PROMETHEUS_MULTIPROC_DIR`` at its shared
    folder only when a worker starts, after the service module was imported, and prometheus_client
    must see that folder for worker metrics to reach ``/metrics``.
    """
    from prometheus_client import Histogram

    return Histogram(
        "seqserve_batch_size",
        "Instances merged into one forward pass",
        labelnames=["model"],
        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    )


def observe_batch(model_tag: str, size: int) -> None:
    batch_size_histogram().labels(model=model_tag).observe(size)


@lru_cache(maxsize=None)
def _stream_metrics():
    """``seqserve_open_streams`` (WebSocket streams open now, summed over live workers),
    ``seqserve_stream_steps_total`` (stream steps read, by model: its rate is steps per second) and
    ``seqserve_state_batch_size`` (streams advanced together in one pass, by model). Created on first
    use, like :func:`batch_size_histogram`."""
    from prometheus_client import Counter, Gauge, Histogram

    return (
        Gauge("seqserve_open_streams", "WebSocket streams open now", multiprocess_mode="livesum"),
        Counter("seqserve_stream_steps", "Stream steps read (WebSocket and state tokens)", labelnames=["model"]),
        Histogram(
            "seqserve_state_batch_size", "Stream states advanced together in one pass", labelnames=["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        ),
    )


def change_open_streams(delta: int) -> None:
    _stream_metrics()[0].inc(delta)


def count_stream_steps(model_tag: str, steps: int) -> None:
    _stream_metrics()[1].labels(model=model_tag).inc(steps)


def observe_state_batch(model_tag: str, size: int) -> None:
    _stream_metrics()[2].labels(model=model_tag).observe(size)


@lru_cache(maxsize=None)
def _refused_counter():
    """``seqserve_refused_total``: requests the worker's door answered 503 because it was too busy
    (service.admission); they never reach BentoML's request metrics. Created on first use."""
    from prometheus_client import Counter

    return Counter("seqserve_refused", "Requests refused with 503 before parsing: the worker was too busy")


def count_refused() -> None:
    _refused_counter().inc()


@lru_cache(maxsize=None)
def _worker_counter():
    """``seqserve_worker_requests_total{worker="<pid>"}``: HTTP requests each worker process took in, so that
    how the load spreads over the workers shows on ``/metrics`` (``python -m loadtests soak`` reads it).
    One series per worker process of the run: a replaced worker adds one. Created on first use."""
    from prometheus_client import Counter

    return Counter("seqserve_worker_requests", "HTTP requests taken in, by worker process id", labelnames=["worker"])


@lru_cache(maxsize=None)
def _worker_requests(pid: int):
    return _worker_counter().labels(worker=str(pid))


def count_worker_request() -> None:
    _worker_requests(os.getpid()).inc()


UNKNOWN_ENDPOINT = "/<unknown>"
_ORIGINAL_PATH = "seqserve.original_path"
_exact_labels: dict[str, str] = {}  # path -> label, for paths that are routes: as many as the app has


def endpoint_label(scope) -> str:
    """The ``endpoint`` label of a request: its route, or one shared label for a path no route serves.

    BentoML labels its request metrics with the raw path, so every made-up path used to add series to
    ``/metrics`` for good (2,000 random paths: 15.5 MB, 1.5 s a scrape).
    """
    path = scope["path"]
    label = _exact_labels.get(path)
    if label is not None:
        return label
    from starlette.routing import Match, Mount

    from _bentoml_impl.server.mount import PassiveMount

    label = UNKNOWN_ENDPOINT
    for route in getattr(getattr(scope.get("app"), "router", None), "routes", ()):
        match, _ = route.matches(scope)
        if match is Match.NONE:
            continue
        if isinstance(route, PassiveMount):  # an app mounted at "/" that has a route for this path
            label = path
        elif isinstance(route, Mount):  # static files: one label for the whole folder
            label = route.path + "/{path}"
        else:
            label = route.path  # the route's template, e.g. "/classify"
        break
    if label == path:
        _exact_labels[path] = label
    return label


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
    class from the module at that moment). tests/test_startup.py fails if BentoML stops using it.
    """
    from bentoml._internal.server.http import instruments

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
