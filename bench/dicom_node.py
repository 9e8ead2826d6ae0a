"""The DICOM node's latency: from C-STORE of a single-frame scan to its SEG and SR at the PACS.

A real daemon (``edge-seg --watch IN --out OUT --dicom-listen ... --send-to ...``, the bundled model
unless ``--model``) between a pynetdicom client (the "ultrasound machine") and a pynetdicom storage
SCP (the "PACS"), both in this process, so that one clock stamps the send and the arrivals. DDTI scans
are wrapped as single-frame ultrasound DICOM in a temporary folder and sent one at a time, each once
the previous one's results are in (latency, not throughput). The first instance is shown apart: it
pays for highdicom's first use in the daemon. The daemon runs with ``--report``: its findings give
the scan's own stage times (read to SEG and SR written), the rest is pick-up, queueing and network.

    python -m bench.dicom_node [--n 20] [--model M] [--jpeg]
"""

from __future__ import annotations

if __package__ in (None, ""):  # python bench/dicom_node.py: run as a module of this checkout
    from common import run_as_module

    run_as_module("bench.dicom_node")

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import REPO, ddti_root, pick_scans


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wrap(png: Path, dest: Path, jpeg: bool) -> Path:
    import cv2

    from tests.helpers import us_ids, write_dicom  # the tests' DICOM writer: pydicom, no downloads

    gray = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
    return write_dicom(dest / f"{png.stem}.dcm", gray, jpeg=jpeg, **us_ids(PatientID="BENCH"))


class Pacs:
    """A pynetdicom storage SCP noting when each SEG and SR arrives, by the instance it references."""

    def __init__(self, port: int) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.arrived: dict[tuple[str, str], float] = {}
        self.cond = threading.Condition()
        ae = AE(ae_title="PACS")
        ae.supported_contexts = AllStoragePresentationContexts
        self.server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event) -> int:
        now = time.perf_counter()
        ds = event.dataset
        if ds.Modality == "SEG":
            source = ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
        else:  # the SR's evidence: its scan (and its SEG)
            refs = [
                i.ReferencedSOPInstanceUID
                for st in ds.CurrentRequestedProcedureEvidenceSequence
                for se in st.ReferencedSeriesSequence
                for i in se.ReferencedSOPSequence
                if not str(i.ReferencedSOPClassUID).endswith(".66.4")
            ]
            source = refs[0]
        with self.cond:
            self.arrived[(str(ds.Modality), str(source))] = now
            self.cond.notify_all()
        return 0x0000

    def wait(self, uid: str, timeout: float = 300.0) -> tuple[float, float]:
        end = time.monotonic() + timeout
        with self.cond:
            while not {("SEG", uid), ("SR", uid)} <= self.arrived.keys():
                if not self.cond.wait(max(0.0, end - time.monotonic())):
                    raise SystemExit(f"no SEG and SR for {uid} at the PACS after {timeout:g} s")
            return self.arrived[("SEG", uid)], self.arrived[("SR", uid)]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20, help="instances sent (the first one is shown apart)")
    ap.add_argument("--model", type=Path, help="ONNX model (default: the bundled one)")
    ap.add_argument("--jpeg", action="store_true", help="send JPEG Baseline instead of uncompressed pixels")
    args = ap.parse_args()

    from pydicom import dcmread
    from pynetdicom import AE

    with tempfile.TemporaryDirectory(prefix="edge-seg-bench-dicom-") as tmp:
        work = Path(tmp)
        (work / "send").mkdir()
        (work / "in").mkdir()
        sources = [_wrap(p, work / "send", args.jpeg) for p in pick_scans(ddti_root(), args.n)]
        listen, pacs_port = _free_port(), _free_port()
        pacs = Pacs(pacs_port)
        cmd = [sys.executable, "-m", "edge_runtime", "--watch", str(work / "in"), "--out", str(work / "out")]
        cmd += ["--dicom-listen", f"127.0.0.1:{listen}", "--send-to", f"PACS@127.0.0.1:{pacs_port}", "--report"]
        cmd += ["--model", str(args.model)] if args.model else []
        log = open(work / "daemon.log", "w")  # noqa: SIM115
        daemon = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=REPO)
        try:
            end = time.monotonic() + 120
            while "watching" not in (work / "daemon.log").read_text():
                if daemon.poll() is not None or time.monotonic() > end:
                    raise SystemExit("the daemon did not start:\n" + (work / "daemon.log").read_text())
                time.sleep(0.05)
            ae = AE(ae_title="SCANNER")
            rows = []
            for src in sources:
                ds = dcmread(src)
                ae.requested_contexts = []
                ae.add_requested_context(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
                assoc = ae.associate("127.0.0.1", listen, ae_title="EDGESEG")
                t0 = time.perf_counter()
                status = assoc.send_c_store(ds)
                t_ack = time.perf_counter()
                assoc.release()
                if not status or status.Status != 0:
                    raise SystemExit(f"C-STORE of {src.name} failed: {status}")
                t_seg, t_sr = pacs.wait(str(ds.SOPInstanceUID))
                # The daemon's own account of the scan (its findings report): stage times, SEG and SR included.
                report = work / "out" / "reports" / str(ds.StudyInstanceUID) / f"{ds.SOPInstanceUID}.json"
                stages = json.loads(report.read_text())["timings_ms"]
                rows.append((t_ack - t0, t_seg - t0, t_sr - t0, sum(stages.values()) / 1000, stages["dicom"] / 1000))
        finally:
            daemon.terminate()
            daemon.wait(60)
            log.close()
            pacs.server.shutdown()

    first, rest = rows[0], rows[1:]
    print(
        f"DICOM node latency, {len(rows)} single-frame DDTI scans ({'JPEG Baseline' if args.jpeg else 'uncompressed'})"
    )
    print(f"model: {args.model or 'bundled'}; load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"first instance: ack {first[0] * 1000:.0f} ms, SEG at PACS {first[1]:.2f} s, SR at PACS {first[2]:.2f} s")
    if rest:
        print(f"{'the other ' + str(len(rest)):>16}  {'median':>8} {'p90':>8} {'max':>8}")
        whats = (
            "C-STORE acknowledged",
            "SEG at the PACS",
            "SR at the PACS",
            "daemon: scan's stages",
            "of which SEG+SR",
        )
        for i, what in enumerate(whats):
            vals = [r[i] for r in rest]
            print(f"{what:>22}  {statistics.median(vals):7.3f}s {_pct(vals, 0.9):7.3f}s {max(vals):7.3f}s")


if __name__ == "__main__":
    main()
