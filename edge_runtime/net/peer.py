"""A DICOM application entity on the network, as ``--send-to`` names it: ``AET@HOST:PORT``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Peer:
    """A DICOM application entity on the network: ``AET@HOST:PORT``."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"
