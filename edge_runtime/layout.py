"""Which files are scans, and where their outputs go (contract 3 of DESIGN.md).

Outputs for the scan ``IN/a/b/scan.jpg``:

* one threshold:       ``OUT/a/b/scan.png``
* several thresholds:  ``OUT/<threshold>/a/b/scan.png`` (e.g. ``OUT/0.9/a/b/scan.png``)
* a multi-frame DICOM: ``scan_f0001.png``, ``scan_f0002.png``, ... in the same places
* an unreadable scan:  ``OUT/a/b/scan.jpg.error.txt`` (the reason, for a person to read)
* with ``--overlay``:  ``OUT/overlays/a/b/scan.png`` (all thresholds in one picture; ``scan_f0001.png``, ...)
* with ``--report``:   ``OUT/reports/a/b/scan.json`` (findings; docs/OUTPUTS.md describes every field)

DICOM files are scans by suffix (``.dcm``, ``.dicom``) or, for names without a suffix or with a numeric
one (``IM000001``, ``1.2.840.113619.2.1``, as scanners and PACS exports name them), by content: the
``DICM`` marker at byte 128. ``DICOMDIR`` is never a scan.

Hidden and temporary names are never scans: ``.name`` (also rsync's ``.name.XXXXXX``), ``*.tmp``,
``*.part``, ``*.crdownload``, ``*.swp``, ``~name``; nor is anything under a hidden folder.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath

from edge_runtime.errors import SetupError
from edge_runtime.scanio import DICOM_SUFFIXES, IMAGE_SUFFIXES

log = logging.getLogger(__name__)

TEMP_SUFFIXES = frozenset({".tmp", ".temp", ".part", ".partial", ".crdownload", ".download", ".swp", ".filepart"})
#: The folder under OUT that holds the ledger, the status file and run records.
STATE_DIR = ".edge-seg"
#: The folders under OUT for overlays (``--overlay``) and findings (``--report``).
OVERLAY_DIR = "overlays"
REPORT_DIR = "reports"


def is_candidate_name(name: str, dicom: bool = True) -> bool:
    """True if a file name looks like a finished scan: a known suffix, not hidden, not temporary."""
    if not name or name.startswith((".", "~")) or name.endswith("~"):
        return False
    suffix = os.path.splitext(name)[1].lower()
    if suffix in TEMP_SUFFIXES:
        return False
    return suffix in IMAGE_SUFFIXES or (dicom and suffix in DICOM_SUFFIXES)


def is_candidate(rel: str | PurePosixPath, dicom: bool = True, root: Path | None = None) -> bool:
    """True if a path relative to IN names a scan: its name qualifies and no folder on the way is hidden.

    With ``root`` (the input folder), a DICOM file without a suffix is recognised by its content.
    """
    parts = PurePosixPath(rel).parts
    if not parts or any(p.startswith(".") for p in parts[:-1]):
        return False
    if is_candidate_name(parts[-1], dicom):
        return True
    return dicom and root is not None and may_be_unsuffixed_dicom(parts[-1]) and has_dicom_marker(root.joinpath(*parts))


def may_be_unsuffixed_dicom(name: str) -> bool:
    """True for names DICOM files often have: no suffix (``IM000001``) or a numeric one (a UID)."""
    if not name or name.startswith((".", "~")) or name.endswith("~") or name.upper() == "DICOMDIR":
        return False
    suffix = os.path.splitext(name)[1]
    return suffix == "" or suffix[1:].isdigit()


def has_dicom_marker(path: Path) -> bool:
    """True if the file holds ``DICM`` at byte 128 (the DICOM file preamble)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def threshold_label(threshold: float) -> str:
    """The folder name for a threshold: ``0.9`` -> ``"0.9"``, ``0.85`` -> ``"0.85"``."""
    return format(threshold, "g")


def output_path(
    out_dir: Path,
    rel: str,
    threshold: float,
    thresholds: Sequence[float],
    frame: int | None = None,
    suffix: str = ".png",
) -> Path:
    """Where the mask of scan ``rel`` at ``threshold`` goes."""
    base = out_dir if len(thresholds) == 1 else out_dir / threshold_label(threshold)
    return _beside(base, rel, frame, suffix)


def _beside(base: Path, rel: str, frame: int | None, suffix: str) -> Path:
    """``base/<relative folder>/<stem>[_fNNNN]<suffix>``."""
    relp = PurePosixPath(rel)
    stem = scan_stem(relp.name)
    if frame is not None:
        stem = f"{stem}_f{frame:04d}"
    return base.joinpath(*relp.parent.parts, stem + suffix)


def scan_stem(name: str) -> str:
    """The name without its scan suffix: ``x.png`` -> ``x``; a DICOM UID name ``1.2.3.4`` stays whole."""
    root, suffix = os.path.splitext(name)
    return root if suffix.lower() in IMAGE_SUFFIXES or suffix.lower() in DICOM_SUFFIXES else name


def overlay_path(out_dir: Path, rel: str, frame: int | None = None) -> Path:
    """Where the overlay of scan ``rel`` goes: ``OUT/overlays/<relative folder>/<stem>[_fNNNN].png``."""
    return _beside(out_dir / OVERLAY_DIR, rel, frame, ".png")


def report_path(out_dir: Path, rel: str) -> Path:
    """Where the findings of scan ``rel`` go: ``OUT/reports/<relative folder>/<stem>.json``."""
    return _beside(out_dir / REPORT_DIR, rel, None, ".json")


def relative(out_dir: Path, path: Path) -> str:
    """``path`` as the POSIX path relative to OUT that the ledger, the reports and the logs use."""
    return path.relative_to(out_dir).as_posix()


def error_path(out_dir: Path, rel: str) -> Path:
    """Where the error record of scan ``rel`` goes: beside its mask, named after the whole input name."""
    return out_dir.joinpath(*PurePosixPath(rel).parts[:-1], PurePosixPath(rel).name + ".error.txt")


def output_key(rel: str) -> str:
    """Scans with the same key would write the same mask file (``a/x.png`` and ``a/x.jpg``)."""
    relp = PurePosixPath(rel)
    return str(relp.parent / scan_stem(relp.name))


def check_folders(in_dir: Path, out_dir: Path) -> tuple[Path, Path]:
    """Validate IN and OUT for a run; return both resolved. Raises :class:`SetupError`."""
    if not in_dir.exists():
        raise SetupError(f"input folder {in_dir} does not exist")
    if not in_dir.is_dir():
        raise SetupError(f"input {in_dir} is not a folder")
    in_res = in_dir.resolve()
    out_res = out_dir.resolve()
    if out_res == in_res or in_res in out_res.parents:
        raise SetupError(
            f"output folder {out_dir} is inside input folder {in_dir}: masks would be read back as scans; "
            "choose an OUT outside IN"
        )
    if out_res in in_res.parents:
        raise SetupError(
            f"input folder {in_dir} is inside output folder {out_dir}: masks could overwrite scans; "
            "choose folders side by side"
        )
    try:
        out_res.mkdir(parents=True, exist_ok=True)
        probe = out_res / f".edge-seg-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise SetupError(f"output folder {out_dir} is not writable: {exc.strerror or exc}") from None
    return in_res, out_res


def inside(root: Path, path: Path) -> bool:
    """True if ``path`` (resolved) lies inside ``root`` (resolved)."""
    try:
        path.resolve().relative_to(root)
    except (ValueError, OSError, RuntimeError):
        return False
    return True


def iter_scans(in_dir: Path, dicom: bool = True, warned: set[str] | None = None) -> Iterator[str]:
    """Yield the POSIX paths, relative to ``in_dir`` and sorted, of every scan under it.

    Folder symlinks are not followed; a file symlink that leads outside ``in_dir`` is skipped and
    reported once (``warned`` remembers which, across calls).
    """
    warned = set() if warned is None else warned
    root = in_dir.resolve()
    for dirpath, dirnames, filenames in os.walk(in_dir, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = PurePosixPath(Path(dirpath).relative_to(in_dir).as_posix())
        for name in sorted(filenames):
            full = Path(dirpath) / name
            by_name = is_candidate_name(name, dicom)
            if not by_name and not (dicom and may_be_unsuffixed_dicom(name)):
                continue
            rel = str(rel_dir / name) if str(rel_dir) != "." else name
            if full.is_symlink() and not inside(root, full):  # checked before its content is ever opened
                if rel not in warned:
                    warned.add(rel)
                    log.warning("SKIP %s: symbolic link leads outside the input folder", rel)
                continue
            if by_name or has_dicom_marker(full):
                yield rel
