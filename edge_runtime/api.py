"""The Python API as users import it: ``from edge_runtime import Segmenter``, which also takes scan files.

:class:`edge_runtime.core.segmenter.Segmenter` works on pixels only (``core/`` knows no files); this
one, above ``files/``, also reads a path, as ``edge-seg`` does (:func:`edge_runtime.files.scans.read_scan`):

>>> from edge_runtime import Segmenter
>>> seg = Segmenter()                      # the bundled model
>>> result = seg.segment("scan.png")       # or a Path, or decoded pixels
>>> result.masks[seg.threshold]            # uint8, scan size, 0 / 255
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from edge_runtime.core import segmenter as core
from edge_runtime.errors import ScanError
from edge_runtime.files.scans import read_scan


class Segmenter(core.Segmenter):
    """:class:`edge_runtime.core.segmenter.Segmenter`, whose :meth:`segment` also takes a scan file's path."""

    def segment(
        self, image: np.ndarray | str | os.PathLike[str], thresholds: Sequence[float] | None = None
    ) -> core.Segmentation:
        """Segment one image: pixels, or the path (``str`` or ``Path``) of a one-frame scan file.

        A file is read as ``edge-seg`` reads it: PNG, JPEG, BMP, TIFF, or DICOM with the ``dicom`` extra.
        Raises :class:`ScanError` for a file that cannot be read, and for a multi-frame one (whose frames
        ``segment_batch(read_scan(path).frames)`` segments, one result each).
        """
        if isinstance(image, str | os.PathLike):
            scan = read_scan(os.fspath(image))
            if len(scan.frames) != 1:
                raise ScanError(
                    scan.path, f"has {len(scan.frames)} frames; segment_batch(read_scan(path).frames) segments each"
                )
            image = scan.frames[0]
        return super().segment(image, thresholds)
