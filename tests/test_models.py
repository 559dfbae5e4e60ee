"""Every registered model: output shapes, finite outputs, and answers that padding and batching never change."""

import pytest
import torch

from models import create_model, list_models
from models.padding import pad_sequences

FEATURES, CLASSES, HORIZON = 3, 4, 5


def build(name: str, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    if name.endswith("_classifier"):
        return create_model(name, n_features=FEATURES, n_classes=CLASSES, hidden_size=16, **extra).eval()
    return create_model(name, n_features=FEATURES, n_targets=2, horizon=HORIZON, hidden_size=16, **extra).eval()


def test_registry_lists_every_cell_for_both_tasks():
    assert list_models() == sorted(f"{cell}_{task}" for cell in ("rnn", "gru", "lstm") for task in ("classifier", "forecaster"))


def test_unknown_model_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown model 'transformer'; valid models: gru_classifier, gru_forecaster"):
        create_model("transformer")


@pytest.mark.parametrize("name", [n for n in list_models() if n.endswith("_classifier")])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("recipe", [{}, {"instance_norm": True, "conv_stride": 1}, {"instance_norm": True, "conv_stride": 4}])
def test_classifier_padding_never_changes_an_answer(name, bidirectional, recipe):
    model = build(name, bidirectional=bidirectional, num_layers=2, **recipe)
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
