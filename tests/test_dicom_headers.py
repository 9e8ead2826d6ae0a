"""DICOM results from the headers real scanners, exporters and de-identification tools write: from a
full scanner header to a minimal one, colour, 16-bit, compressed and multi-frame sources. A result a
source cannot give is refused alone (a warning, an error record), never the scan's mask."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("highdicom")

from pydicom import dcmread
from pydicom.uid import generate_uid

from edge_runtime.cli import main
from tests.dicomnet import dciodvfy_errors
from tests.helpers import nodule_scan, scanner_us_ids, us_ids, write_dicom

US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime")
TYPE2 += ("ReferringPhysicianName", "StudyID", "AccessionNumber")


def without(ids: dict, *keys: str) -> dict:
    return {k: v for k, v in ids.items() if k not in keys}


def gray() -> np.ndarray:
    return nodule_scan()[0]


def rgb() -> np.ndarray:
    return np.dstack([gray()] * 3)


def minimal_ids() -> dict:
    """What a de-identification tool may leave: the UIDs and the Modality alone (no patient or study module)."""
    return {"StudyInstanceUID": generate_uid(), "SeriesInstanceUID": generate_uid()}


#: name -> (pixels, write_dicom options, header); every one must give a SEG, a SR and a SC
SOURCES = {
    "full-scanner-header": (gray, {}, scanner_us_ids),
    "minimal-header": (gray, {}, minimal_ids),
    "no-type2-patient-or-study": (gray, {}, lambda: without(us_ids(), *TYPE2)),
    "malformed-dates": (gray, {}, lambda: us_ids(PatientBirthDate="1970-04-02", StudyDate="01/01/2026")),
    "colour-rgb": (rgb, {}, scanner_us_ids),
    "colour-jpeg-ybr": (rgb, {"jpeg": True}, scanner_us_ids),
    "jpeg-gray-minimal": (gray, {"jpeg": True}, minimal_ids),
    "16-bit": (lambda: gray().astype(np.uint16) * 200, {"bits_stored": 16}, scanner_us_ids),
    "monochrome1": (gray, {"photometric": "MONOCHROME1"}, scanner_us_ids),
    "colour-ybr-full": (rgb, {"photometric": "YBR_FULL"}, scanner_us_ids),
    "utf-8-patient-name": (
        gray,
        {},
        lambda: scanner_us_ids(SpecificCharacterSet="ISO_IR 192", PatientName="山田^太郎"),
    ),
    "secondary-capture-source": (gray, {}, lambda: us_ids(SOPClassUID=SC_CLASS, Modality="OT")),
}


def run(in_dir: Path, out_dir: Path, model: Path, results: str = "seg,sr,sc") -> int:
    return main([str(in_dir), "--out", str(out_dir), "--model", str(model), "--dicom-results", results])


def ledger_outputs(out: Path, rel: str) -> list[str]:
    with sqlite3.connect(out / ".edge-seg" / "ledger.sqlite") as db:
        (record,) = db.execute("SELECT record FROM scans WHERE rel = ?", (rel,)).fetchone()
    return json.loads(record)["outputs"]


@pytest.mark.parametrize("name", list(SOURCES))
def test_every_source_header_gives_valid_seg_sr_and_sc_in_its_patient_and_study(tmp_path, tiny_model, name, capfd):
    pixels, options, header = SOURCES[name]
    ids = header()
    src = write_dicom(tmp_path / "in" / "s.dcm", pixels(), **options, **ids)
    capfd.readouterr()  # (pydicom's own warning about a malformed date it was asked to write)
    assert run(tmp_path / "in", tmp_path / "out", tiny_model) == 0
    assert "warning" not in capfd.readouterr().err
    source = dcmread(src)
    results = {k: tmp_path / "out" / "dicom" / f"s.{k}.dcm" for k in ("seg", "sr", "sc")}
    for kind, path in results.items():
        ds = dcmread(path)
        assert ds.StudyInstanceUID == source.StudyInstanceUID, kind
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID, kind
        assert ds.get("PatientID", "") == source.get("PatientID", ""), kind  # empty when the source has none
        assert str(ds.get("PatientName", "")) == str(source.get("PatientName", "")), kind
        assert dciodvfy_errors(path) == [], (kind, dciodvfy_errors(path))
    for keyword in TYPE2:  # Type 2: present in every result, empty when the source had none
        assert keyword in dcmread(results["sr"]), keyword
    sc = dcmread(results["sc"])
    assert sc.SOPClassUID == SC_CLASS and sc.PhotometricInterpretation == "RGB" and sc.BurnedInAnnotation == "YES"
    assert (sc.Rows, sc.Columns) == (source.Rows, source.Columns)
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    bottom = sc.pixel_array[-12:]  # the band with the note: black, with white text
    assert (bottom == 0).mean() > 0.5 and (bottom > 200).any()


def test_a_cine_loop_gets_a_sr_and_a_sc_of_its_frame_with_the_largest_nodule(tmp_path, tiny_model):
    frames = [nodule_scan(axes=(20, 15))[0], nodule_scan(axes=(70, 50))[0], nodule_scan(axes=(40, 30))[0]]
    src = write_dicom(tmp_path / "in" / "loop.dcm", frames, SOPClassUID=US_MULTIFRAME, **scanner_us_ids())
    assert run(tmp_path / "in", tmp_path / "out", tiny_model) == 0
    assert sorted(p.name for p in (tmp_path / "out" / "dicom").iterdir()) == ["loop.sc.dcm", "loop.sr.dcm"]
    sc = dcmread(tmp_path / "out" / "dicom" / "loop.sc.dcm")
    ref = sc.SourceImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == dcmread(src).SOPInstanceUID and ref.ReferencedFrameNumber == 2
    for f in ("loop.sc.dcm", "loop.sr.dcm"):
        assert dciodvfy_errors(tmp_path / "out" / "dicom" / f) == []


def test_seg_and_sr_share_tracking_and_algorithm_identification_and_say_what_made_them(tmp_path, tiny_model):
    import hashlib

    sha = hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    write_dicom(tmp_path / "in" / "s.dcm", gray(), **scanner_us_ids(SeriesNumber=9901))  # where ours would go
    assert run(tmp_path / "in", tmp_path / "out", tiny_model) == 0
    seg, sr, sc = (dcmread(tmp_path / "out" / "dicom" / f"s.{k}.dcm") for k in ("seg", "sr", "sc"))
    segment = seg.SegmentSequence[0]
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("tiny-dark-finder", "0.0.1")
    assert sha in algorithm.AlgorithmParameters

    def groups(ds):  # the measurement groups (TID 1411/1410), wherever they sit in the tree
        found = []
        for item in ds.get("ContentSequence", []):
            if item.ValueType == "CONTAINER" and item.ConceptNameCodeSequence[0].CodeValue == "125007":
                found.append(item)
            found += groups(item)
        return found

    def texts(group, meaning):
        return [i for i in group.ContentSequence if i.ConceptNameCodeSequence[0].CodeMeaning == meaning]

    assert len(groups(sr)) == 2  # the nodule, and the SEG's segment
    by_uid = {texts(g, "Tracking Unique Identifier")[0].UID: g for g in groups(sr)}
    assert segment.TrackingUID in by_uid  # the SR's group for the segment tracks the SEG's segment
    assert texts(by_uid[segment.TrackingUID], "Tracking Identifier")[0].TextValue == segment.TrackingID
    for group in groups(sr):  # every group: the model's name, version and sha256 (TID 4019)
        assert [i.TextValue for i in texts(group, "Algorithm Name")] == ["tiny-dark-finder"]
        assert [i.TextValue for i in texts(group, "Algorithm Version")] == ["0.0.1"]
        assert [i.TextValue for i in texts(group, "Algorithm Parameters")] == [f"model_sha256={sha}"]
    assert sha in sc.DerivationDescription
    descriptions = {ds.Modality: ds.SeriesDescription for ds in (seg, sr, sc)}
    assert descriptions == {
        "SEG": "edge-seg tiny-dark-finder 0.0.1: thyroid nodule SEG",
        "SR": "edge-seg tiny-dark-finder 0.0.1: thyroid nodule measurements",
        "OT": "edge-seg tiny-dark-finder 0.0.1: overlay, not for diagnosis",
    }
    numbers = [int(ds.SeriesNumber) for ds in (seg, sr, sc)]
    assert 9901 not in numbers and len(set(numbers)) == 3


def test_a_missing_type1_attribute_refuses_the_results_not_the_mask_until_the_scan_changes(tmp_path, tiny_model, capfd):
    ids = without(us_ids(), "SeriesInstanceUID")
    write_dicom(tmp_path / "in" / "s.dcm", gray(), **ids)
    assert run(tmp_path / "in", tmp_path / "out", tiny_model) == 0
    err = capfd.readouterr().err
    line = "warning: s.dcm: no DICOM SEG: the source has no SeriesInstanceUID (Type 1)"
    assert line in err and "Traceback" not in err
    dicom = tmp_path / "out" / "dicom"
    assert sorted(p.name for p in dicom.iterdir()) == ["s.sc.failed.txt", "s.seg.failed.txt", "s.sr.failed.txt"]
    record = (dicom / "s.seg.failed.txt").read_text()
    assert "scan: s.dcm\nresult: SEG\nreason: the source has no SeriesInstanceUID (Type 1)\n" in record
    assert (tmp_path / "out" / "s.png").exists()
    assert "dicom/s.seg.failed.txt" in ledger_outputs(tmp_path / "out", "s.dcm")

    assert run(tmp_path / "in", tmp_path / "out", tiny_model) == 0  # done: not tried again for nothing
    assert "0 segmented, 1 up to date" in capfd.readouterr().err

    write_dicom(tmp_path / "in" / "s.dcm", gray(), **us_ids())  # the scan changes: its results are made
    assert run(tmp_path / "in", tmp_path / "out", tiny_model) == 0
    assert sorted(p.name for p in dicom.iterdir()) == ["s.sc.dcm", "s.seg.dcm", "s.sr.dcm"]


def test_a_source_without_modality_gets_no_sr_and_its_seg_and_sc(tmp_path, tiny_model, capfd):
    write_dicom(tmp_path / "in" / "m.dcm", gray(), Modality=None, **us_ids())
    assert run(tmp_path / "in", tmp_path / "out", tiny_model) == 0
    assert "warning: m.dcm: no DICOM SR: the source has no Modality (Type 1)" in capfd.readouterr().err
    dicom = tmp_path / "out" / "dicom"
    assert sorted(p.name for p in dicom.iterdir()) == ["m.sc.dcm", "m.seg.dcm", "m.sr.failed.txt"]


def test_a_one_frame_loop_gets_no_seg_and_an_unknown_sop_class_only_its_sc(tmp_path, tiny_model, capfd):
    write_dicom(tmp_path / "in" / "one.dcm", [gray()], SOPClassUID=US_MULTIFRAME, NumberOfFrames=1, **us_ids())
    write_dicom(tmp_path / "in" / "odd.dcm", gray(), SOPClassUID="1.2.3.4.5.6.7", **us_ids())
    assert run(tmp_path / "in", tmp_path / "out", tiny_model) == 0
    err = capfd.readouterr().err
    assert "warning: odd.dcm: no DICOM SEG: highdicom does not know its SOP Class UID 1.2.3.4.5.6.7" in err
    assert "warning: odd.dcm: no DICOM SR: No IOD found for SOP Class UID: 1.2.3.4.5.6.7." in err
    assert "warning: one.dcm" not in err  # a loop gets no SEG by design: nothing to warn about
    assert sorted(p.name for p in (tmp_path / "out" / "dicom").iterdir()) == [
        "odd.sc.dcm",
        "odd.seg.failed.txt",
        "odd.sr.failed.txt",
        "one.sc.dcm",
        "one.sr.dcm",
    ]


def test_a_bug_while_making_a_result_is_logged_with_its_traceback_and_the_scan_is_still_ok(
    tmp_path, tiny_model, caplog, monkeypatch
):
    import edge_runtime.outputs.sc as sc_module

    def bug(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(sc_module, "build_sc", bug)
    write_dicom(tmp_path / "in" / "s.dcm", gray(), **us_ids())
    assert run(tmp_path / "in", tmp_path / "out", tiny_model) == 0
    [record] = [r for r in caplog.records if r.exc_info]
    assert record.getMessage() == "unexpected error making the DICOM Secondary Capture of s.dcm"
    assert "reason: unexpected error: RuntimeError: a bug" in (tmp_path / "out/dicom/s.sc.failed.txt").read_text()
    assert (tmp_path / "out" / "dicom" / "s.seg.dcm").exists() and (tmp_path / "out" / "s.png").exists()


def test_a_result_highdicom_refuses_leaves_the_others_and_is_made_again_when_the_settings_change(
    tmp_path, tiny_model, capfd, monkeypatch
):
    import edge_runtime.outputs.seg as seg_module

    def refuse(*args, **kwargs):
        raise ValueError("Pixel array has an unsupported shape.\nmore detail")

    monkeypatch.setattr(seg_module, "build_seg", refuse)
    write_dicom(tmp_path / "in" / "s.dcm", gray(), **us_ids())
    assert run(tmp_path / "in", tmp_path / "out", tiny_model, "seg,sr") == 0
    assert "warning: s.dcm: no DICOM SEG: Pixel array has an unsupported shape. (the mask" in capfd.readouterr().err
    dicom = tmp_path / "out" / "dicom"
    assert sorted(p.name for p in dicom.iterdir()) == ["s.seg.failed.txt", "s.sr.dcm"]
    sr = dcmread(dicom / "s.sr.dcm")  # made without the SEG it would have referenced
    assert [e.Modality for e in [sr]] == ["SR"] and "PertinentOtherEvidenceSequence" not in sr

    monkeypatch.undo()
    assert run(tmp_path / "in", tmp_path / "out", tiny_model, "seg,sr,sc") == 0  # other settings: made again
    assert sorted(p.name for p in dicom.iterdir()) == ["s.sc.dcm", "s.seg.dcm", "s.sr.dcm"]


@pytest.mark.slow
def test_a_daemon_makes_the_results_an_older_version_failed_the_scan_for(tmp_path, tiny_model):
    from edge_runtime.job.ledger import Ledger
    from tests.helpers import wait_for
    from tests.test_dicom_node import Daemon

    src = write_dicom(tmp_path / "in" / "s.dcm", gray(), **without(us_ids(), "PatientBirthDate"))
    st = src.stat()
    # what 0.6.0 recorded for it: a failed scan (an error record with no kind), never tried again by a daemon
    reason = "cannot make DICOM results: 'FileDataset' object has no attribute 'PatientBirthDate'"
    old = {"rel": "s.dcm", "event": "error", "size": st.st_size, "mtime_ns": st.st_mtime_ns, "reason": reason}
    (tmp_path / "out" / ".edge-seg").mkdir(parents=True)
    (tmp_path / "out" / ".edge-seg" / "ledger.jsonl").write_text(json.dumps(old) + "\n")  # moved in at open
    Ledger(tmp_path / "out").close()
    daemon = Daemon(tmp_path, tiny_model, "--dicom-results")
    try:
        wait_for(lambda: (tmp_path / "out" / "dicom" / "s.sr.dcm").exists(), "the results of the scan failed before")
    finally:
        daemon.stop()
    assert (tmp_path / "out" / "dicom" / "s.seg.dcm").exists() and "FAIL" not in daemon.text()
