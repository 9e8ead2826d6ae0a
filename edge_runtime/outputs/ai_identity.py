"""What the DICOM results of one scan share, as IHE AI Results (AIR) asks: who made them and how they
are tracked.

* **Algorithm identification**: the model's name and version, and the sha256 of the model file as an
  algorithm parameter, in the SEG's segment, in every SR measurement group and in the Secondary
  Capture's Derivation Description -- so a PACS user can tell which model made a result, byte for byte.
* **Tracking**: the SEG's segment and the SR group that measures it carry the same Tracking ID and
  Tracking UID (made once per scan, :class:`ResultIdentity`).
* **Series**: each result in a series of its own, whose description says what made it
  (``edge-seg ddti-fcn 0.6.0: thyroid nodule SEG``), and whose number does not collide with the source's
  own series (:func:`series_numbers`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edge_runtime.core.model import ModelInfo

MANUFACTURER = "edge-seg"
#: The results' series numbers: high, so they sort after the scanner's own series (which number from 1).
BASE_SERIES_NUMBERS = {"seg": 9901, "sr": 9902, "sc": 9903}
#: What each result is, for its series description.
WHAT = {"seg": "thyroid nodule SEG", "sr": "thyroid nodule measurements", "sc": "overlay, not for diagnosis"}
#: The Tracking ID of the segment, in the SEG and in the SR group that measures it.
SEGMENT_TRACKING_ID = "thyroid nodule segment"


def series_numbers(source: Any) -> dict[str, int]:
    """The results' series numbers: :data:`BASE_SERIES_NUMBERS`, moved past the source's own when it is one.

    Only the source's series number is known here (not the other series of its study); scanners
    number theirs from 1, so the 99xx range is free but for a source that is itself numbered there.
    """
    try:
        own = int(source.get("SeriesNumber") or 0)
    except (TypeError, ValueError):
        own = 0
    shift = 10 if own in BASE_SERIES_NUMBERS.values() else 0
    return {kind: n + shift for kind, n in BASE_SERIES_NUMBERS.items()}


def series_description(model: ModelInfo, kind: str) -> str:
    """``edge-seg <model> <version>: <what>``, at most 64 characters (LO)."""
    return f"{MANUFACTURER} {model.name} {model.version}: {WHAT[kind]}"[:64]


@dataclass(frozen=True)
class ResultIdentity:
    """The identification the results of one scan share."""

    model: ModelInfo
    series: dict[str, int]
    segment_tracking_uid: str = field(default_factory=lambda: _uid())

    @classmethod
    def of(cls, source: Any, model: ModelInfo) -> ResultIdentity:
        return cls(model, series_numbers(source))

    @property
    def parameters(self) -> dict[str, str]:
        """The algorithm's parameters: the model file's sha256 (AlgorithmParameters)."""
        return {"model_sha256": self.model.sha256}

    def seg_algorithm(self) -> Any:
        """The model as a SEG segment's Segmentation Algorithm Identification Sequence."""
        import highdicom as hd
        from pydicom.sr.codedict import codes

        return hd.AlgorithmIdentificationSequence(
            name=self.model.name,
            family=codes.cid7162.ArtificialIntelligence,
            version=self.model.version,
            source=MANUFACTURER,
            parameters=self.parameters,
        )

    def sr_algorithm(self) -> Any:
        """The model as a SR measurement group's Algorithm Identification (TID 4019)."""
        import highdicom as hd

        return hd.sr.AlgorithmIdentification(
            name=self.model.name,
            version=self.model.version,
            parameters=[f"{k}={v}" for k, v in self.parameters.items()],
        )

    def derivation(self) -> str:
        """A Secondary Capture's Derivation Description (ST): what made it, with the model's sha256."""
        return (
            f"{MANUFACTURER} model {self.model.name} {self.model.version} "
            f"(sha256 {self.model.sha256}): nodule outline drawn on the source image; not for diagnosis"
        )


def _uid() -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid())
