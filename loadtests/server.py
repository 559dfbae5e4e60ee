"""Start a server process on 127.0.0.1, wait until it is ready, and stop it by PID afterwards.

Used by the load-test runner, the benchmark and the tests, so every one of them starts and stops
servers the same way: in their own process group, bounded in time, nothing left behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
WORKER_MARK = "_bentoml_impl.worker"  # in the command line of every BentoML service worker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def worker_pids(server_pid: int) -> list[int]:
    """PIDs of the server's worker processes (every child process when none looks like a worker)."""
    marked, every = [], []
    for process in _children(server_pid):
        try:
            every.append(process.pid)
            if WORKER_MARK in " ".join(process.cmdline()):
                marked.append(process.pid)
        except psutil.Error:
            pass  # exited between listing and reading
    return sorted(marked or every)


@contextmanager
def started_process(
    command: list[str], *, port: int, ready_path: str = "/readyz", env: dict[str, str] | None = None,
    log: Path | None = None, timeout: float = 120.0, cwd: Path = ROOT,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run ``command`` in ``cwd`` (it must listen on 127.0.0.1:``port``); yield its URL, once ``ready_path`` answers,
    and the process."""
    output = open(log, "w") if log else subprocess.DEVNULL
    process = subprocess.Popen(
        command, cwd=cwd, env={**os.environ, **(env or {})}, stdout=output, stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so stopping it stops its workers too
    )
    url = f"http://127.0.0.1:{port}"
    where = f"; its output is in {log}" if log else ""
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{' '.join(command[:4])}… exited with code {process.returncode}{where}")
            try:
                if httpx.get(url + ready_path, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{' '.join(command[:4])}… was not ready within {timeout:.0f}s{where}")
            time.sleep(0.3)
        yield url, process
    finally:
        # circus gives each worker a process group of its own: note them, for the SIGKILL fallback.
        children = _children(process.pid)
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            for child in children:
                try:
                    child.kill()  # psutil checks it is still the same process (pid and start time)
                except psutil.Error:
                    pass
        if log:
            output.close()


@contextmanager
def running_process(command: list[str], *, port: int, **options) -> Iterator[str]:
    """``started_process`` for callers that need only the URL."""
    with started_process(command, port=port, **options) as (url, _):
        yield url


def serve_command(port: int) -> list[str]:
    return [sys.executable, "-m", "bentoml", "serve", "service.app:SeqServe", "--host", "127.0.0.1", "--port", str(port)]


@contextmanager
def started_server(env: dict[str, str] | None = None, log: Path | None = None, timeout: float = 120.0) -> Iterator[tuple[str, int]]:
    """A fresh ``bentoml serve`` of seqserve on 127.0.0.1; yields its base URL and its PID (its workers are its children)."""
    port = free_port()
    with started_process(serve_command(port), port=port, env=env, log=log, timeout=timeout) as (url, process):
        yield url, process.pid


@contextmanager
def running_server(env: dict[str, str] | None = None, log: Path | None = None, timeout: float = 120.0) -> Iterator[str]:
    """A fresh ``bentoml serve`` of seqserve on 127.0.0.1; yields its base URL."""
    with started_server(env, log, timeout) as (url, _):
        yield url
