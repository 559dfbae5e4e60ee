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


@lru_cache(maxsize=None)
def _stream_metrics():
    """``seqserve_open_streams`` (WebSocket streams open now, summed over live workers),
    ``seqserve_stream_steps_total`` (stream steps read into a pass, by model: its rate is steps per second) and
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


@lru_cache(maxsize=None)
def _stream_closes_counter():
    """``seqserve_stream_closes_total{reason}``: WebSocket streams the server closed or refused (service.streams),
    by reason: ``too_many_open`` (1013), ``idle`` (4408), ``too_big`` (1009), ``bad_request`` (4400). A client
    sees each as a close frame with its code; this says how often. Created on first use."""
    from prometheus_client import Counter

    return Counter("seqserve_stream_closes", "WebSocket streams the server closed or refused, by reason", labelnames=["reason"])


def count_stream_close(reason: str) -> None:
    _stream_closes_counter().labels(reason=reason).inc()


class BatchSizes:
    """One model's batches: ``seqserve_batch_size`` (instances per forward pass) or, with ``streams``,
    ``seqserve_state_batch_size`` (stream states per pass) and ``seqserve_stream_steps_total`` (the steps
    they read). A batcher calls :meth:`observe` for each batch it runs."""

    def __init__(self, model_tag: str, streams: bool = False):
        self.model_tag = model_tag
        self.streams = streams

    def observe(self, size: int, steps: int) -> None:
        if not self.streams:
            batch_size_histogram().labels(model=self.model_tag).observe(size)
            return
        _, steps_read, state_batch_size = _stream_metrics()
        state_batch_size.labels(model=self.model_tag).observe(size)
        steps_read.labels(model=self.model_tag).inc(steps)


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


@lru_cache(maxsize=None)
def _model_version_gauge():
    """``seqserve_model_version{model, version, default}``: 1 for each version a worker serves, ``default="true"``
    on the one its name alone reaches; 0 once a version is unloaded or no longer the default. Each worker sets its
    own (multiprocess ``liveall``: a ``pid`` label per worker), so ``/metrics`` shows which workers switched."""
    from prometheus_client import Gauge

    return Gauge(
        "seqserve_model_version", "Model versions served: 1 per version and worker, default=true on its name's default",
        labelnames=["model", "version", "default"], multiprocess_mode="liveall",
    )


def show_model_version(name: str, version: str, default: bool | None) -> None:
    """Say that this worker serves ``name:version`` as its name's default (True), beside it (False), or not (None)."""
    gauge = _model_version_gauge()
    gauge.labels(model=name, version=version, default="true").set(1 if default is True else 0)
    gauge.labels(model=name, version=version, default="false").set(1 if default is False else 0)


@lru_cache(maxsize=None)
def _load_failures_counter():
    """``seqserve_model_load_failures_total{model}``: attempts to serve a new version (``model`` is its tag) that
    failed to load or check (service.reload). Created on first use."""
    from prometheus_client import Counter

    return Counter("seqserve_model_load_failures", "New model versions that failed to load or check", labelnames=["model"])


def count_load_failure(tag: str) -> None:
    _load_failures_counter().labels(model=tag).inc()
