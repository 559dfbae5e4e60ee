"""service.inference and service.inputs without a server: checks, batching invariance and answer shapes."""

import numpy as np
import pytest
import torch

from models import create_model
from models.artifact import ModelCard, save_artifact, load_artifact
from service.inference import ClassifyPass
from service.inputs import InstanceError, Limits, history_window
from tests import tiny_models
from tests.service_client import served_answers


def test_an_answer_never_depends_on_what_it_was_batched_with():
    model = load_artifact(tiny_models.store_classifier("inf-clf"))
    rng = np.random.default_rng(3)
    seqs = [rng.normal(size=(n, 3)).astype(np.float32) for n in (1, 64, 7, 33, 2)]
    forward = ClassifyPass(model)
    together = forward.run_batch(seqs)
    for seq, probabilities in zip(seqs, together):
        alone = forward.run_batch([seq])[0]
        assert alone.argmax() == probabilities.argmax()
        np.testing.assert_allclose(alone, probabilities, atol=1e-5)


def test_multi_target_forecasts_give_one_list_per_step():
    hparams = {"n_features": 3, "n_targets": 2, "horizon": 4, "quantiles": [0.2, 0.8], "hidden_size": 8}
    torch.manual_seed(0)
    card = ModelCard(
        task="forecast", model_name="gru_forecaster", hparams=hparams, features=["sales", "returns", "price"],
        targets=["sales", "returns"], lookback=10, horizon=4, quantiles=[0.2, 0.5, 0.8],
    )
    model = load_artifact(save_artifact("inf-multi", create_model("gru_forecaster", **hparams), card))
    history = np.random.default_rng(0).normal(size=(30, 3)).astype(np.float32)
    window = history_window(0, history.tolist(), model, Limits())
    assert window.shape == (10, 3) and np.array_equal(window, history[-10:])  # only the last lookback steps
    answer = served_answers(model, [window])[0]
    assert np.asarray(answer["forecast"]).shape == (4, 2)
    assert set(answer["quantiles"]) == {"0.2", "0.5", "0.8"}
    low, mid, high = (np.asarray(answer["quantiles"][q]) for q in ("0.2", "0.5", "0.8"))
    assert (low <= mid).all() and (mid <= high).all() and np.array_equal(mid, answer["forecast"])


def test_a_flat_history_is_only_for_single_channel_models():
    model = load_artifact(tiny_models.store_classifier("inf-clf2"))
    with pytest.raises(InstanceError, match=r"instances\[4\]\.history: got a flat list but .* expects 3 features"):
        history_window(4, [1.0, 2.0], model, Limits())
