"""The ledger as it ages: start-up, memory, file size and recording cost after 10k, 100k and 1M scans.

    python -m bench.ledger                      # 10k, 100k, 1M; before (JSON lines) and after (SQLite)
    python -m bench.ledger --sizes 10000 --repeats 1

"Before" is the JSON-lines ledger of commit ``--before`` (default: the last commit on main with it),
taken out with ``git archive`` into a temporary folder and put first on ``PYTHONPATH``; "after" is
this checkout. For each size a ledger of that many done scans is written as the JSON-lines ledger
would hold it after compaction (one record a scan, realistic paths and hashes); the SQLite ledger is
made from it by the one-time migration (timed too). Then, for each:

* **one-shot start-up**: ``edge-seg IN --out OUT`` (the bundled model) over an IN of 2 new scans, a
  new process each time, wall time from start to exit and the process's peak RSS (``wait4``);
* **ledger open**: ``Ledger(OUT)`` alone in a fresh process, and that process's peak RSS;
* **recording**: per scan, a ``begin`` and a ``done`` record as the processor writes them (the done
  records of a batch of 4 in one transaction where the ledger has batches), and apart from that one
  sync a batch (an fsync: what makes the records survive a power cut), over 400 scans;
* the ledger's size on disk.

Medians of ``--repeats`` runs are printed as a Markdown table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

if __name__ == "__main__" and not __package__:  # `python bench/ledger.py`: run as `python -m bench.ledger`
    from common import run_as_module  # type: ignore[import-not-found]  # (this file's folder is on sys.path)

    run_as_module("bench.ledger")

from bench.common import REPO, ddti_root, pick_scans

#: the last commit whose ledger is the JSON-lines one (main before the SQLite ledger)
BEFORE = "928794e"

#: run in a fresh process with the tree under test first on PYTHONPATH: open, then record
PROBE = r"""
import json, resource, sys, time
from pathlib import Path
t0 = time.perf_counter()
from edge_runtime.job.ledger import Ledger, ScanState
ledger = Ledger(Path(sys.argv[1]))
opened = time.perf_counter() - t0
rss_open = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
n, batch = int(sys.argv[2]), 4
states = [ScanState(f"probe/{i:06d}.png", 123456, 1700000000000000000 + i, "%064x" % i, "0123456789abcdef",
                    "fedcba9876543210", 1) for i in range(n)]
has_batch = hasattr(ledger, "batch")
recording = syncing = 0.0
for start in range(0, n, batch):
    group = states[start:start + batch]
    t1 = time.perf_counter()
    for s in group:
        ledger.begin(s, [s.rel])
    if has_batch:
        with ledger.batch():
            for s in group:
                ledger.done(s, [s.rel])
    else:
        for s in group:
            ledger.done(s, [s.rel])
    t2 = time.perf_counter()
    ledger.sync()
    recording, syncing = recording + t2 - t1, syncing + time.perf_counter() - t2
ledger.close()
print(json.dumps({"open_s": opened, "rss_open_mb": rss_open, "record_us": recording / n * 1e6,
                  "sync_us": syncing / n * 1e6}))
"""


#: opening the new ledger on an OUT that holds only ledger.jsonl: the one-time migration
MIGRATE = "import sys, pathlib, edge_runtime.job.ledger as m; m.Ledger(pathlib.Path(sys.argv[1])).close()"


def extract(ref: str, dest: Path) -> Path:
    """``edge_runtime/`` of commit ``ref`` under ``dest`` (for PYTHONPATH)."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "edge_runtime"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def write_jsonl(path: Path, n: int) -> None:
    """A compacted JSON-lines ledger of ``n`` done scans, as the old ledger wrote its records."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = 1_700_000_000_000_000_000
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            rel = f"{2024 + i // 400_000}/{(i // 1000) % 400:03d}/patient-{i // 40:06d}/scan-{i:07d}.png"
            rec = {
                "rel": rel,
                "event": "done",
                "size": 60_000 + i % 5000,
                "mtime_ns": t + i * 1_000_000,
                "sha256": f"{i * 2654435761 % (1 << 64):016x}" * 4,
                "sig": "0123456789abcdef",
                "model": "fedcba9876543210",
                "frames": 1,
                "outputs": [rel, f"reports/{rel[:-4]}.json"],
                "time": "2026-01-01T00:00:00Z",
                "time_ns": t + i * 1_000_000 + 5,
            }
            fh.write(json.dumps(rec, sort_keys=True) + "\n")


def measured(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Run ``cmd`` from a fresh helper process, so its peak RSS is its own: (wall s, peak RSS MB, stdout)."""
    helper = (
        "import json, resource, subprocess, sys, time\n"
        "t0 = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True)\n"
        "wall = time.perf_counter() - t0\n"
        "if p.returncode: sys.stderr.write(p.stderr.decode()[-2000:]); sys.exit(p.returncode)\n"
        "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
        "print(json.dumps({'wall': wall, 'rss': rss, 'out': p.stdout.decode()}))\n"
    )
    # From a neutral folder: `python -c` and `-m` put the current folder first on sys.path, which from the
    # checkout's root would import this checkout's edge_runtime even for "before".
    res = subprocess.run(
        [sys.executable, "-c", helper, *cmd], env=env, capture_output=True, text=True, cwd=tempfile.gettempdir()
    )
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr[-2000:]}")
    got = json.loads(res.stdout)
    return got["wall"], got["rss"], got["out"]


def check_tree(tree: Path | None, env: dict[str, str]) -> None:
    """Make sure the tree under test is the one imported."""
    code = "import edge_runtime.job.ledger as m; print(m.__file__)"
    got = Path(measured([sys.executable, "-c", code], env)[2].strip()).resolve()
    want = ((tree or REPO) / "edge_runtime" / "job" / "ledger.py").resolve()
    if got != want:
        raise SystemExit(f"imported {got}, not {want}")


def ledger_bytes(state: Path) -> int:
    return sum(p.stat().st_size for p in state.iterdir() if p.is_file() and p.name.startswith("ledger"))


def bench_one(tree: Path | None, label: str, out: Path, scans: list[Path], work: Path, repeats: int) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in [*([tree] if tree else []), REPO])
    check_tree(tree, env)
    size = ledger_bytes(out / ".edge-seg")
    walls, rsss = [], []
    for r in range(repeats):
        src = work / f"in-{out.name}-{r}"
        src.mkdir()
        for i, scan in enumerate(scans):
            shutil.copy2(scan, src / f"new-{label}-{r}-{i}.png")
        wall, rss, _ = measured([sys.executable, "-m", "edge_runtime", str(src), "--out", str(out)], env)
        walls.append(wall)
        rsss.append(rss)
    opens, open_rss, records, syncs = [], [], [], []
    for _ in range(repeats):
        probe_out = json.loads(measured([sys.executable, "-c", PROBE, str(out), "400"], env)[2])
        opens.append(probe_out["open_s"])
        open_rss.append(probe_out["rss_open_mb"])
        records.append(probe_out["record_us"])
        syncs.append(probe_out["sync_us"])
    return {
        "oneshot_s": statistics.median(walls),
        "oneshot_rss_mb": max(rsss),
        "open_s": statistics.median(opens),
        "open_rss_mb": max(open_rss),
        "record_us": statistics.median(records),
        "sync_us": statistics.median(syncs),
        "bytes": size,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--before", default=BEFORE, help="commit with the JSON-lines ledger (default: %(default)s)")
    ap.add_argument("--work", type=Path, help="temporary folder (default: the system's)")
    ap.add_argument("--skip-before", action="store_true", help="measure this checkout's ledger only")
    args = ap.parse_args()
    scans = pick_scans(ddti_root(), 2)
    work = Path(tempfile.mkdtemp(prefix="edge-seg-ledger-bench-", dir=args.work))
    rows = []
    try:
        before_tree = extract(args.before, work / "before")
        for n in args.sizes:
            base = work / f"jsonl-{n}"
            write_jsonl(base / ".edge-seg" / "ledger.jsonl", n)
            old_out, new_out = work / f"before-{n}", work / f"after-{n}"
            shutil.copytree(base, old_out)
            shutil.copytree(base, new_out)
            shutil.rmtree(base)
            env = dict(os.environ, PYTHONPATH=str(REPO))
            code = MIGRATE
            mig_s, mig_rss, _ = measured([sys.executable, "-c", code, str(new_out)], env)
            (new_out / ".edge-seg" / "ledger.jsonl.migrated").unlink()
            before = None if args.skip_before else bench_one(before_tree, "before", old_out, scans, work, args.repeats)
            shutil.rmtree(old_out)
            after = bench_one(None, "after", new_out, scans, work, args.repeats)
            shutil.rmtree(new_out)
            rows.append((n, before, after, mig_s, mig_rss))
            print(f"  {n} scans: before {before}; after {after}; migration {mig_s:.1f} s, {mig_rss:.0f} MB", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(
        "| scans in the ledger | ledger | one-shot over 2 new scans: wall | its peak RSS | `Ledger()` open | "
        "its peak RSS | recording a scan (begin + done) | sync a batch of 4, per scan | file size |"
    )
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, before, after, _, _ in rows:
        for name, r in (("JSON lines (before)", before), ("SQLite (after)", after)):
            if r is None:
                continue
            print(
                f"| {n:,} | {name} | {r['oneshot_s']:.2f} s | {r['oneshot_rss_mb']:.0f} MB | "
                f"{r['open_s'] * 1000:.0f} ms | {r['open_rss_mb']:.0f} MB | {r['record_us']:.0f} us | "
                f"{r['sync_us']:.0f} us | "
                f"{r['bytes'] / 1e6:.1f} MB |"
            )
    print()
    print("| scans | one-time migration: wall | its peak RSS |")
    print("| ---: | ---: | ---: |")
    for n, _, _, mig_s, mig_rss in rows:
        print(f"| {n:,} | {mig_s:.1f} s | {mig_rss:.0f} MB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
