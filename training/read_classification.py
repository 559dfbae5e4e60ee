"""Read a labelled sequence dataset (classification) from CSV, Parquet or NPZ."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from training.data import (CLASSIFICATION_SUFFIXES, DataError, SequenceDataset, check_file, check_finite,
                           numeric_values, read_table, require_columns, require_values, show, split_rows, time_key)


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
    p = check_file(path, CLASSIFICATION_SUFFIXES)
    if p.suffix.lower() == ".npz":
        return _classification_from_npz(path, label_names)
    df = read_table(path, text_columns=[label_col])
    require_columns(df, [id_col, time_col, label_col], path,
                    hint="; name the sample, time and label columns with --id-col, --time-col and --label-col "
                         "(in Python: id_col=..., time_col=..., label_col=...)")
    require_values(df, [id_col, time_col, label_col], path)
    features = [c for c in df.columns if c not in (id_col, time_col, label_col)]
    if not features:
        raise DataError(f"{path}: no feature columns; expected numeric columns besides "
                        f"{id_col!r}, {time_col!r} and {label_col!r}")
    values = numeric_values(df, features, path)  # (rows, F)

    codes, ids = pd.factorize(df[id_col], sort=False)  # sample number per row, in order of appearance

    def where(row: int) -> str:
        return f"sample {show(df[id_col].iloc[row])} {time_col} {show(df[time_col].iloc[row])} (row {row + 1})"

    sequences, _, _ = split_rows(codes, time_key(df, time_col, path), values, features, time_col, where, path)
    raw_labels = _label_per_sample(df, codes, ids, label_col, id_col, path)
    labels, names = encode_labels(raw_labels, label_names, where=str(path))
    return SequenceDataset(sequences, labels, names, [str(c) for c in features], f"file:{path}")


def check_compatible(train: SequenceDataset, test: SequenceDataset) -> SequenceDataset:
    """``test`` with its features in ``train``'s order; DataError unless it has the same features (names)."""
    if train.feature_names == test.feature_names:
        return test
    if sorted(train.feature_names) == sorted(test.feature_names):  # the same columns in another order
        order = [test.feature_names.index(name) for name in train.feature_names]
        return dataclasses.replace(test, sequences=[seq[:, order] for seq in test.sequences],
                                   feature_names=list(train.feature_names))
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
        raise DataError(f"{path}: column {label_col!r}: the label changes within sample {show(ids[code])} "
                        f"(values {seen}); each sample must have a single label")
    return per_sample.first().tolist()


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
        check_finite(seq, feature_names, path, lambda step, i=i: f"sample index {i} step {step}",
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
