"""A C-STORE over ``--max-instance-mb`` (issue 27): the daemon's peak RSS while it receives and refuses it.

    python -m bench.dicom_limit                     # this checkout
    python -m bench.dicom_limit --source OLD_TREE   # another edge_runtime, for "before"

The real daemon (``--watch`` with ``--dicom-listen`` and ``--max-instance-mb 8``, the tiny test model) gets one
instance of about 190 MiB from DCMTK's ``storescu``; its RSS is sampled every 5 ms with psutil. Printed: RSS
before and at its peak, storescu's exit and last line, and the daemon's refusal line. Needs DCMTK.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from tests.helpers import make_tiny_model, us_ids, write_dicom


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, help="a folder holding another edge_runtime package to measure")
    parser.add_argument("--side", type=int, default=14142, help="the instance is SIDE x SIDE 8-bit pixels")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edge-seg-limit-") as tmp:
        work = Path(tmp)
        big = write_dicom(work / "big.dcm", np.zeros((args.side, args.side), np.uint8), **us_ids())
        model = make_tiny_model(work / "tiny.onnx")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = dict(os.environ)
        if args.source is not None:
            env["PYTHONPATH"] = str(args.source)
        (work / "in").mkdir()
        cmd = [sys.executable, "-m", "edge_runtime", "--watch", str(work / "in"), "--out", str(work / "out")]
        cmd += ["--model", str(model), "--dicom-listen", f"127.0.0.1:{port}", "--max-instance-mb", "8"]
        log = work / "daemon.log"
        with log.open("w") as fh:
            daemon = subprocess.Popen(cmd, stdout=fh, stderr=fh, env=env, cwd=work)
        process = psutil.Process(daemon.pid)
        while "listening" not in log.read_text() and daemon.poll() is None:
            time.sleep(0.1)
        base = process.memory_info().rss
        peak, done = [base], threading.Event()

        def sample() -> None:
            while not done.is_set():
                try:
                    peak[0] = max(peak[0], process.memory_info().rss)
                except psutil.Error:
                    return
                time.sleep(0.005)

        sampler = threading.Thread(target=sample)
        sampler.start()
        sent = subprocess.run(
            ["/usr/bin/storescu", "-aet", "SCANNER", "-aec", "EDGESEG", "127.0.0.1", str(port), str(big)],
            capture_output=True,
            text=True,
        )
        time.sleep(1)
        done.set()
        sampler.join()
        daemon.terminate()
        daemon.wait(60)
        said = sent.stderr.strip().splitlines()[-1] if sent.stderr.strip() else ""
        size = big.stat().st_size / 2**20
        print(f"instance {size:.0f} MiB: daemon RSS {base / 2**20:.0f} -> peak {peak[0] / 2**20:.0f} MiB")
        print(f"storescu exit {sent.returncode}: {said}")
        print(next((ln for ln in log.read_text().splitlines() if "refused" in ln), "(no refusal line)"))


if __name__ == "__main__":
    main()
