"""The training package's parts: metrics against hand-computed values, the loop's early stopping, the
warning when a model does not beat its baseline, short series in a panel, the chosen lookback, the
config round trip through the card, and the benchmark command."""

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from models import ClassifierConfig, ForecasterConfig, create_model
from models.artifact import load_artifact
from training import datasets
from training.baselines import dtw_1nn
from training.classify import SHARPNESS_GRID, SMALL_SET_SEQUENCES, fit_sharpness, stratified_folds, train_classifier
from training.cli import build_parser, main, train_one
from training.data import SeriesCollection
from training.forecast import train_forecaster
from training.loop import TrainConfig, fit, one_cycle
from training.metrics import (compare_with_baselines, forecast_metrics, macro_f1, mase_scale,
                              majority_class_baseline, seasonal_naive_forecast, accuracy)
from training.types import NetworkOptions, RunResult
from training.windows import before_test, choose_lookback, last_horizon_split, long_enough, split_by_time

# ----------------------------------------------------------------------------- metrics, by hand


def test_accuracy_and_macro_f1_by_hand():
    y_true, y_pred = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0])
    assert accuracy(y_true, y_pred) == 0.6
    # class 0: tp 1, fp 1, fn 1 -> 0.5; class 1: tp 2, fp 1, fn 0 -> 0.8; class 2: 0 -> mean 1.3 / 3
    assert macro_f1(y_true, y_pred) == pytest.approx(1.3 / 3)
    # A class neither tested nor predicted does not count: a perfect model scores 1, not 0.75.
    assert macro_f1(np.array([0, 1, 2]), np.array([0, 1, 2])) == 1.0
    assert majority_class_baseline(np.array([1, 1, 0]), y_true)["accuracy"] == 0.4


def test_mase_smape_and_seasonal_naive_by_hand():
    train = np.array([[1.0], [3.0], [2.0], [4.0], [3.0]])  # lag-2 differences 1, 1, 1
    assert mase_scale(train, 2).tolist() == [1.0]
    assert mase_scale(train, 1).tolist() == [1.5]  # |2| + |1| + |2| + |1| over 4
    y_true, y_pred = np.array([[[2.0], [4.0]]]), np.array([[[3.0], [4.0]]])  # (N=1, H=2, K=1)
    metrics = forecast_metrics(y_true, y_pred, np.array([[2.0]]))
    assert metrics["mae"] == 0.5 and metrics["rmse"] == pytest.approx(np.sqrt(0.5))
    assert metrics["mase"] == 0.25  # MAE 0.5 over scale 2
    assert metrics["smape"] == pytest.approx(100 * (2 * 1 / 5) / 2)  # 40% on the first step, 0 on the second
    series = [np.arange(10.0)[:, None]]
    forecast = seasonal_naive_forecast(series, np.array([0]), np.array([6]), 3, 1, season=2)
    assert forecast[0, :, 0].tolist() == [4.0, 5.0, 4.0]


def test_compare_with_baselines_says_why():
    beats, warnings = compare_with_baselines("classify", {"accuracy": 0.3}, {"majority_class": {"accuracy": 0.39}})
    assert not beats
    assert warnings == ["the model does not beat its simplest baseline: test accuracy 0.300 against 0.390 for majority class"]
    beats, warnings = compare_with_baselines(
        "forecast", {"mase": 0.9}, {"naive": {"mase": 1.5}, "seasonal_naive": {"mase": 1.0}, "ets": {"mase": 0.8}})
    assert beats and warnings == ["the model does not reach the ETS baseline: test mase 0.900 against 0.800"]
    # A constant series: every forecast is perfect, and a perfect score cannot be beaten.
    assert compare_with_baselines("forecast", {"mase": 0.0}, {"naive": {"mase": 0.0}, "ets": {"mase": 0.0}}) == (True, [])


def test_dtw_1nn_takes_sequences_of_one_step_beside_longer_ones():
    # A (1, F) sequence transposed is C- and F-contiguous at once, the longer ones only F: numba refused the mix.
    rng = np.random.default_rng(0)
    train = [rng.normal(size=(1 + i % 7, 2)) + (i % 2) for i in range(20)]
    test = [rng.normal(size=(1 + i % 5, 2)) + (i % 2) for i in range(6)]
    labels = np.arange(20) % 2
    metrics, how = dtw_1nn(train, labels, test, np.arange(6) % 2)
    assert how == "full window" and 0.0 <= metrics["accuracy"] <= 1.0


# ----------------------------------------------------------------------------- the loop


def test_early_stopping_keeps_the_best_epoch():
    model = torch.nn.Linear(1, 1)
    val_losses = iter([5.0, 3.0, 1.0, 2.0, 2.5, 2.6, 2.7, 2.8])  # the first is the untrained model's
    seen = []

    def loss_fn(model, batch):
        if batch == "val":
            seen.append(float(model.weight.detach()))
            return torch.tensor(next(val_losses))
        return (model.weight - 5.0).pow(2).sum()

    config = TrainConfig(epochs=20, batch_size=1, patience=3, lr=0.1, progress=False)
    history = fit(model, 1, 1, lambda idx, is_train: "train" if is_train else "val", loss_fn, config)
    assert history.best_epoch == 2 and history.stopped_early and len(history.train_loss) == 5
    assert model.weight.item() == pytest.approx(seen[2])  # the weights of epoch 2, not of the last


def test_when_no_epoch_beats_the_untrained_model_on_validation_it_is_kept():
    model = torch.nn.Linear(1, 1)
    start = model.weight.item()
    val_losses = iter([1.0, 2.0, 3.0, 4.0])

    def loss_fn(model, batch):
        return torch.tensor(next(val_losses)) if batch == "val" else (model.weight - 5.0).pow(2).sum()

    config = TrainConfig(epochs=20, batch_size=1, patience=3, lr=0.1, progress=False)
    history = fit(model, 1, 1, lambda idx, is_train: "train" if is_train else "val", loss_fn, config)
    assert history.best_epoch == 0 and history.stopped_early and len(history.train_loss) == 3
    assert model.weight.item() == start


def test_without_validation_the_loop_runs_every_epoch_and_keeps_the_last():
    model = torch.nn.Linear(1, 1)
    config = TrainConfig(epochs=4, batch_size=1, patience=1, progress=False)
    history = fit(model, 1, 0, lambda idx, is_train: None, lambda m, b: m.weight.pow(2).sum(), config)
    assert len(history.train_loss) == 4 and history.best_epoch == 4 and not history.val_loss


def test_training_flushes_subnormal_floats_which_a_cpu_computes_slowly():
    """Vanishing gradients through long sequences reach subnormal floats; the loop flushes them to zero (a GRU
    forecaster's training step over 338 steps: 0.80 s with them, 0.19 s without)."""
    torch.set_flush_denormal(False)
    subnormal = torch.tensor([1e-40])
    assert (subnormal * 1.0).item() != 0.0
    model = torch.nn.Linear(1, 1)
    fit(model, 1, 0, lambda idx, is_train: None, lambda m, b: m.weight.pow(2).sum(),
        TrainConfig(epochs=1, batch_size=1, progress=False))
    assert (subnormal * 1.0).item() == 0.0


@pytest.mark.parametrize("total", [11, 20, 37, 1500])
def test_one_cycle_gives_torchs_one_cycle_values_wherever_that_schedule_trains(total):
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([weight], lr=3e-3)
    reference = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=total, pct_start=0.1)
    for step in range(total):
        group = optimizer.param_groups[0]
        assert one_cycle(step, total, 3e-3) == (group["lr"], group["betas"][0])
        optimizer.step()
        reference.step()


def test_one_cycle_is_defined_for_every_total_and_a_short_run_starts_at_the_peak():
    for total in range(1, 41):
        rates = [one_cycle(step, total, 1.0)[0] for step in range(total)]
        assert all(0 < rate <= 1 for rate in rates), total
        top = rates.index(max(rates))
        assert rates[top:] == sorted(rates[top:], reverse=True), total  # no rise after the top
        if total <= 10:
            assert rates[0] == 1.0, total
        if total >= 2:
            assert rates[-1] == pytest.approx(1 / 25e4), total


@pytest.mark.parametrize("epochs, batch_size, n_train", [
    (1, 1, 1),  # one step in all
    (1, 1, 10),  # ten steps in all: torch's OneCycleLR divided by zero there
    (2, 5, 25),  # ten steps over two epochs
    (1, 8, 3),  # a batch larger than the data
    (2, 3, 3),  # one batch per epoch
])
def test_short_runs_train(epochs, batch_size, n_train):
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=0.1, progress=False)
    history = fit(model, n_train, 0, lambda idx, is_train: None, lambda m, b: (m.weight - 5.0).pow(2).sum(), config)
    assert len(history.train_loss) == epochs and history.best_epoch == epochs
    # AdamW's first step moves a weight by about the rate: at least one step at the peak took it toward 5.
    assert model.weight.item() > 0.9 * config.lr


# ----------------------------------------------------------------------------- configs round-trip


def test_configs_round_trip_and_old_cards_load():
    config = ForecasterConfig(n_features=2, n_targets=1, horizon=3, skip_season=4)
    assert ForecasterConfig(**dataclasses.asdict(config)) == config
    old_card_hparams = {"n_features": 3, "n_classes": 2, "hidden_size": 8}  # written before the new fields
    assert ClassifierConfig(**old_card_hparams).conv_stride == 0
    model = create_model("gru_classifier", **old_card_hparams)
    assert model.front is None and model.instance_norm == "none"


# ----------------------------------------------------------------------------- panels of short series


def short_panel(lengths, seed=0):
    rng = np.random.default_rng(seed)
    series = [(10 + np.cumsum(rng.normal(0.5, 1.0, n))).astype(np.float32)[:, None] for n in lengths]
    return SeriesCollection(series, [f"T{i}" for i in range(len(lengths))], ["value"], [], None, "test:panel")


def test_choose_lookback_fits_most_short_series():
    assert choose_lookback([600] * 3, horizon=12, season=24, protocol="windows") == 96  # four seasons
    assert choose_lookback([140] * 3, horizon=12, season=12, protocol="windows") == 48  # 34 training windows
    assert choose_lookback([100] * 3, horizon=12, season=12, protocol="windows") == 24  # the least it takes
    assert choose_lookback([200] * 3, horizon=8, season=4, protocol="windows") == 16  # quarterly: four years
    assert choose_lookback([200] * 3, horizon=12, season=4, protocol="windows") == 24  # twice the horizon
    assert choose_lookback([200] * 3, horizon=8, season=1, protocol="windows") == 24  # no season: 24 steps
    lengths = list(range(15, 59))
    lookback = choose_lookback(lengths, horizon=6, season=1, protocol="last-horizon")
    assert lookback == int(np.percentile(np.array(lengths) - 12, 10))
    kept, dropped = long_enough(short_panel(lengths), "last-horizon", lookback=lookback, horizon=6)
    assert len(dropped) <= 0.1 * len(lengths) + 1 and len(kept.series) + len(dropped) == len(lengths)
    # One short series: 24 steps, all the room its validation and test horizons leave, would leave it one
    # training window; it keeps 16 where it can (36 - 2 * 6 - 9 + 1), but its window never gets shorter
    # than the horizon, nor than two seasons (what a seasonal smoother needs).
    assert choose_lookback([36], horizon=6, season=1, protocol="last-horizon") == 9
    assert len(before_test(short_panel([36]), lookback=9, horizon=6, protocol="last-horizon")) == 16
    assert choose_lookback([24], horizon=4, season=1, protocol="last-horizon") == 4
    assert choose_lookback([40], horizon=8, season=4, protocol="last-horizon") == 9
    assert choose_lookback([48], horizon=12, season=12, protocol="last-horizon") == 24  # not 12: two seasons
    assert choose_lookback([20], horizon=8, season=1, protocol="last-horizon") == 4  # below the floor already
    # A panel of 46 series of 30 years: 20 steps would leave every series one window, all at one origin in time.
    lookback = choose_lookback([30] * 46, horizon=5, season=1, protocol="last-horizon")
    assert lookback == 13 and len(before_test(short_panel([30] * 46), lookback=13, horizon=5,
                                              protocol="last-horizon")) == 46 * 8  # 8 origins each


def test_last_horizon_split_holds_out_the_last_horizon_of_every_series():
    panel = short_panel([20, 30])
    train, val, test = last_horizon_split(panel, lookback=4, horizon=6)
    assert test.start.tolist() == [14, 24] and test.series_index.tolist() == [0, 1]
    assert val.start.tolist() == [8, 18]
    assert (train.start + 6 <= np.array([8, 18])[train.series_index]).all()  # no training target in val or test
    np.testing.assert_array_equal(test.targets[1, :, 0], panel.series[1][24:, 0])


def test_a_panel_of_short_series_trains_and_counts_what_it_skips(tmp_path, caplog):
    panel = short_panel([8, 10, *range(15, 59)])  # two series too short for any window
    with caplog.at_level(logging.WARNING):
        result = train_forecaster(
            panel, name="panel", network=NetworkOptions(hidden_size=8, num_layers=1), device=torch.device("cpu"),
            config=TrainConfig(epochs=1, batch_size=64, progress=False), report_dir=tmp_path, horizon=6,
            quantiles=[], save=False, strong_baselines=False,
        )
    assert result.training["recipe"]["evaluation"] == "last-horizon"
    assert result.training["recipe"]["lookback_source"] == "chosen from the data"
    assert 3 <= result.training["recipe"]["lookback"] <= 24  # the bench's table shows it (the card holds it once)
    skipped = result.training["recipe"]["series_skipped"]
    assert skipped >= 2
    assert f"skipped {skipped} of 46 series too short" in caplog.text and "T0, T1" in caplog.text


def test_a_series_too_short_to_validate_the_networks_is_served_by_the_start_alone(tmp_path):
    t = np.arange(84)  # seven years of months: no origin leaves 32 training windows before it
    values = (100 + t + 20 * np.sin(2 * np.pi * t / 12)).astype(np.float32)[:, None]
    series = SeriesCollection([values], ["s"], ["value"], [], 12, "test")
    result = train_forecaster(
        series, name="short", network=NetworkOptions(hidden_size=8, num_layers=1), device=torch.device("cpu"),
        config=TrainConfig(progress=False), report_dir=tmp_path, horizon=12, quantiles=[0.1, 0.9], save=False,
        strong_baselines=False,
    )
    recipe = result.training["recipe"]
    assert recipe["validation"] == "none (too few windows): the start alone is the model"
    assert recipe["members"] == 1 and recipe["networks"] == "not used: no validation origin could show that they help"
    # Without an origin the band's width still comes from the windows nearest the test part.
    assert recipe["interval_calibration"] == "the start's errors on the latest quarter of the training windows"
    low, median, high = recipe["interval_factors"]
    assert median == 1.0 and (low, high) != (1.0, 1.0)  # the latest windows' errors moved the band


def test_four_years_of_months_get_a_band_that_widens_with_the_horizon_and_a_warning_that_it_rests_on_one_window(
        tmp_path):
    t = np.arange(48)  # one training window before the last horizon: its errors have no spread about their median
    values = ((100 + t) * (1 + 0.2 * np.sin(2 * np.pi * t / 12)) + np.random.default_rng(0).normal(0, 2, 48))
    series = SeriesCollection([values.astype(np.float32)[:, None]], ["s"], ["value"], [], 12, "test")
    result = train_forecaster(
        series, name="four-years", network=NetworkOptions(hidden_size=8, num_layers=1), device=torch.device("cpu"),
        config=TrainConfig(progress=False), report_dir=tmp_path, horizon=12, quantiles=[0.1, 0.5, 0.9], save=False,
        strong_baselines=False,
    )
    warning = ("the quantile band rests on 1 training window(s), too few to measure how far the forecasts stray: its "
               "width is a guess")
    assert any(warning in w for w in result.warnings)
    assert any(warning in w for w in json.loads((tmp_path / "metrics.json").read_text())["warnings"])
    assert result.test["q0.1_coverage"] < result.test["q0.5_coverage"] < result.test["q0.9_coverage"]  # not one line


# ----------------------------------------------------------------------------- never a silent failure


def test_a_model_that_does_not_beat_its_baseline_is_flagged_everywhere(capsys, caplog, tmp_path, monkeypatch):
    monkeypatch.setattr("training.baselines.DTW_MAX_CELLS", 0)
    # An untrained network (the optimiser never steps) on a balanced 3-class set: at best a coin toss.
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, closure=None: None)
    monkeypatch.setattr("training.classify.majority_class_baseline", lambda *a: {"accuracy": 0.99, "macro_f1": 0.99})
    with caplog.at_level(logging.WARNING):
        code = main(["classify", "--dataset", "synthetic", "--name", "weak", "--epochs", "1", "--batch-size", "256",
                     "--report", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "does not beat its simplest baseline" in caplog.text
    assert "warning: the model does not beat its simplest baseline" in out
    tag = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("stored: "))
    card = load_artifact(tag).card
    assert card.metrics["beats_baseline"] is False
    assert card.metrics["warnings"][0].startswith("the model does not beat its simplest baseline: test accuracy")


# ----------------------------------------------------------------------------- small training sets


def small_set(n_train: int = 13):
    """The first ``n_train`` synthetic training sequences (every class among them) and 20 test sequences."""
    train, test = datasets.load_classification("synthetic")
    subset = lambda ds, n, part: dataclasses.replace(ds, sequences=ds.sequences[:n], labels=ds.labels[:n], source=part)
    return subset(train, n_train, "test:small/train"), subset(test, 20, "test:small/test")


def test_stratified_folds_cover_every_row_once_and_deal_each_class_evenly():
    labels = np.array([0] * 7 + [1] * 5 + [2] * 2)
    folds = stratified_folds(labels, 4, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(14))
    assert sorted(len(f) for f in folds) == [3, 3, 4, 4]
    for c in range(3):
        counts = [int(np.sum(labels[f] == c)) for f in folds]
        assert max(counts) - min(counts) <= 1


@pytest.mark.parametrize("family, served, model_name", [
    ("ensemble", "ensemble of 4 networks", "gru_ensemble"),
    ("dtw_1nn", "dtw_1nn", "dtw_1nn"),
])
def test_a_small_set_model_trains_saves_loads_and_answers_as_trained(tmp_path, family, served, model_name):
    from models.streaming import NotStreamable, stream_for
    from service.inference import ClassifyPass

    train, test = small_set()
    config = TrainConfig(epochs=1, batch_size=8, max_batches=2, progress=False)
    result = train_classifier(train, test, name=f"small-{family}", network=NetworkOptions(hidden_size=8), config=config,
                              device=torch.device("cpu"), report_dir=tmp_path, strong_baselines=False, family=family)
    loaded = load_artifact(result.tag)
    assert loaded.card.model_name == model_name
    recorded = loaded.card.training["recipe"]["family"]
    assert (recorded["served"], recorded["why"]) == (served, f"asked for (--family {family})")
    assert list(recorded["training_set_accuracy"]) == ["networks" if family == "ensemble" else "dtw_1nn"]
    outputs = ClassifyPass(loaded).run_batch(test.sequences)  # the service's own path: pad, forward, softmax
    predicted = [int(probabilities.argmax()) for probabilities in outputs]
    assert np.mean(np.array(predicted) == test.labels) == result.test["accuracy"]
    if family == "dtw_1nn":
        assert loaded.card.hparams == {"n_features": 2, "n_classes": 3, "n_references": 13,
                                        "reference_length": max(len(s) for s in train.sequences),
                                        "sharpness": recorded_sharpness(recorded)}
        assert result.test["accuracy"] == 1.0  # the synthetic waves are far apart
        assert np.mean([p.max() for p in outputs]) > 0.9  # and its probabilities say so (0.43-0.8 at sharpness 1)
        assert "fitted to the leave-one-out answers" in recorded["probabilities"]
        stream_for(loaded.module)
    else:
        assert loaded.card.hparams["members"] == 4
        with pytest.raises(NotStreamable, match="ensemble of 4 networks"):
            stream_for(loaded.module)


def recorded_sharpness(family: dict) -> float:
    """The sharpness a DTW recipe's ``probabilities`` sentence names: one of SHARPNESS_GRID."""
    said = float(family["probabilities"].split("^ -")[1].split(",")[0])
    return next(s for s in SHARPNESS_GRID if f"{s:.3g}" == f"{said:.3g}")


def test_1nn_dtws_sharpness_is_the_one_its_leave_one_out_answers_score_best():
    # Two classes whose nearest distances differ by 10%: right 3 times in 4, a sharpness near log(3) / log(1.1)
    near, far = 1.0, 1.1
    distances = torch.tensor([[near, far], [far, near], [near, far], [near, far]] * 25, dtype=torch.float64)
    labels = np.array([0, 1, 0, 1] * 25)  # the last of every four is nearer the wrong class
    sharpness = fit_sharpness(distances, labels)
    assert 8 <= sharpness <= 16 and abs(np.log(3) / np.log(1.1) - sharpness) < 2.5
    # No miss: the least sharpness within SHARPNESS_TOLERANCE of the best, log(1 + 2^-s) <= 0.01, not the grid's end
    separable, every_right = torch.tensor([[1.0, 2.0], [2.0, 1.0]] * 20, dtype=torch.float64), np.array([0, 1] * 20)
    assert fit_sharpness(separable, every_right) == 2 ** 2.75 < max(SHARPNESS_GRID)
    # Left out: a sequence alone in its class (no leave-one-out distance to it), and one with an exact duplicate in
    # another class (distance 0: no sharpness fits that ratio; it made every answer near even).
    alone = torch.cat([separable, torch.tensor([[3.0, torch.inf]], dtype=torch.float64)])
    duplicate = torch.cat([separable, torch.tensor([[0.0, 1.0]], dtype=torch.float64)])
    assert fit_sharpness(alone, np.append(every_right, 1)) == fit_sharpness(duplicate, np.append(every_right, 1)) == 2 ** 2.75

def test_below_the_small_set_size_auto_serves_what_cross_validates_better_and_says_why(tmp_path):
    train, test = small_set()
    config = TrainConfig(epochs=1, batch_size=8, max_batches=2, progress=False)
    result = train_classifier(train, test, name="small-auto", network=NetworkOptions(hidden_size=8), config=config,
                              device=torch.device("cpu"), report_dir=tmp_path, save=False, strong_baselines=False)
    family = result.training["recipe"]["family"]
    scores = family["training_set_accuracy"]
    assert scores["dtw_1nn"] == 1.0 and scores["networks"] < 1.0  # one epoch of two batches learns little
    assert family["served"] == "dtw_1nn"
    assert family["why"] == (f"fewer than {SMALL_SET_SEQUENCES} training sequences: 4-fold accuracy of the networks {scores['networks']:.3f}, "
                             "leave-one-out accuracy of 1-NN DTW 1.000; 1-NN DTW is as high or higher")


def test_from_the_small_set_size_on_auto_trains_one_network(tmp_path):
    train, test = small_set(SMALL_SET_SEQUENCES)
    config = TrainConfig(epochs=1, batch_size=8, max_batches=2, progress=False)
    result = train_classifier(train, test, name="big", network=NetworkOptions(hidden_size=8), config=config,
                              device=torch.device("cpu"), report_dir=tmp_path, save=False, strong_baselines=False)
    assert result.training["recipe"]["family"] == {
        "served": "network", "why": f"{SMALL_SET_SEQUENCES} training sequences (cross-validation below {SMALL_SET_SEQUENCES})"}


# ----------------------------------------------------------------------------- the benchmark


def test_bench_on_synthetic_writes_a_table_and_stores_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("training.baselines.DTW_MAX_CELLS", 0)  # the table says "skipped"; DTW is tested in test_cli
    from models.artifact import list_artifacts

    before = {info.tag for info in list_artifacts()}
    output = tmp_path / "BENCH.md"
    args = build_parser().parse_args(["bench", "--datasets", "classify:synthetic", "--output", str(output), "--quiet"])
    from training import bench

    def quick(parsed):
        parsed.epochs, parsed.batch_size = 1, 256
        return train_one(parsed)

    assert bench.run(args, build_parser(), quick) == 0
    text = output.read_text()
    assert "| synthetic | 0 |" in text and "| skipped |" in text and "1-NN DTW" in text and "s/epoch" in text
    assert {info.tag for info in list_artifacts()} == before


def test_the_chance_an_exact_band_covers_its_level_falls_with_fewer_and_more_alike_test_windows():
    """A test part's coverage strays by chance: the exact band of an AR(1) almost always covers 80% +- 7 of
    many independent values, but one window of one step is either inside or not, and overlapping windows of
    a wandering series land inside less often than independent ones or longer test parts."""
    from training.bench import exact_band_chance

    assert exact_band_chance(2000, 1, 12, persistence=0.0) > 0.99
    assert exact_band_chance(1, 1, 1) == 0.0
    short_wandering = exact_band_chance(18, 1, 12)  # airline's test part: 18 windows of 12 months
    assert 0.2 < short_wandering < 0.6
    assert short_wandering < exact_band_chance(18, 1, 12, persistence=0.0)
    assert short_wandering < exact_band_chance(74, 1, 12) < exact_band_chance(74, 8, 12)  # longer; a panel
    assert exact_band_chance(18, 1, 12) == exact_band_chance(18, 1, 12)  # seeded: the table is reproducible


def test_the_forecast_summary_counts_bands_within_target_against_what_exact_bands_would():
    from training.bench import _forecast_summary

    def row(mase, ets, coverage, chance):
        return ["s", "0", "recipe", f"**{mase}**", "2.0", "1.5", ets, "yes", "yes", coverage, "0.800", "0.020",
                "0.030", chance, "0"]

    no_band = ["p", "0", "recipe", "**1.0**", "2.0", "1.5", "1.1", "yes", "yes", "skipped", "skipped", "skipped",
               "skipped", "n/a", "0"]  # a point forecaster (--quantiles none)
    text = _forecast_summary([row(0.7, "0.9", "0.812", "0.90"), row(0.9, "1.0", "0.699", "0.40"), no_band])
    assert "Mean MASE over the 3 rows with ETS: **0.867** against ETS's 1.000" in text
    assert "80% ± 7 points on 1 of 2 rows" in text and "would on 1.3 on average" in text
    assert "on all 2 with probability 0.36" in text


def test_a_forecast_row_reads_the_runs_band_and_test_windows():
    from training.bench import _row, exact_band_chance

    baselines = {"naive": {"mase": 2.0}, "seasonal_naive": {"mase": 1.5}, "ets": {"mase": 0.9, "coverage_0.1_0.9": 0.8, "mean_wql": 0.03}}
    recipe = {"evaluation": "windows", "lookback": 24, "season": 12, "transform": "log", "networks": "not used"}
    banded = RunResult(None, {"mase": 0.7, "coverage_0.1_0.9": 0.81, "mean_wql": 0.02}, baselines, Path("."),
                       training={"recipe": recipe, "seconds": 3}, data={"series": 2, "n_test_windows": 36})
    row = _row("forecast", "x", 0, banded, 12)
    assert row[3] == "**0.700**" and row[7:13] == ["yes", "yes", "0.810", "0.800", "0.020", "0.030"]
    assert row[13] == f"{exact_band_chance(18, 2, 12):.2f}"  # 36 windows over 2 series
    point = RunResult(None, {"mase": 0.7}, baselines, Path("."), training={"recipe": recipe}, data=banded.data)
    assert _row("forecast", "x", 0, point, 12)[13] == "n/a"


def test_bench_knows_every_built_in():
    from training.bench import _selected

    assert len(_selected("all")) == len(datasets.CLASSIFICATION_DATASETS) + len(datasets.FORECAST_DATASETS)
    assert _selected("synthetic") == [("classify", "synthetic"), ("forecast", "synthetic")]
    with pytest.raises(ValueError, match="unknown bench dataset 'mnist'"):
        _selected("mnist")


# ----------------------------------------------------------------------------- first start


def test_defaults_stream_each_models_progress_prefixed_by_its_name(capsys, monkeypatch):
    from training import defaults

    monkeypatch.setattr(defaults, "DEFAULT_RUNS", [["classify", "--dataset", "synthetic", "--name", "demo-clf", "--dry-run"]])
    assert defaults.main(["--force"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("[demo-clf] training.loop: epoch 1/1") for line in lines)
    assert any(line.startswith("[demo-clf] model ") for line in lines)
    assert lines[-1].startswith("== demo-clf (classify on synthetic): done in ")


def test_classification_data_warnings_say_what_the_test_scores_cannot():
    from training.classify import data_warnings
    from training.data import SequenceDataset
    seqs = [np.zeros((3, 1), np.float32) + i for i in range(5)]
    train = SequenceDataset(seqs, np.array([0, 0, 1, 1, 2]), ["a", "b", "c"], ["x"], "file:train.csv")
    test = SequenceDataset(seqs[:2], np.array([0, 1]), ["a", "b", "c"], ["x"], "file:test.csv")
    single, untested = data_warnings(train, test)
    assert single.startswith("1 of 3 classes have a single training sequence ('c')")
    assert untested.startswith("1 of 3 classes have no test sequence ('c')")
    assert data_warnings(train, train)[-1].startswith("the test set is the training set")
    balanced = SequenceDataset(seqs[:4], np.array([0, 0, 1, 1]), ["a", "b"], ["x"], "file:t.csv")
    assert data_warnings(balanced, SequenceDataset(seqs[:2], np.array([0, 1]), ["a", "b"], ["x"], "file:u.csv")) == []
    names = ["walking", "walking ", "Sitting", "sitting"]  # a spreadsheet's stray space, a capital
    twins = SequenceDataset(seqs[:4], np.array([0, 1, 2, 3]), names, ["x"], "file:t.csv")
    assert data_warnings(twins, twins)[0] == (
        "2 group(s) of labels differ only in case or surrounding spaces, so each is its own class: 'walking', "
        "'walking '; 'Sitting', 'sitting'; write each class one way if they are one")
