"""Where ``--send-to`` sends results: a DICOM application entity (``AET@HOST:PORT``) or a DICOMweb service (a URL)."""

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


@dataclass(frozen=True)
class WebTarget:
    """A DICOMweb service, as ``--send-to`` names it: its base URL (``https://host:port/dicom-web``)."""

    url: str

    def __str__(self) -> str:
        return self.url


#: Where ``--send-to`` sends results: a DIMSE peer (C-STORE) or a DICOMweb service (STOW-RS).
Target = Peer | WebTarget


def folder_name(target: Target) -> str:
    """A file-name-safe name for a target's own state folder (``PACS_10.0.0.5_104``)."""
    import re

    text = str(target).split("://", 1)[-1]
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_")[:100]
