"""The three ways edge-seg writes a time (edge_runtime.timestamps)."""

from __future__ import annotations

import time

import pytest

from edge_runtime import timestamps


@pytest.fixture
def in_tokyo(monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_records_are_utc_and_people_get_their_local_time(in_tokyo):
    t = 1_764_747_662.9  # 2025-12-03 07:41:02.9 UTC
    assert timestamps.utc(t) == "2025-12-03T07:41:02Z"
    assert timestamps.local(t) == "2025-12-03T16:41:02+0900"
    assert timestamps.for_page(t) == "2025-12-03 16:41:02 JST"


def test_no_other_module_formats_a_time_of_its_own():
    """Every time edge-seg writes goes through edge_runtime.timestamps (one format each, in one place)."""
    from pathlib import Path

    import edge_runtime

    root = Path(edge_runtime.__file__).parent
    own = root / "timestamps.py"
    found = [
        f"{p.relative_to(root)}:{i}"
        for p in sorted(root.rglob("*.py"))
        if p != own
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if "strftime(" in line or ".isoformat(" in line
    ]
    assert found == []
