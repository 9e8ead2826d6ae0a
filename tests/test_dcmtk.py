"""The DICOM node with DCMTK on both sides, as a hospital would try it: ``echoscu`` and ``storescu`` send real
DDTI scans (wrapped as ultrasound DICOM in a temporary folder) to the daemon, ``storescp`` plays the PACS
that receives the SEG and SR, and ``dciodvfy`` (dicom3tools) checks them.

Skipped, with the reason, only where DCMTK or dicom3tools is missing locally; CI installs both (.ci/run).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import pytest

pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")

from pydicom import dcmread

from tests.dicomnet import dciodvfy_errors, free_port, need_tool
from tests.helpers import us_ids, wait_for, write_dicom

N_SCANS = 3


def wrap_ddti(ddti: Path, folder: Path, n: int) -> list[Path]:
    """The first ``n`` DDTI test scans as ultrasound DICOM (one study; the last one JPEG Baseline)."""
    images = sorted((ddti / "test" / "image").glob("*.png"))[:n]
    study = us_ids()["StudyInstanceUID"]
    out = []
    for i, png in enumerate(images):
        gray = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
        ids = us_ids(study=study, InstanceNumber=i + 1, PatientID="DDTI-TEST")
        out.append(write_dicom(folder / f"{png.stem}.dcm", gray, jpeg=i == n - 1, **ids))
    return out


@pytest.mark.slow
def test_dcmtk_peers_send_scans_and_receive_valid_seg_and_sr(tmp_path, ddti):
    echoscu, storescu, storescp = need_tool("echoscu"), need_tool("storescu"), need_tool("storescp")
    need_tool("dciodvfy")
    sources = wrap_ddti(ddti, tmp_path / "send", N_SCANS)
    (tmp_path / "in").mkdir()
    (tmp_path / "pacs").mkdir()
    listen, pacs_port = free_port(), free_port()
    pacs_log = open(tmp_path / "pacs.log", "w")  # noqa: SIM115
    pacs = subprocess.Popen(
        [storescp, "-aet", "PACS", "-od", str(tmp_path / "pacs"), str(pacs_port)], stdout=pacs_log, stderr=pacs_log
    )
    log = tmp_path / "daemon.log"
    fh = open(log, "w")  # noqa: SIM115
    cmd = [sys.executable, "-m", "edge_runtime", "--watch", str(tmp_path / "in"), "--out", str(tmp_path / "out")]
    cmd += ["--dicom-listen", f"127.0.0.1:{listen}", "--allow-ae", "ECHOSCU", "STORESCU"]
    cmd += ["--send-to", f"PACS@127.0.0.1:{pacs_port}", "--settle", "0.5"]
    daemon = subprocess.Popen(cmd, stdout=fh, stderr=fh)
    try:
        wait_for(lambda: "watching" in log.read_text() or daemon.poll() is not None, "the daemon to start", 120)
        assert daemon.poll() is None, log.read_text()
        host = ["-aec", "EDGESEG", "127.0.0.1", str(listen)]
        assert subprocess.run([echoscu, *host], capture_output=True, timeout=60).returncode == 0
        # -xy: also propose JPEG Baseline, so the compressed scan goes as it is
        sent = subprocess.run([storescu, "-xy", *host, *map(str, sources)], capture_output=True, text=True, timeout=120)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        refused = subprocess.run(
            [storescu, "-aet", "INTRUDER", *host, str(sources[0])], capture_output=True, timeout=60
        )
        assert refused.returncode != 0
        wait_for(lambda: len(list((tmp_path / "pacs").iterdir())) >= 2 * N_SCANS, "the SEG and SR at the PACS", 300)
    finally:
        daemon.terminate()
        daemon.wait(60)
        fh.close()
        pacs.terminate()
        pacs.wait(30)
        pacs_log.close()
    text = log.read_text()
    assert "association rejected from AE 'INTRUDER': calling AE title not allowed" in text
    assert "Traceback" not in text

    received = [dcmread(p) for p in sorted((tmp_path / "pacs").iterdir())]
    segs = {ds.SOPInstanceUID: ds for ds in received if ds.Modality == "SEG"}
    srs = [ds for ds in received if ds.Modality == "SR"]
    assert len(segs) == len(srs) == N_SCANS
    sent_uids = {dcmread(s).SOPInstanceUID for s in sources}
    seg_sources = {
        s.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID for s in segs.values()
    }
    assert seg_sources == sent_uids  # every instance sent came back as a SEG that references it
    for sr in srs:
        evidence = {
            inst.ReferencedSOPInstanceUID
            for study in sr.CurrentRequestedProcedureEvidenceSequence
            for series in study.ReferencedSeriesSequence
            for inst in series.ReferencedSOPSequence
        }
        assert len(evidence & sent_uids) == 1 and len(evidence & set(segs)) == 1  # its scan and its SEG
    for p in sorted((tmp_path / "pacs").iterdir()):
        assert dciodvfy_errors(p) == [], p.name
    # The masks are in OUT as for any other scan.
    assert len(list((tmp_path / "out").rglob("*.png"))) == N_SCANS
