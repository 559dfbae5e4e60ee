"""Read one or more time series (forecasting) from CSV or Parquet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from training.data import (MISSING_HINT, SLASHED_DATE, TABLE_SUFFIXES, DataError, SeriesCollection, check_file,
                           check_finite, is_datetime_time, numeric_values, read_table, require_columns, require_values,
                           show, split_rows, time_key)


DEFAULT_ID_COL = "series_id"


def read_series(path, *, id_col: str = DEFAULT_ID_COL, time_col: str = "timestamp",
                targets: list[str] | None = None) -> SeriesCollection:
    """Read one or more time series from CSV or Parquet (long format).

    Columns: ``id_col`` (optional: without it the file is one series), ``time_col``,
    the ``targets`` (default ``["value"]``) and any other numeric columns, which become
    past covariates. Rows are sorted by time within each series; a repeated timestamp
    within a series is an error. A file with a single numeric column and nothing else
    is one univariate series in file order.

    ``season`` is inferred from regular timestamps (``season_from_timestamps``): the steps in a day for
    steps within a day, the steps in a week for daily steps, weekly 52, monthly 12, quarterly 4; otherwise None.
    """
    check_file(path, TABLE_SUFFIXES)
    if targets is not None and len(set(targets)) < len(targets):
        twice = next(t for t in targets if targets.count(t) > 1)
        raise DataError(f"{path}: target {twice!r} is named twice (--target); name each value column once")
    for key, flag in ((time_col, "--time-col"), (id_col, "--id-col")):
        if targets is not None and key in targets:
            raise DataError(f"{path}: target {key!r} is the {flag} column; --target names the value columns to forecast")
    df = read_table(path)
    if time_col not in df.columns and len(df.columns) == 1 and targets in (None, list(df.columns)):
        return _single_column_series(df, path)
    targets = list(targets) if targets is not None else ["value"]
    require_columns(df, [time_col, *targets], path,
                     hint="; name the time column with --time-col and each value column with --target "
                          "(in Python: time_col=..., targets=[...])")
    has_ids = id_col in df.columns
    if not has_ids and id_col != DEFAULT_ID_COL:  # without the default one the file is one series; a named one must be there
        raise DataError(f"{path}: missing id column {id_col!r} (--id-col); the file has columns {list(df.columns)}")
    require_values(df, [id_col, time_col] if has_ids else [time_col], path)
    covariates = [c for c in df.columns if c not in (id_col, time_col, *targets)]
    columns = targets + covariates
    values = values_beyond_float32(df, columns, path, targets)  # (rows, C) in float64, float32 once checked

    if has_ids:
        codes, ids = pd.factorize(df[id_col], sort=False)
        ids = [str(i) for i in ids]
    else:
        codes, ids = np.zeros(len(df), dtype=np.int64), [Path(path).stem]
    times = time_key(df, time_col, path)

    def where(row: int) -> str:
        series = f"series {show(df[id_col].iloc[row])} " if has_ids else ""
        return f"{series}{time_col} {show(df[time_col].iloc[row])} (row {row + 1})"

    series, order, bounds = split_rows(codes, times, values, columns, time_col, where, path, hint=MISSING_HINT)
    times, codes = times[order], codes[order]  # by series, then time, as ``series`` are
    dated = is_datetime_time(df, time_col)
    season = season_from_timestamps(np.split(times, bounds)) if dated else None
    notes = []
    if dated:
        notes += [gaps_in_steps(times, codes, ids, time_col, season), day_or_month_first(df[time_col], time_col)]
    notes.append(float32_rounding(values[order], codes, ids, columns))
    return SeriesCollection([s.astype(np.float32) for s in series], ids, [str(c) for c in targets],
                            [str(c) for c in covariates], season, f"file:{path}", [note for note in notes if note])


def values_beyond_float32(df: pd.DataFrame, columns: list, path, targets: list = ()) -> np.ndarray:
    """The ``columns`` in float64, where the notes can measure float32's rounding, with values past float32's
    range made infinite, as the model's float32 would make them, so that the finiteness check names them."""
    values = numeric_values(df, columns, path, dtype=np.float64, targets=targets)
    return np.where(np.abs(values) > np.finfo(np.float32).max, np.copysign(np.inf, values), values)


def _single_column_series(df: pd.DataFrame, path) -> SeriesCollection:
    name, sid = df.columns[0], Path(path).stem
    values = values_beyond_float32(df, [name], path, [name])
    check_finite(values, [name], path, lambda row: f"row {row + 1}", hint=MISSING_HINT)
    note = float32_rounding(values, np.zeros(len(values), dtype=np.int64), [sid], [name])
    return SeriesCollection([values.astype(np.float32)], [sid], [str(name)], [], None, f"file:{path}",
                            [note] if note else [])


GAP = 1.5  # a step this many times the longest of its frequency (a month: 31 days) skips at least one
IRREGULAR_SPREAD = 0.5  # steps whose standard deviation is half their mean have no frequency


def gaps_in_steps(times: np.ndarray, codes: np.ndarray, ids: list[str], time_col: str, season: int | None) -> str:
    """A sentence naming the first gap in dates of a weekly or longer frequency, or saying that dates have no
    regular step at all, else "". ``times`` (int64 ns) and ``codes`` (series numbers) are sorted by series, then time.

    The model reads rows as consecutive steps, so twenty missing months make a season of 12 rows span more
    than a year. Only steps past ``GAP`` times the frequency's longest count (a business month-end, 33 days, or
    summer time's hour is not a gap); steps within a week are not checked, since business days and hours
    skip nights and weekends by design, nor are numbered steps (``yyyymm`` numbers jump by 89 each January).
    """
    same = codes[1:] == codes[:-1]
    steps = np.diff(times)[same]
    if steps.size == 0:
        return ""
    typical = float(np.median(steps))
    longest = next((hi.value for lo, hi, _ in _SEASONS if lo.value >= 7 * DAY_NS and lo.value <= typical <= hi.value),
                   pd.Timedelta(days=366).value if typical >= pd.Timedelta(days=365).value else None)
    if longest is None:
        if season is None and steps.std() > IRREGULAR_SPREAD * steps.mean():
            return (f"the {time_col} steps have no regular length (from {_days(steps.min())} to {_days(steps.max())}, "
                    f"typically {_days(typical)}); the model reads the rows as evenly spaced steps, so resample the "
                    f"series to one frequency before training")
        return ""
    after = np.flatnonzero(same)[steps > GAP * longest]  # positions in ``times`` just before a gap
    if after.size == 0:
        return ""
    first = after[0]
    n_series = len(np.unique(codes[after]))
    return (f"the {time_col} skips steps {after.size} time{'s' if after.size > 1 else ''} in {n_series} series: "
            f"series {ids[codes[first]]!r} goes from {_date(times[first])} to {_date(times[first + 1])}, where its "
            f"steps are {_days(typical)}; the model reads the rows as consecutive steps, so fill or mark the missing "
            f"ones before training")


def _date(t) -> str:
    return str(pd.Timestamp(int(t), unit="ns").date())


def _days(length) -> str:
    return str(pd.Timedelta(int(length), unit="ns")).replace(" 00:00:00", "")


def day_or_month_first(times: pd.Series, time_col: str) -> str:
    """A sentence where every date reads either way, day or month first, and day first reads as the more
    regular series (pandas reads month first), else ""."""
    if pd.api.types.is_datetime64_any_dtype(times):
        return ""  # dates already: nothing was read from text
    text = pd.Series(pd.unique(times.astype(str)))
    parts = text.str.extract(SLASHED_DATE)
    if parts.isna().any().any() or (parts.astype(int) > 12).any().any():
        return ""  # not all of that form, or some with a field past 12: pandas had nothing to choose

    def spread(dayfirst: bool) -> float:  # of the steps between the distinct dates, as a share of their mean
        steps = np.diff(np.sort(pd.to_datetime(text, dayfirst=dayfirst, format="mixed").to_numpy(dtype="datetime64[ns]").astype(np.int64)))
        return float(steps.std() / steps.mean()) if steps.size > 1 else 0.0

    if spread(True) >= spread(False) / 2:
        return ""
    return (f"every {time_col} reads either way, such as {times.iloc[0]!r}, and they were read month first (US), "
            f"though day first they are more evenly spaced; if they are day first, write them as year-month-day "
            f"(2010-02-01) and train again")


# float32, which the model computes in, keeps about 7 significant digits: meter readings near 1e9 that move
# by tens per step round to multiples of 64, and a model of them forecasts noise. Rounding of a tenth of a
# typical change or less is harmless (counts near 3e7 moving by 30 round by 1).
ROUNDING_SHARE = 0.1
NOISE = 1e-9  # changes below this share of the value are float64's own noise (0.1 * 3 against 0.3), not steps


def float32_rounding(values: np.ndarray, codes: np.ndarray, ids: list[str], columns: list) -> str:
    """A sentence naming the column float32 rounding blurs, against its typical change per step, else "".

    ``values`` (rows, C) in float64 and ``codes`` (rows,) are sorted by series, then time.
    """
    rounding = np.abs(values - values.astype(np.float32))  # (rows, C)
    same = codes[1:] == codes[:-1]  # steps within a series
    changes = np.abs(np.diff(values, axis=0))[same]  # (steps, C)
    floor = NOISE * np.abs(values[1:])[same]
    for c, column in enumerate(columns):
        moving = changes[:, c][changes[:, c] > floor[:, c]]
        if not moving.size:
            continue
        typical = float(np.median(moving))
        row = int(np.argmax(rounding[:, c]))
        if rounding[row, c] > ROUNDING_SHARE * typical:
            return (f"column {column!r}: values such as {values[row, c]:.10g} (series {ids[codes[row]]!r}) change by a "
                    f"typical {typical:.3g} per step, but float32, which the model computes in, keeps them only to "
                    f"within {rounding[row, c]:.3g}; subtract a constant (such as the first value) or rescale the "
                    f"column before training")
    return ""


_SEASONS = [  # (smallest, largest typical step, season) where the steps do not count a day's or a week's
    (pd.Timedelta(minutes=30), pd.Timedelta(minutes=30), 48),
    (pd.Timedelta(hours=1), pd.Timedelta(hours=1), 24),
    (pd.Timedelta(days=1), pd.Timedelta(days=1), 7),
    (pd.Timedelta(days=7), pd.Timedelta(days=7), 52),
    (pd.Timedelta(days=28), pd.Timedelta(days=31), 12),
    (pd.Timedelta(days=89), pd.Timedelta(days=92), 4),
]
DAY_NS = 86_400 * 10**9
THURSDAY = 3  # day 0, 1970-01-01, was a Thursday, 3 days after a Monday: weeks from Mondays are (day + 3) // 7


def season_from_timestamps(times_per_series: list[np.ndarray]) -> int | None:
    """The season of regular timestamps (int64 nanoseconds), or None.

    Steps within a day: the number of steps in a day, so that data kept only in business hours has the
    season it has (5-minute steps from 7:00 to 21:00: 169, where 24 hours of them would be 288). Daily steps:
    the number in a week (7, or 5 for business days). Either count is the median over the whole days or
    weeks inside the series (their first and last may be partial), when at least half of them hold that
    many; with too few whole days, or counts that vary, the typical step decides alone (hourly 24,
    half-hourly 48, daily 7). Weekly 52, monthly 12, quarterly 4; any other step, None.
    """
    steps = np.concatenate([np.diff(t) for t in times_per_series])
    if steps.size == 0:
        return None
    step = pd.Timedelta(int(np.median(steps)), unit="ns")
    counted = None
    if step < pd.Timedelta(days=1):
        counted = _steps_per_period(times_per_series, lambda t: t // DAY_NS)
    elif step == pd.Timedelta(days=1):
        counted = _steps_per_period(times_per_series, lambda t: (t // DAY_NS + THURSDAY) // 7)
    if counted:
        return counted
    for low, high, season in _SEASONS:
        if low <= step <= high:
            return season
    return None


def _steps_per_period(times_per_series: list[np.ndarray], period_of) -> int | None:
    """The typical number of timestamps in one period (``period_of`` maps times to period numbers), over the
    whole periods inside each series; None unless at least two are, at least half of them hold that many,
    and it is at least 2."""
    counts = []
    for times in times_per_series:
        _, per_period = np.unique(period_of(times), return_counts=True)
        counts.extend(per_period[1:-1])  # the first and last periods may be partial
    if len(counts) < 2:
        return None
    typical = int(np.median(counts))
    return typical if typical >= 2 and np.mean(np.asarray(counts) == typical) >= 0.5 else None
