"""Every registered model: output shapes, finite outputs, and answers that padding and batching never change."""

import numpy as np
import pytest
import torch

from models import create_model, list_models
from models.padding import pad_sequences

FEATURES, CLASSES, HORIZON = 3, 4, 5
# Every registered model that classifies: the networks, their ensembles, 1-NN DTW.
CLASSIFIERS = [n for n in list_models() if not n.endswith("_forecaster")]


def build(name: str, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "dtw_1nn":
        return dtw_model()
    if name.endswith("_ensemble"):
        return create_model(name, members=3, n_features=FEATURES, n_classes=CLASSES, hidden_size=16, **extra).eval()
    if name.endswith("_classifier"):
        return create_model(name, n_features=FEATURES, n_classes=CLASSES, hidden_size=16, **extra).eval()
    return create_model(name, n_features=FEATURES, n_targets=2, horizon=HORIZON, hidden_size=16, **extra).eval()


def dtw_model(lengths=(12, 3, 20, 7, 20, 1), seed: int = 2) -> torch.nn.Module:
    """1-NN DTW over references of unequal lengths, every class among them."""
    g = torch.Generator().manual_seed(seed)
    references, reference_lengths = pad_sequences([torch.randn(n, FEATURES, generator=g).numpy() for n in lengths])
    labels = torch.arange(len(lengths)) % CLASSES
    model = create_model("dtw_1nn", n_features=FEATURES, n_classes=CLASSES, n_references=len(lengths),
                         reference_length=max(lengths))
    return model.remember(references, reference_lengths, labels).eval()


def test_registry_lists_every_cell_for_both_tasks_and_1nn_dtw():
    cells = ("rnn", "gru", "lstm")
    assert list_models() == sorted([f"{c}_{kind}" for c in cells for kind in ("classifier", "ensemble", "forecaster")] + ["dtw_1nn"])


def test_unknown_model_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown model 'transformer'; valid models: dtw_1nn, gru_classifier, gru_ensemble, gru_forecaster"):
        create_model("transformer")


NETWORK_RECIPES = [{"bidirectional": b, "num_layers": 2, **r} for b in (False, True)
                   for r in ({}, {"instance_norm": True, "conv_stride": 1}, {"instance_norm": True, "conv_stride": 4})]


@pytest.mark.parametrize("name, recipe", [(n, r) for n in CLASSIFIERS for r in ([{}] if n == "dtw_1nn" else NETWORK_RECIPES)])
def test_classifier_padding_never_changes_an_answer(name, recipe):
    model = build(name, **recipe)
    g = torch.Generator().manual_seed(1)
    sequences = [torch.randn(n, FEATURES, generator=g).numpy() for n in (9, 1, 30, 17)]
    x, lengths = pad_sequences(sequences)
    with torch.inference_mode():
        batched = model(x, lengths)
        assert batched.shape == (4, CLASSES)
        assert torch.isfinite(batched).all()
        for row, seq in enumerate(sequences):
            alone = model(torch.from_numpy(seq)[None], torch.tensor([len(seq)]))
            torch.testing.assert_close(alone[0], batched[row], atol=1e-5, rtol=0)


def test_dtw_1nn_distances_are_aeons_and_the_nearest_class_wins():
    from aeon.distances import dtw_distance

    model = dtw_model()
    g = torch.Generator().manual_seed(3)
    queries = [torch.randn(n, FEATURES, generator=g).numpy() for n in (5, 1, 25)]
    x, lengths = pad_sequences(queries)
    with torch.inference_mode():
        distances, logits = model.distances(x, lengths), model(x, lengths)
    references = [model.references[i, :n].double().numpy() for i, n in enumerate(model.reference_lengths.tolist())]
    expected = np.array([[dtw_distance(q.T.astype(np.float64), r.T) for r in references] for q in queries])
    np.testing.assert_allclose(distances.numpy(), expected, rtol=1e-12)
    nearest_class = model.reference_labels[expected.argmin(axis=1)]
    assert logits.argmax(dim=1).tolist() == nearest_class.tolist()


def test_dtw_1nn_knows_a_training_sequence_for_sure():
    model = dtw_model()
    n = int(model.reference_lengths[2])
    with torch.inference_mode():
        probabilities = model(model.references[2:3, :n], torch.tensor([n])).softmax(dim=-1)[0]
    assert probabilities.argmax() == model.reference_labels[2] and probabilities.max() > 0.999


def test_an_ensemble_answers_its_members_mean_probability():
    model = build("gru_ensemble", bidirectional=True, instance_norm="sequence", conv_stride=2)
    x, lengths = pad_sequences([np.random.default_rng(0).normal(size=(n, FEATURES)).astype(np.float32) for n in (9, 30)])
    with torch.inference_mode():
        mean = torch.stack([m(x, lengths).softmax(dim=-1) for m in model.members]).mean(dim=0)
        torch.testing.assert_close(model(x, lengths).softmax(dim=-1), mean)


@pytest.mark.parametrize("name", [n for n in list_models() if n.endswith("_forecaster")])
@pytest.mark.parametrize("skip_season", [0, 1, 7])
def test_forecaster_shapes_and_batch_invariance(name, skip_season):
    model = build(name, skip_season=skip_season)
    x = torch.randn(6, 24, FEATURES)
    with torch.inference_mode():
        out = model(x)
        assert out.shape == (6, HORIZON, 2, 1)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(model(x[2:3]), out[2:3], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", [n for n in list_models() if n.endswith("_forecaster")])
@pytest.mark.parametrize("skip_season", [0, 7])
def test_forecaster_answers_in_the_series_own_scale(name, skip_season):
    model = build(name, skip_season=skip_season)
    x = torch.randn(3, 24, FEATURES)
    with torch.inference_mode():
        small = model(x)
        large = model(x * 1000.0 + 50_000.0)
    torch.testing.assert_close(large, small * 1000.0 + 50_000.0, rtol=1e-4, atol=0.5)


@pytest.mark.parametrize("factor", [1e-30, 1e-15, 1e15, 1e30, 3e37])
def test_a_forecast_scales_with_its_window_however_small_or_large(factor):
    # The floor on a window's scale was partly absolute (1e-12) and float32's squares underflow near 1e-20 and
    # overflow near 1e20: a series of values near 1e-15 was forecast as if flat, one near 1e20 not at all.
    model = build("gru_forecaster", quantiles=[0.1, 0.9])
    x = torch.randn(3, 24, FEATURES) + 5
    with torch.inference_mode():
        torch.testing.assert_close(model(x * factor) / factor, model(x), rtol=1e-4, atol=1e-4)


def test_quantiles_never_cross_and_include_the_median():
    model = build("gru_forecaster", quantiles=[0.9, 0.1])
    assert model.quantiles == [0.1, 0.5, 0.9]
    assert model.point_index == 1
    with torch.inference_mode():
        # Random weights and wild inputs: the ordering must hold by construction, not by training.
        out = model(torch.randn(32, 24, FEATURES) * 100)
    assert out.shape == (32, HORIZON, 2, 3)
    assert (out.diff(dim=-1) >= 0).all()


def test_flat_history_gives_a_finite_forecast():
    model = build("lstm_forecaster")
    with torch.inference_mode():
        out = model(torch.full((1, 24, FEATURES), 7.0))
    assert torch.isfinite(out).all()


def test_unknown_cell_and_bad_quantiles_are_refused():
    from models.recurrent import Forecaster, RecurrentEncoder

    with pytest.raises(ValueError, match="unknown cell 'tcn'; valid cells: rnn, gru, lstm"):
        RecurrentEncoder(3, cell="tcn")
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        Forecaster(3, 1, 4, quantiles=[0.5, 1.0])


def test_a_fresh_seasonal_skip_forecaster_is_seasonal_naive():
    model = build("gru_forecaster", skip_season=4)  # the head starts at zero: the baseline, exactly
    x = torch.randn(2, 24, FEATURES) * 10 + 3
    with torch.inference_mode():
        out = model(x)[..., 0]  # (B, H, K)
    expected = torch.stack([x[:, 24 - 4 + h % 4, :2] for h in range(HORIZON)], dim=1)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
