"""edge-seg runtime: thyroid nodule segmentation with onnxruntime, OpenCV and NumPy (no TensorFlow).

The public API is imported lazily, so ``import edge_runtime`` (and ``edge-seg --version``) stays cheap.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from edge_runtime._version import __version__

#: Largest scan, in pixels, the runtime decodes. OpenCV reads this limit once, when it is first
#: imported, so it is set here, before any module of the package imports cv2.
MAX_PIXELS = 40_000_000
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_PIXELS))

if TYPE_CHECKING:
    from edge_runtime.api import Segmenter
    from edge_runtime.core.model import OnnxModel
    from edge_runtime.core.preprocess import preprocess
    from edge_runtime.core.segmenter import Segmentation
    from edge_runtime.errors import ModelError, ScanError, SetupError
    from edge_runtime.files.scans import read_scan

__all__ = [
    "ModelError",
    "OnnxModel",
    "ScanError",
    "Segmentation",
    "Segmenter",
    "SetupError",
    "__version__",
    "preprocess",
    "read_scan",
]

_LAZY = {
    "ModelError": "edge_runtime.errors",
    "ScanError": "edge_runtime.errors",
    "SetupError": "edge_runtime.errors",
    "OnnxModel": "edge_runtime.core.model",
    "preprocess": "edge_runtime.core.preprocess",
    "read_scan": "edge_runtime.files.scans",
    "Segmentation": "edge_runtime.core.segmenter",
    "Segmenter": "edge_runtime.api",  # the one that also reads scan files
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edge_runtime' has no attribute {name!r}")
