"""`--dicom-results`: the SEG and SR written for each DICOM scan, read back with pydicom and checked by dciodvfy."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("highdicom")

from pydicom import dcmread

from edge_runtime.cli import main
from tests.dicomnet import dciodvfy_errors
from tests.helpers import nodule_scan, us_ids, write_dicom, write_png

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"


def two_nodules(seed: int = 0) -> np.ndarray:
    image, _ = nodule_scan(240, 320, (100, 120), (40, 30), seed)
    cv2.ellipse(image, (250, 120), (25, 20), 0, 0, 360, 20, cv2.FILLED)
    return image


def run(in_dir: Path, out_dir: Path, model: Path, *extra: str) -> int:
    return main([str(in_dir), "--out", str(out_dir), "--model", str(model), "--dicom-results", *extra])


def items(ds, kind: str | None = None):
    """Every content item of a SR, depth first."""
    for item in ds.get("ContentSequence", []):
        if kind is None or item.ValueType == kind:
            yield item
        yield from items(item, kind)


def areas(sr) -> list[tuple[float, str]]:
    return [
        (float(i.MeasuredValueSequence[0].NumericValue), i.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0])
        for i in items(sr, "NUM")
        if i.ConceptNameCodeSequence[0].CodeValue == "42798000"
    ]


def test_seg_and_sr_reference_the_scan_and_measure_each_nodule(tmp_path, tiny_model):
    ids = us_ids()
    src = write_dicom(tmp_path / "in" / "a" / "scan.dcm", two_nodules(), pixel_spacing=(0.1, 0.2), **ids)
    assert run(tmp_path / "in", tmp_path / "out", tiny_model) == 0
    source = dcmread(src)
    seg = dcmread(tmp_path / "out" / "dicom" / "a" / "scan.seg.dcm")
    sr = dcmread(tmp_path / "out" / "dicom" / "a" / "scan.sr.dcm")

    assert seg.SOPClassUID == SEG_CLASS and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == ids["StudyInstanceUID"] and seg.PatientID == ids["PatientID"]
    ref_series = seg.ReferencedSeriesSequence[0]
    assert ref_series.SeriesInstanceUID == ids["SeriesInstanceUID"]
    assert ref_series.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    [segment] = seg.SegmentSequence
    assert segment.SegmentLabel == "thyroid nodule"
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("tiny-dark-finder", "0.0.1")
    mask = cv2.imread(str(tmp_path / "out" / "a" / "scan.png"), cv2.IMREAD_GRAYSCALE)
    assert np.array_equal(seg.pixel_array.astype(bool), mask > 0)  # the SEG is the mask

    # The SR: one group per nodule, area in mm² (0.1 x 0.2 mm pixels), and one for the SEG's segment.
    n, _labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    assert n - 1 == 2
    expected = sorted(round(float(stats[i][4]) * 0.02, 3) for i in range(1, n))
    got = areas(sr)
    assert sorted(v for v, _ in got[:2]) == pytest.approx(expected)
    assert got[2][0] == pytest.approx(sum(expected))
    assert {u.CodeValue for _, u in got} == {"mm2"}
    images = list(items(sr, "IMAGE"))
    assert seg.SOPInstanceUID in {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in images}
    assert source.SOPInstanceUID in {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in images}
    evidence = {
        inst.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for inst in series.ReferencedSOPSequence
    }
    assert evidence == {source.SOPInstanceUID, seg.SOPInstanceUID}
    assert sr.StudyInstanceUID == ids["StudyInstanceUID"]


def test_without_pixel_spacing_areas_are_in_pixels(tmp_path, tiny_model):
    write_dicom(tmp_path / "in" / "b.dcm", nodule_scan()[0], **us_ids())
    assert run(tmp_path / "in", tmp_path / "out", tiny_model) == 0
    sr = dcmread(tmp_path / "out" / "dicom" / "b.sr.dcm")
    mask = cv2.imread(str(tmp_path / "out" / "b.png"), cv2.IMREAD_GRAYSCALE)
    got = areas(sr)
    assert got and {u.CodeValue for _, u in got} == {"{pixels}"}
    assert got[0][0] == np.count_nonzero(mask)


@pytest.mark.parametrize("frame_of_reference", [False, True], ids=["no-frame-of-reference", "uid-only"])
def test_a_cine_loop_without_frame_of_reference_gets_a_sr_per_frame_and_no_seg(
    tmp_path, tiny_model, frame_of_reference
):
    from pydicom.uid import generate_uid

    frames = [nodule_scan(seed=s)[0] for s in range(3)]
    more = {"FrameOfReferenceUID": generate_uid()} if frame_of_reference else {}
    ids = us_ids(**more)
    write_dicom(tmp_path / "in" / "loop.dcm", frames, us_region_cm=(0.01, 0.01), SOPClassUID=US_MULTIFRAME, **ids)
    assert run(tmp_path / "in", tmp_path / "out", tiny_model) == 0
    assert not (tmp_path / "out" / "dicom" / "loop.seg.dcm").exists()
    sr = dcmread(tmp_path / "out" / "dicom" / "loop.sr.dcm")
    frames_referenced = sorted(
        int(i.ReferencedSOPSequence[0].ReferencedFrameNumber) for i in items(sr, "IMAGE")
    )  # each nodule's outline and its two calipers sit on its own source frame
    assert frames_referenced == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert len(list((tmp_path / "out").glob("loop_f*.png"))) == 3  # the masks, as for any scan


def test_scans_that_are_not_dicom_get_no_dicom_results_and_unusable_dicom_a_warning(tmp_path, tiny_model, capfd):
    write_png(tmp_path / "in" / "plain.png", nodule_scan()[0])
    write_dicom(tmp_path / "in" / "anonymous.dcm", nodule_scan()[0])  # no study or series
    assert run(tmp_path / "in", tmp_path / "out", tiny_model) == 0  # the masks are what counts
    assert (tmp_path / "out" / "plain.png").exists() and (tmp_path / "out" / "anonymous.png").exists()
    assert sorted(p.name for p in (tmp_path / "out" / "dicom").iterdir()) == [
        "anonymous.seg.failed.txt",
        "anonymous.sr.failed.txt",
    ]
    err = capfd.readouterr().err
    assert "warning: anonymous.dcm: no DICOM SEG: the source has no StudyInstanceUID, SeriesInstanceUID (Type 1)" in err
    assert "Traceback" not in err and "FAIL" not in err


def test_dciodvfy_finds_no_errors_in_the_seg_and_the_sr(tmp_path, tiny_model):
    write_dicom(tmp_path / "in" / "c.dcm", two_nodules(), us_region_cm=(0.01, 0.01), **us_ids())
    write_dicom(tmp_path / "in" / "d.dcm", nodule_scan()[0], jpeg=True, **us_ids())
    assert run(tmp_path / "in", tmp_path / "out", tiny_model) == 0
    files = sorted((tmp_path / "out" / "dicom").glob("*.dcm"))
    assert [f.name for f in files] == ["c.seg.dcm", "c.sr.dcm", "d.seg.dcm", "d.sr.dcm"]
    for f in files:
        assert dciodvfy_errors(f) == [], f.name


def caliper_items(sr) -> dict[str, list]:
    """The long- and short-axis NUM items of a SR, by code."""
    found: dict[str, list] = {"103339001": [], "103340004": []}
    for i in items(sr, "NUM"):
        code = i.ConceptNameCodeSequence[0].CodeValue
        if code in found:
            found[code].append(i)
    return found


def test_sr_has_each_nodules_calipers_in_mm_with_their_end_points(tmp_path, tiny_model):
    write_dicom(tmp_path / "in" / "a.dcm", two_nodules(), pixel_spacing=(0.1, 0.2), **us_ids())
    assert (
        main(
            [
                str(tmp_path / "in"),
                "--out",
                str(tmp_path / "out"),
                "--model",
                str(tiny_model),
                "--report",
                "--dicom-results",
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "out" / "reports" / "a.json").read_text())
    nodules = report["frames"][0]["results"][0]["nodules"]
    sr = dcmread(tmp_path / "out" / "dicom" / "a.sr.dcm")
    found = caliper_items(sr)
    assert len(found["103339001"]) == len(found["103340004"]) == len(nodules) == 2
    for code, key in (("103339001", "long_axis"), ("103340004", "short_axis")):
        for item, nodule in zip(found[code], nodules, strict=True):
            value = item.MeasuredValueSequence[0]
            assert float(value.NumericValue) == pytest.approx(nodule[f"{key}_mm"], abs=0.01)
            assert value.MeasurementUnitsCodeSequence[0].CodeValue == "mm"
            (scoord,) = [c for c in item.ContentSequence if c.ValueType == "SCOORD"]
            assert scoord.RelationshipType == "INFERRED FROM" and scoord.GraphicType == "POLYLINE"
            points = np.array(scoord.GraphicData, float).reshape(-1, 2)
            # SCOORD is in image coordinates, pixel centres at .5 (PS3.3 C.18.6.1.1): ours at integers
            assert points - 0.5 == pytest.approx(np.array(nodule[f"{key}_endpoints"]), abs=0.01)
    sites = [i for i in items(sr, "CODE") if i.ConceptNameCodeSequence[0].CodeValue == "363698007"]
    assert sites and {s.ConceptCodeSequence[0].CodeValue for s in sites} == {"69748006"}  # thyroid
    assert not [i for i in items(sr, "TEXT") if i.ConceptNameCodeSequence[0].CodeValue == "121106"]


def test_sr_without_spacing_has_no_mm_calipers_and_says_why(tmp_path, tiny_model):
    write_dicom(tmp_path / "in" / "b.dcm", nodule_scan()[0], **us_ids())
    assert run(tmp_path / "in", tmp_path / "out", tiny_model) == 0
    sr = dcmread(tmp_path / "out" / "dicom" / "b.sr.dcm")
    assert caliper_items(sr) == {"103339001": [], "103340004": []}
    (comment,) = [i for i in items(sr, "TEXT") if i.ConceptNameCodeSequence[0].CodeValue == "121106"]
    assert comment.TextValue == "long and short axis not measured in mm: the scan states no pixel spacing"
    assert dciodvfy_errors(tmp_path / "out" / "dicom" / "b.sr.dcm") == []


def test_the_results_are_handed_over_as_typed_values_and_the_node_queues_those(tmp_path, tiny_model):
    """The writers say what they wrote (path, kind, SOP class and instance); nothing is found again by name."""
    from edge_runtime.job.assemble import open_job
    from edge_runtime.job.outcome import Outcome, Status
    from edge_runtime.job.settings import JobRequest, RunOptions
    from edge_runtime.node import Node
    from edge_runtime.outputs.dicom_results import DicomResult

    write_dicom(tmp_path / "in" / "a" / "scan.dcm", two_nodules(), pixel_spacing=(0.1, 0.2), **us_ids())
    write_png(tmp_path / "in" / "b.png", two_nodules())
    request = JobRequest(tiny_model, outputs=("dicom", "dicom-sc"))
    job = open_job(tmp_path / "in", tmp_path / "out", request, RunOptions(workers=1, batch_size=2))
    try:
        dicom, png = list(job.scheduler.process(["a/scan.dcm", "b.png"]))
    finally:
        job.close()
    assert dicom.status == png.status == Status.OK and png.dicom == []
    assert [(r.path, r.kind) for r in dicom.dicom] == [(f"dicom/a/scan.{k}.dcm", k) for k in ("seg", "sr", "sc")]
    for r in dicom.dicom:
        ds = dcmread(tmp_path / "out" / r.path)
        assert (r.sop_class_uid, r.sop_instance_uid) == (ds.SOPClassUID, ds.SOPInstanceUID)
    assert dicom.dicom[0].sop_class_uid == SEG_CLASS
    assert "dicom_made" not in dicom.facts  # the run record's facts stay JSON

    class Queue:
        def __init__(self) -> None:
            self.added: list[list[object]] = []

        def add(self, results: list[object]) -> None:
            self.added.append(list(results))

    queue = Queue()
    node = Node(outboxes=[queue])  # type: ignore[list-item]
    given = [DicomResult("dicom/x.seg.dcm", "seg", SEG_CLASS, "1.2.3")]
    node.on_outcome(Outcome("x.dcm", Status.OK, ["x.png", "dicom/x.seg.dcm", "dicom/x.sr.dcm"], dicom=given))
    node.on_outcome(Outcome("y.dcm", Status.OK, ["y.png", "dicom/y.seg.dcm"]))  # no result handed over: none
    node.on_outcome(Outcome("z.dcm", Status.FAILED, [], "bad", dicom=given))
    assert queue.added == [given]
