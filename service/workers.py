"""One directory per ``bentoml serve`` run, shared by its main process and its workers.

BentoML keeps the Prometheus multiprocess files in ``$BENTOML_HOME/prometheus_multiproc_dir`` and
empties that folder whenever a server starts, so a second ``bentoml serve`` on the same home (even
one that failed at once) emptied a running server's ``/metrics``. Each run gets its own directory::

    <run>/prometheus/   PROMETHEUS_MULTIPROC_DIR of this run's workers
    <run>/main          pid of the main process (circus' arbiter, the workers' parent)
    <run>/workers/<N>   pid of worker N while it runs; removed when it exits normally
    <run>/stopped       why a worker stopped the whole server

The main process makes it (:func:`open_run`) before BentoML starts the workers and removes it when
``bentoml serve`` ends (:func:`close_run`); the workers find it through ``SEQSERVE_RUN_DIR``.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

RUN_DIR_ENV = "SEQSERVE_RUN_DIR"


def open_run() -> Path:
    """Make this run's directory, point BentoML's Prometheus folder into it, and tell the workers where it is."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    run = Path(tempfile.mkdtemp(prefix="seqserve-run-"))
    (run / "workers").mkdir()
    (run / "main").write_text(str(os.getpid()))
    # BentoML's own hook (its pytest plugin sets it the same way): `serve` reads it after importing
    # the service, creates the folder and passes it to the workers as PROMETHEUS_MULTIPROC_DIR.
    BentoMLContainer.prometheus_multiproc_dir.set(str(run / "prometheus"))
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
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, someone else's
        return True
    return True


def register_worker(run: Path, index: int) -> None:
    """Record this worker's pid under its index; warn when the previous holder of the index died.

    A worker that exits normally (stop, reload) removes its record, so a record whose process is gone
    means that worker was killed or crashed and circus started this one in its place.
    """
    record = run / "workers" / str(index)
    pid = os.getpid()
    try:
        previous = int(record.read_text())
    except (OSError, ValueError):
        previous = None
    if previous is not None and previous != pid and not _alive(previous):
        log.warning("worker %d (pid %d) died and was replaced by pid %d", index, previous, pid)
    record.write_text(str(pid))

    def forget() -> None:
        try:
            if int(record.read_text()) == pid:
                record.unlink()
        except (OSError, ValueError):
            pass

    atexit.register(forget)


def stop_server(run: Path, reason: str) -> bool:
    """Ask this run's main process to stop every worker and exit, recording ``reason``; False if it cannot be reached.

    Only the worker's own parent is signalled, and only when it is the process that made ``run``.
    """
    (run / "stopped").write_text(reason)
    try:
        main = int((run / "main").read_text())
    except (OSError, ValueError):
        return False
    if main != os.getppid():
        return False
    os.kill(main, signal.SIGTERM)  # circus stops the workers, then `bentoml serve` returns
    return True
