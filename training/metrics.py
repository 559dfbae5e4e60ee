"""Test metrics and the naive baselines every model is compared with.

Classification: accuracy and macro-F1, against always predicting the majority class.
Forecasting: MAE, RMSE, sMAPE (in percent) and MASE, against the naive (last value) and seasonal naive
forecasts. MASE divides each window's MAE by the in-sample MAE of the seasonal naive forecast on that
series' training part (Hyndman & Koehler 2006; the M4 definition), so 1.0 means "as good as seasonal
naive was in-sample".
"""

from __future__ import annotations

import numpy as np


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(y_true == y_pred))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes the test set holds or the model predicts (as
    scikit-learn's ``f1_score(average="macro")``): a class neither tested nor predicted says nothing of the
    model, and scoring it 0 made a perfect model's macro-F1 0.75 where one class of four had no test sample."""
    scores = []
    for c in np.union1d(y_true, y_pred).astype(int):
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    return {"accuracy": accuracy(y_true, y_pred), "macro_f1": macro_f1(y_true, y_pred)}


def majority_class_baseline(y_train: np.ndarray, y_test: np.ndarray) -> dict[str, float]:
    """Metrics of always answering the most frequent training class."""
    majority = np.bincount(y_train).argmax()
    return classification_metrics(y_test, np.full_like(y_test, majority))


def mase_scale(train_part: np.ndarray, season: int) -> np.ndarray:
    """In-sample MAE of the seasonal naive forecast, per channel: ``(T, K) -> (K,)``.

    Falls back to lag 1 when the training part is not longer than one season.
    """
    lag = season if len(train_part) > season else 1
    scale = np.mean(np.abs(train_part[lag:] - train_part[:-lag]), axis=0)
    return np.where(scale > 0, scale, 1.0)  # a flat training part: fall back to plain MAE


def forecast_metrics(y_true: np.ndarray, y_pred: np.ndarray, scale: np.ndarray) -> dict[str, float]:
    """Metrics over windows: ``y_true``/``y_pred`` (N, H, K), ``scale`` (N, K) each window's MASE scale."""
    y_true, y_pred = y_true.astype(np.float64), y_pred.astype(np.float64)  # a wild forecast's square overflows float32
    error = y_pred - y_true
    denominator = np.abs(y_true) + np.abs(y_pred)
    smape = np.where(denominator > 0, 2 * np.abs(error) / np.where(denominator > 0, denominator, 1), 0.0)
    return {
        "mae": float(np.mean(np.abs(error))),
        "rmse": float(np.sqrt(np.mean(error**2))),
        "smape": float(100 * np.mean(smape)),
        "mase": float(np.mean(np.abs(error) / scale[:, None, :])),
    }


def quantile_metrics(y_true: np.ndarray, predicted: np.ndarray, levels: list[float]) -> dict[str, float]:
    """Calibration and quantile loss of quantile forecasts ``predicted`` (N, H, K, Q) at ``levels``.

    Per level ``q``: ``q{q}_coverage``, the share of actual values at or below the forecast quantile (q
    when calibrated), and ``q{q}_wql``, the weighted quantile loss ``2 * sum(pinball_q) / sum(|y|)`` (the
    GluonTS / M5 definition: 0 is perfect, and at q=0.5 it is the weighted absolute percentage error).
    Also ``coverage_{lo}_{hi}``, the share inside the outermost band (where there is one: levels on both sides
    of 0.5), and ``mean_wql`` over the levels.
    """
    q = np.asarray(levels, dtype=np.float64)
    error = y_true[..., None] - predicted  # (N, H, K, Q)
    pinball = np.maximum(q * error, (q - 1) * error).sum(axis=(0, 1, 2))  # (Q,)
    wql = 2 * pinball / max(float(np.abs(y_true).sum()), 1e-12)
    out = {}
    for i, level in enumerate(levels):
        out[f"q{level:g}_coverage"] = float((y_true <= predicted[..., i]).mean())
        out[f"q{level:g}_wql"] = float(wql[i])
    if levels[0] < 0.5 < levels[-1]:  # a band; the median alone, or one side of it, has none
        inside = (y_true >= predicted[..., 0]) & (y_true <= predicted[..., -1])
        out[f"coverage_{levels[0]:g}_{levels[-1]:g}"] = float(inside.mean())
    out["mean_wql"] = float(wql.mean())
    return out


def naive_forecast(series: list[np.ndarray], series_index: np.ndarray, start: np.ndarray, horizon: int, n_targets: int) -> np.ndarray:
    """Repeat the last observed value: ``(N, H, K)``."""
    last = np.stack([series[s][t - 1, :n_targets] for s, t in zip(series_index, start)])
    return np.repeat(last[:, None, :], horizon, axis=1)


def seasonal_naive_forecast(
    series: list[np.ndarray], series_index: np.ndarray, start: np.ndarray, horizon: int, n_targets: int, season: int
) -> np.ndarray:
    """Repeat the last observed season: step h (0-based) of a window starting at t is ``y[t - m + h % m]``."""
    steps = np.arange(horizon) % season - season  # offsets from t, all negative
    out = np.empty((len(start), horizon, n_targets), dtype=np.float32)
    for row, (s, t) in enumerate(zip(series_index, start)):
        out[row] = series[s][t + steps, :n_targets]
    return out


BASELINE_NAMES = {"majority_class": "majority class", "dtw_1nn": "1-NN DTW", "naive": "naive",
                  "seasonal_naive": "seasonal naive", "ets": "ETS"}


def compare_with_baselines(task: str, test: dict[str, float], baselines: dict[str, dict[str, float]]) -> tuple[bool, list[str]]:
    """(beats its simplest baseline, warnings as sentences) for a model's test metrics.

    Classification is judged on accuracy against the majority class, forecasting on MASE against the
    better of naive and seasonal naive. A strong baseline (1-NN DTW, ETS) the model does not reach adds
    a warning too, but does not make ``beats_baseline`` false.
    """
    if task == "classify":
        key, better, simple, strong, perfect = "accuracy", max, ["majority_class"], ["dtw_1nn"], 1.0
    else:
        key, better, simple, strong, perfect = "mase", min, ["naive", "seasonal_naive"], ["ets"], 0.0
    model = test[key]
    simple_scores = {name: baselines[name][key] for name in simple if name in baselines}
    best_name = better(simple_scores, key=simple_scores.get)
    wins = (lambda a, b: a > b) if better is max else (lambda a, b: a < b)
    warnings = []
    beats = wins(model, simple_scores[best_name]) or model == perfect  # a perfect score (a constant series) cannot be beaten
    if not beats:
        warnings.append(f"the model does not beat its simplest baseline: test {key} {_score(model)} against "
                        f"{_score(simple_scores[best_name])} for {BASELINE_NAMES[best_name]}")
    for name in strong:
        if name in baselines and not wins(model, baselines[name][key]) and model != baselines[name][key]:
            warnings.append(f"the model does not reach the {BASELINE_NAMES[name]} baseline: test {key} "
                            f"{_score(model)} against {_score(baselines[name][key])}")
    return beats, warnings


def _score(value: float) -> str:
    # Three decimals, or three significant digits for a score that would print as 0.000 (a MASE whose
    # scale a huge value in the training part inflated).
    return f"{value:.3f}" if value == 0 or abs(value) >= 0.001 else f"{value:.3g}"
