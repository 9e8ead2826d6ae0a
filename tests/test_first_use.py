"""What a new user tries first (issue 15, frictions): one file in, one mask out; `Segmenter.segment(path)`;
scoring a multi-threshold OUT; a warning when OUT's settings change; the demo's overlays.

The CLI runs as a real process where the user reads its output."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime import ScanError, Segmenter, read_scan
from edge_runtime.core import segmenter as core
from edge_runtime.evaluate import main as eval_main
from edge_runtime.job.ledger import read_records
from tests.helpers import nodule_scan, synthetic, write_dicom, write_png


def edge_seg(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "edge_runtime", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd)


def mask(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


# -- single-file mode --------------------------------------------------------------------------------


def test_one_file_in_one_mask_out(tmp_path, tiny_model):
    """Issue 15: `edge-seg scan.png --out masks/` said the input is not a folder."""
    scans = tmp_path / "scans"
    write_png(scans / "scan.png", synthetic(1, 200, 240)[0])
    write_png(scans / "other.png", synthetic(2)[0])  # beside it, not read
    res = edge_seg("scans/scan.png", "--out", "masks", "--model", tiny_model, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (tmp_path / "masks").glob("*.png")) == ["scan.png"]
    m = mask(tmp_path / "masks" / "scan.png")
    assert m.shape == (200, 240) and set(np.unique(m)) == {0, 255}
    assert "ok   scan.png -> scan.png" in res.stderr and "done: 1 segmented" in res.stderr
    # the ledger's rules, as for a folder: up to date, and redone once the file changes
    assert "done: 0 segmented, 1 up to date" in edge_seg("scans/scan.png", "--out", "masks", "--model", tiny_model,
                                                         cwd=tmp_path).stderr  # fmt: skip
    assert set(read_records(tmp_path / "masks")) == {"scan.png"}
    write_png(scans / "scan.png", synthetic(3, 180, 200)[0])
    res = edge_seg(scans / "scan.png", "--out", tmp_path / "masks", "--model", tiny_model)
    assert "done: 1 segmented" in res.stderr and mask(tmp_path / "masks" / "scan.png").shape == (180, 200)


def test_an_out_beside_the_file_is_fine(tmp_path, tiny_model):
    """Only the file is read, so OUT may lie in its folder (for a folder, OUT inside IN is refused)."""
    write_png(tmp_path / "scan.png", synthetic(1)[0])
    res = edge_seg(tmp_path / "scan.png", "--out", tmp_path / "masks", "--model", tiny_model)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "masks" / "scan.png").is_file()


@pytest.mark.parametrize("name", ["cine.dcm", "IM000001"])
def test_one_dicom_file_gives_a_mask_per_frame(tmp_path, tiny_model, name):
    pytest.importorskip("pydicom")
    frames = [nodule_scan(120, 160, (80, 60), (30, 20), s)[0] for s in range(2)]
    write_dicom(tmp_path / "in" / name, frames)
    res = edge_seg(tmp_path / "in" / name, "--out", tmp_path / "out", "--model", tiny_model)
    assert res.returncode == 0, res.stderr
    stem = name.removesuffix(".dcm")
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [f"{stem}_f0001.png", f"{stem}_f0002.png"]


@pytest.mark.parametrize("case", ["not_a_scan", "missing", "inside_out", "watch_a_file", "out_a_mask_name"])
def test_a_file_that_cannot_be_used_is_one_line_and_exit_2(tmp_path, tiny_model, case):
    out = tmp_path / "out"
    args: list[str | Path] = [tmp_path / "notes.txt", "--out", out]
    (tmp_path / "notes.txt").write_text("not a scan")
    if case == "missing":
        args[0] = tmp_path / "nope.png"
    elif case == "inside_out":  # its mask would be written over it
        args[0] = write_png(out / "scan.png", synthetic(1)[0])
    elif case == "watch_a_file":
        args = ["--watch", write_png(tmp_path / "scan.png", synthetic(1)[0]), "--out", out]
    elif case == "out_a_mask_name":  # as rembg is called: `rembg i in.png out.png`
        args = [write_png(tmp_path / "scan.jpeg", synthetic(1)[0]), "--out", tmp_path / "mask.png"]
    res = edge_seg(*args, "--model", tiny_model)
    expected = {
        "not_a_scan": "is not a scan: scans are",
        "missing": "nope.png does not exist",
        "inside_out": "is inside output folder",
        "watch_a_file": "--watch follows a folder",
        "out_a_mask_name": f"--out is a folder, not a mask file: edge-seg {tmp_path / 'scan.jpeg'} --out "
        f"{tmp_path / 'masks'} writes {tmp_path / 'masks' / 'scan.png'}",
    }[case]
    assert res.returncode == 2 and "Traceback" not in res.stderr
    line = re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", "", res.stderr)  # --watch lines carry the time
    assert len(res.stderr.splitlines()) == 1 and line.startswith("error: ") and expected in line
    assert not (tmp_path / "mask.png").exists()


# -- Segmenter.segment(path) -------------------------------------------------------------------------


def test_segment_takes_a_path_as_str_or_path(tmp_path, tiny_model):
    """Issue 15: `Segmenter.segment("scan.png")` raised AttributeError."""
    path = write_png(tmp_path / "scan.png", synthetic(1, 200, 240)[0])
    seg = Segmenter(tiny_model)
    want = seg.segment(read_scan(path).frames[0])
    for given in (str(path), path):
        got = seg.segment(given)
        np.testing.assert_array_equal(got.masks[seg.threshold], want.masks[seg.threshold])
        assert got.masks[seg.threshold].shape == (200, 240)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ScanError, match=r"bad\.png"):
        seg.segment(tmp_path / "bad.png")


def test_segment_names_what_to_do_with_a_multi_frame_file(tmp_path, tiny_model):
    pytest.importorskip("pydicom")
    path = write_dicom(tmp_path / "cine.dcm", [synthetic(s, 80, 100)[0] for s in range(3)])
    with pytest.raises(ScanError, match=r"has 3 frames; segment_batch\(read_scan\(path\).frames\)"):
        Segmenter(tiny_model).segment(path)


def test_the_pixel_only_segmenter_says_what_it_takes(tiny_model):
    with pytest.raises(TypeError, match="takes the pixels as a NumPy array, not str; for a file, use edge_runtime"):
        core.Segmenter(tiny_model).segment("scan.png")  # type: ignore[arg-type]


# -- edge-seg-eval --predicted on a multi-threshold OUT -----------------------------------------------


@pytest.fixture
def labelled(tmp_path) -> Path:
    root = tmp_path / "lab"
    for i in range(4):
        image, truth = synthetic(i, 150, 180)
        write_png(root / "image" / f"n{i}.png", image)
        write_png(root / "mask" / f"n{i}.png", truth.astype(np.uint8) * 255)
    return root


def test_eval_scores_each_threshold_folder_of_an_out(labelled, tmp_path, tiny_model, capsys):
    """Issue 15: `edge-seg-eval --predicted OUT` on a multi-threshold OUT failed."""
    out = tmp_path / "out"
    assert (
        edge_seg(labelled / "image", "--out", out, "--model", tiny_model, "--threshold", "0.3", "0.7").returncode == 0
    )
    common = ["--images", str(labelled / "image"), "--masks", str(labelled / "mask"), "--no-hd95"]
    assert eval_main([*common, "--predicted", str(out), "--json", str(tmp_path / "w.json")]) == 0
    table = capsys.readouterr().out.strip().split("\n\n")[0].splitlines()
    assert [ln.split()[0] for ln in table[1:]] == ["0.3", "0.7"]
    assert eval_main([*common, "--model", str(tiny_model), "--threshold", "0.3", "0.7", "--json",
                      str(tmp_path / "d.json")]) == 0  # fmt: skip
    capsys.readouterr()
    written, direct = (json.loads((tmp_path / f).read_text()) for f in ("w.json", "d.json"))
    assert list(written["summary"]) == ["0.3", "0.7"]
    for label in ("0.3", "0.7"):  # the same figures as scoring the model at that threshold
        assert written["summary"][label]["dice_mean"] == pytest.approx(direct["summary"][label]["dice_mean"], abs=1e-9)
    assert {r["threshold"] for r in written["per_scan"]} == {0.3, 0.7} and len(written["per_scan"]) == 8
    # --threshold picks folders; one that is not there is named with those that are
    assert eval_main([*common, "--predicted", str(out), "--threshold", "0.7"]) == 0
    assert [ln.split()[0] for ln in capsys.readouterr().out.strip().split("\n\n")[0].splitlines()[1:]] == ["0.7"]
    assert eval_main([*common, "--predicted", str(out), "--threshold", "0.5"]) == 2


# -- a warning when OUT's settings change ------------------------------------------------------------


def test_a_run_with_other_settings_into_an_out_warns_and_says_so_in_the_summary(tmp_path, tiny_model):
    """Issue 15: `--threshold 0.9` into an OUT made at the default replaced the masks without a word."""
    for i in range(3):
        write_png(tmp_path / "in" / f"s{i}.png", synthetic(i)[0])
    args = (tmp_path / "in", "--out", tmp_path / "out", "--model", tiny_model)
    first = edge_seg(*args)
    assert first.returncode == 0 and "warning" not in first.stderr
    second = edge_seg(*args, "--threshold", "0.9")
    warning = [ln for ln in second.stderr.splitlines() if ln.startswith("warning: ")]
    assert len(warning) == 1, second.stderr
    assert "was made with other settings (threshold 0.5 -> 0.9)" in warning[0]
    assert "scans done with those are redone, and their masks are replaced under the same names" in warning[0]
    summary = next(ln for ln in second.stderr.splitlines() if ln.startswith("done: "))
    assert summary.startswith("done: 3 segmented") and summary.endswith("OUT's settings changed: threshold 0.5 -> 0.9")
    settings = json.loads((tmp_path / "out" / ".edge-seg" / "settings.json").read_text())
    assert settings["thresholds"] == [0.9] and settings["model"]["name"] == "tiny-dark-finder"
    third = edge_seg(*args, "--threshold", "0.9")  # the same settings again: nothing to warn about
    assert "warning" not in third.stderr and "done: 0 segmented, 3 up to date" in third.stderr
    fourth = edge_seg(*args, "--threshold", "0.9", "--overlay", "-q")  # also under -q
    assert "outputs masks -> masks, overlays" in fourth.stderr.splitlines()[0]


# -- the demo shows what was found -------------------------------------------------------------------


def test_the_demo_draws_overlays_and_says_where(tmp_path, tiny_model):
    """Issue 15: the demo wrote no overlays, so a new user never saw what was found."""
    res = edge_seg("--demo", tmp_path / "demo", "--model", tiny_model)
    assert res.returncode == 0, res.stderr
    overlays = sorted((tmp_path / "demo" / "masks" / "overlays").glob("*.png"))
    assert len(overlays) == 6
    last = res.stderr.strip().splitlines()[-1]
    named = re.search(r"open the outlines drawn on the scans: (\S+) \(6 in (\S+)\)", last)
    assert named, last
    assert Path(named[1]) == overlays[0] and Path(named[2]) == overlays[0].parent
    shown = cv2.imread(str(overlays[0]), cv2.IMREAD_COLOR)
    assert shown.shape[:2] == read_scan(tmp_path / "demo" / "scans" / overlays[0].name).frames[0].shape[:2]
    assert (np.abs(shown[..., 1].astype(int) - shown[..., 2].astype(int)) > 100).any()  # a coloured outline
