"""What a user sees on the console (issue 15, frictions): help texts, -q, progress without and with a
terminal, time stamps in watch mode. Real `edge-seg` processes: their stderr is what a user reads."""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
import zipfile
from pathlib import Path

import pytest

from tests.helpers import REPO, synthetic, write_png

STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")
SCANS = 45  # more than a run lists scan by scan (edge_runtime.job.progress.LIST_UP_TO)


def edge_seg(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "edge_runtime", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    """SCANS small good scans and one truncated PNG."""
    root = tmp_path_factory.mktemp("many") / "in"
    for i in range(SCANS):
        write_png(root / f"s{i:03d}.png", synthetic(i, 96, 128)[0])
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    return root


# -- help --------------------------------------------------------------------------------------------


def _parsers():
    from edge_runtime.cli import build_parser as seg
    from edge_runtime.evaluate import build_parser as ev
    from export.cli import build_parser as ex

    return {"edge-seg": seg, "edge-seg-eval": ev, "edge-seg-export": ex}  # edge-seg-train's loads Keras (slow)


@pytest.mark.parametrize("prog", ["edge-seg", "edge-seg-eval", "edge-seg-export"])
def test_help_says_each_default_once_and_never_none(prog):
    """Issue 15: help showed "(default: the bundled model) (default: None)"."""
    parser = _parsers()[prog]()
    text = " ".join(parser.format_help().split())  # argparse wraps lines
    assert "(default: None)" not in text and "(default: False)" not in text
    formatter = parser._get_formatter()
    for action in parser._actions:
        shown = formatter._get_help_string(action) or ""
        assert shown.count("(default:") <= 1, (action.dest, shown)


def test_help_names_an_outputs_document_that_exists(tmp_path):
    res = edge_seg("--help")
    found = re.search(r"Every output file and field: (\S+)", res.stdout)
    assert res.returncode == 0 and found, res.stdout[-600:]
    assert Path(found[1]).is_file() and Path(found[1]).name == "OUTPUTS.md"
    unit = re.search(r"systemd unit: (\S+)\)", res.stdout)
    assert unit and Path(unit[1]).is_file(), res.stdout  # not "see README", which is not installed


@pytest.mark.slow
def test_the_installed_package_has_the_outputs_document_its_help_names(tmp_path):
    """Issue 15: the help pointed at docs/OUTPUTS.md, which an installed package did not have."""
    pytest.importorskip("setuptools")  # the build backend, used as installed (no download)
    wheels, target, source = tmp_path / "wheels", tmp_path / "site", tmp_path / "source"
    skip = shutil.ignore_patterns(".*", "runs", "build", "*.egg-info", "__pycache__", "tests", "bench")
    shutil.copytree(REPO, source, ignore=skip)  # setuptools writes build/ into the tree it builds
    build = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q", "-w"]
    subprocess.run([*build, str(wheels)], check=True, capture_output=True, timeout=300, cwd=tmp_path)
    (wheel,) = wheels.glob("edge_seg-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "edge_runtime/docs/OUTPUTS.md" in names
    with zipfile.ZipFile(wheel) as z:  # installed = unpacked into site-packages; no checkout around it
        z.extractall(target, [n for n in names if n.startswith("edge_runtime/")])
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = "import edge_runtime, sys; sys.argv = ['edge-seg', '--help']; print(edge_runtime.__file__)\n"
    code += "from edge_runtime.cli import main; main()"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.stdout.startswith(str(target)), res.stdout[:300] + res.stderr
    named = Path(re.search(r"Every output file and field: (\S+)", res.stdout)[1])
    assert named.is_file() and target in named.parents
    assert named.read_text() == (REPO / "docs" / "OUTPUTS.md").read_text()
    unit = Path(re.search(r"systemd unit: (\S+)\)", res.stdout)[1])
    assert unit.is_file() and target in unit.parents


# -- -q and progress ---------------------------------------------------------------------------------


def test_quiet_prints_the_summary_and_the_failures_only(many, tmp_path, tiny_model):
    """Issue 15: `-q` promised the summary and printed nothing."""
    res = edge_seg(many, "--out", tmp_path / "out", "--model", tiny_model, "-q")
    assert res.returncode == 1
    lines = res.stderr.splitlines()
    assert any(ln.startswith(f"done: {SCANS} segmented, 0 up to date, 1 failed") for ln in lines), res.stderr
    assert any(ln.startswith("FAIL bad.png: ") for ln in lines)
    assert not any(ln.startswith(("ok ", "progress:", "model ")) for ln in lines), res.stderr


def test_without_a_terminal_a_large_run_prints_progress_lines_not_a_line_per_scan(many, tmp_path, tiny_model):
    """Issue 15: without a terminal, 5,000 scans printed 5,000 "ok" lines."""
    res = edge_seg(many, "--out", tmp_path / "out", "--model", tiny_model)
    lines = res.stderr.splitlines()
    assert res.returncode == 1
    assert not [ln for ln in lines if ln.startswith("ok ")]
    progress = [ln for ln in lines if ln.startswith("progress: ")]
    tenths = [f"progress: {n}/{SCANS + 1} scans" for n in (*range(5, SCANS + 1, 5), SCANS + 1)]  # ceil(46 / 10)
    assert [p for p in progress if p.startswith(tuple(tenths))] and len(progress) < SCANS // 2, progress
    assert progress[-1].startswith(f"progress: {SCANS + 1}/{SCANS + 1} scans (100%), 1 failed")
    assert any(ln.startswith("FAIL bad.png: ") for ln in lines)
    assert any(ln.startswith(f"done: {SCANS} segmented") for ln in lines)
    # -v: a line per scan again
    res = edge_seg(many, "--out", tmp_path / "out2", "--model", tiny_model, "-v")
    assert sum(ln.startswith("ok ") for ln in res.stderr.splitlines()) == SCANS


def test_progress_lines_come_at_every_tenth_and_at_least_every_minute(monkeypatch, caplog):
    """A long run without a terminal says it is alive between its tenths (a clock that jumps 25 s a scan)."""
    from edge_runtime.job import progress
    from edge_runtime.job.outcome import Outcome, Status

    clock = iter(range(0, 10_000, 25))
    monkeypatch.setattr(progress.time, "monotonic", lambda: float(next(clock)))
    monkeypatch.setattr(progress, "_terminal", lambda: False)
    outcomes = [Outcome(f"s{i}.png", Status.OK, [f"s{i}.png"]) for i in range(100)]
    with caplog.at_level(logging.INFO, logger="edge_runtime"):
        assert list(progress.show_progress(outcomes, 100)) == outcomes
    shown = [r.getMessage() for r in caplog.records if r.name == "edge_runtime.job.progress"]
    done = [int(m.split()[1].split("/")[0]) for m in shown]
    # 25 s a scan: the minute passes every third scan; the tenths (10, 20, ...) come as well
    assert all(n in done for n in range(10, 101, 10)) and all(b - a <= 3 for a, b in itertools.pairwise([0, *done]))
    assert not [r for r in caplog.records if r.getMessage().startswith("ok ") and r.levelno >= logging.INFO]


def test_a_small_run_lists_each_scan(tmp_path, tiny_model):
    for i in range(3):
        write_png(tmp_path / "in" / f"s{i}.png", synthetic(i, 96, 128)[0])
    res = edge_seg(tmp_path / "in", "--out", tmp_path / "out", "--model", tiny_model)
    assert res.returncode == 0
    assert sum(ln.startswith("ok ") for ln in res.stderr.splitlines()) == 3
    assert "progress:" not in res.stderr
    res = edge_seg(tmp_path / "in", "--out", tmp_path / "out", "--model", tiny_model, "-v")  # -v: the skipped too
    assert [ln for ln in res.stderr.splitlines() if ln.startswith("skip ")] == [
        f"skip s{i}.png: up to date" for i in range(3)
    ]


def _on_a_terminal(*args: str | Path) -> str:
    """Run edge-seg with stdin, stdout and stderr on a pseudo-terminal 100 columns wide; its output as sent."""
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    cmd = [sys.executable, "-m", "edge_runtime", *map(str, args)]
    proc = subprocess.Popen(cmd, stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    proc.wait(300)
    return out.decode(errors="replace")


def test_on_a_terminal_the_failures_print_above_the_progress_bar(many, tmp_path, tiny_model):
    """Issue 15: on a terminal the bar scrolled under the per-scan lines."""
    out = _on_a_terminal(many, "--out", tmp_path / "out", "--model", tiny_model)
    assert f"/{SCANS + 1} [" in out  # the bar was drawn
    assert "\nok " not in out and "\rok " not in out  # no line per scan under it
    failures = [m.start() for m in re.finditer("FAIL bad.png", out)]
    assert failures
    for at in failures:  # each starts on a fresh line: the bar was cleared first, not glued before it
        line_start = max(out.rfind("\r", 0, at), out.rfind("\n", 0, at))
        assert out[line_start + 1 : at] == "", repr(out[max(0, at - 120) : at + 20])
    assert re.search(rf"done: {SCANS} segmented", out)


# -- watch mode: time stamps off journald ------------------------------------------------------------


def _daemon_log(in_dir: Path, out_dir: Path, model: Path, log: Path, journal: bool, *extra: str) -> str:
    """Start a daemon with its stderr in ``log`` (``journal``: JOURNAL_STREAM names that file), stop it."""
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    with open(log, "w") as fh:
        if journal:
            st = os.fstat(fh.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        cmd = [sys.executable, "-m", "edge_runtime", "--watch", str(in_dir), "--out", str(out_dir)]
        proc = subprocess.Popen([*cmd, "--model", str(model), *extra], stdout=fh, stderr=fh, env=env)
        end = time.monotonic() + 60
        while "ok " not in log.read_text() and proc.poll() is None and time.monotonic() < end:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    return log.read_text()


@pytest.mark.slow
def test_watch_lines_carry_the_time_except_under_journald(tmp_path, tiny_model):
    """Issue 15: watch-mode console lines had no time stamps (journald adds them; a console does not)."""
    write_png(tmp_path / "in" / "a.png", synthetic(1, 96, 128)[0])
    text = _daemon_log(tmp_path / "in", tmp_path / "out", tiny_model, tmp_path / "console.log", journal=False)
    lines = text.splitlines()
    ours = [ln for ln in lines if re.search(r"watching |ok   a\.png|SIGTERM received|stopped: ", ln)]
    assert len(ours) == 4 and all(STAMP.match(ln) for ln in ours), text  # (onnxruntime may print its own)
    assert any(STAMP.sub("", ln).startswith("ok   a.png -> a.png") for ln in lines)
    assert any(STAMP.sub("", ln).startswith("stopped: 1 segmented") for ln in lines)
    # under journald, no stamps; and a daemon started with other settings says so at start and at the end
    write_png(tmp_path / "in" / "b.png", synthetic(2, 96, 128)[0])
    log = tmp_path / "journal.log"
    text = _daemon_log(tmp_path / "in", tmp_path / "out", tiny_model, log, True, "--threshold", "0.9")
    assert not any(STAMP.match(ln) for ln in text.splitlines()), text
    assert re.search(r"^ok   [ab]\.png -> [ab]\.png", text, re.MULTILINE)
    assert "was made with other settings (threshold 0.5 -> 0.9)" in text
    stopped = r"^stopped: \d segmented, 0 failed since start; OUT's settings changed at start: threshold 0.5 -> 0.9$"
    assert re.search(stopped, text, re.MULTILINE), text
