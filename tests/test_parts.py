"""``--num-parts N --part-id K``: the split, and real processes sharing one OUT (also one killed with SIGKILL)."""

from __future__ import annotations

import csv
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import pytest

from edge_runtime.cli import main
from edge_runtime.job.ledger import read_history, read_records
from edge_runtime.job.parts import Part, part_of
from tests.helpers import synthetic, write_png

TIMEOUT = 120


def names(n: int) -> list[str]:
    return [f"p{i // 50}/s{i:04d}.png" for i in range(n)]


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_the_split_covers_every_scan_exactly_once_and_keeps_a_scans_part_when_files_are_added(count):
    rels = names(1000)
    owners = {rel: [k for k in range(count) if Part(k, count).owns(rel)] for rel in rels}
    assert all(len(ks) == 1 for ks in owners.values())  # each scan in exactly one part
    assert {ks[0] for ks in owners.values()} == set(range(count))  # and no part empty
    more = rels + [f"new/{i}.png" for i in range(500)]  # files added: nobody moves
    assert all(part_of(rel, count) == owners[rel][0] for rel in more if rel in owners)


def test_scans_that_would_write_the_same_mask_fall_in_the_same_part():
    assert len({part_of(f"a/x{s}", 5) for s in (".png", ".jpg", ".dcm", "_f0002.png")}) == 1
    assert len({part_of(f"{d}/x.png", 50) for d in "abcdefgh"}) > 1  # the folder counts


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--num-parts", "3"], "--num-parts N and --part-id K go together"),
        (["--part-id", "0"], "--num-parts N and --part-id K go together"),
        (["--num-parts", "3", "--part-id", "3"], "--part-id must be from 0 to 2 for --num-parts 3"),
    ],
)
def test_bad_part_arguments_are_one_line_and_exit_code_2(tmp_path, tiny_model, caplog, args, message):
    write_png(tmp_path / "in" / "a.png", synthetic(1, 40, 50)[0])
    assert main([str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--model", str(tiny_model), *args]) == 2
    assert message in caplog.text


def scans(root: Path, n: int) -> list[str]:
    rels = names(n)
    for i, rel in enumerate(rels):
        write_png(root / rel, synthetic(i, 64, 80)[0])
    return rels


def test_parts_run_one_after_another_do_every_scan_once_with_a_run_record_each(tmp_path, tiny_model):
    src, out = tmp_path / "in", tmp_path / "out"
    rels = scans(src, 60)
    for k in range(3):
        assert main([str(src), "--out", str(out), "--model", str(tiny_model), "--report", *part(k, 3)]) == 0
    assert all((out / rel).exists() for rel in rels)
    assert Counter(r["rel"] for r in read_history(out) if r["event"] == "done") == Counter(rels)
    listed = [row["path"] for k in range(3) for row in summary(out, k, 3)]
    assert sorted(listed) == sorted(rels)  # every scan in exactly one part's record
    assert not (out / "run-summary.csv").exists()


def part(k: int, n: int) -> list[str]:
    return ["--num-parts", str(n), "--part-id", str(k)]


def summary(out: Path, k: int, n: int) -> list[dict]:
    with open(out / f"run-summary.part-{k}-of-{n}.csv", newline="") as fh:
        return list(csv.DictReader(fh))


#: edge-seg, with each batch's done records held back 30 ms after its outputs are written: a kill then
#: often finds scans written but not yet recorded, which a rerun must recover rather than redo or lose.
SLOW = """
import sys, time
from edge_runtime.cli import main
from edge_runtime.job import recorder
record = recorder.Recorder.record
def slow(self, results, defer=None):
    time.sleep(0.03)
    yield from record(self, results, defer)
recorder.Recorder.record = slow
sys.exit(main(sys.argv[1:]))
"""


def start(src: Path, out: Path, model: Path, k: int, n: int, slow: bool = False) -> subprocess.Popen:
    cmd = ["-c", SLOW] if slow else ["-m", "edge_runtime"]
    args = [str(src), "--out", str(out), "--model", str(model), "--report", "--threads", "1", *part(k, n)]
    return subprocess.Popen([sys.executable, *cmd, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def check_every_mask_once(out: Path, rels: list[str]) -> None:
    for rel in rels:
        mask = cv2.imread(str(out / rel), cv2.IMREAD_UNCHANGED)
        assert mask is not None and mask.shape == (64, 80), rel  # complete, decodable, right size
    done = Counter(r["rel"] for r in read_history(out) if r["event"] == "done")
    assert done == Counter(rels), {rel: c for rel, c in done.items() if c != 1}  # once each, none lost
    assert {r["event"] for r in read_records(out).values()} == {"done"}
    with sqlite3.connect(out / ".edge-seg" / "ledger.sqlite") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        counted = dict(conn.execute("SELECT event, COUNT(*) FROM scans GROUP BY event").fetchall())
        tallied = {e: n for e, n in conn.execute("SELECT event, n FROM tallies").fetchall() if n}
        assert tallied == counted == {"done": len(rels)}  # the triggers' tallies agree with the rows
    assert not [p for p in out.rglob("*.tmp")], "temporary files left behind"


@pytest.mark.slow
def test_two_processes_on_one_out_at_the_same_time_give_every_mask_once(tmp_path, tiny_model):
    src, out = tmp_path / "in", tmp_path / "out"
    rels = scans(src, 120)
    procs = [start(src, out, tiny_model, k, 2) for k in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=TIMEOUT)
        assert p.returncode == 0, err.decode()
    check_every_mask_once(out, rels)
    assert sorted(row["path"] for k in range(2) for row in summary(out, k, 2)) == sorted(rels)


@pytest.mark.slow
def test_one_of_two_processes_killed_mid_run_then_rerun_loses_and_repeats_nothing(tmp_path, tiny_model):
    src, out = tmp_path / "in", tmp_path / "out"
    rels = scans(src, 160)
    mine = [rel for rel in rels if part_of(rel, 2) == 0]
    victim, other = start(src, out, tiny_model, 0, 2, slow=True), start(src, out, tiny_model, 1, 2)
    deadline = time.monotonic() + TIMEOUT
    while sum((out / rel).exists() for rel in mine) < 10:  # well into its share (about 80 scans, 30 ms each)
        assert victim.poll() is None and time.monotonic() < deadline, "part 0 ended before it could be killed"
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=TIMEOUT)
    assert victim.returncode == -signal.SIGKILL
    assert sum((out / rel).exists() for rel in mine) < len(mine)  # killed mid-run: some of its share not done
    _, err = other.communicate(timeout=TIMEOUT)
    assert other.returncode == 0, err.decode()
    rerun = start(src, out, tiny_model, 0, 2)
    _, err = rerun.communicate(timeout=TIMEOUT)
    assert rerun.returncode == 0, err.decode()
    check_every_mask_once(out, rels)
    rows = summary(out, 0, 2)
    assert sorted(row["path"] for row in rows) == sorted(mine)
    assert {row["status"] for row in rows} == {"ok", "up-to-date"}  # the rerun redid only what was missing
