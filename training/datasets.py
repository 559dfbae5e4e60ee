"""Built-in datasets, loaded offline.

Classification: ``load_classification(name) -> (train, test)``; names in ``CLASSIFICATION_DATASETS``.
Forecasting: ``load_series(name) -> SeriesCollection``; names in ``FORECAST_DATASETS``.

The archive datasets come from files that ship inside installed wheels: the UCR/UEA
``.ts`` files and the airline CSV in ``aeon``, and the CO2, sunspots, Nile, El Niño and US
macroeconomic CSVs in ``statsmodels``. We locate them
with ``importlib.resources`` and parse them here, without importing ``aeon.datasets`` or
``statsmodels.datasets`` (both are slow to import). Nothing is downloaded.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd

from training.data import DataError, SequenceDataset, SeriesCollection
from training.read_classification import encode_labels

CLASSIFICATION_DATASETS: dict[str, str] = {}  # name -> one-line description
FORECAST_DATASETS: dict[str, str] = {}
_CLASSIFICATION_LOADERS = {}
_FORECAST_LOADERS = {}


def _register(registry: dict, loaders: dict, name: str, description: str):
    def wrap(fn):
        registry[name], loaders[name] = description, fn
        return fn
    return wrap


def load_classification(name: str) -> tuple[SequenceDataset, SequenceDataset]:
    """Return the (train, test) split of a built-in classification dataset."""
    if name not in _CLASSIFICATION_LOADERS:
        raise DataError(f"unknown classification dataset {name!r}; built-in: {', '.join(CLASSIFICATION_DATASETS)}")
    return _CLASSIFICATION_LOADERS[name]()


def load_series(name: str) -> SeriesCollection:
    """Return a built-in forecasting dataset."""
    if name not in _FORECAST_LOADERS:
        raise DataError(f"unknown forecasting dataset {name!r}; built-in: {', '.join(FORECAST_DATASETS)}")
    return _FORECAST_LOADERS[name]()


# ----------------------------------------------------------------------------- classification


@_register(CLASSIFICATION_DATASETS, _CLASSIFICATION_LOADERS, "synthetic",
           "generated: 3 classes (sine / square / sawtooth waves with their own period and level), "
           "2 features, lengths 20-60, 300 train / 150 test")
def _synthetic_classification(seed: int = 0):
    rng = np.random.default_rng(seed)
    n_train, n_test = 300, 150
    classes = rng.permutation(np.arange(n_train + n_test) % 3)
    sequences = [_synthetic_wave(rng, c) for c in classes]
    names = ["sawtooth", "sine", "square"]  # sorted, as encode_labels would sort them
    wave = {0: "sine", 1: "square", 2: "sawtooth"}
    labels = np.array([names.index(wave[c]) for c in classes], dtype=np.int64)
    features = ["wave", "level"]
    train = SequenceDataset(sequences[:n_train], labels[:n_train], names, features, "builtin:synthetic/train")
    test = SequenceDataset(sequences[n_train:], labels[n_train:], names, features, "builtin:synthetic/test")
    return train, test


def _synthetic_wave(rng: np.random.Generator, cls: int) -> np.ndarray:
    """One (T, 2) sequence: the class's wave (shape, period, random phase) and a noisy class level."""
    length = int(rng.integers(20, 61))
    period = (5.0, 10.0, 20.0)[cls] * rng.uniform(0.9, 1.1)
    phase = rng.uniform(0, 1)
    t = np.arange(length) / period + phase  # time in cycles

    def shape(x):
        frac = x % 1.0
        if cls == 0:
            return np.sin(2 * np.pi * frac)
        if cls == 1:
            return np.where(frac < 0.5, 1.0, -1.0)
        return 2 * frac - 1

    wave = shape(t) + rng.normal(0, 0.1, size=length)
    level = (-1.0, 0.0, 1.0)[cls] + rng.normal(0, 0.3, size=length)  # noisy, easy to pick up by averaging
    return np.stack([wave, level], axis=1).astype(np.float32)  # (T, 2)


def _archive(key: str, folder: str, description: str) -> None:
    """Register UCR/UEA dataset ``key`` from aeon's ``datasets/data/<folder>/<folder>_TRAIN|TEST.ts``."""
    def load():
        base = files("aeon") / "datasets" / "data" / folder
        train = _ts_dataset(Path(str(base / f"{folder}_TRAIN.ts")), f"builtin:{key}/train")
        test = _ts_dataset(Path(str(base / f"{folder}_TEST.ts")), f"builtin:{key}/test",
                           label_names=train.label_names)
        return train, test
    _register(CLASSIFICATION_DATASETS, _CLASSIFICATION_LOADERS, key, description)(load)


_archive("gunpoint", "GunPoint", "UCR GunPoint: hand motion, gun-draw vs point; univariate, "
         "length 150, 50 train / 150 test")
_archive("italypower", "ItalyPowerDemand", "UCR ItalyPowerDemand: daily power demand, winter vs summer; "
         "univariate, length 24, 67 train / 1029 test")
_archive("japanesevowels", "JapaneseVowels", "UEA JapaneseVowels: 9 speakers; 12 features, "
         "unequal lengths 7-29, 270 train / 370 test")
_archive("basicmotions", "BasicMotions", "UEA BasicMotions: smartwatch activity, 4 classes; 6 features, "
         "length 100, 40 train / 40 test")
_archive("arrowhead", "ArrowHead", "UCR ArrowHead: arrowhead outlines, 3 classes; univariate, length 251, "
         "36 train / 175 test")
_archive("osuleaf", "OSULeaf", "UCR OSULeaf: leaf outlines, 6 classes; univariate, length 427, "
         "200 train / 242 test")
_archive("acsf1", "ACSF1", "UCR ACSF1: appliance power consumption, 10 classes; univariate, length 1460, "
         "100 train / 100 test")


def _ts_dataset(path: Path, source: str, label_names: list[str] | None = None) -> SequenceDataset:
    sequences, raw_labels = read_ts(path)
    labels, names = encode_labels(raw_labels, label_names, where=str(path))
    features = [f"f{i}" for i in range(sequences[0].shape[1])]
    return SequenceDataset(sequences, labels, names, features, source)


def read_ts(path: Path) -> tuple[list[np.ndarray], list[str]]:
    """Parse a ``.ts`` file (UCR/UEA archive format) with class labels.

    Lines starting with ``#`` are comments and ``@`` lines the header; after ``@data``
    each line is one case: dimensions separated by ``:``, the class label last, values
    separated by ``,``. Missing values (``?`` or NaN) at the end of a case are trimmed;
    elsewhere they are an error.

    Returns a list of (T_i, F) float32 arrays and the list of labels (strings).
    """
    sequences, labels = [], []
    in_data = False
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.lower().startswith("@data"):
                in_data = True
            elif not line.startswith("@") and in_data:
                *dims, label = line.split(":")
                sequences.append(_ts_case(dims, f"{path}: line {number}"))
                labels.append(label.strip())
    if not sequences:
        raise DataError(f"{path}: no cases after @data")
    return sequences, labels


def _ts_case(dims: list[str], where: str) -> np.ndarray:
    """One case's dimension strings -> a (T, F) float32 array, trailing missing steps trimmed."""
    columns = [np.array(d.replace("?", "nan").split(","), dtype=np.float32) for d in dims]
    if len({len(c) for c in columns}) != 1:
        raise DataError(f"{where}: dimensions have different lengths {[len(c) for c in columns]}")
    x = np.stack(columns, axis=1)  # (T, F)
    real = np.flatnonzero(~np.isnan(x).all(axis=1))
    if real.size == 0:
        raise DataError(f"{where}: case has no values")
    x = x[: real[-1] + 1]
    if not np.isfinite(x).all():
        raise DataError(f"{where}: missing value inside the series")
    return x


# ----------------------------------------------------------------------------- forecasting


@_register(FORECAST_DATASETS, _FORECAST_LOADERS, "synthetic",
           "generated: 3 series of 600 steps, trend + daily season (period 24) + noise, "
           "scales 1, 10 and 1000")
def _synthetic_series(seed: int = 0) -> SeriesCollection:
    rng = np.random.default_rng(seed)
    series, ids = [], []
    for scale in (1, 10, 1000):
        t = np.arange(600)
        level = 5 + 0.01 * t * rng.uniform(0.5, 1.5)
        season = 2 * np.sin(2 * np.pi * t / 24 + rng.uniform(0, 2 * np.pi))
        noise = rng.normal(0, 0.3, size=t.shape)
        series.append((scale * (level + season + noise)).astype(np.float32)[:, None])  # (T, 1)
        ids.append(f"scale_{scale}")
    return SeriesCollection(series, ids, ["value"], [], 24, "builtin:synthetic")


@_register(FORECAST_DATASETS, _FORECAST_LOADERS, "co2",
           "Mauna Loa weekly CO2 (ppm), 1958-2001, 2284 weeks, season 52; "
           "the 59 missing weeks are filled by linear interpolation")
def _co2() -> SeriesCollection:
    path = files("statsmodels") / "datasets" / "co2" / "co2.csv"
    df = pd.read_csv(str(path)).sort_values("date")
    values = df["co2"].interpolate(method="linear", limit_direction="both")
    return SeriesCollection([values.to_numpy(np.float32)[:, None]], ["co2"], ["co2"], [], 52, "builtin:co2")


@_register(FORECAST_DATASETS, _FORECAST_LOADERS, "airline",
           "Box-Jenkins monthly airline passengers (thousands), 1949-1960, 144 months, season 12")
def _airline() -> SeriesCollection:
    path = files("aeon") / "datasets" / "data" / "Airline" / "Airline.csv"
    df = pd.read_csv(str(path)).sort_values("Date")
    values = df["Passengers"].to_numpy(np.float32)[:, None]
    return SeriesCollection([values], ["airline"], ["passengers"], [], 12, "builtin:airline")


def _statsmodels_csv(folder: str) -> pd.DataFrame:
    return pd.read_csv(str(files("statsmodels") / "datasets" / folder / f"{folder}.csv"))


@_register(FORECAST_DATASETS, _FORECAST_LOADERS, "sunspots",
           "yearly sunspot activity, 1700-2008, 309 years; an ~11-year cycle of varying length, no fixed season")
def _sunspots() -> SeriesCollection:
    values = _statsmodels_csv("sunspots").sort_values("YEAR")["SUNACTIVITY"].to_numpy(np.float32)[:, None]
    return SeriesCollection([values], ["sunspots"], ["sunactivity"], [], None, "builtin:sunspots")


@_register(FORECAST_DATASETS, _FORECAST_LOADERS, "nile",
           "yearly flow of the Nile at Aswan (10^8 m^3), 1871-1970, 100 years, no season")
def _nile() -> SeriesCollection:
    values = _statsmodels_csv("nile").sort_values("year")["volume"].to_numpy(np.float32)[:, None]
    return SeriesCollection([values], ["nile"], ["volume"], [], None, "builtin:nile")


@_register(FORECAST_DATASETS, _FORECAST_LOADERS, "elnino",
           "monthly sea surface temperature of the El Nino region (deg C), 1950-2010, 732 months, season 12")
def _elnino() -> SeriesCollection:
    wide = _statsmodels_csv("elnino").sort_values("YEAR").drop(columns="YEAR")  # one row per year, 12 months
    values = wide.to_numpy(np.float32).reshape(-1, 1)  # (years * 12, 1), month after month
    return SeriesCollection([values], ["elnino"], ["temperature"], [], 12, "builtin:elnino")


MACRO_SERIES = ["realgdp", "realcons", "realinv", "realgovt", "realdpi", "cpi", "m1", "pop"]


@_register(FORECAST_DATASETS, _FORECAST_LOADERS, "macrodata",
           "US quarterly macroeconomic levels 1959-2009 as a panel of 8 series (real GDP, consumption, "
           "investment, government spending, disposable income, CPI, M1, population), 203 quarters, season 4")
def _macrodata() -> SeriesCollection:
    df = _statsmodels_csv("macrodata").sort_values(["year", "quarter"])
    series = [df[column].to_numpy(np.float32)[:, None] for column in MACRO_SERIES]
    return SeriesCollection(series, MACRO_SERIES, ["value"], [], 4, "builtin:macrodata")
