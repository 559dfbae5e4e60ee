"""Recurrent networks: one encoder for ``rnn``/``gru``/``lstm``, a classifier and a forecaster on top.

Shapes follow ``batch_first=True`` everywhere: B = batch, T = time steps, F = features,
C = classes, H = horizon, K = target channels, Q = quantiles.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models.bands import MIN_LOOKBACK, noise_units, residual_matrix
from models.normalization import instance_norm_name, instance_standardize, running_standardize
from models.starts import FITTED_KINDS, StartSpec, min_lookback, start_weights

TRANSFORMS = ("none", "log")
# Training's cap on a log forecaster's output in log units: exp(80) = 5.5e34 leaves float32 room (3.4e38) for
# the loss to divide it by a small window scale and sum it over quantiles without overflowing to inf.
TRAINING_LOG_CAP = 80.0

CELLS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


MAX_UNIT_EXPONENT = 127  # 2 ** 127: float32's largest power of two


def window_unit(x: torch.Tensor) -> torch.Tensor:
    """The power of two (B, 1, F) above each window's (B, T, F) largest absolute value (1 for a window of zeros;
    at most 2 ** 127, float32's largest): the unit ``Forecaster.normalize`` measures the window in."""
    _, exponent = torch.frexp(x.abs().amax(dim=1, keepdim=True))
    return torch.ldexp(torch.ones_like(x[:, :1]), exponent.clamp_max(MAX_UNIT_EXPONENT))


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


class CausalConvFrontEnd(nn.Module):
    """Causal ``Conv1d`` + GELU, a causal max-pool that shortens long sequences ``stride`` times, another conv.

    Output step ``j`` reads input steps up to ``j*stride`` only (left padding everywhere), so steps after
    a sequence's end never reach its valid outputs and padding cannot change an answer. A sequence of
    length ``L`` becomes ``ceil(L / stride)`` steps. Max-pooling keeps short peaks that a strided
    convolution averages away (ACSF1, appliance power spikes: 0.68 -> 0.83; OSULeaf 0.81 either way).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv_in = nn.Conv1d(in_channels, out_channels, 7)
        self.conv_out = nn.Conv1d(out_channels, out_channels, 5)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        # x: (B, T, F), lengths: (B,) or None -> (B, ceil(T / stride), out), lengths: (B,) or None
        y = F.gelu(self.conv_in(F.pad(x.transpose(1, 2), (6, 0))))  # (B, out, T)
        if self.stride > 1:
            y = F.max_pool1d(F.pad(y, (self.stride - 1, 0), value=float("-inf")), self.stride)  # (B, out, T')
        y = F.gelu(self.conv_out(F.pad(y, (4, 0))))  # (B, out, T')
        if lengths is not None:
            lengths = torch.div(lengths - 1, self.stride, rounding_mode="floor") + 1
        return y.transpose(1, 2), lengths


@dataclass
class ClassifierConfig:
    """Hyper-parameters of :class:`SequenceClassifier`; stored as the card's ``hparams``.

    Loading calls ``create_model(card.model_name, **card.hparams)`` (``models.artifact``), which passes them
    to the model's constructor; fields added later default to the old behaviour, so older cards still load.
    """

    n_features: int
    n_classes: int
    hidden_size: int = 64
    num_layers: int = 2
    dropout: float = 0.1
    bidirectional: bool = False
    # also feed each sequence standardised by its own statistics: "none", "sequence" (all its steps) or
    # "running" (steps up to each step, so the model can stream); older cards stored False/True
    instance_norm: bool | str = "none"
    conv_stride: int = 0  # 0: no front end; k >= 1: a causal conv front end that max-pools k steps into one


class SequenceClassifier(nn.Module):
    """Many-to-one classifier over variable-length multivariate sequences.

    Inputs are standardised per feature with statistics from the training data (stored as buffers, so
    they travel with the weights); with ``instance_norm`` every sequence standardised by its own
    statistics (over all its steps, or running: see :mod:`models.normalization`) is fed beside them (2F
    channels), so shape is seen apart from level. An optional causal
    convolutional front end (``conv_stride``) extracts local patterns and shortens long sequences. A
    :class:`RecurrentEncoder` reads the result, summarised by the last hidden state next to the mean of
    all valid steps; a linear head gives the logits.

    Parameters
    ----------
    n_features, n_classes:
        F and C.
    cell, hidden_size, num_layers, dropout, bidirectional:
        Passed to :class:`RecurrentEncoder`.
    instance_norm, conv_stride:
        See :class:`ClassifierConfig`; both off by default (the original network).
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
        instance_norm: bool | str = "none",
        conv_stride: int = 0,
    ):
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_std", torch.ones(n_features))
        self.instance_norm = instance_norm_name(instance_norm)
        channels = n_features if self.instance_norm == "none" else 2 * n_features
        self.front = CausalConvFrontEnd(channels, hidden_size, conv_stride) if conv_stride else None
        if self.front is not None:
            channels = hidden_size
        self.encoder = RecurrentEncoder(channels, hidden_size, num_layers, cell, dropout, bidirectional)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * self.encoder.output_size, n_classes))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, T, F) zero-padded after each length, lengths: (B,) int64 on CPU or None -> logits: (B, C)
        z = (x - self.feature_mean) / self.feature_std
        if self.instance_norm == "sequence":
            z = torch.cat([z, instance_standardize(x, lengths)], dim=-1)  # (B, T, 2F)
        elif self.instance_norm == "running":
            z = torch.cat([z, running_standardize(x, lengths)], dim=-1)  # (B, T, 2F)
        if self.front is not None:
            z, lengths = self.front(z, lengths)  # (B, T', hidden), T' = ceil(T / stride)
        outputs, last = self.encoder(z, lengths)  # (B, T', D), (B, D)
        if lengths is None:
            mean = outputs.mean(dim=1)
        else:
            # Padded steps of `outputs` are zero, so a plain sum over time is the sum of valid steps.
            mean = outputs.sum(dim=1) / lengths.to(outputs.device, outputs.dtype).unsqueeze(1)
        return self.head(torch.cat([last, mean], dim=-1))


@dataclass
class ForecasterConfig:
    """Hyper-parameters of :class:`Forecaster`; stored as the card's ``hparams``, all but ``lookback``, which
    the card holds once as ``card.lookback``.

    Loading calls ``create_model(card.model_name, **model_args(card))`` (``models.artifact``): the hparams
    and the card's lookback. Fields added later default to the old behaviour, so older cards still load
    (``skip_season`` is how they named their start).
    """

    n_features: int
    n_targets: int
    horizon: int
    quantiles: list[float] = field(default_factory=list)
    hidden_size: int = 64
    num_layers: int = 2
    dropout: float = 0.1
    bidirectional: bool = False
    skip_season: int = 0  # older cards' start: 0 the window mean, m >= 1 seasonal naive (lag m)
    linear_lookback: int = 0  # 0: none; L: a linear map of the last L target steps is added too (NLinear-style)
    lookback: int = 0  # the window the model reads (0: any length; older cards)
    transform: str = "none"  # "log": the targets are modelled as their logarithm
    start: dict | None = None  # a models.starts.StartSpec as a dict; None: from skip_season
    members: int = 1  # recurrent networks whose outputs are averaged
    # (H, K, Q) nested lists: each quantile as the median plus these, in normalised units; empty: the
    # members learn every quantile themselves (older cards)
    quantile_offsets: list = field(default_factory=list)
    # The offsets' unit (models.bands): 0, each window's standard deviation; p > 0, that times
    # (noise / standard deviation) ** p, the noise measured after the window's line and seasonal offsets
    # (of season ``band_season``).
    band_noise_power: float = 0.0
    band_season: int = 1


class ForecastMember(nn.Module):
    """One network of a :class:`Forecaster`: a recurrent encoder, a quantile head and an optional linear map.

    Reads a window in normalised units and returns its correction to the forecaster's start, ``(B, H, K, Q)``
    ordered along Q. Both the head's last layer and the linear map start at zero, so a fresh member adds
    nothing and the forecaster forecasts its start exactly.
    """

    def __init__(self, n_features: int, n_targets: int, horizon: int, n_outputs: int, cell: str, hidden_size: int,
                 num_layers: int, dropout: float, bidirectional: bool, linear_lookback: int):
        super().__init__()
        self.horizon, self.n_targets, self.n_outputs = horizon, n_targets, n_outputs
        self.encoder = RecurrentEncoder(n_features, hidden_size, num_layers, cell, dropout, bidirectional)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.encoder.output_size, horizon * n_targets * n_outputs))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)
        self.linear = nn.Linear(linear_lookback, horizon) if linear_lookback else None
        if self.linear is not None:
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)

    def forward(self, x_norm: torch.Tensor) -> torch.Tensor:
        # x_norm: (B, T, F) -> (B, H, K, Q) in the window's normalised units, ordered along Q
        _, last = self.encoder(x_norm)
        raw = self.head(last).view(-1, self.horizon, self.n_targets, self.n_outputs)
        if self.n_outputs > 1:
            increments = F.softplus(raw[..., 1:])
            raw = torch.cat([raw[..., :1], raw[..., :1] + increments.cumsum(dim=-1)], dim=-1)
        if self.linear is not None:
            recent = x_norm[:, -self.linear.in_features :, : self.n_targets].transpose(1, 2)  # (B, K, L)
            raw = raw + self.linear(recent).transpose(1, 2).unsqueeze(-1)  # (B, H, K, 1)
        return raw


class Forecaster(nn.Module):
    """Direct multi-horizon forecaster: a history window in, the next ``horizon`` steps out.

    The forecast is a classical start plus what the networks learnt on top of it:

    1. ``transform="log"`` models the targets' logarithm (a season that grows with the level becomes a
       fixed pattern); the answer is mapped back with ``exp``, which keeps quantiles in order.
    2. Every window is standardised by its own per-channel mean and standard deviation, so a model
       trained on one scale forecasts a series of any scale in that series' own units.
    3. The start, a classical forecast written as a fixed linear map of the window (``models.starts``:
       the window mean, seasonal naive, exponential smoothing of the seasonally adjusted window, a
       fitted linear autoregression, or an average of these), is the same for every quantile.
    4. ``members`` networks (:class:`ForecastMember`) each add a correction; their outputs are averaged.
    5. With ``quantile_offsets`` the members forecast the median alone and every quantile is the median
       plus its offset (per step and channel, in normalised units: calibrated on errors the model did not
       train on; with ``band_noise_power`` each window's unit grows with its noise, ``models.bands``);
       without them each member learns every quantile itself, never crossing.

    The median (0.5) is always among the quantiles and is the point forecast.

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
    lookback, start, skip_season:
        The window length and the start (a ``StartSpec`` dict, which may need the whole window); cards
        written before ``start`` existed give ``skip_season`` (m >= 1: seasonal naive, 0: the mean).
    linear_lookback:
        With ``L >= 1`` each member also adds a linear map of the last ``L`` steps of each target channel.
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
        skip_season: int = 0,
        linear_lookback: int = 0,
        lookback: int = 0,
        transform: str = "none",
        start: dict | None = None,
        members: int = 1,
        quantile_offsets: list | tuple = (),
        band_noise_power: float = 0.0,
        band_season: int = 1,
    ):
        super().__init__()
        if not 1 <= n_targets <= n_features:
            raise ValueError(f"n_targets must be between 1 and n_features={n_features}, got {n_targets}")
        if any(not 0.0 < q < 1.0 for q in quantiles):
            raise ValueError(f"quantiles must lie strictly between 0 and 1, got {list(quantiles)}")
        if transform not in TRANSFORMS:
            raise ValueError(f"unknown transform {transform!r}; valid: {', '.join(TRANSFORMS)}")
        if members < 1:
            raise ValueError(f"members must be at least 1, got {members}")
        self.quantiles = sorted(set(quantiles) | {0.5}) if quantiles else []
        self.point_index = self.quantiles.index(0.5) if quantiles else 0
        self.n_targets = n_targets
        self.horizon = horizon
        self.transform = transform
        offsets = torch.tensor(quantile_offsets, dtype=torch.float32) if len(quantile_offsets) else None
        if offsets is not None and tuple(offsets.shape) != (horizon, n_targets, len(self.quantiles)):
            raise ValueError(f"quantile_offsets must have shape (horizon, n_targets, quantiles) = "
                             f"{(horizon, n_targets, len(self.quantiles))}, got {tuple(offsets.shape)}")
        if band_noise_power and (offsets is None or lookback < MIN_LOOKBACK):
            raise ValueError(f"band_noise_power needs quantile_offsets and a lookback of at least {MIN_LOOKBACK} steps")
        n_outputs = 1 if offsets is not None else max(len(self.quantiles), 1)
        self.members = nn.ModuleList(
            ForecastMember(n_features, n_targets, horizon, n_outputs, cell, hidden_size, num_layers, dropout,
                           bidirectional, linear_lookback)
            for _ in range(members)
        )
        self.start = StartSpec(**start) if start else (
            StartSpec("seasonal_naive", skip_season) if skip_season else StartSpec("mean"))
        # The start reads the last `reach` steps: the whole window, or one season for seasonal naive. Its
        # weights follow from the config, except a fitted start's (FITTED_KINDS), stored with the weights.
        reach = lookback if self.start.kind in ("smoothing", *FITTED_KINDS) else min_lookback(self.start)
        weights = torch.from_numpy(start_weights(self.start, reach, horizon)) if self.start.kind != "mean" else None
        self.register_buffer("start_weights", weights, persistent=self.start.kind in FITTED_KINDS)  # (H, reach)
        self.register_buffer("quantile_offsets", offsets, persistent=False)  # (H, K, Q), from the config
        self.band_noise_power = band_noise_power
        residual = torch.from_numpy(residual_matrix(lookback, band_season)) if band_noise_power else None
        self.register_buffer("band_residual", residual, persistent=False)  # (L, L), from the config
        self.register_load_state_dict_pre_hook(_one_member_layout)

    def normalize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # x: (B, T, F) -> x_norm: (B, T, F), loc: (B, 1, F), scale: (B, 1, F)
        # Measured in units of a power of two above the window's largest value (``window_unit``): dividing by it
        # is exact, so loc and scale are the window's own, but float32's squares cannot underflow (values near
        # 1e-20 had a standard deviation of 0) or overflow (near 1e20: inf), and a forecast scales with its window.
        unit = window_unit(x)
        in_units = x / unit
        loc = in_units.mean(dim=1, keepdim=True)
        # A floor relative to the level (and to the unit, for a flat window at 0) keeps flat windows finite.
        floor = 1e-6 * (loc.abs() + 1e-6)
        scale = in_units.std(dim=1, keepdim=True, unbiased=False).maximum(floor) * unit
        loc = loc * unit
        return (x - loc) / scale, loc, scale

    def forward(self, x: torch.Tensor, members: list[int] | None = None, capped: bool = False) -> torch.Tensor:
        # x: (B, T, F), targets in the first K channels -> (B, H, K, Q) in the series' own scale;
        # members: the networks to average (default: all; training fits one at a time);
        # capped: a log model's output held below exp(TRAINING_LOG_CAP) (training's loss only)
        k = self.n_targets
        if self.transform == "log":
            # A non-positive value has no logarithm: it counts as the smallest positive float32.
            x = torch.cat([x[..., :k].clamp_min(torch.finfo(x.dtype).tiny).log(), x[..., k:]], dim=-1)
        x_norm, loc, scale = self.normalize(x)
        out = self.forward_normalized(x_norm, members)
        out = out * scale[..., :k, None] + loc[..., :k, None]  # loc/scale: (B, 1, K) -> (B, 1, K, 1)
        if self.transform != "log":
            return out
        # Uncapped, a forecast past float32's range is inf, which the service refuses as out of range (a cap
        # would answer a wrong number); training caps it so that one wild window cannot make the loss NaN.
        return (out.clamp(max=TRAINING_LOG_CAP) if capped else out).exp()

    def forward_normalized(self, x_norm: torch.Tensor, members: list[int] | None = None) -> torch.Tensor:
        # x_norm: (B, T, F) -> (B, H, K, Q) in the window's normalised (and transformed) units, ordered along Q
        chosen = [self.members[i] for i in members] if members is not None else list(self.members)
        out = torch.stack([member(x_norm) for member in chosen]).mean(dim=0)  # (B, H, K, Q)
        if self.start_weights is not None:
            recent = x_norm[:, -self.start_weights.shape[1] :, : self.n_targets]  # (B, reach, K)
            out = out + torch.einsum("hl,blk->bhk", self.start_weights, recent).unsqueeze(-1)  # (B, H, K, 1)
        if self.quantile_offsets is not None:
            offsets = self.quantile_offsets  # (H, K, Q)
            if self.band_residual is not None:  # x (B, 1, K, 1) -> (B, H, K, Q)
                offsets = offsets * self.band_unit(x_norm).unsqueeze(-1)
            out = out + offsets  # (B, H, K, 1) + offsets -> (B, H, K, Q)
        return out

    def band_unit(self, x_norm: torch.Tensor) -> torch.Tensor:
        # x_norm: (B, T, F) -> (B, 1, K): each window's unit of the quantile offsets, in its standard deviations
        # (models.bands; 1 without band_noise_power)
        window = x_norm[:, :, : self.n_targets]
        if self.band_residual is None:
            return torch.ones_like(window[:, :1])
        return noise_units(window[:, -self.band_residual.shape[0] :], self.band_residual, self.band_noise_power)


def _one_member_layout(module, state_dict, prefix, *_):
    """Weights stored before forecasters had members hold one member's parameters at the top level."""
    for key in [k for k in state_dict if k.startswith(prefix) and k[len(prefix):].split(".")[0] in ("encoder", "head", "linear")]:
        state_dict[f"{prefix}members.0.{key[len(prefix):]}"] = state_dict.pop(key)
