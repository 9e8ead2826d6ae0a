"""Which files are scans, and where their outputs go (contract 3 of DESIGN.md).

Outputs for the scan ``IN/a/b/scan.jpg``:

* one threshold:       ``OUT/a/b/scan.png``
* several thresholds:  ``OUT/<threshold>/a/b/scan.png`` (e.g. ``OUT/0.9/a/b/scan.png``)
* a multi-frame DICOM: ``scan_f0001.png``, ``scan_f0002.png``, ... in the same places
* an unreadable scan:  ``OUT/a/b/scan.jpg.error.txt`` (the reason, for a person to read)

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


def is_candidate_name(name: str, dicom: bool = True) -> bool:
    """True if a file name looks like a finished scan: a known suffix, not hidden, not temporary."""
    if not name or name.startswith((".", "~")) or name.endswith("~"):
        return False
    suffix = os.path.splitext(name)[1].lower()
    if suffix in TEMP_SUFFIXES:
        return False
    return suffix in IMAGE_SUFFIXES or (dicom and suffix in DICOM_SUFFIXES)


def is_candidate(rel: str | PurePosixPath, dicom: bool = True) -> bool:
    """True if a path relative to IN names a scan: its name qualifies and no folder on the way is hidden."""
    parts = PurePosixPath(rel).parts
    if not parts or any(p.startswith(".") for p in parts[:-1]):
        return False
    return is_candidate_name(parts[-1], dicom)


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
    """Where the mask (or overlay, with another ``suffix``) of scan ``rel`` at ``threshold`` goes."""
    relp = PurePosixPath(rel)
    stem = relp.stem if frame is None else f"{relp.stem}_f{frame:04d}"
    base = out_dir if len(thresholds) == 1 else out_dir / threshold_label(threshold)
    return base.joinpath(*relp.parent.parts, stem + suffix)


def error_path(out_dir: Path, rel: str) -> Path:
    """Where the error record of scan ``rel`` goes: beside its mask, named after the whole input name."""
    return out_dir.joinpath(*PurePosixPath(rel).parts[:-1], PurePosixPath(rel).name + ".error.txt")


def output_key(rel: str) -> str:
    """Scans with the same key would write the same mask file (``a/x.png`` and ``a/x.jpg``)."""
    relp = PurePosixPath(rel)
    return str(relp.parent / relp.stem)


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
            if not is_candidate_name(name, dicom):
                continue
            rel = str(rel_dir / name) if str(rel_dir) != "." else name
            full = Path(dirpath) / name
            if full.is_symlink() and not inside(root, full):
                if rel not in warned:
                    warned.add(rel)
                    log.warning("SKIP %s: symbolic link leads outside the input folder", rel)
                continue
            yield rel
