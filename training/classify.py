"""Train a many-to-one sequence classifier, compare it with the majority class, and store it."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models import create_model
from models.artifact import ModelCard, save_artifact
from models.padding import pad_sequences
from training import report
from training.data import SequenceDataset, check_compatible, fingerprint
from training.loop import TrainConfig, fit, seed_everything, sized_for
from training.metrics import classification_metrics, majority_class_baseline

log = logging.getLogger(__name__)


@dataclass
class NetworkOptions:
    """The architecture flags shared by both tasks."""

    arch: str = "gru"
    hidden_size: int = 64
    num_layers: int = 2
    dropout: float = 0.1
    bidirectional: bool = False


@dataclass
class RunResult:
    """What a training run produced."""

    tag: str | None  # None when the model was not stored (--no-save)
    test: dict[str, float]
    baselines: dict[str, dict[str, float]]
    report_dir: Path


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, val): ``fraction`` of every class goes to validation, at least one per class with ≥2 rows."""
    rng = np.random.default_rng(seed)
    fit_rows, val_rows = [], []
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        n_val = min(max(1, round(fraction * len(rows))), len(rows) - 1) if len(rows) > 1 else 0
        val_rows.extend(rows[:n_val])
        fit_rows.extend(rows[n_val:])
    return np.sort(fit_rows), np.sort(val_rows)


@torch.no_grad()
def predict_labels(model: torch.nn.Module, sequences: list[np.ndarray], device: torch.device, batch_size: int = 256) -> np.ndarray:
    """Arg-max class of every sequence: ``(N,)``."""
    model.eval()
    out = []
    for i in range(0, len(sequences), batch_size):
        x, lengths = pad_sequences(sequences[i : i + batch_size])
        out.append(model(x.to(device), lengths).argmax(dim=-1).cpu().numpy())
    return np.concatenate(out)


def train_classifier(
    train: SequenceDataset,
    test: SequenceDataset,
    *,
    name: str,
    network: NetworkOptions,
    config: TrainConfig,
    device: torch.device,
    report_dir: Path,
    val_fraction: float = 0.2,
    save: bool = True,
) -> RunResult:
    """The whole classification run: split, normalise, train, evaluate, store, report."""
    check_compatible(train, test)
    seed_everything(config.seed)
    fit_rows, val_rows = stratified_split(train.labels, val_fraction, config.seed)
    fit_seqs = [train.sequences[i] for i in fit_rows]
    stacked = np.concatenate(fit_seqs)  # every valid step of every training sequence: (sum T_i, F)
    mean, std = stacked.mean(axis=0), stacked.std(axis=0)
    std = np.where(std > 0, std, 1.0)

    hparams = {
        "n_features": len(train.feature_names),
        "n_classes": len(train.label_names),
        "hidden_size": network.hidden_size,
        "num_layers": network.num_layers,
        "dropout": network.dropout,
        "bidirectional": network.bidirectional,
    }
    model_name = f"{network.arch}_classifier"
    model = create_model(model_name, **hparams)
    model.feature_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
    model.feature_std.copy_(torch.as_tensor(std, dtype=torch.float32))
    model.to(device)

    def make_batch(indices: np.ndarray, is_train: bool):
        rows = fit_rows[indices] if is_train else val_rows[indices]
        x, lengths = pad_sequences([train.sequences[i] for i in rows])
        return x.to(device), lengths, torch.as_tensor(train.labels[rows], device=device)

    def loss_fn(model, batch):
        x, lengths, y = batch
        return F.cross_entropy(model(x, lengths), y)

    config = sized_for(config, len(fit_rows))
    history = fit(model, len(fit_rows), len(val_rows), make_batch, loss_fn, config)

    n_classes = len(train.label_names)
    test_metrics = classification_metrics(test.labels, predict_labels(model, test.sequences, device), n_classes)
    baselines = {"majority_class": majority_class_baseline(train.labels, test.labels, n_classes)}

    card = ModelCard(
        task="classify",
        model_name=model_name,
        hparams=hparams,
        features=train.feature_names,
        labels=train.label_names,
        max_length=int(max(len(s) for s in train.sequences)),
        normalization={"kind": "feature_standardization", "mean": mean.tolist(), "std": std.tolist()},
        metrics={"test": test_metrics, "baselines": baselines},
        data={
            "train_source": train.source,
            "test_source": test.source,
            "train_fingerprint": fingerprint(train),
            "n_train": len(fit_rows),
            "n_val": len(val_rows),
            "n_test": len(test.sequences),
        },
        training={**asdict(config), **history.summary(), "device": str(device), "val_fraction": val_fraction},
    )
    tag = save_artifact(name, model, card) if save else None
    report_dir.mkdir(parents=True, exist_ok=True)
    report.write_metrics(report_dir, "classify", tag or f"{name}:unsaved", test_metrics, baselines)
    report.plot_history(report_dir, history)
    return RunResult(tag, test_metrics, baselines, report_dir)
