"""``torchrun --nproc_per_node=2 -m training …`` for real, on CPU (gloo on 127.0.0.1): one stored model that
loads and serves, reported once, the same weights from the same seed; and a forecaster whose early stopping
every rank agrees on, with ETS on rank 0 only."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest

from models.artifact import list_artifacts, load_artifact
from tests.service_client import in_process

ROOT = Path(__file__).resolve().parent.parent
# Small enough for seconds per run on a busy 2-core machine; 1-NN DTW on synthetic still runs on rank 0.
TINY = ("--epochs", "2", "--batch-size", "16", "--hidden-size", "16", "--num-layers", "1")


def rendezvous_port() -> int:
    """A free port in 29600-29699 (the range this project's tests use for torch rendezvous)."""
    for port in range(29600, 29700):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port in 29600-29699 for the torch rendezvous")


def loopback_interface() -> str:
    """The name of the interface holding 127.0.0.1, so that gloo talks over loopback only."""
    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == "127.0.0.1" for a in addresses):
            return name
    return "lo"


def torchrun(*argv: str) -> subprocess.CompletedProcess:
    """Two training processes under torchrun on this machine, importing the code under test."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--rdzv-backend=c10d",
               f"--rdzv-endpoint=127.0.0.1:{rendezvous_port()}", "-m", "training", *argv]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GLOO_SOCKET_IFNAME": loopback_interface(), "OMP_NUM_THREADS": "1"}
    # BENTOML_HOME is inherited: the private store of tests/conftest.py.
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def versions(name: str) -> list[str]:
    return [info.tag for info in list_artifacts() if info.tag.split(":")[0] == name]


def test_two_processes_store_one_model_that_serves_and_the_same_seed_gives_the_same_weights(tmp_path):
    tags = []
    for run in ("first", "second"):
        done = torchrun("classify", "--dataset", "synthetic", "--name", "ddp-clf", "--seed", "7", *TINY,
                        "--report", str(tmp_path / run))
        out = done.stdout
        # Rank 0 alone prints the table and stores; rank 1 says nothing.
        assert out.count("stored: ") == 1 and out.count("report: ") == 1 and out.count("dtw_1nn") == 1
        assert "distributed: 2 processes, backend gloo" in done.stderr
        tags.append(next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("stored: ")))
        assert len(versions("ddp-clf")) == len(tags)  # one new version a run
        metrics = json.loads((tmp_path / run / "metrics.json").read_text())
        assert metrics["model"] == tags[-1] and "dtw_1nn" in metrics["baselines"]
    assert len(versions("ddp-clf")) == 2
    first, second = (load_artifact(tag) for tag in tags)
    assert first.card.training["processes"] == 2 and first.card.training["epochs_run"] == 2
    assert first.card.weights_sha256 == second.card.weights_sha256  # same seed, same weights

    steps = np.linspace(0, 6, 60)
    sequence = np.stack([np.sin(steps) for _ in first.card.features], axis=1).tolist()  # (T, F)
    with in_process({"SEQSERVE_MODELS": tags[0]}) as client:
        answer = client.post("/classify", json={"instances": [{"sequence": sequence, "model": tags[0]}]})
    assert answer.status_code == 200, answer.text
    assert answer.json()[0]["label"] in first.card.labels


def test_a_two_process_forecaster_takes_rank_0s_decision_on_the_networks_on_every_rank(tmp_path):
    # The rolling-origin validation decides whether the members train; a rank that decided otherwise
    # would wait in the members' collectives until the subprocess timeout.
    done = torchrun("forecast", "--dataset", "synthetic", "--horizon", "6", "--name", "ddp-fc", "--epochs", "6",
                    "--batch-size", "64", "--hidden-size", "16", "--num-layers", "1", "--members", "2",
                    "--no-save", "--report", str(tmp_path))
    assert done.stdout.count("report: ") == 1 and "ets" in done.stdout and "not stored (--no-save)" in done.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "ets" in metrics["baselines"] and metrics["recipe"]["validation"].startswith("rolling origin")
    assert set(metrics["recipe"]["validation_error"]) == {"start", "networks"}


def test_two_processes_train_a_short_run_with_the_batch_sized_to_the_data(tmp_path):
    # About ten batches an epoch on synthetic, split over two processes: five a rank, ten steps in all.
    done = torchrun("classify", "--dataset", "synthetic", "--name", "ddp-short", "--epochs", "2", "--hidden-size", "16",
                    "--num-layers", "1", "--no-save", "--report", str(tmp_path))
    assert done.stdout.count("report: ") == 1 and "not stored (--no-save)" in done.stdout
    assert json.loads((tmp_path / "metrics.json").read_text())["recipe"]["epochs"] == 2
