"""Calipers (edge_runtime.core.calipers) and which spacing a nodule gets (edge_runtime.core.calibration).

Exact answers where geometry gives them: pixel sets built with integer arithmetic (so the convex hull is
known), measured in pixel-centre coordinates.
"""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
from pydicom.dataset import Dataset

from edge_runtime.cli import main
from edge_runtime.core.calibration import Calibration, Region, parse_spacing
from edge_runtime.core.calipers import components, largest, measure, measure_mask
from edge_runtime.files.scans import read_scan
from tests.helpers import nodule_scan, write_dicom, write_png


def rectangle(u: tuple[int, int], v: tuple[int, int], origin=(50, 50), size=(200, 200)) -> np.ndarray:
    """The pixels (as a 0/255 mask) of the rectangle origin + s*u + t*v, 0 <= s, t <= 1 (u perpendicular to v)."""
    assert u[0] * v[0] + u[1] * v[1] == 0
    ys, xs = np.mgrid[: size[0], : size[1]]
    dx, dy = xs - origin[0], ys - origin[1]
    su, sv = dx * u[0] + dy * u[1], dx * v[0] + dy * v[1]  # exact integers
    inside = (su >= 0) & (su <= u[0] ** 2 + u[1] ** 2) & (sv >= 0) & (sv <= v[0] ** 2 + v[1] ** 2)
    return np.where(inside, 255, 0).astype(np.uint8)


def rect_answer(a: float, b: float) -> tuple[float, float]:
    """Long axis (the diagonal) and short axis (the longest chord perpendicular to it) of an a x b rectangle."""
    a, b = max(a, b), min(a, b)
    d = math.hypot(a, b)
    return d, b * d / a


@pytest.mark.parametrize(
    ("u", "v"),
    [
        ((40, 0), (0, 20)),  # axis-aligned, wide
        ((10, 0), (0, 60)),  # axis-aligned, tall
        ((30, 40), (-8, 6)),  # 53.13 degrees: sides 50 and 10
        ((20, 20), (-10, 10)),  # 45 degrees: sides 28.28 and 14.14
        ((12, -5), (15, 36)),  # -22.6 degrees: sides 13 and 39
    ],
)
def test_rectangles_at_known_angles_exact(u, v):
    mask = rectangle(u, v)
    (c,) = measure_mask(mask)
    long_axis, short_axis = rect_answer(math.hypot(*u), math.hypot(*v))
    assert c.long_axis_px == pytest.approx(long_axis, abs=1e-9)
    assert c.short_axis_px == pytest.approx(short_axis, abs=1e-9)
    corners = {(50, 50), (50 + u[0], 50 + u[1]), (50 + v[0], 50 + v[1]), (50 + u[0] + v[0], 50 + u[1] + v[1])}
    assert {tuple(map(round, p)) for p in c.long_axis_endpoints} <= corners  # a diagonal
    (ax, ay), (bx, by) = c.long_axis_endpoints
    (cx, cy), (dx, dy) = c.short_axis_endpoints
    assert (bx - ax) * (dx - cx) + (by - ay) * (dy - cy) == pytest.approx(0, abs=1e-6)  # perpendicular
    ys, xs = np.nonzero(mask)
    assert (c.height_px, c.width_px) == (ys.max() - ys.min(), xs.max() - xs.min())
    assert c.taller_than_wide is (c.height_px > c.width_px)
    assert c.long_axis_mm is None and c.short_axis_mm is None and c.height_mm is None


@pytest.mark.parametrize("spacing", [(0.3, 0.1), (0.1, 0.25), (0.07, 0.07)])
def test_axis_aligned_rectangle_with_anisotropic_spacing_exact(spacing):
    mask = rectangle((40, 0), (0, 20))  # 41 x 21 pixels: 40 x 20 between pixel centres
    (c,) = measure_mask(mask, spacing)
    long_mm, short_mm = rect_answer(40 * spacing[1], 20 * spacing[0])
    assert c.long_axis_mm == pytest.approx(long_mm, abs=1e-9)
    assert c.short_axis_mm == pytest.approx(short_mm, abs=1e-9)
    assert (c.width_mm, c.height_mm) == pytest.approx((40 * spacing[1], 20 * spacing[0]))
    assert c.long_axis_px == pytest.approx(math.hypot(40, 20))  # the same diagonal, in pixels
    assert c.taller_than_wide is (20 * spacing[0] > 40 * spacing[1])  # decided in mm


def test_anisotropic_spacing_picks_the_longest_in_mm_not_in_pixels():
    """A plus sign, 61 px across and 41 px down: with rows 0.3 mm apart and columns 0.1 mm, down is longer."""
    mask = np.zeros((100, 100), np.uint8)
    mask[50, 20:81] = 255  # 60 px between centres, horizontal
    mask[30:71, 50] = 255  # 40 px, vertical
    (px,) = measure_mask(mask)
    (mm,) = measure_mask(mask, (0.3, 0.1))
    assert px.long_axis_px == pytest.approx(60.0) and sorted(px.long_axis_endpoints) == [(20.0, 50.0), (80.0, 50.0)]
    assert mm.long_axis_mm == pytest.approx(12.0) and sorted(mm.long_axis_endpoints) == [(50.0, 30.0), (50.0, 70.0)]
    assert mm.long_axis_px == pytest.approx(40.0)  # the chosen segment, in pixels
    assert mm.short_axis_mm == pytest.approx(6.0)  # across it, perpendicular in mm: the horizontal bar
    assert mm.taller_than_wide and not px.taller_than_wide  # 12 mm down against 6 mm across


@pytest.mark.parametrize("angle", [0, 30, 90, 135])
def test_ellipses_at_known_angles(angle):
    mask = np.zeros((240, 240), np.uint8)
    cv2.ellipse(mask, (120, 120), (70, 30), angle, 0, 360, 255, cv2.FILLED)
    (c,) = measure_mask(mask)
    points = components(mask)[0]
    d = np.sqrt(((points[:, None, :] - points[None, ::7, :]) ** 2).sum(axis=2)).max()
    assert c.long_axis_px >= d - 1e-9  # never shorter than any pair of pixels (a subsample here)
    assert abs(c.long_axis_px - 140) <= 2 and abs(c.short_axis_px - 60) <= 2
    (ax, ay), (bx, by) = c.long_axis_endpoints
    direction = math.degrees(math.atan2(by - ay, bx - ax)) % 180
    assert min(abs(direction - angle % 180), 180 - abs(direction - angle % 180)) < 3
    hull = cv2.convexHull(points.astype(np.int32).reshape(-1, 1, 2)).astype(np.float32)
    for p in c.short_axis_endpoints:  # the chord ends on the hull's boundary
        assert abs(cv2.pointPolygonTest(hull, p, True)) < 1e-3


def test_exact_long_axis_against_every_pair_on_random_blobs():
    rng = np.random.default_rng(7)
    for _ in range(20):
        mask = np.zeros((60, 60), np.uint8)
        for _ in range(4):
            centre = tuple(int(v) for v in rng.integers(15, 45, 2))
            cv2.circle(mask, centre, int(rng.integers(3, 12)), 255, cv2.FILLED)
        for points in components(mask):
            spacing = (float(rng.uniform(0.05, 0.5)), float(rng.uniform(0.05, 0.5)))
            c = measure(points, spacing)
            mm = points * np.array([spacing[1], spacing[0]])
            best = np.sqrt(((mm[:, None, :] - mm[None, :, :]) ** 2).sum(axis=2)).max()
            assert c.long_axis_mm == pytest.approx(best, abs=1e-9)
            assert c.short_axis_mm <= c.long_axis_mm + 1e-9


def test_one_and_two_pixel_components_and_the_border():
    mask = np.zeros((20, 30), np.uint8)
    mask[5, 5] = 255  # one pixel
    mask[10, 10:12] = 255  # two side by side
    mask[15, 20] = mask[16, 21] = 255  # two diagonal
    mask[0:4, 26:30] = 255  # a corner block touching two borders
    found = {tuple(map(round, c.long_axis_endpoints[0])): c for c in measure_mask(mask, (0.5, 0.5))}
    block, one, pair, diagonal = found[(26, 0)], found[(5, 5)], found[(10, 10)], found[(20, 15)]
    assert one.long_axis_px == one.short_axis_px == 0 and one.long_axis_mm == 0 and not one.taller_than_wide
    assert one.long_axis_endpoints == ((5.0, 5.0), (5.0, 5.0))
    assert pair.long_axis_px == 1 and pair.short_axis_px == 0 and (pair.width_px, pair.height_px) == (1, 0)
    assert diagonal.long_axis_px == pytest.approx(math.sqrt(2)) and diagonal.long_axis_mm == pytest.approx(
        math.sqrt(0.5)
    )
    assert block.long_axis_px == pytest.approx(math.hypot(3, 3)) and block.short_axis_px == pytest.approx(
        math.hypot(3, 3)
    )
    assert sorted(block.long_axis_endpoints + block.short_axis_endpoints)[0] in ((26.0, 0.0), (26.0, 3.0))
    assert max(p[0] for p in block.long_axis_endpoints + block.short_axis_endpoints) == 29.0  # reaches the edge


def test_components_and_largest_follow_the_report_order():
    mask = np.zeros((50, 50), np.uint8)
    mask[30:35, 30:35] = 255  # 25 px
    mask[2:12, 2:12] = 255  # 100 px: first
    assert [len(p) for p in components(mask)] == [100, 25]
    assert largest(mask).long_axis_px == pytest.approx(math.hypot(9, 9))
    assert largest(np.zeros((5, 5), bool)) is None
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        measure(np.zeros((0, 2), int))


# -- which spacing a nodule gets --------------------------------------------------------------------------

LEFT = Region(0, 0, 99, 199, (0.2, 0.1))
RIGHT = Region(100, 0, 199, 199, (0.3, 0.3))


def test_a_nodule_gets_the_spacing_of_the_region_holding_it():
    cal = Calibration((LEFT, RIGHT), given=(9.0, 9.0))
    assert cal.for_box((10, 10, 50, 50)).spacing == (0.2, 0.1)
    assert cal.for_box((120, 10, 199, 199)).spacing == (0.3, 0.3)
    assert cal.for_box((120, 10, 199, 199)).source == "ultrasound_region"
    across = cal.for_box((90, 10, 110, 20))
    assert across.spacing is None and "across ultrasound regions" in across.reason
    outside = Calibration((Region(0, 0, 99, 99, (0.2, 0.2)),)).for_box((10, 150, 20, 160))
    assert outside.spacing is None and "outside every calibrated ultrasound region" in outside.reason
    spill = Calibration((Region(0, 0, 99, 99, (0.2, 0.2)),)).for_box((90, 90, 120, 95))
    assert spill.spacing is None and "reaches outside" in spill.reason


def test_regions_that_disagree_give_no_mm():
    inner = Region(20, 20, 80, 80, (0.25, 0.25))
    found = Calibration((LEFT, inner)).for_box((30, 30, 40, 40))
    assert found.spacing is None and "disagree" in found.reason and "0.25" in found.reason
    agree = Calibration((LEFT, Region(20, 20, 80, 80, (0.2, 0.1)))).for_box((30, 30, 40, 40))
    assert agree.spacing == (0.2, 0.1)


def test_without_regions_the_file_spacing_then_the_given_one_then_none():
    assert Calibration(spacing=(0.1, 0.1), source="pixel_spacing", given=(1, 1)).for_box((0, 0, 1, 1)).source == (
        "pixel_spacing"
    )
    given = Calibration(given=(0.2, 0.3)).for_box((0, 0, 1, 1))
    assert (given.spacing, given.source, given.reason) == ((0.2, 0.3), "given", None)
    none = Calibration().for_box((0, 0, 1, 1))
    assert (none.spacing, none.source, none.reason) == (None, None, None)


@pytest.mark.parametrize(
    ("text", "spacing"), [("0.1", (0.1, 0.1)), ("0.2,0.15", (0.2, 0.15)), (" 0.2 , 0.15 ", (0.2, 0.15))]
)
def test_parse_spacing(text, spacing):
    assert parse_spacing(text) == spacing


@pytest.mark.parametrize("text", ["", "a", "0", "-1", "1,2,3", "nan", "150"])
def test_parse_spacing_refuses(text):
    with pytest.raises(ValueError, match="pixel spacing"):
        parse_spacing(text)


def us_region(x0: int, y0: int, x1: int, y1: int, dx_cm: float, dy_cm: float, units: int = 3) -> Dataset:
    region = Dataset()
    region.RegionSpatialFormat, region.RegionDataType = 1, 1
    region.RegionLocationMinX0, region.RegionLocationMinY0 = x0, y0
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = x1, y1
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = units
    region.PhysicalDeltaX, region.PhysicalDeltaY = dx_cm, dy_cm
    return region


def two_nodule_scan() -> np.ndarray:
    """320 x 240: a nodule in the left half, one in the right, one straddling the middle."""
    image, _ = nodule_scan(240, 320, (70, 60), (30, 20))
    right, _ = nodule_scan(240, 320, (240, 170), (20, 35), seed=1)
    middle, _ = nodule_scan(240, 320, (160, 110), (28, 20), seed=2)
    image[:, 160:] = right[:, 160:]
    image[85:135, 125:195] = middle[85:135, 125:195]
    return image


def test_dicom_with_several_regions_end_to_end(tmp_path, tiny_model):
    """Two calibrated regions side by side and a Doppler region: each nodule in its region's mm, one across none."""
    src, out = tmp_path / "in", tmp_path / "out"
    regions = [
        us_region(0, 0, 159, 239, 0.01, 0.02),  # left: 0.1 mm across, 0.2 mm down
        us_region(160, 0, 319, 239, 0.03, 0.03),  # right: 0.3 mm
        us_region(0, 220, 319, 239, 0.5, 0.5, units=4),  # seconds: not a place to measure (ignored)
    ]
    write_dicom(src / "dual.dcm", two_nodule_scan(), SequenceOfUltrasoundRegions=regions, PixelSpacing=[9, 9])
    scan = read_scan(src / "dual.dcm")
    assert [pytest.approx(r.spacing) for r in scan.extra["ultrasound_regions"]] == [(0.2, 0.1), (0.3, 0.3)]
    assert main([str(src), "--out", str(out), "--model", str(tiny_model), "--report", "--pixel-spacing", "5"]) == 0
    report = json.loads((out / "reports" / "dual.json").read_text())
    assert report["scan"]["pixel_spacing_source"] == "ultrasound_region"
    assert [r["bounds"] for r in report["scan"]["ultrasound_regions"]] == [[0, 0, 159, 239], [160, 0, 319, 239]]
    nodules = {n["bbox"][0] // 80: n for n in report["frames"][0]["results"][0]["nodules"]}
    left, right, middle = nodules[0], nodules[2], nodules[1]
    assert left["spacing_mm"] == [0.2, 0.1] and left["no_mm_reason"] is None
    assert left["height_mm"] == pytest.approx(0.2 * left["height_px"], abs=0.01)
    assert left["width_mm"] == pytest.approx(0.1 * left["width_px"], abs=0.01)
    assert right["spacing_mm"] == [0.3, 0.3]
    assert right["long_axis_mm"] == pytest.approx(0.3 * right["long_axis_px"], abs=0.01)
    assert right["taller_than_wide_candidate"] is True
    # wider than tall in pixels, taller than wide in mm (rows twice as far apart as columns): mm decides
    assert left["width_px"] > left["height_px"] and left["taller_than_wide_candidate"] is True
    assert middle["long_axis_mm"] is None and middle["area_mm2"] is None and middle["spacing_mm"] is None
    assert "across ultrasound regions" in middle["no_mm_reason"]
    assert middle["long_axis_px"] > 30  # pixels are always measured
    page = (out / "index.html").read_text()
    assert f"(no mm: {middle['no_mm_reason']})" in page  # the card says why


def test_given_spacing_for_png_and_imager_pixel_spacing(tmp_path, tiny_model):
    src, out = tmp_path / "in", tmp_path / "out"
    image, _ = nodule_scan(240, 320, (160, 120), (40, 25))
    write_png(src / "a.png", image)
    write_dicom(src / "b.dcm", image, ImagerPixelSpacing=[0.25, 0.25])
    args = [str(src), "--out", str(out), "--model", str(tiny_model), "--report"]
    assert main([*args, "--pixel-spacing", "0.2,0.1"]) == 0
    a = json.loads((out / "reports" / "a.json").read_text())
    b = json.loads((out / "reports" / "b.json").read_text())
    assert a["scan"]["pixel_spacing_mm"] == [0.2, 0.1] and a["scan"]["pixel_spacing_source"] == "given"
    assert b["scan"]["pixel_spacing_mm"] == [0.25, 0.25] and b["scan"]["pixel_spacing_source"] == "imager_pixel_spacing"
    (na,) = a["frames"][0]["results"][0]["nodules"]
    assert na["width_mm"] == pytest.approx(0.1 * na["width_px"], abs=0.01) and na["long_axis_mm"] > 0
    summary = (out / "run-summary.csv").read_text().splitlines()
    header = summary[0].split(",")
    row = dict(zip(header, summary[1].split(","), strict=False))
    assert float(row["largest_long_axis_px"]) == na["long_axis_px"]
    assert float(row["largest_long_axis_mm"]) == na["long_axis_mm"]
    assert na["width_px"] > na["height_px"] and row["largest_taller_than_wide"] == "True"  # 10 mm down, 8 across
    provenance = json.loads((out / "run-provenance.json").read_text())
    assert provenance["pixel_spacing"] == [0.2, 0.1]
    # a different spacing makes the reports out of date: the scans are redone
    assert main([*args, "--pixel-spacing", "0.3"]) == 0
    assert json.loads((out / "reports" / "a.json").read_text())["scan"]["pixel_spacing_mm"] == [0.3, 0.3]


def test_pixel_spacing_usage_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path), "--out", str(tmp_path / "o"), "--pixel-spacing", "0.1,x"])
    assert exc.value.code == 2 and "not a number of millimetres" in capsys.readouterr().err


def test_overlay_draws_both_calipers_and_labels_the_long_axis():
    from edge_runtime.outputs.overlays import LONG_AXIS_COLOUR, SHORT_AXIS_COLOUR, render_overlay

    image, truth = nodule_scan(240, 320, (160, 120), (70, 30))
    mask = np.where(truth, 255, 0).astype(np.uint8)
    plain = render_overlay(image, {0.5: mask}, legend=False)
    drawn = render_overlay(image, {0.5: mask}, legend=False, calibration=Calibration(given=(0.1, 0.1)))
    (c,) = measure_mask(mask, (0.1, 0.1))
    for ends, colour in ((c.long_axis_endpoints, LONG_AXIS_COLOUR), (c.short_axis_endpoints, SHORT_AXIS_COLOUR)):
        (x0, y0), (x1, y1) = ends
        for s in (0.3, 0.7):  # inside the dark nodule, away from the other axis
            x, y = round(x0 + s * (x1 - x0)), round(y0 + s * (y1 - y0))
            patch = drawn[y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3).astype(int)
            assert (np.abs(patch - colour).sum(axis=1) < 100).any(), (ends, s)  # anti-aliased
    changed = np.argwhere((drawn != plain).any(axis=2))
    label_side = changed[changed[:, 1] > max(x for x, _ in c.long_axis_endpoints) + 2]
    assert len(label_side) > 50  # the label "14.0 mm" beside the right-hand end
    without = render_overlay(image, {0.5: mask}, legend=False)
    assert np.array_equal(without, plain)  # no calibration: no calipers (the thumbnails)


# -- measurement error against the truth (edge_runtime.core.caliper_error) -------------------------------


def box(h: int, w: int, y: int = 10, x: int = 10, size=(100, 100)) -> np.ndarray:
    mask = np.zeros(size, np.uint8)
    mask[y : y + h, x : x + w] = 255
    return mask


def test_caliper_rows_and_their_summary_on_any_subset():
    from edge_runtime.core.caliper_error import caliper_row, summarise_calipers

    truth = box(31, 41)  # 40 x 30 between pixel centres: long 50, short 30 * 50 / 40 = 37.5
    exact = caliper_row(box(31, 41, 20, 30), truth)  # the same size elsewhere: no error
    assert exact["long_axis_true_px"] == 50.0 and exact["long_axis_error"] == 0.0 and exact["short_axis_error"] == 0
    longer = caliper_row(box(31 + 6, 41 + 8), truth)  # 48 x 36: 20 % longer on both axes
    assert longer["long_axis_px"] == 60.0 and longer["long_axis_error"] == pytest.approx(0.2)
    assert longer["short_axis_error"] == pytest.approx(0.2)
    tall = caliper_row(box(41, 31), truth)  # the truth is wide, this one tall
    assert tall["taller_than_wide"] is True and tall["taller_than_wide_true"] is False
    missed = caliper_row(np.zeros((100, 100), np.uint8), truth)
    assert missed["long_axis_px"] is None and missed["long_axis_error"] == 1.0 and missed["taller_than_wide"] is None
    assert caliper_row(truth, np.zeros((100, 100), np.uint8)) == {}  # nodule-free truth: nothing to measure
    slightly = caliper_row(box(31 + 3, 41 + 4), truth)  # 10 % longer
    rows = [exact, longer, tall, missed, slightly, {}]
    s = summarise_calipers(rows)
    assert s["calipers_scans"] == 5
    assert s["long_axis_error_median"] == pytest.approx(0.1)  # 0, 0.1, 0.2, 1 and tall's 0
    assert s["long_axis_within_10"] == pytest.approx(3 / 5) and s["long_axis_within_20"] == pytest.approx(4 / 5)
    assert s["taller_than_wide_agreement"] == pytest.approx(3 / 5)  # tall disagrees, missed never agrees
    subset = summarise_calipers([exact, longer])  # any subset, e.g. one size band
    assert subset["calipers_scans"] == 2 and subset["long_axis_within_10"] == 0.5
    empty = summarise_calipers([])
    assert empty["calipers_scans"] == 0 and math.isnan(empty["long_axis_error_median"])


def test_edge_seg_eval_reports_the_measurement_error(tmp_path, tiny_model, caplog):
    import logging

    from edge_runtime.evaluate import main as evaluate_main

    for i in range(3):
        image, truth = nodule_scan(200, 260, (130, 100), (40 + 5 * i, 25), seed=i)
        write_png(tmp_path / "image" / f"s{i}.png", image)
        write_png(tmp_path / "mask" / f"s{i}.png", np.where(truth, 255, 0).astype(np.uint8))
    out = tmp_path / "e.json"
    argv = ["--images", tmp_path / "image", "--masks", tmp_path / "mask", "--model", tiny_model, "--json", out]
    with caplog.at_level(logging.INFO):
        assert evaluate_main([str(a) for a in [*argv, "--threshold", "0.5", "--no-hd95"]]) == 0
    report = json.loads(out.read_text())
    s = report["summary"]["0.5"]
    assert s["calipers_scans"] == 3 and 0 <= s["long_axis_error_median"] < 0.2  # the tiny model draws a bit inside
    rows = report["per_scan"]
    assert all(r["long_axis_true_px"] > 78 and r["long_axis_px"] > 0 for r in rows)
    errors = sorted(r["long_axis_error"] for r in rows)
    assert s["long_axis_error_median"] == pytest.approx(errors[1])
    assert "measurement error of the largest nodule" in caplog.text and f"{errors[1]:.1%}" in caplog.text


def test_the_secondary_capture_carries_the_calipers_as_the_overlay_draws_them():
    """`--dicom-results ...,sc`: the SC's picture is the overlay with both calipers, labelled in mm with a spacing."""
    import numpy as np

    from edge_runtime.core.calibration import Calibration
    from edge_runtime.outputs.overlays import LONG_AXIS_COLOUR, SHORT_AXIS_COLOUR
    from edge_runtime.outputs.sc import picture

    frame = np.full((200, 260), 90, np.uint8)
    mask = np.zeros((200, 260), np.uint8)
    cv2.ellipse(mask, (130, 100), (60, 30), 20, 0, 360, 255, -1)

    class Model:
        name, version = "m", "1"

    class Ident:
        model = Model()

    plain = picture(frame, {0.5: mask}, [0.5], Ident())  # type: ignore[arg-type]
    with_calipers = picture(frame, {0.5: mask}, [0.5], Ident(), Calibration(spacing=(0.1, 0.1)))  # type: ignore[arg-type]
    changed = (plain != with_calipers).any(axis=2)
    assert changed.sum() > 100  # two lines, four end marks and the label
    for colour in (LONG_AXIS_COLOUR, SHORT_AXIS_COLOUR):  # drawn where the picture differs
        assert (
            (with_calipers == colour).all(axis=2) & changed
        ).sum() > 5  # anti-aliased lines: a few pixels of the exact colour
