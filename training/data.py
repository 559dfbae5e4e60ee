"""The data containers for training, and the checks both file readers share.

Two kinds of data, two containers:

* ``SequenceDataset`` - classification (many-to-one): N variable-length sequences, one label each.
* ``SeriesCollection`` - forecasting: one or more series, targets first, then past covariates.

The readers live beside this module: ``training.read_classification`` (CSV / Parquet in long
format, one row per time step, or NumPy ``.npz``) and ``training.read_series`` (CSV / Parquet). Every problem with the data raises ``DataError``
whose message names the file (the path as given), the column and/or row/sample, and
what is wrong - so the CLI can print it as is.

Row numbers in messages count data rows from 1 (the CSV header is not a row).
"""

from __future__ import annotations

import csv as csv_module
import hashlib
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
CLASSIFICATION_SUFFIXES = TABLE_SUFFIXES + (".npz",)


class DataError(ValueError):
    """Bad user data. The message names the file, the column/row and the problem."""


@dataclass
class SequenceDataset:
    """Sequences with one label each (classification, many-to-one).

    Attributes
    ----------
    sequences : list of N float32 arrays, each (T_i, F); T_i >= 1, all values finite.
    labels : (N,) int64 indexes into ``label_names``.
    label_names : sorted unique label names as strings (integer labels sort numerically).
    feature_names : the F feature names.
    source : where the data came from, e.g. ``"file:train.csv"`` or ``"builtin:gunpoint/train"``.
    """

    sequences: list[np.ndarray]
    labels: np.ndarray
    label_names: list[str]
    feature_names: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def n_classes(self) -> int:
        return len(self.label_names)


@dataclass
class SeriesCollection:
    """Time series for forecasting.

    Attributes
    ----------
    series : one float32 array (T_i, C) per series; columns are ``target_names + covariate_names``.
    series_ids : one id per series.
    target_names : the columns to forecast (the first ``len(target_names)`` columns).
    covariate_names : past covariates (known up to the forecast origin only).
    season : seasonal period if known (12 for monthly data, ...), else None.
    source : where the data came from, e.g. ``"file:sales.csv"`` or ``"builtin:co2"``.
    notes : what the reader found questionable but not wrong, as sentences for the run's warnings (gaps in
        the timestamps, values float32 cannot tell apart).
    """

    series: list[np.ndarray]
    series_ids: list[str]
    target_names: list[str]
    covariate_names: list[str]
    season: int | None
    source: str
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.series)

    @property
    def n_targets(self) -> int:
        return len(self.target_names)

    @property
    def column_names(self) -> list[str]:
        return self.target_names + self.covariate_names


def fingerprint(obj: SequenceDataset | SeriesCollection) -> str:
    """Return a sha256 hex digest of the data's content, stable across runs and machines.

    Covers the numbers, labels and all names (labels, features, series ids, columns),
    but not ``source``: the same data read from a different path has the same fingerprint.
    """
    h = hashlib.sha256()
    if isinstance(obj, SequenceDataset):
        names = {"kind": "classification", "labels": obj.label_names, "features": obj.feature_names}
        arrays = [*obj.sequences, np.asarray(obj.labels, dtype="<i8")]
    elif isinstance(obj, SeriesCollection):
        names = {"kind": "forecasting", "ids": obj.series_ids, "targets": obj.target_names,
                 "covariates": obj.covariate_names, "season": obj.season}
        arrays = list(obj.series)
    else:
        raise TypeError(f"fingerprint() takes a SequenceDataset or SeriesCollection, not {type(obj).__name__}")
    h.update(json.dumps(names, sort_keys=True).encode())
    for a in arrays:
        a = np.ascontiguousarray(a, dtype="<i8" if a.dtype.kind in "iu" else "<f4")
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


# How far from the median of its neighbours a value must be, in the series' typical steps, to be named: on 21
# public series the farthest was 17 steps away, a yearly peak three times the rest of the year 108 and a
# one-off holiday five times the level 141; a glitch of 1e4 among values near 100 is 1,900, and 1e9 is 10^8.
FAR_STEPS = 1000
NEIGHBOURS = 2  # on each side: the local median ignores a run of up to two wild values


def far_values(collection: SeriesCollection, limit: int = 5) -> list[str]:
    """Target values far from their neighbours, as a glitch is, described for a warning (at most ``limit``, the
    farthest first), such as ``"series 'a', step 101 of 150: 1e+09, where its neighbours' median is 138.1
    (188,657,441 typical steps away)"``.

    A value is far when it is ``FAR_STEPS`` or more of the series' typical steps (its median absolute change
    from one step to the next; in a series that mostly repeats a value, the median of its changes) away from
    the median of the ``NEIGHBOURS`` values on each side. Level shifts, trends, growth and seasonal peaks
    move with their neighbours, so they are never named; a spike alone among its neighbours is.
    """
    farthest = []  # (steps away, where, step, length, value, local median): each series' `limit` farthest
    count = 0
    width = 2 * NEIGHBOURS + 1
    for sid, values in zip(collection.series_ids, collection.series):
        for c, column in enumerate(collection.target_names):
            y = values[:, c].astype(np.float64)
            changes = np.abs(np.diff(y))
            moving = changes[changes > 0]
            if len(y) < width or not moving.size:
                continue  # too short to have neighbours on both sides, or constant
            typical = float(np.median(changes)) or float(np.median(moving))
            local = np.median(np.lib.stride_tricks.sliding_window_view(np.pad(y, NEIGHBOURS, mode="reflect"), width), axis=1)
            away = np.abs(y - local) / typical
            steps = np.flatnonzero(away >= FAR_STEPS)
            count += steps.size
            # Only the farthest can be shown: describing every far value of a big panel would cost seconds.
            steps = steps[np.argsort(-away[steps], kind="stable")[:limit]]
            where = f"series {sid!r}" + (f", column {column!r}" if collection.n_targets > 1 else "")
            farthest += [(away[step], where, step, len(y), y[step], local[step]) for step in steps]
    farthest.sort(key=lambda entry: -entry[0])
    shown = [f"{where}, step {step + 1} of {length}: {value:.6g}, where its neighbours' median is {local:.6g} "
             f"({steps_away:,.0f} typical steps away)" for steps_away, where, step, length, value, local in farthest[:limit]]
    return shown + ([f"and {count - limit} more"] if count > limit else [])


def check_file(path, supported: tuple[str, ...]) -> Path:
    p = Path(path)
    if not p.exists():
        raise DataError(f"{path}: file not found")
    if p.is_dir():
        raise DataError(f"{path}: is a directory, expected a file")
    if p.suffix.lower() not in supported:
        raise DataError(f"{path}: unsupported file type {p.suffix!r}; supported: {', '.join(supported)}")
    return p


def read_table(path, text_columns: list[str] = ()) -> pd.DataFrame:
    """Read a CSV or Parquet file; an empty file (or one without data rows) is an error, and so is a CSV
    that is not comma-separated with a header row (``check_csv_layout``).

    A CSV's ``text_columns`` (class labels) are read as written: ``001`` stays ``001``, and ``NA`` or ``None``
    is a name, not a missing value; only an empty cell is missing.
    """
    csv = Path(path).suffix.lower() == ".csv"
    try:
        header, trailing = check_csv_layout(path) if csv else ([], False)
        # A separator ending every row: index_col=False drops the empty last field pandas would index by.
        df = (pd.read_csv(path, index_col=False if trailing else None) if csv else pd.read_parquet(path))
        if csv and (text := [c for c in text_columns if c in df.columns]):
            as_written = pd.read_csv(path, index_col=False if trailing else None, usecols=text, dtype=str,
                                     keep_default_na=False)
            df[text] = as_written[text].replace("", np.nan)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty") from None
    except DataError:
        raise
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: could not read the file ({e}); save it as UTF-8 (in a spreadsheet: CSV UTF-8)") from e
    except Exception as e:
        raise DataError(f"{path}: could not read the file ({e})") from e
    if csv:
        # A header ending in a separator adds an unnamed column; where the rows end in one too, it is empty.
        df = df.drop(columns=[c for c in df.columns if str(c).startswith("Unnamed: ") and df[c].isna().all()])
        # Rows of empty cells (",,") below the table, as spreadsheets write them, hold nothing; one inside the
        # table stays, and is refused as the missing value it is.
        filled = np.flatnonzero(df.notna().any(axis=1).to_numpy())
        df = df.iloc[: filled[-1] + 1 if filled.size else 0]
        check_header(df, header, path)
    if df.empty:
        raise DataError(f"{path}: file is empty (no data rows); columns: {list(df.columns)}")
    return df.reset_index(drop=True)


OTHER_SEPARATORS = {";": "';'", "\t": "a tab", "|": "'|'"}
LAYOUT_ROWS = 1000  # data rows whose fields are counted; pandas itself refuses a longer row further down


def check_csv_layout(path) -> tuple[list[str], bool]:
    """The CSV's header fields as written, and whether every row ends in a separator (an empty extra field,
    which is dropped); DataError where the data rows are longer than the header otherwise, as pandas would
    read them into the wrong table without complaint.

    One field more in every row (a decimal comma: ``2010-01-01,100,25``) makes pandas index the rows by their
    first field and shift every value one column left, so a model would train on the decimals.
    """
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as file:
        rows = csv_module.reader(file)
        header = next(rows, [])
        extra = [row[len(header):] for row, _ in zip(rows, range(LAYOUT_ROWS)) if len(row) > len(header)]
    if not extra:
        return header, False
    if all(fields == [""] for fields in extra):
        return header, True
    if len(header) == 1:
        refuse_other_separator(header[0], path)  # 'timestamp;value' over '2010-01-01;100,25': the ';' is the news
    raise DataError(f"{path}: the data rows have more fields than the header ({len(header)} columns: {header}); "
                    f"write decimals with '.' and separate fields with ',' (a decimal comma, as in 100,25, adds a field)")


def check_header(df: pd.DataFrame, header: list[str], path) -> None:
    """Refuse a CSV header that is no header: one column holding another separator (``timestamp;value``), or
    numbers (the file has none, and its first row would be lost as data). ``header``: its fields as written
    (pandas renames a repeated ``0`` to ``0.1``)."""
    if len(df.columns) == 1:
        refuse_other_separator(str(df.columns[0]), path)
    if all(_is_number(column) for column in df.columns):
        raise DataError(f"{path}: the first row, {header[:10]}, holds numbers where a header should "
                        f"name the columns. If it is data, add a header row that names them first; if "
                        f"those are the columns' names, rename them (a name that is a number reads as data)")


def refuse_other_separator(header: str, path) -> None:
    """A one-column header holding another separator is a file written with that separator."""
    for separator, said in OTHER_SEPARATORS.items():
        if separator in header:
            raise DataError(f"{path}: the header {header!r} is one column; the file seems to separate fields "
                            f"with {said}: write it with ',' (comma-separated values)")


def _is_number(text) -> bool:
    try:
        float(str(text))
    except ValueError:
        return False
    return True


def require_columns(df: pd.DataFrame, columns: list[str], path, hint: str = "") -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column {missing[0]!r}; the file has columns {list(df.columns)}{hint}")


def require_values(df: pd.DataFrame, columns: list[str], path) -> None:
    """Key columns (ids, steps, labels) may not have empty cells."""
    for c in columns:
        empty = np.flatnonzero(df[c].isna().to_numpy())
        if empty.size:
            raise DataError(f"{path}: column {c!r} is empty in row {empty[0] + 1}")


THOUSANDS = re.compile(r"^\s*-?[1-9]\d{0,2}([,'\u00a0 ]\d{3})+(\.\d+)?\s*$")  # 10,104 or 1'234.5 (not 0,500)


def numeric_values(df: pd.DataFrame, columns: list, path, dtype=np.float32, targets: list = ()) -> np.ndarray:
    """The given columns as a (rows, len(columns)) array of ``dtype``; a non-numeric cell is an error that says
    what the column is for: one of the ``targets`` (the values to forecast) or a feature."""
    arrays = []
    for c in columns:
        col = df[c] if pd.api.types.is_numeric_dtype(df[c]) else pd.to_numeric(df[c], errors="coerce")
        bad = np.flatnonzero((col.isna() & df[c].notna()).to_numpy())
        if bad.size:
            row = int(bad[0])
            value = df[c].iloc[row]
            fix = ("it holds the values to forecast, so convert it to numbers" if c in targets else
                   "every column other than the id, time, label and target columns is used as a numeric feature: "
                   "remove it or convert it to numbers")
            if THOUSANDS.match(str(value)):
                plain = re.sub(r"[,'\u00a0 ]", "", str(value).strip())
                fix += f" (if {show(value)} is {plain} with a thousands separator, write {plain})"
            raise DataError(f"{path}: column {c!r} is not numeric (row {row + 1} has {show(value)}, "
                            f"{bad.size} such cell{'s' if bad.size > 1 else ''} in all); {fix}")
        arrays.append(col.to_numpy(dtype=dtype, na_value=np.nan))
    return np.stack(arrays, axis=1)


MISSING_HINT = ("; the model reads a value at every step: fill the gaps before training (interpolate them, or carry "
                "the last value forward), or drop such rows only at a series' start or end")


def check_finite(values: np.ndarray, columns: list, path, describe, noun: str = "column", hint: str = "") -> None:
    """Error on the first NaN/inf in ``values`` (rows, C), with how many there are. ``describe(row)`` says
    where the row is; ``hint`` follows the message (how to fix it)."""
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        kind = "missing (NaN)" if np.isnan(values[row, col]) else "infinite"
        count = int(bad.sum())
        more = f" ({count} cells are missing or infinite in all)" if count > 1 else ""
        raise DataError(f"{path}: {noun} {columns[col]!r} is {kind} at {describe(int(row))}{more}{hint}")


SLASHED_DATE = r"^\s*(\d{1,2})[/.](\d{1,2})[/.]\d{2,4}"  # 01/02/2010: day or month first?


def is_datetime_time(df: pd.DataFrame, time_col: str) -> bool:
    return not pd.api.types.is_numeric_dtype(df[time_col])


def time_key(df: pd.DataFrame, time_col: str, path) -> np.ndarray:
    """A sortable numeric key for the time column: numbers as is, dates as int64 nanoseconds."""
    col = df[time_col]
    if pd.api.types.is_numeric_dtype(col):
        return col.to_numpy(dtype=np.float64)
    try:
        with warnings.catch_warnings():  # "could not infer format" is noise here: we parse or fail
            warnings.simplefilter("ignore", UserWarning)
            times = pd.to_datetime(col, utc=True)  # offsets that change (summer time) are one clock: UTC
    except (ValueError, TypeError) as e:
        slashed = col.astype(str).str.match(SLASHED_DATE).any()
        why = (": 01/02/2024 may be 1 February or 2 January, and pandas reads the whole column the way it reads "
               "the first" if slashed else "")
        reason = str(e).splitlines()[0].split(". You might want")[0]  # pandas' advice names flags we do not have
        raise DataError(f"{path}: column {time_col!r} must hold numbers or dates, all written one way; could not "
                        f"parse it ({reason}). Write every date as year-month-day (2024-01-31){why}") from e
    times = times.dt.tz_convert(None)
    return times.to_numpy(dtype="datetime64[ns]").astype(np.int64)


def show(value) -> str:
    """A cell value for an error message: ``'b'``, ``3``, ``'2024-01-31 00:00:00'``."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (pd.Timestamp, np.datetime64)):
        value = str(value)
    return repr(value)


def check_unique_steps(codes, steps, order, time_col, where, path) -> None:
    """``codes`` and ``steps`` are sorted by (code, step), so duplicates are neighbours.

    ``order`` maps sorted positions back to rows; ``where(row)`` describes a row.
    """
    dup = np.flatnonzero((np.diff(codes) == 0) & (np.diff(steps) == 0))
    if dup.size:
        a, b = order[dup[0]], order[dup[0] + 1]
        raise DataError(f"{path}: column {time_col!r}: duplicate {time_col} at {where(a)}, "
                        f"repeated in row {b + 1}")


def split_rows(codes: np.ndarray, steps: np.ndarray, values: np.ndarray, columns: list, time_col: str,
               where, path, hint: str = "") -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Rows of a long table cut into one array per sequence, each in step order: (pieces, order, bounds).

    ``codes`` numbers the sequence of every row, ``steps`` orders rows within one; a repeated step and a
    non-finite value are errors naming the row (``where(row)``), the latter followed by ``hint``. ``order``
    sorts rows by (code, step) and ``bounds`` are the sorted positions where a new sequence starts, for
    splitting other columns alike.
    """
    order = np.lexsort((steps, codes))  # by sequence, then by step; stable
    check_unique_steps(codes[order], steps[order], order, time_col, where, path)
    check_finite(values, columns, path, where, hint=hint)
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    return np.split(values[order], bounds), order, bounds

