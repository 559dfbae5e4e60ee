"""The streaming step (models.streaming): after any number of steps, the same answer as the whole sequence."""

import numpy as np
import pytest
import torch

from models import CELLS, create_model
from models.padding import pad_sequences
from models.starts import FITTED_KINDS, StartSpec, combination
from models.streaming import NotStreamable, pack_state, stream_for, unpack_state

FEATURES, CLASSES, HORIZON, LOOKBACK = 3, 4, 5, 12
# Chunks a stream is fed in: single steps, a few, many; 1 + 1 + 3 + 1 + 40 + 2 + 150 = 198 steps.
CHUNKS = [1, 1, 3, 1, 40, 2, 150]


def classifier(cell: str, **recipe) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(f"{cell}_classifier", n_features=FEATURES, n_classes=CLASSES, hidden_size=16, num_layers=2, **recipe)
    with torch.no_grad():  # training statistics that are not 0/1, so the standardisation is exercised
        model.feature_mean.copy_(torch.tensor([5.0, -1.0, 0.5]))
        model.feature_std.copy_(torch.tensor([2.0, 0.5, 1.5]))
    return model.eval()


# The recipes a card can hold: the older one (a seasonal naive start, one member, learnt quantiles) and the
# current one's kinds (log of the targets, smoothing, fitted linear and combined starts, averaged members,
# offsets, offsets in units that grow with each window's noise).
FORECASTER_RECIPES = {
    "older card": {"skip_season": 4, "linear_lookback": LOOKBACK},
    "log, smoothing, members": {"lookback": LOOKBACK, "transform": "log", "members": 3,
                                "start": {"kind": "smoothing", "season": 4, "alpha": 0.3, "beta": 0.1, "phi": 0.9},
                                "quantile_offsets": [[[-0.5, 0.0, 0.7]]] * HORIZON},
    "fitted linear start": {"lookback": LOOKBACK, "members": 2, "start": {"kind": "linear", "ridge": 0.1},
                            "quantile_offsets": [[[-0.3, 0.0, 0.4]]] * HORIZON},
    "combination start": {"lookback": LOOKBACK, "transform": "log", "members": 2,
                          "start": combination([(0.5, StartSpec("seasonal_naive", 4)),
                                                (0.5, StartSpec("linear", ridge=0.1))]).to_dict(),
                          "quantile_offsets": [[[-0.3, 0.0, 0.4]]] * HORIZON},
    "a panel's band": {"lookback": LOOKBACK, "members": 2, "start": {"kind": "smoothing", "season": 4, "alpha": 0.3},
                       "quantile_offsets": [[[-0.3, 0.0, 0.4]]] * HORIZON, "band_noise_power": 0.5, "band_season": 4},
}


def forecaster(cell: str, recipe: str = "older card") -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(f"{cell}_forecaster", n_features=2, n_targets=1, horizon=HORIZON, quantiles=[0.1, 0.9],
                         hidden_size=16, **FORECASTER_RECIPES[recipe])
    with torch.no_grad():  # members that add something, and a fitted start that is not zero
        for p in model.members.parameters() if recipe != "older card" else ():
            p.add_(0.05 * torch.randn_like(p))
        if model.start.kind in FITTED_KINDS:
            model.start_weights.copy_(torch.randn_like(model.start_weights) * 0.1)
    return model.eval()


def series(steps: int, features: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(steps, features)) * 2 + 5).astype(np.float32)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("recipe", [
    {}, {"conv_stride": 1}, {"conv_stride": 3, "instance_norm": "running"}, {"conv_stride": 1, "instance_norm": "running"},
])
def test_classifier_stream_equals_the_whole_sequence_after_every_step(cell, recipe):
    model, seq = classifier(cell, **recipe), series(sum(CHUNKS), FEATURES)
    stream_every_step(model, seq, CHUNKS, lambda got, whole: np.testing.assert_allclose(got, whole, atol=1e-5, rtol=0))


def stream_every_step(model, seq: np.ndarray, chunks: list[int], same) -> None:
    """Feed ``seq`` to a classifier's stream in ``chunks``; after every step, ``same(logits, whole-sequence logits)``."""
    stream = stream_for(model)
    state, seen = stream.initial(), 0
    for k in chunks:
        [advanced] = stream.advance([state], [seq[seen : seen + k]], every_step=[True])
        seen += k
        assert [n for n, _ in advanced.outputs] == list(range(seen - k + 1, seen + 1))
        with torch.inference_mode():
            for n, logits in advanced.outputs:
                same(logits, model(torch.from_numpy(seq[:n])[None], torch.tensor([n]))[0].numpy())
        state = unpack_state(pack_state(advanced.state, stream.fields), stream.fields)  # as a token carries it


@pytest.mark.parametrize("cell", list(CELLS))
def test_classifier_streams_batched_together_keep_their_own_answers(cell):
    model = classifier(cell, conv_stride=2, instance_norm="running")
    stream = stream_for(model)
    sequences = [series(n, FEATURES, seed=n) for n in (7, 1, 30)]
    advanced = stream.advance([stream.initial()] * 3, sequences, every_step=[False, True, False])
    assert [len(a.outputs) for a in advanced] == [1, 1, 1]  # only the last step, unless every step was asked for
    with torch.inference_mode():
        for seq, a in zip(sequences, advanced):
            [(n, logits)] = a.outputs
            assert n == len(seq)
            whole = model(torch.from_numpy(seq)[None], torch.tensor([len(seq)]))[0].numpy()
            np.testing.assert_allclose(logits, whole, atol=1e-5, rtol=0)


def test_a_stream_state_is_the_same_size_however_long_it_ran():
    stream = stream_for(classifier("lstm", conv_stride=4, instance_norm="running"))
    [short] = stream.advance([stream.initial()], [series(3, FEATURES)], [False])
    [long] = stream.advance([stream.initial()], [series(500, FEATURES)], [False])
    assert len(pack_state(short.state, stream.fields)) == len(pack_state(long.state, stream.fields))


def test_dtw_1nn_stream_equals_the_whole_sequence_after_every_step():
    from tests.test_models import dtw_model

    model, seq = dtw_model(), series(sum(CHUNKS[:5]), FEATURES)  # 46 steps, past the longest reference
    stream_every_step(model, seq, CHUNKS[:5], np.testing.assert_array_equal)


def test_dtw_1nn_streams_batched_together_keep_their_own_answers():
    from tests.test_models import dtw_model

    model = dtw_model()
    stream = stream_for(model)
    sequences = [series(n, FEATURES, seed=n) for n in (7, 1, 30)]
    advanced = stream.advance([stream.initial()] * 3, sequences, every_step=[False, True, False])
    x, lengths = pad_sequences(sequences)
    with torch.inference_mode():
        whole = model(x, lengths).numpy()
    for row, a in zip(whole, advanced):
        [(n, logits)] = a.outputs
        np.testing.assert_array_equal(logits, row)


@pytest.mark.parametrize("recipe, reason", [
    ({"bidirectional": True}, "it is bidirectional: its backward pass reads the whole sequence again with every new step; "
                              "train it with --no-bidirectional to stream"),
    ({"instance_norm": "sequence"}, "it standardises each sequence by the statistics of all its steps, which every new "
                                    "step changes; train it with --instance-norm running to stream"),
    ({"instance_norm": True}, "it standardises each sequence by the statistics of all its steps"),  # an older card
    ({"bidirectional": True, "instance_norm": "sequence"},  # both named at once: one retraining is enough
     "it is bidirectional: its backward pass reads the whole sequence again with every new step; and it standardises "
     "each sequence by the statistics of all its steps, which every new step changes; train it with "
     "--no-bidirectional --instance-norm running to stream"),
])
def test_classifiers_that_cannot_stream_say_why(recipe, reason):
    with pytest.raises(NotStreamable, match=reason.replace("(", r"\(")):
        stream_for(classifier("gru", **recipe))


def test_an_ensemble_cannot_stream_and_says_why():
    model = create_model("gru_ensemble", members=4, n_features=FEATURES, n_classes=CLASSES, hidden_size=8,
                         bidirectional=False, instance_norm="running")
    with pytest.raises(NotStreamable, match="^it is an ensemble of 4 networks, and a stream steps one network; "
                                            "train it with --family network to stream$"):
        stream_for(model)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("recipe", list(FORECASTER_RECIPES))
def test_forecaster_stream_equals_forecasting_the_history_so_far(cell, recipe):
    model, history = forecaster(cell, recipe), series(60, 2) * 10 + 300
    stream = stream_for(model, lookback=LOOKBACK)
    state, seen = stream.initial(), 0
    for k in (1, 5, 1, 10, 43):
        [advanced] = stream.advance([state], [history[seen : seen + k]], every_step=[True])
        seen += k
        # Like /forecast, nothing before `lookback` steps; then one forecast per step, on the last lookback steps.
        assert [n for n, _ in advanced.outputs] == [n for n in range(seen - k + 1, seen + 1) if n >= LOOKBACK]
        with torch.inference_mode():
            for n, out in advanced.outputs:
                whole = model(torch.from_numpy(history[n - LOOKBACK : n])[None])[0].numpy()
                # float32 rounding of answers near 300 from members that are not zero: relative, not absolute
                np.testing.assert_allclose(out, whole, atol=1e-5, rtol=0 if recipe == "older card" else 1e-6)
        state = unpack_state(pack_state(advanced.state, stream.fields), stream.fields)


def test_unpack_refuses_a_state_of_the_wrong_size():
    stream = stream_for(classifier("gru"))
    raw = pack_state(stream.initial(), stream.fields)
    with pytest.raises(ValueError, match=f"a state holds {len(raw)} bytes, got {len(raw) - 4}"):
        unpack_state(raw[:-4], stream.fields)
