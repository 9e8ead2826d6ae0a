"""`edge-seg-eval` and edge_runtime.scoring: the CLI, its errors, agreement with edge-seg and training."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.cli import main as seg_main
from edge_runtime.evaluate import main
from tests.helpers import nodule_scan, write_png

SUMMARY_KEYS = (
    "scans",
    "dice_mean",
    "dice_median",
    "iou_mean",
    "iou_median",
    "precision_mean",
    "precision_median",
    "recall_mean",
    "recall_median",
    "hd95_mean",
    "hd95_median",
    "precision_undefined",
    "hd95_undefined",
    "missed",
    "missed_share",
)
#: The labels edge-seg-eval scores by default for the tiny model: the seed thresholds and its own 0.5.
DEFAULT_LABELS = ["0.5", "0.85", "0.9", "0.95"]


def run(*args: str | Path) -> int:
    return main([str(a) for a in args])


def same(a: float, b: float, tol: float) -> bool:
    """Equal within ``tol``, NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == pytest.approx(b, abs=tol)


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}


# --------------------------------------------------------------------------------------------------
# a labelled folder the tiny "dark finder" model segments well

#: stem -> nodule_scan() arguments; None = a scan without a nodule (its true mask is all zero)
SCANS = {
    "n1": {"height": 240, "width": 320, "centre": (170, 130), "axes": (90, 70), "seed": 0},
    "n2": {"height": 200, "width": 260, "centre": (130, 95), "axes": (80, 55), "seed": 1},
    "n3": {"height": 300, "width": 240, "centre": (120, 160), "axes": (70, 90), "seed": 2},
    "n4": {"height": 180, "width": 400, "centre": (220, 95), "axes": (120, 60), "seed": 3},
    "n5": {"height": 256, "width": 256, "centre": (128, 128), "axes": (80, 80), "seed": 4},
    "normal": None,
}
#: the file names used, to cover pairing by stem across formats: a BMP scan, an RGB scan (n4), a colour BMP mask
IMAGE_NAMES = {"n1": "n1.png", "n2": "n2.png", "n3": "n3.bmp", "n4": "n4.png", "n5": "n5.png", "normal": "normal.png"}
MASK_NAMES = {"n1": "n1.png", "n2": "n2.bmp", "n3": "n3.png", "n4": "n4.png", "n5": "n5.png", "normal": "normal.png"}


def write_labelled(root: Path) -> Path:
    """``root/image`` and ``root/mask``, the layout both edge-seg-eval and train.data.load_split read."""
    for stem, kw in SCANS.items():
        if kw is None:
            rng = np.random.default_rng(5)
            image = np.clip(rng.normal(170, 18, (220, 300)), 0, 255).astype(np.uint8)
            truth = np.zeros(image.shape, bool)
        else:
            image, truth = nodule_scan(**kw)
        if stem == "n4":
            image = np.dstack([image, image, image])  # RGB
        ip, mp = root / "image" / IMAGE_NAMES[stem], root / "mask" / MASK_NAMES[stem]
        mask = truth.astype(np.uint8) * 255
        ip.parent.mkdir(parents=True, exist_ok=True)
        mp.parent.mkdir(parents=True, exist_ok=True)
        if ip.suffix == ".bmp":
            assert cv2.imwrite(str(ip), image)
        else:
            write_png(ip, image)
        if mp.suffix == ".bmp":  # a colour mask with the nodule in the blue channel only: any channel > 127 counts
            assert cv2.imwrite(str(mp), np.dstack([mask, np.zeros_like(mask), np.zeros_like(mask)]))
        else:
            write_png(mp, mask)
    return root


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    return write_labelled(tmp_path_factory.mktemp("labelled") / "data")


@pytest.fixture(scope="module")
def console_run(labelled, tiny_model, tmp_path_factory):
    """One real ``edge-seg-eval`` console-script run on the labelled folder: (process, argv, JSON)."""
    script = Path(sys.executable).parent / "edge-seg-eval"
    if not script.is_file():
        pytest.skip("the edge-seg-eval console script is not installed (pip install -e .)")
    out = tmp_path_factory.mktemp("eval") / "report" / "eval.json"  # its folder does not exist yet
    argv = ["--images", str(labelled / "image"), "--masks", str(labelled / "mask"), "--model", str(tiny_model)]
    argv += ["--json", str(out)]
    res = subprocess.run([str(script), *argv], capture_output=True, text=True, env=subprocess_env(), timeout=300)
    report = json.loads(out.read_text()) if out.is_file() else None
    return res, argv, report


def test_console_script_exits_0_and_prints_a_row_per_threshold(console_run):
    res, _, _ = console_run
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    table, *bands = res.stdout.strip().split("\n\n")  # the overall table, then the one by nodule size
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["threshold", "scans"]
    rows = lines[1:]
    assert [r.split()[0] for r in rows] == DEFAULT_LABELS
    assert all(r.split()[1] == str(len(SCANS)) for r in rows)
    assert bands and bands[0].startswith("by nodule size"), res.stdout


def test_console_json_has_command_model_summary_and_per_scan_rows(console_run, tiny_model):
    res, argv, report = console_run
    assert res.returncode == 0, res.stderr
    assert report is not None
    assert report["command"] == shlex.join(["edge-seg-eval", *argv])
    model = report["model"]
    assert model["sha256"] == hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    assert model["default_threshold"] == 0.5
    assert model["name"] == "tiny-dark-finder"
    assert sorted(report["summary"], key=float) == DEFAULT_LABELS
    rows = report["per_scan"]
    assert len(rows) == len(SCANS) * len(DEFAULT_LABELS)
    assert sorted({r["scan"] for r in rows}) == sorted(IMAGE_NAMES.values())
    for label, s in report["summary"].items():
        assert set(SUMMARY_KEYS) <= set(s), sorted(set(SUMMARY_KEYS) - set(s))
        assert s["scans"] == len(SCANS)
        mine = [r for r in rows if r["threshold"] == float(label)]
        assert len(mine) == len(SCANS)
        # overlap is the mean / median of the positive scans' rows; the nodule-free scan is a true negative
        pos = [r for r in mine if r["truth_pixels"] > 0]
        assert s["dice_mean"] == pytest.approx(np.mean([r["dice"] for r in pos]), abs=1e-12)
        assert s["iou_median"] == pytest.approx(np.median([r["iou"] for r in pos]), abs=1e-12)
        assert s["view_dice_mean"] == pytest.approx(np.mean([r["dice"] for r in mine]), abs=1e-12)
        assert (s["negatives"], s["fp_frames"], s["specificity"], s["sensitivity"]) == (1, 0, 1.0, 1.0)
        # the tiny model finds every dark nodule, and finds nothing in the normal scan
        assert s["dice_mean"] > 0.8 and s["iou_mean"] > 0.7
        assert s["precision_mean"] > 0.95 and s["recall_mean"] > 0.7
        assert 0 < s["hd95_mean"] < 20
        assert s["missed"] == 0 and s["missed_share"] == 0.0
        assert s["precision_undefined"] == 0 and s["hd95_undefined"] == 0  # the normal scan: not in overlap
        by_scan = {r["scan"]: r for r in mine}
        normal = by_scan.pop("normal.png")
        assert normal["dice"] == 1.0 and normal["predicted_pixels"] == 0 and normal["truth_pixels"] == 0
        assert math.isnan(normal["precision"]) and math.isnan(normal["recall"]) and not normal["missed"]
        assert all(r["dice"] > 0.8 for r in by_scan.values()), {k: r["dice"] for k, r in by_scan.items()}


def test_printed_table_shows_the_json_numbers(console_run):
    res, _, report = console_run
    assert res.returncode == 0, res.stderr
    rows = {ln.split()[0]: ln for ln in res.stdout.strip().split("\n\n")[0].splitlines()[1:]}
    for label, s in report["summary"].items():
        cells = rows[label].split()
        # threshold, scans, with a nodule (the folder holds a nodule-free scan), then "mean / median" for dice,
        # iou, precision, recall, hd95, then missed, sensitivity, nodule-free scans and the share with a mask
        assert cells[1] == str(s["scans"]) and cells[2] == str(s["positives"])
        assert cells[3] == f"{s['dice_mean']:.4f}" and cells[5] == f"{s['dice_median']:.4f}"
        assert cells[6] == f"{s['iou_mean']:.4f}"
        assert cells[15] == f"{s['hd95_mean']:.2f}"
        assert cells[-4] == f"{s['missed_share']:.1%}"
        assert cells[-3] == f"{s['sensitivity']:.1%}" and cells[-2] == "1" and cells[-1] == f"{s['fp_share']:.1%}"


def test_thresholds_are_chosen_with_threshold(labelled, tiny_model, tmp_path, capsys):
    out = tmp_path / "e.json"
    argv = ["--images", labelled / "image", "--masks", labelled / "mask", "--model", tiny_model]
    argv = [str(a) for a in [*argv, "--threshold", "0.7", "0.3", "0.7", "--json", out, "--no-hd95"]]
    assert main(argv) == 0
    table = capsys.readouterr().out.strip().split("\n\n")[0].splitlines()
    assert [ln.split()[0] for ln in table[1:]] == ["0.3", "0.7"]  # sorted, once each; not the model's own 0.5
    # issue 15: a skipped HD95 says so instead of "nan / nan"
    assert all("skipped" in ln and "nan" not in ln for ln in table[1:])
    report = json.loads(out.read_text())
    assert sorted(report["summary"]) == ["0.3", "0.7"]
    assert report["command"] == shlex.join(["edge-seg-eval", *argv])
    assert all(math.isnan(r["hd95"]) for r in report["per_scan"])
    assert all(s["hd95_undefined"] == s["positives"] for s in report["summary"].values())
    # a lower threshold gives bigger masks
    assert report["summary"]["0.3"]["recall_mean"] > report["summary"]["0.7"]["recall_mean"]


# --------------------------------------------------------------------------------------------------
# the same numbers as edge-seg's written masks, and as training's validation


def eval_json(path: Path, *args: str | Path) -> dict:
    assert run(*args, "--json", path) == 0
    return json.loads(path.read_text())


@pytest.mark.parametrize("threshold", ["0.5", "0.85"])
def test_scoring_written_masks_equals_scoring_the_model(labelled, tiny_model, tmp_path, threshold):
    images, pred = labelled / "image", tmp_path / "pred"
    assert seg_main([str(images), "--out", str(pred), "--model", str(tiny_model), "-q", "--threshold", threshold]) == 0
    assert sorted(p.name for p in pred.glob("*.png")) == sorted(f"{s}.png" for s in SCANS)  # n3.bmp -> n3.png
    common = ("--images", images, "--masks", labelled / "mask")
    direct = eval_json(tmp_path / "d.json", *common, "--model", tiny_model, "--threshold", threshold)
    written = eval_json(tmp_path / "w.json", *common, "--predicted", pred)
    assert list(written["summary"]) == ["written"] and written["model"] is None
    d, w = direct["summary"][threshold], written["summary"]["written"]
    assert w["scans"] == d["scans"] == len(SCANS)
    assert w["dice_mean"] == pytest.approx(d["dice_mean"], abs=1e-9)
    for key in SUMMARY_KEYS:
        assert same(w[key], d[key], 1e-9), (key, w[key], d[key])
    # scan by scan too (rows name the image when scoring the model, the mask when scoring written masks)
    d_rows = {Path(r["scan"]).stem: r for r in direct["per_scan"]}
    w_rows = {Path(r["scan"]).stem: r for r in written["per_scan"]}
    assert sorted(d_rows) == sorted(w_rows) == sorted(SCANS)
    for stem, r in d_rows.items():
        for key in ("dice", "iou", "precision", "recall", "hd95", "truth_pixels", "predicted_pixels", "missed"):
            assert same(w_rows[stem][key], r[key], 1e-9), (stem, key)


def test_training_validation_scores_the_same_as_edge_seg_eval(labelled, tiny_model, tmp_path):
    from edge_runtime.core.segmenter import Segmenter
    from edge_runtime.files.scans import read_scan
    from train.data import load_split
    from train.validation import score

    thresholds = [0.5, 0.85, 0.9, 0.95]
    common = ("--images", labelled / "image", "--masks", labelled / "mask", "--model", tiny_model)
    report = eval_json(tmp_path / "e.json", *common, "--threshold", *map(str, thresholds))
    seg = Segmenter(tiny_model)
    split = load_split(labelled, seg.info.size, seg.info.channels, seg.info.resize)
    assert sorted(split.names) == sorted(SCANS)
    # training's model input is the runtime's preprocessing of the same scan
    for name, x in zip(split.names, split.x, strict=True):
        assert np.array_equal(x, seg.preprocess(read_scan(labelled / "image" / IMAGE_NAMES[name]).frames[0]))
    probs = seg.predict(split.x)
    assert probs.shape == (len(SCANS), *seg.info.size)
    trained = score(probs, split, thresholds, seg.info.morphology_size, with_hd95=True)
    assert sorted(trained) == thresholds
    for t in thresholds:
        ours, theirs = trained[t], report["summary"][format(t, "g")]
        for key in SUMMARY_KEYS:
            assert same(float(ours[key]), float(theirs[key]), 1e-6), (t, key, ours[key], theirs[key])
    assert report["summary"]["0.5"]["dice_mean"] > 0.8
    for t in thresholds:  # the measurement error too (edge_runtime.core.caliper_error)
        ours, theirs = trained[t], report["summary"][format(t, "g")]
        for key in ("calipers_scans", "long_axis_error_median", "short_axis_within_20", "taller_than_wide_agreement"):
            assert same(float(ours[key]), float(theirs[key]), 1e-9), (t, key, ours[key], theirs[key])


# --------------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("which", ["images", "masks"])
def test_a_missing_folder_exits_2_naming_it(labelled, tiny_model, tmp_path, caplog, which):
    folders = {"images": labelled / "image", "masks": labelled / "mask"}
    folders[which] = tmp_path / "nope"
    code = run("--images", folders["images"], "--masks", folders["masks"], "--model", tiny_model)
    assert code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith("error: ")
    assert str(tmp_path / "nope") in errors[0] and "\n" not in errors[0]


def test_missing_images_folder_from_the_command_line(labelled, tiny_model, tmp_path):
    nope = tmp_path / "no such folder"
    cmd = [sys.executable, "-m", "edge_runtime.evaluate", "--images", nope, "--masks", labelled / "mask"]
    res = subprocess.run(
        [str(c) for c in [*cmd, "--model", tiny_model]],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
    )
    assert res.returncode == 2
    assert "Traceback" not in res.stderr and res.stdout == ""
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and str(nope) in errors[0], res.stderr


def copy_labelled(labelled: Path, dest: Path) -> Path:
    shutil.copytree(labelled, dest)
    return dest


def test_a_scan_without_a_true_mask_is_named(labelled, tiny_model, tmp_path, caplog, capsys):
    data = copy_labelled(labelled, tmp_path / "data")
    write_png(data / "image" / "orphan.png", nodule_scan(seed=9)[0])
    assert run("--images", data / "image", "--masks", data / "mask", "--model", tiny_model) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1
    assert "1 image(s)" in errors[0] and "have no mask" in errors[0] and "orphan" in errors[0]
    assert capsys.readouterr().out == ""  # no table of partial results


def test_a_true_mask_without_a_scan_is_named(labelled, tiny_model, tmp_path, caplog):
    data = copy_labelled(labelled, tmp_path / "data")
    write_png(data / "mask" / "lonely.png", np.zeros((100, 100), np.uint8))
    assert run("--images", data / "image", "--masks", data / "mask", "--model", tiny_model) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "lonely" in errors[0]


def test_written_masks_must_cover_every_true_mask(labelled, tmp_path, caplog):
    pred = tmp_path / "pred"
    pred.mkdir()
    write_png(pred / "n1.png", np.zeros((240, 320), np.uint8))
    assert run("--images", labelled / "image", "--masks", labelled / "mask", "--predicted", pred) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "no predicted mask" in errors[0] and str(pred / "n2.png") in errors[0]


def test_a_written_mask_of_the_wrong_size_is_reported(labelled, tmp_path, caplog):
    pred = tmp_path / "pred"
    for stem in SCANS:
        write_png(pred / f"{stem}.png", np.zeros((64, 64), np.uint8))
    assert run("--images", labelled / "image", "--masks", labelled / "mask", "--predicted", pred) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "n1.png" in errors[0]


def _corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "garbage":
        path.write_bytes(b"hello, I am not an image\n")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")


@pytest.mark.parametrize(
    ("where", "how", "words"),
    [
        ("image/n2.png", "garbage", "not an image"),
        ("image/n2.png", "truncated", "truncated PNG"),
        ("image/n3.bmp", "empty", "empty file"),
        ("mask/n5.png", "truncated", "truncated PNG"),
    ],
)
def test_an_unreadable_file_is_reported_with_its_name(
    labelled, tiny_model, tmp_path, caplog, capsys, where, how, words
):
    data = copy_labelled(labelled, tmp_path / "data")
    _corrupt(data / where, how)
    assert run("--images", data / "image", "--masks", data / "mask", "--model", tiny_model) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1, errors
    assert str(data / where) in errors[0] and words in errors[0]
    assert capsys.readouterr().out == ""


def test_a_true_mask_of_the_wrong_size_is_reported(labelled, tiny_model, tmp_path, caplog):
    data = copy_labelled(labelled, tmp_path / "data")
    write_png(data / "mask" / "n1.png", np.zeros((100, 120), np.uint8))
    assert run("--images", data / "image", "--masks", data / "mask", "--model", tiny_model) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "n1.png" in errors[0] and "(120, 100)" in errors[0]


def test_a_threshold_outside_0_1_exits_2(labelled, tiny_model, caplog):
    args = ["--images", labelled / "image", "--masks", labelled / "mask", "--model", tiny_model]
    assert run(*args, "--threshold", "0.5", "1.5") == 2
    assert any("between 0 and 1" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------------------------------
# the real data set


def test_real_ddti_scans_with_the_bundled_model(ddti, tmp_path, capsys):
    val = ddti / "val"
    if not (val / "image").is_dir():
        pytest.skip(f"no DDTI val split at {val}")
    stems = sorted(p.stem for p in (val / "image").glob("*.png"))[:8]
    assert len(stems) == 8
    for sub in ("image", "mask"):
        (tmp_path / sub).mkdir()
        for s in stems:
            shutil.copy2(val / sub / f"{s}.png", tmp_path / sub / f"{s}.png")
    out = tmp_path / "ddti.json"
    code = run("--images", tmp_path / "image", "--masks", tmp_path / "mask", "--no-hd95", "--json", out)
    assert code == 0
    report = json.loads(out.read_text())
    default = format(report["model"]["default_threshold"], "g")
    assert default in report["summary"]
    table = capsys.readouterr().out.strip().split("\n\n")[0].splitlines()
    assert len(table) == 1 + len(report["summary"])
    assert all(ln.split()[1] == "8" for ln in table[1:])
    for s in report["summary"].values():
        assert s["scans"] == 8
        assert math.isnan(s["hd95_mean"]) and s["hd95_undefined"] == 8
        assert 0.0 <= s["dice_mean"] <= 1.0
        # every scan in exactly one size band, banded by its own true mask's share of the scan
        assert sum(b["positives"] for b in s["by_band"].values()) == 8
    for r in report["per_scan"]:
        share = r["truth_pixels"] / r["pixels"]
        assert r["band"] == ("small" if share < 0.03 else "medium" if share <= 0.10 else "large")
        assert r["area_ratio"] == pytest.approx(r["predicted_pixels"] / r["truth_pixels"])
    assert len(report["per_scan"]) == 8 * len(report["summary"])
    assert {r["scan"] for r in report["per_scan"]} == {f"{s}.png" for s in stems}
    # the bundled model is a real one: at its own threshold it finds most nodules
    assert report["summary"][default]["dice_mean"] > 0.3


def test_a_nodule_free_folder_is_scored_as_false_positive_frames(tmp_path, tiny_model):
    """Issue 13: --nodule-free scores every scan's mask as a false positive; Dice is not defined there."""
    images = tmp_path / "free"
    rng = np.random.default_rng(7)
    for k in range(3):  # bright speckled tissue with nothing dark in it: the tiny model finds nothing
        write_png(images / f"clear{k}.png", rng.integers(150, 220, (180, 240), dtype=np.uint8))
    write_png(images / "dark.png", nodule_scan(180, 240, (120, 90), (40, 30), 1)[0])  # one false positive
    out = tmp_path / "fp.json"
    assert main(["--images", str(images), "--nodule-free", "--model", str(tiny_model), "--threshold", "0.5",
                 "--json", str(out)]) == 0  # fmt: skip
    s = json.loads(out.read_text())["summary"]["0.5"]
    assert (s["scans"], s["positives"], s["negatives"], s["fp_frames"]) == (4, 0, 4, 1)
    assert s["fp_share"] == 0.25 and s["specificity"] == 0.75 and s["fp_area_mean"] > 1000
    assert math.isnan(s["dice_mean"]) and math.isnan(s["sensitivity"])


def test_masks_and_nodule_free_are_one_or_the_other(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--images", str(tmp_path)])
    assert exc.value.code == 2 and "--nodule-free" in capsys.readouterr().err
