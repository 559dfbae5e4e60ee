"""Read and validate user data for training.

Two kinds of data, two containers:

* ``SequenceDataset`` - classification (many-to-one): N variable-length sequences, one label each.
* ``SeriesCollection`` - forecasting: one or more series, targets first, then past covariates.

The readers accept CSV / Parquet in long format (one row per time step) and, for
classification, NumPy ``.npz`` files. Every problem with the data raises ``DataError``
whose message names the file (the path as given), the column and/or row/sample, and
what is wrong - so the CLI can print it as is.

Row numbers in messages count data rows from 1 (the CSV header is not a row).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
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
    """

    series: list[np.ndarray]
    series_ids: list[str]
    target_names: list[str]
    covariate_names: list[str]
    season: int | None
    source: str

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


# ----------------------------------------------------------------------------- classification


def read_classification(path, *, id_col: str = "sample_id", time_col: str = "step",
                        label_col: str = "label", label_names: list[str] | None = None) -> SequenceDataset:
    """Read a labelled sequence dataset from CSV, Parquet or NPZ.

    CSV / Parquet (long format): one row per (sample, step) with columns ``id_col``,
    ``time_col``, ``label_col``; every other column is a numeric feature (file order).
    Rows are sorted by ``time_col`` within each sample; samples keep the order in which
    they first appear and may have different lengths.

    NPZ: ``X`` (N, T, F) or (N, T); ``y`` (N,); optional ``lengths`` (N,) and
    ``feature_names`` (F,). Without ``lengths``, shorter sequences are NaN-padded at the end.

    Parameters
    ----------
    label_names : the known classes (e.g. the training set's, when reading a test set).
        Labels are mapped onto them; a label not in the list is an error.
    """
    p = _check_file(path, CLASSIFICATION_SUFFIXES)
    if p.suffix.lower() == ".npz":
        return _classification_from_npz(path, label_names)
    df = _read_table(path)
    _require_columns(df, [id_col, time_col, label_col], path)
    _require_values(df, [id_col, time_col, label_col], path)
    features = [c for c in df.columns if c not in (id_col, time_col, label_col)]
    if not features:
        raise DataError(f"{path}: no feature columns; expected numeric columns besides "
                        f"{id_col!r}, {time_col!r} and {label_col!r}")
    values = _numeric_values(df, features, path)  # (rows, F)

    codes, ids = pd.factorize(df[id_col], sort=False)  # sample number per row, in order of appearance
    steps = _time_key(df, time_col, path)
    order = np.lexsort((steps, codes))  # by sample, then by step; stable

    def where(row: int) -> str:
        return f"sample {_show(df[id_col].iloc[row])} {time_col} {_show(df[time_col].iloc[row])} (row {row + 1})"

    _check_unique_steps(codes[order], steps[order], order, time_col, where, path)
    _check_finite(values, features, path, where)

    sorted_codes = codes[order]
    bounds = np.flatnonzero(np.diff(sorted_codes)) + 1
    sequences = np.split(values[order], bounds)
    raw_labels = _label_per_sample(df, codes, ids, label_col, id_col, path)
    labels, names = encode_labels(raw_labels, label_names, where=str(path))
    return SequenceDataset(sequences, labels, names, [str(c) for c in features], f"file:{path}")


def check_compatible(train: SequenceDataset, test: SequenceDataset) -> None:
    """Raise DataError unless ``test`` has the same features (count and names) as ``train``."""
    if train.feature_names == test.feature_names:
        return
    if train.n_features != test.n_features:
        problem = f"train has {train.n_features} features, test has {test.n_features}"
    else:
        problem = "train and test have the same number of features but different names"
    raise DataError(f"feature mismatch: {problem}. "
                    f"train ({train.source}): {train.feature_names}; test ({test.source}): {test.feature_names}")


def encode_labels(raw, label_names: list[str] | None = None, *, where: str) -> tuple[np.ndarray, list[str]]:
    """Turn raw labels into (int64 codes, label names).

    Labels become strings (``1`` and ``1.0`` both become ``"1"``). Without ``label_names``
    the names are the sorted unique labels (numeric order when all look like numbers)
    and at least two classes are required. ``where`` starts every error message.
    """
    names = [_label_str(v) for v in raw]
    if None in names:
        raise DataError(f"{where}: the label of sample {names.index(None)} is missing (NaN)")
    if label_names is None:
        label_names = _sort_labels(set(names))
        if len(label_names) < 2:
            found = label_names[0] if label_names else "none"
            raise DataError(f"{where}: only one class ({found!r}) in the labels; classification needs at least 2")
    label_names = [str(n) for n in label_names]
    index = {n: i for i, n in enumerate(label_names)}
    unknown = _sort_labels(set(names) - index.keys())
    if unknown:
        raise DataError(f"{where}: label {unknown[0]!r} is not one of the known labels {label_names}")
    return np.array([index[n] for n in names], dtype=np.int64), label_names


def _label_per_sample(df, codes, ids, label_col, id_col, path) -> list:
    """One label per sample; error if a sample's label changes between its rows."""
    per_sample = df.groupby(codes, sort=True)[label_col]
    counts = per_sample.nunique()
    if (counts > 1).any():
        code = int(counts.index[counts > 1][0])
        seen = sorted(map(str, per_sample.get_group(code).unique()))
        raise DataError(f"{path}: column {label_col!r}: the label changes within sample {_show(ids[code])} "
                        f"(values {seen}); each sample must have a single label")
    return per_sample.first().tolist()


def _check_unique_steps(codes, steps, order, time_col, where, path) -> None:
    """``codes`` and ``steps`` are sorted by (code, step), so duplicates are neighbours.

    ``order`` maps sorted positions back to rows; ``where(row)`` describes a row.
    """
    dup = np.flatnonzero((np.diff(codes) == 0) & (np.diff(steps) == 0))
    if dup.size:
        a, b = order[dup[0]], order[dup[0] + 1]
        raise DataError(f"{path}: column {time_col!r}: duplicate {time_col} at {where(a)}, "
                        f"repeated in row {b + 1}")


def _classification_from_npz(path, label_names) -> SequenceDataset:
    X, y, lengths, feature_names = _load_npz(path)
    if X.ndim == 2:
        X = X[:, :, None]  # (N, T) -> (N, T, 1)
    if X.ndim != 3:
        raise DataError(f"{path}: X must have shape (N, T, F) or (N, T); got {X.shape}")
    if not np.issubdtype(X.dtype, np.number):
        raise DataError(f"{path}: X must be numeric; got dtype {X.dtype}")
    n, t, f = X.shape
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{path}: X has {n} samples but y has shape {y.shape}; expected ({n},)")
    if n == 0 or t == 0:
        raise DataError(f"{path}: X is empty (shape {X.shape})")
    if feature_names is None:
        feature_names = [f"f{i}" for i in range(f)]
    elif len(feature_names) != f:
        raise DataError(f"{path}: feature_names has {len(feature_names)} names but X has {f} features")
    X = X.astype(np.float32)
    lengths = _npz_lengths(X, lengths, path)
    sequences = []
    for i, length in enumerate(lengths):
        seq = X[i, :length].copy()  # (T_i, F), not a view that would keep the padded X alive
        _check_finite(seq, feature_names, path, lambda step, i=i: f"sample index {i} step {step}",
                      noun="feature", hint=" (only padding after the sequence's end may be NaN)")
        sequences.append(seq)
    labels, names = encode_labels(y.tolist(), label_names, where=str(path))
    return SequenceDataset(sequences, labels, names, feature_names, f"file:{path}")


def _load_npz(path):
    """Return (X, y, lengths or None, feature_names or None) from an .npz file."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("X", "y") if k not in npz.files]
            if missing:
                raise DataError(f"{path}: missing array(s) {missing}; an .npz needs X (N, T, F) and y (N,); "
                                f"found {sorted(npz.files)}")
            X, y = npz["X"], npz["y"]
            lengths = npz["lengths"] if "lengths" in npz.files else None
            names = [str(s) for s in npz["feature_names"]] if "feature_names" in npz.files else None
    except DataError:
        raise
    except ValueError as e:  # object arrays need pickle, which we refuse for safety
        raise DataError(f"{path}: could not load arrays ({e}); save labels and names as numeric "
                        f"or fixed-width string arrays, e.g. np.array(labels, dtype=str)") from e
    except Exception as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from e
    return X, y, lengths, names


def _npz_lengths(X: np.ndarray, lengths, path) -> np.ndarray:
    """Valid length of each sample: from ``lengths``, or up to the last step that isn't all NaN."""
    n, t, _ = X.shape
    if lengths is None:
        real = ~np.isnan(X).all(axis=2)  # (N, T) steps with any value
        lengths = np.where(real.any(axis=1), t - np.argmax(real[:, ::-1], axis=1), 0)
        empty = np.flatnonzero(lengths == 0)
        if empty.size:
            raise DataError(f"{path}: sample index {empty[0]} of X is entirely NaN (length 0)")
        return lengths
    lengths = np.asarray(lengths)
    if lengths.shape != (n,) or not np.issubdtype(lengths.dtype, np.integer):
        raise DataError(f"{path}: lengths must be {n} integers, one per sample; got {lengths.dtype} {lengths.shape}")
    bad = np.flatnonzero((lengths < 1) | (lengths > t))
    if bad.size:
        raise DataError(f"{path}: lengths[{bad[0]}] = {lengths[bad[0]]} is out of range; "
                        f"lengths must be between 1 and T = {t}")
    return lengths


# ----------------------------------------------------------------------------- forecasting


def read_series(path, *, id_col: str = "series_id", time_col: str = "timestamp",
                targets: list[str] | None = None) -> SeriesCollection:
    """Read one or more time series from CSV or Parquet (long format).

    Columns: ``id_col`` (optional: without it the file is one series), ``time_col``,
    the ``targets`` (default ``["value"]``) and any other numeric columns, which become
    past covariates. Rows are sorted by time within each series; a repeated timestamp
    within a series is an error. A file with a single numeric column and nothing else
    is one univariate series in file order.

    ``season`` is inferred from regular timestamps: hourly 24, half-hourly 48, daily 7,
    weekly 52, monthly 12, quarterly 4; otherwise None.
    """
    _check_file(path, TABLE_SUFFIXES)
    df = _read_table(path)
    if time_col not in df.columns and len(df.columns) == 1 and targets in (None, list(df.columns)):
        return _single_column_series(df, path)
    targets = list(targets) if targets is not None else ["value"]
    _require_columns(df, [time_col, *targets], path,
                     hint="" if targets != ["value"] else "; pass targets=[...] to name the value column(s)")
    has_ids = id_col in df.columns
    _require_values(df, [id_col, time_col] if has_ids else [time_col], path)
    covariates = [c for c in df.columns if c not in (id_col, time_col, *targets)]
    columns = targets + covariates
    values = _numeric_values(df, columns, path)  # (rows, C)

    if has_ids:
        codes, ids = pd.factorize(df[id_col], sort=False)
        ids = [str(i) for i in ids]
    else:
        codes, ids = np.zeros(len(df), dtype=np.int64), [Path(path).stem]
    times = _time_key(df, time_col, path)
    order = np.lexsort((times, codes))  # by series, then by time; stable

    def where(row: int) -> str:
        series = f"series {_show(df[id_col].iloc[row])} " if has_ids else ""
        return f"{series}{time_col} {_show(df[time_col].iloc[row])} (row {row + 1})"

    _check_unique_steps(codes[order], times[order], order, time_col, where, path)
    _check_finite(values, columns, path, where)

    sorted_codes = codes[order]
    bounds = np.flatnonzero(np.diff(sorted_codes)) + 1
    series = np.split(values[order], bounds)
    season = _infer_season(np.split(times[order], bounds)) if _is_datetime_time(df, time_col) else None
    return SeriesCollection(series, ids, [str(c) for c in targets], [str(c) for c in covariates],
                            season, f"file:{path}")


def _single_column_series(df: pd.DataFrame, path) -> SeriesCollection:
    name = df.columns[0]
    values = _numeric_values(df, [name], path)
    _check_finite(values, [name], path, lambda row: f"row {row + 1}")
    return SeriesCollection([values], [Path(path).stem], [str(name)], [], None, f"file:{path}")


_SEASONS = [  # (smallest, largest typical step, season)
    (pd.Timedelta(minutes=30), pd.Timedelta(minutes=30), 48),
    (pd.Timedelta(hours=1), pd.Timedelta(hours=1), 24),
    (pd.Timedelta(days=1), pd.Timedelta(days=1), 7),
    (pd.Timedelta(days=7), pd.Timedelta(days=7), 52),
    (pd.Timedelta(days=28), pd.Timedelta(days=31), 12),
    (pd.Timedelta(days=89), pd.Timedelta(days=92), 4),
]


def _infer_season(times_per_series: list[np.ndarray]) -> int | None:
    """Season from the median step between timestamps (int64 nanoseconds), or None."""
    steps = np.concatenate([np.diff(t) for t in times_per_series])
    if steps.size == 0:
        return None
    step = pd.Timedelta(int(np.median(steps)), unit="ns")
    for low, high, season in _SEASONS:
        if low <= step <= high:
            return season
    return None


# ----------------------------------------------------------------------------- shared helpers


def _check_file(path, supported: tuple[str, ...]) -> Path:
    p = Path(path)
    if not p.exists():
        raise DataError(f"{path}: file not found")
    if p.is_dir():
        raise DataError(f"{path}: is a directory, expected a file")
    if p.suffix.lower() not in supported:
        raise DataError(f"{path}: unsupported file type {p.suffix!r}; supported: {', '.join(supported)}")
    return p


def _read_table(path) -> pd.DataFrame:
    """Read a CSV or Parquet file; an empty file (or one without data rows) is an error."""
    try:
        if Path(path).suffix.lower() == ".csv":
            df = pd.read_csv(path)
        else:
            df = pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty") from None
    except Exception as e:
        raise DataError(f"{path}: could not read the file ({e})") from e
    if df.empty:
        raise DataError(f"{path}: file is empty (no data rows); columns: {list(df.columns)}")
    return df.reset_index(drop=True)


def _require_columns(df: pd.DataFrame, columns: list[str], path, hint: str = "") -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column {missing[0]!r}; the file has columns {list(df.columns)}{hint}")


def _require_values(df: pd.DataFrame, columns: list[str], path) -> None:
    """Key columns (ids, steps, labels) may not have empty cells."""
    for c in columns:
        empty = np.flatnonzero(df[c].isna().to_numpy())
        if empty.size:
            raise DataError(f"{path}: column {c!r} is empty in row {empty[0] + 1}")


def _numeric_values(df: pd.DataFrame, columns: list, path) -> np.ndarray:
    """The given columns as a float32 (rows, len(columns)) array; a non-numeric cell is an error."""
    arrays = []
    for c in columns:
        col = df[c] if pd.api.types.is_numeric_dtype(df[c]) else pd.to_numeric(df[c], errors="coerce")
        bad = np.flatnonzero((col.isna() & df[c].notna()).to_numpy())
        if bad.size:
            row = int(bad[0])
            raise DataError(f"{path}: column {c!r} is not numeric (row {row + 1} has {_show(df[c].iloc[row])}); "
                            f"every column other than the id, time and label/target columns is used as a "
                            f"numeric feature - remove it or convert it to numbers")
        arrays.append(col.to_numpy(dtype=np.float32, na_value=np.nan))
    return np.stack(arrays, axis=1)


def _check_finite(values: np.ndarray, columns: list, path, describe, noun: str = "column", hint: str = "") -> None:
    """Error on the first NaN/inf in ``values`` (rows, C). ``describe(row)`` says where the row is."""
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        kind = "missing (NaN)" if np.isnan(values[row, col]) else "infinite"
        raise DataError(f"{path}: {noun} {columns[col]!r} is {kind} at {describe(int(row))}{hint}")


def _is_datetime_time(df: pd.DataFrame, time_col: str) -> bool:
    return not pd.api.types.is_numeric_dtype(df[time_col])


def _time_key(df: pd.DataFrame, time_col: str, path) -> np.ndarray:
    """A sortable numeric key for the time column: numbers as is, dates as int64 nanoseconds."""
    col = df[time_col]
    if pd.api.types.is_numeric_dtype(col):
        return col.to_numpy(dtype=np.float64)
    try:
        with warnings.catch_warnings():  # "could not infer format" is noise here: we parse or fail
            warnings.simplefilter("ignore", UserWarning)
            times = pd.to_datetime(col)
    except (ValueError, TypeError) as e:
        raise DataError(f"{path}: column {time_col!r} must hold numbers or dates "
                        f"(e.g. 2024-01-31); could not parse it ({e})") from e
    if times.dt.tz is not None:
        times = times.dt.tz_convert(None)
    return times.to_numpy(dtype="datetime64[ns]").astype(np.int64)


def _show(value) -> str:
    """A cell value for an error message: ``'b'``, ``3``, ``'2024-01-31 00:00:00'``."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (pd.Timestamp, np.datetime64)):
        value = str(value)
    return repr(value)


def _label_str(v) -> str | None:
    """A label as a string (None when missing); integral floats lose their ``.0``."""
    if isinstance(v, (float, np.floating)):
        if np.isnan(v):
            return None
        return str(int(v)) if float(v).is_integer() else str(float(v))
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return str(v)


def _sort_labels(names) -> list[str]:
    """Sort label names numerically when they all look like numbers, else alphabetically."""
    names = list(names)
    try:
        return sorted(names, key=float)
    except ValueError:
        return sorted(names)
