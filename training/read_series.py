"""Read one or more time series (forecasting) from CSV or Parquet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from training.data import (TABLE_SUFFIXES, SeriesCollection, check_file, check_finite, is_datetime_time,
                           numeric_values, read_table, require_columns, require_values, show, split_rows, time_key)


def read_series(path, *, id_col: str = "series_id", time_col: str = "timestamp",
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
    df = read_table(path)
    if time_col not in df.columns and len(df.columns) == 1 and targets in (None, list(df.columns)):
        return _single_column_series(df, path)
    targets = list(targets) if targets is not None else ["value"]
    require_columns(df, [time_col, *targets], path,
                     hint="; name the time column with --time-col and each value column with --target "
                          "(in Python: time_col=..., targets=[...])")
    has_ids = id_col in df.columns
    require_values(df, [id_col, time_col] if has_ids else [time_col], path)
    covariates = [c for c in df.columns if c not in (id_col, time_col, *targets)]
    columns = targets + covariates
    values = numeric_values(df, columns, path)  # (rows, C)

    if has_ids:
        codes, ids = pd.factorize(df[id_col], sort=False)
        ids = [str(i) for i in ids]
    else:
        codes, ids = np.zeros(len(df), dtype=np.int64), [Path(path).stem]
    times = time_key(df, time_col, path)

    def where(row: int) -> str:
        series = f"series {show(df[id_col].iloc[row])} " if has_ids else ""
        return f"{series}{time_col} {show(df[time_col].iloc[row])} (row {row + 1})"

    series, order, bounds = split_rows(codes, times, values, columns, time_col, where, path)
    season = season_from_timestamps(np.split(times[order], bounds)) if is_datetime_time(df, time_col) else None
    return SeriesCollection(series, ids, [str(c) for c in targets], [str(c) for c in covariates],
                            season, f"file:{path}")


def _single_column_series(df: pd.DataFrame, path) -> SeriesCollection:
    name = df.columns[0]
    values = numeric_values(df, [name], path)
    check_finite(values, [name], path, lambda row: f"row {row + 1}")
    return SeriesCollection([values], [Path(path).stem], [str(name)], [], None, f"file:{path}")


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
