"""ETT loading, CSV errors, the standard split, leak-free windows and scaling, on tiny synthetic CSVs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from innerloop.data.timeseries import (
    ETT_HOURLY_BORDERS,
    ETT_SHA256,
    StandardScaler,
    ett,
    ett_path,
    load_csv,
    make_forecast_data,
    split_borders,
)

COLUMNS = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]


def write_csv(path: Path, values: np.ndarray, columns=COLUMNS, date="date") -> Path:
    lines = [",".join([date, *columns])]
    lines += [f"2016-07-01 {i:05d}," + ",".join(f"{v:.6f}" for v in row) for i, row in enumerate(values)]
    path.write_text("\n".join(lines) + "\n")
    return path


def row_index_series(n: int, c: int = 7) -> np.ndarray:
    """Row ``t`` holds ``t + 0.1 * channel``: a value names its row."""
    return np.arange(n, dtype=np.float64)[:, None] + 0.1 * np.arange(c)[None, :]


@pytest.fixture(scope="module")
def fake_ett(tmp_path_factory) -> Path:
    """A 14,400-row file with the ETT columns, named ETTh1.csv (its checksum is not the published one)."""
    root = tmp_path_factory.mktemp("ett")
    write_csv(root / "ETTh1.csv", row_index_series(14400))
    return root


def test_standard_split_borders_exactly(fake_ett):
    L, H = 336, 96
    d = ett("ETTh1", fake_ett, L, H, verify=False)
    assert d.borders == {"train": (0, 8640), "val": (8640 - L, 11520), "test": (11520 - L, 14400)}
    assert d.sizes() == {"train": 8640 - L - H + 1, "val": 2880 - H + 1, "test": 2880 - H + 1}
    raw = lambda split, i: d.scaler.inverse_transform(split[i][1].double().numpy())[:, 0]  # noqa: E731
    # the first validation / test targets start at the border, the last ones end at the split's last row
    assert round(raw(d.val, 0)[0]) == 8640 and round(raw(d.test, 0)[0]) == 11520
    assert round(raw(d.val, -1)[-1]) == 11519 and round(raw(d.test, -1)[-1]) == 14399
    assert round(raw(d.train, -1)[-1]) == 8639


def test_windows_never_look_ahead(fake_ett):
    d = ett("ETTh1", fake_ett, 24, 12, verify=False)
    for split in (d.train, d.val, d.test):
        for i in (0, 1, len(split) // 2, len(split) - 1):
            x, y = (d.scaler.inverse_transform(t.double().numpy())[:, 0] for t in split[i])
            assert np.allclose(np.diff(x), 1, atol=0.01) and np.allclose(np.diff(y), 1, atol=0.01)  # rows in order
            assert round(y[0]) == round(x[-1]) + 1  # targets start right after the inputs end
        xb, yb = split.batch(torch.tensor([0, len(split) - 1]))
        assert xb.shape == (2, 24, 7) and yb.shape == (2, 12, 7)
        assert torch.equal(xb[1], split[len(split) - 1][0]) and torch.equal(yb[0], split[0][1])


def test_scaler_sees_only_the_train_rows(tmp_path):
    values = np.random.default_rng(0).normal(size=(300, 3))
    ends = (200, 250, 300)
    base = make_forecast_data(values, 16, 4, ends)
    changed = values.copy()
    changed[200:] += 1000.0  # every validation and test row
    other = make_forecast_data(changed, 16, 4, ends)
    assert np.array_equal(base.scaler.mean, other.scaler.mean) and np.array_equal(base.scaler.std, other.scaler.std)
    assert np.allclose(base.scaler.mean, values[:200].mean(0)) and np.allclose(base.scaler.std, values[:200].std(0))
    changed[199] += 1000.0  # the last train row: now the scaler must move
    assert not np.array_equal(make_forecast_data(changed, 16, 4, ends).scaler.mean, base.scaler.mean)
    # the scaled train rows have mean 0 and std 1
    assert torch.allclose(base.train.series.mean(0), torch.zeros(3), atol=1e-5)


def test_scaler_round_trip_and_constant_column():
    rows = np.array([[1.0, 5.0], [3.0, 5.0]])
    s = StandardScaler.fit(rows)
    assert np.allclose(s.transform(rows), [[-1, 0], [1, 0]])
    assert np.allclose(s.inverse_transform(s.transform(rows)), rows)


def test_default_split_for_other_csvs():
    assert split_borders(1000, 10) == {"train": (0, 700), "val": (690, 800), "test": (790, 1000)}
    assert split_borders(14400, 96, ETT_HOURLY_BORDERS)["test"] == (11424, 14400)
    with pytest.raises(ValueError, match="too short"):
        split_borders(100, 10, ETT_HOURLY_BORDERS)


def test_checksum_mismatch_names_the_file_and_both_hashes(fake_ett):
    with pytest.raises(ValueError, match=rf"ETTh1.csv is not the published ETTh1.csv: its sha256 is [0-9a-f]{{64}}, "
                                         rf"expected {ETT_SHA256['ETTh1']}"):
        ett("ETTh1", fake_ett, 24, 12)


def test_missing_files_say_where_to_get_them(tmp_path, monkeypatch):
    monkeypatch.delenv("INNERLOOP_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="no data folder for ETTh1.*zhouhaoyi/ETDataset.*ETT-small"):
        ett_path("ETTh1")
    with pytest.raises(FileNotFoundError, match=r"ETTh2.csv does not exist.*ETDataset"):
        ett_path("ETTh2", tmp_path)
    with pytest.raises(ValueError, match="unknown ETT series 'ETTm1'"):
        ett_path("ETTm1", tmp_path)


def test_root_from_innerloop_data(fake_ett, tmp_path, monkeypatch):
    (tmp_path / "ett").mkdir()
    (tmp_path / "ett" / "ETTh1.csv").write_bytes((fake_ett / "ETTh1.csv").read_bytes())
    monkeypatch.setenv("INNERLOOP_DATA", str(tmp_path))
    assert ett_path("ETTh1", verify=False) == tmp_path / "ett" / "ETTh1.csv"


@pytest.mark.parametrize(
    ("text", "kw", "match"),
    [
        ("time,a,OT\n1,2,3\n", {}, r"no date column \(date_column=\) 'date'; its columns are time, a, OT"),
        ("date,a,b\n1,2,3\n", {}, r"no target column \(target=\) 'OT'"),
        ("date,a,OT\nx,1,2\ny,oops,3\n", {}, r":3 column 'a' is not a number \('oops'\)"),
        ("date,a,OT\nx,1,2\ny,,3\n", {}, r":3 column 'a' is empty"),
        ("date,a,OT\nx,1,nan\n", {}, r":2 column 'OT' is 'nan': NaN and infinite values are not allowed"),
        ("date,a,OT\nx,1,inf\n", {}, r"'inf': NaN and infinite"),
        ("date,a,OT\nx,1\n", {}, r":2 has 2 fields, the header has 3"),
        ("date,a,OT\nx,1,2\ny,3,4\n", {"min_rows": 5}, r"has 2 data rows, fewer than the 5 needed"),
        ("", {}, "is empty"),
        ("date,a,OT\nx,1,2\n", {"features": "MS"}, "unknown features 'MS'"),
    ],
)
def test_bad_csv_errors_name_the_problem(tmp_path, text, kw, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_csv(path, **kw)


def test_load_csv_columns_and_single_target(tmp_path):
    path = write_csv(tmp_path / "s.csv", row_index_series(5, 3), columns=["a", "b", "OT"], date="ts")
    t = load_csv(path, date_column="ts")
    assert t.columns == ("a", "b", "OT") and t.values.shape == (5, 3) and t.dates[0] == "2016-07-01 00000"
    s = load_csv(path, date_column="ts", features="S")
    assert s.columns == ("OT",) and np.allclose(s.values[:, 0], np.arange(5) + 0.2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_csv(tmp_path / "nope.csv")


def test_too_short_split_is_a_clear_error():
    # validation: rows 62..80, 10 of its own after the look-back of 8; only a shorter horizon helps
    with pytest.raises(ValueError, match="the val split has 10 rows of its own, fewer than the horizon 12: .* a "
                                         "shorter --horizon"):
        make_forecast_data(row_index_series(100, 2), 8, 12)


def _real_ett_root() -> Path | None:
    for root in (os.environ.get("INNERLOOP_ETT"), os.environ.get("INNERLOOP_DATA") and
                 os.path.join(os.environ["INNERLOOP_DATA"], "ett")):  # fmt: skip
        if root and (Path(root) / "ETTh1.csv").is_file():
            return Path(root)
    return None


@pytest.mark.slow
def test_real_etth1(tmp_path):
    """The published file: checksum, split sizes, and the repeat-last baseline (published MSE 1.295, MAE 0.713)."""
    root = _real_ett_root()
    if root is None:
        pytest.skip("ETTh1.csv not found: set $INNERLOOP_ETT (or $INNERLOOP_DATA/ett) to its folder")
    d = ett("ETTh1", root, 336, 96)
    assert d.sizes() == {"train": 8209, "val": 2785, "test": 2785} and len(d.columns) == 7
    from innerloop.forecast import RepeatLast, evaluate_forecaster

    m = evaluate_forecaster(RepeatLast(336, 96), d.test)
    assert abs(m["mse"] - 1.295) < 0.005 and abs(m["mae"] - 0.713) < 0.005


def test_a_byte_order_mark_is_not_part_of_the_header(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfdate,a,OT\n2020-01-01,1,2\n2020-01-02,3,4\n")  # as Excel's "CSV UTF-8" writes it
    t = load_csv(path)
    assert t.columns == ("a", "OT") and t.values.tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_a_file_sorted_newest_first_is_refused(tmp_path):
    path = tmp_path / "rev.csv"
    path.write_text("date,a,OT\n2020-01-03 00:00:00,1,2\n2020-01-02 00:00:00,3,4\n2020-01-01 00:00:00,5,6\n")
    with pytest.raises(ValueError, match=r"go back in time at data row 2 .*sort the file by date"):
        load_csv(path)
    path.write_text("date,a,OT\nday 3,1,2\nday 2,3,4\n")  # not ISO dates: the file's order is taken as given
    assert len(load_csv(path)) == 2
    path.write_text("date,a,OT\n2020-01-01,1,2\n2020-01-01,3,4\n2020-01-02,5,6\n")  # ties are not going back
    assert len(load_csv(path)) == 3


def test_a_path_to_an_ett_file_gets_the_ett_protocol(fake_ett, monkeypatch):
    from innerloop._io import sha256_file
    from innerloop.forecast.trainer import ForecastConfig, load_data

    cfg = ForecastConfig(data=str(fake_ett / "ETTh1.csv"), lookback=24, horizon=12)
    with pytest.raises(ValueError, match="is not the published ETTh1.csv"):  # checksummed like --data ETTh1
        load_data(cfg)
    monkeypatch.setitem(ETT_SHA256, "ETTh1", sha256_file(fake_ett / "ETTh1.csv"))  # pretend it is the published one
    d = load_data(cfg)
    assert d.borders == {"train": (0, 8640), "val": (8640 - 24, 11520), "test": (11520 - 24, 14400)}


@pytest.mark.parametrize(
    ("text", "kw", "match"),
    [
        pytest.param("date,OT,x,OT\n2020-01-01,1,2,3\n", {"features": "S"}, "'OT' more than once", id="dup-target"),
        pytest.param("date,a,a,OT\n2020-01-01,1,2,3\n", {}, "'a' more than once", id="dup-feature"),
        pytest.param("date,a,OT\n2020-01-01,1,2\n", {"target": "date", "features": "S"},
                     "target column .* and the date column .* are both 'date'", id="target-is-date"),
        pytest.param("date,a,OT\n2020-01-05,1,2\nn/a,1,2\n2020-01-01,1,2\n", {},
                     r"data row 2 has the date 'n/a', not ISO 8601", id="one-non-iso-date"),
    ],
)  # fmt: skip
def test_an_ambiguous_or_unchecked_csv_is_refused(tmp_path, text, kw, match):
    """A duplicated target was read from its first copy, a target named like the date column failed on a date as a
    number, and one non-ISO date turned the order check off for the whole file (here: rows going back in time)."""
    with pytest.raises(ValueError, match=match):
        load_csv(write_text(tmp_path / "s.csv", text), **kw)


def test_a_non_utf8_csv_names_the_file(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("date,temp°,OT\n2020-01-01,1,2\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.csv is not UTF-8 text .* save the CSV as UTF-8"):
        load_csv(path)


@pytest.mark.parametrize(
    ("values", "kw", "error", "match"),
    [
        pytest.param(np.arange(100.0), {}, ValueError, r"values must be \[T, C\]", id="1d"),
        pytest.param(np.where(np.arange(200).reshape(100, 2) == 151, np.nan, 1.0), {}, ValueError,
                     r"values\[75, 1\] is nan", id="nan"),
        pytest.param(np.ones((100, 2)), {"lookback": 5.5}, TypeError, "lookback must be a whole number", id="float-L"),
    ],
)  # fmt: skip
def test_make_forecast_data_refuses_bad_arrays(values, kw, error, match):
    """A NaN made every window NaN silently (the scaler's mean is NaN); 1-D values and a float lookback gave deep
    IndexError / TypeError tracebacks."""
    with pytest.raises(error, match=match):
        make_forecast_data(values, **{"lookback": 5, "horizon": 2, **kw})


def test_window_batch_refuses_out_of_range_indices():
    """A negative index gathered rows from both ends of the split (``series[-1]`` then ``series[0..]``) silently."""
    data = make_forecast_data(np.arange(200.0).reshape(100, 2), 5, 3)
    n = len(data.train)
    x, _ = data.train.batch(torch.tensor([0, n - 1]))
    assert x.shape == (2, 5, 2)
    for bad in (-1, n):
        with pytest.raises(IndexError, match=rf"window indices must be in \[0, {n}\) for the train split"):
            data.train.batch(torch.tensor([0, bad]))


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
