"""Recurrent networks: one encoder for ``rnn``/``gru``/``lstm``, a classifier and a forecaster on top.

Shapes follow ``batch_first=True`` everywhere: B = batch, T = time steps, F = features,
C = classes, H = horizon, K = target channels, Q = quantiles.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

CELLS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


class RecurrentEncoder(nn.Module):
    """A stacked RNN/GRU/LSTM that reads padded batches without letting padding change any answer.

    Sequences shorter than the batch's longest are packed, so the recurrence stops at each sequence's
    own last step; ``last`` is the final hidden state of the top layer (both directions when
    bidirectional), and padded positions of ``outputs`` are zero.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int = 64,
        num_layers: int = 2,
        cell: str = "gru",
        dropout: float = 0.1,
        bidirectional: bool = False,
    ):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; valid cells: {', '.join(CELLS)}")
        self.rnn = CELLS[cell](
            input_size,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            # torch warns (and ignores it) when dropout is set on a single layer.
            dropout=dropout if num_layers > 1 else 0.0,
            bidirectional=bidirectional,
        )
        self.directions = 2 if bidirectional else 1
        self.output_size = hidden_size * self.directions

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        # x: (B, T, F), lengths: (B,) int64 on CPU or None (all T) -> outputs: (B, T, D), last: (B, D)
        steps = x.shape[1]
        if lengths is None or bool((lengths == steps).all()):
            # Equal lengths: packing would only cost time.
            outputs, hidden = self.rnn(x)
        else:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            packed_outputs, hidden = self.rnn(packed)
            outputs, _ = pad_packed_sequence(packed_outputs, batch_first=True, total_length=steps)
        if isinstance(hidden, tuple):  # LSTM returns (h_n, c_n)
            hidden = hidden[0]
        # hidden: (layers * directions, B, hidden) -> the top layer's directions side by side: (B, D)
        last = hidden[-self.directions :].transpose(0, 1).reshape(x.shape[0], -1)
        return outputs, last


class SequenceClassifier(nn.Module):
    """Many-to-one classifier over variable-length multivariate sequences.

    Inputs are standardised per feature with statistics from the training data (stored as buffers, so
    they travel with the weights), encoded by a :class:`RecurrentEncoder`, and summarised by the last
    hidden state next to the mean of all valid steps; a linear head gives the logits.

    Parameters
    ----------
    n_features, n_classes:
        F and C.
    cell, hidden_size, num_layers, dropout, bidirectional:
        Passed to :class:`RecurrentEncoder`.
    """

    def __init__(
        self,
        n_features: int,
        n_classes: int,
        cell: str = "gru",
        hidden_size: int = 64,
        num_layers: int = 2,
        dropout: float = 0.1,
        bidirectional: bool = False,
    ):
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_std", torch.ones(n_features))
        self.encoder = RecurrentEncoder(n_features, hidden_size, num_layers, cell, dropout, bidirectional)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * self.encoder.output_size, n_classes))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, T, F) zero-padded after each length, lengths: (B,) int64 on CPU or None -> logits: (B, C)
        x = (x - self.feature_mean) / self.feature_std
        outputs, last = self.encoder(x, lengths)  # (B, T, D), (B, D)
        if lengths is None:
            mean = outputs.mean(dim=1)
        else:
            # Padded steps of `outputs` are zero, so a plain sum over time is the sum of valid steps.
            mean = outputs.sum(dim=1) / lengths.to(outputs.device, outputs.dtype).unsqueeze(1)
        return self.head(torch.cat([last, mean], dim=-1))


class Forecaster(nn.Module):
    """Direct multi-horizon forecaster: a history window in, the next ``horizon`` steps out.

    Every window is normalised by its own per-channel mean and standard deviation before the encoder
    and the forecast is mapped back with the target channels' statistics, so a model trained on one
    scale forecasts a series of any scale in that series' own units. With ``quantiles`` the head
    predicts one output per quantile; they are built as a base plus cumulative positive increments,
    so they can never cross. The median (0.5) is always among them and is the point forecast.

    Parameters
    ----------
    n_features:
        Channels in the history: the K target channels first, then past covariates.
    n_targets:
        K, the channels to forecast.
    horizon:
        H, the steps forecast in one pass.
    quantiles:
        Quantile levels in (0, 1); empty for a point forecaster trained on absolute error.
    """

    def __init__(
        self,
        n_features: int,
        n_targets: int,
        horizon: int,
        quantiles: list[float] | tuple[float, ...] = (),
        cell: str = "gru",
        hidden_size: int = 64,
        num_layers: int = 2,
        dropout: float = 0.1,
        bidirectional: bool = False,
    ):
        super().__init__()
        if not 1 <= n_targets <= n_features:
            raise ValueError(f"n_targets must be between 1 and n_features={n_features}, got {n_targets}")
        if any(not 0.0 < q < 1.0 for q in quantiles):
            raise ValueError(f"quantiles must lie strictly between 0 and 1, got {list(quantiles)}")
        self.quantiles = sorted(set(quantiles) | {0.5}) if quantiles else []
        self.point_index = self.quantiles.index(0.5) if quantiles else 0
        self.n_targets = n_targets
        self.horizon = horizon
        self.encoder = RecurrentEncoder(n_features, hidden_size, num_layers, cell, dropout, bidirectional)
        self.n_outputs = max(len(self.quantiles), 1)
        self.head = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(self.encoder.output_size, horizon * n_targets * self.n_outputs)
        )

    def normalize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # x: (B, T, F) -> x_norm: (B, T, F), loc: (B, 1, F), scale: (B, 1, F)
        loc = x.mean(dim=1, keepdim=True)
        # A floor relative to the level keeps flat windows finite without breaking scale invariance.
        floor = 1e-6 * (loc.abs() + 1e-6)
        scale = x.std(dim=1, keepdim=True, unbiased=False).maximum(floor)
        return (x - loc) / scale, loc, scale

    def forward_normalized(self, x_norm: torch.Tensor) -> torch.Tensor:
        # x_norm: (B, T, F) -> (B, H, K, Q) in the window's normalised units, ordered along Q
        _, last = self.encoder(x_norm)
        raw = self.head(last).view(-1, self.horizon, self.n_targets, self.n_outputs)
        if self.n_outputs == 1:
            return raw
        increments = F.softplus(raw[..., 1:])
        return torch.cat([raw[..., :1], raw[..., :1] + increments.cumsum(dim=-1)], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, T, F), targets in the first K channels -> (B, H, K, Q) in the series' own scale
        x_norm, loc, scale = self.normalize(x)
        k = self.n_targets
        # loc/scale: (B, 1, K) -> (B, 1, K, 1) to broadcast over H and Q
        return self.forward_normalized(x_norm) * scale[..., :k, None] + loc[..., :k, None]
