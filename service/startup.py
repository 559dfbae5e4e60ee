"""Start-up checks: ``bentoml serve`` either serves every model it should, or exits at once saying why.

BentoML imports ``service.app`` twice per server: once in the main ``bentoml serve`` process (to build
its configuration, before any worker exists) and once in each worker. Left to itself, circus restarts a
worker whose models fail to load every 10 s forever, with the port open and hanging. So:

* In the main process, :func:`start_up` reads the settings, resolves the device and loads every model
  that would be served (card, sha256 of the weights, the weights into the network, on the CPU). Any
  failure prints one line, ``seqserve: cannot start: <what>: <problem>``, and exits 1 before a worker
  or a socket exists. It also gives the run its own directory (``service.workers``).
* In a worker, :func:`stop_server_on_failure` is the safety net for what only a worker can hit (the
  store changed since the check, the GPU ran out of memory): it prints the same kind of line and stops
  the whole server, which then exits 1 instead of restarting the worker forever.
* Imported anywhere else (tests through ``TestClient``, ``bentoml build``), nothing is checked: errors
  surface as exceptions where the service is created.

Before any of this, importing ``service.framework`` checked that the framework internals seqserve relies on
are all there (the same one-line refusal when one is not).

Unreadable models: a model whose card cannot be read is logged with a WARNING naming it and why. When it
would be served (named in ``SEQSERVE_MODELS``, or the newest version of its name when no list is given)
the server refuses to start. Serving the next older version instead, or leaving the name out, would
change answers silently: clients asking for that name, or for the task's default model, would get a
different model than the operator trained last, and nothing but a log line would say so.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import contextmanager
from typing import Iterator

import bentoml

from models.artifact import ArtifactError, list_artifacts, load_artifact
from models.device import resolve_device
from service.config import Settings, SettingError
from service.framework import serve_command
from service.lanes import served_tags
from service.workers import close_run, current_run, open_run, register_worker, stop_server, watch_workers

log = logging.getLogger(__name__)


class CannotStart(Exception):
    """Why the server cannot start: ``what`` (a setting or a model) and ``problem``."""

    def __init__(self, what: str, problem: str):
        super().__init__(f"{what}: {problem}")
        self.what, self.problem = what, problem

    @property
    def line(self) -> str:
        return f"seqserve: cannot start: {self.what}: {self.problem}"


def start_up() -> Settings:
    """The settings ``service.app`` is built with; in ``bentoml serve``'s main process, also the start-up check.

    Called once, at import of ``service.app``, in every process that imports it: the one place that
    reads the settings; everything else is handed this object.
    """
    serve = serve_command()
    try:
        settings = Settings.from_env()
        if serve is not None:
            check_servable(settings)
    except (SettingError, CannotStart) as err:
        if serve is None:
            raise  # a worker, tests, `bentoml build`: the error surfaces where the service is created
        raise SystemExit(_describe(err).line) from None  # one line on stderr, exit status 1
    if serve is not None:
        run = open_run()
        serve.call_on_close(lambda: _finish_run(run))
        watch_workers(run)
        return settings
    run = current_run()
    index = bentoml.server_context.worker_index
    if run is not None and index is not None:
        register_worker(run, index)
    return settings


def check_servable(settings: Settings) -> None:
    """Resolve the device and load every model ``settings`` would serve; CannotStart if any fails."""
    started = time.perf_counter()
    try:
        resolve_device(settings.device)
    except ValueError as err:
        raise CannotStart("SEQSERVE_DEVICE", str(err)) from None

    newest: dict[str, str] = {}
    for info in list_artifacts():  # newest first
        name = info.tag.split(":")[0]
        newest.setdefault(name, info.tag)
        if info.readable:
            continue
        is_newest = newest[name] == info.tag
        if info.tag in settings.models or (name in settings.models and is_newest):
            continue  # loading it below fails, and that line names it
        if not settings.models and is_newest:
            raise CannotStart(
                f"model {info.tag}", f"{info.problem}; it is the newest version of {name}, so it would be "
                f"served: fix or delete it (bentoml models delete {info.tag}), or list the models to serve "
                "in SEQSERVE_MODELS"
            )
        log.warning("seqserve model %s cannot be read (%s); not served", info.tag, info.problem)

    try:
        tags = served_tags(settings.models)
    except ArtifactError as err:
        raise CannotStart("models", str(err)) from None
    if not tags:
        home = os.environ.get("BENTOML_HOME", "~/bentoml")
        raise CannotStart(
            "models", f"no seqserve model in the BentoML store ({home}); train one first, e.g. "
            "`seqserve-train classify --dataset japanesevowels --name japanesevowels-gru`"
        )
    for tag in tags:
        try:
            load_artifact(tag, "cpu")  # the device was checked above; a GPU is for the workers
        except ArtifactError as err:
            named = tag in settings.models
            raise _model_problem(tag, str(err), named) from None
    log.info("start-up check: %d model(s) load, in %.2fs", len(tags), time.perf_counter() - started)


@contextmanager
def stop_server_on_failure() -> Iterator[None]:
    """Around a worker's model loading: on failure, one line and the whole server stops (no restart loop).

    Outside a ``bentoml serve`` run (tests, other hosts of the ASGI app) the error propagates as usual.
    """
    try:
        yield
    except Exception as err:
        run = current_run()
        if run is None:
            raise
        line = _describe(err).line
        _say(line)
        if not stop_server(run, line):
            raise
        os._exit(1)  # no traceback and nothing to restart: the main process stops the others and exits 1


def _say(line: str) -> None:
    """``line`` on stderr in one write(2), newline included: workers failing together must not interleave."""
    sys.stderr.flush()
    try:
        os.write(sys.stderr.fileno(), f"{line}\n".encode())
    except (AttributeError, OSError, ValueError):  # stderr replaced by something without a file descriptor
        print(line, file=sys.stderr, flush=True)


def _model_problem(tag: str, message: str, named: bool) -> CannotStart:
    # ArtifactError messages open with the full tag ("name:version: problem"); name the model once.
    head, _, rest = message.partition(": ")
    same = ":" in head and (not tag or head.split(":")[0] == tag.split(":")[0])
    what, problem = (head, rest) if rest and same else (tag, message)
    where = " (in SEQSERVE_MODELS)" if named else ""
    return CannotStart(f"model {what}{where}", problem)


def _describe(err: Exception) -> CannotStart:
    if isinstance(err, CannotStart):
        return err
    if isinstance(err, SettingError):
        return CannotStart(err.name, err.problem)
    if isinstance(err, ArtifactError):
        return _model_problem("", str(err), named=False)
    return CannotStart("worker", f"{type(err).__name__}: {err}")


def _finish_run(run) -> None:
    reason = close_run(run)
    if reason:
        raise SystemExit(reason)  # a worker stopped the server: exit 1, its line again as the last one
