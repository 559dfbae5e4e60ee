"""The load generator's own side of a run: how many locust processes, what each sent, and whether it kept up.

One locust process is one Python process and saturates about one core; past that, the run measures the
generator, not the service. ``--processes N`` uses locust's own distributed mode: a master that holds the
statistics and the reports, and N worker processes forked from it that send the requests (the users are
spread over them). The master listens on 127.0.0.1 only, on a free port, so runs side by side do not meet.

What it cost is read from the kernel: the CPU time of locust and every process it reaped (its master reaps
its workers), over locust's whole run, start-up included, against the cores its processes could use.
"""

from __future__ import annotations

import json
import os
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from loadtests.server import free_port

SATURATED = 0.9  # a generator above this share of its cores may be what limits the run
USAGE_FILE = "generator.json"
WORKER_STATS_FILE = "workers.json"  # written by the locustfile on the master (see count_worker_requests there)


def locust_flags(processes: int, out: Path, master_port: int | None = None) -> list[str]:
    """Locust's flags for ``processes`` worker processes on this machine (none for a single process)."""
    if processes <= 1:
        return []
    port = master_port or free_port()
    # Forked workers connect to --master-port, the master listens on --master-bind-port: the same port.
    return ["--processes", str(processes), "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
            "--master-port", str(port), "--worker-stats", str(out / WORKER_STATS_FILE)]


@dataclass
class Usage:
    """CPU the load generator used during one run, and how busy the whole machine was meanwhile."""

    processes: int  # locust processes sending requests (workers, or the one plain process)
    cpu_seconds: float  # user + system time of locust and its reaped workers
    wall_seconds: float
    machine_cores: int
    machine_busy: float  # share of all this machine's cores busy during the run, whoever used them

    @property
    def cores(self) -> int:
        """Cores the generator could use: each locust process runs on one core at most."""
        return min(self.processes, self.machine_cores)

    @property
    def share(self) -> float:
        """The generator's CPU time over what its cores could give in the run's wall time."""
        return self.cpu_seconds / max(self.wall_seconds * self.cores, 1e-9)

    @property
    def saturated(self) -> bool:
        return self.share >= SATURATED


class CpuMeter:
    """Measures the CPU time of the child processes reaped between ``__init__`` and ``stop`` (RUSAGE_CHILDREN).

    Start it just before locust and stop it just after locust was waited for: nothing else may be reaped
    meanwhile (a server started before and stopped after the run is not).
    """

    def __init__(self) -> None:
        self._children = _children_cpu()
        self._machine = psutil.cpu_times()
        self._started = time.monotonic()

    def stop(self, processes: int) -> Usage:
        wall = time.monotonic() - self._started
        now = psutil.cpu_times()
        total = sum(now) - sum(self._machine)
        idle = (now.idle + getattr(now, "iowait", 0.0)) - (self._machine.idle + getattr(self._machine, "iowait", 0.0))
        return Usage(processes=processes, cpu_seconds=_children_cpu() - self._children, wall_seconds=wall,
                     machine_cores=os.cpu_count() or 1, machine_busy=1 - idle / total if total > 0 else 0.0)


def _children_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def write_usage(out: Path, usage: Usage) -> None:
    (out / USAGE_FILE).write_text(json.dumps(asdict(usage), indent=2) + "\n")


def read_usage(out: Path) -> Usage | None:
    path = out / USAGE_FILE
    return Usage(**json.loads(path.read_text())) if path.exists() else None


def worker_requests(out: Path) -> dict[str, dict[str, int]]:
    """Requests and failures each worker process reported to the master: {worker id: {"requests", "failures"}};
    empty for a single-process run."""
    path = out / WORKER_STATS_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def report(out: Path, requests: int, local_target: bool) -> tuple[list[str], list[str]]:
    """The summary's lines about the generator, and its warnings (empty when it kept up)."""
    usage, workers = read_usage(out), worker_requests(out)
    lines, warnings = [], []
    if workers:
        counts = [w["requests"] for w in workers.values()]
        added = " + ".join(map(str, counts))
        check = "" if sum(counts) == requests else f" (the aggregated total is {requests})"
        lines.append(f"load generator: {len(workers)} worker processes sent {added} = {sum(counts)} requests{check}")
    if usage:
        lines.append(
            f"load generator CPU: {usage.cpu_seconds:.1f} CPU-s in {usage.wall_seconds:.1f} s = "
            f"{100 * usage.share:.0f}% of its {usage.cores} core(s) ({usage.processes} process(es)); "
            f"this machine's {usage.machine_cores} cores were {100 * usage.machine_busy:.0f}% busy"
        )
        if usage.saturated:
            more = "more --processes" if usage.processes < usage.machine_cores else "workers on more machines (README)"
            warnings.append(
                f"the load generator was saturated ({100 * usage.share:.0f}% of its {usage.cores} core(s)): this run "
                f"measured the generator as much as the service; use {more}"
            )
        elif local_target and usage.machine_busy >= SATURATED:
            warnings.append(
                f"this machine was {100 * usage.machine_busy:.0f}% busy and runs both the service and the load "
                f"generator: they competed for its {usage.machine_cores} cores, so the numbers are the machine's limit"
            )
    return lines, warnings
