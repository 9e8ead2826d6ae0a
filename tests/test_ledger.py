"""Ledger recovery after a crash: what the file says, not only what one process remembers."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from edge_runtime.job.ledger import Ledger, ScanState


def records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / ".edge-seg" / "ledger.jsonl").read_text().splitlines()]


def begin(ledger: Ledger, rel: str, outputs: list[str]) -> None:
    ledger.begin(ScanState(rel, size=10, mtime_ns=1, sha256="h", sig="s", model="m", frames=1), outputs)


def test_a_scan_whose_outputs_were_written_before_a_crash_is_recorded_done_in_the_file(tmp_path):
    out = tmp_path / "out"
    ledger = Ledger(out)
    begin(ledger, "a.png", ["a.png"])
    begin(ledger, "b.png", ["b.png"])
    time.sleep(0.01)
    (out / "a.png").write_bytes(b"mask")  # a's output made it before the crash, b's did not
    ledger.close()  # then the process dies: no "done" records

    again = Ledger(out)
    again.close()
    assert again.recovered == 1
    last = {r["rel"]: r for r in records(out)}
    assert last["a.png"]["event"] == "done" and last["a.png"]["recovered"] is True
    assert last["b.png"]["event"] == "begin"  # to be processed again

    third = Ledger(out)  # nothing left to recover: a is done in the file itself
    third.close()
    assert third.recovered == 0
    assert third.up_to_date("a.png", 10, 1, "s") and not third.up_to_date("b.png", 10, 1, "s")
    assert sum(r["rel"] == "a.png" and r["event"] == "done" for r in records(out)) == 1


def test_the_ledger_needs_no_image_decoding():
    """It depends on the durable-files module, not on OpenCV (a status tool or a migration can use it alone)."""
    code = "import sys, edge_runtime.job.ledger; print(sorted(m for m in ('cv2', 'numpy') if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert res.stdout.strip() == "[]"
