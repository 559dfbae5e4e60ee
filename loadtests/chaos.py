"""What ``python -m loadtests soak`` does to the server mid-run, and how the load spreads over its workers.

* :func:`kill_worker` SIGKILLs one worker process of the server (by PID, found among the children of its
  ``bentoml serve``), as a crash or the kernel's OOM killer would; circus starts a replacement.
* :func:`store_new_version` stores a new version of a served model under the same name through
  ``models.artifact`` (the same weights and card, a new version): what ``seqserve-train`` does on the same
  store. The server's workers serve it by themselves (service.reload); :func:`serving_workers` reads from
  ``/metrics`` which workers serve it as the name's default, so the soak says when the switch happened.
* :class:`WorkerShares` samples ``seqserve_worker_requests_total{worker="<pid>"}`` from ``/metrics``
  (service.framework.connections counts every HTTP request per worker process) and says each worker's share of the
  requests in a stretch of the run, and when the shares were even again after a kill.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field, replace

import httpx

from loadtests.server import worker_pids

EVEN = (0.7, 1.3)  # shares count as even when each worker serves 70-130% of 1/N (35-65% for two)
WINDOW_S = 10.0  # shares are judged over this much of the run at a time


def kill_worker(server_pid: int, prefer: list[int] = ()) -> int | None:
    """SIGKILL one worker of the server: the first of ``prefer`` that is one, else the lowest PID; return its PID."""
    workers = worker_pids(server_pid)
    chosen = next((pid for pid in prefer if pid in workers), workers[0] if workers else None)
    if chosen is not None:
        os.kill(chosen, signal.SIGKILL)
    return chosen


def store_new_version(tag: str) -> str:
    """Store the model ``tag`` again as a new version of its name (same weights and card); return the new tag."""
    from models.artifact import load_artifact, save_artifact  # torch and bentoml: only when asked

    loaded = load_artifact(tag)
    return save_artifact(tag.split(":")[0], loaded.module, replace(loaded.card, created="", weights_sha256=""))


def serving_workers(metrics_text: str, tag: str) -> set[str]:
    """The worker PIDs whose ``seqserve_model_version`` says ``tag`` serves its name by default (service.reload)."""
    from prometheus_client.parser import text_string_to_metric_families

    name, _, version = tag.partition(":")
    return {
        sample.labels.get("pid", "")
        for family in text_string_to_metric_families(metrics_text) if family.name == "seqserve_model_version"
        for sample in family.samples
        if sample.value == 1 and sample.labels["model"] == name and sample.labels["version"] == version and sample.labels["default"] == "true"
    }


def worker_counts(metrics_text: str) -> dict[int, float]:
    """``seqserve_worker_requests_total`` from a /metrics page: requests so far by worker PID."""
    from prometheus_client.parser import text_string_to_metric_families

    counts = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name == "seqserve_worker_requests":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counts[int(sample.labels["worker"])] = sample.value
    return counts


def sample_at(samples: list[tuple[float, dict]], seconds: float) -> dict:
    """Of ``(seconds in, values)`` samples, the last taken at or before ``seconds`` (the first if none was; {} if none)."""
    earlier = [values for t, values in samples if t <= seconds]
    return earlier[-1] if earlier else (samples[0][1] if samples else {})


@dataclass
class WorkerShares:
    """Requests served so far by each worker, sampled from the server's ``/metrics`` over the run."""

    host: str
    started: float  # time.time() when the load started
    samples: list[tuple[float, dict[int, float]]] = field(default_factory=list)  # (seconds in, {pid: requests})

    def sample(self) -> None:
        try:
            counts = worker_counts(httpx.get(f"{self.host}/metrics", timeout=5).text)
        except httpx.HTTPError:
            return  # a busy or restarting server: the next sample will do
        self.samples.append((time.time() - self.started, counts))

    def requests(self, start: float, stop: float) -> dict[int, float]:
        """Requests each worker served between ``start`` and ``stop`` seconds into the run (nearest samples)."""
        before, after = sample_at(self.samples, start), sample_at(self.samples, stop)
        served = {pid: n - before.get(pid, 0.0) for pid, n in after.items()}
        return {pid: n for pid, n in served.items() if n > 0}

    def shares(self, start: float, stop: float) -> dict[int, float]:
        served = self.requests(start, stop)
        total = sum(served.values())
        return {pid: n / total for pid, n in sorted(served.items())} if total else {}

    def even_again(self, after: float, workers: int) -> float | None:
        """Seconds into the run of the first sample after ``after`` whose last :data:`WINDOW_S` (all after ``after``)
        had ``workers`` workers serving, each 70-130% of an even share; None if none did."""
        for seconds, _ in self.samples:
            if seconds - WINDOW_S < after:
                continue
            shares = self.shares(seconds - WINDOW_S, seconds)
            if len(shares) == workers and all(EVEN[0] / workers <= s <= EVEN[1] / workers for s in shares.values()):
                return seconds
        return None

    def first_request(self, pid: int) -> float | None:
        """Seconds into the run of the first sample in which worker ``pid`` had served a request."""
        return next((seconds for seconds, counts in self.samples if counts.get(pid, 0) > 0), None)
