"""One directory per ``bentoml serve`` run, shared by its main process and its workers.

BentoML keeps the Prometheus multiprocess files in ``$BENTOML_HOME/prometheus_multiproc_dir`` and
empties that folder whenever a server starts, so a second ``bentoml serve`` on the same home (even
one that failed at once) emptied a running server's ``/metrics``. Each run gets its own directory::

    <run>/prometheus/   PROMETHEUS_MULTIPROC_DIR of this run's workers
    <run>/main          pid of the main process (circus' arbiter, the workers' parent)
    <run>/workers/<N>   pid of worker N while it runs; removed when it stops on purpose (:func:`forget_this_worker`)
    <run>/workers/<N>.died  pid of the last worker N the main process saw die
    <run>/stopped       why a worker stopped the whole server

The main process makes it (:func:`open_run`) before BentoML starts the workers and removes it when
``bentoml serve`` ends (:func:`close_run`); the workers find it through ``SEQSERVE_RUN_DIR``.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import psutil  # a BentoML dependency

from service.framework import set_prometheus_dir

log = logging.getLogger(__name__)

RUN_DIR_ENV = "SEQSERVE_RUN_DIR"


def open_run() -> Path:
    """Make this run's directory, point BentoML's Prometheus folder into it, and tell the workers where it is."""
    run = Path(tempfile.mkdtemp(prefix="seqserve-run-"))
    (run / "workers").mkdir()
    (run / "main").write_text(str(os.getpid()))
    set_prometheus_dir(run / "prometheus")
    os.environ[RUN_DIR_ENV] = str(run)  # circus copies the main process' environment into each worker
    return run


def close_run(run: Path) -> str:
    """Remove the run's directory once the workers are gone; return why a worker stopped the server, or ""."""
    stopped = run / "stopped"
    reason = stopped.read_text() if stopped.exists() else ""
    shutil.rmtree(run, ignore_errors=True)
    return reason


def current_run() -> Path | None:
    """This worker's run directory, or None outside a ``bentoml serve`` started with seqserve's start-up."""
    path = os.environ.get(RUN_DIR_ENV)
    return Path(path) if path and Path(path).is_dir() else None


def _alive(pid: int) -> bool:
    """False for a process that is gone or a zombie (dead, not yet reaped: circus reaps every 10 s)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # exists, someone else's
        return True


def register_worker(run: Path, index: int) -> None:
    """Record this worker's pid under its index; warn when the previous holder of the index died.

    A worker that stops on purpose (a graceful stop, or :func:`stop_server`) removes its record
    (:func:`forget_this_worker`), so a record whose process is gone means that worker was killed or crashed.
    """
    record = run / "workers" / str(index)
    pid = os.getpid()
    try:
        previous = int(record.read_text())
    except (OSError, ValueError):
        previous = None
    if previous is not None and previous != pid and not _alive(previous):
        reported = run / "workers" / f"{index}.died"
        if reported.exists() and reported.read_text() == str(previous):  # the main process said so already
            log.info("worker %d (pid %d) was replaced by pid %d", index, previous, pid)
        else:
            log.warning("worker %d (pid %d) died and was replaced by pid %d", index, previous, pid)
        drop_live_gauges(run, previous)
    record.write_text(str(pid))

    def forget() -> None:
        try:
            if int(record.read_text()) == pid:
                record.unlink()
        except (OSError, ValueError):
            pass

    global _forget_this_worker
    _forget_this_worker = forget


_forget_this_worker = lambda: None  # noqa: E731  (replaced by register_worker)


def forget_this_worker() -> None:
    """This worker stops on purpose: remove its record, so that its end is not taken for a death.

    Called from the service's shutdown hook, not at exit: on a graceful stop uvicorn raises SIGTERM again once it
    has shut down, so the worker dies by the signal and exit handlers never run (its record outlived it, and a
    look by the main process in that second warned of deaths, and in a container stopped the server with exit
    1); and a worker that exits through an exception it did not catch should count as dead."""
    _forget_this_worker()


def stop_server(run: Path, reason: str) -> bool:
    """Ask this run's main process to stop every worker and exit, recording ``reason``; False if it cannot be reached.

    Only the worker's own parent is signalled, and only when it is the process that made ``run``.
    """
    (run / "stopped").write_text(reason)
    _forget_this_worker()  # it exits on purpose: not a worker death to warn about
    try:
        main = int((run / "main").read_text())
    except (OSError, ValueError):
        return False
    if main != os.getppid():
        return False
    os.kill(main, signal.SIGTERM)  # circus stops the workers, then `bentoml serve` returns
    return True


REPLACED_BY_CIRCUS = "circus will start another"
STOPPING_FOR_RESTART = ("BentoML starts no replacement inside a container (BENTOML_CONTAINERIZED), so the server stops "
                        "(its other workers finish what they hold) for the container to be restarted with every worker")


def watch_workers(run: Path, every: float = 2.0) -> None:
    """In the main process: warn when a worker's recorded process is gone (killed or crashed, not stopped).

    Circus starts a replacement, which says so too (:func:`register_worker`), except in a container marked
    ``BENTOML_CONTAINERIZED`` (``bentoml containerize``'s images; seqserve's own leaves it out:
    ``container/build.py``), where BentoML tells circus not to: the server would serve on with a worker fewer
    for good, its health checks answered by the workers left. There a dead worker stops the server
    (:func:`check_workers`), and the container's restart policy (Kubernetes: always) starts it again whole.
    A daemon thread, reading a few small files every ``every`` s.
    """
    inside_container = "BENTOML_CONTAINERIZED" in os.environ or "BENTOCLOUD_DEPLOYMENT_URL" in os.environ

    def watch() -> None:
        while not check_workers(run, inside_container):
            time.sleep(every)

    threading.Thread(target=watch, name="seqserve-worker-watch", daemon=True).start()


def check_workers(run: Path, inside_container: bool) -> bool:
    """One look at the workers (:func:`report_dead_workers`); inside a container, one that died stops the server:
    its reason is recorded for the exit line and the main process (``run/main``) is sent SIGTERM. True once stopping."""
    dead = report_dead_workers(run, STOPPING_FOR_RESTART if inside_container else REPLACED_BY_CIRCUS)
    if not dead or not inside_container:
        return False
    (run / "stopped").write_text(f"seqserve: stopped: a worker (pid {dead[0]}) died, and {STOPPING_FOR_RESTART}")
    try:
        os.kill(int((run / "main").read_text()), signal.SIGTERM)  # as stop_server: circus stops the workers
    except (OSError, ValueError) as err:
        log.error("cannot stop the server after a worker died: %s", err)
    return True


def report_dead_workers(run: Path, replaced: str) -> list[int]:
    """One look at the run's worker records: warn once about each worker whose process is gone (killed or crashed),
    saying what follows (``replaced``), and take its live gauges off ``/metrics``. Returns the pids reported now."""
    reported_now = []
    for record in (run / "workers").glob("[0-9]*"):
        if record.suffix:
            continue
        try:
            pid = int(record.read_text())
        except (OSError, ValueError):
            continue
        reported = record.with_name(f"{record.name}.died")
        if _alive(pid) or (reported.exists() and reported.read_text() == str(pid)):
            continue
        log.warning("worker %s (pid %d) died; %s", record.name, pid, replaced)
        reported.write_text(str(pid))
        drop_live_gauges(run, pid)
        reported_now.append(pid)
    return reported_now


def drop_live_gauges(run: Path, pid: int) -> None:
    """Take a dead worker's live gauges off ``/metrics``: the streams and requests it had open, the model versions it
    served (prometheus_client's multiprocess bookkeeping, whose ``live*`` gauges stay until told). Its counters stay:
    what it answered still counts."""
    from prometheus_client import multiprocess

    for _ in range(2):  # the replacement worker and the main process may both remove them: a file gone is done
        try:
            multiprocess.mark_process_dead(pid, str(run / "prometheus"))
            return
        except OSError:
            continue
