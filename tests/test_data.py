"""Tests for the data layer: file readers, built-in datasets, forecasting windows."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from training.data import DataError, SequenceDataset, SeriesCollection, far_values, fingerprint
from training.read_classification import check_compatible, read_classification
from training.read_series import read_series
from training.datasets import CLASSIFICATION_DATASETS, FORECAST_DATASETS, load_classification, load_series
from training.windows import make_windows, split_by_time, split_points, train_series


def long_frame():
    """Two samples (lengths 3 and 2), rows shuffled, string labels."""
    return pd.DataFrame({
        "sample_id": ["b", "a", "b", "a", "b"],
        "step": [2, 1, 0, 0, 1],
        "label": ["walk", "run", "walk", "run", "walk"],
        "x": [3.0, 11.0, 1.0, 10.0, 2.0],
        "y": [30.0, 110.0, 10.0, 100.0, 20.0],
    })


def write_csv(tmp_path, df, name="data.csv"):
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


# ----------------------------------------------------------------------------- classification files


def test_read_classification_csv(tmp_path):
    ds = read_classification(write_csv(tmp_path, long_frame()))
    assert isinstance(ds, SequenceDataset) and len(ds) == 2
    assert ds.feature_names == ["x", "y"]
    assert ds.label_names == ["run", "walk"]
    # samples keep the order of first appearance; steps are sorted within a sample
    np.testing.assert_array_equal(ds.sequences[0], [[1, 10], [2, 20], [3, 30]])
    np.testing.assert_array_equal(ds.sequences[1], [[10, 100], [11, 110]])
    assert ds.sequences[0].dtype == np.float32
    assert ds.labels.tolist() == [1, 0] and ds.labels.dtype == np.int64
    assert ds.source.startswith("file:") and ds.source.endswith("data.csv")


def test_parquet_matches_csv(tmp_path):
    df = long_frame()
    df.to_parquet(tmp_path / "data.parquet")
    from_csv = read_classification(write_csv(tmp_path, df))
    from_parquet = read_classification(tmp_path / "data.parquet")
    assert fingerprint(from_csv) == fingerprint(from_parquet)


def test_integer_labels_sort_numerically(tmp_path):
    df = long_frame().assign(label=[10, 2, 10, 2, 10])
    ds = read_classification(write_csv(tmp_path, df))
    assert ds.label_names == ["2", "10"]
    assert ds.labels.tolist() == [1, 0]


def test_label_names_map_test_set(tmp_path):
    df = long_frame().assign(label=["walk"] * 5)  # a test set may hold one class only
    ds = read_classification(write_csv(tmp_path, df), label_names=["jump", "run", "walk"])
    assert ds.label_names == ["jump", "run", "walk"]
    assert ds.labels.tolist() == [2, 2]


def test_unknown_label_in_test_set(tmp_path):
    path = write_csv(tmp_path, long_frame(), "test.csv")
    with pytest.raises(DataError, match=r"test\.csv.*'walk'.*not one of.*\['run', 'swim'\]"):
        read_classification(path, label_names=["run", "swim"])


def test_custom_column_names(tmp_path):
    df = long_frame().rename(columns={"sample_id": "id", "step": "t", "label": "y_true"})
    ds = read_classification(write_csv(tmp_path, df), id_col="id", time_col="t", label_col="y_true")
    assert [len(s) for s in ds.sequences] == [3, 2]


def test_datetime_steps_are_sorted(tmp_path):
    df = long_frame().assign(step=["2024-01-03", "2024-01-02", "2024-01-01", "2024-01-01", "2024-01-02"])
    ds = read_classification(write_csv(tmp_path, df))
    np.testing.assert_array_equal(ds.sequences[0][:, 0], [1, 2, 3])


@pytest.mark.parametrize("name", ["missing.csv", "missing.npz"])
def test_file_not_found(tmp_path, name):
    with pytest.raises(DataError, match=rf"{name}: file not found"):
        read_classification(tmp_path / name)


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "data.xlsx"
    path.write_text("x")
    with pytest.raises(DataError, match=r"data\.xlsx: unsupported file type '\.xlsx'; supported: \.csv, \.parquet"):
        read_classification(path)


def test_missing_column_lists_existing(tmp_path):
    path = write_csv(tmp_path, long_frame().drop(columns="label"))
    with pytest.raises(DataError, match=r"data\.csv: missing column 'label'; the file has columns "
                                        r"\['sample_id', 'step', 'x', 'y'\]; name the sample, time and label columns with "
                                        r"--id-col, --time-col and --label-col"):
        read_classification(path)


def test_non_numeric_feature(tmp_path):
    df = long_frame().assign(x=["1", "2", "oops", "4", "5"])
    with pytest.raises(DataError, match=r"data\.csv: column 'x' is not numeric \(row 3 has 'oops', 1 such cell in all\); "
                                        r"every column other than the id, time, label and target columns is used as a"):
        read_classification(write_csv(tmp_path, df))


def test_no_feature_columns(tmp_path):
    path = write_csv(tmp_path, long_frame()[["sample_id", "step", "label"]])
    with pytest.raises(DataError, match=r"data\.csv: no feature columns"):
        read_classification(path)


@pytest.mark.parametrize("bad, kind", [(np.nan, "missing"), (np.inf, "infinite")])
def test_nan_or_inf_feature_names_sample_and_step(tmp_path, bad, kind):
    df = long_frame()
    df.loc[4, "y"] = bad  # sample 'b', step 1
    with pytest.raises(DataError, match=rf"data\.csv: column 'y' is {kind}.* at sample 'b' step 1 \(row 5\)"):
        read_classification(write_csv(tmp_path, df))


def test_label_changes_within_sample(tmp_path):
    df = long_frame()
    df.loc[0, "label"] = "run"
    with pytest.raises(DataError, match=r"data\.csv: column 'label': the label changes within sample 'b'"):
        read_classification(write_csv(tmp_path, df))


def test_single_class(tmp_path):
    df = long_frame().assign(label="walk")
    with pytest.raises(DataError, match=r"data\.csv: only one class \('walk'\).*at least 2"):
        read_classification(write_csv(tmp_path, df))


def test_duplicate_step(tmp_path):
    df = long_frame()
    df.loc[4, "step"] = 2  # sample 'b' now has step 2 twice
    with pytest.raises(DataError, match=r"data\.csv: column 'step': duplicate step at sample 'b' step 2"):
        read_classification(write_csv(tmp_path, df))


def test_missing_id(tmp_path):
    df = long_frame()
    df.loc[1, "sample_id"] = None
    with pytest.raises(DataError, match=r"data\.csv: column 'sample_id' is empty in row 2"):
        read_classification(write_csv(tmp_path, df))


def test_empty_files(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match=r"empty\.csv: file is empty"):
        read_classification(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("sample_id,step,label,x\n")
    with pytest.raises(DataError, match=r"header\.csv: file is empty \(no data rows\)"):
        read_classification(tmp_path / "header.csv")


# ----------------------------------------------------------------------------- NPZ


def test_npz_nan_padding(tmp_path):
    X = np.full((3, 4, 2), np.nan)
    X[0, :4], X[1, :2], X[2, :1] = 1.0, 2.0, 3.0
    np.savez(tmp_path / "d.npz", X=X, y=np.array([0, 1, 1]), feature_names=np.array(["a", "b"]))
    ds = read_classification(tmp_path / "d.npz")
    assert [len(s) for s in ds.sequences] == [4, 2, 1]
    assert ds.feature_names == ["a", "b"] and ds.label_names == ["0", "1"]
    assert all(np.isfinite(s).all() and s.dtype == np.float32 for s in ds.sequences)


def test_npz_lengths_and_2d_x(tmp_path):
    X = np.arange(12, dtype=np.float64).reshape(3, 4)  # (N, T): one feature
    np.savez(tmp_path / "d.npz", X=X, y=np.array(["cat", "dog", "cat"]), lengths=np.array([4, 3, 1]))
    ds = read_classification(tmp_path / "d.npz")
    assert [s.shape for s in ds.sequences] == [(4, 1), (3, 1), (1, 1)]
    assert ds.feature_names == ["f0"] and ds.labels.tolist() == [0, 1, 0]


def test_npz_nan_inside_sequence(tmp_path):
    X = np.ones((2, 5, 1))
    X[1, 2, 0] = np.nan
    np.savez(tmp_path / "d.npz", X=X, y=np.array([0, 1]))
    with pytest.raises(DataError, match=r"d\.npz: feature 'f0' is missing \(NaN\) at sample index 1 step 2 "
                                        r"\(only padding"):
        read_classification(tmp_path / "d.npz")


def test_npz_missing_arrays(tmp_path):
    np.savez(tmp_path / "d.npz", X=np.ones((2, 3)))
    with pytest.raises(DataError, match=r"d\.npz: missing array\(s\) \['y'\].*found \['X'\]"):
        read_classification(tmp_path / "d.npz")


def test_npz_length_mismatch(tmp_path):
    np.savez(tmp_path / "d.npz", X=np.ones((3, 4)), y=np.array([0, 1]))
    with pytest.raises(DataError, match=r"d\.npz: X has 3 samples but y has shape \(2,\)"):
        read_classification(tmp_path / "d.npz")


@pytest.mark.parametrize("bad", [0, 5])
def test_npz_lengths_out_of_range(tmp_path, bad):
    np.savez(tmp_path / "d.npz", X=np.ones((2, 4)), y=np.array([0, 1]), lengths=np.array([4, bad]))
    with pytest.raises(DataError, match=rf"d\.npz: lengths\[1\] = {bad} is out of range.*between 1 and T = 4"):
        read_classification(tmp_path / "d.npz")


def test_npz_object_labels_refused(tmp_path):
    np.savez(tmp_path / "d.npz", X=np.ones((2, 4)), y=np.array(["a", None], dtype=object))
    with pytest.raises(DataError, match=r"d\.npz: could not load arrays"):
        read_classification(tmp_path / "d.npz")


# ----------------------------------------------------------------------------- compatibility


def test_check_compatible(tmp_path):
    train = read_classification(write_csv(tmp_path, long_frame(), "train.csv"))
    check_compatible(train, train)
    test = read_classification(write_csv(tmp_path, long_frame().drop(columns="y"), "test.csv"))
    with pytest.raises(DataError, match=r"train has 2 features, test has 1.*train\.csv.*test\.csv"):
        check_compatible(train, test)
    renamed = read_classification(write_csv(tmp_path, long_frame().rename(columns={"y": "z"}), "t2.csv"))
    with pytest.raises(DataError, match=r"different names.*\['x', 'y'\].*\['x', 'z'\]"):
        check_compatible(train, renamed)
    # The same columns in another order are lined up by name.
    swapped = read_classification(write_csv(tmp_path, long_frame()[["sample_id", "step", "label", "y", "x"]], "t3.csv"))
    aligned = check_compatible(train, swapped)
    assert aligned.feature_names == ["x", "y"]
    for a, b in zip(aligned.sequences, train.sequences):
        np.testing.assert_array_equal(a, b)


def test_labels_are_read_as_written(tmp_path):
    df = long_frame().assign(label=["010", "001", "010", "001", "010"])
    assert read_classification(write_csv(tmp_path, df)).label_names == ["001", "010"]
    df = long_frame().assign(label=["NA", "None", "NA", "None", "NA"])  # names, not missing values
    assert read_classification(write_csv(tmp_path, df)).label_names == ["NA", "None"]
    df = long_frame().assign(label=[10, 2, 10, 2, 10])  # numbers still sort as numbers
    assert read_classification(write_csv(tmp_path, df)).label_names == ["2", "10"]
    (tmp_path / "empty_label.csv").write_text("sample_id,step,label,x\na,0,run,1.0\nb,0,,2.0\n")
    with pytest.raises(DataError, match=r"column 'label' is empty in row 2"):
        read_classification(tmp_path / "empty_label.csv")


def test_a_file_not_in_utf8_says_so(tmp_path):
    (tmp_path / "data.csv").write_bytes("sample_id,step,label,x\na,0,caf\xe9,1.0\n".encode("cp1252"))
    with pytest.raises(DataError, match=r"could not read the file .*; save it as UTF-8"):
        read_classification(tmp_path / "data.csv")


# ----------------------------------------------------------------------------- series files


def series_frame():
    """Two monthly series ('b' first in the file, rows out of order) with one covariate."""
    months = pd.date_range("2020-01-01", periods=4, freq="MS").strftime("%Y-%m-%d").tolist()
    return pd.DataFrame({
        "series_id": ["b"] * 4 + ["a"] * 4,
        "timestamp": months[::-1] + months,
        "value": [4.0, 3.0, 2.0, 1.0, 10.0, 20.0, 30.0, 40.0],
        "price": [0.4, 0.3, 0.2, 0.1, 1.0, 2.0, 3.0, 4.0],
    })


def test_read_series(tmp_path):
    col = read_series(write_csv(tmp_path, series_frame(), "sales.csv"))
    assert isinstance(col, SeriesCollection)
    assert col.series_ids == ["b", "a"]
    assert col.target_names == ["value"] and col.covariate_names == ["price"]
    np.testing.assert_array_equal(col.series[0], np.array([[1, 0.1], [2, 0.2], [3, 0.3], [4, 0.4]], np.float32))
    assert col.series[1].dtype == np.float32
    assert col.season == 12
    assert col.source.endswith("sales.csv")


def test_read_series_parquet_with_datetimes_and_targets_first(tmp_path):
    df = series_frame().assign(timestamp=lambda d: pd.to_datetime(d["timestamp"]))
    df = df[["price", "series_id", "timestamp", "value"]]  # targets come first whatever the file order
    df.to_parquet(tmp_path / "s.parquet")
    col = read_series(tmp_path / "s.parquet", targets=["value"])
    assert col.target_names == ["value"] and col.covariate_names == ["price"]
    np.testing.assert_array_equal(col.series[1][:, 0], [10, 20, 30, 40])


def test_read_series_without_ids_is_one_series(tmp_path):
    df = series_frame()[lambda d: d.series_id == "a"].drop(columns="series_id")
    col = read_series(write_csv(tmp_path, df, "shop.csv"))
    assert col.series_ids == ["shop"] and col.series[0].shape == (4, 2)


def test_read_series_single_column(tmp_path):
    (tmp_path / "y.csv").write_text("sales\n3\n1\n2\n")
    col = read_series(tmp_path / "y.csv")
    assert col.target_names == ["sales"] and col.covariate_names == []
    np.testing.assert_array_equal(col.series[0][:, 0], [3, 1, 2])  # file order
    assert col.season is None


def test_read_series_several_targets(tmp_path):
    df = series_frame().rename(columns={"value": "units"})
    col = read_series(write_csv(tmp_path, df), targets=["price", "units"])
    assert col.target_names == ["price", "units"] and col.covariate_names == []


def _season_of(tmp_path, stamps) -> int | None:
    df = pd.DataFrame({"timestamp": pd.DatetimeIndex(stamps).astype(str), "value": np.arange(len(stamps), dtype=float)})
    return read_series(write_csv(tmp_path, df)).season


@pytest.mark.parametrize("freq, season", [("30min", 48), ("h", 24), ("D", 7), ("W-SUN", 52), ("MS", 12),
                                          ("ME", 12), ("QS", 4), ("YS", None), ("17min", None)])
def test_season_inferred_from_timestamps(tmp_path, freq, season):
    assert _season_of(tmp_path, pd.date_range("2021-01-01", periods=10, freq=freq)) == season


def test_a_season_of_steps_within_a_day_counts_the_steps_in_a_day(tmp_path):
    """Data kept in business hours has the season of its days: 5-minute steps from 7:00 to 21:00 make 169 a day
    (a full day of them 288); days' first and last may be partial, and a series of a few hours has the step's."""
    steps = pd.date_range("2024-01-01 07:00", "2024-02-29 21:00", freq="5min")
    business = steps[(steps.hour >= 7) & ((steps.hour < 21) | (steps.minute == 0) & (steps.hour == 21)) & (steps.dayofweek < 5)]
    assert _season_of(tmp_path, business) == 169
    assert _season_of(tmp_path, pd.date_range("2024-01-01 13:05", periods=288 * 9, freq="5min")) == 288
    assert _season_of(tmp_path, pd.date_range("2024-01-01 09:00", periods=30, freq="h")) == 24  # no whole day: the step's
    hours = pd.date_range("2024-01-01", periods=24 * 60, freq="h", tz="Europe/Berlin")  # across a change to summer time
    assert _season_of(tmp_path, hours) == 24


def test_a_season_of_daily_steps_counts_the_days_in_a_week(tmp_path):
    days = pd.date_range("2024-01-03", periods=200, freq="D")
    assert _season_of(tmp_path, days) == 7
    assert _season_of(tmp_path, days[days.dayofweek < 5]) == 5  # business days
    holidays = days[(days.dayofweek < 5) & ~days.isin(days[::20])]  # a few weeks of 4 among weeks of 5
    assert _season_of(tmp_path, holidays) == 5


def test_irregular_timestamps_have_no_season(tmp_path):
    seconds = np.sort(np.random.default_rng(0).choice(30 * 86_400, size=2_000, replace=False))
    assert _season_of(tmp_path, pd.Timestamp("2024-01-01") + pd.to_timedelta(seconds, unit="s")) is None


def test_numeric_timestamps_have_no_season(tmp_path):
    df = pd.DataFrame({"timestamp": [3, 1, 2], "value": [30.0, 10.0, 20.0]})
    col = read_series(write_csv(tmp_path, df))
    assert col.season is None
    np.testing.assert_array_equal(col.series[0][:, 0], [10, 20, 30])


def test_series_duplicate_timestamp(tmp_path):
    df = series_frame()
    df.loc[5, "timestamp"] = df.loc[4, "timestamp"]
    with pytest.raises(DataError, match=r"data\.csv: column 'timestamp': duplicate timestamp at series 'a' "
                                        r"timestamp '2020-01-01'.*repeated in row 6"):
        read_series(write_csv(tmp_path, df))


def test_series_missing_value_column(tmp_path):
    df = series_frame().rename(columns={"value": "sales"})
    with pytest.raises(DataError, match=r"data\.csv: missing column 'value'; the file has columns "
                                        r"\['series_id', 'timestamp', 'sales', 'price'\]; name the time column with --time-col "
                                        r"and each value column with --target \(in Python: time_col=\.\.\., targets=\[\.\.\.\]\)"):
        read_series(write_csv(tmp_path, df))


def test_series_missing_time_column(tmp_path):
    df = series_frame().drop(columns="timestamp")
    with pytest.raises(DataError, match=r"data\.csv: missing column 'timestamp'"):
        read_series(write_csv(tmp_path, df))


def test_series_nan_value(tmp_path):
    df = series_frame()
    df.loc[6, "value"] = np.nan
    with pytest.raises(DataError, match=r"data\.csv: column 'value' is missing \(NaN\) at series 'a' "
                                        r"timestamp '2020-03-01' \(row 7\)"):
        read_series(write_csv(tmp_path, df))


def test_series_non_numeric_covariate(tmp_path):
    df = series_frame().assign(city="Rome")
    with pytest.raises(DataError, match=r"data\.csv: column 'city' is not numeric"):
        read_series(write_csv(tmp_path, df))


def test_series_bad_timestamps(tmp_path):
    df = series_frame().assign(timestamp="soon")
    with pytest.raises(DataError, match=r"data\.csv: column 'timestamp' must hold numbers or dates"):
        read_series(write_csv(tmp_path, df))


def test_series_unsupported_and_missing(tmp_path):
    with pytest.raises(DataError, match=r"x\.npz: unsupported file type '\.npz'; supported: \.csv, \.parquet, \.pq"):
        (tmp_path / "x.npz").write_bytes(b"")
        read_series(tmp_path / "x.npz")
    with pytest.raises(DataError, match=r"nope\.csv: file not found"):
        read_series(tmp_path / "nope.csv")


def _monthly_text(rows, header="timestamp,value"):
    return header + "\n" + "".join(f"{row}\n" for row in rows)


@pytest.mark.parametrize("text, says", [
    # Every row one field longer than the header (a decimal comma): pandas would index by the first field and
    # shift the values left, training on the decimals.
    (_monthly_text(f"2020-{m:02d}-01,100,{m}5" for m in range(1, 13)), r"more fields than the header.*decimal comma"),
    (_monthly_text(f"2020-{m:02d}-01,100,{m}5," for m in range(1, 13)), r"more fields than the header"),  # and a trailing ','
    (_monthly_text((f"{2000 + y},100,{y}5" for y in range(12)), "year,value"), r"more fields than the header"),
    (_monthly_text((f"2020-{m:02d}-01;100.5" for m in range(1, 13)), "timestamp;value"), r"separate fields with ';'"),
    (_monthly_text((f"2020-{m:02d}-01\t100.5" for m in range(1, 13)), "timestamp\tvalue"), "separate fields with a tab"),
    ("100.25\n101.5\n99.0\n", r"the first row, \['100\.25'\], holds numbers where a header should name"),
])
def test_csv_layouts_pandas_would_misread_are_refused(tmp_path, text, says):
    (tmp_path / "data.csv").write_text(text)
    with pytest.raises(DataError, match=r"data\.csv: .*" + says):
        read_series(tmp_path / "data.csv")


def test_a_separator_ending_every_row_is_dropped(tmp_path):
    for header in ("timestamp,value", "timestamp,value,"):
        (tmp_path / "data.csv").write_text(_monthly_text((f"2020-{m:02d}-01,{100 + m}.5," for m in range(1, 13)), header))
        col = read_series(tmp_path / "data.csv")
        np.testing.assert_array_equal(col.series[0][:, 0], np.arange(101, 113) + 0.5)
        assert col.season == 12 and col.notes == [] and col.covariate_names == []


def test_offsets_that_change_with_summer_time_are_one_clock(tmp_path):
    months = pd.date_range("2020-01-01", periods=24, freq="MS", tz="Europe/Berlin")
    df = pd.DataFrame({"timestamp": months.strftime("%Y-%m-%d %H:%M:%S%z"), "value": np.arange(24.0)})
    col = read_series(write_csv(tmp_path, df))
    assert col.season == 12 and col.notes == []


def test_a_named_id_column_must_exist_and_a_target_be_named_once(tmp_path):
    path = write_csv(tmp_path, series_frame())
    with pytest.raises(DataError, match=r"missing id column 'store' \(--id-col\); the file has columns"):
        read_series(path, id_col="store")
    with pytest.raises(DataError, match=r"target 'value' is named twice"):
        read_series(path, targets=["value", "value"])
    with pytest.raises(DataError, match=r"target 'timestamp' is the --time-col column"):
        read_series(path, targets=["timestamp"])


def test_gaps_and_irregular_steps_are_noted(tmp_path):
    months = pd.date_range("2010-01-01", periods=60, freq="MS")
    gappy = months.delete(range(20, 30))  # ten months missing
    df = pd.DataFrame({"timestamp": gappy.strftime("%Y-%m-%d"), "value": np.arange(50.0)})
    (note,) = read_series(write_csv(tmp_path, df)).notes
    assert note.startswith("the timestamp skips steps 1 time in 1 series: series 'data' goes from 2011-08-01 to 2012-07-01")
    days = pd.Timestamp("2010-01-01") + pd.to_timedelta(np.cumsum(np.random.default_rng(0).integers(1, 60, 80)), unit="D")
    df = pd.DataFrame({"timestamp": days.strftime("%Y-%m-%d"), "value": np.arange(80.0)})
    (note,) = read_series(write_csv(tmp_path, df)).notes
    assert "steps have no regular length" in note
    # Regular months, business month-ends (27 to 33 days), business days (weekends skipped by design), weeks
    # across summer time, and numbers (yyyymm jumps by 89 each January) pass.
    weeks = pd.date_range("2020-01-06", periods=60, freq="7D", tz="Europe/Berlin").strftime("%Y-%m-%d %H:%M:%S%z")
    yyyymm = [100 * y + m for y in range(2000, 2005) for m in range(1, 13)]
    for times in (months.strftime("%Y-%m-%d"), pd.date_range("2010-01-01", periods=60, freq="BME").strftime("%Y-%m-%d"),
                  pd.bdate_range("2024-01-01", periods=60).strftime("%Y-%m-%d"), weeks, yyyymm):
        assert read_series(write_csv(tmp_path, pd.DataFrame({"timestamp": times, "value": np.arange(60.0)}))).notes == []


def test_dates_that_read_either_way_are_noted(tmp_path):
    # Monthly, day first: read month first they are the first 12 days of each January.
    df = pd.DataFrame({"timestamp": [f"01/{m:02d}/{y}" for y in (2010, 2011, 2012) for m in range(1, 13)], "value": np.arange(36.0)})
    (note,) = read_series(write_csv(tmp_path, df)).notes
    assert "every timestamp reads either way, such as '01/01/2010', and they were read month first (US)" in note
    df["timestamp"] = [f"{m:02d}/01/{y}" for y in (2010, 2011, 2012) for m in range(1, 13)]  # US monthly: no note
    assert read_series(write_csv(tmp_path, df)).notes == []
    # Days of January, day first: the first reads month first too, so the 13th cannot be read.
    df = pd.DataFrame({"timestamp": [f"{d:02d}/01/2010" for d in range(1, 21)], "value": np.arange(20.0)})
    with pytest.raises(DataError, match=r"doesn't match format \"%m/%d/%Y\"\)\. Write every date as year-month-day \(2024-01-31\): 01/02/2024"):
        read_series(write_csv(tmp_path, df))


def test_values_float32_cannot_tell_apart_are_noted(tmp_path):
    meter = 1e9 + np.cumsum(np.random.default_rng(0).integers(-30, 31, 120)).astype(np.float64)
    df = pd.DataFrame({"timestamp": pd.date_range("2010-01-01", periods=120, freq="MS").strftime("%Y-%m-%d"), "value": meter})
    (note,) = read_series(write_csv(tmp_path, df)).notes
    assert note.startswith("column 'value': values such as 1") and "(series 'data') change by a typical" in note
    assert "float32, which the model computes in, keeps them only to within" in note
    df["value"] = meter - 1e9  # the same changes near zero: kept exactly
    assert read_series(write_csv(tmp_path, df)).notes == []
    df["value"] = np.where(np.arange(120) % 2, 0.3, 0.1 * 3)  # float64's own noise, not a step: no note
    assert read_series(write_csv(tmp_path, df)).notes == []
    df.loc[5, "value"] = 1e39  # finite in the file, infinite in float32
    with pytest.raises(DataError, match=r"column 'value' is infinite at timestamp '2010-06-01' \(row 6\)"):
        read_series(write_csv(tmp_path, df))


def test_gaps_in_a_series_are_counted_with_how_to_fill_them_and_empty_rows_below_the_table_are_dropped(tmp_path):
    dates = pd.date_range("2010-01-01", periods=36, freq="MS").strftime("%Y-%m-%d")
    rows = [f"{d},{100 + i}\n" for i, d in enumerate(dates)]
    (tmp_path / "sales.csv").write_text("date,sales\n" + "".join(rows) + ",\n,\n")  # a spreadsheet's empty rows
    collection = read_series(tmp_path / "sales.csv", time_col="date", targets=["sales"])
    assert len(collection.series[0]) == 36 and collection.notes == []
    # An empty row inside the table is a missing step, not padding: refused, and named by its row in the file.
    (tmp_path / "sales.csv").write_text("date,sales\n" + "".join(rows[:5]) + ",\n" + "".join(rows[5:]))
    with pytest.raises(DataError, match=r"column 'date' is empty in row 6"):
        read_series(tmp_path / "sales.csv", time_col="date", targets=["sales"])
    (tmp_path / "values.csv").write_text("value\n1.5\nNA\n2.0\n3.0\n")  # one column: a missing value stays one
    with pytest.raises(DataError, match=r"column 'value' is missing \(NaN\) at row 2; the model reads"):
        read_series(tmp_path / "values.csv")
    df = pd.DataFrame({"date": dates, "sales": np.arange(36.0)})
    df.loc[[4, 9, 20], "sales"] = np.nan
    with pytest.raises(DataError, match=r"column 'sales' is missing \(NaN\) at date '2010-05-01' \(row 5\) \(3 cells are "
                                        r"missing or infinite in all\); the model reads a value at every step: fill the "
                                        r"gaps before training \(interpolate them, or carry the last value forward\), or "
                                        r"drop such rows only at a series' start or end"):
        read_series(write_csv(tmp_path, df), time_col="date", targets=["sales"])


def test_a_column_written_with_thousands_separators_is_named_by_what_it_is_for(tmp_path):
    df = pd.DataFrame({"date": pd.date_range("2010-01-01", periods=30, freq="MS").strftime("%Y-%m-%d"),
                       "sales": [f"{10 + i},{104 + i}" for i in range(30)], "price": np.arange(30.0)})
    with pytest.raises(DataError, match=r"column 'sales' is not numeric \(row 1 has '10,104', 30 such cells in all\); "
                                        r"it holds the values to forecast, so convert it to numbers \(if '10,104' is "
                                        r"10104 with a thousands separator, write 10104\)"):
        read_series(write_csv(tmp_path, df), time_col="date", targets=["sales"])
    df = df.assign(sales=np.arange(30.0), price=["0,500"] * 29 + ["1,250"])  # a decimal comma, not thousands
    with pytest.raises(DataError, match=r"column 'price' is not numeric \(row 1 has '0,500', 30 such cells in all\); "
                                        r"every column other than the id, time, label and target columns is used as a "
                                        r"numeric feature: remove it or convert it to numbers$"):
        read_series(write_csv(tmp_path, df), time_col="date", targets=["sales"])


# ----------------------------------------------------------------------------- built-ins


@pytest.mark.parametrize("name", list(CLASSIFICATION_DATASETS))
def test_builtin_classification_is_valid(name):
    train, test = load_classification(name)
    assert CLASSIFICATION_DATASETS[name]
    assert train.source == f"builtin:{name}/train" and test.source == f"builtin:{name}/test"
    assert train.label_names == test.label_names and len(train.label_names) >= 2
    assert set(train.labels.tolist()) == set(range(train.n_classes))
    check_compatible(train, test)
    for ds in (train, test):
        assert ds.labels.dtype == np.int64 and len(ds.labels) == len(ds.sequences)
        for s in ds.sequences:
            assert s.dtype == np.float32 and s.ndim == 2 and s.shape[1] == ds.n_features
            assert len(s) >= 1 and np.isfinite(s).all()


@pytest.mark.parametrize("name, n_train, n_test, n_features, lengths", [
    ("synthetic", 300, 150, 2, (20, 60)),
    ("gunpoint", 50, 150, 1, (150, 150)),
    ("italypower", 67, 1029, 1, (24, 24)),
    ("japanesevowels", 270, 370, 12, (7, 29)),
    ("basicmotions", 40, 40, 6, (100, 100)),
    ("arrowhead", 36, 175, 1, (251, 251)),
    ("osuleaf", 200, 242, 1, (427, 427)),
    ("acsf1", 100, 100, 1, (1460, 1460)),
])
def test_builtin_classification_shapes(name, n_train, n_test, n_features, lengths):
    train, test = load_classification(name)
    assert (len(train), len(test), train.n_features) == (n_train, n_test, n_features)
    all_lengths = [len(s) for s in train.sequences + test.sequences]
    assert (min(all_lengths), max(all_lengths)) == lengths


def test_builtin_label_names():
    assert load_classification("gunpoint")[0].label_names == ["1", "2"]
    assert load_classification("japanesevowels")[0].label_names == [str(i) for i in range(1, 10)]
    assert load_classification("basicmotions")[0].label_names == ["Badminton", "Running", "Standing", "Walking"]


@pytest.mark.parametrize("name, n_series, length, season", [
    ("synthetic", 3, 600, 24), ("co2", 1, 2284, 52), ("airline", 1, 144, 12), ("sunspots", 1, 309, None),
    ("nile", 1, 100, None), ("elnino", 1, 732, 12), ("macrodata", 8, 203, 4), ("auscafe", 1, 426, 12),
    ("arrivals", 4, 127, 4), ("elecdemand", 1, 4032, 48)])
def test_builtin_series(name, n_series, length, season):
    col = load_series(name)
    assert FORECAST_DATASETS[name] and col.source == f"builtin:{name}"
    assert len(col.series) == len(col.series_ids) == n_series
    assert col.season == season and col.n_targets == 1
    for s in col.series:
        assert s.shape == (length, 1) and s.dtype == np.float32 and np.isfinite(s).all()


def test_builtin_values():
    assert load_series("airline").series[0][:3, 0].tolist() == [112, 118, 132]
    co2 = load_series("co2").series[0][:, 0]
    assert 310 < co2.min() < co2.max() < 380  # ppm, gaps interpolated
    scales = [np.abs(s).mean() for s in load_series("synthetic").series]
    assert scales[2] / scales[0] > 500
    assert load_series("elnino").series[0][:2, 0].tolist() == pytest.approx([23.11, 24.2])  # Jan, Feb 1950
    assert load_series("macrodata").series[0][0, 0] == pytest.approx(2710.349)  # real GDP, 1959 Q1


def test_unknown_builtin_lists_names():
    with pytest.raises(DataError, match=r"unknown classification dataset 'mnist'; built-in: synthetic, gunpoint"):
        load_classification("mnist")
    with pytest.raises(DataError, match=r"unknown forecasting dataset 'm4'; built-in: synthetic, co2, airline"):
        load_series("m4")


def test_builtins_do_not_import_slow_modules():
    code = ("import sys; from training.datasets import load_classification, load_series; "
            "load_classification('gunpoint'); load_series('co2'); load_series('macrodata'); "
            "print([m for m in ('aeon.datasets', 'numba', 'statsmodels.datasets', 'statsmodels.tsa') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- windows


def ramp_collection(lengths=(30, 45)):
    """Series whose target is the step index and covariate is -index: easy to check windows."""
    series = [np.stack([np.arange(n), -np.arange(n)], axis=1).astype(np.float32) for n in lengths]
    return SeriesCollection(series, [f"s{i}" for i in range(len(lengths))], ["y"], ["x"], None, "test")


def test_make_windows_shapes_and_content():
    col = ramp_collection()
    w = make_windows(col, lookback=5, horizon=3)
    n = (30 - 5 - 3 + 1) + (45 - 5 - 3 + 1)
    assert w.inputs.shape == (n, 5, 2) and w.targets.shape == (n, 3, 1) and len(w) == n
    assert w.inputs.dtype == w.targets.dtype == np.float32
    for k in (0, n - 1, 30):
        start = w.start[k]
        np.testing.assert_array_equal(w.inputs[k, :, 0], np.arange(start - 5, start))
        np.testing.assert_array_equal(w.inputs[k, :, 1], -np.arange(start - 5, start))
        np.testing.assert_array_equal(w.targets[k, :, 0], np.arange(start, start + 3))
    assert w.series_index.tolist() == [0] * 23 + [1] * 38


def test_make_windows_stride_and_short_series():
    w = make_windows(ramp_collection((30, 4)), lookback=5, horizon=3, stride=10)
    assert w.start.tolist() == [5, 15, 25] and set(w.series_index.tolist()) == {0}
    empty = make_windows(ramp_collection((4,)), lookback=5, horizon=3)
    assert empty.inputs.shape == (0, 5, 2) and empty.targets.shape == (0, 3, 1)
    with pytest.raises(ValueError, match="horizon must be a positive integer"):
        make_windows(ramp_collection(), lookback=5, horizon=0)


@pytest.mark.parametrize("col", [ramp_collection((100, 57, 200)), load_series("co2"), load_series("synthetic")],
                         ids=["ramps", "co2", "synthetic"])
def test_split_by_time_has_no_leakage(col):
    lookback, horizon = 12, 6
    train, val, test = split_by_time(col, lookback=lookback, horizon=horizon)
    for i, s in enumerate(col.series):
        val_start, test_start = split_points(len(s), horizon=horizon)
        tr_end = train.start[train.series_index == i] + horizon - 1  # last target step of each window
        va = val.start[val.series_index == i]
        te = test.start[test.series_index == i]
        assert tr_end.size and va.size and te.size
        assert tr_end.max() < va.min() and va.max() + horizon - 1 < te.min() == test_start
        assert tr_end.max() < val_start
        assert te.max() + horizon == len(s)  # the test part reaches the end of the series
        assert len(s) - test_start == max(horizon, round(0.2 * len(s)))
    for w in (train, val, test):
        assert w.inputs.shape[1:] == (lookback, len(col.column_names))
        assert w.targets.shape[1:] == (horizon, col.n_targets)


def test_split_by_time_too_short_names_series():
    col = ramp_collection((200, 30))
    with pytest.raises(DataError, match=r"series 's1' has 30 steps but needs at least 67: lookback 24 "
                                        r"\+ horizon 12 for one training window, plus 19 validation and 12 test"):
        split_by_time(col, lookback=24, horizon=12)


def test_train_series_is_the_training_part():
    col = ramp_collection((100, 57))
    parts = train_series(col, horizon=6)
    train, _, _ = split_by_time(col, lookback=12, horizon=6)
    for i, part in enumerate(parts):
        np.testing.assert_array_equal(part, col.series[i][: len(part)])
        last_target = (train.start[train.series_index == i] + 6).max()
        assert last_target == len(part)  # training targets use exactly the training part


def test_split_without_validation():
    train, val, test = split_by_time(ramp_collection((100,)), lookback=10, horizon=5, val_fraction=0)
    assert len(val) == 0 and len(train) and len(test)
    assert (train.start + 5 - 1).max() < test.start.min()


# ----------------------------------------------------------------------------- fingerprint


def tiny_dataset():
    seqs = [np.array([[1.0, 2.0]], np.float32), np.array([[3.0, 4.0], [5.0, 6.0]], np.float32)]
    return SequenceDataset(seqs, np.array([0, 1]), ["a", "b"], ["x", "y"], "file:one.csv")


def test_fingerprint_is_stable():
    ds = tiny_dataset()
    # a constant: the fingerprint must not change between runs, machines or versions
    assert fingerprint(ds) == "2e88ea040fbc67c222793fd720225246080db9f5a3dfc175a693a4f715705f16"


def test_fingerprint_tracks_content_not_source():
    ds = tiny_dataset()
    base = fingerprint(ds)
    assert len(base) == 64
    ds.source = "file:elsewhere.parquet"
    assert fingerprint(ds) == base
    ds.label_names = ["a", "c"]
    assert fingerprint(ds) != base
    ds = tiny_dataset()
    ds.sequences[1][1, 0] = 5.5
    assert fingerprint(ds) != base
    assert fingerprint(load_series("synthetic")) == fingerprint(load_series("synthetic"))
    assert fingerprint(load_classification("synthetic")[0]) == fingerprint(load_classification("synthetic")[0])
    with pytest.raises(TypeError):
        fingerprint([1, 2])


# ----------------------------------------------------------------------------- values far from their neighbours


def collection_of(*columns: np.ndarray, targets: tuple[str, ...] = ("value",)) -> SeriesCollection:
    return SeriesCollection(series=[c.reshape(len(c), -1).astype(np.float32) for c in columns],
                            series_ids=[f"s{i}" for i in range(len(columns))], target_names=list(targets),
                            covariate_names=[], season=None, source="test")


def test_far_values_name_a_glitch_and_pass_ordinary_series():
    t = np.arange(200, dtype=np.float64)
    noise = np.random.default_rng(0).normal(size=200)
    ordinary = {
        "growing, with a growing season": 100 * np.exp(0.01 * t) * (1 + 0.3 * np.sin(2 * np.pi * t / 12)),
        "mostly zeros": np.where(t % 37 == 0, 25.0, 0.0),
        "flat": np.full(50, 3.0),
        "s-shaped cumulative count": 1000 / (1 + np.exp(-(t - 100) / 10)) + noise,
        "level shift": np.where(t < 100, 100.0, 300.0) + noise,
        "5% growth a step": 100 * 1.05**t * (1 + 0.01 * noise),
        "sharp seasonal peaks": 1000 * np.sin(np.pi * t / 12) ** 8 + noise,
        "a yearly peak three times the rest": 100 * np.where(t % 12 == 11, 3.0, 1.0) * (1 + 0.02 * noise),
        "one holiday five times the level": np.where(t == 150, 500.0, 100.0) + 3 * noise,
        "one big order among ones and zeros": np.where(t == 77, 120.0, (t % 7 == 0).astype(float)),
        "three points": np.array([1.0, 2.0, 1000.0]),
    }
    for shape, values in ordinary.items():
        assert far_values(collection_of(values)) == [], shape
    glitched = ordinary["growing, with a growing season"].copy()
    glitched[[0, 50, 51, 120]] = [1e6, 1e9, 1e9, -1e7]  # at the first step, a run of two, and negative
    found = far_values(collection_of(ordinary["level shift"], glitched))
    assert len(found) == 4 and all(text.startswith("series 's1', step ") for text in found)
    assert found[0].startswith("series 's1', step 51 of 200: 1e+09, where its neighbours' median is ")
    assert {text.split(":")[0] for text in found[2:]} == {"series 's1', step 121 of 200", "series 's1', step 1 of 200"}


def test_far_values_are_capped_and_name_the_column_of_several_targets():
    values = np.ones((40, 2))
    values[:, 0] += np.arange(40) % 3
    values[::5, 1] = (np.arange(8) + 1) * 1e6  # eight wild values in the second target
    values[:, 1] += np.arange(40) % 2
    found = far_values(collection_of(values, targets=("a", "b")), limit=3)
    assert len(found) == 4 and found[-1] == "and 5 more"
    assert all("series 's0', column 'b', step" in text for text in found[:3])


def test_far_values_show_the_farthest_of_a_panel_and_count_the_rest():
    # Each series holds more far values than are shown: the farthest of all come first, every other one is counted.
    series = []
    for s in range(4):
        values = np.ones(60) + np.arange(60) % 2
        values[::6] = (np.arange(10) * 4 + s + 1) * 1e4  # ten wild values a series, interleaved between the series
        series.append(values)
    found = far_values(collection_of(*series), limit=3)
    assert [text.split(":")[0] for text in found[:3]] == ["series 's3', step 55 of 60", "series 's2', step 55 of 60",
                                                          "series 's1', step 55 of 60"]
    assert found[3] == "and 37 more"
