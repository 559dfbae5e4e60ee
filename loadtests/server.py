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
from typing import Callable, Iterator

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


@contextmanager
def running_process(
    command: list[str], *, port: int, ready_path: str = "/readyz", env: dict[str, str] | None = None,
    log: Path | None = None, timeout: float = 120.0, on_start: Callable[[dict], None] | None = None,
) -> Iterator[str]:
    """Run ``command`` (which must listen on 127.0.0.1:``port``) and yield its URL once ``ready_path`` answers.

    ``on_start`` is told ``{"pid": …}``: the process, which leads its own process group (its workers).
    """
    output = open(log, "w") if log else subprocess.DEVNULL
    process = subprocess.Popen(
        command, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=output, stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so stopping it stops its workers too
    )
    if on_start:
        on_start({"pid": process.pid})
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
        yield url
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
def running_server(
    env: dict[str, str] | None = None, log: Path | None = None, timeout: float = 120.0,
    on_start: Callable[[dict], None] | None = None,
) -> Iterator[str]:
    """A fresh ``bentoml serve`` of seqserve on 127.0.0.1; yields its base URL."""
    port = free_port()
    command = [sys.executable, "-m", "bentoml", "serve", "service.app:SeqServe", "--host", "127.0.0.1", "--port", str(port)]
    with running_process(command, port=port, env=env, log=log, timeout=timeout, on_start=on_start) as url:
        yield url
