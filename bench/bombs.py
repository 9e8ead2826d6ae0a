"""Peak memory of each decompression bomb (issue 27): one one-shot ``edge-seg`` process per bomb, its peak RSS.

    python -m bench.bombs                      # this checkout
    python -m bench.bombs --source OLD_TREE    # another edge_runtime (e.g. `git archive` of main), for "before"

Each bomb (built by tests/bombs.py, a few MB at most) is put alone into a temporary IN and segmented with the
bundled model; the process runs under an address-space cap (``--cap-gb``, default 6) so that a runtime that
does decode a bomb is stopped by the cap instead of taking the machine. Printed per bomb: the process's peak
RSS (``ru_maxrss`` of the child), its wall time, its exit code and its FAIL line.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tests import bombs
from tests.helpers import write_dicom


def _dicom_jpeg_bomb(path: Path) -> None:
    from pydicom.encaps import encapsulate

    write_dicom(path, np.zeros((64, 64), np.uint8), jpeg=True)
    import pydicom

    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([bombs.jpeg_declaring(50000, 50000)])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)


def _dicom_extra_frames(path: Path, side: int, frames: int) -> None:
    write_dicom(path, np.zeros((side, side), np.uint8), pixel_data=bytes(side * side * frames))


CASES: dict[str, Callable[[Path], object]] = {
    "tiff: 1x1 page + 100 pages of 6000x6000": lambda p: (p / "bomb.tif").write_bytes(bombs.tiff_bomb()),
    "apng: 100 frames of 6000x6000": lambda p: (p / "bomb.png").write_bytes(bombs.apng_bomb()),
    "gif: 100 frames of 6000x6000": lambda p: (p / "bomb.gif").write_bytes(bombs.gif_bomb()),
    "webp: 100 frames of 6000x6000": lambda p: (p / "bomb.webp").write_bytes(bombs.webp_bomb()),
    "jpeg: SOF says 50000x50000": lambda p: (p / "bomb.jpg").write_bytes(bombs.jpeg_declaring(50000, 50000)),
    "jpeg 2000: SIZ says 50000x50000": lambda p: (p / "bomb.jp2").write_bytes(bombs.j2k_declaring(50000, 50000)),
    "dicom 64x64, its JPEG frame says 50000x50000": lambda p: _dicom_jpeg_bomb(p / "bomb.dcm"),
    "dicom 1 frame of 2000x2000, pixel data for 45": lambda p: _dicom_extra_frames(p / "bomb.dcm", 2000, 45),
    "dicom 1 frame of 10x10, pixel data for 1134": lambda p: _dicom_extra_frames(p / "bomb.dcm", 10, 1134),
}


def run_case(name: str, make: Callable[[Path], object], source: Path | None, cap_gb: float) -> str:
    with tempfile.TemporaryDirectory(prefix="edge-seg-bomb-") as tmp:
        src, out = Path(tmp) / "in", Path(tmp) / "out"
        src.mkdir()
        make(src)
        env = dict(os.environ)
        if source is not None:
            env["PYTHONPATH"] = str(source)
        cap = int(cap_gb * 2**30)

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

        log = Path(tmp) / "log.txt"
        start = time.perf_counter()
        with log.open("w") as fh:
            proc = subprocess.Popen(
                [sys.executable, "-m", "edge_runtime", str(src), "--out", str(out), "-q"],
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=tmp,  # not the checkout: `-m` puts the working folder first on sys.path
                preexec_fn=limit,
            )
            _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS, not all children's
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        peak_mb = usage.ru_maxrss / 1024
        text = log.read_text(errors="replace")
        lines = [ln for ln in text.splitlines() if "FAIL" in ln or "Error" in ln or "error" in ln]
        said = (lines[0] if lines else text.strip().splitlines()[-1] if text.strip() else "")[:150]
        return f"{name:48} peak {peak_mb:8.0f} MB  {wall:6.1f} s  exit {proc.returncode}  {said}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, help="a folder holding another edge_runtime package to measure")
    parser.add_argument("--cap-gb", type=float, default=6.0, help="address-space cap of each run")
    parser.add_argument("--only", help="run the cases whose name contains this")
    args = parser.parse_args()
    for name, make in CASES.items():
        if args.only and args.only not in name:
            continue
        print(run_case(name, make, args.source, args.cap_gb), flush=True)


if __name__ == "__main__":
    main()
