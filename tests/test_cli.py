"""The training CLI end to end: dry runs of both tasks on synthetic data, files, listing, and bad input."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from models.artifact import list_artifacts, load_artifact
from training.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def stored_tag(out: str) -> str:
    return next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("stored: "))


def test_classify_dry_run_on_synthetic_stores_a_loadable_model(capsys, tmp_path):
    code, out, err = run(capsys, "classify", "--dataset", "synthetic", "--name", "cli-clf", "--dry-run", "--report", str(tmp_path))
    assert code == 0, err
    tag = stored_tag(out)
    assert "majority_class" in out and "accuracy" in out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["task"] == "classify" and metrics["model"] == tag
    assert set(metrics["test"]) == {"accuracy", "macro_f1"}
    assert set(metrics["baselines"]["majority_class"]) == {"accuracy", "macro_f1"}
    assert (tmp_path / "loss.png").stat().st_size > 0
    loaded = load_artifact(tag)
    assert loaded.card.task == "classify" and loaded.card.labels == ["sawtooth", "sine", "square"]
    assert loaded.card.data["train_fingerprint"]


def test_forecast_dry_run_on_synthetic_with_quantiles(capsys, tmp_path):
    code, out, err = run(
        capsys, "forecast", "--dataset", "synthetic", "--arch", "lstm", "--horizon", "6", "--quantiles", "0.1,0.9",
        "--name", "cli-fc", "--dry-run", "--report", str(tmp_path),
    )
    assert code == 0, err
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"mae", "rmse", "smape", "mase"} <= set(metrics["test"])
    assert set(metrics["baselines"]) == {"naive", "seasonal_naive"}
    assert (tmp_path / "forecasts.png").exists()
    card = load_artifact(stored_tag(out)).card
    assert (card.horizon, card.lookback, card.quantiles) == (6, 24, [0.1, 0.5, 0.9])
    assert card.arch == "lstm" and card.data["season"] == 24


def test_the_same_seed_repeats_a_cpu_run_exactly(capsys, tmp_path):
    tags = []
    for run_index in range(2):
        code, out, err = run(capsys, "classify", "--dataset", "synthetic", "--name", "seeded", "--seed", "7", "--dry-run", "--report", str(tmp_path / str(run_index)))
        assert code == 0, err
        tags.append(stored_tag(out))
    first, second = (load_artifact(tag) for tag in tags)
    assert first.tag != second.tag  # a new version each run...
    assert first.card.weights_sha256 == second.card.weights_sha256  # ...with identical weights


def test_no_save_stores_nothing(capsys, tmp_path):
    before = len(list_artifacts())
    code, out, _ = run(capsys, "classify", "--dataset", "synthetic", "--name", "unsaved", "--dry-run", "--no-save", "--report", str(tmp_path))
    assert code == 0 and "not stored" in out
    assert len(list_artifacts()) == before


def test_classify_from_csv_files_with_string_labels(capsys, tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for sample in range(40):
        label = ["walk", "run"][sample % 2]
        for step in range(rng.integers(5, 12)):
            rows.append({"sample_id": sample, "step": step, "ax": rng.normal() + (sample % 2), "ay": rng.normal(), "label": label})
    frame = pd.DataFrame(rows)
    frame[frame.sample_id < 30].to_csv(tmp_path / "train.csv", index=False)
    frame[frame.sample_id >= 30].to_csv(tmp_path / "test.csv", index=False)
    code, out, err = run(
        capsys, "classify", "--data", str(tmp_path / "train.csv"), "--test-data", str(tmp_path / "test.csv"),
        "--arch", "rnn", "--name", "csv-clf", "--dry-run", "--report", str(tmp_path / "report"),
    )
    assert code == 0, err
    card = load_artifact(stored_tag(out)).card
    assert card.labels == ["run", "walk"] and card.features == ["ax", "ay"]


def test_list_shows_stored_models(capsys, tmp_path):
    run(capsys, "classify", "--dataset", "synthetic", "--name", "listed", "--dry-run", "--report", str(tmp_path))
    code, out, _ = run(capsys, "list")
    assert code == 0
    assert out.splitlines()[0].split() == ["model", "task", "arch", "test", "metrics", "created"]
    assert any(line.startswith("listed:") and "classify" in line and "accuracy=" in line for line in out.splitlines())


def test_bad_data_is_a_clear_error_not_a_traceback(capsys, tmp_path):
    (tmp_path / "bad.csv").write_text("sample_id,step,x\n0,0,1.0\n")
    code, _, err = run(capsys, "classify", "--data", str(tmp_path / "bad.csv"), "--name", "bad", "--dry-run")
    assert code == 2
    assert err.startswith("error: ") and "bad.csv" in err and "label" in err
    assert "Traceback" not in err


def test_series_too_short_for_the_lookback_is_a_clear_error(capsys, tmp_path):
    pd.DataFrame({"value": np.arange(30.0)}).to_csv(tmp_path / "short.csv", index=False)
    code, _, err = run(capsys, "forecast", "--data", str(tmp_path / "short.csv"), "--horizon", "12", "--name", "short", "--dry-run")
    assert code == 2
    assert "30 steps" in err and "needs at least" in err


def test_unknown_dataset_lists_the_built_ins(capsys):
    code, _, err = run(capsys, "classify", "--dataset", "mnist", "--name", "x", "--dry-run")
    assert code == 2 and "gunpoint" in err and "japanesevowels" in err


@pytest.mark.parametrize("command", ["classify", "forecast", "list"])
def test_python_dash_m_and_help(command):
    result = subprocess.run([sys.executable, "-m", "training", command, "--help"], capture_output=True, text=True, check=True)
    assert "usage: seqserve-train" in result.stdout
    if command != "list":
        assert "--name" in result.stdout and "built-in datasets:" in result.stdout
