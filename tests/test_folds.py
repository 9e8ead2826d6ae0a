"""Cross-validation folds, resumable runs (a real training process killed and started again), the
out-of-fold choices, distillation into a student, and loads that never keep random layers in silence."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import REPO, wait_for
from train.folds import FoldError, assign_folds, fold_table

# --------------------------------------------------------------------------------------------------
# fold assignment (no TensorFlow)


def test_folds_keep_groups_whole_spread_small_frames_and_do_not_depend_on_order():
    rng = np.random.default_rng(0)
    groups = [f"g{int(g)}" for g in rng.integers(0, 40, 200)]
    small = list(rng.random(200) < 0.2)
    names = [str(i) for i in range(200)]
    folds = assign_folds(names, groups, small, 5)
    for g in set(groups):
        assert len({folds[i] for i, gi in enumerate(groups) if gi == g}) == 1, f"group {g} split across folds"
    counts = np.bincount(folds, minlength=5)
    assert counts.min() > 0
    per_fold_small = np.bincount(folds, weights=np.array(small, float), minlength=5)
    biggest_group_small = max(sum(s for s, gi in zip(small, groups, strict=True) if gi == g) for g in set(groups))
    assert per_fold_small.max() - per_fold_small.min() <= biggest_group_small
    # the same frames listed in another order land in the same folds
    order = rng.permutation(200)
    again = assign_folds([names[i] for i in order], [groups[i] for i in order], [small[i] for i in order], 5)
    assert all(again[j] == folds[i] for j, i in enumerate(order))


def test_folds_refuse_too_few_groups():
    with pytest.raises(FoldError, match="2 patient groups cannot make 5 folds"):
        assign_folds(["a", "b", "c"], ["g1", "g1", "g2"], [False] * 3, 5)


def test_ddti_folds_pool_train_and_val_and_keep_every_patient_group_in_one_fold(ddti):
    rows = fold_table(ddti, 5)
    assert {r["split"] for r in rows} == {"train", "val"}  # test is never pooled
    with (ddti / "split.csv").open() as f:
        pooled = [r for r in csv.DictReader(f) if r["split"] != "test"]
    assert len(rows) == len(pooled)
    by_group: dict[str, set[int]] = {}
    for r in rows:
        by_group.setdefault(r["group"], set()).add(r["fold"])
    assert all(len(f) == 1 for f in by_group.values())
    small = np.bincount([r["fold"] for r in rows if r["share"] < 0.03], minlength=5)
    sizes = np.bincount([r["fold"] for r in rows], minlength=5)
    assert small.max() - small.min() <= 2 and sizes.max() - sizes.min() <= 3


# --------------------------------------------------------------------------------------------------
# training: a fold run killed for real and resumed, the out-of-fold choice, a student

pytest.importorskip("tensorflow")

_SIZE = ["--arch", "unet4", "--input-size", "32", "--batch-size", "8", "--threads", "1"]


@pytest.fixture(scope="module")
def labelled(ddti, tmp_path_factory):
    """24 train and 8 val frames of DDTI, linked, with a group file giving each pair of frames one group."""
    root = tmp_path_factory.mktemp("folds")
    rows = []
    for split, n in (("train", 24), ("val", 8)):
        for sub in ("image", "mask"):
            (root / split / sub).mkdir(parents=True)
        for i, p in enumerate(sorted((ddti / split / "image").glob("*.png"))[:n]):
            for sub in ("image", "mask"):
                os.symlink(ddti / split / sub / p.name, root / split / sub / p.name)
            rows.append({"id": p.stem, "split": split, "group": f"{split}{i // 2}"})
    with (root / "split.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, ["id", "split", "group"])
        w.writeheader()
        w.writerows(rows)
    return root


def _env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def _fold_argv(root: Path, out: Path, fold: int, epochs: int) -> list[str]:
    return [
        "--train", str(root / "train"), "--val", str(root / "val"), "--fold", str(fold), "--folds", "2",
        "--out", str(out), "--epochs", str(epochs), "--views", "--loss", "dice_bce_nodule", *_SIZE,
    ]  # fmt: skip


def test_a_fold_run_killed_mid_training_resumes_from_its_last_epoch(labelled, tmp_path):
    out = tmp_path / "f0"
    cmd = [sys.executable, "-m", "train", *_fold_argv(labelled, out, 0, 6), "--validate-every", "4"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    meta = out / "backup" / "training_metadata.json"
    try:
        wait_for(lambda: meta.is_file() and json.loads(meta.read_text())["epoch"] >= 2, "two epochs", timeout=600)
        # a second run into the same folder is refused while the first holds it (one backup, one record)
        second = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
        assert second.returncode == 2 and f"another edge-seg-train (pid {proc.pid})" in second.stderr, second.stderr
        proc.send_signal(signal.SIGKILL)  # no clean-up: what a power cut or an OOM kill leaves
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    done = json.loads(meta.read_text())["epoch"]
    assert not (out / "training.json").exists()
    res = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resuming from the end of epoch {done}" in res.stderr
    record = json.loads((out / "training.json").read_text())
    assert record["resumed_after_epoch"] == done
    assert record["epochs_run"] == 6 and record["best_epoch"] == 6  # --fold keeps the last epoch
    assert len(record["history"]["loss"]) == 6  # the stopped run's epochs and the resumed ones, once each
    with (out / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted({int(r["epoch"]) for r in rows}) == list(range(6))
    # one header across the resume; val scored at the first epoch, every fourth and the last, nan between
    assert all(None not in r and None not in r.values() for r in rows)
    scored = sorted(int(r["epoch"]) for r in rows if r["val_view_dice"] != "nan")
    assert scored == [0, 3, 5], [(r["epoch"], r["val_view_dice"]) for r in rows]
    assert record["fold"]["fold"] == 0 and record["config"]["keep"] == "last"
    assert not (out / "backup").exists()  # a finished run leaves nothing to resume


def test_validate_every_scores_the_first_every_nth_and_the_last_epoch_and_only_last_epoch_view_runs(labelled, tmp_path):
    from train.cli import main as train_main
    from train.scan_dice import validated

    assert [e for e in range(10) if validated(e, 4, 10)] == [0, 3, 7, 9]
    assert [e for e in range(3) if validated(e, 1, 3)] == [0, 1, 2]
    argv = ["--train", str(labelled / "train"), "--val", str(labelled / "val"), "--out", str(tmp_path / "r")]
    assert train_main([*argv, "--views", "--validate-every", "4", *_SIZE]) == 2  # keeps its best epoch
    assert not (tmp_path / "r" / "training.json").exists()


@pytest.fixture(scope="module")
def teachers(labelled, tmp_path_factory):
    from train.cli import main as train_main

    runs = tmp_path_factory.mktemp("teachers")
    for k in (0, 1):
        assert train_main(_fold_argv(labelled, runs / f"f{k}", k, 1)) == 0
    return runs


def test_out_of_fold_predictions_cover_every_pooled_frame_once_and_choose_both_thresholds(teachers, labelled, tmp_path):
    from train.oof import main as oof_main

    assert oof_main([str(teachers / "f0"), str(teachers / "f1"), "--out", str(tmp_path), "--threads", "1"]) == 0
    rep = json.loads((tmp_path / "oof.json").read_text())
    assert rep["complete"] and rep["frames"] == 32
    held = [set(json.loads((teachers / f / "training.json").read_text())["fold"]["held_out"]) for f in ("f0", "f1")]
    assert not held[0] & held[1] and len(held[0] | held[1]) == 32
    with np.load(tmp_path / "oof.npz") as f:
        assert sorted(f["names"]) == sorted(held[0] | held[1])
        assert f["maps"].shape == (32, 32, 32)
    chosen = rep["chosen_out_of_fold"]
    assert 0 < chosen["threshold"] < 1 and 0 < chosen["presence_threshold"] < 1
    frames = rep["out_of_fold"][format(chosen["threshold"], "g")]["frames"]
    assert sum(b["positives"] for b in frames["by_band"].values()) == 32


def test_an_archived_teacher_keeps_its_outputs_and_record_without_optimizer_state(teachers, labelled, tmp_path):
    from train.archive import main as archive_main
    from train.loading import load_keras
    from train.oof import main as oof_main

    runs = [str(teachers / "f0"), str(teachers / "f1")]
    assert archive_main([*runs, "--to", str(tmp_path / "kept")]) == 0
    x = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    for f in ("f0", "f1"):
        kept = tmp_path / "kept" / f
        before, after = load_keras(teachers / f / "model.keras"), load_keras(kept / "model.keras")
        for a, b in zip(before.predict(x, verbose=0), after.predict(x, verbose=0), strict=True):
            np.testing.assert_array_equal(a, b)
        assert (kept / "model.keras").stat().st_size < (teachers / f / "model.keras").stat().st_size
        record, original = (json.loads((d / "training.json").read_text()) for d in (kept, teachers / f))
        assert record["fold"]["held_out"] == original["fold"]["held_out"]
        sums = dict(line.split("  ")[::-1] for line in (kept / "SHA256SUMS").read_text().splitlines())
        assert set(sums) == {"model.keras", "training.json", "history.csv"}
    # the out-of-fold step reads the archive as it reads the runs
    archived = [str(tmp_path / "kept" / f) for f in ("f0", "f1")]
    assert oof_main([*archived, "--out", str(tmp_path / "oof"), "--threads", "1"]) == 0
    assert json.loads((tmp_path / "oof" / "oof.json").read_text())["complete"]
    # an unfinished run is refused, naming it, and nothing is written for it
    (tmp_path / "half").mkdir()
    assert archive_main([str(tmp_path / "half"), "--to", str(tmp_path / "kept")]) == 2
    assert not (tmp_path / "kept" / "half").exists()


def test_a_student_learns_from_the_teachers_and_takes_the_out_of_fold_thresholds(teachers, labelled, tmp_path):
    from train.cli import main as train_main
    from train.oof import main as oof_main

    assert oof_main([str(teachers / "f0"), str(teachers / "f1"), "--out", str(tmp_path / "oof"), "--threads", "1"]) == 0
    oof = json.loads((tmp_path / "oof" / "oof.json").read_text())
    # a mask threshold the student's own validation report does not list (it scores 0.5, 0.85, 0.9, 0.95 and
    # its own choice): the export must still describe the run (it once looked the threshold up there)
    oof["chosen_out_of_fold"]["threshold"] = 0.35
    (tmp_path / "oof" / "oof.json").write_text(json.dumps(oof))
    chosen = oof["chosen_out_of_fold"]
    argv = ["--train", str(labelled / "train"), "--val", str(labelled / "val"), "--out", str(tmp_path / "student")]
    argv += ["--epochs", "1", "--views", "--loss", "dice_bce_nodule", *_SIZE, "--distill-passes", "2"]
    argv += ["--distill", str(teachers / "f0" / "model.keras"), str(teachers / "f1" / "model.keras")]
    argv += ["--thresholds-from", str(tmp_path / "oof" / "oof.json")]
    assert train_main(argv) == 0
    record = json.loads((tmp_path / "student" / "training.json").read_text())
    assert record["distillation"]["bank_views"] == 2 * 32  # every frame of train and val, twice
    assert record["data"]["train"]["scans"] == 32
    assert record["threshold"] == chosen["threshold"]
    assert record["presence_threshold"] == chosen["presence_threshold"]
    assert record["config"]["keep"] == "last"
    with np.load(tmp_path / "student" / "bank.npz") as f:
        y = f["y"].astype(np.float32)
        # blended targets: neither the 0/1 truth alone nor missing (alpha 0.5 of a sigmoid's average)
        assert ((y > 0.01) & (y < 0.49)).any() or ((y > 0.51) & (y < 0.99)).any()
        assert y.min() >= 0 and y.max() <= 1
    # exported, the model's metadata says where its thresholds were chosen, and what it was distilled from
    from edge_runtime.core.segmenter import Segmenter
    from export import cli

    onnx = tmp_path / "student.onnx"
    assert cli.main([str(tmp_path / "student" / "model.keras"), "--out", str(onnx), "--parity-count", "2"]) == 0
    seg = Segmenter(onnx)
    training = seg.info.metadata["training"]
    assert seg.threshold == 0.35 and seg.presence_threshold == chosen["presence_threshold"]
    assert training["threshold_chosen"] == 0.35 and "threshold_chosen_on_val" not in training
    assert training["thresholds_chosen"]["on"] == "out-of-fold predictions of the fold teachers"
    assert training["distillation"]["teachers"] == [str(teachers / f / "model.keras") for f in ("f0", "f1")]


def test_a_second_stage_trains_on_the_out_of_fold_boxes_and_is_scored_out_of_fold(teachers, labelled, tmp_path):
    """--refine-boxes: crops around the masks the fold teachers drew on frames they never saw; train.oof_refine
    scores each fold's second stage on its own held-out frames, with the first stage alone as the baseline."""
    from train.cli import main as train_main
    from train.oof import main as oof_main
    from train.oof_refine import main as refine_main

    oof = tmp_path / "oof"
    assert oof_main([str(teachers / "f0"), str(teachers / "f1"), "--out", str(oof), "--threads", "1"]) == 0
    chosen = json.loads((oof / "oof.json").read_text())["chosen_out_of_fold"]
    runs = []
    for k in (0, 1):
        argv = ["--train", str(labelled / "train"), "--val", str(labelled / "val"), "--fold", str(k), "--folds", "2"]
        argv += ["--out", str(tmp_path / f"r{k}"), "--epochs", "1", "--refine", "--refine-boxes", str(oof / "oof.npz")]
        argv += ["--loss", "dice_bce", "--monitor", "val_scan_dice", *_SIZE]
        assert train_main(argv) == 0
        record = json.loads((tmp_path / f"r{k}" / "training.json").read_text())
        boxes = record["refine_boxes"]
        assert boxes["train"]["frames"] == 16 and boxes["val"]["frames"] == 16
        assert boxes["train"]["box_threshold"] == chosen["threshold"]
        assert 0 <= boxes["val"]["with_a_box"] <= 16
        runs.append(str(tmp_path / f"r{k}"))
    assert refine_main([str(oof), *runs, "--out", str(tmp_path / "report"), "--threads", "1"]) == 0
    report = json.loads((tmp_path / "report" / "oof_refine.json").read_text())
    assert report["frames"] == 32
    # the first stage alone, scored here, is train.oof's own out-of-fold figure: the same masks
    first = report["first stage"]["dice_by_threshold"]
    for t, dice in json.loads((oof / "oof.json").read_text())["chosen_out_of_fold"]["dice_by_threshold"].items():
        assert abs(first[t] - dice) < 1e-9, (t, first[t], dice)
    assert set(report) >= {"mean", "replace"} and 0 <= report["second_stage_ran_on"] <= 32
    # the final second stage, its choices made out of fold above: every frame of both folders (--pool)
    argv = ["--train", str(labelled / "train"), "--val", str(labelled / "val"), "--out", str(tmp_path / "final")]
    argv += ["--epochs", "1", "--refine", "--refine-boxes", str(oof / "oof.npz"), "--pool", *_SIZE]
    assert train_main([*argv, "--loss", "dice_bce", "--monitor", "val_scan_dice"]) == 0
    record = json.loads((tmp_path / "final" / "training.json").read_text())
    assert record["refine_boxes"]["train"]["frames"] == 32 and record["config"]["keep"] == "last"
    assert "frames it saw" in record["pooled"]
    # --pool is the final run, not a fold's, and keeps its last epoch
    assert train_main([*argv, "--fold", "0", "--folds", "2"]) == 2
    assert train_main([*argv, "--keep", "best"]) == 2
    # boxes from a folder without train.oof's record are refused, naming it
    (tmp_path / "bare").mkdir()
    np.savez(tmp_path / "bare" / "oof.npz", names=np.array(["x"]))
    argv = ["--train", str(labelled / "train"), "--val", str(labelled / "val"), "--out", str(tmp_path / "no")]
    argv += ["--epochs", "1", "--refine", "--refine-boxes", str(tmp_path / "bare" / "oof.npz"), *_SIZE]
    assert train_main(argv) == 2
    # and --refine-boxes without --refine
    argv = ["--train", str(labelled / "train"), "--val", str(labelled / "val"), "--out", str(tmp_path / "no2")]
    assert train_main([*argv, "--epochs", "1", "--refine-boxes", str(oof / "oof.npz"), *_SIZE]) == 2


def test_a_teacher_without_the_presence_output_is_one_line(labelled, tmp_path, caplog):
    from train.cli import main as train_main

    plain = ["--train", str(labelled / "train"), "--val", str(labelled / "val"), "--epochs", "1", *_SIZE]
    assert train_main([*plain, "--out", str(tmp_path / "plain")]) == 0
    argv = [*plain, "--out", str(tmp_path / "s"), "--views", "--distill", str(tmp_path / "plain" / "model.keras")]
    assert train_main(argv) == 2
    assert "needs the presence output (trained with --views)" in caplog.text


# --------------------------------------------------------------------------------------------------
# loading


def test_a_saved_model_loads_back_with_identical_outputs(tmp_path):
    from train.loading import load_keras
    from train.models import get_model

    model = get_model("unet4", (32, 32), 3, presence=True)
    x = np.random.default_rng(1).random((2, 32, 32, 3)).astype(np.float32)
    before = model.predict(x, verbose=0)
    model.save(tmp_path / "m.keras")
    after = load_keras(tmp_path / "m.keras").predict(x, verbose=0)
    for k in before:
        assert np.array_equal(before[k], after[k]), k


def test_a_skipped_layer_on_load_is_an_error_naming_the_file(tmp_path, monkeypatch):
    """Keras warns "Skipping nested container ... freshly-initialized weights" and goes on; we stop."""
    import warnings

    import keras

    from train.loading import ModelLoadError, load_keras

    def warn_like_keras(path, compile=True):
        warnings.warn("Skipping nested container at 'layers/x': no matching group found", UserWarning, stacklevel=2)
        return object()

    monkeypatch.setattr(keras.models, "load_model", warn_like_keras)
    with pytest.raises(ModelLoadError, match=r"m\.keras: some layers would keep random weights"):
        load_keras(tmp_path / "m.keras")


def test_a_file_that_is_not_a_model_is_an_error_naming_it(tmp_path):
    from train.loading import ModelLoadError, load_keras

    bad = tmp_path / "broken.keras"
    bad.write_bytes(b"PK\x03\x04 not really a zip" + bytes(100))
    with pytest.raises(ModelLoadError, match=r"broken\.keras: cannot load it"):
        load_keras(bad)
