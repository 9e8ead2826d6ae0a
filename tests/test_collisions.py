"""Two scans that would write the same output file: every collision refused, both scans named, and which
one keeps the name does not depend on sort order, thread timing or a corrupt neighbour (issue 15)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.cli import main
from edge_runtime.errors import ScanError
from edge_runtime.job.ledger import read_records
from tests.helpers import synthetic, write_png


def run(src: Path, out: Path, model: Path, *extra: str) -> int:
    return main([str(src), "--out", str(out), "--model", str(model), *extra])


def latest(out: Path) -> dict[str, dict]:
    return read_records(out)


def owners(out: Path) -> Counter:
    """How many scans the ledger says are done with each output file."""
    return Counter(o for r in latest(out).values() if r["event"] == "done" for o in r["outputs"])


def tiff(path: Path, pages: list[np.ndarray]) -> None:
    ok, buf = cv2.imencodemulti(".tif", pages)
    assert ok
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.tobytes())


def test_a_scan_named_like_a_frame_of_a_multi_frame_scan(tmp_path, tiny_model, capfd):
    src, out = tmp_path / "in", tmp_path / "out"
    tiff(src / "cine.tif", [synthetic(s, 120, 140)[0] for s in (1, 2, 3)])
    frame_like = synthetic(9, 100, 100)[0]
    write_png(src / "cine_f0002.png", frame_like)
    assert run(src, out, tiny_model) == 1
    err = capfd.readouterr().err
    assert (
        "FAIL cine.tif: OUT/cine_f0002.png would be written by this scan and by cine_f0002.png "
        "(a scan named like one of its frames)" in err
    )
    assert cv2.imread(str(out / "cine_f0002.png"), cv2.IMREAD_UNCHANGED).shape == (100, 100)  # not a frame's
    assert not (out / "cine_f0001.png").exists() and (out / "cine.tif.error.txt").exists()
    assert max(owners(out).values()) == 1
    assert run(src, out, tiny_model) == 1  # the next run says the same; nothing is "up to date" for cine.tif
    assert "FAIL cine.tif: OUT/cine_f0002.png" in capfd.readouterr().err


def test_a_dicom_cine_and_a_scan_named_like_its_frame(tmp_path, tiny_model, capfd):
    pytest.importorskip("pydicom")
    from tests.helpers import write_dicom

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    write_dicom(src / "cine.dcm", [synthetic(s, 120, 140)[0] for s in (1, 2, 3)])
    write_png(src / "cine_f0002.png", synthetic(9, 100, 100)[0])
    assert run(src, out, tiny_model) == 1
    assert "FAIL cine.dcm: OUT/cine_f0002.png would be written by this scan and by cine_f0002.png" in (
        capfd.readouterr().err
    )
    assert max(owners(out).values()) == 1


@pytest.mark.parametrize("other", ["same.jpg", "same.bmp", "same.tif"])
def test_same_stem_the_scan_named_like_the_mask_keeps_it_and_the_error_file_is_the_others(
    tmp_path, tiny_model, capfd, other
):
    src, out = tmp_path / "in", tmp_path / "out"
    write_png(src / "same.png", synthetic(1, 120, 140)[0])
    cv2.imwrite(str(src / other), synthetic(2, 90, 80)[0])
    assert run(src, out, tiny_model, "--overlay", "--report") == 1
    err = capfd.readouterr().err
    assert f"FAIL {other}: OUT/" in err and "by same.png (same folder and name stem)" in err
    assert cv2.imread(str(out / "same.png"), cv2.IMREAD_UNCHANGED).shape == (120, 140)
    assert not (out / "same.png.error.txt").exists()  # no error file beside same.png's own mask
    assert (out / f"{other}.error.txt").exists()
    assert json.loads((out / "reports" / "same.json").read_text())["scan"]["path"] == "same.png"
    assert max(owners(out).values()) == 1


@pytest.mark.parametrize(("bad", "good"), [("x.jpg", "x.png"), ("x.png", "x.jpg"), ("x.bmp", "x.jpg")])
def test_a_corrupt_scan_does_not_keep_a_good_one_from_its_name(tmp_path, tiny_model, capfd, bad, good):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (src / bad).write_bytes(b"\xff\xd8\xff\xe0 not really" if bad.endswith(".jpg") else b"\x89PNG\r\n\x1a\n broken")
    cv2.imwrite(str(src / good), synthetic(3, 110, 120)[0])
    assert run(src, out, tiny_model) == 1
    err = capfd.readouterr().err
    assert f"ok   {good} -> x.png" in err
    assert f"FAIL {bad}:" in err and "would be written" not in err  # its own reason, not a collision
    assert latest(out)[good]["event"] == "done"


def test_a_newcomer_not_named_like_the_mask_does_not_take_it_from_a_scan_done_before(tmp_path, tiny_model, capfd):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    cv2.imwrite(str(src / "x.jpg"), synthetic(1, 120, 140)[0])
    assert run(src, out, tiny_model) == 0
    cv2.imwrite(str(src / "x.bmp"), synthetic(2, 90, 80)[0])
    capfd.readouterr()
    assert run(src, out, tiny_model) == 1
    assert "FAIL x.bmp: OUT/x.png would be written by this scan and by x.jpg" in capfd.readouterr().err
    assert cv2.imread(str(out / "x.png"), cv2.IMREAD_UNCHANGED).shape == (120, 140)  # still x.jpg's
    assert latest(out)["x.jpg"]["event"] == "done" and latest(out)["x.bmp"]["event"] == "error"
    (src / "x.jpg").unlink()  # once the owner is gone, the name is free
    assert run(src, out, tiny_model) == 0
    assert cv2.imread(str(out / "x.png"), cv2.IMREAD_UNCHANGED).shape == (90, 80)


def test_a_newcomer_named_like_the_mask_takes_it_as_it_would_have_in_one_run(tmp_path, tiny_model, capfd):
    """x.jpg done, then x.png arrives: OUT/x.png becomes x.png's mask, never beside an error file of that
    name, and x.jpg is refused with both named, as a run over both at once would have left them."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    cv2.imwrite(str(src / "x.jpg"), synthetic(1, 120, 140)[0])
    assert run(src, out, tiny_model, "--report") == 0
    write_png(src / "x.png", synthetic(2, 90, 80)[0])
    capfd.readouterr()
    assert run(src, out, tiny_model, "--report") == 1  # as a run over both would: x.jpg failed
    err = capfd.readouterr().err
    assert "ok   x.png -> x.png" in err
    assert "FAIL x.jpg: OUT/x.png is now written by x.png, which is named like it" in err
    assert "done: 1 segmented, 0 up to date, 1 failed" in err
    rows = (out / "run-summary.csv").read_text()
    assert "x.jpg,failed" in rows.replace('"', "") and "up-to-date" not in rows
    assert cv2.imread(str(out / "x.png"), cv2.IMREAD_UNCHANGED).shape == (90, 80)
    assert cv2.imread(str(out / "overlays" / "x.png")).shape[:2] == (90, 80)
    assert json.loads((out / "reports" / "x.json").read_text())["scan"]["path"] == "x.png"
    assert not (out / "x.png.error.txt").exists()
    assert "reason: OUT/x.png is now written by x.png" in (out / "x.jpg.error.txt").read_text()
    assert latest(out)["x.jpg"]["event"] == "error" and latest(out)["x.png"]["event"] == "done"
    assert max(owners(out).values()) == 1
    fresh = tmp_path / "fresh"  # the same as one run over both
    assert run(src, fresh, tiny_model, "--report") == 1
    assert (cv2.imread(str(fresh / "x.png"), cv2.IMREAD_UNCHANGED) == cv2.imread(str(out / "x.png"))[:, :, 0]).all()
    capfd.readouterr()
    assert run(src, out, tiny_model, "--report") == 1  # x.jpg is retried and refused again; x.png keeps it
    assert "FAIL x.jpg: OUT/x.png would be written by this scan and by x.png" in capfd.readouterr().err
    assert cv2.imread(str(out / "x.png"), cv2.IMREAD_UNCHANGED).shape == (90, 80)


def test_a_scan_done_before_and_changed_since_is_counted_once_when_a_newcomer_takes_its_name(
    tmp_path, tiny_model, capfd
):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    cv2.imwrite(str(src / "x.jpg"), synthetic(1, 120, 140)[0])
    assert run(src, out, tiny_model) == 0
    cv2.imwrite(str(src / "x.jpg"), synthetic(3, 130, 150)[0])  # changed: this run reads it again
    write_png(src / "x.png", synthetic(2, 90, 80)[0])
    capfd.readouterr()
    assert run(src, out, tiny_model) == 1
    err = capfd.readouterr().err
    assert sum(ln.startswith("FAIL x.jpg") for ln in err.splitlines()) == 1
    assert "done: 1 segmented, 0 up to date, 1 failed" in err
    assert cv2.imread(str(out / "x.png"), cv2.IMREAD_UNCHANGED).shape == (90, 80)


def test_a_frame_named_scan_takes_its_name_from_a_cine_done_before_and_the_cine_leaves_nothing(
    tmp_path, tiny_model, capfd
):
    src, out = tmp_path / "in", tmp_path / "out"
    tiff(src / "cine.tif", [synthetic(s, 120, 140)[0] for s in (1, 2, 3)])
    assert run(src, out, tiny_model, "--overlay") == 0
    assert (out / "cine_f0003.png").exists() and (out / "overlays" / "cine_f0001.png").exists()
    write_png(src / "cine_f0002.png", synthetic(9, 100, 100)[0])
    assert run(src, out, tiny_model, "--overlay") == 1
    assert "FAIL cine.tif: OUT/cine_f0002.png is now written by cine_f0002.png" in (capfd.readouterr().err)
    assert cv2.imread(str(out / "cine_f0002.png"), cv2.IMREAD_UNCHANGED).shape == (100, 100)
    left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert left == ["cine_f0002.png", "overlays/cine_f0002.png"]  # no frame of a refused scan stays behind
    assert (out / "cine.tif.error.txt").exists() and latest(out)["cine.tif"]["event"] == "error"


class Done:
    """The ledger's done records, as :class:`edge_runtime.outputs.naming.Naming` reads them."""

    def __init__(self, **outputs: list[str]) -> None:
        self.records = {rel.replace("_", "."): {"event": "done", "outputs": outs} for rel, outs in outputs.items()}

    def done_with_prefix(self, prefix: str) -> list[tuple[str, dict]]:
        return [(rel, rec) for rel, rec in self.records.items() if rel.startswith(prefix)]


def test_a_group_goes_one_scan_at_a_time_and_the_client_decides_who_keeps_a_name(tmp_path):
    """x.jpg out on a worker: x.png and x.bmp wait for it, then go with the names x.jpg keeps."""
    from edge_runtime.outputs.naming import Names, Naming

    for name in ("x.jpg", "x.png", "x.bmp", "y.png"):
        (tmp_path / name).touch()
    ledger = Done()
    naming = Naming(tmp_path, ledger, 1, [])
    assert naming.grant("x.jpg") == Names("x.jpg")
    assert naming.grant("x.png") is None and naming.grant("x.bmp") is None  # wait for x.jpg
    assert naming.waiting("x.png") and not naming.waiting("y.png")
    assert naming.grant("y.png") == Names("y.png")  # another group goes at once
    ledger.records["x.jpg"] = {"event": "done", "outputs": ["x.png", "overlays/x.png"]}  # x.jpg recorded done
    assert naming.release("x.jpg") == ["x.png", "x.bmp"]
    names = naming.grant("x.png")
    assert isinstance(names, Names) and names.taken == {"x.png", "overlays/x.png"}
    assert names.contested(["x.png"]) and not names.contested(["x_f0001.png"])
    # read: x.png is named like its mask and takes it; x.bmp, not, is refused naming x.jpg
    assert naming.contest("x.png", ["x.png", "overlays/x.png"]) == [("x.jpg", "x.png")]
    with pytest.raises(ScanError, match=re.escape("OUT/x.png would be written by this scan and by x.jpg")):
        naming.contest("x.bmp", ["x.png"])
    (tmp_path / "x.jpg").unlink()  # once the scan that kept it is gone from IN, the name is free
    assert naming.contest("x.bmp", ["x.png"]) == []


def test_suffixes_compare_as_output_names_are_made_and_case_folds_where_the_file_system_does(tmp_path):
    from edge_runtime.outputs.naming import Naming, folds_case

    for name in ("x.Png", "x.jpg", "X.PNG", "Y.png", "y.jpg"):
        (tmp_path / name).touch()
    naming = Naming(tmp_path, Done(x_Png=["x.png"], Y_png=["Y.png"]), 1, [])
    with pytest.raises(ScanError, match=re.escape("OUT/x.png would be written by this scan and by x.Png")):
        naming.contest("x.jpg", ["x.png"])
    assert naming.contest("y.jpg", ["y.png"]) == []  # Y.png and y.png are two files here
    folding = Naming(tmp_path, Done(x_Png=["x.png"], Y_png=["Y.png"]), 1, [], folds_case=True)
    assert folding.grant("y.jpg").contested(["y.png"])  # type: ignore[union-attr]
    with pytest.raises(ScanError, match=re.escape("OUT/y.png would be written by this scan and by Y.png")):
        folding.contest("y.jpg", ["y.png"])
    assert folding.grant("x.jpg") is not None and folding.grant("X.PNG") is None  # one group: X.PNG waits
    assert not folds_case(tmp_path)  # this machine's temporary folder tells X from x


def test_a_case_variant_done_before_keeps_its_mask_from_a_newcomer(tmp_path, tiny_model, capfd):
    """x.Png done, then x.jpg added: both would write OUT/x.png; x.Png, done first, keeps it (issue 27)."""
    src, out = tmp_path / "in", tmp_path / "out"
    write_png(src / "x.Png", synthetic(1, 120, 140)[0])
    assert run(src, out, tiny_model, "--report") == 0
    cv2.imwrite(str(src / "x.jpg"), synthetic(2, 90, 80)[0])
    capfd.readouterr()
    assert run(src, out, tiny_model, "--report") == 1
    assert "FAIL x.jpg: OUT/x.png would be written by this scan and by x.Png" in capfd.readouterr().err
    assert cv2.imread(str(out / "x.png"), cv2.IMREAD_UNCHANGED).shape == (120, 140)  # still x.Png's
    assert json.loads((out / "reports" / "x.json").read_text())["scan"]["path"] == "x.Png"
    assert latest(out)["x.Png"]["event"] == "done" and latest(out)["x.jpg"]["event"] == "error"
    assert max(owners(out).values()) == 1


def test_with_many_workers_the_same_scans_keep_their_names_every_time(tmp_path, tiny_model):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(12):
        cv2.imwrite(str(src / f"g{i:02d}.jpg"), synthetic(i)[0])
        cv2.imwrite(str(src / f"g{i:02d}.bmp"), synthetic(50 + i)[0])
        if i % 3 == 0:
            write_png(src / f"g{i:02d}.png", synthetic(100 + i)[0])
    winners = []
    for attempt in range(3):
        out = tmp_path / f"out{attempt}"
        assert run(src, out, tiny_model, "--threads", "3", "--batch-size", "1") == 1
        assert max(owners(out).values()) == 1
        done = sorted(rel for rel, r in latest(out).items() if r["event"] == "done")
        assert len(done) == 12  # one per group
        winners.append(done)
    assert winners[0] == winners[1] == winners[2]
    assert "g00.png" in winners[0] and "g01.bmp" in winners[0]  # named like the mask first, then by name


def test_in_watch_mode_a_scan_named_like_the_mask_takes_it_and_the_other_gets_a_fail_line(tmp_path, tiny_model):
    from tests.helpers import status, wait_for
    from tests.test_watch import Daemon

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    d = Daemon(src, out, tiny_model)
    try:
        cv2.imwrite(str(src / "x.jpg"), synthetic(1, 120, 140)[0])
        wait_for(lambda: "ok   x.jpg" in d.text(), "x.jpg's mask")
        write_png(src / "x.png", synthetic(2, 90, 80)[0])
        wait_for(lambda: "FAIL x.jpg: OUT/x.png is now written by x.png" in d.text(), "x.jpg's FAIL line")
        wait_for(lambda: "ok   x.png" in d.text(), "x.png's mask")
        assert cv2.imread(str(out / "x.png"), cv2.IMREAD_UNCHANGED).shape == (90, 80)
        assert not (out / "x.png.error.txt").exists() and (out / "x.jpg.error.txt").exists()
        wait_for(lambda: status(out).get("failed") == 1, "the status file to count x.jpg failed")
        assert status(out)["last_error"]["scan"] == "x.jpg"
    finally:
        assert d.stop() == 0
