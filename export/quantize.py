"""fp32 ONNX -> int8 ONNX: onnxruntime's static quantization, calibrated on training scans.

The settings are fixed (:data:`SETTINGS`): QDQ format, int8 weights per output channel (symmetric),
uint8 activations (asymmetric), min-max calibration, every node type onnxruntime can quantize (so
every output of the model, a presence head included). onnxruntime's ``quant_pre_process`` (shape
inference and graph optimisation before quantizing) is off by default: on the bundled model it gave
the same quantized graph, node for node, and the same speed (bench/README.md); ``pre_process=True``
runs it.

Calibration scans are training scans, never validation or test ones, and go through the runtime's
own preprocessing (:meth:`edge_runtime.segmenter.Segmenter.preprocess` of the fp32 model), so the
ranges are those the runtime will feed. Which scans is a fixed rule (:func:`calibration_files`): the
folder's images sorted by name, then every k-th one from the first, k = n // count, ``count`` of them.

The int8 file's ``edge_seg`` metadata is its fp32 parent's plus ``precision: "int8"`` and a
``quantization`` block (settings, calibration set with its fingerprint, the parent's sha256); the
runtime ignores keys it does not know. Needs only onnx and onnxruntime (no TensorFlow).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.core.metadata import METADATA_KEY, parse_metadata
from edge_runtime.core.model import file_sha256
from edge_runtime.core.segmenter import Segmenter
from edge_runtime.errors import ModelError, SetupError
from edge_runtime.files.scans import read_scan
from edge_runtime.job.discovery import is_candidate_name

log = logging.getLogger(__name__)

#: Calibration scans by default (the issue's own trial used 32).
DEFAULT_CALIBRATION_COUNT = 32
#: How the calibration scans are chosen, as recorded in the metadata.
SELECTION = "images sorted by name; every k-th from the first, k = floor(n / count)"
#: The quantization settings, recorded as they are in the int8 model's metadata.
SETTINGS: dict[str, Any] = {
    "tool": "onnxruntime.quantization.quantize_static",
    "format": "QDQ",
    "weights": "int8, per channel, symmetric",
    "activations": "uint8, per tensor, asymmetric",
    "calibration_method": "MinMax",
    "op_types": "all that onnxruntime quantizes",
}


def calibration_files(folder: Path, count: int = DEFAULT_CALIBRATION_COUNT) -> list[Path]:
    """The calibration scans in ``folder`` (or its ``image/`` subfolder): every k-th by name, ``count`` of them."""
    if (folder / "image").is_dir():
        folder = folder / "image"
    if not folder.is_dir():
        raise SetupError(f"calibration folder {folder} is not a folder")
    if count < 1:
        raise SetupError(f"calibration count must be at least 1, not {count}")
    names = sorted(p for p in folder.iterdir() if p.is_file() and is_candidate_name(p.name, dicom=False))
    if len(names) < count:
        raise SetupError(f"calibration folder {folder} has {len(names)} scan(s); {count} asked for")
    step = len(names) // count
    return names[::step][:count]


def fingerprint(files: list[Path]) -> str:
    """sha256 over each file's name and bytes, in order: which scans, and exactly those pixels."""
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        h.update(b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


class _Scans:
    """onnxruntime's ``CalibrationDataReader``: one preprocessed scan at a time, as the runtime feeds it."""

    def __init__(self, segmenter: Segmenter, files: list[Path]) -> None:
        self.input_name = segmenter.info.input_name
        self._tensors = [segmenter.preprocess(read_scan(p).frames[0])[None] for p in files]
        self._it: Iterator[np.ndarray] = iter(self._tensors)

    def get_next(self) -> dict[str, np.ndarray] | None:
        tensor = next(self._it, None)
        return None if tensor is None else {self.input_name: tensor}

    def rewind(self) -> None:
        self._it = iter(self._tensors)


def read_metadata(path: Path) -> dict[str, Any]:
    """The checked ``edge_seg`` metadata of an ONNX file (without starting a session)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others
        raise ModelError(f"model {path} is not a loadable ONNX model: {exc}") from None
    raw = next((p.value for p in proto.metadata_props if p.key == METADATA_KEY), None)
    return parse_metadata(raw, path)


def int8_metadata(
    fp32_meta: dict[str, Any], fp32_path: Path, calibration: list[Path], folder: Path, pre_process: bool
) -> dict[str, Any]:
    """The int8 model's metadata: the fp32 parent's plus precision, settings, calibration set and parent hash."""
    import onnxruntime

    meta = {**fp32_meta, "precision": "int8"}
    meta["quantization"] = {
        **SETTINGS,
        "pre_process": "onnxruntime quant_pre_process (onnx shape inference, optimisation)" if pre_process else "none",
        "onnxruntime": onnxruntime.__version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "calibration": {
            "folder": str(folder),
            "count": len(calibration),
            "selection": SELECTION,
            "preprocessing": "edge_runtime.segmenter.Segmenter.preprocess (the runtime's own)",
            "first": calibration[0].name,
            "last": calibration[-1].name,
            "fingerprint": fingerprint(calibration),
            "fingerprint_of": "sha256 over each scan's file name, a NUL byte and the sha256 of its bytes, in order",
        },
        "fp32_model": {"file": fp32_path.name, "sha256": file_sha256(fp32_path)},
    }
    return meta


class _DropAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Please consider")


_ADVICE_FILTER = _DropAdvice()


def _quiet_pre_process_advice() -> None:
    """onnxruntime logs "Please consider to run pre-processing" on the root logger: measured and declined."""
    root = logging.getLogger()  # (a logger's filters see the records logged on it, as onnxruntime's are)
    if _ADVICE_FILTER not in root.filters:
        root.addFilter(_ADVICE_FILTER)


def quantize(
    fp32_path: Path,
    out: Path,
    calibration_folder: Path,
    count: int = DEFAULT_CALIBRATION_COUNT,
    pre_process: bool = False,
) -> dict[str, Any]:
    """Write the int8 model of ``fp32_path`` to ``out`` (not atomically: the caller checks parity first).

    Returns the metadata written. Raises :class:`SetupError` or :class:`ModelError` with a one-line reason.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .convert import attach_metadata

    fp32_meta = read_metadata(fp32_path)
    if fp32_meta.get("precision", "fp32") != "fp32":
        raise ModelError(f"model {fp32_path} is already {fp32_meta['precision']}: quantize its fp32 parent")
    files = calibration_files(calibration_folder, count)
    reader = _Scans(Segmenter(fp32_path, threads=None), files)
    log.info(
        "calibrating on %d scans of %s (%s .. %s)%s",
        len(files),
        calibration_folder,
        files[0].name,
        files[-1].name,
        ", after quant_pre_process" if pre_process else "",
    )
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="edge-seg-quant-") as tmp:
        source = fp32_path
        if pre_process:
            source = Path(tmp) / "pre.onnx"
            # onnx's own shape inference; the symbolic one (for dynamic shapes beyond the batch axis)
            # needs sympy, which the export environment does not have, and this graph does not need.
            quant_pre_process(str(fp32_path), str(source), skip_symbolic_shape=True)
        _quiet_pre_process_advice()
        quantize_static(
            str(source),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    meta = int8_metadata(fp32_meta, fp32_path, files, calibration_folder, pre_process)
    proto = onnx.load(str(out))
    attach_metadata(proto, meta)
    proto.doc_string += " (int8)"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))
    log.info("quantized %s -> %s (%.2f MB) in %.1f s", fp32_path, out, out.stat().st_size / 1e6, time.time() - t0)
    return meta
