"""What a one-shot run spends on imports: ``python -X importtime`` of a real ``edge-seg`` process (issue 30).

    python -m bench.imports                      # this checkout
    python -m bench.imports --runtime OLD_TREE   # edge_runtime from another checkout (before / after)

Runs ``edge-seg IN --out OUT`` on one DDTI scan ``--repeats`` times in fresh processes (after one
unmeasured run, for the page cache and byte code) and prints, as medians: the whole import time (the sum
of every module's own time), and each top-level package's share, the optional ones first. Figures only.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from bench.common import ddti_root, pick_scans, stage_scans

#: imported only by the runs that need them (issue 30)
OPTIONAL = ("jinja2", "pydicom", "highdicom", "pynetdicom", "dask", "distributed", "tqdm", "watchdog")
LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def one_run(in_dir: Path, out: Path, env: dict[str, str], extra: list[str]) -> dict[str, float]:
    """Milliseconds of import time per top-level package (self times summed) in one real run."""
    cmd = [sys.executable, "-X", "importtime", "-m", "edge_runtime", str(in_dir), "--out", str(out), "-q", *extra]
    # cwd: not the checkout, which ``-m`` would put first on sys.path (before --runtime's)
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True, cwd=in_dir.parent)
    per: dict[str, float] = defaultdict(float)
    for line in res.stderr.splitlines():
        m = LINE.match(line)
        if m:
            per[m.group(4).split(".")[0]] += int(m.group(1)) / 1000.0
    return per


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--runtime", type=Path, help="put this checkout first on PYTHONPATH (an older edge_runtime)")
    p.add_argument("--report", action="store_true", help="measure an edge-seg --report run instead")
    args = p.parse_args()
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if args.runtime:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(args.runtime.resolve()), env.get("PYTHONPATH", "")]))
    extra = ["--report"] if args.report else []
    with tempfile.TemporaryDirectory(prefix="edge-seg-imports-") as tmp:
        work = Path(tmp)
        in_dir = stage_scans(pick_scans(ddti_root(), 1), work / "in")
        one_run(in_dir, work / "warm", env, extra)
        runs = [one_run(in_dir, work / f"out{i}", env, extra) for i in range(args.repeats)]
    packages = sorted({k for r in runs for k in r}, key=lambda k: -statistics.median(r.get(k, 0.0) for r in runs))
    total = statistics.median(sum(r.values()) for r in runs)
    where = args.runtime or Path(__file__).resolve().parent.parent
    print(f"edge-seg IN --out OUT{' --report' if args.report else ''}, one scan, edge_runtime from {where}")
    print(f"import time, all modules: {total:.0f} ms (median of {args.repeats} processes)")
    print("optional libraries imported: " + (", ".join(k for k in OPTIONAL if k in packages) or "none"))
    print()
    print("| package | ms (median) |")
    print("| --- | --- |")
    for k in packages:
        ms = statistics.median(r.get(k, 0.0) for r in runs)
        if ms >= 1.0 or k in OPTIONAL:
            print(f"| {k}{' (optional)' if k in OPTIONAL else ''} | {ms:.1f} |")


if __name__ == "__main__":
    main()
