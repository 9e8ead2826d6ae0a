"""The model's metadata (contract 2 of docs/DESIGN.md): written by the export, read by the runtime, one module.

A model carries its own facts in ONNX ``metadata_props`` under the key ``edge_seg``, as JSON with a
schema number: input size and layout, preprocessing, the default threshold, the morphology, and how it
was trained and exported. :func:`model_metadata` builds that JSON (for ``edge-seg-export`` and test
fixtures alike), :func:`attach_metadata` stores it in a model, and :func:`parse_metadata` is the only
reader: it refuses, with a one-line reason, anything it does not understand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edge_runtime.core.preprocess import RESIZE_METHODS
from edge_runtime.core.refine import BLENDS
from edge_runtime.errors import ModelError

METADATA_KEY = "edge_seg"
SCHEMA_VERSION = 1
#: A model with a second stage (``refine``) is schema 2, so that a runtime that cannot run one says so.
REFINE_SCHEMA_VERSION = 2
#: A model whose second stage is a file of its own beside it (``refine.file``, ``refine.sha256``) is schema 3:
#: each stage gets a session of its own, and neither is fed an empty batch while the other runs (issue 30).
SPLIT_SCHEMA_VERSION = 3
SCHEMAS = (SCHEMA_VERSION, REFINE_SCHEMA_VERSION, SPLIT_SCHEMA_VERSION)
INPUT_NAME = "image"
OUTPUT_NAME = "probability"
PRESENCE_NAME = "presence"
#: Thresholds a model's card compares beside its default.
COMPARE_THRESHOLDS = (0.85, 0.9, 0.95)


def model_metadata(
    *,
    name: str,
    version: str,
    architecture: str,
    height: int,
    width: int,
    channels: int,
    threshold: float,
    resize: str = "area",
    morphology_size: int = 3,
    training: dict[str, Any] | None = None,
    export: dict[str, Any] | None = None,
    tta: str = "none",
    presence: dict[str, Any] | None = None,
    refine: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``edge_seg`` metadata of a model (schema :data:`SCHEMA_VERSION`; 2 with a second stage in its graph,
    3 with a second stage in a file of its own).

    ``presence``: the image-level "nodule present" output of a model that has one (name, activation,
    shape, threshold, rule), else None. ``refine``: the second stage of a model that has one
    (:func:`edge_runtime.core.refine.refine_metadata`), else None.
    """
    meta: dict[str, Any] = {
        "schema": schema_of(refine),
        "name": name,
        "version": version,
        "architecture": architecture,
        "input": {
            "name": INPUT_NAME,
            "height": int(height),
            "width": int(width),
            "channels": int(channels),
            "layout": "NHWC",
            "dtype": "float32",
            "color": "RGB" if channels == 3 else "gray",
        },
        "output": {"name": OUTPUT_NAME, "activation": "sigmoid", "shape": "N,H,W,1"},
        "presence": presence,
        "preprocessing": {
            "function": "edge_runtime.core.preprocess.preprocess",
            "resize": resize,
            "normalisation": "minmax",
        },
        "postprocessing": {
            "threshold": float(threshold),
            "compare_thresholds": list(COMPARE_THRESHOLDS),
            "resize": "linear, probability map to the scan's size before thresholding",
            "morphology": {
                "op": "open",
                "shape": "ellipse",
                "size": int(morphology_size),
                "units": "model pixels, scaled to the scan's size",
            },
        },
        "test_time_augmentation": tta,
        "training": training,
        "export": export or {},
    }
    if refine is not None:
        meta["refine"] = refine
    return meta


def schema_of(refine: dict[str, Any] | None) -> int:
    """The schema of a model with this ``refine`` block (None: no second stage)."""
    if refine is None:
        return SCHEMA_VERSION
    own_file = isinstance(refine, dict) and refine.get("file") is not None
    return SPLIT_SCHEMA_VERSION if own_file else REFINE_SCHEMA_VERSION


def encode_metadata(metadata: dict[str, Any]) -> str:
    """The JSON stored in the model."""
    return json.dumps(metadata, sort_keys=True)


def attach_metadata(proto: Any, metadata: dict[str, Any]) -> None:
    """Store ``metadata`` under ``edge_seg`` in an ``onnx.ModelProto``'s ``metadata_props`` (replacing any other)."""
    keep = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    entry = proto.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = encode_metadata(metadata)


def require(cond: bool, path: Path, what: str) -> None:
    if not cond:
        raise ModelError(f"model {path}: {what}")


def parse_metadata(raw: str | None, path: Path) -> dict[str, Any]:
    """Parse and check the ``edge_seg`` metadata JSON; raise :class:`ModelError` on anything unknown."""
    if raw is None:
        raise ModelError(
            f"model {path}: has no edge-seg metadata (metadata_props key {METADATA_KEY!r}); "
            "export it with edge-seg-export"
        )
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ModelError(f"model {path}: its {METADATA_KEY!r} metadata is not valid JSON ({exc})") from None
    require(isinstance(meta, dict), path, "metadata is not a JSON object")
    schema = meta.get("schema")
    require(
        schema in SCHEMAS,
        path,
        f"metadata schema {schema!r} is not one this runtime reads (it reads schemas "
        f"{', '.join(map(str, SCHEMAS))}); "
        "upgrade edge-seg or re-export the model",
    )
    try:
        inp, pre, post = meta["input"], meta["preprocessing"], meta["postprocessing"]
        checks = [
            (inp["layout"] == "NHWC", f"input layout {inp['layout']!r} (expected 'NHWC')"),
            (inp["dtype"] == "float32", f"input dtype {inp['dtype']!r} (expected 'float32')"),
            (inp["channels"] in (1, 3), f"input channels {inp['channels']!r} (expected 1 or 3)"),
            (int(inp["height"]) > 0 and int(inp["width"]) > 0, "non-positive input size"),
            (pre["normalisation"] == "minmax", f"normalisation {pre['normalisation']!r} (expected 'minmax')"),
            (pre["resize"] in RESIZE_METHODS, f"resize {pre['resize']!r} (expected one of {sorted(RESIZE_METHODS)})"),
            (meta["output"]["activation"] == "sigmoid", f"output activation {meta['output']['activation']!r}"),
            (0.0 < float(post["threshold"]) < 1.0, f"default threshold {post['threshold']!r} not in (0, 1)"),
            (
                post["morphology"]["op"] == "open" and post["morphology"]["shape"] == "ellipse",
                f"morphology {post['morphology']!r} (expected an elliptical opening)",
            ),
            (int(post["morphology"]["size"]) >= 0, "negative morphology size"),
        ]
        presence = meta.get("presence")
        if presence is not None:
            checks += [
                (presence["activation"] == "sigmoid", f"presence activation {presence['activation']!r}"),
                (
                    0.0 < float(presence["threshold"]) < 1.0,
                    f"presence threshold {presence['threshold']!r} not in (0, 1)",
                ),
            ]
        refine = meta.get("refine")
        require(
            schema == schema_of(refine),
            path,
            f"schema {schema} is a model with a second stage, and it has no refine block"
            if refine is None
            else f"a refine block {'with' if schema_of(refine) == SPLIT_SCHEMA_VERSION else 'without'} a file of "
            f"its own needs schema {schema_of(refine)}",
        )
        if refine is not None:
            rin, rout = refine["input"], refine["output"]
            checks += [
                (isinstance(rin["name"], str) and bool(rin["name"]), f"refine input name {rin['name']!r}"),
                (isinstance(rout["name"], str) and bool(rout["name"]), f"refine output name {rout['name']!r}"),
                (
                    all(isinstance(rin[k], int) and rin[k] > 0 for k in ("height", "width")),
                    f"refine input size {rin['height']!r} x {rin['width']!r} (expected positive integers)",
                ),
                (
                    rin["channels"] == inp["channels"],
                    f"refine input channels {rin['channels']!r} differ from the input's",
                ),
                (rout["activation"] == "sigmoid", f"refine activation {rout['activation']!r}"),
                (0.0 < float(refine["box_threshold"]) < 1.0, f"refine box threshold {refine['box_threshold']!r}"),
                (
                    0.0 <= float(refine["margin"]) <= 10.0
                    and isinstance(refine["min_margin"], int)
                    and refine["min_margin"] >= 0,
                    f"refine margin {refine['margin']!r} / min_margin {refine['min_margin']!r} (expected 0-10 and a "
                    "non-negative integer)",
                ),
                (
                    refine.get("blend") in BLENDS,
                    f"refine blend {refine.get('blend')!r} (expected one of {', '.join(BLENDS)})",
                ),
            ]
            if schema == SPLIT_SCHEMA_VERSION:
                file, sha = refine["file"], refine["sha256"]
                checks += [
                    (
                        isinstance(file, str) and file.endswith(".onnx") and Path(file).name == file,
                        f"refine file {file!r} (expected the name of an .onnx file beside the model)",
                    ),
                    (
                        isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha),
                        f"refine sha256 {sha!r} (expected 64 lower-case hex digits)",
                    ),
                ]
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"model {path}: metadata is missing or has a malformed field ({exc!r})") from None
    for ok, what in checks:
        require(ok, path, f"metadata not understood: {what}")
    return meta
