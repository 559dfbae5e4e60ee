"""The forecasting recipe's parts: classical starts as linear maps, the season of a cycle, the log and start
choice, calibrated intervals, quantile metrics, ETS's quantiles, and cards written before members existed or
before the lookback was stored once."""

import dataclasses
from statistics import NormalDist

import numpy as np
import pytest
import torch

from models import ForecasterConfig, create_model
from models.artifact import ModelCard, load_artifact, save_artifact
from models import starts as model_starts
from models.bands import NOISE_FLOOR, noise_units, residual_matrix
from models.starts import FITTED_KINDS, StartSpec, combination, min_lookback, start_weights
from training import baselines, starts
from training.data import DataError, SeriesCollection
from training.forecast import MAX_FOLDS, mirrored, networks_earn_their_place, plan_run, resolve_season
from training.metrics import quantile_metrics
from training.windows import before_test, fits, make_windows, rolling_origins, split_by_time, steps_needed

# ----------------------------------------------------------------------------- starts as linear maps


@pytest.mark.parametrize("spec", [StartSpec("mean"), StartSpec("seasonal_naive", 1), StartSpec("seasonal_naive", 12),
                                  StartSpec("smoothing", 1, 0.3), StartSpec("smoothing", 12, 0.5, 0.1, 0.9),
                                  StartSpec("smoothing", 4, 1.0, 0.0, 1.0),
                                  StartSpec("smoothing", 12, 0.5, 0.1, 0.9, season_fit="moving_average"),
                                  StartSpec("smoothing", 7, 0.3, season_fit="moving_average")])
def test_every_start_forecasts_a_constant_as_itself(spec):
    w = start_weights(spec, lookback=48, horizon=7)
    assert w.shape == (7, 48)
    np.testing.assert_allclose(w @ np.full(48, 3.5), 3.5, rtol=1e-5)


def test_seasonal_naive_repeats_the_last_season():
    x = np.arange(24, dtype=np.float64)
    np.testing.assert_allclose(start_weights(StartSpec("seasonal_naive", 4), 24, 6) @ x, [20, 21, 22, 23, 20, 21])


def test_smoothing_of_the_adjusted_window_continues_a_line_and_its_season_exactly():
    t = np.arange(36)
    season = np.tile([1.0, -1.0, 2.0, -2.0], 9)
    x = 5 + 0.5 * t + season
    w = start_weights(StartSpec("smoothing", 4, alpha=0.3, beta=0.0, phi=1.0), 36, 8)
    expected = 5 + 0.5 * np.arange(36, 44) + np.tile([1.0, -1.0, 2.0, -2.0], 2)
    np.testing.assert_allclose(w @ x, expected, atol=1e-4)


@pytest.mark.parametrize("season_fit", ["line", "moving_average"])
def test_both_season_fits_continue_a_line_and_its_season_exactly(season_fit):
    x = 5 + 0.5 * np.arange(40) + np.tile([1.0, -1.0, 2.0, -2.0], 10)
    w = start_weights(StartSpec("smoothing", 4, 0.3, 0.0, 1.0, season_fit=season_fit), 32, 8)
    np.testing.assert_allclose(w @ x[:32], x[32:], atol=1e-4)


def test_the_moving_average_season_is_not_bent_by_a_turn_in_the_level():
    # A recession inside the window: the level climbs, falls, climbs. A straight line through it leaves the
    # turn in the phase offsets; the centred moving average follows the turn and leaves the season alone.
    t = np.arange(48)
    offsets = np.array([3.0, 1.0, -1.0, -3.0, 0.5, -0.5, 2.0, -2.0, 1.5, -1.5, 0.0, 0.0])  # summing to zero
    x = (100 + 10 * np.sin(2 * np.pi * t / 40) + offsets[t % 12])[None, :]
    by_line = model_starts.line_and_season(x, 12)[2][0]
    by_average = model_starts._moving_average_season(x, 12)[0]
    assert np.abs(by_average - offsets).max() < 0.5 < np.abs(by_line - offsets).max()


def test_a_bad_start_is_refused_with_the_valid_kinds():
    with pytest.raises(ValueError, match="unknown start kind 'holt'; valid: mean, seasonal_naive, smoothing, linear"):
        StartSpec("holt")
    with pytest.raises(ValueError, match="unknown season_fit 'x11'; valid: line, moving_average"):
        StartSpec("smoothing", 12, 0.5, season_fit="x11")
    with pytest.raises(ValueError, match="needs a window of at least 24 steps"):
        start_weights(StartSpec("smoothing", 12, 0.5), lookback=20, horizon=3)


# ----------------------------------------------------------------------------- the season of a cycle


def _one_series(values, season=None):
    return SeriesCollection([np.asarray(values, np.float32)[:, None]], ["s"], ["value"], [], season, "test")


def test_a_cycle_of_varying_length_is_its_period_not_a_multiple():
    # ~10-step cycles whose length wanders between 9 and 11, as in annual counts of a population cycle
    rng = np.random.default_rng(3)
    lengths = rng.integers(9, 12, size=14)
    phase = np.concatenate([np.linspace(0, 2 * np.pi, n, endpoint=False) for n in lengths])
    values = 1000 + 800 * np.sin(phase) + rng.normal(0, 60, len(phase))
    season, source = resolve_season(None, _one_series(values), horizon=10)
    assert 9 <= season <= 11 and source == "inferred from autocorrelation"


def test_a_season_with_a_strong_half_season_is_the_whole_season():
    rng = np.random.default_rng(0)
    t = np.arange(240)
    values = 50 + 10 * np.sin(2 * np.pi * t / 12) + 6 * np.sin(2 * np.pi * t / 6) + rng.normal(0, 1, len(t))
    assert resolve_season(None, _one_series(values), horizon=12) == (12, "inferred from autocorrelation")


def test_noise_has_no_season():
    values = np.random.default_rng(1).normal(size=300)
    assert resolve_season(None, _one_series(values), horizon=12) == (1, "none found")


def test_short_random_walks_rarely_have_a_season():
    """At lags held fewer than three times, noise alone correlates past 0.3 somewhere: with lags held twice, a
    season was found in 67 of 300 walks of 131 steps (at lags such as 37, 46, 49), with three times in 20."""
    found = [resolve_season(None, _one_series(np.random.default_rng(seed).normal(size=131).cumsum()), horizon=10)[0]
             for seed in range(100)]
    assert sum(season > 1 for season in found) <= 10
    assert max(found) <= 131 * 0.8 / 3


@pytest.mark.parametrize("length", [55, 80])
def test_a_season_on_few_pairs_must_stand_out_of_the_noise(length):
    """On 55 steps 0.3 is less than two standard errors of white noise's autocorrelation: without the
    significance check a season was found in 83 of 300 random walks of 55 steps, 55 of 300 of 80."""
    found = [resolve_season(None, _one_series(np.random.default_rng(seed).normal(size=length).cumsum()), horizon=5)[0]
             for seed in range(100)]
    assert sum(season > 1 for season in found) <= 3


@pytest.mark.parametrize("season", [4, 7])
def test_a_clear_season_on_a_short_series_is_still_found(season):
    t = np.arange(55)
    found = [resolve_season(None, _one_series(0.5 * np.random.default_rng(seed).normal(size=55).cumsum()
                                              + 3 * np.sin(2 * np.pi * t / season)), horizon=5)[0]
             for seed in range(20)]
    assert found == [season] * 20


def test_a_panels_season_weighs_its_series_pairs_together():
    """Ten short series agreeing on a weak season: each alone is within noise's reach, together they are not."""
    t = np.arange(40)
    panel = [(0.5 * np.random.default_rng(seed).normal(size=40).cumsum() + 0.6 * np.sin(2 * np.pi * t / 5))
             .astype(np.float32)[:, None] for seed in range(10)]
    alone = [resolve_season(None, _one_series(series[:, 0]), horizon=4)[0] for series in panel]
    together = SeriesCollection(panel, [f"s{i}" for i in range(10)], ["value"], [], None, "test")
    assert sum(season == 5 for season in alone) < 10 and resolve_season(None, together, horizon=4)[0] == 5


def test_a_smooth_series_with_a_long_season_is_that_season_not_lag_2():
    """Differences of a smooth series correlate most at the shortest lags: lag 2 is not a peak of that decay."""
    rng = np.random.default_rng(0)
    t = np.arange(48 * 60)
    smooth_noise = np.convolve(rng.normal(size=len(t) + 11), np.ones(12) / 12, mode="valid")
    values = 100 + 20 * np.sin(2 * np.pi * t / 48) + 4 * smooth_noise
    assert resolve_season(None, _one_series(values), horizon=48) == (48, "inferred from autocorrelation")


# ----------------------------------------------------------------------------- the start and the log


def _train_windows(values: np.ndarray, lookback: int = 48, horizon: int = 12):
    return before_test(_one_series(values), lookback=lookback, horizon=horizon, protocol="windows")


def test_noise_around_a_level_starts_from_a_level_without_a_season_or_trend():
    w = _train_windows(100 + np.random.default_rng(0).normal(size=300))
    chosen = starts.choose_start(w, 1, season=12, allow_log=True)
    for spec in _parts(chosen["start"]):
        assert spec.kind == "mean" or (spec.kind == "smoothing" and spec.season == 1 and spec.alpha <= 0.1)
    weights = chosen["weights"]  # (H, L): every step ahead forecasts the same level
    assert np.abs(weights - weights[0]).max() < 0.01 and np.allclose(weights.sum(axis=1), 1, atol=1e-4)
    assert chosen["errors"]["none: mean"] < chosen["errors"]["none: seasonal_naive"]


def _parts(spec) -> list:
    """A start's parts: itself, or a combination's components."""
    return [part for _, part in spec.components()] if spec.kind == "combination" else [spec]


def test_a_combination_is_the_average_of_its_parts_and_is_stored_with_the_weights():
    specs = [StartSpec("seasonal_naive", 12), StartSpec("smoothing", 12, 0.3, 0.0, 0.9)]
    combined = combination([(0.25, specs[0]), (0.75, specs[1])])
    assert combined.describe() == ("average of 0.25 x seasonal naive (lag 12); 0.75 x exponential smoothing "
                                   "of the season-12-adjusted window (alpha 0.3, trend beta 0 phi 0.9)")
    assert StartSpec(**combined.to_dict()) == combined and min_lookback(combined) == 24
    weights = 0.25 * start_weights(specs[0], 48, 12) + 0.75 * start_weights(specs[1], 48, 12)
    model = create_model("gru_forecaster", n_features=1, n_targets=1, horizon=12, lookback=48,
                         start=combined.to_dict()).eval()
    assert "start_weights" in model.state_dict()
    model.start_weights.copy_(torch.from_numpy(weights))
    x = np.random.default_rng(0).normal(5, 1, size=(2, 48, 1)).astype(np.float32)
    with torch.inference_mode():
        out = model(torch.from_numpy(x))[..., 0, 0].numpy()
    np.testing.assert_allclose(out, x[..., 0] @ weights.T, rtol=1e-4)


def test_the_classical_average_takes_one_start_of_each_trend_family_with_the_best_ones_season():
    def entry(error, spec):
        return (error, spec, None)
    ranked = [entry(0.10, StartSpec("smoothing", 12, 0.2, 0.0, 1.0)), entry(0.11, StartSpec("smoothing", 12, 0.3, 0.0, 1.0)),
              entry(0.12, StartSpec("smoothing", 1, 0.5, 0.0, 0.0)),  # no season taken out: passed over
              entry(0.13, StartSpec("smoothing", 12, 0.5, 0.1, 1.0)), entry(0.20, StartSpec("seasonal_naive", 12)),
              entry(0.30, StartSpec("smoothing", 12, 0.5, 0.1, 0.9)), entry(0.40, StartSpec("smoothing", 12, 0.5, 0.0, 0.0))]
    assert [starts.trend_family(s) for _, s, _ in ranked] == ["linear", "linear", "no_trend", "linear", "unsmoothed",
                                                              "damped", "no_trend"]
    chosen = starts.best_of_each_family(ranked, 3)
    assert [e for e, _, _ in chosen] == [0.10, 0.20, 0.30]  # linear, unsmoothed, damped: three assumptions
    assert [e for e, _, _ in starts.best_of_each_family(ranked, 5)] == [0.10, 0.20, 0.30, 0.40]


def test_seasonal_windows_are_scored_in_their_seasonal_change_and_others_in_their_spread():
    t = np.arange(48, dtype=np.float64)
    trend_and_season = 5 + 0.5 * t + np.sin(2 * np.pi * t / 12)
    noise = np.random.default_rng(0).normal(0, 1, 48)
    windows = np.stack([np.stack([trend_and_season, noise], axis=-1), np.stack([noise, trend_and_season], axis=-1)])
    unit = starts.scoring_scale(windows, season=12)  # (2 windows, 48 steps, 2 channels) -> (2, 1, 2)
    assert unit.shape == (2, 1, 2)
    # Over one season the trend's change is 12 steps of 0.5, whatever the season's shape; noise's is its own.
    np.testing.assert_allclose(unit[0, 0, 0], 6.0)
    np.testing.assert_allclose(unit[0, 0, 1], np.abs(noise[12:] - noise[:-12]).mean())
    np.testing.assert_allclose(unit[1, 0, ::-1], unit[0, 0])
    # Without a season, or in a window no longer than one, the unit is the window's spread, trend included.
    np.testing.assert_allclose(starts.scoring_scale(windows, season=1), windows.std(axis=1, keepdims=True))
    np.testing.assert_allclose(starts.scoring_scale(windows[:, :12], season=12),
                               windows[:, :12].std(axis=1, keepdims=True))
    # A season that repeats (almost) exactly barely changes: its unit stays a share of its spread, so that it
    # cannot outweigh every other window; a flat window's is a millionth of its level.
    pure = np.tile(np.sin(2 * np.pi * np.arange(12) / 12), 4)[None, :, None]
    np.testing.assert_allclose(starts.scoring_scale(pure, season=12),
                               starts.MIN_CHANGE_SHARE * pure.std(axis=1, keepdims=True))
    np.testing.assert_allclose(starts.scoring_scale(np.full((1, 48, 1), 7.0), season=12), 1e-6 * (7.0 + 1e-6 * 8))  # unit 8


def test_the_start_is_chosen_by_its_error_in_the_scoring_unit():
    t = np.arange(120, dtype=np.float64)
    series = 50 + 0.3 * t + 5 * np.sin(2 * np.pi * t / 12) + np.random.default_rng(1).normal(0, 1, 120)
    windows = make_windows(_one_series(series, 12), lookback=48, horizon=12)
    chosen = starts.choose_start(windows, 1, season=12, allow_log=False)
    assert chosen["autoregression"].startswith("not a candidate")  # so the error is the classical average's
    errors = starts.start_errors(windows, 1, "none", chosen["weights"])  # in each window's standard deviations
    spread = windows.inputs.astype(np.float64).std(axis=1, keepdims=True)
    in_unit = np.abs(errors * spread / starts.scoring_scale(windows.inputs, 12)).mean()
    assert chosen["error"] == pytest.approx(in_unit, rel=1e-4)
    assert chosen["error"] != pytest.approx(np.abs(errors).mean(), rel=1e-2)


def test_a_season_growing_with_a_trend_is_modelled_in_logs():
    rng = np.random.default_rng(0)
    t = np.arange(240)
    level = 10 * np.exp(0.01 * t)
    values = level * (1 + 0.3 * np.sin(2 * np.pi * t / 12)) * np.exp(rng.normal(0, 0.02, len(t)))
    w = _train_windows(values)
    chosen = starts.choose_start(w, 1, season=12, allow_log=True)
    # The log makes the growing season a fixed one: its smoother is three times closer than without.
    assert chosen["errors"]["log: smoothing"] < chosen["errors"]["none: smoothing"] / 2
    # Either the autoregression (averaged with the classical starts, never alone) or the log's smoother.
    kinds = [part.kind for part in _parts(chosen["start"])]
    assert "linear" in kinds or (chosen["transform"], chosen["start"].season) == ("log", 12)
    assert "log: smoothing" not in starts.choose_start(w, 1, season=12, allow_log=False)["errors"]


def test_a_cycle_of_varying_length_starts_from_a_fitted_autoregression():
    rng = np.random.default_rng(3)
    phase = np.concatenate([np.linspace(0, 2 * np.pi, n, endpoint=False) for n in rng.integers(9, 12, size=40)])
    values = 1000 + 800 * np.sin(phase) + rng.normal(0, 60, len(phase))
    w = _train_windows(values, lookback=30, horizon=10)
    chosen = starts.choose_start(w, 1, season=10, allow_log=False)
    assert "linear" in [part.kind for part in _parts(chosen["start"])] and chosen["weights"].shape == (10, 30)
    model = create_model("gru_forecaster", n_features=1, n_targets=1, horizon=10, lookback=30,
                         start=chosen["start"].to_dict())
    assert "start_weights" in model.state_dict()  # fitted, so stored with the weights


def test_the_autoregression_needs_as_many_windows_as_weights():
    rng = np.random.default_rng(3)
    phase = np.concatenate([np.linspace(0, 2 * np.pi, n, endpoint=False) for n in rng.integers(9, 12, size=40)])
    values = 1000 + 800 * np.sin(phase) + rng.normal(0, 60, len(phase))
    series = _one_series(values[:60])  # the same cycle, 60 steps

    def autoregression_scored(lookback: int) -> bool:
        windows = make_windows(series, lookback=lookback, horizon=10)
        return "none: linear" in starts.choose_start(windows, 1, season=10, allow_log=False)["errors"]

    # Lookback 30: 21 windows, 5 held out, 16 to fit 30 weights per step ahead. No autoregression in the start.
    few = make_windows(series, lookback=30, horizon=10)
    assert (~starts.latest_share(few)).sum() == 16
    chosen = starts.choose_start(few, 1, season=10, allow_log=False)
    assert not autoregression_scored(30) and "linear" not in [part.kind for part in _parts(chosen["start"])]
    assert chosen["autoregression"] == "not a candidate: 16 windows to fit 30 weights per step ahead"
    # The boundary: lookback 22 leaves 22 windows to fit 22 weights, lookback 23 leaves 21 for 23.
    assert autoregression_scored(22) and not autoregression_scored(23)


def test_a_fresh_forecaster_forecasts_its_start_in_the_series_own_scale():
    spec = StartSpec("smoothing", 12, alpha=0.3, beta=0.1, phi=0.9)
    model = create_model("gru_forecaster", n_features=1, n_targets=1, horizon=12, lookback=48, transform="log",
                         start=spec.to_dict(), members=2, hidden_size=8).eval()
    x = np.exp(np.random.default_rng(0).normal(3, 0.3, size=(3, 48)))
    with torch.inference_mode():
        out = model(torch.from_numpy(x[..., None].astype(np.float32)))[..., 0, 0].numpy()  # (B, H)
    expected = np.exp(np.log(x) @ start_weights(spec, 48, 12).T.astype(np.float64))
    np.testing.assert_allclose(out, expected, rtol=1e-4)


def test_a_mirrored_window_falls_where_it_rose_and_keeps_its_covariates():
    t = np.arange(12, dtype=np.float32)
    inputs = np.stack([np.stack([10 + t[:8], 100 + t[:8]], axis=-1)] * 2)  # (2, 8, 2): target, covariate
    targets = np.stack([(10 + t[8:])[:, None]] * 2)  # (2, 4, 1)
    flip = np.array([True, False])
    x, y = mirrored(inputs, targets, 1, "none", flip)
    centre = inputs[0, :, 0].mean()  # 13.5
    np.testing.assert_allclose(x[0, :, 0], 2 * centre - inputs[0, :, 0])  # 17 ... 10: a fall
    np.testing.assert_allclose(y[0, :, 0], 2 * centre - targets[0, :, 0])
    np.testing.assert_array_equal(x[0, :, 1], inputs[0, :, 1])  # covariates as they were
    np.testing.assert_array_equal(x[1], inputs[1])  # an unmarked window as it was
    positive, _ = mirrored(np.exp(inputs / 10), np.exp(targets / 10), 1, "log", flip)  # in logs: still positive
    assert (positive > 0).all()
    np.testing.assert_allclose(10 * np.log(positive[0, :, 0]), x[0, :, 0], rtol=1e-5)
    twice = mirrored(*mirrored(inputs, targets, 1, "none", flip), 1, "none", flip)
    np.testing.assert_allclose(twice[0], inputs, rtol=1e-6)


# ----------------------------------------------------------------------------- calibrated intervals


def test_intervals_from_the_starts_errors_cover_their_share_of_new_data():
    rng = np.random.default_rng(0)
    t = np.arange(2400)
    values = 100 + np.cumsum(rng.normal(0, 1, len(t))) + 5 * np.sin(2 * np.pi * t / 12)
    collection = _one_series(values)
    train, _, test = split_by_time(collection, lookback=48, horizon=12)
    chosen = starts.choose_start(train, 1, season=12, allow_log=False)
    offsets = starts.interval_offsets(train, 1, chosen, [0.1, 0.5, 0.9])
    assert offsets.shape == (12, 1, 3) and np.all(np.diff(offsets, axis=-1) > 0) and np.all(offsets[..., 1] == 0)
    model = create_model("gru_forecaster", n_features=1, n_targets=1, horizon=12, quantiles=[0.1, 0.9], lookback=48,
                         start=chosen["start"].to_dict(), quantile_offsets=offsets.tolist()).eval()
    if chosen["start"].kind in FITTED_KINDS:
        model.start_weights.copy_(torch.from_numpy(chosen["weights"]))
    with torch.inference_mode():
        predicted = model(torch.from_numpy(test.inputs)).numpy()  # (N, H, 1, 3)
    metrics = quantile_metrics(test.targets, predicted, model.quantiles)
    assert abs(metrics["coverage_0.1_0.9"] - 0.8) < 0.07
    assert abs(metrics["q0.1_coverage"] - 0.1) < 0.05 and abs(metrics["q0.9_coverage"] - 0.9) < 0.05


def test_a_panels_band_is_wide_for_its_noisy_series_and_narrow_for_its_smooth_ones():
    # Two series of one panel: a trend with little noise and one with much. In standard deviations their windows
    # look alike, so one band in those units covers the smooth series' values far too widely and the noisy one's
    # too narrowly; in units that grow with each window's noise (models.bands) each gets its own width.
    rng = np.random.default_rng(0)
    t = np.arange(600)
    smooth = 100 + 0.5 * t + rng.normal(0, 0.5, len(t))
    noisy = 100 + 0.5 * t + rng.normal(0, 8, len(t))
    panel = SeriesCollection([smooth[:, None], noisy[:, None]], ["smooth", "noisy"], ["value"], [], None, "test")
    train, _, test = split_by_time(panel, lookback=24, horizon=6)
    chosen = starts.choose_start(train, 1, season=1, allow_log=False)
    coverage = {}
    for power in (0.0, 0.5):
        band = starts.Band(power, 1)
        offsets = starts.interval_offsets(train, 1, chosen, [0.1, 0.5, 0.9], band)
        model = create_model("gru_forecaster", n_features=1, n_targets=1, horizon=6, quantiles=[0.1, 0.9], lookback=24,
                             start=chosen["start"].to_dict(), quantile_offsets=offsets.tolist(),
                             band_noise_power=power, band_season=1).eval()
        if chosen["start"].kind in FITTED_KINDS:
            model.start_weights.copy_(torch.from_numpy(chosen["weights"]))
        with torch.inference_mode():
            predicted = model(torch.from_numpy(test.inputs)).numpy()  # (N, H, 1, 3)
        coverage[power] = [quantile_metrics(test.targets[test.series_index == s], predicted[test.series_index == s],
                                            model.quantiles)["coverage_0.1_0.9"] for s in (0, 1)]
    smooth_cover, noisy_cover = coverage[0.0]
    assert smooth_cover > 0.95 and noisy_cover < 0.7  # one band in standard deviations: wrong for both
    assert all(abs(c - 0.8) < abs(c0 - 0.8) for c, c0 in zip(coverage[0.5], coverage[0.0]))


def test_a_short_series_band_leans_on_a_normal_law_of_its_errors_robust_spread():
    rng = np.random.default_rng(0)
    levels = [0.1, 0.5, 0.9]
    calm = rng.normal(0, 1, size=(200_000, 2, 1))
    np.testing.assert_allclose(starts.normal_offsets(starts.robust_spread(calm), levels), np.quantile(calm, levels, axis=0), atol=0.02)
    shocked = calm.copy()
    shocked[rng.random(len(calm)) < 0.15] *= 20  # one error in seven from a shock
    own, normal = np.quantile(shocked, 0.9, axis=0), starts.normal_offsets(starts.robust_spread(shocked), levels)[2]
    assert np.all(own > 1.7) and np.all(normal < 1.6)  # the shocks set the errors' own tail, not their robust spread
    # The band weighs the errors' own quantiles against the normal law's as TAIL_PRIOR_WINDOWS windows: a short
    # series' few windows lean on the law, a long one's many on their own quantiles.
    for length in (30, 2000):
        windows = make_windows(_one_series(100 + np.cumsum(rng.standard_t(2, length))), lookback=8, horizon=3)
        chosen = {"transform": "none", "weights": start_weights(StartSpec("seasonal_naive", 1), 8, 3)}
        errors = starts.start_errors(windows, 1, "none", chosen["weights"])
        deviations = errors - np.quantile(errors, 0.5, axis=0)
        weight = len(windows) / (len(windows) + starts.TAIL_PRIOR_WINDOWS)
        expected = weight * np.quantile(deviations, levels, axis=0) + (1 - weight) * starts.normal_offsets(starts.robust_spread(deviations), levels)
        offsets = starts.interval_offsets(windows, 1, chosen, levels)  # (H, K, Q)
        np.testing.assert_allclose(offsets, expected.transpose(1, 2, 0), rtol=1e-5, atol=1e-6)
        assert (weight < 0.5) == (length == 30) and np.all(offsets[..., 1] == 0)
    # Most errors equal their median (a count series that rarely moves): the robust spread is 0 and says nothing of
    # the tails, so the errors' own quantiles stand, not a band shrunk towards nothing.
    counts = np.zeros(80)
    counts[[20, 60]] = [3.0, -2.0]
    windows = make_windows(_one_series(10 + counts), lookback=8, horizon=3)
    chosen = {"transform": "none", "weights": start_weights(StartSpec("mean"), 8, 3)}
    errors = starts.start_errors(windows, 1, "none", chosen["weights"])
    own = np.quantile(errors, levels, axis=0) - np.quantile(errors, 0.5, axis=0)
    assert np.all(starts.robust_spread(errors - np.quantile(errors, 0.5, axis=0)) == 0)
    np.testing.assert_allclose(starts.interval_offsets(windows, 1, chosen, levels), own.transpose(1, 2, 0), atol=1e-6)


def test_a_lone_training_window_gets_a_band_that_widens_as_a_random_walks():
    collection = _one_series(100 + np.arange(36.0) + np.tile([3.0, -1.0, 2.0, -4.0], 9))
    windows = make_windows(collection, 24, 12)
    assert len(windows) == 1
    chosen = {"transform": "none", "weights": model_starts.start_weights(StartSpec("seasonal_naive", 1), 24, 12)}
    offsets = starts.interval_offsets(windows, 1, chosen, [0.1, 0.5, 0.9])[:, 0, :]  # (H, Q)
    errors = starts.start_errors(windows, 1, "none", chosen["weights"])[0, :, 0]  # (H,), in window units
    steps = np.arange(1, 13)
    per_step = np.sqrt(np.mean(errors ** 2 / steps))
    assert per_step > 0.1  # the series moves off the last value, so the naive start errs
    np.testing.assert_allclose(offsets[:, 2], NormalDist().inv_cdf(0.9) * np.sqrt(steps) * per_step, rtol=1e-5)
    np.testing.assert_allclose(offsets[:, 0], -offsets[:, 2], rtol=1e-6)
    assert (offsets[:, 1] == 0).all()


def test_the_band_unit_is_the_windows_noise_about_its_line_and_season():
    t = np.arange(48)
    shape = 3 + 0.5 * t + 4 * np.sin(2 * np.pi * t / 12)
    residual = residual_matrix(48, 12)
    np.testing.assert_allclose(residual @ shape, 0, atol=1e-4)  # a line plus a season is no noise at all
    noise = np.random.default_rng(0).normal(0, 1, 48)
    np.testing.assert_allclose(residual @ (shape + noise), residual @ noise, atol=1e-4)
    window = torch.from_numpy(np.stack([shape + 0.1 * noise, shape + 10 * noise], axis=-1)[None].astype(np.float32))  # (1, 48, 2)
    z = (window - window.mean(dim=1, keepdim=True)) / window.std(dim=1, unbiased=False, keepdim=True)
    units = noise_units(z, torch.from_numpy(residual), 1.0)[0, 0]  # in each channel's standard deviations
    expected = [np.sqrt(np.mean((residual @ w) ** 2)) / w.std() for w in window[0].numpy().T]
    np.testing.assert_allclose(units.numpy(), np.maximum(expected, NOISE_FLOOR), rtol=1e-4)
    assert units[0] == NOISE_FLOOR and units[1] > 0.3  # almost no noise: the floor, not a band of nothing
    np.testing.assert_allclose(noise_units(z, torch.from_numpy(residual), 0.5)[0, 0], units.sqrt(), rtol=1e-5)
    assert np.allclose(residual_matrix(20, 12) @ (1 + 2 * np.arange(20.0)), 0, atol=1e-4)  # under two seasons: the line


def test_calibration_widens_a_band_to_the_held_out_errors_as_far_as_they_are_many():
    rng = np.random.default_rng(0)
    levels = [0.1, 0.5, 0.9]
    narrow = np.quantile(rng.normal(0, 1, 100_000), levels)  # the training windows' spread: sd 1
    narrow -= narrow[1]  # offsets from the median
    offsets = np.broadcast_to(narrow, (6, 1, 3)).copy()  # (H, K, Q)
    held_out = rng.normal(0, 2, size=(3000, 6, 1))  # the validation errors: twice as wide
    scaled, factors = starts.calibrate_offsets(offsets, held_out, levels)
    assert factors[1] == 1.0 and np.all(scaled[..., 1] == 0) and np.all(np.diff(scaled, axis=-1) > 0)
    assert factors[0] == pytest.approx(2, rel=0.05) and factors[2] == pytest.approx(2, rel=0.05)
    fresh = rng.normal(0, 2, size=(3000, 6, 1))
    inside = (fresh >= scaled[..., 0]) & (fresh <= scaled[..., 2])
    assert abs(inside.mean() - 0.8) < 0.02
    # Ten windows are weighed against the training windows' spread (as 30): the band widens less.
    _, few = starts.calibrate_offsets(offsets, held_out[:10], levels)
    assert 1.1 < few[0] < factors[0] and 1.1 < few[2] < factors[2]


def test_without_an_origin_the_latest_windows_widen_a_band_that_got_louder():
    # A slow wave the start follows, then noise of the same spread that it cannot: the offsets, in units of
    # each window's spread, are narrow for the first three quarters of the windows and too narrow for the last.
    rng = np.random.default_rng(2)
    t = np.arange(300)
    values = np.concatenate([10 * np.sin(2 * np.pi * t / 60) + rng.normal(0, 1, 300), rng.normal(0, 7, 100)])
    windows = make_windows(_one_series(100 + values), lookback=24, horizon=6)
    chosen = starts.choose_start(windows, 1, season=1, allow_log=False)
    levels = [0.1, 0.5, 0.9]
    offsets = starts.interval_offsets(windows, 1, chosen, levels)
    _, factors = starts.calibrate_offsets(offsets, starts.latest_errors(windows, 1, chosen), levels)
    assert factors[1] == 1.0 and factors[0] > 1.3 and factors[2] > 1.3


def test_calibration_keeps_a_band_that_already_fits():
    rng = np.random.default_rng(1)
    levels = [0.1, 0.5, 0.9]
    offsets = np.broadcast_to(np.quantile(rng.normal(0, 1, 100_000), levels), (4, 2, 3)).copy()
    _, factors = starts.calibrate_offsets(offsets, rng.normal(0, 1, size=(2000, 4, 2)), levels)
    assert factors == pytest.approx([1, 1, 1], abs=0.06)


def test_quantile_metrics_by_hand():
    y = np.array([[[1.0], [2.0]]])  # (N=1, H=2, K=1)
    predicted = np.array([[[[0.5, 1.0, 2.0]], [[1.0, 1.5, 3.0]]]])  # (1, 2, 1, Q=3)
    m = quantile_metrics(y, predicted, [0.1, 0.5, 0.9])
    assert m["q0.1_coverage"] == 0.0 and m["q0.5_coverage"] == 0.5 and m["q0.9_coverage"] == 1.0
    assert m["coverage_0.1_0.9"] == 1.0
    # q=0.1: errors 0.5 and 1.0 -> pinball 0.05 + 0.1 = 0.15; 2 * 0.15 / sum|y| (3) = 0.1
    assert m["q0.1_wql"] == pytest.approx(0.1)
    # q=0.5: errors 0 and 0.5 -> 0.25; 2 * 0.25 / 3
    assert m["q0.5_wql"] == pytest.approx(0.5 / 3)
    assert m["mean_wql"] == pytest.approx(np.mean([m["q0.1_wql"], m["q0.5_wql"], m["q0.9_wql"]]))
    # The median alone has no band, so no band coverage (it read 0.0 as "coverage_0.5_0.5").
    median_only = quantile_metrics(y, predicted[..., 1:2], [0.5])
    assert not any(key.startswith("coverage_") for key in median_only) and median_only["q0.5_coverage"] == 0.5


def test_ets_gives_ordered_quantiles_beside_its_forecast():
    t = np.arange(120)
    series = (50 + 0.2 * t + 5 * np.sin(2 * np.pi * t / 12) + np.random.default_rng(0).normal(0, 1, 120))[:, None]
    out, note = baselines.ets_forecasts([series[:96]], [[series[:96], series[:100]]], 6, 12, [0.1, 0.5, 0.9])
    assert out[0].shape == (2, 6, 1, 4) and "damped additive trend" in note
    assert np.all(np.diff(out[0][..., 1:], axis=-1) > 0)
    np.testing.assert_allclose(out[0][..., 0], out[0][..., 2], rtol=0.05)  # the mean near the median


def test_ets_takes_a_multiplicative_season_where_the_swing_grows_with_the_level_as_autoets_would():
    """A season whose swing grows fivefold with the level: the additive fit misses it, the multiplicative one
    (chosen by AICc, as R's ets() and statsforecast's AutoETS choose) follows it. Series that are not positive
    keep the additive season, and so does a season that is a cycle inferred from the data."""
    t = np.arange(144)
    rng = np.random.default_rng(0)
    level = 100 * 1.012 ** t
    series = (level * (1 + 0.3 * np.sin(2 * np.pi * t / 12)) * rng.lognormal(0, 0.02, len(t)))[:, None]
    fit, history = series[:120], series[:132]
    out, note = baselines.ets_forecasts([fit], [[history]], 12, 12, [0.1, 0.5, 0.9])
    assert "multiplicative season (1)" in note
    actual = series[132:, 0]
    error = np.abs(out[0][0, :, 0, 0] - actual).mean()
    assert error < 0.06 * actual.mean()  # 24 here, where an additive season misses by 38 and seasonal naive by 77
    assert np.mean((out[0][0, :, 0, 1] <= actual) & (actual <= out[0][0, :, 0, 3])) >= 0.5
    shifted = series - series.mean()  # negative values: no multiplicative season
    _, note = baselines.ets_forecasts([shifted[:120]], [[shifted[:132]]], 12, 12)
    assert "additive season (1)" in note
    _, note = baselines.ets_forecasts([fit], [[history]], 12, 12, multiplicative=False)  # a cycle, not a calendar season
    assert "additive season (1)" in note


# ----------------------------------------------------------------------------- rolling origins


def test_rolling_origins_step_back_one_validation_part_at_a_time():
    collection = _one_series(np.arange(300.0))
    folds = rolling_origins(collection, lookback=24, horizon=12, protocol="windows", folds=3)
    assert len(folds) == 3
    train, val, _ = split_by_time(collection, lookback=24, horizon=12)
    assert np.array_equal(folds[0][1].start, val.start) and np.array_equal(folds[0][0].start, train.start)
    for (train_a, val_a), (train_b, val_b) in zip(folds, folds[1:]):
        assert val_b.start.max() + 12 <= val_a.start.min() + 12 and train_b.start.max() + 12 <= val_b.start.min()
    every = make_windows(collection, 24, 12)
    assert before_test(collection, lookback=24, horizon=12, protocol="windows").start.max() + 12 <= 240 + 1
    assert len(every) > len(before_test(collection, lookback=24, horizon=12, protocol="windows"))


def test_a_plan_tests_a_long_series_on_rolling_windows_and_a_short_one_on_its_last_horizon():
    t = np.arange(400.0)
    monthly = _one_series(100 + t + 10 * np.sin(2 * np.pi * t / 12))
    plan = plan_run(monthly, horizon=12, lookback=None, season=12, evaluation="auto", test_fraction=0.2, val_fraction=0.1)
    assert (plan.evaluation, plan.season, plan.season_source, plan.lookback_source) == ("windows", 12, "given",
                                                                                        "chosen from the data")
    assert len(plan.folds) == MAX_FOLDS and plan.test_w.start.min() >= 320 and len(plan.parts[0]) <= 320
    assert plan.train_w.start.max() + 12 <= plan.test_w.start.min()  # no training window reaches the test part
    # A series too short for any protocol is skipped, and has no say in which: the long one keeps its windows.
    panel = SeriesCollection([monthly.series[0], monthly.series[0][:10]], ["long", "tiny"], ["value"], [], 12, "test")
    plan = plan_run(panel, horizon=12, lookback=None, season=12, evaluation="auto", test_fraction=0.2, val_fraction=0.1)
    assert (plan.evaluation, plan.skipped, len(plan.folds)) == ("windows", ["tiny"], MAX_FOLDS)
    yearly = _one_series(100 + np.arange(30.0))
    plan = plan_run(yearly, horizon=5, lookback=None, season=None, evaluation="auto", test_fraction=0.2, val_fraction=0.1)
    assert plan.evaluation == "last-horizon" and list(plan.test_w.start) == [25] and len(plan.parts[0]) == 25
    with pytest.raises(DataError, match="every series is too short for lookback 20 and horizon 5 .* longest has 10 steps"):
        plan_run(_one_series(np.arange(10.0)), horizon=5, lookback=20, season=None, evaluation="auto",
                 test_fraction=0.2, val_fraction=0.1)


def test_a_series_too_short_is_told_what_it_takes_and_what_would_fit():
    split = {"test_fraction": 0.2, "val_fraction": 0.1}
    with pytest.raises(DataError, match=r"lookback 24 and horizon 12 under the windows evaluation, which takes 69 "
                                        r"steps .* longest has 60 steps; give a --horizon of at most 8, or a --lookback "
                                        r"of at most 17$"):
        plan_run(_one_series(np.arange(60.0)), horizon=12, lookback=24, season=None, evaluation="windows", **split)
    assert not fits("windows", lookback=24, horizon=12, length=68, **split)
    assert fits("windows", lookback=24, horizon=12, length=69, **split)
    fit_60 = [(lookback, horizon) for lookback, horizon in ((24, 8), (24, 9), (17, 12), (18, 12))
              if fits("windows", lookback=lookback, horizon=horizon, length=60, **split)]
    assert fit_60 == [(24, 8), (17, 12)]
    # A lookback at its floor of 3 steps, not made longer by the season of 2: no advice to shorten the season.
    with pytest.raises(DataError, match=r"give a --horizon of at most 3, or a --lookback of at most 2$"):
        plan_run(_one_series(np.arange(10.0)), horizon=4, lookback=None, season=2, evaluation="auto", **split)


@pytest.mark.parametrize("fractions", [(0.2, 0.1), (0.2, 0.0), (0.5, 0.49), (0.33, 0.17)])
def test_the_steps_a_protocol_needs_are_the_fewest_that_fit(fractions):
    split = {"test_fraction": fractions[0], "val_fraction": fractions[1]}
    for lookback in range(1, 30, 3):
        for horizon in range(1, 25, 2):
            fewest = next(n for n in range(1, 10_000)
                          if fits("windows", lookback=lookback, horizon=horizon, length=n, **split))
            assert steps_needed("windows", lookback=lookback, horizon=horizon, **split) == fewest
    assert steps_needed("last-horizon", lookback=12, horizon=95) == 202
    assert steps_needed("windows", lookback=10 ** 6, horizon=10 ** 8, **split) > 10 ** 8  # no count up from 1


def test_the_networks_must_beat_the_start_at_every_origin_and_by_the_margin_on_average():
    start = [0.71, 0.99, 0.48]
    assert networks_earn_their_place(start, [0.70, 0.93, 0.44], 27)  # better at each origin, 5% on average
    # 2.6% better on average, worse at the first origin (quarterly arrivals, which then lost the test part)
    assert not networks_earn_their_place(start, [0.74, 0.94, 0.44], 27)
    assert not networks_earn_their_place(start, [0.705, 0.985, 0.475], 27)  # better at each origin, by under 2%
    assert not networks_earn_their_place([], [], 0)  # no origin, no evidence: the start stays


def test_one_validation_origin_is_evidence_only_when_it_holds_many_windows():
    assert networks_earn_their_place([0.317], [0.299], 356)  # a month of half-hourly windows: its margin decides
    # 8 windows of quarterly population, 31% better, then 0.404 -> 1.493 test MASE: one short period is no evidence
    assert not networks_earn_their_place([0.329], [0.225], 8)
    assert networks_earn_their_place([0.329, 0.35], [0.225, 0.30], 16)  # two short periods agreeing are


# ----------------------------------------------------------------------------- cards written before members


def test_a_forecaster_card_written_before_members_and_starts_still_loads():
    old = {"n_features": 1, "n_targets": 1, "horizon": 4, "quantiles": [0.1, 0.9], "hidden_size": 8,
           "skip_season": 4, "linear_lookback": 12}
    torch.manual_seed(0)
    model = create_model("gru_forecaster", **old)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    # The weights as they were stored then: one member's parameters at the top level.
    state = {k.removeprefix("members.0."): v for k, v in model.state_dict().items()}

    class Stored(torch.nn.Module):
        def state_dict(self, *args, **kwargs):
            return state

    card = ModelCard(task="forecast", model_name="gru_forecaster", hparams=old, features=["v"], targets=["v"],
                     lookback=12, horizon=4, quantiles=[0.1, 0.5, 0.9])
    loaded = load_artifact(save_artifact("old-fc", Stored(), card))
    assert ForecasterConfig(**loaded.card.hparams).members == 1
    x = torch.randn(2, 12, 1) + 5
    with torch.inference_mode():
        torch.testing.assert_close(loaded.module(x), model.eval()(x))


@pytest.mark.parametrize("layout", ["in hparams too, as cards written before it was stored once", "stored once"])
def test_a_forecasters_lookback_is_read_from_the_top_of_its_card(layout):
    """A smoothing start reads the whole window, so the lookback shapes the model: both card layouts rebuild it."""
    hparams = {"n_features": 1, "n_targets": 1, "horizon": 4, "hidden_size": 8, "lookback": 24,
               "start": StartSpec("smoothing", 12, 0.5).to_dict()}
    torch.manual_seed(0)
    model = create_model("gru_forecaster", **hparams)
    stored = hparams if layout.startswith("in hparams") else {k: v for k, v in hparams.items() if k != "lookback"}
    card = ModelCard(task="forecast", model_name="gru_forecaster", hparams=stored, features=["v"], targets=["v"],
                     lookback=24, horizon=4)
    loaded = load_artifact(save_artifact("lookback-once", model, card))
    assert loaded.card.lookback == 24 and loaded.module.start_weights.shape == (4, 24)
    x = torch.randn(2, 24, 1) + 5
    with torch.inference_mode():
        torch.testing.assert_close(loaded.module(x), model.eval()(x))


def test_config_round_trips_with_every_new_field():
    config = ForecasterConfig(n_features=1, n_targets=1, horizon=3, quantiles=[0.1, 0.9], lookback=24,
                              transform="log", start=StartSpec("smoothing", 4, 0.3).to_dict(), members=3,
                              quantile_offsets=np.zeros((3, 1, 3)).tolist(), band_noise_power=0.5, band_season=4)
    assert ForecasterConfig(**dataclasses.asdict(config)) == config
    model = create_model("lstm_forecaster", **dataclasses.asdict(config))
    assert len(model.members) == 3 and model.start == StartSpec("smoothing", 4, 0.3)
    with pytest.raises(ValueError, match=r"quantile_offsets must have shape \(horizon, n_targets, quantiles\) = \(3, 1, 3\)"):
        create_model("lstm_forecaster", **{**dataclasses.asdict(config), "quantile_offsets": [[0.0]]})


def test_a_forecaster_of_the_current_recipe_round_trips_through_the_store():
    hparams = {"n_features": 1, "n_targets": 1, "horizon": 6, "quantiles": [0.1, 0.9], "hidden_size": 8, "lookback": 24,
               "transform": "log", "start": StartSpec("linear", ridge=0.1).to_dict(), "members": 2,
               "quantile_offsets": np.tile([-0.4, 0.0, 0.5], (6, 1, 1)).tolist(), "band_noise_power": 0.5, "band_season": 4}
    torch.manual_seed(0)
    model = create_model("gru_forecaster", **hparams)
    with torch.no_grad():
        model.start_weights.copy_(torch.randn(6, 24) * 0.1)
        for p in model.members.parameters():
            p.add_(0.05 * torch.randn_like(p))
    card = ModelCard(task="forecast", model_name="gru_forecaster", hparams=hparams, features=["v"], targets=["v"],
                     lookback=24, horizon=6, quantiles=[0.1, 0.5, 0.9])
    loaded = load_artifact(save_artifact("recipe-fc", model, card))
    x = torch.exp(torch.randn(3, 24, 1) * 0.2 + 4)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.module(x), model.eval()(x))


def test_a_log_forecaster_answers_huge_values_exactly_and_overflows_past_float32_where_training_caps_it():
    model = create_model("gru_forecaster", n_features=1, n_targets=1, horizon=3, hidden_size=8, lookback=24,
                         transform="log", start=StartSpec("smoothing", 1, 1.0, 0.0, 1.0).to_dict())  # a drift
    rising = torch.exp(torch.linspace(np.log(1e37), np.log(3.3e38), 24))[None, :, None]  # the next step is past float32
    with torch.inference_mode():
        huge = model.eval()(torch.full((1, 24, 1), 1e36))
        past = model(rising)
    torch.testing.assert_close(huge, torch.full_like(huge, 1e36), rtol=1e-4, atol=0)
    assert torch.isinf(past).all()
    from models.artifact import LoadedModel
    from service.inference import ForecastPass, OutOfRange

    served = LoadedModel("log-fc:v1", ModelCard(task="forecast", model_name="gru_forecaster", hparams={}, features=["v"],
                                                targets=["v"], lookback=24, horizon=3), model, torch.device("cpu"))
    answers = ForecastPass(served).run_batch([rising[0].numpy(), np.full((24, 1), 1e36, np.float32)])
    assert isinstance(answers[0], OutOfRange) and "too large for log-fc:v1" in str(answers[0])  # a 400, not a capped number
    np.testing.assert_allclose(answers[1], 1e36, rtol=1e-4)
    # Training's loss divides by the window's scale and sums over quantiles: capped, it and its gradient stay finite.
    model.train()
    capped = model(rising, capped=True)  # (1, H, 1, 1)
    loss = ((capped - rising[:, -1:, :, None]) / (0.01 * rising[:, -1:, :, None])).abs().mean()
    loss.backward()
    assert torch.isfinite(capped).all() and torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_a_log_forecaster_refuses_a_history_or_stream_step_that_is_not_above_zero():
    from models.artifact import LoadedModel
    from service.inputs import InstanceError, Limits, history_window, new_steps

    model = create_model("gru_forecaster", n_features=1, n_targets=1, horizon=3, lookback=6, transform="log", hidden_size=8)
    loaded = LoadedModel("log-fc:v1", ModelCard(task="forecast", model_name="gru_forecaster", hparams={}, features=["v"],
                                                targets=["v"], lookback=6, horizon=3), model, torch.device("cpu"))
    limits = Limits(max_length=100)
    assert history_window(0, [-1.0, 0.0] + [2.0] * 6, loaded, limits).shape == (6, 1)  # only the window counts
    with pytest.raises(InstanceError, match=r"step 5, feature 0 is 0, but log-fc:v1 forecasts the logarithm of its "
                                            r"targets and needs them above 0"):
        history_window(0, [2.0] * 5 + [0.0] + [2.0] * 2, loaded, limits)
    with pytest.raises(InstanceError, match=r"step 1, feature 0 is -3"):
        new_steps(0, [1.0, -3.0], loaded, max_steps=10)
