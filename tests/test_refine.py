"""The second stage (edge_runtime.core.refine): a crop around the first stage's mask, looked at again.

A tiny two-stage ONNX model (tests.helpers.make_tiny_model with ``refine_size``): the first stage calls dark
pixels nodule, the second says 1 - the crop's brightness. No TensorFlow.
"""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from edge_runtime import ModelError, Segmenter
from edge_runtime.core.postprocess import mask_from_probability, opening_kernel, probability_at_scan_size
from edge_runtime.core.preprocess import preprocess
from edge_runtime.core.refine import mask_box, refine_box
from tests.helpers import make_tiny_model, nodule_scan, tiny_metadata, write_png


@pytest.fixture
def two_stage(tmp_path):
    return make_tiny_model(tmp_path / "two.onnx", size=64, refine_size=32)


def test_the_second_stage_is_averaged_in_inside_the_box_around_the_first_stages_mask(tmp_path, two_stage):
    image, truth = nodule_scan(240, 320, (170, 130), (50, 35))
    seg, first = Segmenter(two_stage), Segmenter(make_tiny_model(tmp_path / "one.onnx", size=64))
    assert seg.info.refine is not None and seg.info.refine.size == (32, 32)
    result = seg.segment(image)
    # by hand: the first stage's map at scan size, its mask's box widened, the crop's own map, the mean inside
    p1 = probability_at_scan_size(first.predict(first.preprocess(image)[None])[0], (240, 320))
    kernel = opening_kernel((240, 320), (64, 64), 3)
    x0, y0, w, h = refine_box(mask_box(mask_from_probability(p1, 0.5, kernel)), (240, 320), 0.25, 8)
    crop = preprocess(image[y0 : y0 + h, x0 : x0 + w], (32, 32))
    p2 = cv2.resize(1.0 - crop.mean(axis=2), (w, h), interpolation=cv2.INTER_LINEAR)
    inside = np.zeros((240, 320), bool)
    inside[y0 : y0 + h, x0 : x0 + w] = True
    np.testing.assert_allclose(result.probability[inside], ((p1[y0 : y0 + h, x0 : x0 + w] + p2) / 2).ravel(), atol=1e-5)
    np.testing.assert_allclose(result.probability[~inside], p1[~inside], atol=1e-6)
    # the box holds the nodule with its margin, and is not the whole scan
    ys, xs = np.nonzero(truth)
    assert x0 < xs.min() and xs.max() < x0 + w and y0 < ys.min() and ys.max() < y0 + h
    assert w * h < 0.5 * 240 * 320
    assert scan_dice(result.masks[seg.threshold], truth) > 0.8


def scan_dice(mask: np.ndarray, truth: np.ndarray) -> float:
    p, t = mask > 0, truth > 0
    return 2 * np.count_nonzero(p & t) / (np.count_nonzero(p) + np.count_nonzero(t))


def test_no_mask_from_the_first_stage_means_no_second_pass(two_stage, monkeypatch):
    seg = Segmenter(two_stage)
    calls = []
    real = seg.model.run_refine
    monkeypatch.setattr(seg.model, "run_refine", lambda batch: calls.append(len(batch)) or real(batch))
    blank = np.clip(np.random.default_rng(0).normal(170, 18, (200, 260)), 0, 255).astype(np.uint8)  # tissue only
    result = seg.segment(blank)
    assert calls == [] and not result.found
    seg.segment(nodule_scan()[0])
    assert calls == [1]


def test_a_no_nodule_presence_decision_skips_the_second_pass(tmp_path, monkeypatch):
    from edge_runtime.core.refine import refine_metadata

    # the presence score is the map's maximum (below 1): at a threshold of 0.999999 the model says "no nodule"
    presence = {"name": "presence", "activation": "sigmoid", "threshold": 0.999999}
    meta = tiny_metadata(64, schema=2, presence=presence, refine=refine_metadata(32, 32, 3, 0.5))
    seg = Segmenter(
        make_tiny_model(tmp_path / "m.onnx", size=64, refine_size=32, metadata=meta, presence_threshold=0.5)
    )
    calls = []
    monkeypatch.setattr(seg.model, "run_refine", lambda batch: calls.append(1))
    result = seg.segment(nodule_scan()[0])
    assert not result.nodule_present and not result.found and calls == []


def test_a_refine_block_the_graph_does_not_match_is_refused_in_one_line(tmp_path):
    from edge_runtime.core.refine import refine_metadata

    no_input = tiny_metadata(64, schema=2, refine=refine_metadata(32, 32, 3, 0.5))
    with pytest.raises(ModelError, match="refine input 'refine_image' is not in the graph"):
        Segmenter(make_tiny_model(tmp_path / "a.onnx", size=64, metadata=no_input))
    wrong_size = tiny_metadata(64, schema=2, refine=refine_metadata(48, 48, 3, 0.5))
    with pytest.raises(ModelError, match=r"refine input shape \['N', 32, 32, 3\] does not match"):
        Segmenter(make_tiny_model(tmp_path / "b.onnx", size=64, refine_size=32, metadata=wrong_size))
    schema1 = tiny_metadata(64, refine=refine_metadata(32, 32, 3, 0.5))
    with pytest.raises(ModelError, match=r"a refine block without a file of its own needs schema 2"):
        Segmenter(make_tiny_model(tmp_path / "c.onnx", size=64, refine_size=32, metadata=schema1))
    future = tiny_metadata(64, schema=4)
    with pytest.raises(ModelError, match=r"schema 4 is not one this runtime reads .*upgrade edge-seg"):
        Segmenter(make_tiny_model(tmp_path / "d.onnx", size=64, metadata=future))


def test_edge_seg_writes_the_second_stages_masks_for_a_folder(tmp_path, two_stage):
    """The CLI end to end with a two-stage model: its masks are the Segmenter's, frame by frame."""
    inp, out = tmp_path / "in", tmp_path / "out"
    scans = {f"s{i}.png": nodule_scan(200 + 20 * i, 260, (120 + 10 * i, 100), (40, 30), i)[0] for i in range(3)}
    for name, image in scans.items():
        write_png(inp / name, image)
    res = subprocess.run(
        [sys.executable, "-m", "edge_runtime", str(inp), "--out", str(out), "--model", str(two_stage)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    seg = Segmenter(two_stage)
    for name, image in scans.items():
        written = cv2.imread(str(out / name), cv2.IMREAD_GRAYSCALE)
        np.testing.assert_array_equal(written, seg.segment(image).masks[seg.threshold])


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r["input"].pop("name"), "malformed field"),
        (lambda r: r["output"].update(name=""), "refine output name ''"),
        (lambda r: r["input"].update(height=32.5), r"refine input size 32.5 x 32"),
        (lambda r: r.update(margin=float("inf")), "refine margin inf"),
        (lambda r: r.update(box_threshold=1.5), "refine box threshold 1.5"),
    ],
)
def test_a_malformed_refine_block_is_refused_in_one_line(tmp_path, change, message):
    from edge_runtime.core.refine import refine_metadata

    block = refine_metadata(32, 32, 3, 0.5)
    change(block)
    path = make_tiny_model(
        tmp_path / "m.onnx", size=64, refine_size=32, metadata=tiny_metadata(64, schema=2, refine=block)
    )
    with pytest.raises(ModelError, match=message) as caught:
        Segmenter(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(ModelError, match="schema 2 is a model with a second stage, and it has no refine block"):
        Segmenter(make_tiny_model(tmp_path / "n.onnx", size=64, metadata=tiny_metadata(64, schema=2)))


def test_a_failing_second_pass_fails_that_scan_as_inference_does_and_the_run_goes_on(tmp_path, two_stage, monkeypatch):
    from edge_runtime import cli
    from edge_runtime.core.model import OnnxModel

    inp, out = tmp_path / "in", tmp_path / "out"
    write_png(inp / "nodule.png", nodule_scan()[0])
    tissue = np.clip(np.random.default_rng(0).normal(170, 18, (200, 260)), 0, 255).astype(np.uint8)
    write_png(inp / "tissue.png", tissue)  # no mask from the first stage: no second pass

    def boom(self, batch):
        raise RuntimeError("onnxruntime fell over")

    monkeypatch.setattr(OnnxModel, "run_refine", boom)
    code = cli.main([str(inp), "--out", str(out), "--model", str(two_stage)])
    assert code != 0
    reason = (out / "nodule.png.error.txt").read_text()
    assert "inference failed (second stage): RuntimeError: onnxruntime fell over" in reason
    assert not (out / "nodule.png").exists() and (out / "tissue.png").is_file()


def test_training_cuts_the_crop_the_runtime_cuts():
    """train.views.refine_box without jitter is the runtime's box at the margins a model's metadata carries."""
    from edge_runtime.core.refine import MARGIN, MIN_MARGIN, refine_metadata
    from train.views import refine_box as training_box

    block = refine_metadata(32, 32, 3, 0.5)
    assert (block["margin"], block["min_margin"]) == (MARGIN, MIN_MARGIN)
    for box, shape in [((100, 50, 40, 30), (360, 560)), ((0, 0, 5, 3), (20, 30)), ((500, 300, 60, 60), (360, 560))]:
        assert training_box(box, shape) == refine_box(box, shape, block["margin"], block["min_margin"])
    rng = np.random.default_rng(0)
    for _ in range(50):  # jittered training boxes stay inside the frame and hold at least a pixel
        x, y, w, h = training_box((100, 50, 40, 30), (360, 560), rng)
        assert x >= 0 and y >= 0 and w >= 1 and h >= 1 and x + w <= 560 and y + h <= 360


def test_the_crops_of_a_batch_go_through_the_second_stage_in_one_run(two_stage, monkeypatch):
    seg = Segmenter(two_stage)
    tissue = np.clip(np.random.default_rng(0).normal(170, 18, (200, 260)), 0, 255).astype(np.uint8)
    images = [nodule_scan(200 + 20 * i, 260 + 10 * i, (120 + 10 * i, 100), (40, 30), i)[0] for i in range(3)]
    images.insert(1, tissue)  # no mask from the first stage: no crop
    alone = [seg.segment(im, [0.3, 0.5]) for im in images]
    calls = []
    real = seg.model.run_refine
    monkeypatch.setattr(seg.model, "run_refine", lambda batch: calls.append(len(batch)) or real(batch))
    together = seg.segment_batch(images, [0.3, 0.5])
    assert calls == [3]
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_allclose(a.probability, b.probability, atol=1e-6)
        assert all(np.array_equal(a.masks[t], b.masks[t]) for t in (0.3, 0.5))


def test_a_post_processing_bug_on_one_scan_fails_that_scan_only(tmp_path, tiny_model, monkeypatch):
    """The batch's frames are post-processed together; one that breaks it is tried alone and fails alone."""
    from edge_runtime import cli
    from edge_runtime.core import segmenter

    inp, out = tmp_path / "in", tmp_path / "out"
    for i, (h, w) in enumerate([(200, 260), (111, 133), (220, 240)]):
        write_png(inp / f"s{i}.png", nodule_scan(h, w, (w // 2, h // 2), (30, 20), i)[0])
    real = segmenter.probability_at_scan_size

    def odd(probability, scan_hw):
        if tuple(scan_hw) == (111, 133):
            raise ValueError("a bug for this size")
        return real(probability, scan_hw)

    monkeypatch.setattr(segmenter, "probability_at_scan_size", odd)
    assert (
        cli.main([str(inp), "--out", str(out), "--model", str(tiny_model), "--batch-size", "4", "--threads", "1"]) == 1
    )
    assert "unexpected error: ValueError: a bug for this size" in (out / "s1.png.error.txt").read_text()
    assert (out / "s0.png").is_file() and (out / "s2.png").is_file() and not (out / "s1.png").exists()
