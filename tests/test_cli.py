"""`edge-seg IN --out OUT`: layout, formats, bad input, exit codes, up-to-date skipping."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.cli import main
from edge_runtime.job.ledger import read_records
from tests.helpers import make_tiny_model, synthetic, tiny_metadata, write_png


def run(*args: str | Path) -> int:
    return main([str(a) for a in args])


def png(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


@pytest.fixture
def scans(tmp_path) -> Path:
    """A folder of good scans in several formats, depths and subfolders."""
    root = tmp_path / "in"
    img, _ = synthetic(1, 240, 320)
    write_png(root / "a.png", img)
    write_png(root / "sub" / "deeper" / "b.png", synthetic(2, 200, 180)[0])
    cv2.imwrite(str(root / "sub" / "c.jpg"), synthetic(3, 210, 300)[0])
    cv2.imwrite(str(root / "d.bmp"), cv2.cvtColor(synthetic(4, 190, 250)[0], cv2.COLOR_GRAY2BGR))
    cv2.imwrite(str(root / "e.tif"), synthetic(5, 220, 260)[0])
    write_png(root / "f16.png", synthetic(6, 230, 240)[0].astype(np.uint16) * 257)
    rgba = cv2.cvtColor(synthetic(7, 250, 260)[0], cv2.COLOR_GRAY2BGRA)
    cv2.imwrite(str(root / "g_rgba.png"), rgba)
    (root / "notes.txt").write_text("not a scan, ignored by suffix")
    (root / ".hidden.png").write_bytes(b"ignored: hidden")
    (root / "h.png.part").write_bytes(b"ignored: partial download")
    return root


EXPECTED = {
    "a.png": (240, 320),
    "sub/deeper/b.png": (200, 180),
    "sub/c.png": (210, 300),
    "d.png": (190, 250),
    "e.png": (220, 260),
    "f16.png": (230, 240),
    "g_rgba.png": (250, 260),
}


def test_one_shot_writes_a_mask_per_scan_at_scan_size(scans, tmp_path, tiny_model):
    out = tmp_path / "out"
    assert run(scans, "--out", out, "--model", tiny_model) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == sorted(EXPECTED)
    for rel, hw in EXPECTED.items():
        mask = png(out / rel)
        assert mask.shape == hw and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        assert mask.max() == 255  # the tiny model finds each synthetic nodule
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".*.png*"))


def test_several_thresholds_give_one_folder_each(scans, tmp_path, tiny_model):
    out = tmp_path / "out"
    assert run(scans, "--out", out, "--model", tiny_model, "--threshold", "0.85", "0.9", "0.95") == 0
    for t in ("0.85", "0.9", "0.95"):
        assert sorted(p.relative_to(out / t).as_posix() for p in (out / t).rglob("*.png")) == sorted(EXPECTED)
    assert not (out / "a.png").exists()


def test_up_to_date_scans_are_skipped_and_changes_redone(scans, tmp_path, tiny_model, caplog):
    out = tmp_path / "out"
    assert run(scans, "--out", out, "--model", tiny_model) == 0
    first = (out / "a.png").stat().st_mtime_ns
    caplog.clear()
    assert run(scans, "--out", out, "--model", tiny_model) == 0
    assert "0 segmented, 7 up to date" in caplog.text
    assert (out / "a.png").stat().st_mtime_ns == first
    # a changed scan is redone; the others are not
    write_png(scans / "a.png", synthetic(99, 240, 320)[0])
    caplog.clear()
    assert run(scans, "--out", out, "--model", tiny_model) == 0
    assert "1 segmented, 6 up to date" in caplog.text
    # --force redoes everything; a different model (or thresholds) makes everything out of date
    caplog.clear()
    assert run(scans, "--out", out, "--model", tiny_model, "--force") == 0
    assert "7 segmented" in caplog.text
    other = make_tiny_model(tmp_path / "other.onnx", metadata=tiny_metadata(threshold=0.4))
    caplog.clear()
    assert run(scans, "--out", out, "--model", other) == 0
    assert "7 segmented" in caplog.text


def _bad_files(root: Path) -> dict[str, str]:
    """name -> expected words of the reason"""
    good, _ = synthetic(8, 200, 200)
    _, buf = cv2.imencode(".png", good)
    data = buf.tobytes()
    root.mkdir(parents=True, exist_ok=True)
    (root / "empty.png").write_bytes(b"")
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "text.png").write_text("hello, I am not an image\n")
    (root / "garbage.jpg").write_bytes(bytes(range(256)) * 20)
    _, jpg = cv2.imencode(".jpg", good)
    (root / "cut.jpg").write_bytes(jpg.tobytes()[: len(jpg) // 2])
    corrupt = bytearray(data)
    corrupt[60:400] = b"\x00" * 340
    (root / "corrupt.png").write_bytes(bytes(corrupt))
    _, huge = cv2.imencode(".png", np.zeros((7000, 6000), np.uint8))  # 42 MP, over the 40 MP limit
    (root / "huge.png").write_bytes(huge.tobytes())
    return {
        "empty.png": "empty file",
        "truncated.png": "truncated",
        "text.png": "not an image",
        "garbage.jpg": "not an image",
        "cut.jpg": "truncated JPEG",
        "corrupt.png": "corrupt",
        "huge.png": "too large",
    }


def test_bad_scans_are_named_with_a_reason_and_the_rest_is_written(scans, tmp_path, tiny_model, capfd):
    expected = _bad_files(scans / "bad")
    out = tmp_path / "out"
    assert run(scans, "--out", out, "--model", tiny_model) == 1
    err = capfd.readouterr().err
    assert "Traceback" not in err
    for name, words in expected.items():
        rel = f"bad/{name}"
        line = next((ln for ln in err.splitlines() if ln.startswith(f"FAIL {rel}:")), None)
        assert line is not None, f"no FAIL line for {rel} in:\n{err}"
        assert words in line, line
        record = (out / "bad" / f"{name}.error.txt").read_text()
        assert f"scan: {rel}" in record and words in record
        assert not (out / "bad" / (Path(name).stem + ".png")).exists()
    for rel in EXPECTED:  # every good scan is still written
        assert (out / rel).is_file()
    assert f"{len(EXPECTED)} segmented, 0 up to date, {len(expected)} failed" in err


def test_a_fixed_scan_is_processed_and_its_error_record_removed(tmp_path, tiny_model):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (src / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert run(src, "--out", out, "--model", tiny_model) == 1
    assert (out / "x.png.error.txt").exists()
    write_png(src / "x.png", synthetic(1)[0])
    assert run(src, "--out", out, "--model", tiny_model) == 0
    assert (out / "x.png").exists() and not (out / "x.png.error.txt").exists()


def test_two_scans_that_would_share_a_mask_name(tmp_path, tiny_model, capfd):
    src, out = tmp_path / "in", tmp_path / "out"
    write_png(src / "x.png", synthetic(1)[0])
    cv2.imwrite(str(src / "x.jpg"), synthetic(2)[0])
    assert run(src, "--out", out, "--model", tiny_model) == 1
    err = capfd.readouterr().err
    assert "FAIL x.jpg: OUT/x.png would be written by this scan and by x.png (same folder and name stem)" in err
    assert png(out / "x.png") is not None and (out / "x.jpg.error.txt").exists()


@pytest.mark.parametrize(
    "case",
    [
        "missing_in",
        "in_is_not_a_scan",
        "out_inside_in",
        "out_is_in",
        "out_not_writable",
        "bad_model",
        "no_metadata",
        "missing_model",
    ],
)
def test_setup_errors_exit_2_with_one_line(case, scans, tmp_path, tiny_model, capfd):
    out = tmp_path / "out"
    model = tiny_model
    src = scans
    if case == "missing_in":
        src = tmp_path / "nope"
    elif case == "in_is_not_a_scan":  # a file that is a scan is single-file mode
        src = scans / "notes.txt"
    elif case == "out_inside_in":
        out = scans / "masks"
    elif case == "out_is_in":
        out = scans
    elif case == "in_inside_out":
        out = scans.parent
    elif case == "out_not_writable":
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "out"
    elif case == "bad_model":
        model = tmp_path / "bad.onnx"
        model.write_bytes(b"junk")
    elif case == "no_metadata":
        model = make_tiny_model(tmp_path / "nometa.onnx", metadata="")
    elif case == "missing_model":
        model = tmp_path / "missing.onnx"
    assert run(src, "--out", out, "--model", model) == 2
    err = capfd.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert not (scans / "masks").exists()


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["in"],
        ["in", "--out", "o", "--threshold", "1.5"],
        ["in", "--out", "o", "--threshold", "x"],
        ["in", "--watch", "in", "--out", "o"],
        ["in", "--out", "o", "--batch-size", "0"],
    ],
)
def test_usage_errors_exit_2(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def test_version_answers_without_loading_anything_heavy():
    code = (
        "import sys\nfrom edge_runtime.cli import main\n"
        "try:\n    main(['--version'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "print(sorted(m for m in ('onnxruntime', 'cv2', 'numpy') if m in sys.modules))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.startswith("edge-seg ")
    assert res.stdout.strip().endswith("[]")


def test_runtime_never_imports_tensorflow(scans, tmp_path, tiny_model):
    """Import every runtime module and run a whole job in a fresh interpreter: no TF, Keras or tf2onnx."""
    code = f"""
import importlib, pkgutil, sys
import edge_runtime
for m in pkgutil.walk_packages(edge_runtime.__path__, "edge_runtime."):
    if m.name not in ("edge_runtime.__main__", "edge_runtime.files.dicom"):
        importlib.import_module(m.name)
from edge_runtime.cli import main
rc = main([{str(scans)!r}, "--out", {str(tmp_path / "o")!r}, "--model", {str(tiny_model)!r}, "-q"])
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf2onnx", "tf_keras"))
print(rc, bad)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip().splitlines()[-1] == "0 []"


def test_demo_writes_scans_and_masks(tmp_path, tiny_model, caplog):
    demo = tmp_path / "demo"
    assert run("--demo", demo, "--model", tiny_model) == 0
    assert len(list((demo / "scans").glob("*.png"))) == len(list((demo / "masks").glob("*.png"))) == 6
    assert "mean Dice against the synthetic truth" in caplog.text


def test_ledger_records_what_was_done(scans, tmp_path, tiny_model):
    out = tmp_path / "out"
    assert run(scans, "--out", out, "--model", tiny_model) == 0
    done = {rel: r for rel, r in read_records(out).items() if r["event"] == "done"}
    assert sorted(done) == sorted({"a.png", "sub/deeper/b.png", "sub/c.jpg", "d.bmp", "e.tif", "f16.png", "g_rgba.png"})
    assert all(len(r["sha256"]) == 64 and r["outputs"] for r in done.values())
