"""Start-up only for what a run uses: which modules a real ``edge-seg`` process imports (a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import synthetic, write_png

#: Imported only by the runs that need them (README, "What each dependency is for").
OPTIONAL = ("jinja2", "pydicom", "highdicom", "pynetdicom", "dask", "distributed", "tqdm", "watchdog")

CODE = """
import json, sys
from edge_runtime.cli import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def imported(*argv: str | Path) -> set[str]:
    """The top-level modules a whole ``edge-seg`` run imported, in a process of its own."""
    res = subprocess.run([sys.executable, "-c", CODE, *map(str, argv)], capture_output=True, text=True, check=True)
    found = json.loads(res.stdout.strip().splitlines()[-1])
    assert found["rc"] == 0, res.stderr
    return set(found["modules"]) & set(OPTIONAL)


@pytest.fixture
def scans(tmp_path) -> Path:
    write_png(tmp_path / "in" / "a.png", synthetic(1, 120, 160)[0])
    return tmp_path / "in"


def test_a_plain_one_shot_run_imports_none_of_the_optional_libraries(scans, tmp_path, tiny_model):
    assert imported(scans, "--out", tmp_path / "o", "--model", tiny_model, "-q") == set()


def test_a_single_file_run_too(scans, tmp_path, tiny_model):
    assert imported(scans / "a.png", "--out", tmp_path / "o", "--model", tiny_model, "-v") == set()


def test_report_imports_jinja2_for_its_page(scans, tmp_path, tiny_model):
    assert imported(scans, "--out", tmp_path / "o", "--model", tiny_model, "--report", "-q") == {"jinja2"}


def test_a_dicom_scan_imports_pydicom_and_nothing_of_the_network(tmp_path, tiny_model):
    pytest.importorskip("pydicom")
    from tests.helpers import write_dicom

    write_dicom(tmp_path / "in" / "a.dcm", synthetic(2, 120, 160)[0])
    found = imported(tmp_path / "in", "--out", tmp_path / "o", "--model", tiny_model, "-q")
    assert found - {"tqdm"} == {"pydicom"}  # (pydicom.data.download imports tqdm itself when it is installed)
