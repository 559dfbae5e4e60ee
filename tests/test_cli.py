"""The training CLI end to end: dry runs of both tasks on synthetic data, files, listing, and bad input."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from models.artifact import list_artifacts, load_artifact
from models.starts import KINDS, StartSpec
from training.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def stored_tag(out: str) -> str:
    return next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("stored: "))


QUICK = ("--epochs", "1", "--batch-size", "256")  # a real (stored) run in about a second


@pytest.fixture(autouse=True)
def cheap_baselines(monkeypatch, request):
    """Skip 1-NN DTW and ETS (their size caps at zero) except in tests that check them: they cost seconds."""
    if "strong_baselines" not in request.keywords:
        monkeypatch.setattr("training.baselines.DTW_MAX_CELLS", 0)
        monkeypatch.setattr("training.baselines.ETS_MAX_WINDOWS", 0)


@pytest.mark.strong_baselines
def test_classify_on_synthetic_stores_a_loadable_model_and_reports_dtw(capsys, tmp_path):
    code, out, err = run(capsys, "classify", "--dataset", "synthetic", "--name", "cli-clf", *QUICK, "--report", str(tmp_path))
    assert code == 0, err
    tag = stored_tag(out)
    assert "majority_class" in out and "dtw_1nn" in out and "accuracy" in out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["task"] == "classify" and metrics["model"] == tag
    assert set(metrics["test"]) == {"accuracy", "macro_f1"}
    assert set(metrics["baselines"]) == {"majority_class", "dtw_1nn"}
    assert set(metrics["baselines"]["dtw_1nn"]) == {"accuracy", "macro_f1"}
    assert isinstance(metrics["beats_baseline"], bool) and isinstance(metrics["warnings"], list)
    assert metrics["recipe"]["instance_norm"] == "sequence" and metrics["recipe"]["conv_stride"] == 1
    assert "\nserved: network (" in out  # what the stored model is, whatever --arch or --family asked for
    assert (tmp_path / "loss.png").stat().st_size > 0
    loaded = load_artifact(tag)
    assert loaded.card.task == "classify" and loaded.card.labels == ["sawtooth", "sine", "square"]
    assert loaded.card.data["train_fingerprint"]
    assert loaded.card.metrics["warnings"] == metrics["warnings"]
    assert loaded.card.training["recipe"] == metrics["recipe"]


@pytest.mark.strong_baselines
def test_forecast_on_synthetic_with_quantiles_reports_ets(capsys, tmp_path):
    code, out, err = run(
        capsys, "forecast", "--dataset", "synthetic", "--arch", "lstm", "--horizon", "6", "--quantiles", "0.1,0.9",
        "--eval", "last-horizon", "--name", "cli-fc", *QUICK, "--report", str(tmp_path),
    )
    assert code == 0, err
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"mae", "rmse", "smape", "mase"} <= set(metrics["test"])
    assert set(metrics["baselines"]) == {"naive", "seasonal_naive", "ets"}
    assert metrics["recipe"]["evaluation"] == "last-horizon"
    assert (tmp_path / "forecasts.png").exists()
    card = load_artifact(stored_tag(out)).card
    assert (card.horizon, card.lookback, card.quantiles) == (6, 96, [0.1, 0.5, 0.9])  # four seasons
    assert card.arch == "lstm" and card.data["season"] == 24 and "lookback" not in card.hparams  # stored once
    assert StartSpec(**card.hparams["start"]).kind in KINDS  # a start the model rebuilds (any kind, a combination too)
    assert {"q0.1_coverage", "q0.9_wql", "coverage_0.1_0.9", "mean_wql"} <= set(metrics["test"])
    assert {"q0.1_coverage", "coverage_0.1_0.9"} <= set(metrics["baselines"]["ets"])
    served = next(line for line in out.splitlines() if line.startswith("served: "))
    assert served.startswith("served: the start") and metrics["recipe"]["start"] in served


@pytest.mark.parametrize("value", [5.0, 0.0])
def test_a_constant_series_trains_and_forecasts_itself(capsys, tmp_path, value):
    # Its windows carry no variation: the fitted autoregression's system was singular ("error: Singular matrix").
    data = tmp_path / "flat.csv"
    data.write_text("value\n" + "\n".join([str(value)] * 150))
    code, out, err = run(capsys, "forecast", "--data", str(data), "--horizon", "6", "--name", "flat-fc", *QUICK,
                         "--report", str(tmp_path / "report"))
    assert code == 0, err
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["test"]["mae"] == 0.0 and metrics["beats_baseline"] and metrics["warnings"] == []
    loaded = load_artifact(stored_tag(out))
    with torch.inference_mode():
        forecast = loaded.module(torch.full((1, loaded.card.lookback, 1), value))
    torch.testing.assert_close(forecast, torch.full_like(forecast, value))


def test_a_glitch_in_the_data_is_named_in_the_warnings(capsys, tmp_path):
    # One 1e9 among monthly values near 100: every window that holds it forecasts far off, and the run says where.
    t = np.arange(150)
    values = 100 + 0.5 * t + 15 * np.sin(2 * np.pi * t / 12)
    values[100] = 1e9
    data = tmp_path / "glitch.csv"
    data.write_text("value\n" + "\n".join(f"{v:.6g}" for v in values))
    code, out, err = run(capsys, "forecast", "--data", str(data), "--horizon", "6", "--name", "glitch-fc", *QUICK,
                         "--no-save", "--report", str(tmp_path / "report"))
    assert code == 0, err
    warning = json.loads((tmp_path / "report" / "metrics.json").read_text())["warnings"][0]
    assert warning.startswith("values far from their neighbours") and "step 101 of 150: 1e+09, where" in warning
    assert f"warning: {warning}" in out


@pytest.mark.parametrize("task", ["classify", "forecast"])
def test_dry_run_stores_nothing(capsys, tmp_path, task):
    before = {info.tag for info in list_artifacts()}
    code, out, err = run(capsys, task, "--dataset", "synthetic", "--name", f"dry-{task}", "--dry-run", "--report", str(tmp_path))
    assert code == 0, err
    assert "not stored (--dry-run)" in out
    assert {info.tag for info in list_artifacts()} == before


# Every epoch count and batch size the CLI accepts trains, down to a single optimiser step.
SHORT_RUNS = [
    ("classify", 1, None),  # about ten batches an epoch: ten steps in all
    ("classify", 2, None),
    ("classify", 1, 100_000),  # a batch larger than the data: one step
    ("classify", 2, 100_000),  # one batch per epoch
    ("forecast", 1, None),
    ("forecast", 2, 100_000),
]


@pytest.mark.parametrize("task, epochs, batch_size", SHORT_RUNS)
def test_short_runs_train_to_the_end(capsys, tmp_path, task, epochs, batch_size):
    batch = ("--batch-size", str(batch_size)) if batch_size else ()
    code, out, err = run(capsys, task, "--dataset", "synthetic", "--name", "short-run", "--epochs", str(epochs), *batch,
                         "--hidden-size", "8", "--num-layers", "1", "--no-save", "--report", str(tmp_path))
    assert code == 0, err
    assert "not stored (--no-save)" in out
    recipe = json.loads((tmp_path / "metrics.json").read_text())["recipe"]
    assert recipe["epochs"] == epochs and recipe["batch_size"] == (batch_size or recipe["batch_size"])


@pytest.mark.parametrize("name", ["Bad Name", "a/b", "../x", "", "x" * 64])
@pytest.mark.parametrize("task", ["classify", "forecast"])
def test_a_bad_name_is_refused_before_any_work_and_nothing_is_written(capsys, tmp_path, monkeypatch, task, name):
    monkeypatch.chdir(tmp_path)  # where runs/, the default report folders' parent, would appear
    monkeypatch.setattr("training.cli.train_one", lambda args: pytest.fail("a run started"))
    with pytest.raises(SystemExit) as exited:
        main([task, "--dataset", "synthetic", "--name", name, "--epochs", "1", "--report", str(tmp_path / "report")])
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"seqserve-train {task}: error: argument --name: invalid model name {name!r}: a name is 1 to 63 lowercase "
        "letters, digits, '_', '-' or '.', starting and ending with a letter or digit"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("report, folder", [((), "runs/a..b-"), (("--report", "chosen"), "chosen")])
def test_a_good_names_report_lands_in_the_report_folder(capsys, tmp_path, monkeypatch, report, folder):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "classify", "--dataset", "synthetic", "--name", "a..b", "--dry-run", *report)
    assert code == 0, err
    written = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("report: "))
    assert written.startswith(folder) and (tmp_path / written / "metrics.json").exists()
    assert [path.name for path in tmp_path.iterdir()] == [folder.split("/")[0]]


def test_the_same_seed_repeats_a_cpu_run_exactly(capsys, tmp_path):
    tags = []
    for run_index in range(2):
        code, out, err = run(capsys, "classify", "--dataset", "synthetic", "--name", "seeded", "--seed", "7", *QUICK, "--report", str(tmp_path / str(run_index)))
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
        "--arch", "rnn", "--name", "csv-clf", *QUICK, "--report", str(tmp_path / "report"),
    )
    assert code == 0, err
    card = load_artifact(stored_tag(out)).card
    assert card.labels == ["run", "walk"] and card.features == ["ax", "ay"]


def test_list_shows_stored_models(capsys, tmp_path):
    run(capsys, "classify", "--dataset", "synthetic", "--name", "listed", *QUICK, "--report", str(tmp_path))
    code, out, _ = run(capsys, "list")
    assert code == 0
    assert out.splitlines()[0].split() == ["model", "task", "arch", "test", "metrics", "beats", "baselines", "created"]
    listed = next(line for line in out.splitlines() if line.startswith("listed:"))
    assert "classify" in listed and "accuracy=" in listed
    beats = load_artifact(listed.split()[0]).card.metrics["beats_baseline"]
    assert (" yes " if beats else " NO (see its warnings) ") in listed


def test_bad_data_is_a_clear_error_not_a_traceback(capsys, tmp_path):
    (tmp_path / "bad.csv").write_text("sample_id,step,x\n0,0,1.0\n")
    code, _, err = run(capsys, "classify", "--data", str(tmp_path / "bad.csv"), "--name", "bad", "--dry-run")
    assert code == 2
    assert err.startswith("error: ") and "bad.csv" in err and "label" in err
    assert "Traceback" not in err


def test_a_file_with_one_sequence_a_class_is_a_clear_error(capsys, tmp_path):
    (tmp_path / "two.csv").write_text("sample_id,step,x,label\n0,0,1.0,a\n0,1,2.0,a\n1,0,3.0,b\n1,1,4.0,b\n")
    code, _, err = run(capsys, "classify", "--data", str(tmp_path / "two.csv"), "--name", "two", "--dry-run")
    assert code == 2 and "Traceback" not in err
    assert "no class has 2 sequences, so none can be held out for testing; add sequences or give a test file" in err


def test_series_too_short_for_the_lookback_is_a_clear_error(capsys, tmp_path):
    pd.DataFrame({"value": np.arange(30.0)}).to_csv(tmp_path / "short.csv", index=False)
    code, _, err = run(capsys, "forecast", "--data", str(tmp_path / "short.csv"), "--horizon", "12", "--lookback", "24",
                       "--name", "short", "--dry-run")
    assert code == 2
    assert ("every series is too short for lookback 24 and horizon 12 under the last-horizon evaluation, which takes "
            "48 steps (a training window and the held-out part), and the longest has 30 steps; give a --horizon of at "
            "most 3, or a --lookback of at most 6") in err
    # A season longer than the series: the lookback was chosen from it, so the message names --season.
    code, _, err = run(capsys, "forecast", "--data", str(tmp_path / "short.csv"), "--horizon", "12", "--season", "1000",
                       "--name", "short", "--dry-run")
    assert code == 2
    assert ("give a shorter --season or a --lookback of at most 6 (the lookback was chosen to span one season of 1000 "
            "steps)") in err
    (tmp_path / "one.csv").write_text("value\n1.5\n")  # no horizon or lookback fits one step
    code, _, err = run(capsys, "forecast", "--data", str(tmp_path / "one.csv"), "--horizon", "2", "--name", "one",
                       "--dry-run")
    assert code == 2 and "and the longest has 1 step; the series need more steps" in err


def test_a_short_single_series_trains_with_a_lookback_chosen_to_fit(capsys, tmp_path):
    pd.DataFrame({"value": np.sin(np.arange(30.0))}).to_csv(tmp_path / "short.csv", index=False)
    code, out, err = run(capsys, "forecast", "--data", str(tmp_path / "short.csv"), "--horizon", "12", "--name", "short",
                         "--dry-run", "--report", str(tmp_path / "report"))
    assert code == 0, err
    recipe = json.loads((tmp_path / "report" / "metrics.json").read_text())["recipe"]
    assert (recipe["evaluation"], recipe["lookback"], recipe["lookback_source"]) == ("last-horizon", 6, "chosen from the data")


def test_a_stored_forecaster_holds_its_lookback_once(capsys, tmp_path):
    pd.DataFrame({"value": np.sin(np.arange(60.0)) + 2}).to_csv(tmp_path / "series.csv", index=False)
    code, out, err = run(capsys, "forecast", "--data", str(tmp_path / "series.csv"), "--horizon", "6", "--lookback", "12",
                         "--name", "lookback-once", *QUICK, "--report", str(tmp_path / "report"))
    assert code == 0, err
    card = load_artifact(stored_tag(out)).card
    assert card.lookback == 12 and "lookback" not in card.hparams and "lookback" not in card.training["recipe"]
    assert card.training["recipe"]["lookback_source"] == "given"


def test_unknown_dataset_lists_the_built_ins(capsys):
    code, _, err = run(capsys, "classify", "--dataset", "mnist", "--name", "x", "--dry-run")
    assert code == 2 and "gunpoint" in err and "japanesevowels" in err


@pytest.mark.parametrize("command", ["classify", "forecast", "list", "bench"])
def test_python_dash_m_and_help(command):
    result = subprocess.run([sys.executable, "-m", "training", command, "--help"], capture_output=True, text=True, check=True)
    assert "usage: seqserve-train" in result.stdout
    if command in ("classify", "forecast"):
        assert "--name" in result.stdout and "built-in datasets:" in result.stdout
