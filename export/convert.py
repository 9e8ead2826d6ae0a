"""Keras 3 -> ONNX with tf2onnx, and the model metadata of contract 2 (docs/DESIGN.md), built by
:mod:`edge_runtime.core.metadata`.

``tf2onnx.convert.from_keras`` breaks on Keras 3 (onnx/tensorflow-onnx#2329, #2348), so the model is
wrapped in a ``tf.function`` with an explicit input signature (dynamic batch, named ``image``) and
converted with ``from_function``. The outputs are renamed ``probability`` (and ``presence`` for a
model with the image-level head, whose threshold the metadata carries beside the mask threshold).
"""

from __future__ import annotations

import logging
import operator
import time
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Any

from edge_runtime.core.metadata import INPUT_NAME, OUTPUT_NAME, PRESENCE_NAME
from edge_runtime.core.refine import REFINE_INPUT_NAME, REFINE_OUTPUT_NAME

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17


def load_keras(path: str | Path):
    """The trained model at ``path``, every weight loaded (``train.loading``: a skipped layer is an error)."""
    from edge_seg_train.loading import load_keras as load_whole

    return load_whole(path)


def with_flip_tta(model):
    """The model averaged with itself on the left-right mirrored scan (test-time augmentation).

    Built into the graph, so the ONNX file and its parity reference compute the same thing and the
    runtime needs no change; it costs two forward passes per scan. A model with the presence output
    averages both outputs.
    """
    import keras

    inp = keras.Input(shape=tuple(model.inputs[0].shape[1:]), name=INPUT_NAME)
    plain, mirror = model(inp), model(keras.ops.flip(inp, axis=2))
    if not has_presence(model):
        return keras.Model(inp, (plain + keras.ops.flip(mirror, axis=2)) * 0.5, name=f"{model.name}_fliptta")
    # the mask is flipped back; the image-level score of a mirrored scan needs no flip
    outputs = {
        OUTPUT_NAME: (plain[OUTPUT_NAME] + keras.ops.flip(mirror[OUTPUT_NAME], axis=2)) * 0.5,
        PRESENCE_NAME: (plain[PRESENCE_NAME] + mirror[PRESENCE_NAME]) * 0.5,
    }
    return keras.Model(inp, outputs, name=f"{model.name}_fliptta")


def with_ensemble(models: list):
    """The members' outputs averaged, one forward pass each, built into one graph (like :func:`with_flip_tta`).

    The members must take the same input and give the same outputs (all with the presence output, or
    none); :func:`with_flip_tta` can then wrap the ensemble.
    """
    import keras

    first = models[0]
    shape = tuple(first.inputs[0].shape[1:])
    for m in models[1:]:
        if tuple(m.inputs[0].shape[1:]) != shape or has_presence(m) != has_presence(first):
            raise ValueError(
                f"ensemble members differ: {first.name} takes {shape}"
                f"{' with' if has_presence(first) else ' without'} a presence output, {m.name} "
                f"{tuple(m.inputs[0].shape[1:])}{' with' if has_presence(m) else ' without'} one"
            )
    inp = keras.Input(shape=shape, name=INPUT_NAME)
    # each member under its own name: two runs of one recipe are both called e.g. "effl0-unet"
    outs = [keras.Model(m.input, m.output, name=f"{m.name}_m{i}")(inp) for i, m in enumerate(models, 1)]
    scale = 1.0 / len(models)
    name = f"{first.name}_ens{len(models)}"
    if not has_presence(first):
        return keras.Model(inp, reduce(operator.add, outs) * scale, name=name)
    outputs = {key: reduce(operator.add, (o[key] for o in outs)) * scale for key in (OUTPUT_NAME, PRESENCE_NAME)}
    return keras.Model(inp, outputs, name=name)


def with_refine(first, second):
    """One graph of two stages: ``first`` on the scan, ``second`` (a ``--refine`` network) on its own input.

    The two inputs are independent (the runtime cuts the crop between the two runs, see
    :mod:`edge_runtime.core.refine`); the outputs are the first stage's and ``refine_probability``.
    """
    import keras

    if isinstance(second.output, dict):
        raise ValueError(f"the second stage {second.name} has more than one output: train it with --refine")
    c1, c2 = first.inputs[0].shape[-1], second.inputs[0].shape[-1]
    if c1 != c2:
        raise ValueError(f"the second stage {second.name} takes {c2} channels, the first stage {c1}")
    scan = keras.Input(shape=tuple(first.inputs[0].shape[1:]), name=INPUT_NAME)
    cut = keras.Input(shape=tuple(second.inputs[0].shape[1:]), name=REFINE_INPUT_NAME)
    out = keras.Model(first.input, first.output, name=f"{first.name}_stage1")(scan)
    refined = keras.Model(second.input, second.output, name=f"{second.name}_stage2")(cut)
    outputs = dict(out) if isinstance(out, dict) else {OUTPUT_NAME: out}
    outputs[REFINE_OUTPUT_NAME] = refined
    return keras.Model([scan, cut], outputs, name=f"{first.name}_refine")


def has_refine(model) -> bool:
    """Whether a Keras model is a two-stage graph made by :func:`with_refine`."""
    return isinstance(model.output, dict) and REFINE_OUTPUT_NAME in model.output


def has_presence(model) -> bool:
    """Whether a Keras model has the image-level presence output beside the probability map."""
    return isinstance(model.output, dict) and PRESENCE_NAME in model.output


def to_onnx(model, opset: int = DEFAULT_OPSET):
    """Convert a Keras model (NHWC float32 input, sigmoid output(s)) to an ``onnx.ModelProto``.

    A model with dict outputs (``probability``, ``presence``, and ``refine_probability`` for a two-stage
    graph with its second input ``refine_image``) gets graph outputs of those names, in that order; a
    single-output model one output named ``probability``.
    """
    import tensorflow as tf
    import tf2onnx

    names = [INPUT_NAME, REFINE_INPUT_NAME][: len(model.inputs)]
    spec = tuple(
        tf.TensorSpec((None, *inp.shape[1:]), tf.float32, name=name)
        for inp, name in zip(model.inputs, names, strict=True)
    )
    if isinstance(model.output, dict):
        keys = [k for k in (OUTPUT_NAME, PRESENCE_NAME, REFINE_OUTPUT_NAME) if k in model.output]

        def call(*xs):
            out = model(list(xs) if len(xs) > 1 else xs[0], training=False)
            return tuple(tf.identity(out[k], name=f"out_{k}") for k in keys)

        fn = tf.function(call, input_signature=spec)
        proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=opset)
        for index, name in enumerate(keys):
            _rename_output(proto, name, index)
        return proto
    fn = tf.function(lambda x: model(x, training=False), input_signature=spec)
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=opset)
    _rename_output(proto, OUTPUT_NAME)
    return proto


def _rename_output(proto, new: str, index: int = 0) -> None:
    old = proto.graph.output[index].name
    for node in proto.graph.node:
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
    proto.graph.output[index].name = new


@dataclass(frozen=True)
class SecondStage:
    """A two-stage graph's second network, as its metadata describes it."""

    path: str  #: its model.keras
    record: dict | None  #: its training record
    box_threshold: float  #: the first stage's mask at this threshold gives the crop's box
    blend: str = "mean"  #: inside the box: ``mean`` of the two maps, or ``replace`` (edge_runtime.core.refine)


@dataclass(frozen=True)
class Described:
    """What an exported graph's metadata says beyond its training record."""

    name: str
    version: str
    threshold: float  #: the mask threshold the graph ships with
    opset: int
    tta: str = "none"
    presence_threshold: float | None = None  #: None: the record's
    chosen_at_export: dict[str, Any] | None = None  #: thresholds the export chose again on validation
    members: list[tuple[str, dict | None]] | None = None  #: the ensemble (model file, training record)
    refine: SecondStage | None = None  #: the second stage of a two-stage graph


def build_metadata(model, record: dict | None, about: Described) -> dict[str, Any]:
    """The ``edge_seg`` metadata JSON for a model, from its training record when there is one.

    ``about.refine``: the second stage of a two-stage graph (its model file, its training record, the first
    stage's threshold that gives the crop's box); its block is ``refine`` (schema 2), its cost is added
    to ``macs_per_scan`` (the second pass runs once per scan with a mask).

    ``about.chosen_at_export``: the thresholds the export chose again on validation data (``--tta``,
    ``--ensemble``), recorded under ``export.thresholds_chosen_on_val`` beside the training record's own
    choices for the plain model. ``about.members``: every ensemble member, the first included (model file,
    training record); ``training`` describes the first, ``export.ensemble`` all of them, and ``macs_per_scan`` /
    ``parameters`` at the top level are the whole graph's (every member, twice with ``--tta flip``).
    """
    import keras
    import onnx
    import tensorflow as tf
    import tf2onnx

    from edge_runtime import __version__
    from edge_runtime.core.metadata import model_metadata

    tta, members, refine = about.tta, about.members, about.refine
    _, h, w, c = model.inputs[0].shape
    cfg = (record or {}).get("config", {})
    training = _training_block(record) if record else None
    presence = _presence_block(model, record, about.presence_threshold)
    meta = model_metadata(
        name=about.name,
        version=about.version,
        architecture=model.name,
        height=int(h),
        width=int(w),
        channels=int(c),
        threshold=about.threshold,
        resize=cfg.get("resize", "area"),
        morphology_size=int(cfg.get("morphology_size", 3)),
        training=training,
        presence=presence,
        export={
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "opset": about.opset,
            "edge_seg": __version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "tf2onnx": tf2onnx.__version__,
            "onnx": onnx.__version__,
            **({"thresholds_chosen_on_val": about.chosen_at_export} if about.chosen_at_export else {}),
        },
        tta=tta,
        refine=_refine_block(model, refine) if refine is not None else None,
    )
    records = [r for _, r in members] if members else [record]
    if members:
        meta["export"]["ensemble"] = [_member(path, rec) for path, rec in members]
    if all(r and r.get("model", {}).get("macs") for r in records):
        passes = 2 if tta == "flip" else 1
        meta["macs_per_scan"] = passes * sum(int(r["model"]["macs"]) for r in records if r)
        meta["parameters"] = sum(int(r["model"]["parameters"]) for r in records if r)
        if refine is not None:
            rec = refine.record
            if rec and rec.get("model", {}).get("macs"):
                meta["macs_per_scan"] += int(rec["model"]["macs"])
                meta["parameters"] += int(rec["model"]["parameters"])
            else:
                del meta["macs_per_scan"], meta["parameters"]
    return meta


_RECIPE_KEYS = (
    "loss",
    "learning_rate",
    "lr_schedule",
    "batch_size",
    "epochs",
    "patience",
    "monitor",
    "augment",
    "threads",
    "seed",
    "input_size",
)


def _training_block(record: dict) -> dict[str, Any]:
    """The metadata's ``training`` block: what the training record says of the run and its choices.

    A run given ``--thresholds-from`` (a distilled student) carries thresholds chosen out of fold: they
    are stored as chosen (``threshold_chosen``, ``presence_threshold_chosen``) with where
    (``thresholds_chosen``), and the run's own choice on its validation frames beside them. The keys
    ``threshold_chosen_on_val`` / ``presence_threshold_chosen_on_val`` are kept for a run that chose on val.
    """
    cfg = record.get("config", {})
    out_of_fold = record.get("thresholds_chosen")
    suffix = "" if out_of_fold else "_on_val"
    training: dict[str, Any] = {
        "architecture": record["model"]["architecture"],
        "parameters": record["model"]["parameters"],
        "macs_per_scan": record["model"]["macs"],
        "data": record["data"],
        "recipe": {k: cfg.get(k) for k in _RECIPE_KEYS},
        "epochs_run": record["epochs_run"],
        "best_epoch": record["best_epoch"],
        f"threshold_chosen{suffix}": record["threshold"],
        "val_dice": record["val_dice"],
        "val_dice_at_0.5": record["val"]["0.5"]["dice_mean"],
        "finished": record.get("finished"),
    }
    if "presence_threshold" in record:
        training[f"presence_threshold_chosen{suffix}"] = record["presence_threshold"]
        training["presence_choice"] = record.get("presence_choice")
        counts = record.get("val_views", {}).get("counts")
        gated = record.get("val_views", {}).get("gated", {})
        key = format(record["threshold"], "g")
        training["val_views"] = {
            "counts": counts,
            **{
                kind: {f: gated[kind].get(key, {}).get(f) for f in ("dice_mean", "sensitivity", "fp_share")}
                for kind in gated
            },
        }
    for key in ("thresholds_chosen", "thresholds_chosen_on_val", "distillation", "fold"):
        if key in record:
            training[key] = record[key]
    return training


def _presence_block(model, record: dict | None, presence_threshold: float | None) -> dict[str, Any] | None:
    """The metadata's ``presence`` block for a model with a presence output (None without one)."""
    if not has_presence(model):
        return None
    chosen = presence_threshold if presence_threshold is not None else (record or {}).get("presence_threshold")
    if chosen is None:
        raise ValueError("the model has a presence output but no presence threshold: train with --views or pass one")
    return {
        "name": PRESENCE_NAME,
        "activation": "sigmoid",
        "shape": "N,1",
        "threshold": float(chosen),
        "rule": "nodule present when presence >= threshold; otherwise every mask is empty",
    }


def _refine_block(model, refine: SecondStage) -> dict[str, Any]:
    """The metadata's ``refine`` block for a two-stage graph, with what the second stage's record says."""
    from edge_runtime.core.refine import refine_metadata

    record = refine.record
    _, h, w, c = model.inputs[1].shape
    block = refine_metadata(int(h), int(w), int(c), refine.box_threshold, blend=refine.blend)
    block["model"] = _member(refine.path, record)
    if record:
        block["model"]["val_crop_dice"] = record.get("val", {}).get("0.5", {}).get("dice_mean")
        block["model"]["data"] = record.get("data")
        if "refine_boxes" in record:
            block["model"]["refine_boxes"] = record["refine_boxes"]
    return block


def _member(path: str, record: dict | None) -> dict[str, Any]:
    """What the metadata says of one ensemble member: its file and its training record's main facts."""
    if not record:
        return {"model": path, "training": None}
    cfg = record.get("config", {})
    return {
        "model": path,
        "architecture": record["model"]["architecture"],
        "seed": cfg.get("seed"),
        "lr_schedule": cfg.get("lr_schedule"),
        "epochs_run": record.get("epochs_run"),
        "best_epoch": record.get("best_epoch"),
        "val_dice": record.get("val_dice"),
        "finished": record.get("finished"),
    }


def attach_metadata(proto, metadata: dict[str, Any]) -> None:
    """Store ``metadata`` as JSON under ``edge_seg`` in ``metadata_props`` (replacing any earlier one)."""
    from edge_runtime.core import metadata as meta

    meta.attach_metadata(proto, metadata)
    proto.producer_name = "edge-seg-export"
    proto.doc_string = f"edge-seg thyroid nodule segmentation model {metadata['name']} {metadata['version']}"
