"""Tiny real models stored through ``models.artifact``, for service and load tests (untrained, seeded)."""

import torch

from models import create_model
from models.artifact import ModelCard, save_artifact

CLASSIFIER = {"n_features": 3, "n_classes": 4, "hidden_size": 16, "num_layers": 2, "bidirectional": True}
FORECASTER = {"n_features": 1, "n_targets": 1, "horizon": 5, "quantiles": [0.1, 0.9], "hidden_size": 16}
LOOKBACK = 12


def store_classifier(name: str = "tiny-clf", seed: int = 0) -> str:
    torch.manual_seed(seed)
    model = create_model("gru_classifier", **CLASSIFIER)
    card = ModelCard(
        task="classify", model_name="gru_classifier", hparams=CLASSIFIER, features=["x", "y", "z"],
        labels=["walk", "run", "sit", "jump"], max_length=50,
        metrics={"test": {"accuracy": 0.5, "macro_f1": 0.4}, "baselines": {"majority_class": {"accuracy": 0.25}}},
    )
    return save_artifact(name, model, card)


def store_forecaster(name: str = "tiny-fc", seed: int = 0) -> str:
    torch.manual_seed(seed)
    model = create_model("lstm_forecaster", **FORECASTER)
    card = ModelCard(
        task="forecast", model_name="lstm_forecaster", hparams=FORECASTER, features=["value"], targets=["value"],
        lookback=LOOKBACK, horizon=5, quantiles=model.quantiles,
        metrics={"test": {"mase": 0.9}, "baselines": {"seasonal_naive": {"mase": 1.0}}},
    )
    return save_artifact(name, model, card)


def store_streaming_classifier(name: str, cell: str = "gru", conv_stride: int = 0, seed: int = 0) -> str:
    """A classifier that can stream: one-way, running instance normalisation, optionally a conv front end."""
    torch.manual_seed(seed)
    hparams = {**CLASSIFIER, "bidirectional": False, "instance_norm": "running", "conv_stride": conv_stride}
    model = create_model(f"{cell}_classifier", **hparams)
    with torch.no_grad():
        model.feature_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        model.feature_std.copy_(torch.tensor([2.0, 0.5, 1.5]))
    card = ModelCard(
        task="classify", model_name=f"{cell}_classifier", hparams=hparams, features=["x", "y", "z"],
        labels=["walk", "run", "sit", "jump"], max_length=50, metrics={"test": {"accuracy": 0.5}},
    )
    return save_artifact(name, model, card)
