"""The review page for a large run: how long edge-seg takes to write it, and Chromium to render it.

    python -m bench.review               # 2,000 scans (default), pages of 200 cards
    python -m bench.review --scans 5000

The run: the bundled model segments 64 DDTI test scans with ``--report`` once; their outputs (report,
overlay, thumbnail, plain view) are then copied under new names until OUT holds ``--scans`` scans, 1 %
of them failed (an error record), all in a temporary folder. Printed, never asserted: the time to
write every page (cold: every report read; warm: a daemon's rewrite, nothing changed), and, in headless
Chromium loading ``file://.../index.html``, the time from navigation to the load event (the page's
``performance`` navigation entry) for the first page of :data:`edge_runtime.outputs.page.PAGE_SIZE`
cards, and for all the scans on one page. Each figure is the median of ``--repeat`` loads.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__main__" and not __package__:  # `python bench/review.py`: run as `python -m bench.review`
    from common import run_as_module  # type: ignore[import-not-found]  # (this file's folder is on sys.path)

    run_as_module("bench.review")

SEED_SCANS = 64


def build_out(root: Path, scans: int) -> Path:
    """OUT with ``scans`` scans: 64 real ones segmented, the rest copies of their outputs under new names."""
    from bench.common import ddti_root, pick_scans, stage_scans

    src = stage_scans(pick_scans(ddti_root(), SEED_SCANS), root / "in")
    out = root / "out"
    subprocess.run([sys.executable, "-m", "edge_runtime", str(src), "--out", str(out), "--report", "-q"], check=True)
    reports = sorted((out / "reports").glob("*.json"))
    failed = max(1, scans // 100)
    for i in range(len(reports), scans):
        rel = f"copies/{i:05d}.png"
        if i < len(reports) + failed:
            (out / "copies").mkdir(exist_ok=True)
            text = f"scan: {rel}\nreason: truncated PNG: the file ends before its IEND chunk\ntime: -\nsize: 10 bytes\n"
            (out / "copies" / f"{i:05d}.png.error.txt").write_text(text)
            continue
        seed = reports[i % len(reports)]
        report = json.loads(seed.read_text())
        stem = seed.stem
        report["scan"]["path"] = rel
        report["frames"][0]["overlay"] = f"overlays/copies/{i:05d}.png"
        dest = out / "reports" / "copies"
        dest.mkdir(parents=True, exist_ok=True)
        (dest / f"{i:05d}.json").write_text(json.dumps(report))
        for suffix in (".png", ".thumb.jpg", ".plain.jpg"):
            (out / "overlays" / "copies").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / "overlays" / f"{stem}{suffix}", out / "overlays" / "copies" / f"{i:05d}{suffix}")
    return out


def load_seconds(url: str, repeat: int) -> tuple[float, float, int]:
    """Median seconds from navigation to the load event, the same for DOMContentLoaded, and the cards shown."""
    from tests.browser import Browser

    loads, ready = [], []
    cards = 0
    with Browser() as browser:
        for _ in range(repeat):
            browser.open("about:blank")
            browser.open(url)
            nav = browser.js(
                "(() => { const n = performance.getEntriesByType('navigation')[0]; "
                "return [n.loadEventEnd, n.domContentLoadedEventEnd]; })()"
            )
            loads.append(nav[0] / 1000.0)
            ready.append(nav[1] / 1000.0)
            cards = browser.js("document.querySelectorAll('#cards .card').length")
    return statistics.median(loads), statistics.median(ready), cards


def main() -> None:
    from bench.report import table
    from edge_runtime.outputs.page import PAGE_SIZE, ReviewPage, RunInfo

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scans", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edge-seg-bench-review-") as tmp:
        out = build_out(Path(tmp), args.scans)
        info = RunInfo(command=["edge-seg", "IN", "--out", "OUT", "--report"], started=time.time(), model="bench")
        info.finished = time.time()
        page = ReviewPage(out)
        t0 = time.perf_counter()
        pages = page.write(info)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        page.write(info)
        warm = time.perf_counter() - t0
        first = load_seconds(pages[0].as_uri(), args.repeat)
        size_first = pages[0].stat().st_size
        ReviewPage(out, page_size=args.scans).write(info)  # every card on index.html
        whole = load_seconds((out / "index.html").as_uri(), args.repeat)
        size_whole = (out / "index.html").stat().st_size
    rows = [
        ["write every page, cold (reads every report)", f"{cold:.2f} s", f"{len(pages)} pages"],
        ["write every page, warm (a daemon's rewrite)", f"{warm:.2f} s", ""],
        [
            f"Chromium: first page ({PAGE_SIZE} cards) to load event",
            f"{first[0]:.2f} s",
            f"DOMContentLoaded {first[1]:.2f} s; {first[2]} cards, {size_first / 1e3:.0f} kB",
        ],
        [
            f"Chromium: all {args.scans:,} cards on one page to load event",
            f"{whole[0]:.2f} s",
            f"DOMContentLoaded {whole[1]:.2f} s; {whole[2]} cards, {size_whole / 1e6:.1f} MB",
        ],
    ]
    print(f"review page, {args.scans:,} scans ({max(1, args.scans // 100)} failed), median of {args.repeat} loads")
    print(table(["step", "time", "notes"], rows))


if __name__ == "__main__":
    main()
