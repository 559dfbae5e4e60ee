"""Train a direct multi-horizon forecaster, compare it with naive and seasonal naive, and store it."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from models import create_model
from models.artifact import ModelCard, save_artifact
from training import report
from training.classify import NetworkOptions, RunResult
from training.data import SeriesCollection, fingerprint
from training.loop import TrainConfig, fit, seed_everything, sized_for
from training.metrics import forecast_metrics, mase_scale, naive_forecast, seasonal_naive_forecast
from training.windows import split_by_time, train_series

log = logging.getLogger(__name__)


def pinball_loss(pred: torch.Tensor, target: torch.Tensor, quantiles: list[float]) -> torch.Tensor:
    """Mean quantile loss: ``pred`` (B, H, K, Q), ``target`` (B, H, K); plain absolute error without quantiles."""
    error = target.unsqueeze(-1) - pred  # (B, H, K, Q)
    if not quantiles:
        return error.abs().mean()
    q = torch.as_tensor(quantiles, dtype=pred.dtype, device=pred.device)
    return torch.maximum(q * error, (q - 1) * error).mean()


def infer_season(train_parts: list[np.ndarray], max_lag: int) -> int:
    """The lag (≥2) with the strongest autocorrelation of the first target's differences, or 1 if none is clear."""
    best_lag, best_score = 1, 0.3  # below this the "season" is noise
    for lag in range(2, max_lag + 1):
        scores = []
        for part in train_parts:
            diff = np.diff(part[:, 0])
            if len(diff) <= 2 * lag or diff.std() == 0:
                continue
            scores.append(np.corrcoef(diff[:-lag], diff[lag:])[0, 1])
        if scores and np.mean(scores) > best_score:
            best_lag, best_score = lag, float(np.mean(scores))
    return best_lag


@torch.no_grad()
def predict_windows(model, inputs: np.ndarray, device: torch.device, batch_size: int = 512) -> np.ndarray:
    """Forecasts for every window: ``(N, T, C) -> (N, H, K, Q)`` in the series' own scale."""
    model.eval()
    out = [
        model(torch.from_numpy(inputs[i : i + batch_size]).to(device)).cpu().numpy()
        for i in range(0, len(inputs), batch_size)
    ]
    return np.concatenate(out)


def train_forecaster(
    collection: SeriesCollection,
    *,
    name: str,
    network: NetworkOptions,
    config: TrainConfig,
    device: torch.device,
    report_dir: Path,
    lookback: int,
    horizon: int,
    quantiles: list[float],
    season: int | None = None,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    save: bool = True,
) -> RunResult:
    """The whole forecasting run: window, split by time, train, evaluate, store, report."""
    seed_everything(config.seed)
    k = len(collection.target_names)
    # The training part of every series: the only data MASE scales and season inference may look at.
    split = {"horizon": horizon, "test_fraction": test_fraction, "val_fraction": val_fraction}
    parts = [p[:, :k] for p in train_series(collection, **split)]
    train_w, val_w, test_w = split_by_time(collection, lookback=lookback, **split)
    season = season or collection.season or infer_season(parts, max_lag=min(lookback, 400))

    hparams = {
        "n_features": len(collection.target_names) + len(collection.covariate_names),
        "n_targets": k,
        "horizon": horizon,
        "quantiles": sorted(quantiles),
        "hidden_size": network.hidden_size,
        "num_layers": network.num_layers,
        "dropout": network.dropout,
        "bidirectional": network.bidirectional,
    }
    model_name = f"{network.arch}_forecaster"
    model = create_model(model_name, **hparams).to(device)

    def make_batch(indices: np.ndarray, is_train: bool):
        windows = train_w if is_train else val_w
        return (
            torch.from_numpy(windows.inputs[indices]).to(device),
            torch.from_numpy(windows.targets[indices]).to(device),
        )

    def loss_fn(model, batch):
        x, y = batch  # (B, T, C), (B, H, K)
        x_norm, loc, scale = model.normalize(x)
        # The loss lives in each window's normalised units, so every series weighs the same whatever its scale.
        y_norm = (y - loc[..., :k]) / scale[..., :k]
        return pinball_loss(model.forward_normalized(x_norm), y_norm, model.quantiles)

    config = sized_for(config, len(train_w.inputs))
    history = fit(model, len(train_w.inputs), len(val_w.inputs), make_batch, loss_fn, config)

    predicted = predict_windows(model, test_w.inputs, device)  # (N, H, K, Q)
    point = predicted[..., model.point_index]
    scales = np.stack([mase_scale(parts[s], season) for s in range(len(parts))])[test_w.series_index]  # (N, K)
    test_metrics = forecast_metrics(test_w.targets, point, scales)
    args = (collection.series, test_w.series_index, test_w.start, horizon, k)
    baselines = {"naive": forecast_metrics(test_w.targets, naive_forecast(*args), scales)}
    if season > 1 and test_w.start.min() >= season:
        baselines["seasonal_naive"] = forecast_metrics(test_w.targets, seasonal_naive_forecast(*args, season), scales)
    if model.quantiles:
        inside = (test_w.targets >= predicted[..., 0]) & (test_w.targets <= predicted[..., -1])
        test_metrics[f"coverage_{model.quantiles[0]}_{model.quantiles[-1]}"] = float(inside.mean())

    card = ModelCard(
        task="forecast",
        model_name=model_name,
        hparams=hparams,
        features=[*collection.target_names, *collection.covariate_names],
        targets=collection.target_names,
        lookback=lookback,
        horizon=horizon,
        quantiles=model.quantiles,
        normalization={"kind": "per_window_standardization", "floor": "1e-6 * (|mean| + 1e-6)"},
        metrics={"test": test_metrics, "baselines": baselines},
        data={
            "source": collection.source,
            "fingerprint": fingerprint(collection),
            "series": len(collection.series),
            "n_train_windows": len(train_w.inputs),
            "n_val_windows": len(val_w.inputs),
            "n_test_windows": len(test_w.inputs),
            "test_fraction": test_fraction,
            "season": season,
        },
        training={**asdict(config), **history.summary(), "device": str(device)},
    )
    tag = save_artifact(name, model, card) if save else None
    report_dir.mkdir(parents=True, exist_ok=True)
    report.write_metrics(report_dir, "forecast", tag or f"{name}:unsaved", test_metrics, baselines)
    report.plot_history(report_dir, history)
    report.plot_forecasts(report_dir, test_w.inputs, test_w.targets, predicted, model.quantiles, collection.target_names[0])
    return RunResult(tag, test_metrics, baselines, report_dir)
