"""Which files under IN are scans, and whether IN and OUT can be used (contract 4 of docs/DESIGN.md).

DICOM files are scans by suffix (``.dcm``, ``.dicom``) or, for names without a suffix or with a numeric
one (``IM000001``, ``1.2.840.113619.2.1``, as scanners and PACS exports name them), by content: the
``DICM`` marker at byte 128. ``DICOMDIR`` is never a scan.

Hidden and temporary names are never scans: ``.name`` (also rsync's ``.name.XXXXXX``), ``*.tmp``,
``*.part``, ``*.crdownload``, ``*.swp``, ``~name``; nor is anything under a hidden folder.
"""

from __future__ import annotations

import logging
import os
import stat
from collections import Counter
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from edge_runtime.errors import SetupError
from edge_runtime.files.formats import DICOM_SUFFIXES, IMAGE_SUFFIXES
from edge_runtime.outputs.layout import scan_stem

log = logging.getLogger(__name__)

TEMP_SUFFIXES = frozenset({".tmp", ".temp", ".part", ".partial", ".crdownload", ".download", ".swp", ".filepart"})


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
    try:  # non-blocking: a named pipe must not hang the listing
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with open(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return False
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def check_folders(in_dir: Path, out_dir: Path, scan: str | None = None) -> tuple[Path, Path]:
    """Validate IN and OUT for a run; return both resolved. Raises :class:`SetupError`.

    ``scan``: a run on one file, ``in_dir / scan`` (single-file mode): OUT may then lie in the file's
    folder, since nothing else there is read, but the file must be a scan and must not lie inside OUT.
    """
    if scan is not None:
        check_scan_file(in_dir / scan, out_dir)
        if out_dir.suffix.lower() in IMAGE_SUFFIXES and not out_dir.is_dir():  # rembg's `i in.png out.png`
            raise SetupError(
                f"--out is a folder, not a mask file: edge-seg {in_dir / scan} --out {out_dir.parent / 'masks'} "
                f"writes {out_dir.parent / 'masks' / scan_stem(scan)}.png"
            )
    elif not in_dir.exists():
        raise SetupError(f"input {in_dir} does not exist")
    elif not in_dir.is_dir():
        raise SetupError(f"input {in_dir} is not a folder")
    in_res = in_dir.resolve()
    out_res = out_dir.resolve()
    if scan is None and (out_res == in_res or in_res in out_res.parents):
        raise SetupError(
            f"output folder {out_dir} is inside input folder {in_dir}: masks would be read back as scans; "
            "choose an OUT outside IN"
        )
    if out_res == in_res or out_res in in_res.parents:
        if scan is not None:
            raise SetupError(f"input {in_dir / scan} is inside output folder {out_dir}: choose an OUT outside it")
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


def check_scan_file(path: Path, out_dir: Path) -> None:
    """The input of a single-file run must be a file that :func:`is_candidate` calls a scan."""
    if not path.exists():
        raise SetupError(f"input {path} does not exist")
    if not path.is_file():
        raise SetupError(f"input {path} is not a file or a folder")
    if not is_candidate(path.name, root=path.parent):
        raise SetupError(
            f"input {path} is not a scan: scans are {' '.join(sorted(IMAGE_SUFFIXES | DICOM_SUFFIXES))} files, "
            "or DICOM by content, and never hidden or temporary names"
        )


def inside(root: Path, path: Path) -> bool:
    """True if ``path`` (resolved) lies inside ``root`` (resolved)."""
    try:
        path.resolve().relative_to(root)
    except (ValueError, OSError, RuntimeError):
        return False
    return True


def iter_scans(
    in_dir: Path, dicom: bool = True, warned: set[str] | None = None, skipped: Counter[str] | None = None
) -> Iterator[str]:
    """Yield the POSIX paths, relative to ``in_dir`` and sorted, of every scan under it.

    Folder symlinks are not followed; a file symlink that leads outside ``in_dir`` is skipped and
    reported once (``warned`` remembers which, across calls). Every other file that is not a scan is
    counted in ``skipped`` by reason (:func:`skip_reason`; a hidden folder counts once, unopened) and
    named at debug level (once per ``warned``).
    """
    warned = set() if warned is None else warned
    skipped = Counter() if skipped is None else skipped
    root = in_dir.resolve()
    for dirpath, dirnames, filenames in os.walk(in_dir, followlinks=False):
        rel_dir = PurePosixPath(Path(dirpath).relative_to(in_dir).as_posix())
        for d in dirnames:
            if d.startswith("."):
                _skip(skipped, f"{rel_dir / d}/", "hidden folders", warned)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            full = Path(dirpath) / name
            rel = str(rel_dir / name) if str(rel_dir) != "." else name
            by_name = is_candidate_name(name, dicom)
            if not by_name and not (dicom and may_be_unsuffixed_dicom(name)):
                _skip(skipped, rel, skip_reason(name), warned)
                continue
            if full.is_symlink() and not inside(root, full):  # checked before its content is ever opened
                skipped["symbolic links leading outside IN"] += 1
                if rel not in warned:
                    warned.add(rel)
                    log.warning("SKIP %s: symbolic link leads outside the input folder", rel)
                continue
            if by_name or has_dicom_marker(full):
                yield rel
            else:
                reason = "no suffix and no DICOM marker" if "." not in name else skip_reason(name)
                _skip(skipped, rel, reason, warned)


def _skip(skipped: Counter[str], rel: str, reason: str, named: set[str]) -> None:
    skipped[reason] += 1
    if rel not in named:  # once per ``warned`` set: a daemon's rescans do not name it again
        named.add(rel)
        log.debug("not a scan: %s", rel)


def skip_reason(name: str) -> str:
    """Why a file name is not a scan, as the summary counts it (``.txt files``, ``hidden or temporary``)."""
    suffix = os.path.splitext(name)[1].lower()
    if name.startswith((".", "~")) or name.endswith("~") or suffix in TEMP_SUFFIXES:
        return "hidden or temporary"
    if name.upper() == "DICOMDIR":
        return "DICOMDIR"
    return f"{suffix} files" if suffix else "no suffix and no DICOM marker"


def describe_skipped(skipped: Counter[str]) -> str:
    """``"3 .txt files, 1 hidden or temporary"``: the files under IN that were not scans, most first."""
    return ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items(), key=lambda kv: (-kv[1], kv[0])))
