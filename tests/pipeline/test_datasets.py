"""Every bad-dataset rule yields its own one-line error (and exit code 2 from the CLI)."""

from __future__ import annotations

import gzip
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from slocast.adapters.datasets import load_lte
from slocast.core.config import PipelineConfig
from slocast.core.errors import DatasetError
from slocast.core.synthetic import generate_lte


def _write(tmp_path: Path, frame: pd.DataFrame, name: str = "data.csv") -> Path:
    path = tmp_path / name
    if name.endswith(".parquet"):
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path


@pytest.fixture
def frame() -> pd.DataFrame:
    return generate_lte(300, seed=1, nan_cells=0)


def test_valid_csv_and_parquet_load_identically(tmp_path, frame):
    a = load_lte(_write(tmp_path, frame), min_rows=50)
    b = load_lte(_write(tmp_path, frame, "data.parquet"), min_rows=50)
    pd.testing.assert_frame_equal(a, b)
    assert a["time"].dtype == "datetime64[ns]"
    assert list(a.columns)[0] == "time" and len(a.columns) == 12


def test_extra_columns_are_dropped(tmp_path, frame):
    frame["note"] = "x"
    assert "note" not in load_lte(_write(tmp_path, frame), min_rows=50).columns


def test_iso_8601_offsets_are_read_as_utc(tmp_path, frame):
    """Timestamps with an offset, which changes with daylight saving time, load
    on one UTC grid; a Z suffix and no offset mean UTC."""
    expected = load_lte(_write(tmp_path, frame), min_rows=50)
    local = frame.copy()
    # Offsets change mid-file (daylight saving time): +01:00 before row 150, +02:00 after.
    shifted = local["time"] + pd.to_timedelta(np.where(np.arange(len(local)) < 150, 1, 2), "h")
    offsets = np.where(np.arange(len(local)) < 150, "+01:00", "+02:00")
    local["time"] = shifted.dt.strftime("%Y-%m-%dT%H:%M:%S") + offsets
    zulu = frame.copy()
    zulu["time"] = zulu["time"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    for variant in (local, zulu):
        pd.testing.assert_frame_equal(load_lte(_write(tmp_path, variant), min_rows=50), expected)


def test_utc_offsets_in_one_file_but_not_the_other_are_refused(tmp_path):
    """A training file with offsets and a naive test file were read an hour apart
    (calendar features off, a phantom gap); and a file mixing both is ambiguous."""
    from slocast.core.config import PipelineConfig
    from slocast.preprocess.stage import preprocess

    train = generate_lte(1500, seed=1)
    test = generate_lte(300, seed=2)
    test["time"] = train["time"].iloc[-1] + pd.to_timedelta(np.arange(1, 301) * 120, "s")
    aware = train.copy()
    aware["time"] = aware["time"].dt.strftime("%Y-%m-%dT%H:%M:%S") + "+00:00"
    loaded = load_lte(_write(tmp_path, aware, "train.csv"), min_rows=50)
    naive = load_lte(_write(tmp_path, test, "test.csv"), min_rows=50)
    with pytest.raises(DatasetError, match="training file's timestamps carry UTC offsets"):
        preprocess(loaded, naive, PipelineConfig(), sources={"test": "test.csv"})
    both = test.copy()
    both["time"] = both["time"].dt.strftime("%Y-%m-%dT%H:%M:%S") + "Z"
    preprocess(loaded, load_lte(_write(tmp_path, both, "t2.csv"), min_rows=50), PipelineConfig())
    mixed = aware.copy()
    mixed.loc[700, "time"] = mixed.loc[700, "time"][:-6]
    with pytest.raises(DatasetError, match="row 700: 'time' value .* lacks a UTC offset"):
        load_lte(_write(tmp_path, mixed, "mixed.csv"), min_rows=50)


def _breakers():
    def missing_column(f):
        return f.drop(columns=["rb_up"])

    def non_numeric(f):
        f = f.astype({"down": object})
        f.loc[7, "down"] = "lots"
        return f

    def bool_column(f):
        f["up"] = True
        return f

    def bad_time(f):
        f = f.astype({"time": object})
        f.loc[3, "time"] = "yesterday-ish"
        return f

    def day_first(f):
        f["time"] = f["time"].dt.strftime("%d/%m/%Y %H:%M")
        return f

    def epoch_seconds(f):
        f["time"] = f["time"].astype("datetime64[s]").astype(np.int64)
        return f

    def unsorted(f):
        return f.iloc[[0, 1, 3, 2, *range(4, len(f))]]

    def duplicate(f):
        f = f.copy()
        f.loc[5, "time"] = f.loc[4, "time"]
        return f

    def gap(f):
        return f.drop(index=[10, 11, 12])

    def off_grid(f):
        f = f.copy()
        f.loc[10:, "time"] += pd.Timedelta(seconds=60)  # 1.5 steps after row 9
        return f

    def too_few(f):
        return f.iloc[:20]

    def all_nan(f):
        f["mcs_up"] = np.nan
        return f

    def infinite(f):
        f.loc[9, "rb_down"] = np.inf
        return f

    def beyond_float32(f):
        f.loc[11, "down"] = -1e308
        return f

    def counter_wrap(f):
        f.loc[8, "down"] = float(2**64 - 1)
        return f

    def ancient_year(f):
        f = f.astype({"time": object})
        f.loc[6, "time"] = "0018-02-17 02:20:00"
        return f

    return {
        "missing column(s) rb_up": missing_column,
        "row 7: column 'down' has non-numeric value 'lots'": non_numeric,
        "column 'up' has type bool": bool_column,
        "row 3: cannot parse 'time'": bad_time,
        "row 0: cannot parse 'time' value '05/02/2018 00:00'; timestamps must be ISO 8601": day_first,
        "'time' holds numbers (row 0: 1517788800); give timestamps as ISO 8601 text": epoch_seconds,
        "timestamps not sorted": unsorted,
        "row 5: duplicate timestamp": duplicate,
        "row 10: 480s after the previous row where the step is 120s: a gap of 3 missing row(s)": gap,
        "row 10: 180s after the previous row where the step is 120s: irregular spacing": off_grid,
        "20 rows, need at least 50": too_few,
        "column 'mcs_up' has no values": all_nan,
        "column 'rb_down' is infinite": infinite,
        "row 11: column 'down' is -1e+308, beyond the single-precision range": beyond_float32,
        "row 8 (line 10): column 'down' is 1.84467e+19, more than 1e+06 times": counter_wrap,
        "row 6 (line 8): 'time' value '0018-02-17 02:20:00' is outside 1677-09-21 to 2262-04-11": (
            ancient_year
        ),
    }


@pytest.mark.parametrize("expected", list(_breakers()))
def test_each_bad_dataset_has_its_error(tmp_path, frame, expected):
    path = _write(tmp_path, _breakers()[expected](frame.copy()))
    with pytest.raises(DatasetError) as info:
        load_lte(path, min_rows=50)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message and str(path) in message


@pytest.mark.parametrize("value", [float(2**64 - 1), 1e30, -1e30, 1e18])
@pytest.mark.parametrize("name", ["data.csv", "data_test.csv", "data.parquet"])
def test_a_corrupt_cell_is_refused_with_its_line(tmp_path, frame, value, name):
    """One wrapped counter or 1e30 ruined every family; the error names the cell."""
    frame.loc[40, "up"] = value
    path = _write(tmp_path, frame, name)
    line = "" if name.endswith(".parquet") else " (line 42)"
    with pytest.raises(DatasetError) as info:
        load_lte(path, min_rows=50)
    message = str(info.value)
    assert message.startswith(f"{path}: row 40{line}: column 'up' is {value:g}, more than 1e+06")
    assert message.endswith("blank the cell (empty cells are treated as missing)")
    frame.loc[40, "up"] = np.nan  # blanked: loads, the cell missing
    assert np.isnan(load_lte(_write(tmp_path, frame, name), min_rows=50).loc[40, "up"])


def test_extreme_but_real_columns_are_kept(tmp_path, frame):
    """The magnitude rule is relative to each column's own bulk: scaled sites, bursts,
    mostly-zero columns and tiny variances all load."""
    frame["down"] *= 1e-9  # a very quiet site
    frame["up"] *= np.where(np.arange(len(frame)) % 50 == 0, 1e4, 1.0)  # 2% bursts
    frame["rnti_count"] = np.where(np.arange(len(frame)) < 297, 0.0, 1e12)  # 3 non-zeros
    frame["rb_down_var"] = frame["rb_down_var"].abs() * 1e-30
    frame.loc[3, "rb_up"] = -frame["rb_up"].abs().max() * 1e5  # large, but within 1e6
    loaded = load_lte(_write(tmp_path, frame), min_rows=50)
    np.testing.assert_array_equal(loaded["up"].to_numpy(), frame["up"].to_numpy())


def test_years_beyond_nanosecond_timestamps_are_refused_in_parquet(tmp_path, frame):
    frame["time"] = frame["time"].astype("datetime64[us]")
    frame.loc[5, "time"] = pd.Timestamp("2918-02-17 02:20:00").as_unit("us")
    path = _write(tmp_path, frame, "data.parquet")
    with pytest.raises(DatasetError, match=r"row 5: 'time' value .*2918-02-17.* is outside"):
        load_lte(path, min_rows=50)


def test_gaps_up_to_max_gap_rows_become_empty_rows(tmp_path, frame):
    # Two gaps (1 and 3 missing rows) and a jittered row that stays on the grid.
    holed = frame.drop(index=[20, 40, 41, 42]).copy()
    holed.loc[100, "time"] += pd.Timedelta(seconds=5)
    path = _write(tmp_path, holed)
    with pytest.raises(
        DatasetError, match=r"row 20: .*a gap of 1 missing row.*--max-gap-rows N \(now 0\)"
    ):
        load_lte(path, min_rows=50)
    with pytest.raises(DatasetError, match=r"row 39: .*a gap of 3 missing row.*\(now 2\)"):
        load_lte(path, min_rows=50, config=PipelineConfig(max_gap_rows=2))

    loaded = load_lte(path, min_rows=50, config=PipelineConfig(max_gap_rows=3))
    assert len(loaded) == len(frame)
    expected_times = frame["time"].to_numpy().astype("datetime64[ns]").copy()
    expected_times[100] += np.timedelta64(5, "s")
    np.testing.assert_array_equal(loaded["time"].to_numpy(), expected_times)
    cells = loaded.drop(columns="time")
    empty = cells.isna().all(axis=1).to_numpy()
    assert np.flatnonzero(empty).tolist() == [20, 40, 41, 42]
    observed = np.setdiff1d(np.arange(len(frame)), [20, 40, 41, 42])
    np.testing.assert_array_equal(
        cells.to_numpy()[observed], frame.drop(columns="time").to_numpy()[observed]
    )
    assert all(dtype == np.float64 for dtype in cells.dtypes)


def test_max_gap_rows_is_bounded():
    from slocast.core.config import MAX_GAP_ROWS
    from slocast.core.errors import ConfigError

    assert PipelineConfig().max_gap_rows == 0
    assert PipelineConfig(max_gap_rows=MAX_GAP_ROWS).max_gap_rows == MAX_GAP_ROWS
    for bad in (-1, MAX_GAP_ROWS + 1):
        with pytest.raises(ConfigError, match="max_gap_rows"):
            PipelineConfig(max_gap_rows=bad)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"window": 10.5}, "window must be a whole number"),
        ({"window": True}, "window must be a whole number"),
        ({"window": 10**30}, "window must be in"),
        ({"horizon": 0}, "horizon must be in"),
        ({"season_steps": -1}, "season_steps must be in"),
        ({"val_fraction": "0.2"}, "val_fraction must be a number"),
        ({"quantiles": []}, "quantiles must be a non-empty list"),
        ({"quantiles": "0.9"}, "quantiles must be a list of levels"),
        ({"quantiles": ["0.9"]}, "quantiles must be numbers"),
        ({"quantiles": [0.9, 0.9]}, "distinct levels"),
        ({"spacing_tolerance": 2.0}, "spacing_tolerance must be in"),
        ({"colour": "red"}, "unknown pipeline config keys: ['colour']"),
    ],
)
def test_a_config_from_an_event_is_checked_for_types_and_ranges(change, message):
    """Configs arrive as JSON in dataset-submitted events: a wrong type is a
    ConfigError (the event goes to the DLQ at once), not a TypeError later."""
    from slocast.core.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        PipelineConfig.from_dict({**PipelineConfig().to_dict(), **change})
    with pytest.raises(ConfigError, match="a pipeline config is an object"):
        PipelineConfig.from_dict([1, 2])  # type: ignore[arg-type]
    assert PipelineConfig.from_dict(PipelineConfig().to_dict()) == PipelineConfig()


def test_a_row_cut_short_is_refused_with_its_line(tmp_path, frame):
    """pandas fills a short row with empty cells, which would pass for missing
    measurements; a file cut mid-line is refused instead."""
    path = tmp_path / "cut.csv"
    frame.to_csv(path, index=False)
    lines = path.read_text().splitlines()
    cut = ",".join(lines[150].split(",")[:9])  # the file ends inside line 151
    path.write_text("\n".join([*lines[:150], cut]) + "\n")
    with pytest.raises(
        DatasetError, match="cut.csv: line 151 has 9 fields where the header has 12"
    ):
        load_lte(path, min_rows=50)
    gz = tmp_path / "cut.csv.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    with pytest.raises(DatasetError, match="has 9 fields"):
        load_lte(gz, min_rows=50)


def _lines(tmp_path: Path, frame: pd.DataFrame) -> list[str]:
    path = tmp_path / "base.csv"
    frame.to_csv(path, index=False)
    return path.read_text().splitlines()


def _file(tmp_path: Path, name: str, lines: list[str]) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_malformed_headers_get_one_clear_error(tmp_path, frame):
    """Found by a hostile probe (2026-12-07): each was a traceback, a hang, a silent
    loss or a misleading message."""
    lines = _lines(tmp_path, frame)
    header, rows = lines[0], lines[1:]
    cases = {
        # pandas kept the second one as "down.1" and dropped it silently
        "dup.csv": ([header + ",down", *(r + ",0" for r in rows)], "'down' appears twice"),
        # pandas read it as one column: "missing column(s)" named all twelve
        "semi.csv": ([line.replace(",", ";") for line in lines], "separated by semicolons"),
        "tabs.csv": ([line.replace(",", "\t") for line in lines], "separated by tabs"),
        # pandas built 100,000 columns for minutes before any check
        "wide.csv": ([header + "," * 5_000, *rows], "at most 1000"),
        "long.csv": ([header + ",x" * 40_000, *rows], "longer than 65536"),
        # the message blamed line 2
        "trailing.csv": ([header + ",", *rows], "header ends with a comma"),
    }
    for name, (content, message) in cases.items():
        with pytest.raises(DatasetError, match=re.escape(message)):
            load_lte(_file(tmp_path, name, content), min_rows=50)
    big_cell = [
        header + ",note",
        *(r + "," for r in rows[:-1]),
        rows[-1] + ',"' + "A" * 200_000 + '"',
    ]
    with pytest.raises(DatasetError, match="cannot be read as csv: field larger"):
        load_lte(_file(tmp_path, "cell.csv", big_cell), min_rows=50)
    with pytest.raises(DatasetError, match="cannot be opened"):
        load_lte(tmp_path / ("a" * 300 + ".csv"), min_rows=50)


def test_forgiving_forms_of_the_same_file_load_equal(tmp_path, frame):
    """Spaces after the header's commas, and a trailing comma on every line, read as
    the plain file does."""
    lines = _lines(tmp_path, frame)
    plain = load_lte(_file(tmp_path, "plain.csv", lines), min_rows=50)
    spaced = [lines[0].replace(",", ", "), *lines[1:]]
    trailing = [line + "," for line in lines]
    rows_only = [lines[0], *(line + "," for line in lines[1:])]
    for name, content in (("s.csv", spaced), ("t.csv", trailing), ("r.csv", rows_only)):
        pd.testing.assert_frame_equal(load_lte(_file(tmp_path, name, content), min_rows=50), plain)


def test_parquet_with_a_duplicated_column_is_one_line(tmp_path, frame):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    path = tmp_path / "dup.parquet"
    pq.write_table(table.append_column("down", table.column("up")), path)
    with pytest.raises(DatasetError) as err:
        load_lte(path, min_rows=50)
    assert "\n" not in str(err.value) and "dup.parquet" in str(err.value)


def test_empty_and_header_only_files(tmp_path, frame):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DatasetError, match="file is empty"):
        load_lte(empty, min_rows=50)
    header = tmp_path / "header.csv"
    header.write_text(",".join(frame.columns) + "\n")
    with pytest.raises(DatasetError, match="no data rows"):
        load_lte(header, min_rows=50)


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(DatasetError, match="file not found"):
        load_lte(tmp_path / "nope.csv", min_rows=50)
    other = tmp_path / "data.xlsx"
    other.write_text("x")
    with pytest.raises(DatasetError, match="unsupported file type"):
        load_lte(other, min_rows=50)


def test_cli_exits_2_with_one_line_error(tmp_path, frame):
    path = _write(tmp_path, frame.drop(columns=["up"]))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "slocast.cli",
            "run",
            "--data",
            str(path),
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env={"SLOCAST_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"slocast: error: {path}: missing column(s) up"
