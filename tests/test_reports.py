"""edge_runtime.outputs.reports and the run record: findings per scan, the run summary and provenance, and the
`--overlay`/`--report` outputs through the CLI, one-shot and daemon."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.cli import main
from edge_runtime.core.model import file_sha256
from edge_runtime.job.ledger import read_records
from edge_runtime.outputs.overlays import PALETTE
from edge_runtime.outputs.reports import find_nodules, to_json
from tests.helpers import nodule_scan, write_dicom, write_png

pydicom = pytest.importorskip("pydicom")


def run(*args: str | Path) -> int:
    return main([str(a) for a in args])


def rgb_of(overlay_png: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(overlay_png), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)


def has_colour(image: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return np.all(image == np.array(colour, np.uint8), axis=-1)


# -- nodules -------------------------------------------------------------------------------------------
def test_find_nodules_measures_each_component_largest_first():
    mask = np.zeros((100, 120), np.uint8)
    mask[10:20, 30:50] = 255  # 200 px
    mask[60:90, 70:100] = 255  # 900 px
    prob = np.full(mask.shape, 0.1, np.float32)
    prob[10:20, 30:50] = 0.6
    prob[60:90, 70:100] = 0.8
    prob[75, 85] = 0.99
    nodules = find_nodules(mask, prob, (0.1, 0.2))
    assert [n["id"] for n in nodules] == [1, 2]
    big, small = nodules
    assert big["area_px"] == 900 and big["bbox"] == [70, 60, 30, 30] and big["centroid"] == [84.5, 74.5]
    assert big["area_mm2"] == pytest.approx(900 * 0.02)
    assert big["max_probability"] == pytest.approx(0.99, abs=1e-4)
    assert big["mean_probability"] == pytest.approx((899 * 0.8 + 0.99) / 900, abs=1e-4)
    assert small["area_px"] == 200 and small["bbox"] == [30, 10, 20, 10] and small["centroid"] == [39.5, 14.5]
    assert small["mean_probability"] == pytest.approx(0.6, abs=1e-4)
    assert find_nodules(mask, prob)[0]["area_mm2"] is None  # spacing unknown
    assert find_nodules(np.zeros_like(mask), prob) == []
    json.loads(to_json(nodules))  # plain JSON types only


# -- through the CLI -----------------------------------------------------------------------------------
TRUTH = {"a.png": ((240, 320), (150, 130), (60, 40)), "sub/b.dcm": ((260, 300), (140, 120), (50, 45))}


@pytest.fixture
def folder(tmp_path) -> Path:
    """Two good scans (a PNG, a DICOM with 0.1 x 0.15 mm pixels) and a bad one."""
    src = tmp_path / "in"
    for rel, (hw, centre, axes) in TRUTH.items():
        img, _ = nodule_scan(*hw, centre, axes, seed=len(rel))
        if rel.endswith(".dcm"):
            write_dicom(src / rel, img, pixel_spacing=(0.1, 0.15))
        else:
            write_png(src / rel, img)
    (src / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return src


def test_report_json_has_every_field_with_sensible_values(folder, tmp_path, tiny_model):
    out = tmp_path / "out"
    assert run(folder, "--out", out, "--model", tiny_model, "--report", "--overlay") == 1  # bad.png fails
    for rel, (hw, centre, axes) in TRUTH.items():
        stem = rel.rsplit(".", 1)[0]
        report = json.loads((out / "reports" / f"{stem}.json").read_text())
        assert report["schema"] == 2 and report["generator"].startswith("edge-seg ")
        scan = report["scan"]
        assert scan["path"] == rel and scan["size_bytes"] == (folder / rel).stat().st_size
        assert scan["sha256"] == file_sha256(folder / rel)
        assert (scan["height"], scan["width"], scan["frames"]) == (*hw, 1)
        assert report["model"] == {
            "name": "tiny-dark-finder",
            "version": "0.0.1",
            "file": "tiny.onnx",
            "sha256": file_sha256(tiny_model),
            "presence_threshold": None,  # the tiny model has no presence output
        }
        assert report["thresholds"] == [0.5]
        assert {"read", "preprocess", "inference", "postprocess", "write", "overlay"} <= set(report["timings_ms"])
        assert all(isinstance(v, float) and v >= 0 for v in report["timings_ms"].values())
        (frame,) = report["frames"]
        assert frame["frame"] == 1 and frame["overlay"] == f"overlays/{stem}.png"
        assert 0.9 < frame["max_probability"] <= 1.0
        assert frame["presence"] is None and frame["nodule_present"] is True
        (result,) = frame["results"]
        assert result["threshold"] == 0.5 and result["mask"] == f"{stem}.png"
        mask = cv2.imread(str(out / result["mask"]), cv2.IMREAD_UNCHANGED)
        assert result["nodule_count"] == len(result["nodules"]) == 1
        (nodule,) = result["nodules"]
        assert nodule["id"] == 1 and nodule["area_px"] == int((mask > 0).sum())  # the mask's own component
        true_area = np.pi * axes[0] * axes[1]
        assert 0.5 * true_area < nodule["area_px"] < 1.1 * true_area  # the tiny model draws a little inside
        assert nodule["centroid"] == pytest.approx(list(centre), abs=2.0)
        x, y, w, h = nodule["bbox"]
        assert abs(x + w / 2 - centre[0]) <= 2 and abs(y + h / 2 - centre[1]) <= 2
        assert 1.4 * axes[0] < w <= 2 * axes[0] + 2 and 1.4 * axes[1] < h <= 2 * axes[1] + 2
        assert 0.5 < nodule["mean_probability"] <= nodule["max_probability"] <= 1.0
        # calipers of the written mask: the long axis along the ellipse's longer axis, the short across it
        longer, shorter = max(axes), min(axes)
        assert 1.4 * longer < nodule["long_axis_px"] <= 2 * longer + 2
        assert 1.4 * shorter < nodule["short_axis_px"] <= nodule["long_axis_px"]
        assert (nodule["width_px"], nodule["height_px"]) == (w - 1, h - 1)  # pixel centres: extent - 1
        assert nodule["taller_than_wide_candidate"] is (h > w)
        ends = np.array(nodule["long_axis_endpoints"])
        assert np.hypot(*(ends[1] - ends[0])) == pytest.approx(nodule["long_axis_px"], abs=0.02)
        assert all(mask[round(py), round(px)] for px, py in ends)  # end points are mask pixels
        if rel.endswith(".dcm"):
            assert scan["pixel_spacing_mm"] == [0.1, 0.15] and scan["pixel_spacing_source"] == "pixel_spacing"
            assert nodule["area_mm2"] == pytest.approx(nodule["area_px"] * 0.015, abs=1e-3)
            assert nodule["spacing_mm"] == [0.1, 0.15] and nodule["no_mm_reason"] is None
            assert nodule["height_mm"] == pytest.approx(nodule["height_px"] * 0.1, abs=0.01)
            assert nodule["width_mm"] == pytest.approx(nodule["width_px"] * 0.15, abs=0.01)
            assert nodule["long_axis_mm"] >= 0.1 * nodule["long_axis_px"] - 0.01
        else:
            assert scan["pixel_spacing_mm"] is None and nodule["area_mm2"] is None
            assert nodule["long_axis_mm"] is None and nodule["short_axis_mm"] is None and nodule["spacing_mm"] is None
        overlay = rgb_of(out / frame["overlay"])
        assert overlay.shape == (*hw, 3) and has_colour(overlay, PALETTE[0]).sum() > 100


def test_run_summary_and_provenance(folder, tmp_path, tiny_model):
    out = tmp_path / "out"
    assert run(folder, "--out", out, "--model", tiny_model, "--report") == 1
    rows = {r["path"]: r for r in csv.DictReader((out / "run-summary.csv").open())}
    assert sorted(rows) == ["a.png", "bad.png", "sub/b.dcm"]
    assert rows["bad.png"]["status"] == "failed" and "truncated PNG" in rows["bad.png"]["reason"]
    assert rows["bad.png"]["outputs"] == "" and rows["bad.png"]["nodules"] == ""
    b = rows["sub/b.dcm"]
    assert b["status"] == "ok" and b["frames"] == "1" and b["threshold"] == "0.5" and b["nodules"] == "1"
    assert float(b["largest_area_mm2"]) == pytest.approx(int(b["largest_area_px"]) * 0.015, abs=1e-3)
    assert rows["a.png"]["largest_area_mm2"] == "" and float(rows["a.png"]["ms"]) > 0
    # --report implies --overlay, and adds the review page's thumbnail and plain view
    outputs = ["sub/b.png", "overlays/sub/b.png", "reports/sub/b.json", "overlays/sub/b.thumb.jpg"]
    assert b["outputs"].split(";") == [*outputs, "overlays/sub/b.plain.jpg"]
    prov = json.loads((out / "run-provenance.json").read_text())
    assert (
        prov["model"]["sha256"] == file_sha256(tiny_model) and prov["model"]["metadata"]["name"] == "tiny-dark-finder"
    )
    assert prov["argv"][0] == "edge-seg" and "--report" in prov["argv"]
    assert set(prov["versions"]) >= {"edge-seg", "python", "onnxruntime", "opencv", "numpy"}
    assert prov["counts"] == {"scans": 3, "ok": 2, "up_to_date": 0, "failed": 1} and prov["exit_code"] == 1
    assert prov["thresholds"] == [0.5] and prov["started"] <= prov["finished"]
    # a second run: the scans are up to date, and the summary still gives their findings (from the reports)
    assert run(folder, "--out", out, "--model", tiny_model, "--report") == 1
    again = {r["path"]: r for r in csv.DictReader((out / "run-summary.csv").open())}
    assert again["sub/b.dcm"]["status"] == "up-to-date"
    assert again["sub/b.dcm"]["largest_area_px"] == b["largest_area_px"]
    assert json.loads((out / "run-provenance.json").read_text())["counts"]["up_to_date"] == 2


def test_turning_reports_on_makes_earlier_outputs_out_of_date(folder, tmp_path, tiny_model, caplog):
    out = tmp_path / "out"
    (folder / "bad.png").unlink()
    assert run(folder, "--out", out, "--model", tiny_model) == 0
    caplog.clear()
    assert run(folder, "--out", out, "--model", tiny_model, "--overlay") == 0
    assert "2 segmented, 0 up to date" in caplog.text and (out / "overlays" / "a.png").exists()
    caplog.clear()
    assert run(folder, "--out", out, "--model", tiny_model, "--overlay") == 0
    assert "0 segmented, 2 up to date" in caplog.text
    (out / "overlays" / "a.png").unlink()  # a missing overlay makes its scan out of date
    caplog.clear()
    assert run(folder, "--out", out, "--model", tiny_model, "--overlay") == 0
    assert "1 segmented, 1 up to date" in caplog.text


class _Killed(KeyboardInterrupt):
    """Raised in the writer thread: the run dies like a process killed between a mask and its report."""


def test_a_crash_before_the_report_is_written_is_not_recorded_as_done(tmp_path, tiny_model, monkeypatch, caplog):
    from edge_runtime.outputs import reports as findings

    src, out = tmp_path / "in", tmp_path / "out"
    write_png(src / "x.png", nodule_scan()[0])

    def die(*_args, **_kwargs):
        raise _Killed

    monkeypatch.setattr(findings.ReportWriter, "write", die)
    assert run(src, "--out", out, "--model", tiny_model, "--report") == 130
    assert (out / "x.png").exists() and not (out / "reports" / "x.json").exists()
    begin = read_records(out)["x.png"]
    assert begin["event"] == "begin" and "reports/x.json" in begin["outputs"]
    monkeypatch.undo()
    caplog.clear()
    assert run(src, "--out", out, "--model", tiny_model, "--report") == 0
    assert "1 segmented, 0 up to date" in caplog.text and (out / "reports" / "x.json").exists()


def test_several_thresholds_one_overlay_with_a_colour_each(tmp_path, tiny_model):
    src, out = tmp_path / "in", tmp_path / "out"
    write_png(src / "x.png", nodule_scan(240, 320, (160, 120), (60, 45))[0])
    assert run(src, "--out", out, "--model", tiny_model, "--overlay", "--report", "--threshold", "0.3", "0.97") == 0
    overlay = rgb_of(out / "overlays" / "x.png")
    assert has_colour(overlay, PALETTE[0]).sum() > 50 and has_colour(overlay, PALETTE[1]).sum() > 50
    report = json.loads((out / "reports" / "x.json").read_text())
    assert [r["threshold"] for r in report["frames"][0]["results"]] == [0.3, 0.97]
    assert [r["mask"] for r in report["frames"][0]["results"]] == ["0.3/x.png", "0.97/x.png"]


def test_a_scan_folder_named_like_the_overlays_folder_is_refused_not_overwritten(tmp_path, tiny_model, capfd):
    src, out = tmp_path / "in", tmp_path / "out"
    write_png(src / "x.png", nodule_scan()[0])
    write_png(src / "overlays" / "x.png", nodule_scan(seed=3)[0])
    assert run(src, "--out", out, "--model", tiny_model, "--overlay") == 1
    assert "FAIL overlays/x.png: its mask would go to OUT/overlays/" in capfd.readouterr().err
    assert (out / "overlays" / "x.png").exists() and rgb_of(out / "overlays" / "x.png").ndim == 3


def test_mixed_folder_png_jpeg_dicom(tmp_path, tiny_model):
    src, out = tmp_path / "in", tmp_path / "out"
    write_png(src / "p.png", nodule_scan(seed=1)[0])
    cv2.imwrite(str(src / "j.jpg"), nodule_scan(seed=2)[0], [cv2.IMWRITE_JPEG_QUALITY, 95])
    write_dicom(src / "d" / "gray.dcm", nodule_scan(seed=3)[0], us_region_cm=(0.01, 0.01))
    colour = cv2.cvtColor(nodule_scan(seed=4)[0], cv2.COLOR_GRAY2RGB)
    write_dicom(src / "d" / "colour.dcm", colour, jpeg=True)
    write_dicom(src / "d" / "cine.dcm", [nodule_scan(seed=s)[0] for s in (5, 6)])
    assert run(src, "--out", out, "--model", tiny_model, "--overlay", "--report") == 0
    stems = ["p", "j", "d/gray", "d/colour", "d/cine_f0001", "d/cine_f0002"]
    for stem in stems:
        assert cv2.imread(str(out / f"{stem}.png"), cv2.IMREAD_UNCHANGED).shape == (240, 320)
        assert rgb_of(out / "overlays" / f"{stem}.png").shape == (240, 320, 3)
    for stem in ["p", "j", "d/gray", "d/colour", "d/cine"]:
        report = json.loads((out / "reports" / f"{stem}.json").read_text())
        assert all(f["results"][0]["nodule_count"] >= 1 for f in report["frames"])
    assert json.loads((out / "reports" / "d" / "cine.json").read_text())["scan"]["frames"] == 2
    assert json.loads((out / "reports" / "d" / "gray.json").read_text())["scan"]["pixel_spacing_mm"] == [0.1, 0.1]
    rows = list(csv.DictReader((out / "run-summary.csv").open()))
    assert sorted(r["path"] for r in rows) == sorted(
        ["p.png", "j.jpg", "d/gray.dcm", "d/colour.dcm", "d/cine.dcm"]
    ) and all(r["status"] == "ok" for r in rows)


def test_daemon_writes_overlays_and_reports(tmp_path, tiny_model):
    from tests.test_watch import Daemon, wait_for

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    d = Daemon(src, out, tiny_model, "--overlay", "--report")
    try:
        write_dicom(tmp_path / "stage" / "w.dcm", nodule_scan(seed=1)[0], pixel_spacing=(0.2, 0.2))
        (tmp_path / "stage" / "w.dcm").replace(src / "w.dcm")
        write_png(src / "sub" / "v.png", nodule_scan(seed=2)[0])
        want = [
            out / "reports" / "w.json",
            out / "overlays" / "w.png",
            out / "reports/sub/v.json",
            out / "overlays/sub/v.png",
        ]
        wait_for(lambda: all(p.exists() for p in want), "reports and overlays from the daemon")
        report = json.loads((out / "reports" / "w.json").read_text())
        nodule = report["frames"][0]["results"][0]["nodules"][0]
        assert nodule["area_mm2"] == pytest.approx(nodule["area_px"] * 0.04, abs=1e-3)
        status = json.loads((out / ".edge-seg" / "status.json").read_text())
        assert status["outputs"] == ["masks", "overlays", "reports", "review"]  # review: the page's pictures
    finally:
        assert d.stop() == 0
    assert not (out / "run-summary.csv").exists()  # run files are for one-shot runs
