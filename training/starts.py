"""Choose the classical forecast a new forecaster starts from, and whether it models the log of the series.

Every candidate in ``candidates`` (see ``models.starts``) is scored by its mean absolute error in units of
each window's own scale (``scoring_scale``: its change over one season for a seasonal series, its standard
deviation otherwise), so a series' level does not set its weight, with and without the log transform where
every training value is positive (``choose_start`` says on which windows). The quantile offsets are in the
windows' standard deviations, the model's own units, or for a panel in units that also grow with each
window's noise (``Band``, ``models.bands``; ``interval_offsets`` says why).
Scoring needs no training: each candidate is one matrix product over the windows (the linear ones one
least-squares fit first).

Why these: seasonal naive carries last season forward and loses to exponential smoothing wherever the
season is noisy or the level moves (monthly sales with a trend: the seasonally adjusted damped-trend
smoother, ETS's family, is the usual winner); the log makes a season that grows with the level a fixed
pattern, which the smoothers and the network then see as additive (DeepAR, ES-RNN).
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import torch

from models.bands import noise_units, residual_matrix
from models.recurrent import TRANSFORMS, window_unit
from models.starts import StartSpec, combination, fit_linear, min_lookback, start_weights
from training.windows import Windows

ALPHAS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
TRENDS = ((0.0, 0.0), (0.0, 0.9), (0.0, 0.98), (0.0, 1.0), (0.1, 0.9), (0.1, 0.98))  # (beta, phi); phi 0: none
RIDGES = (0.01, 0.1, 1.0)
# The classical starts averaged into one: the best of each of the FAMILIES_AVERAGED best-scoring trend families
# (``trend_family``). M4's "Comb" averaged SES, Holt and damped trend, three assumptions about the trend;
# the three best starts overall are often three near-copies of one (alpha 0.2, 0.3 and 0.5, one trend),
# which hedges nothing. On 50 public series, start only, one per family instead of the three best: mean test
# MASE / ETS 0.979 -> 0.943, more than 5% worse than ETS on 13 -> 9 (quarterly Australian residents 1.52
# -> 0.51, euro retail 1.20 -> 0.95, souvenirs 1.31 -> 0.81; UK gas 1.10 -> 1.19, Australian tourists 1.09
# -> 1.16, M1's yearly panel 0.98 -> 1.05; the built-in bench: airline 0.54 -> 0.78, arrivals 1.04 -> 1.06).
# The gains came from families the training windows scored far behind: keeping out a family whose best
# scored 5-50% behind the best left 11 to 13 misses, against 9 without.
# Weighting the families window by window instead, by how well each forecast the window's own last steps from
# its earlier ones (the one that did best, or softmax or inverse-square weights of those errors), was worse
# for every weighting tried: start-only test MASE 1.004-1.100 of the equal average on 36 public series, and
# 1.025-1.063 on 12 never used in tuning. A window's few steps choose a family less well than the training
# windows together do, as in M4, where combining beat selecting.
FAMILIES_AVERAGED = 3
# Interval widths from the held-out errors stay within these multiples of the training windows' spread
# (a band may not collapse or cross the median), and are weighed against it as if the training windows
# were PRIOR_WINDOWS held-out ones: on 18 public series, start only, the 0.1-0.9 band covered 80% +- 7
# points of the test values on 11 with the training windows' spread alone, 9 with the held-out errors alone
# (8 windows on airline and lynx made it 0.54 and 0.50), 13 weighed so (mean distance from 80%: 7.8, 9.4
# and 6.1 points).
MIN_FACTOR, MAX_FACTOR = 0.25, 4.0
PRIOR_WINDOWS = 30
# The band's tails (``interval_offsets``): the training errors' own quantiles weigh n / (n + TAIL_PRIOR_WINDOWS)
# against a normal law's, n the windows (16 weigh 0.35, 500 weigh 0.94).
TAIL_PRIOR_WINDOWS = 30
# Each series' latest share of its training windows scores the candidates (the fitted ones fit the rest).
HELD_OUT = 0.25
# The autoregression fits ``lookback`` weights per step ahead, so it is a candidate only where the windows it
# is fitted on (each target channel of each window one example) are at least this many per weight. With
# fewer, many sets of weights fit them exactly and ridge picks one, which the few held-out windows cannot tell
# from a forecast (40 years of wheat prices, 12 windows of 13 years: test MASE 5.9 against ETS's 0.50; without
# it 3.6). On 94 runs on 24 series of 20 to 55 steps (last-horizon, default flags), MASE over twice ETS's on
# 14 -> 10, the geometric mean of MASE / ETS 1.017 -> 0.984, mean 0.1-0.9 coverage 0.58 -> 0.61. Twice as
# many would also take it from annual sunspot area (48 windows for 40 weights: MASE 0.99 -> 1.43, behind
# seasonal naive's 1.36), a cycle it is there for.
MIN_EXAMPLES_PER_WEIGHT = 1


def candidates(season: int, lookback: int) -> list[StartSpec]:
    """Every start that fits a window of ``lookback`` steps, seasonal ones only for ``season > 1``."""
    specs = [StartSpec("mean"), StartSpec("seasonal_naive", 1)]
    adjustments = [(1, "line")]  # (season, how it is estimated) of the smoothers' seasonal adjustment
    if season > 1:
        specs.append(StartSpec("seasonal_naive", season))
        adjustments += [(season, "line"), (season, "moving_average")]
    specs += [StartSpec("smoothing", m, alpha, beta, phi, season_fit=fit)
              for m, fit in adjustments for alpha in ALPHAS for beta, phi in TRENDS]
    specs += [StartSpec("linear", ridge=ridge) for ridge in RIDGES]
    return [s for s in specs if min_lookback(s) <= lookback]


def trend_family(spec: StartSpec) -> str:
    """What a classical start assumes of the trend beyond the window: ``unsmoothed`` (the window mean,
    seasonal naive), or a smoother's ``no_trend`` (simple exponential smoothing), ``damped`` or ``linear``
    (the slope of the window's fitted line, undamped: a drift)."""
    if spec.kind in ("mean", "seasonal_naive"):
        return "unsmoothed"
    if spec.kind != "smoothing":
        raise ValueError(f"a {spec.kind} start is not a classical one: it has no trend family")
    return "no_trend" if spec.phi == 0 else "linear" if spec.phi == 1 else "damped"


def best_of_each_family(ranked: list[tuple], n: int) -> list[tuple]:
    """The first entry of each trend family in ``ranked`` ((error, spec, weights), best first), for the ``n``
    best families, among the starts with the season of the best: its length, or none (a family's best may
    take out no season where the best takes one out: on quarterly J&J earnings that made the test MASE / ETS
    1.14, not 1.01).

    Two families' best may be one forecast: simple smoothing with alpha 1 (``no_trend``) is naive, which
    ``unsmoothed`` holds as seasonal naive of season 1; it then counts twice. Taking instead the family's
    best start that repeats no other, or leaving the family out for the next, each made 157 start-only runs
    on public series worse (1.2% and 1.0%; runs more than 5% behind ETS 55 -> 59 with either): where a
    random walk is the best of two families, weighing it twice pays."""
    best: dict[str, tuple] = {}
    for entry in ranked:
        if entry[1].season == ranked[0][1].season:
            best.setdefault(trend_family(entry[1]), entry)
    return list(best.values())[:n]  # dicts keep insertion order: the families' best, best first


def to_model_space(values: np.ndarray, transform: str) -> np.ndarray:
    """The values the network works on: the log of a positive series, else the series itself."""
    return np.log(np.maximum(values, np.finfo(np.float32).tiny)) if transform == "log" else values


def from_model_space(values: np.ndarray, transform: str) -> np.ndarray:
    if transform != "log":
        return values
    with np.errstate(over="ignore"):  # a candidate that forecasts past float range scores inf and loses
        return np.exp(values)


def _level_floor(windows: np.ndarray) -> np.ndarray:
    """The smallest scale (N, 1, K) of ``windows`` (N, L, K), as ``Forecaster.normalize`` floors it: a flat window
    stays finite, and the floor moves with the level and the window's unit, so scaling a series scales it too."""
    unit = window_unit(torch.from_numpy(windows)).numpy()
    return 1e-6 * (np.abs(windows.mean(axis=1, keepdims=True)) + 1e-6 * unit)


def _in_model_units(inputs: np.ndarray, targets: np.ndarray,
                    transform: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Windows (N, L, K) and their targets (N, H, K) transformed and standardised as the model does:
    (inputs, targets, loc, scale), loc and scale (N, 1, K) being the inputs' own."""
    z = to_model_space(inputs.astype(np.float64), transform)
    loc = z.mean(axis=1, keepdims=True)
    scale = np.maximum(z.std(axis=1, keepdims=True), _level_floor(z))
    return (z - loc) / scale, (to_model_space(targets.astype(np.float64), transform) - loc) / scale, loc, scale


# A window whose season repeats almost exactly changes little over one season; its unit stays at least this share
# of its standard deviation, so that it cannot weigh thousands of times more than the other windows. Of 181
# start-only runs on public series it moved one (state government education jobs, a school-year season: test
# MASE 0.514 -> 0.515).
MIN_CHANGE_SHARE = 0.1


def scoring_scale(inputs: np.ndarray, season: int) -> np.ndarray:
    """The unit (N, 1, K) each window's errors are scored in. Where ``season > 1`` and the window is longer
    than one season: its mean absolute change over one season (MASE's kind of scale, taken on the window;
    MASE is what the forecasts are judged in), but at least ``MIN_CHANGE_SHARE`` of its standard deviation.
    Otherwise: its standard deviation (the training loss's unit). Either way at least 1e-6 of its level.

    A standard deviation counts a trend's spread as noise, so the errors of a smooth trending window, which
    MASE magnifies, counted least in the choice. On 50 runs on seasonal public series, start only, MASE's
    unit made the test MASE 0.995 times the standard deviation's (geometric mean) and the runs more than 5%
    behind ETS 10 -> 7; 10 of the 13 that moved gained (quarterly arrivals 1.370 -> 1.313, US macro levels
    1.268 -> 1.219, souvenirs 1.811 -> 1.733; Australian visitor nights 1.223 -> 1.259). On 22 seasonal
    series used for nothing before (19 US employment series, Dutch sales, UK non-durables, a quarterly
    occupancy panel) it was 1.004 times the standard deviation's, runs more than 5% behind ETS 3 -> 4: a wash
    there, kept because it scores in the unit the forecast is judged in. Without a season the change would be
    over one step, tiny where a series is smooth, and a few such windows then chose for all (annual air
    passengers 0.96 -> 1.44, ten yearly panels 0.8% worse), so there the standard deviation stays.
    """
    x = inputs.astype(np.float64)
    spread = x.std(axis=1, keepdims=True)
    floor = _level_floor(x)
    if season <= 1 or x.shape[1] <= season:
        return np.maximum(spread, floor)
    change = np.abs(x[:, season:] - x[:, :-season]).mean(axis=1, keepdims=True)
    return np.maximum(change, np.maximum(MIN_CHANGE_SHARE * spread, floor))


def _forecast(weights: np.ndarray, inputs_norm: np.ndarray) -> np.ndarray:
    # weights: (H, L), inputs_norm: (N, L, K) -> (N, H, K), in the same units
    return np.einsum("hl,nlk->nhk", weights.astype(np.float64), inputs_norm)


def latest_share(windows: Windows, share: float = HELD_OUT) -> np.ndarray:
    """A mask (N,) of each series' latest ``share`` of its windows (by forecast start)."""
    mask = np.zeros(len(windows), dtype=bool)
    for s in np.unique(windows.series_index):
        rows = np.flatnonzero(windows.series_index == s)
        cut = np.quantile(windows.start[rows], 1 - share)
        mask[rows[windows.start[rows] > cut]] = True
    return mask


def choose_start(windows: Windows, k: int, season: int, allow_log: bool) -> dict:
    """The best (transform, start) for the training ``windows`` (their first ``k`` channels are the targets).

    Three rounds. The classical candidates are scored on every window (the more origins, the steadier the
    choice of their few parameters: scoring them on a quarter of the windows picked alpha 0.1 over 0.7 on
    airline and doubled its test error), and the linear ones on each series' latest ``HELD_OUT`` share of
    the windows, fitted on the rest where the rest hold ``MIN_EXAMPLES_PER_WEIGHT`` examples per weight;
    the best single candidate names the transform. In that transform two
    finalists then meet on the latest share: the average of the best classical start of each of the
    ``FAMILIES_AVERAGED`` best trend families (M4's "Comb"), and its average with the best linear one
    (never the linear one alone: choosing the transform by the finalists instead made the 21-series mean
    worse, 0.816 -> 0.825 of ETS). The winner, if it has a linear part, is refitted on every window.
    Returns ``{"transform", "start": StartSpec, "weights" (H, L), "weights_before_latest" (H, L), "error",
    "errors", "autoregression"}``: ``weights_before_latest`` are the weights with the linear part fitted
    without the latest share (``weights`` itself where there is none), ``errors`` holds the best error of
    each kind and transform, and ``autoregression`` says whether it was a candidate and if not why (both
    for the report).
    """
    inputs, targets = windows.inputs[..., :k], windows.targets
    held = latest_share(windows)
    scale = scoring_scale(inputs, season)
    horizon, lookback = targets.shape[1], inputs.shape[1]
    fitting = int((~held).sum())  # the windows the autoregression is fitted on, each target channel one example
    if not held.any():
        why_no_linear = "no held-out windows to score it on"
    elif fitting * k < MIN_EXAMPLES_PER_WEIGHT * lookback:
        channels = f" x {k} channels" if k > 1 else ""
        why_no_linear = f"{fitting} windows{channels} to fit {lookback} weights per step ahead"
    else:
        why_no_linear = ""
    transforms = TRANSFORMS if allow_log else TRANSFORMS[:1]
    units = {t: _in_model_units(inputs, targets, t) for t in transforms}  # the same for every candidate

    def error(weights: np.ndarray, transform: str, rows: np.ndarray) -> float:
        z_norm, _, z_loc, z_scale = (part[rows] for part in units[transform])
        forecast = from_model_space(_forecast(weights, z_norm) * z_scale + z_loc, transform)
        return float(np.abs((forecast - targets[rows]) / scale[rows]).mean())

    every = np.ones(len(windows), dtype=bool)
    classical: dict[str, list] = {t: [] for t in transforms}  # transform -> [(error, spec, weights)], every window
    linear: dict[str, tuple] = {}  # transform -> the best (held-out error, spec, weights fitted on the rest)
    for transform in transforms:
        z_norm, y_norm, _, _ = units[transform]
        for spec in candidates(season, lookback):
            if spec.kind != "linear":
                weights = start_weights(spec, lookback, horizon)
                e = error(weights, transform, every)
                if np.isfinite(e):
                    classical[transform].append((e, spec, weights))
            elif not why_no_linear:
                weights = fit_linear(z_norm[~held], y_norm[~held], spec.ridge)
                e = error(weights, transform, held)
                if np.isfinite(e) and (transform not in linear or e < linear[transform][0]):
                    linear[transform] = (e, spec, weights)
    for ranked in classical.values():
        ranked.sort(key=lambda entry: entry[0])
    errors = {f"{t}: {spec.kind}": e for t in transforms for e, spec, _ in reversed(classical[t])}
    errors.update({f"{t}: linear": entry[0] for t, entry in linear.items()})
    best_classical = min(transforms, key=lambda t: classical[t][0][0])
    transform = best_classical
    if linear:
        best_linear = min(linear, key=lambda t: linear[t][0])
        if linear[best_linear][0] < error(classical[best_classical][0][2], best_classical, held):
            transform = best_linear

    top = best_of_each_family(classical[transform], FAMILIES_AVERAGED)
    top_spec = combination([(1 / len(top), spec) for _, spec, _ in top]) if len(top) > 1 else top[0][1]
    top_weights = np.mean([weights for *_, weights in top], axis=0)
    chosen = {"transform": transform, "start": top_spec, "weights": top_weights, "weights_before_latest": top_weights,
              "error": error(top_weights, transform, every)}
    if transform in linear:
        _, linear_spec, linear_weights = linear[transform]
        z_norm, y_norm, _, _ = units[transform]
        refit = fit_linear(z_norm, y_norm, linear_spec.ridge)
        mixed_spec = combination([(0.5 / len(top), spec) for _, spec, _ in top] + [(0.5, linear_spec)])
        # The autoregression is not a finalist alone: one that won the latest quarter of the windows by 7%
        # lost the test part by 13% (quarterly cement); averaged with the classical starts it gives up less.
        finalists = [(top_spec, top_weights, top_weights),
                     (mixed_spec, (top_weights + linear_weights) / 2, (top_weights + refit) / 2)]
        scored = [(error(before_latest, transform, held), spec, before_latest, final)
                  for spec, before_latest, final in finalists]
        e, spec, before_latest, weights = min(scored, key=lambda entry: entry[0])
        chosen = {"transform": transform, "start": spec, "weights": weights, "weights_before_latest": before_latest,
                  "error": e}
        errors[f"{transform}: combination"] = e
    chosen["weights"] = chosen["weights"].astype(np.float32)
    chosen["weights_before_latest"] = chosen["weights_before_latest"].astype(np.float32)
    return {**chosen, "errors": {key: round(e, 4) for key, e in errors.items()},
            "autoregression": f"not a candidate: {why_no_linear}" if why_no_linear else "a candidate"}


@dataclass(frozen=True)
class Band:
    """The unit of the quantile offsets (``models.bands``): each window's standard deviation (``noise_power``
    0), or that times (noise / standard deviation) ** ``noise_power``, the noise taken after the window's line
    and the offsets of ``season``."""

    noise_power: float = 0.0
    season: int = 1

    def describe(self) -> str:
        if not self.noise_power:
            return "the window's standard deviation"
        return f"the window's standard deviation x (noise / standard deviation) ^ {self.noise_power:g}"

    def units(self, z_norm: np.ndarray) -> np.ndarray:
        """The unit (N, 1, K) of each standardised window (N, L, K), in its standard deviations."""
        if not self.noise_power:
            return np.ones((z_norm.shape[0], 1, z_norm.shape[2]))
        residual = torch.from_numpy(residual_matrix(z_norm.shape[1], self.season))
        return noise_units(torch.from_numpy(z_norm.astype(np.float32)), residual, self.noise_power).double().numpy()


def interval_offsets(windows: Windows, k: int, chosen: dict, quantiles: list[float], band: Band = Band()) -> np.ndarray:
    """Each quantile's offset from the median forecast, (H, K, Q) in the units of ``band`` (``models.bands``).

    They are the quantiles of the chosen start's errors on every training window, less their median:
    every window is a forecast origin, and the start has no weights fitted to it (or, if linear, a
    few hundred fitted to many windows), so the spread is close to an out-of-sample one, measured at
    hundreds of origins where the handful of validation windows at the end of a short series gave 0.1-0.9
    bands covering 49-69% of the test values. Offsets in log units give intervals that widen with the level.

    For one series the unit is the window's standard deviation; for a panel, that times the square root of
    the window's share of noise (``Band``, chosen in ``training.forecast``): the standard deviation gives a
    smooth trending series of a panel a band too wide for its noise and a noisy one a band too narrow. On 16
    public panels, full CLI, the noise share made the wQL 5.4% lower (geometric mean) with the band within
    80% +- 7 on 4 of 16 with either unit; on 163 single series, start only, 1.1% lower, but the mean
    coverage fell 0.69 -> 0.66.

    Units of change instead of the standard deviation bought a lower quantile loss with worse calibration,
    on panels as on single series. On 159 start-only runs on public series, one step's change as the unit
    made the mean wQL 2.0% lower and left the 0.1-0.9 band
    within 80% +- 7 points on 31 runs instead of 37 (the square root of that unit, or its average with the
    standard deviation: 1.5% and 1.1% lower, 34). One season's change, on 65 runs, made the wQL 0.7% lower
    and the band within 80% +- 7 on 24 instead of 22, but doubled souvenirs' wQL, which rules it out.
    Choosing the unit per model (one step's change where, fitted on all but each series' latest quarter of
    the windows, its band had the lower quantile loss on that quarter) made the wQL of 181 start-only runs
    1.4% lower and left 40 bands within 80% +- 7 instead of 43; on the 18 panels among them it gained on
    yearly panels and lost on quarterly ones (Australian visitor nights and quarterly occupancy 1-10% worse).
    The offsets are taken about the errors' median: taken as the errors' own quantiles, the band moves with
    the start's bias on the training windows (annual air passengers' band 0.70 -> 0.82), but the wQL of 159
    runs was 4.2% higher (half that move: 1.4% higher), as the bias did not hold into the test part.

    The tails: each quantile's offset is the errors' own quantile weighed against a normal law's with their
    robust spread (``normal_offsets``) as if that law were ``TAIL_PRIOR_WINDOWS`` windows, counting every
    window of every series (a panel pools its errors, so its many windows keep their own quantiles). A short
    series has some 16 training windows, and the 0.1 and 0.9 quantiles of 16 errors are set by the two or
    three largest: a window across an oil shock made a band far too wide for the calm years after it, and a
    trend the start lagged in a few windows one lopsided. On 181 full-CLI runs on public series (102 of them
    short), the weighing made the wQL 3.2% lower (geometric mean; the short ones 5.4%), no worse than ETS's
    on 99 runs instead of 93, and the mean 0.1-0.9 coverage 0.683 -> 0.704 (ETS 0.746), with 39 bands within
    80% +- 7 instead of 42; MASE does not move. The normal law alone made the wQL 4.1% lower but lost the
    skew of longer series (annual Nile flow's band 0.75 -> 0.69). On the short runs, scaling each side's
    quartile out to its tail (to keep the skew) made the wQL 0.3% higher, and symmetric quantiles of the
    absolute deviations (not robust) 2.2% lower.

    A lone training window has no spread about its median at all: ``lone_window_offsets`` gives it a band.
    """
    errors = start_errors(windows, k, chosen["transform"], chosen["weights"], band)
    if len(errors) < 2:
        offsets = lone_window_offsets(errors, quantiles)
    else:
        median = np.quantile(errors, 0.5, axis=0)
        empirical = np.quantile(errors, quantiles, axis=0) - median  # (Q, H, K), exactly 0 at the median
        spread = robust_spread(errors - median)  # (H, K)
        # Where most errors equal their median (counts, flat stretches) the robust spread is 0 and says nothing
        # of the tails: the errors' own quantiles stand alone there.
        weight = np.where(spread > 0, len(errors) / (len(errors) + TAIL_PRIOR_WINDOWS), 1.0)  # (H, K)
        offsets = weight * empirical + (1 - weight) * normal_offsets(spread, quantiles)
    return offsets.transpose(1, 2, 0).astype(np.float32)  # (Q, H, K) -> (H, K, Q)


def lone_window_offsets(errors: np.ndarray, quantiles: list[float]) -> np.ndarray:
    """Offsets (Q, H, K) from the errors (1, H, K) of a lone training window (a series barely longer than its
    lookback and two horizons), which has no spread about its median: a normal law whose spread grows with
    the steps ahead as a random walk's, ``sqrt(h)`` times the one the window's errors give per step. A channel
    the start forecast exactly (a constant) keeps a band of zero width."""
    steps = np.arange(1, errors.shape[1] + 1, dtype=np.float64)[:, None]  # (H, 1)
    per_step = np.sqrt(np.mean(errors[0] ** 2 / steps, axis=0))  # (K,)
    return normal_offsets(np.sqrt(steps) * per_step, quantiles)


def robust_spread(deviations: np.ndarray) -> np.ndarray:
    """The standard deviation (H, K) of a normal law with the median absolute value of ``deviations`` (N, H, K),
    errors less their median: 1.4826 times it, a spread the few largest errors do not move."""
    return 1.4826 * np.quantile(np.abs(deviations), 0.5, axis=0)


def normal_offsets(spread: np.ndarray, quantiles: list[float]) -> np.ndarray:
    """Each quantile's offset (Q, H, K) under a normal law of standard deviation ``spread`` (H, K)."""
    return np.array([NormalDist().inv_cdf(q) for q in quantiles])[:, None, None] * spread[None]


def start_errors(windows: Windows, k: int, transform: str, weights: np.ndarray, band: Band = Band()) -> np.ndarray:
    """The errors (N, H, K) of the start with these ``weights`` (H, L) on ``windows``, in each window's
    standardised (log) units divided by its ``band`` unit: the units of the quantile offsets."""
    z_norm, y_norm, _, _ = _in_model_units(windows.inputs[..., :k], windows.targets, transform)
    return (y_norm - _forecast(weights, z_norm)) / band.units(z_norm)


def latest_errors(windows: Windows, k: int, chosen: dict, band: Band = Band()) -> np.ndarray:
    """The ``chosen`` start's errors (n, H, K) on each series' latest ``HELD_OUT`` share of ``windows``, its
    autoregression (if any) fitted without them (``weights_before_latest``): what calibrates the band of a
    series too short for a validation origin, the windows nearest the test part."""
    errors = start_errors(windows, k, chosen["transform"], chosen["weights_before_latest"], band)
    return errors[latest_share(windows)]


def calibrate_offsets(offsets: np.ndarray, residuals: np.ndarray, levels: list[float]) -> tuple[np.ndarray, list[float]]:
    """``offsets`` (H, K, Q) scaled, one factor per quantile, so each covers its level of ``residuals``.

    ``residuals`` (N, H, K) are errors of the served median in the same standardised units, nearer the test
    part in time than most training windows: the rolling-origin validation forecasts, made by a model trained
    on the data before each origin, or, where the series are too short for one, the start's errors on each
    series' latest quarter of its training windows (its autoregression, if any, fitted without them; its
    few smoothing parameters were chosen with them). The training windows give the offsets their shape over
    the horizon; these errors give their width (split conformal prediction, one scale per quantile).
    A quantile ``q`` below the median with offset ``o < 0`` holds ``r <= c o`` for the ``q`` share of the
    residuals when ``c`` is the ``1 - q`` quantile of ``r / o``; above the median, the ``q`` quantile. The
    factor applied is ``c`` weighed against 1 by the number of held-out windows (``PRIOR_WINDOWS``).
    Returns the scaled offsets and the factors (1 for the median).
    """
    scaled, factors = offsets.copy(), []
    for j, q in enumerate(levels):
        o = offsets[..., j]  # (H, K)
        usable = np.abs(o) > 1e-9
        if q == 0.5 or not usable.any() or len(residuals) < 2:
            factors.append(1.0)
            continue
        ratios = (residuals[:, usable] / o[usable]).ravel()
        n = len(residuals)  # the exchangeable units are the windows (a window's steps move together)
        share = q if q > 0.5 else 1 - q
        factor = float(np.quantile(ratios, min(1.0, np.ceil((n + 1) * share) / n)))  # split conformal's rank
        weight = n / (n + PRIOR_WINDOWS)  # few held-out windows move the width little
        factor = 1 + weight * (float(np.clip(factor, MIN_FACTOR, MAX_FACTOR)) - 1)
        scaled[..., j] = o * factor
        factors.append(round(factor, 3))
    return scaled, factors
