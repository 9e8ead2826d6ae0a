"""Soak benchmark for ``edge-seg --watch``: many scans, several writers, bad files, kill -9 and restarts.

    python -m bench.soak                      # 2,000 scans, 4 writers, 3 kills (a few minutes)
    python -m bench.soak --scans 300 --kills 2

Scans are synthetic (the demo generator) and real (DDTI frames from ../shared/data/ddti, or
$EDGE_SEG_DDTI), copied into a temporary IN at bench time. Writers deliver them in bursts, each scan
in one of these ways: plain write (like cp/scp), slow chunked write, temp-name-then-rename (like rsync
and many scanners), real ``rsync`` (when installed); a share of the files are corrupt, truncated or
empty. Meanwhile the daemon is killed with SIGKILL several times and restarted. At the end it prints:
scans expected, masks written, lost, repeated, torn, bad scans named, latency from write-complete to
mask (p50/p95), and the daemon's RSS at start and end. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

if __name__ == "__main__" and not __package__:  # `python bench/soak.py`: run as `python -m bench.soak`
    from common import run_as_module  # type: ignore[import-not-found]  # (this file's folder is on sys.path)

    run_as_module("bench.soak")

from bench.common import REPO, ddti_root
from edge_runtime.demo import synthetic_scan
from edge_runtime.job.ledger import read_history

DDTI = ddti_root()
#: the time a daemon's console line starts with, off journald (edge_runtime.console.TIME_FORMAT)
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")


@dataclass
class Delivery:
    rel: str
    kind: str  # plain, slow, rename, rsync, corrupt, truncated, empty
    good: bool
    size_hw: tuple[int, int] | None
    done_at: float = 0.0  # wall-clock time the file was complete in IN


def make_payloads(n: int, rng: random.Random) -> list[tuple[bytes, tuple[int, int]]]:
    real = sorted(DDTI.glob("*/image/*.png")) if DDTI.is_dir() else []
    out = []
    nprng = np.random.default_rng(rng.randrange(1 << 30))
    for i in range(n):
        if real and i % 2 == 0:
            data = real[(i // 2) % len(real)].read_bytes()
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            # make each copy unique so content hashes differ, as different patients' scans would
            img = img.copy()
            img[0, 0] = i % 256
            img[0, 1] = (i // 256) % 256
            data = cv2.imencode(".png", img)[1].tobytes()
            out.append((data, img.shape[:2]))
        else:
            img, _ = synthetic_scan(nprng, 360, int(nprng.choice([300, 420, 500])))
            out.append((cv2.imencode(".png", img)[1].tobytes(), img.shape[:2]))
    return out


def deliver(d: Delivery, data: bytes, in_dir: Path, stage: Path, rng: random.Random) -> None:
    dest = in_dir / d.rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    if d.kind in ("plain", "corrupt", "truncated", "empty"):
        dest.write_bytes(data)
    elif d.kind == "slow":
        with open(dest, "wb") as fh:
            step = max(1, len(data) // rng.randint(3, 6))
            for i in range(0, len(data), step):
                fh.write(data[i : i + step])
                fh.flush()
                time.sleep(rng.uniform(0.05, 0.25))
    elif d.kind == "rename":
        tmp = dest.with_name(f".{dest.name}.{rng.randrange(1 << 30):x}")
        tmp.write_bytes(data)
        os.replace(tmp, dest)
    elif d.kind == "rsync":
        src = stage / d.rel.replace("/", "_")
        src.write_bytes(data)
        subprocess.run(["rsync", "-q", str(src), str(dest)], check=True)
    d.done_at = time.time()


def plan(n: int, payloads, rng: random.Random, have_rsync: bool) -> list[tuple[Delivery, bytes]]:
    kinds = (
        ["plain"] * 50
        + ["slow"] * 10
        + ["rename"] * 25
        + (["rsync"] * 5 if have_rsync else [])
        + ["corrupt"] * 4
        + ["truncated"] * 3
        + ["empty"] * 3
    )
    jobs = []
    for i in range(n):
        kind = rng.choice(kinds)
        data, hw = payloads[i]
        rel = f"site{i % 7}/day{i % 5}/scan{i:05d}.png"
        if kind == "corrupt":
            data = b"\x89PNG\r\n\x1a\n" + bytes(rng.randrange(256) for _ in range(400))
        elif kind == "truncated":
            data = data[: len(data) // 2]
        elif kind == "empty":
            data = b""
        jobs.append((Delivery(rel, kind, kind in ("plain", "slow", "rename", "rsync"), hw), data))
    return jobs


class DaemonRun:
    def __init__(
        self, in_dir: Path, out_dir: Path, model: str | None, log: Path, settle: float, extra: list[str] | None = None
    ):
        cmd = [
            sys.executable,
            "-m",
            "edge_runtime",
            "--watch",
            str(in_dir),
            "--out",
            str(out_dir),
            "--settle",
            str(settle),
            "--rescan",
            "10",
        ]
        if model:
            cmd += ["--model", model]
        cmd += extra or []
        self.log = log
        self.fh = open(log, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=self.fh, stderr=self.fh, cwd=REPO)
        self.started = time.time()
        self.rss: list[tuple[float, int]] = []

    def sample_rss(self) -> None:
        if self.log.exists() and "watching" not in self.log.read_text()[:4000]:
            return  # still starting up
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    self.rss.append((time.time() - self.started, int(line.split()[1]) // 1024))
        except OSError:
            pass

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.fh.close()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(120)
        self.fh.close()
        return code


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scans", type=int, default=2000)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--settle", type=float, default=1.0)
    ap.add_argument("--daemon-args", default="", help='more edge-seg options, e.g. "--batch-size 1"')
    ap.add_argument("--model", help="ONNX model (default: the bundled one)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folders")
    args = ap.parse_args()

    rng = random.Random(args.seed)
    have_rsync = shutil.which("rsync") is not None
    work = Path(tempfile.mkdtemp(prefix="edge-seg-soak-"))
    in_dir, out_dir, stage = work / "in", work / "out", work / "stage"
    for d in (in_dir, stage):
        d.mkdir()
    extra = f", daemon options: {args.daemon_args}" if args.daemon_args else ""
    print(f"soak: {args.scans} scans, {args.writers} writers, {args.kills} kill -9, work folder {work}{extra}")
    payloads = make_payloads(args.scans, rng)
    jobs = plan(args.scans, payloads, rng, have_rsync)

    def start_daemon(i: int) -> DaemonRun:
        return DaemonRun(in_dir, out_dir, args.model, work / f"daemon-{i}.log", args.settle, args.daemon_args.split())

    runs: list[DaemonRun] = [start_daemon(0)]
    time.sleep(2.0)
    queues = [jobs[i :: args.writers] for i in range(args.writers)]
    delivered = threading.Event()

    def writer(q, wrng: random.Random) -> None:
        for k, (d, data) in enumerate(q):
            deliver(d, data, in_dir, stage, wrng)
            if k % wrng.randint(5, 40) == 0:  # bursts with pauses between them
                time.sleep(wrng.uniform(0.2, 1.5))

    threads = [
        threading.Thread(target=writer, args=(q, random.Random(args.seed * 100 + i))) for i, q in enumerate(queues)
    ]
    t_start = time.time()
    for t in threads:
        t.start()

    def all_delivered() -> bool:
        return not any(t.is_alive() for t in threads)

    good_rels = [d.rel for d, _ in jobs if d.good]

    def masks_written() -> int:
        return sum((out_dir / rel).exists() for rel in good_rels)

    # Kill i comes once (i+1)/(kills+1) of the good scans have masks, and at least 2 s into each daemon's
    # life: in the middle of the stream, while scans are being written, read and segmented.
    for k in range(args.kills):
        target = len(good_rels) * (k + 1) // (args.kills + 1)
        while masks_written() < target or time.time() - runs[-1].started < 2.0:
            runs[-1].sample_rss()
            time.sleep(0.25)
        runs[-1].kill()
        print(f"  kill -9 at {time.time() - t_start:.1f} s ({masks_written()} masks so far); restarting")
        runs.append(start_daemon(len(runs)))
    while not all_delivered():
        runs[-1].sample_rss()
        time.sleep(0.5)
    delivered.set()
    print(f"  all {len(jobs)} scans delivered after {time.time() - t_start:.1f} s; waiting for the daemon")

    good = [d for d, _ in jobs if d.good]
    bad = [d for d, _ in jobs if not d.good]

    def finished() -> bool:
        return all((out_dir / d.rel).exists() for d in good) and all(
            (out_dir / f"{d.rel}.error.txt").exists() for d in bad
        )

    deadline = time.time() + 600
    while not finished() and time.time() < deadline:
        runs[-1].sample_rss()
        time.sleep(0.5)
    for _ in range(4):  # let late events and one more rescan pass: anything repeated would show
        runs[-1].sample_rss()
        time.sleep(3)
    code = runs[-1].stop()

    ok_lines: Counter = Counter()
    fail_lines: Counter = Counter()
    for r in runs:
        for line in r.log.read_text().splitlines():
            line = STAMP.sub("", line)  # a daemon's console lines start with the time (off journald)
            if line.startswith("ok "):
                ok_lines[line.split()[1]] += 1
            elif line.startswith("FAIL "):
                fail_lines[line.split()[1].rstrip(":")] += 1
    written = [d for d in good if (out_dir / d.rel).exists()]
    lost = [d.rel for d in good if not (out_dir / d.rel).exists()]
    repeated = [rel for rel, c in ok_lines.items() if c > 1]
    torn = []
    for d in written:
        m = cv2.imread(str(out_dir / d.rel), cv2.IMREAD_UNCHANGED)
        if m is None or m.shape != d.size_hw:
            torn.append(d.rel)
    torn += [str(p) for p in out_dir.rglob("*.tmp")]
    named = [d for d in bad if (out_dir / f"{d.rel}.error.txt").exists()]
    good_named_bad = [d.rel for d in good if (out_dir / f"{d.rel}.error.txt").exists()]
    latencies = sorted((out_dir / d.rel).stat().st_mtime - d.done_at for d in written)
    recovered = 0
    if (out_dir / ".edge-seg" / "ledger.sqlite").exists():
        recovered = sum(r["recovered"] for r in read_history(out_dir))
    final = runs[-1]

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else float("nan")

    kinds = Counter(d.kind for d, _ in jobs)
    print()
    print("| figure | value |")
    print("| --- | --- |")
    print(f"| scans delivered | {len(jobs)} ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))}) |")
    print(f"| good scans expected | {len(good)} |")
    print(f"| masks written | {len(written)} |")
    print(f"| lost | {len(lost)} |")
    print(f"| repeated | {len(repeated)} |")
    print(f"| torn (undecodable, wrong size, or temp files left) | {len(torn)} |")
    print(f"| bad scans named (error record) | {len(named)} of {len(bad)} |")
    print(f"| good scans wrongly given an error record | {len(good_named_bad)} |")
    print(f"| daemon kill -9 / restarts | {args.kills} |")
    print(f"| scans recovered as done after a kill (outputs written, record missing) | {recovered} |")
    print(f"| latency write-complete -> mask p50 / p95 | {pct(0.5):.2f} s / {pct(0.95):.2f} s |")
    if final.rss:
        print(
            f"| RSS of the last daemon at start / end ({final.rss[-1][0]:.0f} s) | "
            f"{final.rss[0][1]} MB / {final.rss[-1][1]} MB |"
        )
        points = [final.rss[round(i * (len(final.rss) - 1) / 4)] for i in range(5)]
        print("| RSS of the last daemon over its life | " + ", ".join(f"{t:.0f} s: {m} MB" for t, m in points) + " |")
    print(f"| peak RSS over all daemons | {max((m for r in runs for _, m in r.rss), default=0)} MB |")
    print(f"| final daemon exit code (SIGTERM) | {code} |")
    if lost[:5] or repeated[:5] or torn[:5] or good_named_bad[:5]:
        print(
            "examples:",
            {"lost": lost[:5], "repeated": repeated[:5], "torn": torn[:5], "good with error": good_named_bad[:5]},
        )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
