"""fp32 ONNX -> the same model with its weights stored as float16 or int8 (``edge-seg-export --weights``).

Every float32 initializer of at least :data:`MIN_ELEMENTS` values is stored as float16 and cast back
to float32 by a ``Cast`` node in front of the graph, which onnxruntime folds into a constant when the
session opens: the file is about half the size, the arithmetic stays float32 and so does the speed.
What changes is the weights' rounding (11 significant bits), so the result is checked like an int8
model against its fp32 parent (:func:`export.parity.check_int8_parity`: masks and val Dice). The
metadata is the parent's plus ``weights_storage`` and the parent's sha256. Needs only onnx and numpy.

``int8`` (:func:`store_weights_int8`) goes a step further for a quarter of the file: each convolution and
matrix weight is stored as int8 with one float32 scale per output channel (symmetric, 127 levels), and
``Cast`` + ``Mul`` in front of the graph rebuild the float32 weight, again folded when the session
opens. Only the weights' rounding changes (about 8 bits per channel); activations stay float32 -- this
is not the int8 arithmetic of ``--precision int8``, and it runs at float32's speed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.core.model import file_sha256

log = logging.getLogger(__name__)

#: Smaller initializers (shapes, scalars, small biases) stay float32: nothing to gain, and some are indices.
MIN_ELEMENTS = 64


def store_weights_fp16(src: Path, dst: Path) -> dict[str, Any]:
    """Write ``src`` to ``dst`` with its float32 weights stored as float16; returns the storage facts."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    proto = onnx.load(str(src))
    graph = proto.graph
    casts, stored, kept = [], 0, 0
    for init in list(graph.initializer):
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < MIN_ELEMENTS:
            kept += 1
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), f"{init.name}__fp16")
        graph.initializer.remove(init)
        graph.initializer.append(half)
        casts.append(
            helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT, name=f"{init.name}__cast")
        )
        stored += 1
    facts = {
        "weights_storage": "float16, cast to float32 when the session opens (arithmetic in float32)",
        "initializers_float16": stored,
        "initializers_kept": kept,
    }
    _save(proto, casts, src, dst, facts)
    log.info(
        "stored %d weight tensors as float16 (%d kept): %.2f MB -> %.2f MB",
        stored,
        kept,
        src.stat().st_size / 1e6,
        dst.stat().st_size / 1e6,
    )
    return facts


#: Per-output-channel axis of a weight, by the operator that takes it (anything else stays float16).
CHANNEL_AXIS = {"Conv": 0, "ConvTranspose": 1, "MatMul": -1}


def store_weights_int8(src: Path, dst: Path) -> dict[str, Any]:
    """Write ``src`` to ``dst`` with its weights stored as int8 per output channel (others float16).

    Grouped (depthwise) convolutions keep float16 weights: they are a small part of the file, and nine
    values a channel round worse.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    proto = onnx.load(str(src))
    graph = proto.graph
    consumer: dict[str, str] = {}
    for node in graph.node:
        grouped = any(a.name == "group" and a.i > 1 for a in node.attribute)  # depthwise: small, and touchy
        for name in node.input[1:2]:  # the weight operand of Conv, ConvTranspose and MatMul
            consumer.setdefault(name, "grouped" if grouped else node.op_type)
    rebuild, as_int8, as_half, kept = [], 0, 0, 0
    for init in list(graph.initializer):
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < MIN_ELEMENTS:
            kept += 1
            continue
        w = numpy_helper.to_array(init)
        axis = CHANNEL_AXIS.get(consumer.get(init.name, ""))
        graph.initializer.remove(init)
        if axis is None or w.ndim < 2:
            half = numpy_helper.from_array(w.astype(np.float16), f"{init.name}__fp16")
            graph.initializer.append(half)
            rebuild.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT))
            as_half += 1
            continue
        axis %= w.ndim
        others = tuple(i for i in range(w.ndim) if i != axis)
        scale = np.abs(w).max(axis=others, keepdims=True) / 127.0
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        qi = numpy_helper.from_array(q, f"{init.name}__int8")
        si = numpy_helper.from_array(scale, f"{init.name}__scale")
        graph.initializer.extend([qi, si])
        rebuild += [
            helper.make_node("Cast", [qi.name], [f"{init.name}__float"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{init.name}__float", si.name], [init.name]),
        ]
        as_int8 += 1
    facts = {
        "weights_storage": "int8 per output channel (symmetric) for convolution and matrix weights, float16 for "
        "the other weights, rebuilt as float32 when the session opens (arithmetic in float32)",
        "initializers_int8": as_int8,
        "initializers_float16": as_half,
        "initializers_kept": kept,
    }
    _save(proto, rebuild, src, dst, facts)
    log.info(
        "stored %d weight tensors as int8 and %d as float16 (%d kept): %.2f MB -> %.2f MB",
        as_int8,
        as_half,
        kept,
        src.stat().st_size / 1e6,
        dst.stat().st_size / 1e6,
    )
    return facts


def _save(proto, rebuild: list, src: Path, dst: Path, facts: dict[str, Any]) -> None:
    """Put the ``rebuild`` nodes in front of the graph, the parent's metadata plus ``storage`` on it, and save it."""
    import onnx

    from .convert import attach_metadata
    from .quantize import read_metadata

    graph = proto.graph
    nodes = [*rebuild, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    facts["fp32_sha256"] = file_sha256(src)
    meta = read_metadata(src)
    meta["storage"] = facts
    attach_metadata(proto, meta)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(dst))
