"""PNG encoding of masks: OpenCV's default filters vs the runtime's settings (RLE, no row filter).

    python -m bench.encode            # masks the bundled model writes for 64 DDTI test scans

Prints ms per mask and bytes per mask for each setting. Figures are printed, never asserted.
"""

from __future__ import annotations

import statistics
import time

import cv2

if __name__ == "__main__" and not __package__:  # `python bench/encode.py`: run as `python -m bench.encode`
    from common import run_as_module  # type: ignore[import-not-found]  # (this file's folder is on sys.path)

    run_as_module("bench.encode")

SETTINGS = {
    "OpenCV default (level 1, adaptive filters)": [cv2.IMWRITE_PNG_COMPRESSION, 1],
    "OpenCV default (level 3, adaptive filters)": [cv2.IMWRITE_PNG_COMPRESSION, 3],
}


def main() -> None:
    from bench.common import ddti_root, pick_scans
    from bench.report import table
    from edge_runtime.core.segmenter import Segmenter
    from edge_runtime.files import scans as scanio
    from edge_runtime.files.scans import read_scan

    SETTINGS["edge-seg (level 1, RLE, no filter)"] = scanio._PNG_GRAY
    seg = Segmenter()
    masks = [seg.segment(read_scan(p).frames[0]).masks[seg.threshold] for p in pick_scans(ddti_root(), 64)]
    rows = []
    for name, flags in SETTINGS.items():
        times, sizes = [], []
        for _ in range(5):
            for m in masks:
                t0 = time.perf_counter()
                _, buf = cv2.imencode(".png", m, flags)
                times.append((time.perf_counter() - t0) * 1000.0)
                sizes.append(len(buf))
        rows.append([name, f"{statistics.median(times):.3f}", f"{statistics.mean(sizes) / 1024:.1f}"])
    print(f"{len(masks)} masks of the bundled model on DDTI scans (median of 5 rounds)")
    print(table(["PNG setting", "ms/mask", "KiB/mask"], rows))


if __name__ == "__main__":
    main()
