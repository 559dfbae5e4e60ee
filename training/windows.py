"""Forecasting windows, the two evaluation protocols, and the lookback chosen from the data.

A window is ``lookback`` steps of every column (targets, then covariates) as input and the
next ``horizon`` steps of the target columns as the answer. ``split_by_time`` cuts each
series into three parts along time::

    |<------------- train ------------->|<--- val --->|<--- test --->|
    0                               val_start     test_start         T

A window belongs to the part that holds ALL its forecast (target) steps. Its inputs may
reach back into earlier parts - that is standard and leaks nothing - but no training or
validation target ever lies in the test part.

``last_horizon_split`` is the protocol of the M3/M4/Monash tables: the last ``horizon`` steps
of every series are the test (one window per series), the ``horizon`` before them validate
(one window per series), and every earlier window trains::

    |<------------ train ------------>|<- val (horizon) ->|<- test (horizon) ->|
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from training.data import DataError, SeriesCollection


@dataclass
class Windows:
    """Training examples cut from a SeriesCollection.

    Attributes
    ----------
    inputs : (N, lookback, C) float32 - all columns, targets first, then covariates.
    targets : (N, horizon, n_targets) float32 - the next ``horizon`` steps of the targets.
    series_index : (N,) int64 - which series each window came from.
    start : (N,) int64 - index in its series of the first forecast step.
    """

    inputs: np.ndarray
    targets: np.ndarray
    series_index: np.ndarray
    start: np.ndarray

    def __len__(self) -> int:
        return len(self.start)


def make_windows(collection: SeriesCollection, lookback: int, horizon: int, *, stride: int = 1) -> Windows:
    """Every window (every ``stride`` steps) over every series; series too short give none."""
    _check_sizes(lookback, horizon, stride)
    ranges = [(lookback, len(s) - horizon) for s in collection.series]  # first forecast step, both ends
    return _cut(collection, lookback, horizon, ranges, stride)


# Early stopping on one validation window is a coin toss: on Nile (100 yearly points, horizon 12) 10% left
# one, and the kept epoch was worse than naive on test (MASE 1.09 vs 0.92); eight made it 0.75.
MIN_VAL_WINDOWS = 8


def split_points(length: int, *, horizon: int, test_fraction: float = 0.2,
                 val_fraction: float = 0.1) -> tuple[int, int]:
    """Return (val_start, test_start) for a series of ``length`` steps.

    The test part is the last ``test_fraction`` of the series, at least ``horizon`` steps long so that
    it holds a whole window, and the validation part the ``val_fraction`` before it, long enough for
    ``MIN_VAL_WINDOWS`` windows (validation may be turned off with ``val_fraction=0``).
    """
    if not (0 < test_fraction < 1 and 0 <= val_fraction < 1 and test_fraction + val_fraction < 1):
        raise ValueError(f"the test and validation shares (--test-fraction {test_fraction}, --val-fraction "
                         f"{val_fraction}) must leave a training part: need 0 < test, 0 <= validation and "
                         f"test + validation < 1")
    n_test = max(horizon, round(length * test_fraction))
    n_val = max(horizon + MIN_VAL_WINDOWS - 1, round(length * val_fraction)) if val_fraction > 0 else 0
    return length - n_test - n_val, length - n_test


def split_by_time(collection: SeriesCollection, *, lookback: int, horizon: int, test_fraction: float = 0.2,
                  val_fraction: float = 0.1) -> tuple[Windows, Windows, Windows]:
    """Split every series in time and return (train, val, test) windows (stride 1).

    Per series (see ``split_points``): training windows forecast steps before
    ``val_start``, validation windows steps in ``[val_start, test_start)`` and test windows
    steps from ``test_start`` to the end. Raises DataError naming the series when one is
    too short for at least one training window and the validation and test parts.
    Use ``train_series`` for the matching in-sample training part of each series.
    """
    _check_sizes(lookback, horizon, 1)
    train, val, test = [], [], []
    for sid, s in zip(collection.series_ids, collection.series):
        val_start, test_start = split_points(len(s), horizon=horizon, test_fraction=test_fraction,
                                             val_fraction=val_fraction)
        if val_start - horizon < lookback:
            n_val, n_test = test_start - val_start, len(s) - test_start
            raise DataError(
                f"{collection.source}: series {sid!r} has {len(s)} steps but needs at least "
                f"{lookback + horizon + n_val + n_test}: lookback {lookback} + horizon {horizon} for one "
                f"training window, plus {n_val} validation and {n_test} test steps; "
                f"use a shorter lookback/horizon or drop the series")
        train.append((lookback, val_start - horizon))
        val.append((val_start, test_start - horizon))
        test.append((test_start, len(s) - horizon))
    return tuple(_cut(collection, lookback, horizon, ranges, 1) for ranges in (train, val, test))


def last_horizon_split(collection: SeriesCollection, *, lookback: int,
                       horizon: int) -> tuple[Windows, Windows, Windows]:
    """(train, val, test) windows: the last ``horizon`` steps of every series are its one test window,
    the ``horizon`` steps before them its one validation window.

    Every series needs ``lookback + 2 * horizon`` steps (the validation and test windows; filter shorter
    ones out first with ``long_enough``); those with ``lookback + 3 * horizon`` also give training windows.
    """
    _check_sizes(lookback, horizon, 1)
    train = [(lookback, len(s) - 3 * horizon) for s in collection.series]
    val = [(len(s) - 2 * horizon, len(s) - 2 * horizon) for s in collection.series]
    test = [(len(s) - horizon, len(s) - horizon) for s in collection.series]
    return tuple(_cut(collection, lookback, horizon, ranges, 1) for ranges in (train, val, test))


def held_out_points(length: int, *, horizon: int, protocol: str, test_fraction: float = 0.2,
                    val_fraction: float = 0.1) -> tuple[int, int]:
    """(val_start, test_start) of a series of ``length`` steps under ``protocol`` (see ``split_points``;
    under ``last-horizon`` the last two horizons)."""
    if protocol == "last-horizon":
        return length - 2 * horizon, length - horizon
    return split_points(length, horizon=horizon, test_fraction=test_fraction, val_fraction=val_fraction)


def rolling_origins(collection: SeriesCollection, *, lookback: int, horizon: int, protocol: str, folds: int,
                    test_fraction: float = 0.2, val_fraction: float = 0.1) -> list[tuple[Windows, Windows]]:
    """(train, val) windows at up to ``folds`` origins, the latest first, every one before the test part.

    The latest is the protocol's own validation part (``split_by_time`` or ``last_horizon_split``); each
    earlier one validates on the same number of steps just before the previous one and trains on everything
    before it. An origin that would leave fewer than ``MIN_TRAIN_WINDOWS`` training windows is not used.
    One handful of windows at the very end of a short series is a coin toss (on monthly series of 204
    points, 9 windows chose epochs from 5 to 79 for five seeds); several origins agree better.
    """
    _check_sizes(lookback, horizon, 1)
    points = [held_out_points(len(s), horizon=horizon, protocol=protocol, test_fraction=test_fraction,
                              val_fraction=val_fraction) for s in collection.series]
    out = []
    for fold in range(folds):
        train, val = [], []
        for val_start, test_start in points:
            shift = fold * (test_start - val_start)
            train.append((lookback, val_start - shift - horizon))
            val.append((max(val_start - shift, lookback), test_start - shift - horizon))
        train_w, val_w = (_cut(collection, lookback, horizon, ranges, 1) for ranges in (train, val))
        if len(train_w) < MIN_TRAIN_WINDOWS or not len(val_w):
            break
        out.append((train_w, val_w))
    return out


def before_test(collection: SeriesCollection, *, lookback: int, horizon: int, protocol: str,
                test_fraction: float = 0.2, val_fraction: float = 0.1) -> Windows:
    """Every window whose forecast lies before the protocol's test part: what the final model trains on."""
    ranges = [(lookback, held_out_points(len(s), horizon=horizon, protocol=protocol, test_fraction=test_fraction,
                                         val_fraction=val_fraction)[1] - horizon) for s in collection.series]
    return _cut(collection, lookback, horizon, ranges, 1)


def fits(protocol: str, *, lookback: int, horizon: int, length: int, test_fraction: float = 0.2,
         val_fraction: float = 0.1) -> bool:
    """Whether a series of ``length`` steps holds one training window and the held-out parts of ``protocol``."""
    if protocol == "last-horizon":
        return length >= lookback + 2 * horizon
    val_start, _ = split_points(length, horizon=horizon, test_fraction=test_fraction, val_fraction=val_fraction)
    return val_start - horizon >= lookback


def steps_needed(protocol: str, *, lookback: int, horizon: int, test_fraction: float = 0.2,
                 val_fraction: float = 0.1) -> int:
    """The fewest steps a series needs to hold one training window and the held-out parts of ``protocol``."""
    if protocol == "last-horizon":
        return lookback + 2 * horizon
    # ``fits`` asks val_start >= lookback + horizon, where val_start is the length less the test and validation
    # parts, each the larger of a floor and a rounded share (``split_points``). A length below any of the four
    # bounds (each part taken as its floor or its share) cannot fit; from their largest, rounding leaves a step
    # or two, counted one by one (the rounding makes ``fits`` step back now and then, so a search could skip).
    need = lookback + horizon
    val_floor = horizon + MIN_VAL_WINDOWS - 1 if val_fraction > 0 else 0
    bounds = (need + horizon + val_floor, (need + val_floor - 0.5) / (1 - test_fraction),
              (need + horizon - 0.5) / (1 - val_fraction), (need - 1) / (1 - test_fraction - val_fraction))
    length = max(1, math.floor(max(bounds)))
    while not fits(protocol, lookback=lookback, horizon=horizon, length=length, test_fraction=test_fraction,
                   val_fraction=val_fraction):
        length += 1
    return length


def largest_fitting(holds, most: int) -> int:
    """The largest ``x`` in 1..``most`` with ``holds(x)``, for a ``holds`` true up to some ``x`` and false after
    (``fits`` in the lookback or the horizon), or 0 where none holds: a binary search."""
    low, high = 0, most  # holds(low) is taken as true, the answer is in low..high
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if holds(middle) else (low, middle - 1)
    return low


def long_enough(collection: SeriesCollection, protocol: str, **sizes) -> tuple[SeriesCollection, list[str]]:
    """The collection without the series too short for ``protocol`` (see ``fits``), and their ids."""
    keep = [i for i, s in enumerate(collection.series) if fits(protocol, length=len(s), **sizes)]
    dropped = [sid for i, sid in enumerate(collection.series_ids) if i not in set(keep)]
    kept = SeriesCollection([collection.series[i] for i in keep], [collection.series_ids[i] for i in keep],
                            collection.target_names, collection.covariate_names, collection.season, collection.source)
    return kept, dropped


# Seasons a lookback covers when the series allows: the smoothing starts (models.starts) estimate the
# season from every season in the window, and four steadied them on monthly series (h02 0.996 -> 0.995,
# electrical equipment 1.129 -> 1.018, US electricity 1.216 -> 1.139 start-only MASE, 3 -> 4 seasons).
# More than four do not hold up. Up to eight (whichever lookback's start scored best on the training
# windows it shares with the others; that was nearly always the longest) made the start-only test MASE 1.3%
# lower on 24 monthly and quarterly series the recipe had been tuned on, but 19% higher on 12 it had never
# seen (a US employment series 0.198 -> 0.770). Neither keeping the autoregression on the latest four
# seasons (23% higher on those 12) nor fitting the smoothers' trend on them alone saved it.
SEASONS_IN_LOOKBACK = (4, 3, 2, 1)
MIN_TRAIN_WINDOWS = 32
# Under last-horizon, the training windows the series hold together, where a shorter lookback (not below the
# horizon: a window shorter than that forecasts further than it reads; nor two seasons, 3 steps) gives them.
# A 36-year series at horizon 6 had a lookback of 24 (the default, and all the room its validation and test
# horizons leave): one window to choose the start and measure the band from. On 11 short series (20-55
# steps, 5 origins each) the rule was chosen on, the 0.1-0.9 band covered 25% -> 59% of the test values and
# test MASE / ETS went 1.038 -> 0.986 (geometric mean; with no floor at the horizon, lookbacks of 3 made it
# 1.079); then once on 13 other short annual series (40 years, 3 origins each): 19% -> 57%, 1.092 -> 1.078.
MIN_LAST_HORIZON_WINDOWS = 16
# And the series of median length holds this many (forecast origins in time: a panel's series share theirs).
# 46 states x 30 years of cigarette sales at horizon 5 had a lookback of 20, one origin, 46 windows: the
# start was chosen on one five-year period, flat sales, and forecast the decline after it at MASE 6.01
# (ETS 2.70, naive 3.15); with 8 origins (lookback 13) 3.24 and coverage 19% -> 81%. On 7 yearly panels
# (17-30 years) the geometric mean of MASE / ETS went 0.917 -> 0.913 (4 origins: cigarettes 3.96); then once
# on 3 panels of 125 countries x 26 years: 1.176 -> 0.855 (population 2.12 -> 0.81, one origin before).
MIN_ORIGINS = 8


def choose_lookback(lengths: list[int], *, horizon: int, season: int, protocol: str) -> int:
    """The history a model reads when the user names none.

    Wanted: four seasons (two for seasons over 24 steps), at least twice the horizon and 24 steps, or four
    seasons where those are fewer (quarterly data: 16; on 14 quarterly series at horizon 8, with 24 the test
    MASE was more than 5% behind ETS's on 4, with 16 on 2, and 3.5% lower on average with 16); fewer
    seasons when the shortest series would keep fewer than ``MIN_TRAIN_WINDOWS`` training windows under
    ``windows``. Under ``last-horizon`` (panels of short series) it shrinks so that nine series in ten
    keep their validation and test windows, but never below one season and 3 steps; the rest are skipped.
    It shrinks further, down to the horizon (two seasons, 3 steps), while the series hold fewer than
    ``MIN_LAST_HORIZON_WINDOWS`` windows before their test horizon together (one short series, where the
    rule above can leave a single window) or the median series fewer than ``MIN_ORIGINS`` (a panel whose
    windows would all start at one time).
    """
    base = max(2 * horizon, min(24, 4 * season) if season > 1 else 24)
    options = [max(base, n * season) for n in SEASONS_IN_LOOKBACK if season > 1 and (season <= 24 or n <= 2)] or [base]
    if protocol != "last-horizon":
        shortest = min(lengths)
        val_start, _ = split_points(shortest, horizon=horizon)
        roomy = [lb for lb in options if val_start - horizon - lb + 1 >= MIN_TRAIN_WINDOWS]
        return roomy[0] if roomy else options[-1]
    wanted = options[0]
    room = int(np.percentile(np.asarray(lengths) - 2 * horizon, 10))  # 10th percentile of what fits
    lookback = max(season, 3, min(wanted, room))
    shortest = max(3, horizon, 2 * season if season > 1 else 1)  # two seasons: a seasonal smoother's least
    typical = [int(np.median(lengths))]
    while lookback > shortest and (_training_windows(lengths, lookback, horizon) < MIN_LAST_HORIZON_WINDOWS
                                   or _training_windows(typical, lookback, horizon) < MIN_ORIGINS):
        lookback -= 1
    return int(lookback)


def _training_windows(lengths: list[int], lookback: int, horizon: int) -> int:
    """How many windows of ``lookback`` series of these ``lengths`` hold before their test horizon under
    ``last-horizon``: ``before_test``'s, whose forecasts start from ``lookback`` to the test start less a horizon."""
    test_starts = [held_out_points(n, horizon=horizon, protocol="last-horizon")[1] for n in lengths]
    return int(sum(max(0, test_start - horizon - lookback + 1) for test_start in test_starts))


def train_series(collection: SeriesCollection, *, horizon: int, test_fraction: float = 0.2,
                 val_fraction: float = 0.1) -> list[np.ndarray]:
    """The in-sample training part ``series[:val_start]`` of each series, (T_train, C) each.

    Uses the same cut as ``split_by_time`` with the same arguments. Use it to fit
    normalisation and to compute the MASE scale without looking at validation or test data.
    """
    parts = []
    for s in collection.series:
        val_start, _ = split_points(len(s), horizon=horizon, test_fraction=test_fraction,
                                    val_fraction=val_fraction)
        parts.append(s[:max(val_start, 0)])
    return parts


def _check_sizes(lookback: int, horizon: int, stride: int) -> None:
    for name, value in (("lookback", lookback), ("horizon", horizon), ("stride", stride)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _cut(collection: SeriesCollection, lookback: int, horizon: int,
         ranges: list[tuple[int, int]], stride: int) -> Windows:
    """Cut windows whose first forecast step runs from ``first`` to ``last`` (inclusive) per series."""
    n_targets = collection.n_targets
    inputs, targets, index, starts = [], [], [], []
    for i, (s, (first, last)) in enumerate(zip(collection.series, ranges)):
        start = np.arange(first, last + 1, stride)  # (n,) first forecast step of each window
        if start.size == 0:
            continue
        steps_in = start[:, None] + np.arange(-lookback, 0)  # (n, lookback)
        steps_out = start[:, None] + np.arange(horizon)  # (n, horizon)
        inputs.append(s[steps_in])  # (n, lookback, C)
        targets.append(s[steps_out, :n_targets])  # (n, horizon, n_targets)
        index.append(np.full(start.size, i))
        starts.append(start)
    n_columns = len(collection.target_names) + len(collection.covariate_names)
    return Windows(
        inputs=_concat(inputs, (0, lookback, n_columns), np.float32),
        targets=_concat(targets, (0, horizon, n_targets), np.float32),
        series_index=_concat(index, (0,), np.int64),
        start=_concat(starts, (0,), np.int64),
    )


def _concat(parts: list[np.ndarray], empty_shape: tuple, dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(empty_shape, dtype)
