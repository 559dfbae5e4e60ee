"""The service's own Prometheus metrics, shown on BentoML's ``/metrics`` next to its request metrics."""

from __future__ import annotations

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
