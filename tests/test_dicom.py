"""DICOM input: synthetic files built with pydicom here (no downloads), read directly and through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.cli import main
from edge_runtime.errors import ScanError
from edge_runtime.files.dicom import INSTALL_HINT
from edge_runtime.files.scans import read_scan
from edge_runtime.job.discovery import iter_scans
from tests.helpers import nodule_scan, write_dicom, write_png

pytest.importorskip("pydicom")


def run(*args: str | Path) -> int:
    return main([str(a) for a in args])


def gray(seed: int = 0, h: int = 60, w: int = 80) -> np.ndarray:
    return nodule_scan(h, w, (w // 2, h // 2), (w // 5, h // 5), seed)[0]


def rgb(seed: int = 0, h: int = 60, w: int = 80) -> np.ndarray:
    g = gray(seed, h, w)
    out = np.stack([g, g // 2, 255 - g], axis=-1)
    out[5:15, 5:25] = (200, 40, 90)  # a coloured block, as scanners draw colour annotations
    return out


# -- reading ---------------------------------------------------------------------------------------
def test_gray_8_bit_is_read_exactly(tmp_path):
    img = gray()
    scan = read_scan(write_dicom(tmp_path / "g.dcm", img))
    assert scan.format == "DICOM" and len(scan.frames) == 1
    assert scan.frames[0].dtype == np.uint8
    np.testing.assert_array_equal(scan.frames[0], img)


@pytest.mark.parametrize("bits", [12, 16])
def test_more_than_8_bits_stored_stays_16_bit(tmp_path, bits):
    img = (gray().astype(np.uint16) * ((1 << bits) - 1) // 255).astype(np.uint16)
    scan = read_scan(write_dicom(tmp_path / "g16.dcm", img, bits_stored=bits))
    assert scan.frames[0].dtype == np.uint16
    np.testing.assert_array_equal(scan.frames[0], img)


def test_monochrome1_is_inverted_so_bright_is_echogenic(tmp_path):
    img = gray()
    scan = read_scan(write_dicom(tmp_path / "m1.dcm", img, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(scan.frames[0], img)


def test_rgb_is_read_exactly(tmp_path):
    img = rgb()
    scan = read_scan(write_dicom(tmp_path / "rgb.dcm", img))
    assert scan.frames[0].shape == (60, 80, 3)
    np.testing.assert_array_equal(scan.frames[0], img)


def test_a_dicom_scan_carries_its_header_as_a_typed_field_and_other_scans_none(tmp_path):
    from pydicom import Dataset, dcmread

    src = write_dicom(tmp_path / "a.dcm", gray())
    scan = read_scan(src)
    assert isinstance(scan.dicom_header, Dataset) and "PixelData" not in scan.dicom_header
    assert scan.dicom_header.SOPInstanceUID == dcmread(src).SOPInstanceUID
    assert "dicom_header" not in scan.extra
    assert read_scan(write_png(tmp_path / "b.png", gray())).dicom_header is None


def test_ybr_full_is_converted_to_rgb(tmp_path):
    img = rgb()
    scan = read_scan(write_dicom(tmp_path / "ybr.dcm", img, photometric="YBR_FULL"))
    assert scan.frames[0].shape == img.shape and scan.frames[0].dtype == np.uint8
    assert np.abs(scan.frames[0].astype(int) - img).max() <= 2  # YCbCr round trip rounding only


def test_jpeg_baseline_gray_and_colour_are_decoded(tmp_path):
    g, c = gray(1, 96, 128), rgb(2, 96, 128)
    scan_g = read_scan(write_dicom(tmp_path / "jg.dcm", g, jpeg=True))
    scan_c = read_scan(write_dicom(tmp_path / "jc.dcm", c, jpeg=True))  # YBR_FULL_422, as scanners write it
    assert scan_g.extra["dicom"]["transfer_syntax"] == "1.2.840.10008.1.2.4.50"
    assert scan_c.extra["dicom"]["photometric_interpretation"] == "YBR_FULL_422"
    assert scan_g.frames[0].shape == g.shape and scan_c.frames[0].shape == c.shape
    # lossy (and speckle is the worst case for JPEG), but the same picture -- and in RGB order, not YCbCr
    assert np.abs(scan_g.frames[0].astype(int) - g).mean() < 6
    assert np.abs(_blur(scan_c.frames[0]) - _blur(c)).mean() < 6
    assert np.abs(scan_c.frames[0].mean(axis=(0, 1)) - c.mean(axis=(0, 1))).max() < 3
    assert np.abs(scan_c.frames[0][8, 10].astype(int) - (200, 40, 90)).max() < 30


def _blur(image: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(image.astype(np.float32), (0, 0), 2.0)


def test_palette_colour_applies_the_lookup_table(tmp_path):
    index = np.zeros((40, 50), np.uint8)
    index[10:20] = 1
    red = np.zeros(256, np.uint16)
    red[1] = 65535
    zeros = np.zeros(256, np.uint16).tobytes()
    path = write_dicom(
        tmp_path / "pal.dcm",
        index,
        photometric="PALETTE COLOR",
        RedPaletteColorLookupTableDescriptor=[256, 0, 16],
        GreenPaletteColorLookupTableDescriptor=[256, 0, 16],
        BluePaletteColorLookupTableDescriptor=[256, 0, 16],
        RedPaletteColorLookupTableData=red.tobytes(),
        GreenPaletteColorLookupTableData=zeros,
        BluePaletteColorLookupTableData=zeros,
    )
    frame = read_scan(path).frames[0]
    assert frame.shape == (40, 50, 3)
    assert tuple(frame[15, 0]) == (65535, 0, 0) and tuple(frame[0, 0]) == (0, 0, 0)


def test_multi_frame_gives_every_frame(tmp_path):
    frames = [gray(s) for s in range(3)]
    scan = read_scan(write_dicom(tmp_path / "cine.dcm", frames))
    assert len(scan.frames) == 3
    for got, want in zip(scan.frames, frames, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("kwargs", "spacing", "source"),
    [
        ({"us_region_cm": (0.02, 0.015)}, (0.15, 0.2), "ultrasound_region"),
        ({"pixel_spacing": (0.1, 0.12)}, (0.1, 0.12), "pixel_spacing"),
        ({"us_region_cm": (0.02, 0.015), "pixel_spacing": (0.1, 0.12)}, (0.15, 0.2), "ultrasound_region"),
        ({}, None, None),
    ],
)
def test_pixel_spacing_and_its_source(tmp_path, kwargs, spacing, source):
    scan = read_scan(write_dicom(tmp_path / "s.dcm", gray(), **kwargs))
    if spacing is None:
        assert scan.pixel_spacing_mm is None
    else:
        assert scan.pixel_spacing_mm == pytest.approx(spacing)
    assert scan.extra["pixel_spacing_source"] == source


def test_ultrasound_region_in_other_units_is_not_taken_for_cm(tmp_path):
    path = write_dicom(tmp_path / "s.dcm", gray(), us_region_cm=(0.02, 0.015))
    import pydicom

    ds = pydicom.dcmread(path)
    ds.SequenceOfUltrasoundRegions[0].PhysicalUnitsXDirection = 4  # seconds (M-mode / Doppler region)
    ds.save_as(path)
    assert read_scan(path).pixel_spacing_mm is None


@pytest.mark.parametrize(
    ("name", "make", "words"),
    [
        ("nopix.dcm", lambda p: write_dicom(p, gray(), PixelData=None), "no pixel data"),
        ("cut.dcm", lambda p: p.write_bytes(write_dicom(p, gray()).read_bytes()[:-1500]), "truncated"),
        ("junk.dcm", lambda p: p.write_bytes(b"\x00" * 128 + b"DICM" + bytes(range(256)) * 4), "corrupt"),
        ("text.dcm", lambda p: p.write_text("not DICOM at all, just a note\n" * 10), "not a DICOM file"),
        ("badjpeg.dcm", lambda p: _bad_jpeg(p), "corrupt or truncated DICOM pixel data (JPEG Baseline"),
    ],
)
@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's own comments on the junk it is given
def test_unusable_dicom_raises_a_scan_error_naming_the_file(tmp_path, name, make, words):
    path = tmp_path / name
    make(path)
    with pytest.raises(ScanError) as exc:
        read_scan(path)
    assert exc.value.path == str(path) and words in exc.value.reason, exc.value.reason


def _bad_jpeg(path: Path) -> None:
    from pydicom.encaps import encapsulate

    good = cv2.imencode(".jpg", gray())[1].tobytes()
    write_dicom(path, gray(), jpeg=True, pixel_data=encapsulate([good[:300]]))


# -- through the CLI --------------------------------------------------------------------------------
def test_multi_frame_gives_one_mask_per_frame(tmp_path, tiny_model):
    src, out = tmp_path / "in", tmp_path / "out"
    frames = [nodule_scan(200, 260, (130, 100), (45, 30), s)[0] for s in range(3)]
    write_dicom(src / "sub" / "cine.dcm", frames)
    assert run(src, "--out", out, "--model", tiny_model) == 0
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert names == [f"sub/cine_f{i:04d}.png" for i in (1, 2, 3)]
    for name in names:
        mask = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (200, 260) and mask.max() == 255


def test_bad_dicom_gets_an_error_record_and_the_others_are_written(tmp_path, tiny_model, capfd):
    src, out = tmp_path / "in", tmp_path / "out"
    write_dicom(src / "good.dcm", gray(0, 120, 160))
    (src / "bad.dcm").write_bytes(write_dicom(tmp_path / "x.dcm", gray(0, 120, 160)).read_bytes()[:-4000])
    write_dicom(src / "empty.dcm", gray(), PixelData=None)
    write_png(src / "plain.png", gray(1, 120, 160))
    assert run(src, "--out", out, "--model", tiny_model) == 1
    err = capfd.readouterr().err
    assert "FAIL bad.dcm: corrupt or truncated DICOM" in err
    assert "FAIL empty.dcm: DICOM file has no pixel data" in err
    assert "reason: corrupt or truncated DICOM" in (out / "bad.dcm.error.txt").read_text()
    assert (out / "good.png").exists() and (out / "plain.png").exists()
    assert not (out / "bad.png").exists() and not (out / "empty.png").exists()


def test_dicom_without_suffix_is_found_by_content(tmp_path, tiny_model):
    src, out = tmp_path / "in", tmp_path / "out"
    write_dicom(src / "IM000001", gray(0, 120, 160))
    write_dicom(src / "1.2.840.99.1.7", gray(1, 120, 160))  # named by its SOP instance UID
    write_dicom(src / "1.2.840.99.1.8", gray(2, 120, 160))  # same "stem" if the UID's tail were a suffix
    (src / "README").write_text("not a scan")
    (src / "DICOMDIR").write_bytes(b"\x00" * 128 + b"DICM" + b"\x00" * 64)  # a directory record, never a scan
    assert sorted(iter_scans(src)) == ["1.2.840.99.1.7", "1.2.840.99.1.8", "IM000001"]
    assert run(src, "--out", out, "--model", tiny_model) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["1.2.840.99.1.7.png", "1.2.840.99.1.8.png", "IM000001.png"]


def test_missing_pydicom_names_the_extra_and_the_other_scans_are_written(tmp_path, tiny_model):
    """pydicom hidden by a package that fails to import, in a fresh interpreter, as if it were not installed."""
    src, out, block = tmp_path / "in", tmp_path / "out", tmp_path / "block"
    write_dicom(src / "a.dcm", gray())
    write_png(src / "b.png", gray(1))
    (block / "pydicom").mkdir(parents=True)
    (block / "pydicom" / "__init__.py").write_text("raise ImportError(\"No module named 'pydicom'\")\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(block), os.environ.get("PYTHONPATH", "")])}
    code = textwrap.dedent(
        f"""
        import sys
        from edge_runtime.cli import main
        sys.exit(main([{str(src)!r}, "--out", {str(out)!r}, "--model", {str(tiny_model)!r}, "--report"]))
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert f"FAIL a.dcm: {INSTALL_HINT}" in res.stderr
    assert INSTALL_HINT in (out / "a.dcm.error.txt").read_text()
    assert (out / "b.png").exists() and (out / "reports" / "b.json").exists()
    summary = (out / "run-summary.csv").read_text()
    assert "a.dcm,failed," in summary and "pip install" in summary


def test_missing_pydicom_in_process_gives_the_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pydicom", None)  # `import pydicom` now raises ImportError
    path = tmp_path / "a.dcm"
    path.write_bytes(b"\x00" * 128 + b"DICM" + b"\x00" * 200)
    with pytest.raises(ScanError, match="pip install"):
        read_scan(path)


def test_report_of_a_dicom_carries_its_spacing(tmp_path, tiny_model):
    src, out = tmp_path / "in", tmp_path / "out"
    img, _ = nodule_scan(240, 320, (160, 120), (55, 40))
    write_dicom(src / "region.dcm", img, us_region_cm=(0.01, 0.02))  # 0.1 mm across, 0.2 mm down
    write_dicom(src / "none.dcm", img)
    assert run(src, "--out", out, "--model", tiny_model, "--report") == 0
    region = json.loads((out / "reports" / "region.json").read_text())
    none = json.loads((out / "reports" / "none.json").read_text())
    assert region["scan"]["pixel_spacing_mm"] == pytest.approx([0.2, 0.1])
    assert region["scan"]["pixel_spacing_source"] == "ultrasound_region"
    nodule = region["frames"][0]["results"][0]["nodules"][0]
    assert nodule["area_mm2"] == pytest.approx(nodule["area_px"] * 0.02, rel=1e-3)
    assert none["scan"]["pixel_spacing_mm"] is None and none["scan"]["pixel_spacing_source"] is None
    assert none["frames"][0]["results"][0]["nodules"][0]["area_mm2"] is None
