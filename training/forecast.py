"""Train a direct multi-horizon forecaster, compare it with naive, seasonal naive and ETS, and store it.

The default recipe (every choice is recorded in the card's ``training["recipe"]`` and the report):

* the season: the one given, else the data's (from timestamps), else inferred (``resolve_season``: the
  first autocorrelation peak near the strongest, so a cycle of ~10 years is 10, not a multiple of it);
* the protocol (``evaluation="auto"``): rolling ``windows`` over the last 20% of every series when every
  series is long enough for them (many test windows: a steadier estimate), else ``last-horizon``; a series
  too short for either is skipped and has no say;
* the lookback from the data (``training.windows.choose_lookback``: four seasons where the series
  allow); series too short for one training window and the held-out part are skipped with a WARNING;
* the start (``training.starts``): the classical forecast, written as a linear map of the window, that
  forecasts the training windows best, with or without the log of a positive series: the window mean,
  seasonal naive, exponential smoothing of the seasonally adjusted window (M4's strong statistical
  family), or a fitted linear autoregression (cycles). The log turns a season that grows with the level
  into a fixed one. Alone, the start beat seasonal naive on every monthly series we tried;
* intervals: each quantile is the median plus an offset per step ahead. The offsets take their shape from
  the spread of the start's errors over every training window (``training.starts.interval_offsets``:
  hundreds of forecast origins, where a network's own quantiles, fitted on those windows, covered too
  little of what came next) and their width from the served model's errors at the rolling validation
  origins (``training.starts.calibrate_offsets``, split conformal), as far as those windows are many, or,
  where the series are too short for an origin, from the start's errors on their latest training windows.
  A panel's offsets are in units that grow with each window's noise (``models.bands``, ``PANEL_NOISE_POWER``);
* the networks: ``members`` (default 5, fewer for large data) recurrent networks, seeds ``seed`` to
  ``seed + members - 1``, each learning a correction to the start's median on every window before the
  test part for about one optimiser step per window (``sized_for``); their corrections are averaged (M4's
  plainest lesson: combinations beat single models). Half the windows a network sees are mirrored about
  their mean (``mirrored``), so what it learns holds upside down too and a drift the whole sample shares
  cancels out: on quarterly arrivals, four series that grew from 1981 to 2005, unmirrored networks passed
  validation and then forecast 40% growth into the 2008 fall (UK test MASE 6.6 against the start's 1.8);
  mirrored, 2.52 became 1.36 (the start alone: validation no longer favoured the networks), and the mean
  test MASE over 12 runs on 11 public series went from 1.20 to 1.08. Rolling-origin validation
  (``training.windows.rolling_origins``) decides whether they are used at all: one network per origin
  trains on what came before it and forecasts what follows, and unless the networks beat the start at
  every origin and by ``NETWORK_MARGIN`` on average, the start alone is the model; so it is when the
  series are too short for a validation origin, where nothing shows that the networks help.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch

from models import ForecasterConfig, bands, create_model
from models.artifact import ModelCard, save_artifact
from models.starts import FITTED_KINDS
from training import baselines as strong, distributed, report, starts
from training.data import DataError, SeriesCollection, far_values, fingerprint
from training.loop import History, TrainConfig, fit, seed_everything, sized_for
from training.metrics import (compare_with_baselines, forecast_metrics, mase_scale, naive_forecast, quantile_metrics,
                              seasonal_naive_forecast)
from training.types import NetworkOptions, RunResult
from training.windows import (Windows, before_test, choose_lookback, fits, largest_fitting, last_horizon_split,
                              long_enough, rolling_origins, split_by_time, steps_needed, train_series)

log = logging.getLogger(__name__)

PROTOCOLS = ("auto", "windows", "last-horizon")


def pinball_loss(pred: torch.Tensor, target: torch.Tensor, quantiles: list[float]) -> torch.Tensor:
    """Mean quantile loss: ``pred`` (B, H, K, Q), ``target`` (B, H, K); plain absolute error without quantiles."""
    error = target.unsqueeze(-1) - pred  # (B, H, K, Q)
    if not quantiles:
        return error.abs().mean()
    q = torch.as_tensor(quantiles, dtype=pred.dtype, device=pred.device)
    return torch.maximum(q * error, (q - 1) * error).mean()


# An inferred season's autocorrelation must stand this many standard errors (1 / sqrt(pairs) for white
# noise) above zero: 0.3 alone is within noise's reach on a short series (random walks given a season:
# 83 -> 3 of 300 at 55 steps, 55 -> 1 at 80, 20 -> 9 at 131). Of 50 public series it took away only the
# season of 7 inferred in 55 years of US murder rates (z 2.1): test MASE / ETS 2.30 -> 1.01.
SEASON_Z = 3.0


def resolve_season(given: int | None, collection: SeriesCollection, horizon: int) -> tuple[int, str]:
    """The one place the season is decided: (season, where it came from).

    Given > the collection's (timestamps or the built-in's) > inferred from the mean autocorrelation of the
    first target's differences over the series' in-sample parts (everything before their last
    ``max(horizon, 20%)`` steps), at lags the parts hold three times over: the shortest lag (≥2) at a local
    peak above 0.3, within 60% of the strongest and ``SEASON_Z`` standard errors above zero; else 1 (no
    season). Series of a panel count as independent: one whose series share their shocks weighs as more
    pairs than it holds.
    """
    if given:
        return given, "given"
    if collection.season:
        return collection.season, "data"
    differences = [np.diff(s[: len(s) - max(horizon, round(0.2 * len(s))), 0]) for s in collection.series]
    differences = [d for d in differences if len(d) > 1 and d.std() > 0]
    scores = [0.0]  # scores[lag]: the mean autocorrelation at that lag over the series long enough for it
    pairs = [0.0]  # pairs[lag]: the number of pairs that mean weighs as much as (its variance is 1 / pairs)
    for lag in range(1, 400):
        # Three cycles at least: measured on fewer pairs, noise alone peaks past 0.3 somewhere (2-3 year
        # epidemics in 131 years of counts: 0.40 at lag 47, where no lag below 35 reaches 0.3).
        holding_lag = [d for d in differences if len(d) > 3 * lag]
        if not holding_lag:
            break
        correlations = np.array([np.corrcoef(d[:-lag], d[lag:])[0, 1] for d in holding_lag])
        finite = np.isfinite(correlations)  # a constant stretch of differences has none
        scores.append(float(correlations[finite].mean()) if finite.any() else 0.0)
        # An unweighted mean of m series' correlations, each of variance 1 / n_i for white noise.
        n = np.array([len(d) - lag for d in holding_lag])[finite]
        pairs.append(finite.sum() ** 2 / float(np.sum(1 / n)) if finite.any() else 0.0)
    scores = np.asarray(scores)
    # White noise's standard error: Bartlett's, wider where the differences correlate at shorter lags, took
    # away the ~10-year cycle of annual lynx counts (z 4.6 at lag 10 with it, under 3 with Bartlett's).
    significant = scores * np.sqrt(np.asarray(pairs)) >= SEASON_Z  # on few pairs, 0.3 can be noise
    strongest = scores[2:].max() if len(scores) > 2 else 0.0
    if strongest <= 0.3:  # below this the "season" is noise
        return 1, "none found"
    # A period also correlates at its multiples, and a cycle of varying length (~10 years of annual counts:
    # 0.51 at lag 10, 0.63 at 19) can correlate more at a multiple, measured on fewer pairs, than at
    # itself: the season is the first peak within 60% of the strongest, not the strongest. A half season
    # peaks well below its season and is passed over. Lag 2 is a peak only above lag 1: a smooth series'
    # differences correlate at the shortest lags and decay from there (half-hourly load: 2, not 48).
    peaks = [lag for lag in range(2, len(scores)) if scores[lag] > 0.3 and scores[lag] >= 0.6 * strongest
             and significant[lag]
             and scores[lag] >= scores[lag - 1] and scores[lag] >= scores[min(lag + 1, len(scores) - 1)]]
    return (peaks[0], "inferred from autocorrelation") if peaks else (1, "none found")


# Members are averaged (M4's plainest lesson: combinations beat single models): one network's correction
# moved test MASE by up to 0.1 from one seed to the next on short monthly series. Past ~200,000
# window-steps of training data (weekly CO2 with a two-year lookback) fewer keep a run within minutes
# on one core.
MAX_MEMBERS = 5
MEMBER_BUDGET = 200_000
# Optimiser steps times lookback, at most: 1,500 steps at lookback 104 (weekly CO2), 461 at 338 (5-minute
# calls in business hours, two days of 169 steps), where 1,500 steps would take ~290 s a network on one
# core, the validation network and the final one ten minutes in all; with the cap the run took 177 s.
STEP_BUDGET = 156_000
# Rolling origins that validate the networks; one when its validation part alone is this many windows.
MAX_FOLDS = 3
MANY_VAL_WINDOWS = 100
# The networks must beat the start by this share of its error at the validation origins to be used: a tie
# measured on a few origins is noise, and the start is the simpler model (US electricity: 0.2982 against
# 0.2986 at three origins, then 1.54 against 1.14 MASE on test).
NETWORK_MARGIN = 0.02
# A panel's band (several series, or several target channels) is measured in each window's standard deviation
# times (noise / standard deviation) ** PANEL_NOISE_POWER (models.bands): the series of a panel differ in how
# much of their spread is noise. One series keeps standard deviations (the power 0).
PANEL_NOISE_POWER = 0.5
# A band measured on fewer training windows than this gets a WARNING: of 9 runs on public series with 1-9
# windows (full CLI, last horizon), the 0.1-0.9 band covered 80% +- 7 points of the test values on 3, and
# none or all of them on 5.
FEW_BAND_WINDOWS = 10


def one_short_origin(origins: int, validation_windows: int) -> bool:
    """Whether validation is one origin of fewer than ``MANY_VAL_WINDOWS`` windows: one period, too short
    to show that the networks help (see ``networks_earn_their_place``)."""
    return origins == 1 and validation_windows < MANY_VAL_WINDOWS


def networks_earn_their_place(start_errors: list[float], network_errors: list[float], validation_windows: int) -> bool:
    """Whether validation shows that the networks help: they beat the start at every origin, and by
    ``NETWORK_MARGIN`` on average, at two origins or more or at one of ``MANY_VAL_WINDOWS`` windows
    (``validation_windows`` counts them over all origins). No origin, no evidence: the start stays.

    At every origin, not only on average: a gain that fails in one period may fail in the next. On
    quarterly arrivals (horizon 12) the networks were 2.6% better on average, worse at the first of three
    origins, and then lost the test part (MASE 1.411 against the start's 1.344, ETS 1.291). On 22 public
    series, networks trained on each, this changed the decision on that series alone. Nor is one short
    period enough: at one origin of 8 windows (15 quarters of Australian population) the networks were 31%
    better, and then took the test MASE from the start's 0.404 to 1.493.
    """
    if not start_errors or len(start_errors) != len(network_errors):
        return False
    if one_short_origin(len(start_errors), validation_windows):
        return False
    every = all(n < s for s, n in zip(start_errors, network_errors))
    return every and float(np.mean(network_errors)) < (1 - NETWORK_MARGIN) * float(np.mean(start_errors))


def ensemble_size(n_train: int, lookback: int) -> int:
    """How many members to train: ``MAX_MEMBERS``, fewer for large training sets."""
    return int(np.clip(MEMBER_BUDGET // max(1, n_train * lookback), 1, MAX_MEMBERS))


def new_model(model_name: str, hparams: ForecasterConfig, start_weights: np.ndarray, device: torch.device,
              **changes):
    """A fresh forecaster for ``hparams`` (with ``changes``) on ``device``; a fitted linear start gets its weights."""
    model = create_model(model_name, **{**dataclasses.asdict(hparams), **changes})
    if model.start.kind in FITTED_KINDS:
        model.start_weights.copy_(torch.from_numpy(start_weights))
    return model.to(device)


def mirrored(inputs: np.ndarray, targets: np.ndarray, k: int, transform: str, flip: np.ndarray):
    """The windows marked in ``flip`` (N,) mirrored about their input window's mean (in log units for a
    log model): a rise becomes a fall and a season its mirror image, in the target channels (the first
    ``k``) and their targets alike; covariates stay as they are."""
    inputs, targets = inputs.copy(), targets.copy()
    z_in, z_out = (starts.to_model_space(a[flip][..., :k].astype(np.float64), transform) for a in (inputs, targets))
    centre = z_in.mean(axis=1, keepdims=True)  # (n, 1, K)
    inputs[flip, :, :k] = starts.from_model_space(2 * centre - z_in, transform)
    targets[flip] = starts.from_model_space(2 * centre - z_out, transform)
    return inputs, targets


def fit_member(model, i: int, train_w: Windows, config: TrainConfig, device: torch.device, label: str = "") -> History:
    """Train member ``i`` of ``model`` alone (seed + i) for the whole schedule on ``train_w``; ``label`` names it in the log.

    Its loss is the pinball loss of the forecaster's answer with that member alone, in each window's
    standardised units: every series weighs the same whatever its scale, and a log model is judged in the
    series' own units rather than the log's.
    """
    k = model.n_targets
    rng = np.random.default_rng(config.seed + i)

    def make_batch(indices: np.ndarray, is_train: bool):
        inputs, targets = train_w.inputs[indices], train_w.targets[indices]
        if is_train:  # half the windows mirrored: see the module docstring
            inputs, targets = mirrored(inputs, targets, k, model.transform, rng.random(len(indices)) < 0.5)
        return torch.from_numpy(inputs).to(device), torch.from_numpy(targets).to(device)

    def loss_fn(member, batch):
        x, y = batch  # (B, T, C), (B, H, K)
        _, loc, scale = model.normalize(x[..., :k])  # (B, 1, K): the loss's units
        predicted = model(x, members=[i], capped=True)  # (B, H, K, Q)
        levels = model.quantiles
        if model.quantile_offsets is not None:  # the members learn the median; the offsets give the rest
            predicted, levels = predicted[..., model.point_index, None], []
        return pinball_loss((predicted - loc[..., None]) / scale[..., None], (y - loc) / scale, levels)

    seed_everything(config.seed + i)
    return fit(model.members[i], len(train_w), 0, make_batch, loss_fn, dataclasses.replace(config, seed=config.seed + i), label)


def held_out_error(model, windows: Windows, device: torch.device) -> float:
    """Mean absolute error of the point forecast on ``windows``, in each window's standardised units.

    Under torchrun rank 0 computes it and every rank receives that number, so every rank takes the same
    decision on the networks (every rank must call this).
    """
    return distributed.on_main(lambda: _held_out_error(model, windows, device), device)


def _held_out_error(model, windows: Windows, device: torch.device) -> float:
    _, loc, scale = (t.numpy() for t in model.normalize(torch.from_numpy(windows.inputs[..., : model.n_targets])))
    point = predict_windows(model, windows.inputs, device)[..., model.point_index]
    return float(np.abs((point - windows.targets) / scale).mean())


@torch.no_grad()
def normalized_residuals(model, windows: Windows, device: torch.device, batch_size: int = 512) -> np.ndarray:
    """The median's errors on ``windows`` (N, H, K) in each window's standardised (log) units divided by its
    band unit (``Forecaster.band_unit``): the units of the quantile offsets, so that they can be calibrated on them."""
    model.eval()
    k, out = model.n_targets, []
    for i in range(0, len(windows), batch_size):
        inputs, targets = (torch.from_numpy(a[i : i + batch_size]).to(device) for a in (windows.inputs, windows.targets))
        if model.transform == "log":
            tiny = torch.finfo(inputs.dtype).tiny
            inputs = torch.cat([inputs[..., :k].clamp_min(tiny).log(), inputs[..., k:]], dim=-1)
            targets = targets.clamp_min(tiny).log()
        x_norm, loc, scale = model.normalize(inputs)
        median = model.forward_normalized(x_norm)[..., model.point_index]  # (B, H, K)
        errors = (targets - loc[..., :k]) / scale[..., :k] - median  # (B, H, K)
        out.append((errors / model.band_unit(x_norm)).cpu().numpy())
    return np.concatenate(out)


@torch.no_grad()
def predict_windows(model, inputs: np.ndarray, device: torch.device, batch_size: int = 512) -> np.ndarray:
    """Forecasts for every window: ``(N, T, C) -> (N, H, K, Q)`` in the series' own scale."""
    model.eval()
    out = [
        model(torch.from_numpy(inputs[i : i + batch_size]).to(device)).cpu().numpy()
        for i in range(0, len(inputs), batch_size)
    ]
    return np.concatenate(out)


@dataclasses.dataclass
class Plan:
    """What a forecasting run works on, decided from the data before anything trains: the season, the
    evaluation protocol and lookback (each with where it came from), the series long enough for them, and
    the windows cut from those series."""

    season: int
    season_source: str
    evaluation: str
    lookback: int
    lookback_source: str
    kept: SeriesCollection  # the series long enough for the protocol
    skipped: list[str]  # the names of those that are not
    warnings: list[str]  # what the data itself gives reason to doubt
    train_w: Windows  # every window before the test part: the start, the band and the final members
    test_w: Windows
    parts: list[np.ndarray]  # each series' in-sample part (L_s, K): MASE's scale and ETS's fit
    folds: list[tuple[Windows, Windows]]  # the rolling validation origins: (train, validation) windows


def plan_run(collection: SeriesCollection, *, horizon: int, lookback: int | None, season: int | None,
             evaluation: str, test_fraction: float, val_fraction: float) -> Plan:
    """Choose season, protocol and lookback for ``collection`` and cut its windows; ``DataError`` when no
    series is long enough."""
    if evaluation not in PROTOCOLS:
        raise ValueError(f"unknown evaluation {evaluation!r}; valid: {', '.join(PROTOCOLS)}")
    k = collection.n_targets
    season, season_source = resolve_season(season, collection, horizon)
    lengths = [len(s) for s in collection.series]
    split = {"test_fraction": test_fraction, "val_fraction": val_fraction}
    # A series too short for either protocol at the shortest lookback choose_lookback gives is skipped
    # whatever the choice: it has no say in the protocol or the lookback.
    votes = [fits("last-horizon", lookback=lookback or max(3, season), horizon=horizon, length=n) for n in lengths]
    votes = votes if any(votes) else [True] * len(lengths)
    usable = [n for n, vote in zip(lengths, votes) if vote]
    if evaluation == "auto":
        probe = lookback or choose_lookback(usable, horizon=horizon, season=season, protocol="windows")
        too_short = [sid for sid, n, vote in zip(collection.series_ids, lengths, votes)
                     if vote and not fits("windows", lookback=probe, horizon=horizon, length=n, **split)]
        evaluation = "last-horizon" if too_short else "windows"
        if too_short and len(too_short) < len(usable):
            log.info("%s: evaluation last-horizon, as %d of %d series are too short for rolling test windows: %s",
                     collection.source, len(too_short), len(usable), first_few(too_short))
    lookback_source = "given" if lookback else "chosen from the data"
    lookback = lookback or choose_lookback(usable, horizon=horizon, season=season, protocol=evaluation)
    sizes = {"lookback": lookback, "horizon": horizon, **(split if evaluation == "windows" else {})}
    kept, skipped = long_enough(collection, evaluation, **sizes)
    if not kept.series:
        season_set_lookback = (lookback_source != "given" and season > 1 and
                               choose_lookback(usable, horizon=horizon, season=1, protocol=evaluation) < lookback)
        raise too_short_error(collection.source, evaluation, lookback, horizon, max(lengths), split,
                              season if season_set_lookback else 1)
    if skipped:
        log.warning("%s: skipped %d of %d series too short for lookback %d and horizon %d under the %s "
                    "evaluation: %s", collection.source, len(skipped), len(lengths),
                    lookback, horizon, evaluation, first_few(skipped))
    warnings = list(collection.notes)  # what the reader found questionable: uneven timestamps, rounding
    if far := far_values(kept):
        # Not an error: the values may be real. But a forecast from a window that holds a glitch is far off (a
        # 1e9 among monthly values near 100 made the test MAE 200 times seasonal naive's).
        warnings.append("values far from their neighbours, as a data error would be; a forecast from a window "
                        "that holds one can be far off, so check them before serving: " + "; ".join(far))
    for warning in warnings:
        log.warning("%s: %s", collection.source, warning)

    if evaluation == "windows":
        *_, test_w = split_by_time(kept, lookback=lookback, horizon=horizon, **split)
        parts = [p[:, :k] for p in train_series(kept, horizon=horizon, **split)]
    else:
        *_, test_w = last_horizon_split(kept, lookback=lookback, horizon=horizon)
        parts = [s[: len(s) - horizon, :k] for s in kept.series]
    protocol = {"lookback": lookback, "horizon": horizon, "protocol": evaluation, **split}
    folds = rolling_origins(kept, folds=MAX_FOLDS, **protocol)
    if folds and len(folds[0][1]) >= MANY_VAL_WINDOWS:
        folds = folds[:1]
    return Plan(season, season_source, evaluation, lookback, lookback_source, kept, skipped, warnings,
                before_test(kept, **protocol), test_w, parts, folds)


def first_few(ids: list[str], most: int = 5) -> str:
    """The first ``most`` of ``ids``, comma-separated, and ``...`` where there are more: for a log line."""
    return ", ".join(ids[:most]) + (", ..." if len(ids) > most else "")


def too_short_error(source: str, evaluation: str, lookback: int, horizon: int, longest: int, split: dict,
                    season_set_lookback: int) -> DataError:
    """The error for data none of whose series holds a training window and the held-out part of ``evaluation``:
    how many steps that takes, and the horizon or lookback that would fit the longest series.
    ``season_set_lookback`` is the season that made a chosen lookback longer, else 1."""
    def holds(lb: int, h: int) -> bool:
        return fits(evaluation, lookback=lb, horizon=h, length=longest, **split)

    needed = steps_needed(evaluation, lookback=lookback, horizon=horizon, **split)
    shorter_horizon = largest_fitting(lambda h: holds(lookback, h), horizon - 1)
    shorter_lookback = largest_fitting(lambda lb: holds(lb, horizon), lookback - 1)
    fixes = [f"a --horizon of at most {shorter_horizon}"] if shorter_horizon else []
    if shorter_lookback and season_set_lookback > 1:
        fixes.append(f"a shorter --season or a --lookback of at most {shorter_lookback} (the lookback was chosen to "
                     f"span one season of {season_set_lookback} steps)")
    elif shorter_lookback:
        fixes.append(f"a --lookback of at most {shorter_lookback}")
    fix = "give " + ", or ".join(fixes) if fixes else "the series need more steps"
    return DataError(f"{source}: every series is too short for lookback {lookback} and horizon {horizon} under the "
                     f"{evaluation} evaluation, which takes {needed} steps (a training window and the held-out part), "
                     f"and the longest has {longest} step{'s' if longest != 1 else ''}; {fix}")


@dataclasses.dataclass
class Validation:
    """What the rolling validation origins showed: the point errors of the start alone and of a network
    trained on what came before each origin (one number per origin), the median's errors in band units
    (N, H, K) per origin, whether the networks earn their place, and why (for the recipe)."""

    errors: dict[str, list[float]]
    residuals: dict[str, list[np.ndarray]]
    use_networks: bool
    verdict: str

    def calibration_errors(self) -> np.ndarray:
        """The served model's errors at every origin (N, H, K): what calibrates its band."""
        return np.concatenate(self.residuals["networks" if self.use_networks else "start"])


def validate_networks(folds: list[tuple[Windows, Windows]], model_name: str, hparams: ForecasterConfig,
                      start_weights: np.ndarray, config: TrainConfig, device: torch.device) -> Validation:
    """At every origin one member trains on what came before and forecasts what follows; unless it beats the
    start alone at every origin and by ``NETWORK_MARGIN`` on average (``networks_earn_their_place``), the
    start is the model. On short series a network that fits its windows can forecast worse than the start it
    began from (US electricity: start 1.14, with networks 1.51 MASE).

    Without an origin there is no evidence for them, and the start stays too (annual Nile flow and 84 months
    of souvenir sales, where networks trained unvalidated: MASE 0.747 and 2.966, the start alone 0.741 and
    2.931; the band, from the start's errors on the training windows, is then the served model's own).
    """
    errors: dict[str, list[float]] = {"start": [], "networks": []}
    residuals: dict[str, list[np.ndarray]] = {"start": [], "networks": []}
    for f, (fold_train, fold_val) in enumerate(folds):
        fold_model = new_model(model_name, hparams, start_weights, device, members=1)
        errors["start"].append(held_out_error(fold_model, fold_val, device))
        residuals["start"].append(normalized_residuals(fold_model, fold_val, device))
        fit_member(fold_model, 0, fold_train, dataclasses.replace(config, seed=config.seed + MAX_MEMBERS + f), device,
                   f"validation origin {f + 1}/{len(folds)}")
        errors["networks"].append(held_out_error(fold_model, fold_val, device))
        residuals["networks"].append(normalized_residuals(fold_model, fold_val, device))
    validation_windows = sum(len(v) for _, v in folds)
    use_networks = networks_earn_their_place(errors["start"], errors["networks"], validation_windows)
    if use_networks:
        verdict = "trained"
    elif not folds:
        verdict = "not used: no validation origin could show that they help"
    elif one_short_origin(len(folds), validation_windows):
        verdict = (f"not used: one validation origin of {validation_windows} windows is too short a period to show "
                   "that they help")
    else:
        verdict = f"not used: they did not beat the start at every validation origin and by {NETWORK_MARGIN:.0%} on average"
    return Validation(errors, residuals, use_networks, verdict)


def evaluate_on_test(predicted: np.ndarray, model, plan: Plan, horizon: int,
                     strong_baselines: bool) -> tuple[dict, dict, dict]:
    """The test metrics of the model's forecasts ``predicted`` (N, H, K, Q) for ``plan.test_w`` (point and,
    with quantiles, calibration and quantile loss), the baselines' on the same windows in the same units, and
    a note on how each baseline forecasts: ``(test_metrics, baselines, notes)``."""
    k, test_w, season, kept = model.n_targets, plan.test_w, plan.season, plan.kept
    scales = np.stack([mase_scale(part, season) for part in plan.parts])[test_w.series_index]  # (N, K)
    test_metrics = forecast_metrics(test_w.targets, predicted[..., model.point_index], scales)
    if model.quantiles:
        test_metrics.update(quantile_metrics(test_w.targets, predicted, model.quantiles))
    args = (kept.series, test_w.series_index, test_w.start, horizon, k)
    baselines = {"naive": forecast_metrics(test_w.targets, naive_forecast(*args), scales)}
    notes = {"naive": "the last observed value"}
    if season > 1 and test_w.start.min() >= season:
        baselines["seasonal_naive"] = forecast_metrics(test_w.targets, seasonal_naive_forecast(*args, season), scales)
        notes["seasonal_naive"] = f"the last observed season (lag {season})"
    if not strong_baselines:
        notes["ets"] = "skipped: dry run"
        return test_metrics, baselines, notes
    calendar = plan.season_source != "inferred from autocorrelation"  # a cycle is no season to multiply by
    ets, notes["ets"] = _ets(kept, plan.parts, test_w, horizon, season, model.quantiles, calendar)
    if ets is None:
        log.info("ETS baseline %s", notes["ets"])  # the report's table has no ETS row then
    else:
        baselines["ets"] = forecast_metrics(test_w.targets, ets[..., 0], scales)
        if model.quantiles:
            baselines["ets"].update(quantile_metrics(test_w.targets, ets[..., 1:], model.quantiles))
            notes["ets"] += f"; quantiles from {strong.ETS_PATHS} simulated paths"
    return test_metrics, baselines, notes


def train_forecaster(
    collection: SeriesCollection,
    *,
    name: str,
    network: NetworkOptions,
    config: TrainConfig,
    device: torch.device,
    report_dir: Path,
    horizon: int,
    quantiles: list[float],
    lookback: int | None = None,
    season: int | None = None,
    evaluation: str = "auto",
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    save: bool = True,
    strong_baselines: bool = True,
    members: int | None = None,
) -> RunResult | None:
    """The whole forecasting run: plan, choose the start and band, validate, train, evaluate, store, report.

    Returns None on torchrun ranks other than 0, which only train.
    """
    seed_everything(config.seed)
    plan = plan_run(collection, horizon=horizon, lookback=lookback, season=season, evaluation=evaluation,
                    test_fraction=test_fraction, val_fraction=val_fraction)
    k, train_w = collection.n_targets, plan.train_w

    positive = bool((train_w.inputs[..., :k] > 0).all() and (train_w.targets > 0).all())
    chosen = starts.choose_start(train_w, k, plan.season, allow_log=positive)
    band = (starts.Band(PANEL_NOISE_POWER, plan.season)
            if quantiles and len(plan.kept.series) * k > 1 and plan.lookback >= bands.MIN_LOOKBACK else starts.Band())
    # About one optimiser step per training window (64 to 1,500), the schedule run to its end: on short
    # series longer training fits the windows and forecasts worse (airline, 56 windows: 0.48 MASE after
    # 90 steps, 0.70-0.90 after 200-1,500). A step costs about its lookback (one recurrent pass over every
    # step of a batch), so long lookbacks get fewer (STEP_BUDGET).
    steps = int(np.clip(min(len(train_w.inputs), STEP_BUDGET // plan.lookback), 64, 1500))
    config = sized_for(config, len(train_w.inputs), target_steps=steps, min_epochs=1)
    hparams = ForecasterConfig(
        n_features=len(plan.kept.column_names), n_targets=k, horizon=horizon, quantiles=sorted(quantiles),
        hidden_size=network.hidden_size, num_layers=network.num_layers, dropout=network.dropout,
        bidirectional=network.bidirectional, lookback=plan.lookback,
        transform=chosen["transform"], start=chosen["start"].to_dict(),
        members=members or ensemble_size(len(train_w.inputs), plan.lookback),
        band_noise_power=band.noise_power, band_season=band.season,
    )
    model_name = f"{network.arch}_forecaster"
    folds = plan.folds
    recipe = {
        "evaluation": plan.evaluation,
        "season": plan.season,
        "season_source": plan.season_source,
        "lookback": plan.lookback,
        "lookback_source": plan.lookback_source,
        "series_skipped": len(plan.skipped),
        "transform": chosen["transform"],
        "band_unit": band.describe(),
        "start": chosen["start"].describe(),
        "start_error": round(chosen["error"], 4),
        "start_errors": chosen["errors"],
        "autoregression": chosen["autoregression"],
        "members": hparams.members,
        "validation": (f"rolling origin: {len(folds)} origin(s) of {', '.join(str(len(v)) for _, v in folds)} windows"
                       if folds else "none (too few windows): the start alone is the model"),
        "batch_size": config.batch_size,
        "epochs": config.epochs,
        "lr": config.lr,
    }
    log.info("recipe:\n%s", "\n".join(f"  {key}: {value}" for key, value in recipe.items()))

    band_warnings = []
    if quantiles:  # before validation: with offsets the networks learn the median alone (fit_member)
        levels = sorted(set(quantiles) | {0.5})
        offsets = starts.interval_offsets(train_w, k, chosen, levels, band)
        hparams.quantile_offsets = np.round(offsets, 5).tolist()
        if len(train_w) < FEW_BAND_WINDOWS:
            band_warnings.append(
                f"the quantile band rests on {len(train_w)} training window(s), too few to measure how far the "
                f"forecasts stray{': its width is a guess' if len(train_w) == 1 else ''}, so expect its test "
                "coverage to be far from nominal; a longer series, or a shorter --lookback or --horizon, gives it more")
            log.warning("%s: %s", collection.source, band_warnings[-1])

    validation = validate_networks(folds, model_name, hparams, chosen["weights"], config, device)
    recipe["validation_error"] = {name: [round(v, 4) for v in values] for name, values in validation.errors.items()}
    recipe["networks"] = validation.verdict
    if not validation.use_networks:
        hparams.members = recipe["members"] = 1
    if folds:
        log.info("networks %s (mean validation error: start %.4f, networks %.4f); members: %d", validation.verdict,
                 np.mean(validation.errors["start"]), np.mean(validation.errors["networks"]), hparams.members)
    if quantiles:
        if folds:
            calibration_errors = validation.calibration_errors()
            recipe["interval_calibration"] = "the served model's errors at the rolling validation origins"
        else:
            # No origin, so the start alone serves: its errors on the latest quarter of the windows (the nearest
            # the test part, its autoregression fitted without them) give the width. Its few smoothing
            # parameters were chosen with them too. On 11 public series too short for an origin, start only,
            # the band moved nearer 80% on 5 and further on 4, its mean distance from 80% 17.3 -> 15.5 points
            # (Nile 0.72 -> 0.75, internet users 0.95 -> 0.83, discoveries 0.49 -> 0.70; souvenirs 0.86 -> 0.92).
            calibration_errors = starts.latest_errors(train_w, k, chosen, band)
            recipe["interval_calibration"] = "the start's errors on the latest quarter of the training windows"
        offsets, recipe["interval_factors"] = starts.calibrate_offsets(offsets, calibration_errors, levels)
        hparams.quantile_offsets = np.round(offsets, 5).tolist()
    model = new_model(model_name, hparams, chosen["weights"], device)
    history = History()
    if validation.use_networks:
        histories = [fit_member(model, i, train_w, config, device, f"member {i + 1}/{hparams.members}")
                     for i in range(hparams.members)]
        history = histories[-1]
        history.seconds = sum(h.seconds for h in histories)
    if not distributed.is_main():
        return None  # another torchrun rank: it helped train; rank 0 evaluates, runs ETS, stores and reports

    predicted = predict_windows(model, plan.test_w.inputs, device)  # (N, H, K, Q)
    test_metrics, baselines, notes = evaluate_on_test(predicted, model, plan, horizon, strong_baselines)
    beats, comparisons = compare_with_baselines("forecast", test_metrics, baselines)
    for sentence in comparisons:
        log.warning("%s: %s", name, sentence)
    warnings = plan.warnings + band_warnings + comparisons
    metrics = {"test": test_metrics, "baselines": baselines, "baseline_notes": notes,
               "beats_baseline": beats, "warnings": warnings}
    card = ModelCard(
        task="forecast",
        model_name=model_name,
        hparams={k: v for k, v in dataclasses.asdict(hparams).items() if k != "lookback"},  # the card's lookback, below
        features=plan.kept.column_names,
        targets=plan.kept.target_names,
        lookback=plan.lookback,
        horizon=horizon,
        quantiles=model.quantiles,
        normalization={"kind": "per_window_standardization", "floor": "1e-6 * (|mean| + 1e-6 * unit)",
                       "unit": "the power of two above the window's largest absolute value (at most 2 ** 127)"},
        metrics=metrics,
        data={
            "source": collection.source,
            "fingerprint": fingerprint(collection),
            "series": len(plan.kept.series),
            "series_skipped": len(plan.skipped),
            "n_train_windows": len(train_w.inputs),
            "n_val_windows": [len(v) for _, v in folds],
            "n_test_windows": len(plan.test_w.inputs),
            "evaluation": plan.evaluation,
            "test_fraction": test_fraction if plan.evaluation == "windows" else None,
            "season": plan.season,
        },
        # The recipe without its lookback, which the card holds once (card.lookback); the report keeps it.
        training={**dataclasses.asdict(config), **history.summary(), "device": str(device),
                  "recipe": {k: v for k, v in recipe.items() if k != "lookback"}},
    )
    tag = save_artifact(name, model, card) if save else None
    report_dir.mkdir(parents=True, exist_ok=True)
    report.write_metrics(report_dir, "forecast", tag or f"{name}:unsaved", metrics, recipe)
    report.plot_history(report_dir, history)
    report.plot_forecasts(report_dir, plan.test_w.inputs, plan.test_w.targets, predicted, model.quantiles,
                          plan.kept.target_names[0])
    return RunResult(tag, test_metrics, baselines, report_dir, warnings, {**card.training, "recipe": recipe}, card.data)


def _ets(kept: SeriesCollection, parts: list[np.ndarray], test_w: Windows, horizon: int, season: int,
         levels: list[float], multiplicative: bool = True):
    """ETS forecasts for every test window (N, H, K, 1 + Q: the point, then the quantiles at ``levels``),
    fitted on each series' in-sample part, or (None, why)."""
    k = kept.n_targets
    origins = [[kept.series[s][:t, :k] for s, t in zip(test_w.series_index, test_w.start) if s == i]
               for i in range(len(kept.series))]
    per_series, note = strong.ets_forecasts(parts, origins, horizon, season, levels, multiplicative)
    if per_series is None:
        return None, note
    out = np.empty((*test_w.targets.shape, 1 + len(levels)), dtype=np.float32)
    filled = [0] * len(kept.series)
    for row, s in enumerate(test_w.series_index):
        out[row] = per_series[s][filled[s]]
        filled[s] += 1
    return out, note
