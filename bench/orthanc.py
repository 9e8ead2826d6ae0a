"""Orthanc to edge-seg and back: the time from Orthanc's C-STORE of a study to the last result stored.

A real Orthanc (Debian's ``orthanc`` and ``orthanc-dicomweb``, on loopback with a temporary
configuration; :mod:`tests.orthanc`) holds a study of DDTI test scans wrapped as scanner-like
ultrasound instances (:func:`tests.helpers.scanner_us_ids`) and one minimal instance (UIDs only). It
routes them to a real ``edge-seg --watch ... --dicom-listen ... --dicom-results seg,sr,sc`` daemon (the
bundled model unless ``--model``) by its own ``/modalities/edgeseg/store``, and the daemon sends each
scan's SEG, SR and Secondary Capture back by C-STORE, or by STOW-RS (``--send-to URL``). The clock
starts when the store request is made and stops when Orthanc's ``/statistics`` first counts every
result (polled every 50 ms). Every result is then checked (:func:`tests.test_orthanc.check_results`:
each source has its SEG, SR and SC in its own patient and study, no dciodvfy errors), and dciodvfy's
whole output for one SEG, SR and SC of the last run is printed.

    python -m bench.orthanc [--n 10] [--repeat 3] [--model M]
"""

from __future__ import annotations

if __package__ in (None, ""):  # python bench/orthanc.py: run as a module of this checkout
    from common import run_as_module

    run_as_module("bench.orthanc")

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import REPO, ddti_root, pick_scans

BUNDLED = REPO / "edge_runtime" / "models" / "ddti-fcn.onnx"


def _study(scans: list[Path], dest: Path) -> list[Path]:
    import cv2
    from pydicom.uid import generate_uid

    from tests.helpers import scanner_us_ids, write_dicom

    study, series = generate_uid(), generate_uid()
    made = []
    for i, png in enumerate(scans):
        gray = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
        ids = scanner_us_ids(study, series, InstanceNumber=i + 1)
        made.append(write_dicom(dest / f"{png.stem}.dcm", gray, pixel_spacing=(0.1, 0.1), **ids))
    gray = cv2.imread(str(scans[0]), cv2.IMREAD_GRAYSCALE)
    uids = {"StudyInstanceUID": generate_uid(), "SeriesInstanceUID": generate_uid()}
    made.append(write_dicom(dest / "minimal.dcm", gray, **uids))
    return made


def one_run(mode: str, scans: list[Path], model: Path, tmp: Path) -> tuple[float, list[Path]]:
    from tests.dicomnet import free_port
    from tests.orthanc import Orthanc
    from tests.test_orthanc import check_results, edge_seg

    listen = free_port()
    pacs = Orthanc(tmp / "orthanc", {"edgeseg": ("EDGESEG", "127.0.0.1", listen)})
    target = f"{pacs.url}/dicom-web" if mode == "stow-rs" else f"ORTHANC@127.0.0.1:{pacs.dicom_port}"
    daemon = edge_seg(tmp, model, listen, target)
    try:
        sources = _study(scans, tmp / "study")
        ids = [pacs.upload(s) for s in sources]
        expected = 4 * len(sources)
        t0 = pacs.store_to("edgeseg", ids)
        while pacs.get("/statistics")["CountInstances"] < expected:
            if time.time() - t0 > 600:
                raise SystemExit(f"no results after 600 s; see {daemon.log}")
            time.sleep(0.05)
        seconds = time.time() - t0
        files = check_results(pacs, sources, tmp)
    finally:
        daemon.stop()
        pacs.stop()
    return seconds, files


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10, help="scanner-like instances in the study (plus one minimal)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--model", type=Path, default=BUNDLED)
    args = p.parse_args()
    scans = pick_scans(ddti_root(), args.n)
    print(f"load average {os.getloadavg()[0]:.1f}; {args.n} scanner-like instances + 1 minimal; model {args.model}")
    files: list[Path] = []
    for mode in ("c-store", "stow-rs"):
        times = []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                seconds, files = one_run(mode, scans, args.model, Path(tmp))
                times.append(seconds)
                if mode == "stow-rs" and len(times) == args.repeat:
                    for kind in ("SEG", "SR", "OT"):
                        f = next(f for f in files if f.name.startswith(f"{kind}-"))
                        out = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True)
                        print(f"--- dciodvfy {kind} ({f.name}):\n{(out.stdout + out.stderr).strip()}")
        runs = " ".join(f"{t:.2f}" for t in times)
        median = statistics.median(times)
        print(f"{mode}: Orthanc's send -> last of {3 * (args.n + 1)} results stored: median {median:.2f} s ({runs})")


if __name__ == "__main__":
    main()
