"""Options a hostile or careless command line gives (issue 27, items 9 and 15): refused with one line, exit 2."""

from __future__ import annotations

import pytest

from edge_runtime.cli import main


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--settle", "nan"),
        ("--settle", "inf"),
        ("--settle", "-1"),
        ("--rescan", "-1"),
        ("--rescan", "nan"),
        ("--rescan", "0"),
        ("--polling", "nan"),
        ("--polling", "0"),
        ("--send-retry", "nan"),
        ("--send-retry", "inf"),
        ("--send-retry", "-3"),
        ("--decode-budget-mb", "nan"),
        ("--decode-budget-mb", "0"),
    ],
)
def test_non_finite_and_out_of_range_float_options_are_refused(tmp_path, capsys, option, value):
    with pytest.raises(SystemExit) as stop:
        main(["--watch", str(tmp_path / "in"), "--out", str(tmp_path / "out"), option, value])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: {value} is not a finite number in" in err
    assert not (tmp_path / "out").exists()


def test_thresholds_that_map_to_one_folder_are_refused(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--threshold", "0.5000001", "0.5000002"])
    assert stop.value.code == 2
    assert "thresholds 0.5000001 and 0.5000002 would both write OUT/0.5/" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
