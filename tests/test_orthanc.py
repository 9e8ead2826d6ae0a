"""edge-seg between a real PACS and itself: Orthanc routes a study of scanner-like ultrasound instances
(and one minimal instance) to edge-seg by its own C-STORE, and every instance comes back to Orthanc as a
SEG, a SR and a Secondary Capture in the same patient and study -- by C-STORE, and by DICOMweb STOW-RS --
valid for dciodvfy. Also: an Orthanc restarted while results wait, and an Orthanc that refuses them.

Waits are liveness guards only (generous time-outs); nothing here passes or fails on time
(``python -m bench.orthanc`` measures the round trip).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")
pytest.importorskip("dicomweb_client")

from pydicom import dcmread
from pydicom.uid import generate_uid

from tests.dicomnet import dciodvfy_errors, free_port, store
from tests.helpers import nodule_scan, scanner_us_ids, wait_for, write_dicom
from tests.orthanc import Orthanc
from tests.test_dicom_node import Daemon

pytestmark = pytest.mark.slow
RESULTS = {"SEG", "SR", "OT"}  # OT: the Secondary Capture's modality
OUTBOX_DB = Path(".edge-seg") / "outbox" / "outbox.sqlite"


def sent_paths(out: Path) -> int:
    """The results the first target's outbox records as sent (its documented table)."""
    with contextlib.closing(sqlite3.connect(out / OUTBOX_DB)) as db:
        return int(db.execute("SELECT count(*) FROM entries WHERE state = 'sent'").fetchone()[0])


def scanner_study(folder: Path, n: int = 3) -> list[Path]:
    """``n`` instances of one study and series as a scanner writes them (gray, JPEG colour, 16-bit), and one
    minimal instance (UIDs only) of a study of its own."""
    study, series = generate_uid(), generate_uid()
    made = []
    for i in range(n):
        image = nodule_scan(seed=i)[0]
        kind = i % 3
        pixels = image if kind == 0 else np.dstack([image] * 3) if kind == 1 else image.astype(np.uint16) * 200
        options = {"jpeg": True} if kind == 1 else {"bits_stored": 16} if kind == 2 else {}
        ids = scanner_us_ids(study, series, InstanceNumber=i + 1)
        made.append(write_dicom(folder / f"scan{i}.dcm", pixels, pixel_spacing=(0.1, 0.1), **options, **ids))
    minimal = {"StudyInstanceUID": generate_uid(), "SeriesInstanceUID": generate_uid()}
    made.append(write_dicom(folder / "minimal.dcm", nodule_scan(seed=9)[0], **minimal))
    return made


def referenced(ds) -> set[str]:
    """Every Referenced SOP Instance UID anywhere in a dataset."""
    found = set()
    for elem in ds.iterall():
        if elem.keyword == "ReferencedSOPInstanceUID":
            found.add(str(elem.value))
    return found


def check_results(pacs: Orthanc, sources: list[Path], tmp: Path) -> list[Path]:
    """Each source instance has its SEG, SR and SC in Orthanc, in the source's own patient and study; dciodvfy
    finds no errors in them. Returns the results' files as Orthanc gives them back."""
    held = pacs.instances()
    by_uid = {i["SOPInstanceUID"]: i for i in held}
    files = []
    results: dict[str, set[str]] = {str(dcmread(s).SOPInstanceUID): set() for s in sources}
    for inst in held:
        if inst["Modality"] not in RESULTS:
            continue
        path = pacs.file(inst["_id"], tmp / f"{inst['Modality']}-{inst['SOPInstanceUID']}.dcm")
        files.append(path)
        refs = referenced(dcmread(path)) & set(results)
        assert len(refs) == 1, (inst["Modality"], refs)
        [source_uid] = refs
        source = by_uid[source_uid]
        assert (inst["_patient"], inst["_study"]) == (source["_patient"], source["_study"]), inst["Modality"]
        results[source_uid].add(inst["Modality"])
        assert dciodvfy_errors(path) == [], (path.name, dciodvfy_errors(path))
    assert results == {uid: RESULTS for uid in results}
    return files


def route(pacs: Orthanc, sources: list[Path], expected: int) -> float:
    """Upload ``sources`` to Orthanc, have it C-STORE them to edge-seg; seconds until it holds ``expected``
    instances (its send to the last result stored)."""
    ids = [pacs.upload(s) for s in sources]
    t0 = pacs.store_to("edgeseg", ids)
    wait_for(lambda: pacs.get("/statistics")["CountInstances"] >= expected, "every result in Orthanc", 180)
    return time.time() - t0


def edge_seg(tmp: Path, model: Path, listen: int, *send_to: str, extra: tuple[str, ...] = ()) -> Daemon:
    args = ["--dicom-listen", f"127.0.0.1:{listen}", "--dicom-results", "seg,sr,sc", "--send-retry", "0.3"]
    for target in send_to:
        args += ["--send-to", target]
    return Daemon(tmp, model, *args, *extra)


def test_orthanc_routes_a_study_to_edge_seg_and_gets_seg_sr_and_sc_back_by_c_store(tmp_path, tiny_model):
    listen = free_port()
    pacs = Orthanc(tmp_path / "orthanc", {"edgeseg": ("EDGESEG", "127.0.0.1", listen)})
    daemon = edge_seg(tmp_path, tiny_model, listen, f"ORTHANC@127.0.0.1:{pacs.dicom_port}")
    try:
        sources = scanner_study(tmp_path / "study")
        route(pacs, sources, 4 * len(sources))
        check_results(pacs, sources, tmp_path)
        # the status file is rewritten every few seconds: wait for the sends to show in it, then check none repeats
        sent = 3 * len(sources)
        wait_for(lambda: daemon.status().get("outbox", {}).get("sent_since_start", 0) >= sent, "the sends in status")
        outbox = daemon.status()["outbox"]
        assert outbox["sent_since_start"] == sent and outbox["waiting"] == 0
    finally:
        daemon.stop()
        pacs.stop()
    assert "Traceback" not in daemon.text()


def test_results_go_by_stow_rs_with_credentials_and_by_c_store_to_a_second_pacs_each_once(tmp_path, tiny_model):
    listen = free_port()
    users = {"edge": "s3cret:with:colons"}
    routing = {"edgeseg": ("EDGESEG", "127.0.0.1", listen)}
    pacs = Orthanc(tmp_path / "orthanc", routing, users=users)
    second = Orthanc(tmp_path / "second", {}, aet="SECOND")
    auth = tmp_path / "auth.txt"
    auth.write_text("edge:s3cret:with:colons\n")
    web = f"{pacs.url}/dicom-web"
    daemon = edge_seg(
        tmp_path, tiny_model, listen, web, f"SECOND@127.0.0.1:{second.dicom_port}", extra=("--send-auth", str(auth))
    )
    try:
        sources = scanner_study(tmp_path / "study")
        route(pacs, sources, 4 * len(sources))
        check_results(pacs, sources, tmp_path)
        wait_for(lambda: second.get("/statistics")["CountInstances"] >= 3 * len(sources), "the second PACS's results")
        assert {i["Modality"] for i in second.instances()} == RESULTS

        def all_sent() -> bool:  # (the status file is rewritten every few seconds)
            outboxes = daemon.status().get("outboxes", [])
            return len(outboxes) == 2 and all(o["sent_since_start"] == 3 * len(sources) for o in outboxes)

        wait_for(all_sent, "the status file to show every result sent to both")
        assert [o["to"] for o in daemon.status()["outboxes"]] == [web, f"SECOND@127.0.0.1:{second.dicom_port}"]
    finally:
        daemon.stop()
        pacs.stop()
        second.stop()
    assert sent_paths(tmp_path / "out") == 3 * len(sources)
    assert [o["sent_since_start"] for o in daemon.status()["outboxes"]] == [3 * len(sources)] * 2  # each sent once
    assert "s3cret" not in daemon.text()


def test_results_wait_for_an_orthanc_restarted_mid_run_and_arrive_once(tmp_path, tiny_model):
    listen = free_port()
    pacs = Orthanc(tmp_path / "orthanc", {"edgeseg": ("EDGESEG", "127.0.0.1", listen)})
    daemon = edge_seg(tmp_path, tiny_model, listen, f"{pacs.url}/dicom-web")
    try:
        first = scanner_study(tmp_path / "first", 2)
        route(pacs, first, 4 * len(first))
        pacs.stop()  # PACS down; the scanner sends the next study to edge-seg itself
        second = scanner_study(tmp_path / "second", 2)
        assert store(listen, second, calling="US_ROOM1") == [0] * len(second)

        def all_waiting() -> bool:
            outbox = daemon.status().get("outbox", {})
            return outbox.get("failed_tries", 0) >= 1 and outbox.get("waiting") == 3 * len(second)

        wait_for(all_waiting, "every result of the second study to wait, after a failed try")
        pacs.start()
        wait_for(lambda: daemon.status()["outbox"]["waiting"] == 0, "the waiting results to be sent", 180)
        for s in second:
            pacs.upload(s)  # the sources too, as the scanner's own route to PACS would bring them
        check_results(pacs, first + second, tmp_path)
    finally:
        daemon.stop()
        pacs.stop()
    assert sent_paths(tmp_path / "out") == 3 * len(first + second)
    assert daemon.status()["outbox"]["sent_since_start"] == 3 * len(first + second)  # each sent once
    assert "cannot connect" in daemon.text()


REFUSE_STOW = """
function IncomingHttpRequestFilter(method, uri, ip, username, headers)
  return not (method == 'POST' and string.find(uri, '/dicom%-web/') == 1)
end
"""


@pytest.mark.parametrize("why", ["filter", "credentials"])
def test_an_orthanc_that_refuses_stow_rs_gets_each_result_set_aside_and_the_masks_are_kept(tmp_path, tiny_model, why):
    users = {"edge": "right"}
    credentials = why == "credentials"
    pacs = Orthanc(
        tmp_path / "orthanc", {}, users=users if credentials else None, lua=None if credentials else REFUSE_STOW
    )
    extra: tuple[str, ...] = ("--send-retry", "0.01")
    if why == "credentials":
        (tmp_path / "auth.txt").write_text("edge:wrong")
        extra += ("--send-auth", str(tmp_path / "auth.txt"))
    listen = free_port()
    daemon = edge_seg(tmp_path, tiny_model, listen, f"{pacs.url}/dicom-web", extra=extra)
    try:
        sources = scanner_study(tmp_path / "study", 1)
        assert store(listen, sources, calling="US_ROOM1") == [0] * len(sources)
        wait_for(lambda: daemon.status().get("outbox", {}).get("refused") == 3 * len(sources), "results set aside")
        status = daemon.status()
        code = "401" if why == "credentials" else "403"
        assert f"HTTP {code}" in status["outbox"]["last_error"]["reason"]
        assert status["outbox"]["sent_since_start"] == 0 and status["done"] == len(sources)
        assert pacs.get("/statistics")["CountInstances"] == 0
    finally:
        daemon.stop()
        pacs.stop()
    text = daemon.text()
    assert f"was refused 10 times ({pacs.url}/dicom-web: HTTP {code}" in text and "Traceback" not in text
    assert len(list((tmp_path / "out").rglob("*.png"))) >= len(sources)  # the masks are what counts
