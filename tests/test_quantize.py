"""int8 quantization (export/quantize.py) and its parity check against the fp32 parent (export/parity.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest

from edge_runtime.core.model import file_sha256
from edge_runtime.core.segmenter import Segmenter
from export import cli
from export.parity import MAX_DICE_CHANGE, check_int8_parity
from export.quantize import SETTINGS, calibration_files, fingerprint, quantize, read_metadata
from tests.helpers import make_tiny_model, synthetic, write_png

pytest.importorskip("onnxruntime.quantization")


def _labelled(root: Path, seeds: range) -> Path:
    for seed in seeds:
        image, truth = synthetic(seed)
        write_png(root / "image" / f"s{seed:03d}.png", image)
        write_png(root / "mask" / f"s{seed:03d}.png", truth.astype(np.uint8) * 255)
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    """Synthetic "training" scans for calibration and a labelled "validation" folder, disjoint."""
    root = tmp_path_factory.mktemp("quant-data")
    return _labelled(root / "train", range(0, 20)), _labelled(root / "val", range(100, 110))


@pytest.fixture(scope="module")
def fp32(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("fp32") / "tiny.onnx")


@pytest.fixture(scope="module")
def int8(fp32, folders, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("int8") / "tiny-int8.onnx"
    meta = quantize(fp32, out, folders[0], count=6)
    return out, meta


def _broken(fp32: Path, out: Path) -> Path:
    """The fp32 model with its logit's sign flipped (bright is nodule): loadable, and wrong."""
    proto = onnx.load(str(fp32))
    sub = next(n for n in proto.graph.node if n.op_type == "Sub")
    sub.input[0], sub.input[1] = sub.input[1], sub.input[0]
    onnx.save(proto, str(out))
    return out


def _with_presence(fp32: Path, out: Path, threshold: float = 0.5) -> Path:
    """The tiny model with a second output, presence = sigmoid of the largest pixel logit (its largest probability)."""
    from onnx import TensorProto, helper

    from edge_runtime.core.metadata import METADATA_KEY
    from tests.helpers import tiny_metadata

    proto = onnx.load(str(fp32))
    proto.graph.node.append(helper.make_node("ReduceMax", ["logit"], ["top"], axes=[1, 2, 3], keepdims=0))
    proto.graph.node.append(helper.make_node("Sigmoid", ["top"], ["presence"]))
    proto.graph.output.append(helper.make_tensor_value_info("presence", TensorProto.FLOAT, ["N"]))
    meta = tiny_metadata(presence={"name": "presence", "activation": "sigmoid", "threshold": threshold})
    next(p for p in proto.metadata_props if p.key == METADATA_KEY).value = json.dumps(meta)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))
    return out


def test_calibration_set_is_every_kth_training_scan_by_name(folders):
    files = calibration_files(folders[0], 6)
    names = sorted(p.name for p in (folders[0] / "image").iterdir())
    assert [p.name for p in files] == names[0:18:3]  # 20 scans, 6 asked for: k = 3
    assert calibration_files(folders[0] / "image", 6) == files
    with pytest.raises(Exception, match="has 20 scan"):
        calibration_files(folders[0], 21)


def test_fingerprint_covers_names_and_bytes(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    before = fingerprint([a, b])
    assert fingerprint([b, a]) != before
    b.write_bytes(b"twO")
    assert fingerprint([a, b]) != before
    b.write_bytes(b"two")
    assert fingerprint([a, b]) == before


def test_int8_model_loads_with_its_parents_metadata_and_the_quantization_facts(fp32, int8, folders):
    out, meta = int8
    seg = Segmenter(out)
    parent = read_metadata(fp32)
    stored = seg.info.metadata
    assert stored == json.loads(json.dumps(meta))
    assert stored["precision"] == "int8"
    assert {k: v for k, v in stored.items() if k not in ("precision", "quantization")} == parent
    q = stored["quantization"]
    assert {k: q[k] for k in SETTINGS} == SETTINGS
    assert q["fp32_model"]["sha256"] == file_sha256(fp32)
    calibration = calibration_files(folders[0], 6)
    assert q["calibration"]["count"] == 6
    assert q["calibration"]["fingerprint"] == fingerprint(calibration)
    assert (q["calibration"]["first"], q["calibration"]["last"]) == (calibration[0].name, calibration[-1].name)
    # really quantized: the graph has QuantizeLinear/DequantizeLinear pairs, and the runtime runs it
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    image, truth = synthetic(3)
    mask = seg.segment(image).masks[seg.threshold] > 0
    assert mask.shape == truth.shape and (mask & truth).sum() > 0.5 * truth.sum()


def test_int8_parity_holds_for_the_quantized_model(fp32, int8, folders):
    report = check_int8_parity(fp32, int8[0], folders[1])
    assert report.ok, report.describe()
    assert report.scans == 10
    assert report.dice_int8_vs_fp32 > 0.9
    assert abs(report.dice_change) <= MAX_DICE_CHANGE
    assert report.presence_max_abs_diff is None  # the tiny model has no presence output


def test_both_outputs_of_a_presence_model_are_quantized_and_compared(fp32, folders, tmp_path):
    parent = _with_presence(fp32, tmp_path / "presence.onnx", threshold=0.9)
    out = tmp_path / "presence-int8.onnx"
    quantize(parent, out, folders[0], count=6)
    seg = Segmenter(out)
    assert seg.info.presence_output == "presence" and seg.presence_threshold == 0.9
    proto = onnx.load(str(out))
    assert [o.name for o in proto.graph.output] == ["probability", "presence"]
    producers = {n.output[0]: n.op_type for n in proto.graph.node}
    assert producers["presence"] == "DequantizeLinear"  # the presence head is quantized too
    report = check_int8_parity(parent, out, folders[1])
    assert report.presence_max_abs_diff is not None and report.presence_max_abs_diff < 0.05
    assert report.presence_decisions_changed is not None and report.presence_decisions_changed >= 0
    assert "presence max" in report.describe()
    # a broken presence score (the threshold moved to where it says "no nodule" for every scan) is counted
    broken = _with_presence(fp32, tmp_path / "presence-broken.onnx", threshold=0.999999)
    worse = check_int8_parity(parent, broken, folders[1])
    assert worse.presence_decisions_changed == sum(1 for _ in (folders[1] / "image").iterdir())
    assert not worse.ok


def test_int8_parity_fails_on_a_broken_model(fp32, folders, tmp_path):
    report = check_int8_parity(fp32, _broken(fp32, tmp_path / "broken.onnx"), folders[1])
    assert not report.ok
    assert report.dice_change < -MAX_DICE_CHANGE
    assert report.dice_int8_vs_fp32 < 0.5
    assert "limit" in report.describe()


def test_export_from_onnx_writes_the_int8_model(fp32, folders, tmp_path, caplog):
    out = tmp_path / "out" / "tiny-int8.onnx"
    argv = ["--from-onnx", str(fp32), "--int8", "--out", str(out), "--calibration", str(folders[0])]
    with caplog.at_level(logging.INFO):
        rc = cli.main([*argv, "--calibration-count", "5", "--int8-parity", str(folders[1])])
    assert rc == 0
    meta = read_metadata(out)
    assert meta["precision"] == "int8" and meta["quantization"]["calibration"]["count"] == 5
    assert "int8 parity ok" in caplog.text and "change" in caplog.text
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny-int8.onnx"]  # no temporary left behind


def test_export_fails_with_the_figures_when_int8_parity_fails(fp32, folders, tmp_path, monkeypatch, caplog):
    import export.quantize

    def broken_quantize(src, dest, *args, **kwargs):
        _broken(src, dest)
        return {}

    monkeypatch.setattr(export.quantize, "quantize", broken_quantize)
    out = tmp_path / "bad-int8.onnx"
    argv = ["--from-onnx", str(fp32), "--precision", "int8", "--out", str(out)]
    rc = cli.main([*argv, "--calibration", str(folders[0]), "--int8-parity", str(folders[1])])
    assert rc == 1
    assert not out.exists() and not list(tmp_path.iterdir())
    failed = [r.getMessage() for r in caplog.records if "FAILED" in r.getMessage()]
    assert len(failed) == 1 and "change" in failed[0] and "\n" not in failed[0]


def test_export_from_onnx_refuses_bad_arguments(fp32, folders, tmp_path, caplog):
    out = str(tmp_path / "x.onnx")
    assert cli.main(["--from-onnx", str(fp32), "--out", out]) == 2  # fp32 -> fp32 is no job
    assert cli.main(["--from-onnx", str(tmp_path / "missing.onnx"), "--int8", "--out", out]) == 2
    # the tiny model's metadata names no training data: the calibration folder must be given
    assert cli.main(["--from-onnx", str(fp32), "--int8", "--out", out]) == 2
    assert "--calibration DIR" in caplog.text
    assert cli.main(["--from-onnx", str(fp32), "--int8", "--out", out, "--calibration", str(tmp_path / "no")]) == 2
    assert not (tmp_path / "x.onnx").exists()


def test_an_int8_model_is_not_quantized_again(int8, folders, tmp_path):
    from edge_runtime.errors import ModelError

    with pytest.raises(ModelError, match="already int8"):
        quantize(int8[0], tmp_path / "again.onnx", folders[0], count=4)


@pytest.mark.train
@pytest.mark.slow
def test_keras_export_with_int8_writes_both_precisions(folders, tmp_path, caplog):
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf2onnx")
    import keras

    from train.models import get_model

    keras.utils.set_random_seed(0)  # untrained weights, but the same ones every run
    keras_path = tmp_path / "model.keras"
    get_model("unet4", (64, 64), 3).save(keras_path)  # untrained: the export path is what is tested
    out = tmp_path / "model.onnx"
    too_many = [str(keras_path), "--out", str(out), "--int8", "--parity-scans", str(folders[1])]
    assert cli.main([*too_many, "--calibration", str(folders[0]), "--int8-parity", str(folders[1])]) == 2
    assert "32 asked for" in caplog.text and not list(tmp_path.glob("*.onnx"))  # refused before converting
    argv = [str(keras_path), "--out", str(out), "--precision", "int8", "--parity-scans", str(folders[1])]
    argv += ["--calibration", str(folders[0]), "--int8-parity", str(folders[1]), "--calibration-count", "5"]
    with caplog.at_level(logging.INFO):
        rc = cli.main(argv)
    fp32_out = tmp_path / "model.fp32.onnx"
    assert read_metadata(fp32_out)["precision"] == "fp32"
    assert "parity ok" in caplog.text and "int8 parity" in caplog.text
    # An untrained model's masks may or may not survive quantization; either way the outcome is clean.
    if rc == 0:
        meta = read_metadata(out)
        assert meta["precision"] == "int8"
        assert meta["quantization"]["fp32_model"]["sha256"] == file_sha256(fp32_out)
    else:
        assert rc == 1 and not out.exists() and "int8 parity check FAILED" in caplog.text


def test_keras_parity_allows_mask_pixels_to_differ_only_where_a_probability_sits_on_the_threshold():
    """A pixel whose probability is within the 1e-4 tolerance of a threshold may flip (and the opening may
    carry that a pixel or two); a differing pixel anywhere else is a conversion fault."""
    from export.parity import MAX_ABS_DIFF, ParityReport, _explained

    assert ParityReport(32, 2e-5, 1e-7, {0.5: 0, 0.95: 5}, {0.5: 0, 0.95: 0}).ok
    assert not ParityReport(32, 2e-5, 1e-7, {0.5: 0, 0.95: 5}, {0.5: 0, 0.95: 1}).ok
    assert not ParityReport(32, 2 * MAX_ABS_DIFF, 1e-7, {0.5: 0}, {0.5: 0}).ok
    prob = np.full((40, 40), 0.2, np.float32)
    prob[20, 20] = 0.9 + MAX_ABS_DIFF / 2  # on the threshold
    near = _explained(prob, 0.9, np.ones((3, 3), np.uint8))
    assert near[20, 20] and near[23, 23] and not near[30, 30] and not near[0, 0]


def _conv_model(path: Path) -> Path:
    """A model of two convolutions (a plain 3x3 one, then a depthwise one) with random weights, and metadata."""
    from onnx import TensorProto, helper, numpy_helper

    from edge_runtime.core.metadata import attach_metadata
    from tests.helpers import tiny_metadata

    rng = np.random.default_rng(3)
    spread = np.array([0.1, 1.0, 3.0, 0.01, 0.5, 2.0, 0.05, 1.5], np.float32)[:, None, None, None]
    w1 = numpy_helper.from_array((rng.normal(0, 1, (8, 3, 3, 3)) * spread).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.5, (8, 1, 3, 3)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c1", "w2"], ["c2"], pads=[1, 1, 1, 1], group=8),
        helper.make_node("ReduceMean", ["c2"], ["m"], axes=[1], keepdims=1),
        helper.make_node("Transpose", ["m"], ["nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Sigmoid", ["nhwc"], ["probability"]),
    ]
    graph = helper.make_graph(
        nodes, "convs",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 16, 16, 3])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N", 16, 16, 1])],
        [w1, w2],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    attach_metadata(model, tiny_metadata(16))
    onnx.save(model, path)
    return path


def test_int8_weight_storage_keeps_a_scale_per_output_channel_and_depthwise_weights_in_float16(tmp_path):
    from onnx import numpy_helper

    from export.storage import store_weights_int8

    src, dst = _conv_model(tmp_path / "fp32.onnx"), tmp_path / "int8w.onnx"
    facts = store_weights_int8(src, dst)
    assert facts["initializers_int8"] == 1 and facts["initializers_float16"] == 1  # w1; w2 is depthwise
    stored = {i.name: numpy_helper.to_array(i) for i in onnx.load(dst).graph.initializer}
    w1 = numpy_helper.to_array(next(i for i in onnx.load(src).graph.initializer if i.name == "w1"))
    q, scale = stored["w1__int8"], stored["w1__scale"]
    assert q.dtype == np.int8 and scale.shape == (8, 1, 1, 1)
    np.testing.assert_allclose(scale.ravel(), np.abs(w1).max(axis=(1, 2, 3)) / 127, rtol=1e-6)
    # each channel within half a step of its own scale: the 0.01 channel is not rounded to the 3.0 one's grid
    assert np.all(np.abs(q * scale - w1) <= scale / 2 + 1e-7)
    assert stored["w2__fp16"].dtype == np.float16
    x = np.random.default_rng(0).random((2, 16, 16, 3), np.float32)
    a, b = Segmenter(src).predict(x), Segmenter(dst).predict(x)
    assert 0 < np.abs(a - b).max() < 0.01
    assert Segmenter(dst).info.metadata["storage"]["fp32_sha256"] == file_sha256(src)
