"""fp32 ONNX -> the same model with its weights stored as float16 (``edge-seg-export --weights fp16``).

Every float32 initializer of at least :data:`MIN_ELEMENTS` values is stored as float16 and cast back
to float32 by a ``Cast`` node in front of the graph, which onnxruntime folds into a constant when the
session opens: the file is about half the size, the arithmetic stays float32 and so does the speed.
What changes is the weights' rounding (11 significant bits), so the result is checked like an int8
model against its fp32 parent (:func:`export.parity.check_int8_parity`: masks and val Dice). The
metadata is the parent's plus ``weights_storage`` and the parent's sha256. Needs only onnx and numpy.
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

    from .convert import attach_metadata
    from .quantize import read_metadata

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
    nodes = [*casts, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    facts = {
        "weights_storage": "float16, cast to float32 when the session opens (arithmetic in float32)",
        "initializers_float16": stored,
        "initializers_kept": kept,
        "fp32_sha256": file_sha256(src),
    }
    meta = read_metadata(src)
    meta["storage"] = facts
    attach_metadata(proto, meta)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(dst))
    log.info(
        "stored %d weight tensors as float16 (%d kept): %.2f MB -> %.2f MB",
        stored,
        kept,
        src.stat().st_size / 1e6,
        dst.stat().st_size / 1e6,
    )
    return facts
