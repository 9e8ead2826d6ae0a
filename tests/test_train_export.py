"""Train -> export -> run, on a few real DDTI scans (needs the [train] extra: TensorFlow, tf2onnx)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")

pytestmark = [pytest.mark.train, pytest.mark.slow]


def _subset(src: Path, dst: Path, n: int) -> Path:
    """The first n image/mask pairs of a DDTI split, linked (not copied) into a temporary folder."""
    for sub in ("image", "mask"):
        (dst / sub).mkdir(parents=True)
    for p in sorted((src / "image").glob("*.png"))[:n]:
        for sub in ("image", "mask"):
            os.symlink(src / sub / p.name, dst / sub / p.name)
    return dst


@pytest.fixture(scope="module")
def trained(ddti, tmp_path_factory):
    from train.trainer import TrainConfig, train

    root = tmp_path_factory.mktemp("train")
    tr = _subset(ddti / "train", root / "train", 24)
    va = _subset(ddti / "val", root / "val", 8)
    cfg = TrainConfig(
        train_dir=str(tr),
        val_dir=str(va),
        out_dir=str(root / "run"),
        epochs=1,
        batch_size=8,
        name="test-fcn",
        version="9.9.9",
    )
    record = train(cfg)
    return root, record


def test_training_writes_model_and_record(trained):
    root, _ = trained
    run = root / "run"
    assert (run / "model.keras").is_file()
    saved = json.loads((run / "training.json").read_text())
    assert saved["config"]["architecture"] == "seed-fcn"
    assert saved["model"]["macs"] == 1_675_624_448  # the seed FCN's 1.67 GMAC per 128x128 scan
    assert saved["data"]["train"]["scans"] == 24 and saved["data"]["val"]["scans"] == 8
    assert len(saved["data"]["train"]["fingerprint"]) == 64
    assert saved["epochs_run"] == 1
    for key in ("loss", "val_loss", "accuracy", "dice", "iou", "val_scan_dice"):
        assert len(saved["history"][key]) == 1
    assert 0 < saved["threshold"] < 1
    assert saved["versions"]["tensorflow"]


def test_export_passes_parity_and_edge_seg_runs_the_result(trained, ddti, tmp_path):
    root, record = trained
    out_model = tmp_path / "model.onnx"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "export",
            str(root / "run" / "model.keras"),
            "--out",
            str(out_model),
            "--parity-count",
            "8",
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert "parity ok" in res.stderr and "use it:  edge-seg" in res.stderr
    proto = onnx.load(out_model)
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["edge_seg"])
    assert meta["schema"] == 1 and meta["name"] == "test-fcn" and meta["version"] == "9.9.9"
    assert meta["postprocessing"]["threshold"] == record["threshold"]
    assert meta["training"]["data"]["train"]["fingerprint"] == record["data"]["train"]["fingerprint"]
    assert meta["export"]["tf2onnx"] and meta["export"]["tensorflow"]
    assert proto.graph.input[0].name == "image" and proto.graph.output[0].name == "probability"
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch

    images = sorted((ddti / "test" / "image").glob("*.png"))[:4]
    src = tmp_path / "in"
    src.mkdir()
    for p in images:  # copied: one-shot runs, like the daemon, do not follow links that leave IN
        shutil.copy(p, src / p.name)
    out = tmp_path / "out"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_runtime",
            str(src),
            "--out",
            str(out),
            "--model",
            str(out_model),
            "--threshold",
            "0.85",
            "0.9",
            "0.95",
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    for t in ("0.85", "0.9", "0.95"):
        for p in images:
            mask = cv2.imread(str(out / t / p.name), cv2.IMREAD_UNCHANGED)
            assert mask.shape == cv2.imread(str(p), cv2.IMREAD_UNCHANGED).shape[:2]
            assert set(np.unique(mask)) <= {0, 255}


def test_parity_failure_fails_the_export(trained, tmp_path, monkeypatch):
    """A model that disagrees with Keras must not be written."""
    from export import cli, parity

    root, _ = trained
    monkeypatch.setattr(parity, "MAX_ABS_DIFF", -1.0)  # nothing can pass
    out_model = tmp_path / "model.onnx"
    code = cli.main([str(root / "run" / "model.keras"), "--out", str(out_model), "--parity-count", "4"])
    assert code == 1
    assert not out_model.exists()


def test_unpaired_and_unreadable_training_files_are_named(tmp_path):
    from train.data import DataError, load_split, pair_folder

    for sub in ("image", "mask"):
        (tmp_path / sub).mkdir()
    cv2.imwrite(str(tmp_path / "image" / "1.png"), np.zeros((20, 20), np.uint8))
    cv2.imwrite(str(tmp_path / "image" / "2.png"), np.zeros((20, 20), np.uint8))
    cv2.imwrite(str(tmp_path / "mask" / "1.bmp"), np.zeros((20, 20), np.uint8))
    cv2.imwrite(str(tmp_path / "mask" / "3.png"), np.zeros((20, 20), np.uint8))
    with pytest.raises(
        DataError, match=r"1 image\(s\) in \S+ have no mask in \S+: 2.png; 1 mask\(s\) in \S+ have no image"
    ):
        pair_folder(tmp_path)
    (tmp_path / "mask" / "3.png").unlink()
    (tmp_path / "mask" / "2.png").write_bytes(b"broken")
    with pytest.raises(DataError, match=r"2.png: not an image"):
        load_split(tmp_path, (16, 16))


def test_the_same_command_retrains_the_same_model(ddti, tmp_path):
    """Reproducibility: the recipe of the bundled model (BN, Dice+BCE, augmentation, LR on plateau), run
    twice as separate processes, gives the same history and the same weights (seeded, deterministic ops)."""
    tr = _subset(ddti / "train", tmp_path / "train", 16)
    va = _subset(ddti / "val", tmp_path / "val", 6)
    records, weights = [], []
    for run in ("a", "b"):
        out = tmp_path / run
        cmd = [sys.executable, "-m", "train", "--train", str(tr), "--val", str(va), "--out", str(out)]
        cmd += ["--arch", "unet4-bn", "--loss", "dice_bce", "--augment", "--lr-schedule", "plateau"]
        cmd += ["--monitor", "val_scan_dice", "--epochs", "2", "--batch-size", "8"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-2000:]
        records.append(json.loads((out / "training.json").read_text()))
        import keras

        weights.append(keras.models.load_model(out / "model.keras", compile=False).get_weights())
    assert records[0]["history"] == records[1]["history"]
    assert records[0]["val_dice"] == records[1]["val_dice"]
    assert len(weights[0]) == len(weights[1])
    for w0, w1 in zip(*weights, strict=True):
        np.testing.assert_array_equal(w0, w1)


def test_flip_tta_export_averages_the_scan_and_its_mirror(trained, ddti, tmp_path):
    """--tta flip builds the mirrored pass into the graph: P(x) = (f(x) + flip(f(flip(x)))) / 2."""
    from edge_runtime.core.segmenter import Segmenter
    from export import cli

    root, _ = trained
    plain, tta = tmp_path / "plain.onnx", tmp_path / "tta.onnx"
    base = [str(root / "run" / "model.keras"), "--parity-count", "4"]
    assert cli.main([*base, "--out", str(plain)]) == 0
    assert cli.main([*base, "--out", str(tta), "--tta", "flip", "--threshold", "0.3"]) == 0
    seg_plain, seg_tta = Segmenter(plain), Segmenter(tta)
    assert seg_tta.info.metadata["test_time_augmentation"] == "flip" and seg_tta.threshold == 0.3
    chosen = tmp_path / "tta-chosen.onnx"  # without --threshold the export chooses one on validation
    assert cli.main([*base, "--out", str(chosen), "--tta", "flip"]) == 0
    assert 0.05 <= Segmenter(chosen).threshold <= 0.95
    x = np.stack([seg_plain.preprocess(cv2.imread(str(p))) for p in sorted((ddti / "val" / "image").glob("*.png"))[:3]])
    expected = (seg_plain.predict(x) + seg_plain.predict(x[:, :, ::-1].copy())[:, :, ::-1]) / 2
    np.testing.assert_allclose(seg_tta.predict(x), expected, atol=1e-5)
    assert np.abs(seg_tta.predict(x) - seg_plain.predict(x)).max() > 1e-3  # it is not the plain model


def test_ensemble_export_averages_its_members_and_says_what_they_cost(trained, tmp_path):
    """--ensemble builds the members into one graph: P(x) = (f(x) + g(x)) / 2, thresholds chosen again on val."""
    from edge_runtime.core.segmenter import Segmenter
    from export import cli
    from train.trainer import TrainConfig, train

    root, record = trained
    second = TrainConfig(
        train_dir=str(root / "train"), val_dir=str(root / "val"), out_dir=str(tmp_path / "second"), epochs=1,
        batch_size=8, seed=7, name="test-fcn", version="9.9.9",
    )  # fmt: skip
    train(second)
    first_keras, second_keras = root / "run" / "model.keras", tmp_path / "second" / "model.keras"
    one, other, both = tmp_path / "one.onnx", tmp_path / "other.onnx", tmp_path / "both.onnx"
    assert cli.main([str(first_keras), "--out", str(one), "--parity-count", "4"]) == 0
    assert cli.main([str(second_keras), "--out", str(other), "--parity-count", "4"]) == 0
    assert cli.main([str(first_keras), "--ensemble", str(second_keras), "--out", str(both), "--parity-count", "4"]) == 0
    seg_one, seg_other, seg_both = Segmenter(one), Segmenter(other), Segmenter(both)
    x = np.stack([seg_one.preprocess(cv2.imread(str(p))) for p in sorted((root / "val" / "image").glob("*.png"))[:3]])
    np.testing.assert_allclose(seg_both.predict(x), (seg_one.predict(x) + seg_other.predict(x)) / 2, atol=1e-5)
    assert np.abs(seg_one.predict(x) - seg_other.predict(x)).max() > 1e-3  # two different members
    meta = seg_both.info.metadata
    assert [m["seed"] for m in meta["export"]["ensemble"]] == [record["config"]["seed"], 7]
    assert meta["macs_per_scan"] == 2 * record["model"]["macs"]
    assert meta["export"]["thresholds_chosen_on_val"]["reason"] == "--ensemble"
    assert meta["postprocessing"]["threshold"] == meta["export"]["thresholds_chosen_on_val"]["threshold"]
    missing = cli.main([str(first_keras), "--ensemble", str(tmp_path / "nope.keras"), "--out", str(both)])
    assert missing == 2


def test_fp16_weights_halve_the_file_and_are_checked_against_the_fp32_export(trained, tmp_path):
    from edge_runtime.core.segmenter import Segmenter
    from export import cli

    root, _ = trained
    out = tmp_path / "half.onnx"
    assert (
        cli.main([str(root / "run" / "model.keras"), "--out", str(out), "--parity-count", "4", "--weights", "fp16"])
        == 0
    )
    parent = tmp_path / "half.fp32.onnx"
    assert out.stat().st_size < 0.6 * parent.stat().st_size
    half, full = Segmenter(out), Segmenter(parent)
    storage = half.info.metadata["storage"]
    assert storage["weights_storage"].startswith("float16") and storage["initializers_float16"] > 0
    x = np.stack([full.preprocess(cv2.imread(str(p))) for p in sorted((root / "val" / "image").glob("*.png"))[:3]])
    diff = np.abs(half.predict(x) - full.predict(x))
    assert 0 < diff.max() < 0.05  # rounded weights, float32 arithmetic
    both = ["--weights", "fp16", "--precision", "int8"]
    assert cli.main([str(root / "run" / "model.keras"), "--out", str(tmp_path / "x.onnx"), *both]) == 2


def test_views_training_chooses_a_presence_threshold_and_exports_two_outputs(ddti, tmp_path):
    """Issue 13: --views trains the presence head, scores val's own views, and the export carries both outputs."""
    from edge_runtime.core.segmenter import Segmenter
    from train.trainer import TrainConfig, train

    tr = _subset(ddti / "train", tmp_path / "train", 24)
    va = _subset(ddti / "val", tmp_path / "val", 8)
    out = tmp_path / "run"
    cfg = TrainConfig(
        train_dir=str(tr), val_dir=str(va), out_dir=str(out), architecture="unet5-bn", input_size=32,
        loss="dice_bce", epochs=1, batch_size=8, views=True, monitor="val_view_dice",
    )  # fmt: skip
    record = train(cfg)
    assert record["model"]["outputs"] == ["probability", "presence"]
    assert 0 < record["presence_threshold"] < 1
    assert record["val_views"]["counts"] == {"frames": 8, "nodule_free": 8, "positive_crops": 8}
    assert {"frames", "nodule_free", "positive_crops"} == set(record["val_views"]["gated"])
    assert "val_view_dice" in record["history"]
    onnx_path = out / "model.onnx"
    res = subprocess.run(
        [sys.executable, "-m", "export", str(out / "model.keras"), "--out", str(onnx_path), "--parity-count", "4"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    seg = Segmenter(onnx_path)
    assert seg.info.presence_output == "presence" and seg.presence_threshold == record["presence_threshold"]
    result = seg.segment(cv2.imread(str(next((va / "image").iterdir())), cv2.IMREAD_GRAYSCALE))
    assert result.presence is not None and 0 <= result.presence <= 1
    assert result.nodule_present == (result.presence >= seg.presence_threshold)
    # --tta flip on a presence model: both outputs averaged with the mirrored scan, both thresholds chosen again
    from export import cli

    tta = out / "tta.onnx"
    assert cli.main([str(out / "model.keras"), "--out", str(tta), "--parity-count", "4", "--tta", "flip"]) == 0
    seg_tta = Segmenter(tta)
    x = np.stack([seg.preprocess(cv2.imread(str(p))) for p in sorted((va / "image").glob("*.png"))[:3]])
    (p_plain, q_plain), (p_flip, q_flip) = seg.run(x), seg.run(x[:, :, ::-1].copy())
    p_tta, q_tta = seg_tta.run(x)
    np.testing.assert_allclose(p_tta, (p_plain + p_flip[:, :, ::-1]) / 2, atol=1e-5)
    np.testing.assert_allclose(q_tta, (q_plain + q_flip) / 2, atol=1e-5)
    assert seg_tta.info.metadata["test_time_augmentation"] == "flip"
    assert 0 < seg_tta.presence_threshold < 1


def test_init_from_starts_from_a_trained_models_weights_and_refuses_another_architecture(trained, tmp_path, caplog):
    """``--init-from``: a run continued at a learning rate too small to move anything ends with the weights
    it started from (a fresh start would not); a model of another architecture is one line and exit 2."""
    import keras

    from train.cli import main as train_main

    root, _ = trained
    first = root / "run" / "model.keras"
    common = ["--train", str(root / "train"), "--val", str(root / "val"), "--epochs", "1", "--batch-size", "8"]
    assert train_main([*common, "--out", str(tmp_path / "more"), "--init-from", str(first), "--lr", "1e-12"]) == 0
    kernels = [
        (a, b)
        for a, b in zip(
            keras.models.load_model(first, compile=False).weights,
            keras.models.load_model(tmp_path / "more" / "model.keras", compile=False).weights,
            strict=True,
        )
        if "kernel" in a.path
    ]
    assert kernels and all(np.allclose(a.numpy(), b.numpy(), atol=1e-6) for a, b in kernels)
    assert json.loads((tmp_path / "more" / "training.json").read_text())["config"]["init_from"] == str(first)

    code = train_main([*common, "--out", str(tmp_path / "other"), "--arch", "unet4", "--init-from", str(first)])
    assert code == 2
    assert f"--init-from {first}: cannot start from it (" in caplog.text
    assert "it must be a model.keras of --arch unet4 at --input-size 128" in caplog.text


def test_a_second_stage_trains_on_nodule_crops_and_exports_into_one_graph(trained, tmp_path):
    """--refine trains on crops around the nodules; --refine exports it beside the first stage, checked against
    Keras: the runtime's map is the first stage's with the second's averaged in around the mask."""
    from edge_runtime.core.postprocess import mask_from_probability, opening_kernel, probability_at_scan_size
    from edge_runtime.core.preprocess import preprocess
    from edge_runtime.core.refine import mask_box, refine_box
    from edge_runtime.core.segmenter import Segmenter
    from export import cli
    from export.convert import load_keras
    from train.data import DataError
    from train.trainer import TrainConfig, train

    root, record = trained
    cfg = TrainConfig(
        train_dir=str(root / "train"), val_dir=str(root / "val"), out_dir=str(tmp_path / "second"),
        architecture="unet5-bn", input_size=32, loss="dice_bce", epochs=1, batch_size=8, refine=True,
        view_passes=2, monitor="val_scan_dice",
    )  # fmt: skip
    second = train(cfg)
    assert second["model"]["outputs"] == ["probability"] and second["data"]["val"]["scans"] == 8
    with pytest.raises(DataError, match="takes no --views"):
        train(TrainConfig(**{**cfg.__dict__, "views": True, "out_dir": str(tmp_path / "no")}))
    first_keras, second_keras = root / "run" / "model.keras", tmp_path / "second" / "model.keras"
    out = tmp_path / "two.onnx"
    args = [str(first_keras), "--refine", str(second_keras), "--out", str(out), "--parity-count", "4"]
    assert cli.main([*args, "--weights", "int8"]) == 0
    parent = tmp_path / "two.fp32.onnx"
    assert out.stat().st_size < 0.35 * parent.stat().st_size  # int8 weights: about a quarter
    seg, full = Segmenter(out), Segmenter(parent)
    meta = full.info.metadata
    assert meta["schema"] == 2 and seg.info.metadata["storage"]["initializers_int8"] > 0
    spec = full.info.refine
    assert spec is not None and spec.size == (32, 32)
    chosen = meta["export"]["thresholds_chosen_on_val"]
    assert chosen["reason"] == "--refine" and spec.box_threshold == record["threshold"] == chosen["box_threshold"]
    assert meta["macs_per_scan"] == record["model"]["macs"] + second["model"]["macs"]
    # --refine-blend replace: inside the box the second stage's map alone (free to shrink the mask)
    replaced = tmp_path / "replace.onnx"
    assert cli.main([*args[:3], "--out", str(replaced), "--parity-count", "4", "--refine-blend", "replace"]) == 0
    rep = Segmenter(replaced)
    assert rep.info.refine is not None and rep.info.refine.blend == "replace" and spec.blend == "mean"
    assert rep.info.refine.box_threshold == spec.box_threshold  # the same box, from the first stage's own threshold
    assert "take the second network's map" in rep.info.metadata["refine"]["rule"]
    # choices made out of fold (python -m train.oof_refine): the masks' threshold and the box's, each given
    given = tmp_path / "given.onnx"
    argv = [*args[:3], "--out", str(given), "--parity-count", "4", "--refine-blend", "replace"]
    assert cli.main([*argv, "--threshold", "0.7", "--box-threshold", "0.3"]) == 0
    info = Segmenter(given).info
    assert info.threshold == 0.7 and info.refine is not None and info.refine.box_threshold == 0.3
    # the runtime's two-stage map, against both Keras stages by hand, for both blends
    k1, k2 = load_keras(first_keras), load_keras(second_keras)
    found = 0
    for path in sorted((root / "val" / "image").glob("*.png"))[:3]:
        image = cv2.imread(str(path))[:, :, ::-1]
        hw = image.shape[:2]
        p1 = probability_at_scan_size(k1.predict(full.preprocess(image)[None], verbose=0)[0, ..., 0], hw)
        box = mask_box(mask_from_probability(p1, spec.box_threshold, opening_kernel(hw, (128, 128), 3)))
        expected, expected_replace = p1.copy(), p1.copy()
        if box is not None:
            found += 1
            x, y, w, h = refine_box(box, hw, spec.margin, spec.min_margin)
            p2 = k2.predict(preprocess(image[y : y + h, x : x + w], (32, 32))[None], verbose=0)[0, ..., 0]
            inside = cv2.resize(p2, (w, h), interpolation=cv2.INTER_LINEAR)
            expected[y : y + h, x : x + w] = (expected[y : y + h, x : x + w] + inside) / 2
            expected_replace[y : y + h, x : x + w] = inside
        np.testing.assert_allclose(full.segment(image).probability, expected, atol=1e-4)
        np.testing.assert_allclose(rep.segment(image).probability, expected_replace, atol=1e-4)
    assert found  # the first stage marked something on at least one scan, so the second stage ran
    assert cli.main([*args[:3], "--out", str(tmp_path / "x.onnx"), "--precision", "int8"]) == 2
