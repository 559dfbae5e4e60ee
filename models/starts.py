"""Classical forecasts of one window, written as fixed linear maps: the forecast a Forecaster starts from.

Every forecast here is linear in the window's values, so each is one matrix ``W`` of shape
``(horizon, lookback)``: ``forecast = W @ window``. Every row sums to 1 (a constant window forecasts that
constant), so ``W`` commutes with the per-window standardisation the network works in and can be applied
to normalised values directly.

Kinds (a ``StartSpec`` names one and its parameters):

* ``mean`` — the window's mean (all zeros in normalised units): noise around a level.
* ``seasonal_naive`` — the last observed season (``season=1``: the last value).
* ``linear`` — a linear map fitted to the training windows by ridge regression (``fit_linear``), an
  autoregression on the standardised window: cycles of varying length (sunspots, population counts)
  are what it forecasts and the fixed-period kinds cannot. Its weights are fitted, so they are stored
  with the model's weights rather than derived from the spec.
* ``smoothing`` — exponential smoothing of the seasonally adjusted window. The season is estimated one of
  two ways (``season_fit``): ``line``, one least-squares fit of a line plus one offset per phase (offsets
  summing to zero) over the whole window; or ``moving_average``, classical decomposition: each phase's
  mean distance from the centred moving average of one season (the trend-cycle), which a turn in the
  level inside the window (a recession, a cycle) does not bend the way it bends a straight line. A
  damped-trend Holt filter (``alpha``, ``beta``, ``phi``) starts from the least-squares line of the
  adjusted values and runs over them, and the forecast is its damped-trend path plus the season.
  ``phi=0`` is simple exponential smoothing (no trend); ``beta=0, phi=1`` keeps the fitted line's slope
  (a drift).
  That is the M4 competition's strong statistical family (SES / Holt / damped on deseasonalised data,
  whose average "Comb" beat most entries), and the level/season split ES-RNN fed its network, here
  computed inside each window so that the stored model stays one function of the window.
* ``combination`` — a weighted average of other starts (``parts``: each one's share and spec). An average
  of linear maps is one linear map, so it serves like any other start; its weights are stored like a
  fitted start's, since one of its parts may be fitted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

KINDS = ("mean", "seasonal_naive", "smoothing", "linear", "combination")
SEASON_FITS = ("line", "moving_average")
FITTED_KINDS = ("linear", "combination")  # weights learnt from the data, stored with the model's weights


@dataclass(frozen=True)
class StartSpec:
    """One classical forecast: its kind and parameters (stored in a forecaster's hyper-parameters)."""

    kind: str = "mean"
    season: int = 1
    alpha: float = 0.0
    beta: float = 0.0
    phi: float = 1.0
    ridge: float = 0.0  # linear: the penalty, as a share of the mean squared input
    parts: tuple = ()  # combination: ({"share": w, **spec fields}, ...), shares summing to 1
    season_fit: str = "line"  # smoothing: how the season is estimated (cards before it have "line")

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown start kind {self.kind!r}; valid: {', '.join(KINDS)}")
        if self.season_fit not in SEASON_FITS:
            raise ValueError(f"unknown season_fit {self.season_fit!r}; valid: {', '.join(SEASON_FITS)}")
        if self.season < 1:
            raise ValueError(f"a start's season must be at least 1, got {self.season}")

    def describe(self) -> str:
        if self.kind == "mean":
            return "window mean"
        if self.kind == "seasonal_naive":
            return f"seasonal naive (lag {self.season})" if self.season > 1 else "naive (last value)"
        if self.kind == "linear":
            return f"linear autoregression of the window (ridge {self.ridge:g})"
        if self.kind == "combination":
            return "average of " + "; ".join(f"{part['share']:.2g} x {spec.describe()}" for part, spec in self.components())
        trend = f", trend beta {self.beta:g} phi {self.phi:g}" if self.phi else ""
        how = " (moving-average season)" if self.season_fit == "moving_average" else ""
        season = f" of the season-{self.season}-adjusted window{how}" if self.season > 1 else ""
        return f"exponential smoothing{season} (alpha {self.alpha:g}{trend})"

    def components(self) -> list[tuple[dict, "StartSpec"]]:
        """A combination's parts as (part, its StartSpec)."""
        return [(part, StartSpec(**{k: v for k, v in part.items() if k != "share"})) for part in self.parts]

    def to_dict(self) -> dict:
        return asdict(self)


def combination(shares_and_specs: list[tuple[float, StartSpec]]) -> StartSpec:
    """The ``combination`` start of these specs with these shares."""
    return StartSpec("combination", parts=tuple({"share": round(float(share), 6), **spec.to_dict()}
                                                 for share, spec in shares_and_specs))


def min_lookback(spec: StartSpec) -> int:
    """The shortest window ``spec`` can forecast from."""
    if spec.kind == "seasonal_naive":
        return spec.season
    if spec.kind == "smoothing":
        return 2 * spec.season if spec.season > 1 else 2
    if spec.kind == "combination":
        return max((min_lookback(part) for _, part in spec.components()), default=1)
    return 1


def start_weights(spec: StartSpec, lookback: int, horizon: int) -> np.ndarray:
    """``W`` (horizon, lookback) with ``forecast = W @ window`` for the kind and parameters of ``spec``
    (zeros for the fitted kinds, whose weights come from the data: ``fit_linear``)."""
    if spec.kind in FITTED_KINDS:
        return np.zeros((horizon, lookback), dtype=np.float32)
    if lookback < min_lookback(spec):
        raise ValueError(f"{spec.describe()} needs a window of at least {min_lookback(spec)} steps, got {lookback}")
    # Every kind is linear in the window, so forecasting each unit window gives W's columns.
    return _forecast(spec, np.eye(lookback), horizon).T.astype(np.float32)


def fit_linear(inputs: np.ndarray, targets: np.ndarray, ridge: float) -> np.ndarray:
    """``W`` (H, L) minimising ``|W x - y|^2 + ridge * mean(x^2) * N * |W|^2`` over standardised windows.

    ``inputs`` (N, L, K) and ``targets`` (N, H, K) in the windows' standardised units; every channel of
    every window is one example.
    """
    x = inputs.transpose(0, 2, 1).reshape(-1, inputs.shape[1])  # (N * K, L)
    y = targets.transpose(0, 2, 1).reshape(-1, targets.shape[1])  # (N * K, H)
    gram = x.T @ x
    mean_square = np.trace(gram) / len(gram)
    # Windows with no variation at all (a constant series) have a zero gram: a unit penalty then keeps the
    # system solvable, and the fit is zero weights, the window's mean.
    penalty = ridge * (mean_square if mean_square > 0 else 1.0) * np.eye(len(gram))
    return np.linalg.solve(gram + penalty, x.T @ y).T.astype(np.float32)


def _forecast(spec: StartSpec, windows: np.ndarray, horizon: int) -> np.ndarray:
    # windows: (N, L) -> (N, H)
    lookback = windows.shape[1]
    steps = np.arange(horizon)
    if spec.kind == "mean":
        return np.repeat(windows.mean(axis=1, keepdims=True), horizon, axis=1)
    if spec.kind == "seasonal_naive":
        return windows[:, lookback + steps % spec.season - spec.season]
    phases = np.arange(lookback) % spec.season
    if spec.season_fit == "moving_average" and spec.season > 1:
        season = _moving_average_season(windows, spec.season)  # (N, m); phase of step t: t % m
        start, slope, _ = line_and_season(windows - season[:, phases], 1)  # the adjusted values' line
    else:
        start, slope, season = line_and_season(windows, spec.season)
    adjusted = windows - season[:, phases]
    level, trend = start, slope  # the fitted line at step 0 starts the filter
    for t in range(1, lookback):
        before = level
        level = spec.alpha * adjusted[:, t] + (1 - spec.alpha) * (before + spec.phi * trend)
        trend = spec.beta * (level - before) + (1 - spec.beta) * spec.phi * trend
    damped = np.cumsum(spec.phi ** (steps + 1))  # phi + phi^2 + ... + phi^(h+1); phi = 0: no trend
    return level[:, None] + damped[None, :] * trend[:, None] + season[:, (lookback + steps) % spec.season]


def line_and_season(windows: np.ndarray, season: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares fit of ``a + b t + s[t % m]`` (offsets summing to zero) to each window (N, L):
    the line's value at step 0 (N,), its slope (N,) and the offsets (N, m)."""
    lookback = windows.shape[1]
    t = np.arange(lookback, dtype=np.float64)
    sum_zero = np.vstack([np.eye(season - 1), -np.ones((1, season - 1))])  # offsets s = sum_zero @ c
    design = np.column_stack([np.ones(lookback), t, np.eye(season)[t.astype(int) % season] @ sum_zero])  # (L, m + 1)
    coef, *_ = np.linalg.lstsq(design, windows.T, rcond=None)  # (m + 1, N)
    return coef[0], coef[1], (sum_zero @ coef[2:]).T


def _moving_average_season(windows: np.ndarray, season: int) -> np.ndarray:
    """Classical decomposition's offsets (N, m), summing to zero: each phase's mean distance of the window
    (N, L) from its centred moving average of one season (2 x m for an even m), where that average exists."""
    lookback = windows.shape[1]
    kernel = np.ones(season + 1 - season % 2)
    if season % 2 == 0:
        kernel[0] = kernel[-1] = 0.5
    kernel /= season
    half = len(kernel) // 2
    trend = np.lib.stride_tricks.sliding_window_view(windows, len(kernel), axis=1) @ kernel  # (N, L - 2 half)
    steps = np.arange(half, lookback - half)
    detrended = windows[:, steps] - trend
    phase = steps % season
    offsets = np.stack([detrended[:, phase == p].mean(axis=1) for p in range(season)], axis=1)
    return offsets - offsets.mean(axis=1, keepdims=True)
