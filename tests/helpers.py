"""Test helpers: a tiny ONNX model built without TensorFlow, synthetic scans, and the DDTI location."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: The DDTI development split; EDGE_SEG_DDTI overrides the location.
DDTI = Path(os.environ.get("EDGE_SEG_DDTI", REPO.parent / "shared" / "data" / "ddti"))


def tiny_metadata(size: int = 64, channels: int = 3, threshold: float = 0.5, **overrides) -> dict:
    meta = {
        "schema": 1,
        "name": "tiny-dark-finder",
        "version": "0.0.1",
        "architecture": "test",
        "input": {
            "name": "image",
            "height": size,
            "width": size,
            "channels": channels,
            "layout": "NHWC",
            "dtype": "float32",
            "color": "RGB",
        },
        "output": {"name": "probability", "activation": "sigmoid", "shape": "N,H,W,1"},
        "preprocessing": {"resize": "area", "normalisation": "minmax"},
        "postprocessing": {"threshold": threshold, "morphology": {"op": "open", "shape": "ellipse", "size": 3}},
        "training": None,
        "export": {"opset": 17},
    }
    for key, value in overrides.items():
        meta[key] = value
    return meta


def make_tiny_model(
    path: Path,
    size: int = 64,
    channels: int = 3,
    metadata: dict | str | None = None,
    batch: int | str = "N",
    graph_size: int | None = None,
) -> Path:
    """A real ONNX model that calls dark pixels nodule: P = sigmoid(40 * (0.12 - mean over channels)).

    Smoothed by a 5x5 average pool, so speckle does not matter but a dark blob does.
    """
    import onnx
    from onnx import TensorProto, helper

    gs = graph_size or size
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, gs, gs, channels])
    y = helper.make_tensor_value_info("probability", TensorProto.FLOAT, [batch, gs, gs, 1])
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["gray"], axes=[3], keepdims=1),  # N,H,W,1
        helper.make_node("Transpose", ["gray"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node(
            "AveragePool", ["nchw"], ["smooth"], kernel_shape=[5, 5], pads=[2, 2, 2, 2], count_include_pad=0
        ),
        helper.make_node("Transpose", ["smooth"], ["nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Sub", ["half", "nhwc"], ["centred"]),
        helper.make_node("Mul", ["centred", "gain"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["probability"]),
    ]
    inits = [
        helper.make_tensor("half", TensorProto.FLOAT, [], [0.12]),
        helper.make_tensor("gain", TensorProto.FLOAT, [], [40.0]),
    ]
    graph = helper.make_graph(nodes, "tiny", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata is None:
        metadata = tiny_metadata(size, channels)
    if metadata != "":
        entry = model.metadata_props.add()
        entry.key = "edge_seg"
        entry.value = metadata if isinstance(metadata, str) else json.dumps(metadata)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def synthetic(seed: int = 0, height: int = 200, width: int = 260) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic scan (uint8 gray) and its truth mask, from the demo generator."""
    from edge_runtime.demo import synthetic_scan

    return synthetic_scan(np.random.default_rng(seed), height, width)


def write_png(path: Path, image: np.ndarray) -> Path:
    from edge_runtime.scanio import encode_png, write_atomic

    write_atomic(path, encode_png(image))
    return path
