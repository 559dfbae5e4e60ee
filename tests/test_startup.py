"""Start-up and operations of a real ``bentoml serve``: bad start-ups exit at once with one line, unreadable
models are never skipped silently, /metrics cannot be inflated or wiped, a dead worker is reported.

One good server runs for the whole module; every failing start-up runs beside it, at the same time and
on the same BENTOML_HOME, which is also the "second start" that used to empty the running server's
/metrics. That home is private to this module: damaged models must not reach other tests' listings.
"""

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import bentoml
import httpx
import psutil
import pytest
import torch

from loadtests.server import ROOT, free_port, running_server
from models.artifact import CARD_FILE, WEIGHTS_FILE, list_artifacts
from service.config import Settings
from service.startup import check_servable
from service.workers import STOPPING_FOR_RESTART, check_workers, register_worker, report_dead_workers
from tests import tiny_models
from training.cli import main as train_cli

START_TIMEOUT = 60  # seconds before a failing start-up still running is killed: all start at once on a busy machine

# The main process skips its check, so only the worker meets the damaged model: the safety net's case.
WITHOUT_MAIN_CHECK = (
    "import sys, service.startup as s; s.check_servable = lambda settings: None; "
    "from bentoml_cli.cli import cli; sys.argv[0] = 'bentoml'; cli()"
)


def damage(path: Path) -> None:
    """Flip one byte: a JSON card is no longer UTF-8, weights no longer match their sha256."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A private BENTOML_HOME with a good classifier, one with corrupt weights and one with a damaged card."""
    home = tmp_path_factory.mktemp("startup-bentoml")
    suffix = uuid.uuid4().hex[:6]
    tags = {
        "good": tiny_models.store_classifier(f"good-{suffix}"),
        "weights": tiny_models.store_classifier(f"weights-{suffix}"),
        "card": tiny_models.store_classifier(f"card-{suffix}"),  # stored last: the newest model
    }
    for tag in tags.values():  # made in the tests' store, moved to the private one
        name = tag.split(":")[0]
        shutil.copytree(Path(bentoml.models.get(tag).path).parent, home / "models" / name)
        bentoml.models.delete(tag)
    for key, file in (("weights", WEIGHTS_FILE), ("card", CARD_FILE)):
        damage(home / "models" / tags[key].replace(":", "/") / file)
    return home, tags


def failing_starts(tags: dict[str, str]) -> dict[str, tuple[dict[str, str], list[str], str]]:
    """case -> (environment, command prefix, the one line it must print)."""
    serve = [sys.executable, "-m", "bentoml"]
    corrupt = f"model {tags['weights']} (in SEQSERVE_MODELS): weights are corrupt (sha256 does not match"
    cases = {
        "corrupt weights": ({"SEQSERVE_MODELS": tags["weights"]}, serve, corrupt),
        "unknown device": (
            {"SEQSERVE_DEVICE": "tpu"}, serve, "SEQSERVE_DEVICE: unknown device 'tpu'; use auto, cpu, cuda or cuda:N"
        ),
        "damaged card, named": (
            {"SEQSERVE_MODELS": tags["card"].split(":")[0]}, serve,
            f"model {tags['card']} (in SEQSERVE_MODELS): {CARD_FILE} is not valid JSON",
        ),
        "damaged card, newest": ({"SEQSERVE_MODELS": ""}, serve, f"model {tags['card']}: {CARD_FILE} is not valid JSON"),
        "worker count": ({"SEQSERVE_WORKERS": "two"}, serve, "SEQSERVE_WORKERS: must be a whole number, got 'two'"),
        "worker cannot load": (
            {"SEQSERVE_MODELS": tags["weights"], "SEQSERVE_WORKERS": "2"}, [sys.executable, "-c", WITHOUT_MAIN_CHECK],
            f"model {tags['weights']}: weights are corrupt (sha256 does not match",
        ),
    }
    if not torch.cuda.is_available():
        cases["cuda without CUDA"] = (
            {"SEQSERVE_DEVICE": "cuda"}, serve, "SEQSERVE_DEVICE: device 'cuda' was asked for but torch sees no CUDA GPU"
        )
    return cases


def run_all(starts: dict, home: Path, logs: Path) -> dict[str, tuple[int | None, str]]:
    """Start every case at once; case -> (exit status, or None if it was still running at the deadline, output)."""
    running = {}
    for case, (env, command, _) in starts.items():
        log = open(logs / f"{case}.log", "w")
        process = subprocess.Popen(
            [*command, "serve", "service.app:SeqServe", "--host", "127.0.0.1", "--port", str(free_port())],
            cwd=ROOT, env={**os.environ, "BENTOML_HOME": str(home), **env}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        running[case] = (process, log)
    results = {}
    deadline = time.monotonic() + START_TIMEOUT
    for case, (process, log) in running.items():
        try:
            code = process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            code = None
        log.close()
        results[case] = (code, (logs / f"{case}.log").read_text())
    return results


@pytest.fixture(scope="module")
def server(home, tmp_path_factory):
    """The good server (one worker), and the results of every failing start-up made while it ran."""
    store, tags = home
    logs = tmp_path_factory.mktemp("startup-logs")
    env = {"BENTOML_HOME": str(store), "SEQSERVE_MODELS": tags["good"], "SEQSERVE_WORKERS": "1"}
    with running_server(env, log=logs / "server.log") as url:
        httpx.post(f"{url}/classify", json={"instances": [{"sequence": [[1.0, 2.0, 3.0]]}]}).raise_for_status()
        starts = failing_starts(tags)
        yield url, logs / "server.log", starts, run_all(starts, store, logs)


@pytest.mark.parametrize(
    "case", ["corrupt weights", "cuda without CUDA", "unknown device", "damaged card, named", "damaged card, newest",
             "worker count", "worker cannot load"],
)
def test_a_bad_start_up_exits_at_once_with_one_line(server, case):
    _, _, starts, results = server
    if case not in starts:
        pytest.skip("this machine has CUDA")
    code, output = results[case]
    assert code is not None, f"still running after {START_TIMEOUT}s:\n{output}"
    assert code == 1, output
    lines = {line for line in output.splitlines() if line.startswith("seqserve: cannot start: ")}
    assert len(lines) == 1, output  # the worker's line and the main process' repeat of it are the same line
    assert lines.pop().startswith("seqserve: cannot start: " + starts[case][2]), output
    assert "Traceback" not in output


def test_a_second_start_on_the_same_home_leaves_the_running_servers_metrics(server):
    url, _, _, results = server
    assert all(code is not None for code, _ in results.values())  # they ran, and ended, beside this server
    metrics = httpx.get(f"{url}/metrics")
    assert metrics.status_code == 200
    assert 'bentoml_service_request_total{endpoint="/classify",http_response_code="200"' in metrics.text


def test_unknown_paths_share_one_metrics_label(server):
    url = server[0]
    paths = [f"/nothing-{uuid.uuid4().hex}" for _ in range(20)]
    for path in paths:
        assert httpx.get(url + path).status_code == 404
    assert httpx.get(f"{url}/models").status_code == 200
    text = httpx.get(f"{url}/metrics").text
    assert not any(path in text for path in paths)
    assert 'endpoint="/<unknown>",http_response_code="404"' in text
    assert 'endpoint="/models",http_response_code="200"' in text


def test_a_killed_worker_is_reported(server):
    url, log, _, _ = server
    (main,) = [p for p in psutil.process_iter(["cmdline"]) if url.rsplit(":", 1)[1] in (p.info["cmdline"] or [])
               and "serve" in p.info["cmdline"]]
    (worker,) = main.children()
    worker.send_signal(signal.SIGKILL)
    expected = f"worker 1 (pid {worker.pid}) died"  # said by the main process, or else by the replacement
    deadline = time.monotonic() + 30  # the main process looks every 2 s
    while expected not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.5)
    assert "WARNING" in next(line for line in log.read_text().splitlines() if expected in line)


@pytest.fixture
def two_containerized_workers(home, tmp_path):
    """A real `bentoml serve` of two workers marked BENTOML_CONTAINERIZED (no worker is replaced), once ready:
    (process, its log). Killed at the end if it is still running."""
    store, tags = home
    port = free_port()
    log = tmp_path / "server.log"
    env = {**os.environ, "BENTOML_HOME": str(store), "SEQSERVE_MODELS": tags["good"], "SEQSERVE_WORKERS": "2",
           "BENTOML_CONTAINERIZED": "true"}
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "service.app:SeqServe", "--host", "127.0.0.1",
                                    "--port", str(port)], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while len(psutil.Process(process.pid).children()) < 2 or not _ready(port):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        yield process, log
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_inside_a_container_a_dead_worker_stops_the_server_for_a_restart(two_containerized_workers):
    # Where BentoML starts no replacement (BENTOML_CONTAINERIZED), a pod of two served with one for good, its
    # probes answered by the one left. Now the server exits 1 with a line saying why, and the container is restarted.
    process, log = two_containerized_workers
    worker = psutil.Process(process.pid).children()[0]
    worker.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == 1
    last = log.read_text().strip().splitlines()[-1]
    assert last == f"seqserve: stopped: a worker (pid {worker.pid}) died, and {STOPPING_FOR_RESTART}"


def test_a_graceful_stop_is_no_worker_death(two_containerized_workers):
    # uvicorn ends a worker's graceful stop by raising SIGTERM again, so exit handlers never ran and the workers'
    # records outlived them: a look by the main process in that second warned of deaths and stopped with exit 1.
    process, log = two_containerized_workers
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0, log.read_text()[-2000:]
    assert "died" not in log.read_text()


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize("inside_container", [False, True])
def test_a_dead_worker_stops_the_server_only_where_no_one_replaces_it(tmp_path, inside_container, caplog):
    (tmp_path / "workers").mkdir()
    (tmp_path / "prometheus").mkdir()
    main = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # stands for bentoml serve
    (tmp_path / "main").write_text(str(main.pid))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / "workers" / "1").write_text(str(gone.pid))
    (tmp_path / "workers" / "2").write_text(str(os.getpid()))
    try:
        with caplog.at_level(logging.WARNING, logger="service.workers"):
            assert check_workers(tmp_path, inside_container) is inside_container
        if inside_container:
            assert main.wait(timeout=10) == -signal.SIGTERM
            assert (tmp_path / "stopped").read_text().startswith(f"seqserve: stopped: a worker (pid {gone.pid}) died")
        else:
            assert main.poll() is None and not (tmp_path / "stopped").exists()
            assert check_workers(tmp_path, inside_container) is False  # told once; circus replaces it
            assert f"worker 1 (pid {gone.pid}) died; circus will start another" in caplog.text
    finally:
        main.kill()
        main.wait()


# --- in-process: unreadable models in listings, and the worker record ---------------------------------------


@pytest.fixture
def old_unreadable_version():
    """A name whose older version has a damaged card and whose newest version is fine (in the tests' store)."""
    name = f"versions-{uuid.uuid4().hex[:6]}"
    old = tiny_models.store_classifier(name)
    damage(Path(bentoml.models.get(old).path) / CARD_FILE)
    time.sleep(1.1)  # cards record their time to the second; keep "newest" unambiguous
    new = tiny_models.store_classifier(name)
    yield name, old, new
    for tag in (old, new):
        bentoml.models.delete(tag)


def test_an_unreadable_model_is_listed_and_warned_about_not_skipped(old_unreadable_version, monkeypatch, caplog, capsys):
    name, old, new = old_unreadable_version
    listed = {info.tag: info for info in list_artifacts()}
    assert listed[old].card is None and CARD_FILE in listed[old].problem
    assert listed[new].card is not None

    monkeypatch.setenv("SEQSERVE_MODELS", name)  # the newest version, which loads
    with caplog.at_level(logging.WARNING, logger="service.startup"):
        check_servable(Settings.from_env())
    assert f"seqserve model {old} cannot be read ({CARD_FILE} is not valid JSON" in caplog.text

    assert train_cli(["list"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(old))
    assert "UNREADABLE" in row and "not valid JSON" in row


def test_the_main_process_reads_the_settings_once_and_checks_that_object(monkeypatch):
    from service import startup

    read, checked, closing = [], [], []

    def from_env(cls):
        read.append(object())  # a stand-in: only who gets which object matters here
        return read[-1]

    monkeypatch.setattr(Settings, "from_env", classmethod(from_env))
    monkeypatch.setattr(startup, "check_servable", checked.append)
    monkeypatch.setattr(startup, "serve_command", lambda: type("Serve", (), {"call_on_close": closing.append})())
    monkeypatch.setattr(startup, "open_run", lambda: "run")
    monkeypatch.setattr(startup, "watch_workers", lambda run: None)
    settings = startup.start_up()
    assert read == [settings] and checked == [settings] and len(closing) == 1

    monkeypatch.setattr(startup, "serve_command", lambda: None)  # a worker, or imported elsewhere: no check
    assert startup.start_up() is read[-1] and len(read) == 2 and checked == [settings]


def test_a_worker_replacing_a_dead_one_warns(tmp_path, caplog):
    (tmp_path / "workers").mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / "workers" / "3").write_text(str(gone.pid))
    with caplog.at_level(logging.WARNING, logger="service.workers"):
        register_worker(tmp_path, 3)
    assert f"worker 3 (pid {gone.pid}) died and was replaced by pid {os.getpid()}" in caplog.text
    assert (tmp_path / "workers" / "3").read_text() == str(os.getpid())


def test_a_dead_workers_live_gauges_leave_metrics_and_its_counters_stay(tmp_path, caplog):
    # A killed worker's open streams, requests in progress and served versions (multiprocess "live" gauges) kept
    # showing on /metrics: a version switch never looked complete, and open streams never fell back.
    (tmp_path / "workers").mkdir()
    prometheus = tmp_path / "prometheus"
    prometheus.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / "workers" / "1").write_text(str(gone.pid))
    (tmp_path / "workers" / "2").write_text(str(os.getpid()))
    for pid in (gone.pid, os.getpid()):
        for kind in ("gauge_livesum", "gauge_liveall", "counter", "histogram"):
            (prometheus / f"{kind}_{pid}.db").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="service.workers"):
        assert report_dead_workers(tmp_path, "circus will start another") == [gone.pid]
        assert report_dead_workers(tmp_path, "circus will start another") == []  # once
    assert caplog.text.count(f"worker 1 (pid {gone.pid}) died; circus will start another") == 1
    assert sorted(p.name for p in prometheus.iterdir()) == sorted(
        [f"counter_{gone.pid}.db", f"histogram_{gone.pid}.db"]
        + [f"{kind}_{os.getpid()}.db" for kind in ("gauge_livesum", "gauge_liveall", "counter", "histogram")])
