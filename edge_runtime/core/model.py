"""The ONNX session: load a model file, check it against its metadata, run it.

The metadata (contract 2 of docs/DESIGN.md) is read and checked by :mod:`edge_runtime.core.metadata`;
this module refuses, with a one-line reason, a model whose graph does not match it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.core.graph_cache import Opened, open_cached
from edge_runtime.core.metadata import METADATA_KEY, parse_metadata, require
from edge_runtime.core.refine import RefineSpec
from edge_runtime.errors import ModelError

log = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
DEFAULT_MODEL_NAME = "ddti-fcn.onnx"


def default_model_path() -> Path:
    """The bundled default model."""
    return MODELS_DIR / DEFAULT_MODEL_NAME


def available_cores() -> int:
    """CPU cores this process may actually run on (respects taskset/cgroup affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelInfo:
    """What the runtime needs to know about a model, read from its metadata."""

    path: Path
    sha256: str
    name: str
    version: str
    input_name: str
    output_name: str
    height: int
    width: int
    channels: int
    resize: str
    threshold: float
    morphology_size: int
    metadata: dict[str, Any]
    presence_output: str | None = None  #: the image-level "nodule present" output, when the model has one
    presence_threshold: float | None = None  #: "nodule present" when presence >= this (chosen on validation)
    refine: RefineSpec | None = None  #: the second stage, when the model has one (edge_runtime.core.refine)

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width

    def describe(self) -> str:
        return f"{self.name} {self.version} ({self.path.name}, sha256 {self.sha256[:12]})"


@cache
def _ort():
    import onnxruntime as ort  # imported lazily so `edge-seg --version` and `--help` stay instant

    ort.set_default_logger_severity(3)
    return ort


def session_options(ort: Any, threads: int, optimise: bool, spinning: bool = True) -> Any:
    """onnxruntime's session options as edge-seg runs a model: ``threads`` intra-op threads, one session
    run at a time, graph optimisations on (level ALL) or off (a graph the cache already optimised)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    level = ort.GraphOptimizationLevel
    opts.graph_optimization_level = level.ORT_ENABLE_ALL if optimise else level.ORT_DISABLE_ALL
    # No memory patterns: onnxruntime keeps one for each input shape, and batches come in several
    # (a second stage's as many as a batch's crops). A one-shot run over 100 DDTI scans peaked at
    # 381-410 MB without them against 610-663 MB with them from the graph cache (460-476 MB from
    # the model file), at the same CPU time (bench/README.md, issue 30).
    opts.enable_mem_pattern = False
    if not spinning:  # a daemon idles most of the time: do not burn a core waiting for work,
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # and do not keep a peak-sized memory arena between batches (~200 MB for the seed FCN).
        opts.enable_cpu_mem_arena = False
    return opts


def _check_second_stage(path: Path, refine: RefineSpec, r_in: Any, outputs: list) -> None:
    """The graph's second-stage input (``r_in``, None when absent) and output agree with the metadata."""
    require(r_in is not None, path, f"the metadata's refine input {refine.input_name!r} is not in the graph")
    r_shape = list(r_in.shape)
    require(
        len(r_shape) == 4 and r_shape[1:] == [refine.height, refine.width, refine.channels],
        path,
        f"refine input shape {r_shape} does not match the metadata's "
        f"[batch, {refine.height}, {refine.width}, {refine.channels}]",
    )
    r_out = next((o for o in outputs if o.name == refine.output_name), None)
    if r_out is not None:  # (a missing one is named with the other outputs by the caller)
        o_shape = list(r_out.shape)
        require(
            len(o_shape) == 4 and o_shape[1:] == [refine.height, refine.width, 1],
            path,
            f"refine output shape {o_shape} does not match [batch, {refine.height}, {refine.width}, 1]",
        )


def _output_names(
    path: Path, meta: dict, n_inputs: int, scan_inputs: int, names: list[str], refine: RefineSpec | None
) -> tuple[str, str | None]:
    """The probability output's name and the presence output's (None without one), checked against the graph:
    a plain model has one input and one output; otherwise the outputs are exactly those the metadata names
    (probability, presence, the second stage's) and one input besides the second stage's."""
    presence = meta.get("presence")
    if presence is None and refine is None:
        require(n_inputs == 1 and len(names) == 1, path, "expected exactly one input and one output")
        return names[0], None
    prob_name = str(meta["output"].get("name", "probability"))
    presence_name = None if presence is None else str(presence.get("name", "presence"))
    wanted = [prob_name] + ([] if presence_name is None else [presence_name])
    wanted += [] if refine is None else [refine.output_name]
    require(
        scan_inputs == 1 and sorted(names) == sorted(set(wanted)),
        path,
        f"expected {'two inputs' if refine else 'one input'} and the outputs "
        f"{' and '.join([', '.join(map(repr, wanted[:-1])), repr(wanted[-1])])}, found {names}",
    )
    return prob_name, presence_name


def _open(ort: Any, path: Path, sha256: str, options: Callable[[bool], Any], cache_dir: Path | None) -> Opened:
    """A session on one ONNX file, through the graph cache; :class:`ModelError` when onnxruntime cannot load it."""
    try:
        return open_cached(ort, path, sha256, options, cache_dir)
    except Exception as exc:  # onnxruntime raises several private exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"model {path} is not a loadable ONNX model: {first}") from None


def _open_second_stage(
    ort: Any, path: Path, spec: RefineSpec, options: Callable[[bool], Any], cache_dir: Path | None
) -> Opened:
    """The session of a second stage in a file of its own (``spec.file`` beside ``path``), checked: the file the
    metadata names and hashes, with one input and one output as the metadata describes them."""
    second = path.parent / str(spec.file)
    if not second.is_file():
        raise ModelError(f"model {path}: its second stage {second} is missing (it goes beside the model file)")
    sha256 = file_sha256(second)
    require(
        sha256 == spec.sha256,
        path,
        f"its second stage {second} is not the file it was exported with (sha256 {sha256[:12]}, the metadata "
        f"says {str(spec.sha256)[:12]}); copy the model's two files together",
    )
    opened = _open(ort, second, sha256, options, cache_dir)
    inputs, outputs = opened.session.get_inputs(), opened.session.get_outputs()
    require(
        len(inputs) == 1 and len(outputs) == 1 and outputs[0].name == spec.output_name,
        second,
        f"a second stage has one input and one output, {spec.input_name!r} and {spec.output_name!r}; found "
        f"{[i.name for i in inputs]} and {[o.name for o in outputs]}",
    )
    _check_second_stage(second, spec, inputs[0] if inputs[0].name == spec.input_name else None, outputs)
    return opened


class OnnxModel:
    """One onnxruntime session for a model file, reused for every scan."""

    def __init__(
        self,
        path: str | Path | None = None,
        threads: int | None = None,
        spinning: bool = True,
        cache_dir: Path | None = None,
    ):
        """``cache_dir``: keep onnxruntime's optimised graph there (:mod:`edge_runtime.core.graph_cache`)."""
        path = Path(path) if path is not None else default_model_path()
        if not path.is_file():
            raise ModelError(f"model {path} does not exist" if not path.exists() else f"model {path} is not a file")
        ort = _ort()
        self.threads = threads or available_cores()
        sha256 = file_sha256(path)

        def options(optimise: bool) -> Any:
            return session_options(ort, self.threads, optimise, spinning)

        opened = _open(ort, path, sha256, options, cache_dir)
        self.session = opened.session
        self._opened = [opened]
        meta = parse_metadata(self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY), path)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        presence = meta.get("presence")
        refine = RefineSpec.from_metadata(meta["refine"]) if meta.get("refine") is not None else None
        names = [o.name for o in outputs]
        by_name = {i.name: i for i in inputs}
        #: the second stage's own session (a model whose metadata names its file), else None: in ``session``
        self.refine_session: Any = None
        if refine is not None and refine.file is not None:
            second = _open_second_stage(ort, path, refine, options, cache_dir)
            self.refine_session = second.session
            self._opened.append(second)
        elif refine is not None:  # the second stage's input sits beside the scan's
            _check_second_stage(path, refine, by_name.pop(refine.input_name, None), outputs)
        in_graph = refine if refine is not None and refine.file is None else None
        prob_name, presence_name = _output_names(path, meta, len(inputs), len(by_name), names, in_graph)
        #: what the graph cache did, in words (for each file of the model)
        self.graph_cache: str = "; ".join(dict.fromkeys(o.note for o in self._opened))
        scan_input = next(iter(by_name.values()))
        h, w, c = int(meta["input"]["height"]), int(meta["input"]["width"]), int(meta["input"]["channels"])
        shape = list(scan_input.shape)
        require(
            len(shape) == 4 and shape[1:] == [h, w, c],
            path,
            f"graph input shape {shape} does not match the metadata's [batch, {h}, {w}, {c}]",
        )
        self.info = ModelInfo(
            path=path,
            sha256=sha256,
            name=str(meta.get("name", path.stem)),
            version=str(meta.get("version", "0")),
            input_name=scan_input.name,
            output_name=prob_name,
            height=h,
            width=w,
            channels=c,
            resize=meta["preprocessing"]["resize"],
            threshold=float(meta["postprocessing"]["threshold"]),
            morphology_size=int(meta["postprocessing"]["morphology"]["size"]),
            metadata=meta,
            presence_output=presence_name,
            presence_threshold=float(presence["threshold"]) if presence is not None else None,
            refine=refine,
        )
        self._outputs = [prob_name] if presence_name is None else [prob_name, presence_name]
        require(
            not isinstance(shape[0], int) or shape[0] == 1,
            path,
            f"batch axis fixed at {shape[0]} (expected dynamic or 1)",
        )
        self._batch_one = isinstance(shape[0], int)
        require(refine is None or not self._batch_one, path, "a model with a second stage needs a dynamic batch axis")
        # onnxruntime wants every graph input fed: the stage not run gets an empty batch (it computes nothing,
        # but its nodes still cost 0.3-0.6 ms a call: bench/README.md, issue 30); in sessions of their own, none
        self._idle: dict[str, np.ndarray] = {}
        self._idle_scan: dict[str, np.ndarray] = {}
        if in_graph is not None:
            self._idle = {in_graph.input_name: np.zeros((0, *in_graph.size, in_graph.channels), np.float32)}
            self._idle_scan = {scan_input.name: np.zeros((0, h, w, c), np.float32)}
        log.info(
            "model %s: input %dx%dx%d, threshold %g%s, onnxruntime %s, %s, %d intra-op thread(s)%s",
            self.info.describe(),
            h,
            w,
            c,
            self.info.threshold,
            ("" if presence is None else f", presence threshold {self.info.presence_threshold:g}")
            + ("" if refine is None else f", second stage {refine.height}x{refine.width}")
            + ("" if refine is None or refine.file is None else f" in {refine.file}"),
            ort.__version__,
            ",".join(self.session.get_providers()),
            self.threads,
            "" if spinning else ", spinning off",
        )
        log.debug("model %s: %s", path.name, self.graph_cache)
        self.start_cache_build()  # (only for a model accepted)

    @property
    def files(self) -> list[tuple[Path, str]]:
        """Every file of the model and its sha256: the model's, then its second stage's when in a file of its own."""
        spec = self.info.refine
        own = [] if spec is None or spec.file is None else [(self.info.path.parent / spec.file, str(spec.sha256))]
        return [(self.info.path, self.info.sha256), *own]

    def start_cache_build(self) -> None:
        """Start building the graph cache beside the run, for each file whose open found none."""
        for opened in self._opened:
            opened.start_build()

    def wait_for_cache(self) -> None:
        """Wait until the graph cache this open started building is written (or given up)."""
        for opened in self._opened:
            opened.wait()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for a float32 NHWC batch; returns float32 ``(N, height, width)``."""
        return self.run(batch)[0]

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probability maps ``(N, height, width)`` and presence scores ``(N,)`` (None without that output)."""
        if self._batch_one and batch.shape[0] != 1:
            parts = [self.run(batch[i : i + 1]) for i in range(batch.shape[0])]
            probs = np.concatenate([p for p, _ in parts])
            pres = None if parts[0][1] is None else np.concatenate([q for _, q in parts if q is not None])
            return probs, pres
        out = self.session.run(self._outputs, {self.info.input_name: batch, **self._idle})
        probs = out[0].reshape(batch.shape[0], self.info.height, self.info.width).astype(np.float32, copy=False)
        pres = out[1].reshape(batch.shape[0]).astype(np.float32, copy=False) if len(out) > 1 else None
        return probs, pres

    def run_refine(self, batch: np.ndarray) -> np.ndarray:
        """The second stage's probability maps ``(N, h, w)`` for a batch of preprocessed crops."""
        spec = self.info.refine
        if spec is None:
            raise ValueError(f"model {self.info.path} has no second stage")
        session = self.refine_session if self.refine_session is not None else self.session
        (out,) = session.run([spec.output_name], {spec.input_name: batch, **self._idle_scan})
        return out.reshape(batch.shape[0], spec.height, spec.width).astype(np.float32, copy=False)
