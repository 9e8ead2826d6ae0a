"""A two-stage model as two files (export.stages, metadata schema 3): a session a stage, the same masks.

A tiny two-stage ONNX model (tests.helpers.make_tiny_model with ``refine_size``), cut in two by
``python -m export.stages``. No TensorFlow.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import onnx
import pytest

from edge_runtime import ModelError, Segmenter
from edge_runtime.cli import main
from edge_runtime.core.metadata import METADATA_KEY
from edge_runtime.core.model import OnnxModel
from export.stages import main as stages_main
from export.stages import split_stages
from tests.helpers import make_tiny_model, nodule_scan, tiny_metadata, write_png


@pytest.fixture
def whole(tmp_path):
    return make_tiny_model(tmp_path / "whole" / "two.onnx", size=64, presence_threshold=0.5, refine_size=32)


@pytest.fixture
def apart(whole, tmp_path):
    first, _second = split_stages(whole, tmp_path / "apart" / "two.onnx")
    return first


def scans() -> list[np.ndarray]:
    return [nodule_scan(200 + 20 * i, 260, (120 + 10 * i, 100), (40, 30), i)[0] for i in range(4)]


def test_the_two_files_name_each_other_and_hold_one_stage_each(whole, tmp_path):
    first, second = split_stages(whole, tmp_path / "out" / "m.onnx")
    assert second == first.with_name("m.refine.onnx") and sorted(p.name for p in first.parent.iterdir()) == [
        "m.onnx",
        "m.refine.onnx",
    ]
    meta = json.loads(next(p.value for p in onnx.load(str(first)).metadata_props if p.key == METADATA_KEY))
    assert meta["schema"] == 3 and meta["refine"]["file"] == "m.refine.onnx"
    import hashlib

    assert meta["refine"]["sha256"] == hashlib.sha256(second.read_bytes()).hexdigest()
    one, two = onnx.load(str(first)).graph, onnx.load(str(second)).graph
    assert [i.name for i in one.input] == ["image"] and [o.name for o in one.output] == ["probability", "presence"]
    assert [i.name for i in two.input] == ["refine_image"] and [o.name for o in two.output] == ["refine_probability"]
    m = OnnxModel(first, threads=1)
    assert m.refine_session is not None and [i.name for i in m.session.get_inputs()] == ["image"]
    assert [p.name for p, _ in m.files] == ["m.onnx", "m.refine.onnx"]


def test_the_masks_are_the_one_graphs_bit_for_bit(whole, apart, monkeypatch):
    a, b = Segmenter(whole, threads=1), Segmenter(apart, threads=1)
    fed: list[list[str]] = []
    run = b.model.session.run
    monkeypatch.setattr(b.model.session, "run", lambda names, feeds: fed.append(sorted(feeds)) or run(names, feeds))
    found = 0
    for image in scans():
        x, y = a.segment(image, [0.3, 0.5, 0.9]), b.segment(image, [0.3, 0.5, 0.9])
        assert np.array_equal(x.probability, y.probability) and x.presence == y.presence
        assert all(np.array_equal(x.masks[t], y.masks[t]) for t in (0.3, 0.5, 0.9))
        found += x.found
    assert found == 4  # every scan went through the second stage
    assert fed == [["image"]] * 4  # the first stage's session is fed the scan alone: no empty second-stage batch


def test_edge_seg_runs_a_model_in_two_files_and_writes_the_same_masks(whole, apart, tmp_path):
    inp = tmp_path / "in"
    for i, image in enumerate(scans()):
        write_png(inp / f"s{i}.png", image)
    for model, out in ((whole, tmp_path / "a"), (apart, tmp_path / "b")):
        res = subprocess.run(
            [sys.executable, "-m", "edge_runtime", str(inp), "--out", str(out), "--model", str(model), "-v"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
    assert "second stage 32x32 in two.refine.onnx" in res.stderr
    for i in range(4):
        a, b = (cv2.imread(str(d / f"s{i}.png"), cv2.IMREAD_UNCHANGED) for d in (tmp_path / "a", tmp_path / "b"))
        assert a is not None and np.array_equal(a, b)


def test_a_missing_second_file_is_refused_naming_it(apart, tmp_path):
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(apart, lone / apart.name)
    with pytest.raises(ModelError, match=r"its second stage .*two\.refine\.onnx is missing") as caught:
        Segmenter(lone / apart.name)
    assert str(lone / apart.name) in str(caught.value) and "\n" not in str(caught.value)
    code = main([str(tmp_path), "--out", str(tmp_path / "out"), "--model", str(lone / apart.name)])
    assert code == 2


def test_another_second_file_under_the_name_is_refused(apart, whole, tmp_path):
    other = make_tiny_model(tmp_path / "other" / "two.onnx", size=64, presence_threshold=0.5, refine_size=24)
    split_stages(other, tmp_path / "other-apart" / "two.onnx")
    shutil.copy(tmp_path / "other-apart" / "two.refine.onnx", apart.with_name("two.refine.onnx"))
    with pytest.raises(ModelError, match=r"is not the file it was exported with .*copy the model.s two files together"):
        Segmenter(apart)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.update(file="../elsewhere.onnx"), "refine file '../elsewhere.onnx'"),
        (lambda r: r.update(sha256="abc"), "refine sha256 'abc'"),
        (lambda r: r.pop("file"), "a refine block without a file of its own needs schema 2"),
    ],
)
def test_a_malformed_file_entry_is_refused_in_one_line(tmp_path, change, message):
    from edge_runtime.core.refine import refine_metadata

    block = refine_metadata(32, 32, 3, 0.5, file="m.refine.onnx", sha256="0" * 64)
    change(block)
    path = make_tiny_model(tmp_path / "m.onnx", size=64, metadata=tiny_metadata(64, schema=3, refine=block))
    with pytest.raises(ModelError, match=message) as caught:
        Segmenter(path)
    assert "\n" not in str(caught.value)


def test_the_graph_cache_keeps_both_files_and_warm_up_builds_them(apart, tmp_path):
    cache = tmp_path / "cache"
    assert main(["--warm-up", "--model", str(apart), "--cache-dir", str(cache)]) == 0
    assert len(list(cache.glob("*.onnx"))) == 2
    warm = OnnxModel(apart, threads=1, cache_dir=cache)
    assert warm.graph_cache.count("optimised graph loaded from") == 2
    a, b = Segmenter(OnnxModel(apart, threads=1)), Segmenter(warm)
    for image in scans()[:2]:
        assert np.array_equal(a.segment(image).probability, b.segment(image).probability)


def test_splitting_a_one_stage_model_or_over_itself_is_refused(tmp_path, whole, capsys):
    one = make_tiny_model(tmp_path / "one.onnx", size=64)
    assert stages_main([str(one), "--out", str(tmp_path / "x.onnx")]) == 2
    with pytest.raises(SystemExit):
        stages_main([str(whole), "--out", str(whole)])
    assert "--out must differ from MODEL" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("block", ["elsewhere.onnx", ["refine_image"]])
def test_a_refine_entry_that_is_not_a_block_is_refused_in_one_line(tmp_path, block):
    meta = tiny_metadata(64, schema=3)
    meta["refine"] = block
    path = make_tiny_model(tmp_path / "m.onnx", size=64, metadata=meta)
    with pytest.raises(ModelError) as caught:
        Segmenter(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
