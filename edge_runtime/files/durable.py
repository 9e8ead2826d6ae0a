"""Durable files (contract 5 of docs/DESIGN.md): a file appears complete or not at all.

A file is written to a hidden temporary name in the same folder, flushed to disk, then renamed into
place; :func:`sync_dirs` makes the renames themselves durable; :func:`sweep_temp_files` removes what a
killed writer left. No image decoding here: the ledger and the status file depend on this module alone.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

#: Names of write_atomic's temporary files: ".<name>.<8 random chars>.tmp".
_TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def write_atomic(path: str | Path, data: bytes | str, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` so that the file appears complete or not at all.

    The bytes go to a hidden temporary file in the same folder (so the rename stays on one file
    system), are flushed to disk, then ``os.replace`` moves them into place.
    """
    path = Path(path)
    if isinstance(data, str):  # a file name that is not UTF-8 (surrogate-escaped) is written as its own bytes
        data = data.encode("utf-8", "surrogateescape")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{temp_stem(path.name)}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


#: The longest file name most file systems take (ext4, XFS, btrfs, tmpfs: 255 bytes).
NAME_MAX = 255
#: What a temporary name adds to the name it is for: "." before, ".<8 chars>.tmp" after.
_TEMP_EXTRA = 14


def fitting_name(name: str, extra: int = 0) -> str:
    """``name`` if it and ``extra`` more bytes fit in :data:`NAME_MAX`; else its start and a hash of it that do.

    ``x~<12 hex digits of sha256(name)>``: still unique among long names that share their first 200 bytes.
    """
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) + extra <= NAME_MAX:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:12]
    keep = NAME_MAX - extra - len(digest) - 1
    return raw[:keep].decode("utf-8", "surrogateescape") + "~" + digest


def temp_stem(name: str) -> str:
    """The part of ``name`` a temporary file for it carries: all of it, or as much as fits (:func:`fitting_name`)."""
    return fitting_name(name, _TEMP_EXTRA)


def sync_dirs(folders: list[Path]) -> None:
    """fsync each folder once, so that files renamed into them survive a power cut (POSIX only).

    :func:`write_atomic` makes a file's bytes durable; its new name lives in the folder, which needs
    its own fsync. A file system that cannot fsync a folder (some network shares) is left as it is.
    """
    if os.name != "posix":
        return  # Windows cannot open a folder to fsync it
    for folder in dict.fromkeys(folders):
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            os.fsync(fd)
        except OSError as exc:
            log.debug("cannot fsync folder %s: %s", folder, exc)
        finally:
            os.close(fd)


def sweep_temp_files(root: Path) -> int:
    """Remove temporary files a killed writer left under ``root``; returns how many.

    Only call this while holding the output folder's lock (no other writer can be mid-write).
    """
    removed = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if _TEMP_NAME.match(name):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(dirpath, name))
                    removed += 1
    if removed:
        log.info("removed %d incomplete temporary file(s) left by an interrupted run", removed)
    return removed


#: Errors that say the file system cannot take writes now (full, read-only, failing, not allowed),
#: rather than that one file name is wrong: a job pauses and retries on them, it does not blame the scan.
_UNWRITABLE = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EIO: "I/O error",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOENT: "output folder missing",
    errno.ESTALE: "stale network file handle",
    errno.ENODEV: "device gone",
    errno.ENXIO: "device gone",
    errno.ENOTCONN: "network share disconnected",
    errno.EAGAIN: "resource temporarily unavailable",
    errno.EBUSY: "device busy",
    errno.EMFILE: "too many open files",
    errno.ENFILE: "too many open files",
    errno.ENOMEM: "out of memory",
}


def unwritable(exc: BaseException) -> str | None:
    """What keeps the file system from taking writes (``"disk full"``), if ``exc`` says that; else None.

    None means the error is about one path (a file where a folder should be, a name too long), which
    retrying will not mend.
    """
    if isinstance(exc, OSError) and exc.errno is not None:
        return _UNWRITABLE.get(exc.errno)
    return None


def probe_writable(folder: Path, size: int = 256 * 1024) -> OSError | None:
    """Write, flush and remove a ``size``-byte hidden file in ``folder`` (or its nearest existing parent).

    Returns the error if that failed, None if the folder takes writes again.
    """
    target = folder
    while not target.exists() and target.parent != target:
        target = target.parent
    try:
        write_atomic(target / ".edge-seg-probe", b"\0" * size)
        os.unlink(target / ".edge-seg-probe")
    except OSError as exc:
        return exc
    return None


def rewrite_in_place(path: Path, data: bytes) -> None:
    """Overwrite an existing file's bytes without a new file (not atomic; for a disk too full for one).

    The data must fit in the blocks the file already has to need no new ones: callers pad what they
    write to a fixed size.
    """
    with open(path, "r+b") as fh:
        fh.write(data)
        fh.truncate()
        fh.flush()


def sweep_temp_files_of(paths: list[Path]) -> int:
    """Remove the temporary files :func:`write_atomic` left for these ``paths`` (a writer killed mid-write).

    For a run whose writers were elsewhere (Dask workers) and are all done with these files: unlike
    :func:`sweep_temp_files`, it touches no other file's temporary name. Returns how many it removed.
    """
    wanted: dict[Path, set[str]] = {}
    for path in paths:
        wanted.setdefault(path.parent, set()).add(temp_stem(path.name))
    removed = 0
    for folder, names in wanted.items():
        try:
            entries = os.listdir(folder)
        except OSError:
            continue
        for entry in entries:
            if _TEMP_NAME.match(entry) and entry[1:-13] in names:  # ".<name, or as much as fits>.<8 chars>.tmp"
                with contextlib.suppress(OSError):
                    os.unlink(folder / entry)
                    removed += 1
    if removed:
        log.info("removed %d incomplete temporary file(s) left by a lost worker", removed)
    return removed
