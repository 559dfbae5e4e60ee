"""The run report: ``metrics.json``, PNG plots, and the table printed at the end of training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from training.loop import History  # noqa: E402


def write_metrics(folder: Path, task: str, tag: str, metrics: dict[str, Any], recipe: dict[str, Any]) -> Path:
    """``metrics.json``: ``{"task", "model", "test", "baselines", "baseline_notes", "beats_baseline",
    "warnings", "recipe"}``; ``metrics`` is the card's metrics dict, ``recipe`` the choices the run made."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "metrics.json"
    path.write_text(json.dumps({"task": task, "model": tag, **metrics, "recipe": recipe}, indent=2, default=str))
    return path


def plot_history(folder: Path, history: History) -> Path:
    """Training and validation loss per epoch, with the kept (best) epoch marked."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    epochs = np.arange(1, len(history.train_loss) + 1)
    ax.plot(epochs, history.train_loss, label="train loss")
    if history.val_loss:
        ax.plot(epochs, history.val_loss, label="validation loss")
    ax.axvline(history.best_epoch, color="grey", linestyle="--", label=f"best epoch ({history.best_epoch})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    path = folder / "loss.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_forecasts(
    folder: Path,
    history_windows: np.ndarray,
    actual: np.ndarray,
    predicted: np.ndarray,
    quantiles: list[float],
    target_name: str,
    count: int = 4,
) -> Path:
    """A few test windows: history, actual future, forecast and the outermost quantile band.

    ``history_windows`` (N, T, C), ``actual`` (N, H, K), ``predicted`` (N, H, K, Q); first target only.
    """
    picks = np.linspace(0, len(actual) - 1, num=min(count, len(actual))).astype(int)
    fig, axes = plt.subplots(len(picks), 1, figsize=(7, 2.2 * len(picks)), squeeze=False)
    point = quantiles.index(0.5) if quantiles else 0
    for ax, i in zip(axes[:, 0], picks):
        t_hist = np.arange(history_windows.shape[1])
        t_future = np.arange(len(t_hist), len(t_hist) + actual.shape[1])
        ax.plot(t_hist, history_windows[i, :, 0], color="black", linewidth=1, label="history")
        ax.plot(t_future, actual[i, :, 0], color="black", linestyle=":", label="actual")
        ax.plot(t_future, predicted[i, :, 0, point], color="tab:blue", label="forecast")
        if len(quantiles) > 1:
            ax.fill_between(
                t_future, predicted[i, :, 0, 0], predicted[i, :, 0, -1], color="tab:blue", alpha=0.2,
                label=f"{quantiles[0]}–{quantiles[-1]} quantiles",
            )
        ax.set_ylabel(target_name)
    axes[0, 0].legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    path = folder / "forecasts.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def format_table(test: dict[str, float], baselines: dict[str, dict[str, float]]) -> str:
    """A small text table: one row per model/baseline, one column per metric."""
    rows: list[tuple[str, dict[str, Any]]] = [("model", test), *baselines.items()]
    keys = list(test)
    width = max(len(name) for name, _ in rows)
    lines = [" ".join([" " * width, *(f"{k:>10}" for k in keys)])]
    for name, values in rows:
        cells = [f"{values[k]:>10.4f}" if k in values else f"{'-':>10}" for k in keys]
        lines.append(" ".join([f"{name:<{width}}", *cells]))
    return "\n".join(lines)
