"""The strong reference models every report shows beside the simple baselines in ``training.metrics``.

Classification: 1-nearest-neighbour DTW (aeon), the field's standard reference on the UCR/UEA archive.
Forecasting: ETS (statsmodels Holt-Winters: additive damped trend, a season when the series holds two
full seasons), fitted per series; for a positive series with a calendar season the season is additive or
multiplicative, whichever fits better by AICc, as R's ``ets()`` and statsforecast's ``AutoETS`` choose.

Both are skipped past a documented size so that a report never waits minutes for a baseline; the
report then names the baseline as skipped and says why. The libraries are imported only here and only
when used (aeon compiles with numba on first use).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import torch

from training.metrics import classification_metrics

log = logging.getLogger(__name__)

# Full-window DTW costs n_train * n_test * T_train * T_test cell updates; aeon does ~4e8 a second on one
# busy core here (OSULeaf, 200 x 242 of 427 steps = 8.8e9 cells, took 34 s), so the cap is ~25 s.
DTW_MAX_CELLS = 1e10
# Past the cap, a Sakoe-Chiba band (the UCR archive's other published DTW reference) narrow enough to
# fit under it: a band of w * T on each side costs about 2w of the full grid. Narrower than this and
# it would no longer be the reference people know, so the baseline is skipped instead.
DTW_MIN_WINDOW = 0.05
# ETS is refitted per series and refiltered per test window (~20 ms each on 2,000 steps).
ETS_MAX_WINDOWS = 2000


def dtw_1nn(train_seqs: list[np.ndarray], y_train: np.ndarray, test_seqs: list[np.ndarray],
            y_test: np.ndarray) -> tuple[dict[str, float] | None, str]:
    """Metrics of 1-NN DTW and how it ran (full window, or a band past the size cap), or None and why not."""
    mean_train = np.mean([len(s) for s in train_seqs])
    mean_test = np.mean([len(s) for s in test_seqs])
    cells = len(train_seqs) * len(test_seqs) * mean_train * mean_test
    window = 1.0 if cells <= DTW_MAX_CELLS else np.floor(100 * DTW_MAX_CELLS / cells / 2) / 100
    if window < DTW_MIN_WINDOW:
        return None, (f"skipped: {cells:.1e} full-window DTW cells is past the cap of {DTW_MAX_CELLS:.0e}, even "
                      f"with a {DTW_MIN_WINDOW:.0%} band")
    how = "full window" if window == 1.0 else (
        f"Sakoe-Chiba band of {window:.0%} ({cells:.1e} full-window cells is past the cap of {DTW_MAX_CELLS:.0e})")
    from aeon.classification.distance_based import KNeighborsTimeSeriesClassifier

    def as_aeon(seqs):  # aeon wants (N, F, T) when lengths are equal, else a list of (F, T_i)
        arrays = [np.ascontiguousarray(s.T, dtype=np.float64) for s in seqs]  # numba's lists take C order only
        return np.stack(arrays) if len({a.shape for a in arrays}) == 1 else arrays

    train_x, test_x = as_aeon(train_seqs), as_aeon(test_seqs)
    if isinstance(train_x, np.ndarray) != isinstance(test_x, np.ndarray):
        train_x, test_x = list(train_x), list(test_x)
    threads = torch.get_num_threads()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba's type-safety notes
        model = KNeighborsTimeSeriesClassifier(distance="dtw", distance_params={"window": float(window)},
                                               n_neighbors=1, n_jobs=1).fit(train_x, y_train)
        predicted = model.predict(test_x)
    torch.set_num_threads(threads)  # aeon resets torch's thread count to every core; later runs keep ours
    return classification_metrics(y_test, np.asarray(predicted, dtype=np.int64)), how


# Simulated future paths per forecast origin for ETS's quantiles (statsmodels' Holt-Winters has no
# closed-form intervals): 1,000 put a 0.1 quantile within ~1% of its value between seeds.
ETS_PATHS = 1000


def ets_forecasts(fit_parts: list[np.ndarray], origins: list[list[np.ndarray]], horizon: int,
                  season: int, levels: list[float] = (), multiplicative: bool = True) -> tuple[list[np.ndarray] | None, str]:
    """ETS forecasts per series, or None and the reason they were skipped.

    ``multiplicative`` allows a multiplicative season for positive series: for a calendar season, not for a
    cycle inferred from the data (on annual lynx counts, with a 10-year cycle as the season, Holt-Winters'
    multiplicative season won by AICc and its forecasts blew up to a MASE of 12.3, the additive one 1.8).

    ``fit_parts[s]`` (T_s, K) is the data the model of series ``s`` is fitted on; ``origins[s]`` lists
    histories ``(t, K)`` (each extending the fit part) from whose end to forecast. Returns one
    ``(n_origins_s, H, K, 1 + Q)`` array per series: the point forecast, then the quantiles at ``levels``
    from ``ETS_PATHS`` simulated paths with the fitted model's errors (statsmodels' ``simulate``: additive, or
    multiplicative beside a multiplicative season).
    Histories beyond the fit part are filtered with the fitted parameters, not refitted (rolling-origin
    evaluation without a refit per window). A fit that fails falls back to the naive forecast (every
    quantile too) for that series, and is counted in the note.
    """
    windows = sum(len(o) for o in origins)
    if windows > ETS_MAX_WINDOWS:
        return None, f"skipped: {windows} test windows is past the cap of {ETS_MAX_WINDOWS}"
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    out, failed, seasons = [], 0, {"add": 0, "mul": 0}
    for part, histories in zip(fit_parts, origins):
        k = part.shape[1]
        forecasts = np.empty((len(histories), horizon, k, 1 + len(levels)), dtype=np.float32)
        for channel in range(k):
            try:
                forecasts[:, :, channel], chosen = _ets_channel(
                    ExponentialSmoothing, part[:, channel], [h[:, channel] for h in histories], horizon, season, levels,
                    multiplicative)
                if chosen:
                    seasons[chosen] += 1
            except Exception as err:  # statsmodels raises many types on degenerate series
                failed += 1
                log.debug("ETS failed (%s); naive forecast instead", err)
                forecasts[:, :, channel] = np.stack([np.repeat(h[-1, channel], horizon) for h in histories])[..., None]
        out.append(forecasts)
    kinds = [f"{'additive' if kind == 'add' else 'multiplicative'} season ({n})" for kind, n in seasons.items() if n]
    seasonal = " or ".join(kinds) if kinds else "no season"
    return out, f"damped additive trend, {seasonal}" + (f"; {failed} fits failed (naive instead)" if failed else "")


def _ets_channel(ExponentialSmoothing, fit_part: np.ndarray, histories: list[np.ndarray], horizon: int,
                 season: int, levels: list[float], multiplicative: bool) -> tuple[np.ndarray, str | None]:
    """(n, H, 1 + Q) forecasts of one channel (the point forecast, then the simulated quantiles) and the
    season's kind ("add", "mul" or None)."""
    seasonal = season > 1 and len(fit_part) >= 2 * season + 2
    trend = "add" if len(fit_part) >= 10 else None
    # A multiplicative season needs positive values, in the fit part and in every history it filters.
    positive = (fit_part > 0).all() and all((h > 0).all() for h in histories)
    kinds = (["add", "mul"] if multiplicative and positive else ["add"]) if seasonal else [None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence and frequency notes
        candidates = []
        for kind in kinds:
            spec = {"trend": trend, "damped_trend": trend is not None,
                    "seasonal": kind, "seasonal_periods": season if kind else None}
            try:
                fitted = ExponentialSmoothing(fit_part.astype(np.float64), **spec).fit()
            except Exception:
                if kind != "mul":
                    raise
                continue  # the multiplicative fit can fail where the additive one does not
            candidates.append((fitted.aicc, kind, spec, fitted))
        # An AICc that is not finite (too few values for its correction) loses; if both are, the additive stands.
        _, kind, spec, fitted = min(candidates, key=lambda c: c[0] if np.isfinite(c[0]) else np.inf)
        error = "mul" if kind == "mul" else "add"  # beside a multiplicative season, errors scale with the level too
        rows = []
        for history in histories:
            if len(history) == len(fit_part):
                rows.append(_with_quantiles(fitted, horizon, levels, error))
                continue
            p = fitted.params
            refilter = ExponentialSmoothing(
                history.astype(np.float64), **spec, initialization_method="known",
                initial_level=p["initial_level"],
                initial_trend=p["initial_trend"] if trend else None,
                initial_seasonal=p["initial_seasons"] if seasonal else None,
            ).fit(smoothing_level=p["smoothing_level"], smoothing_trend=p["smoothing_trend"] if trend else None,
                  smoothing_seasonal=p["smoothing_seasonal"] if seasonal else None,
                  damping_trend=p["damping_trend"] if trend else None, optimized=False)
            rows.append(_with_quantiles(refilter, horizon, levels, error))
    return np.stack(rows), kind


def _with_quantiles(fitted, horizon: int, levels: list[float], error: str) -> np.ndarray:
    """(H, 1 + Q): the fitted model's forecast and the ``levels`` quantiles of its simulated paths."""
    point = np.asarray(fitted.forecast(horizon))[:, None]
    if not levels:
        return point
    paths = np.asarray(fitted.simulate(horizon, repetitions=ETS_PATHS, error=error, random_state=0))  # (H, paths)
    return np.concatenate([point, np.quantile(paths, levels, axis=1).T], axis=1)
