"""Who is writing into an output folder: the folder's lock and one lock per running process (a session).

Several edge-seg processes may write into one OUT (``--num-parts``; the ledger is a SQLite database
that serialises their records). What still needs to know who else is there:

* ``OUT/.edge-seg/lock`` -- every process holds it shared for its whole life; a process that gets it
  *exclusively* at start is alone, and may do what must not race a writer: migrate an old ledger,
  remove the temporary files a killed writer left. It then shares it like the others. (Versions
  up to 0.3.0 held it exclusively for the whole run: they and this one keep each other out.)
* ``OUT/.edge-seg/sessions/<session>.lock`` -- each process holds its own exclusively. A session
  whose file can be locked by someone else is dead (killed, crashed): the scans it left half-done
  can be settled, even while other sessions run.

``flock`` locks live with the process: the kernel drops them when it dies, even by ``kill -9``. They
hold between processes on one machine; over NFS or SMB they are only as good as the share's lock
support, and SQLite's WAL mode needs one machine anyway (docs/DESIGN.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import IO

from edge_runtime.errors import SetupError

log = logging.getLogger(__name__)

LOCK_NAME = "lock"
SESSIONS_DIR = "sessions"
REGISTER_NAME = ".register"
#: how long a starting process waits for an exclusive holder that does not say it is settling the
#: folder (an older version, which holds it for its whole run)
OLD_VERSION_WAIT_S = 5.0
#: what a process alone on the folder writes into the lock file after its pid while it settles it
SETTLING = "settling"


def _open(path: Path) -> IO[str]:
    try:
        return open(path, "a+", encoding="utf-8")
    except IsADirectoryError:
        raise SetupError(f"{path} is a folder, not edge-seg's lock file; remove it") from None
    except OSError as exc:
        raise SetupError(f"cannot open the lock file {path}: {exc.strerror or exc}") from None


def _try(fh: IO[str], mode: int) -> bool:
    import fcntl

    try:
        fcntl.flock(fh.fileno(), mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:  # e.g. ENOLCK on a share without lock support
        raise SetupError(f"cannot lock {fh.name}: {exc.strerror or exc}") from None
    return True


class FolderLock:
    """``OUT/.edge-seg/lock``: exclusive while this process is alone and settling the folder, then shared."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_NAME
        self.fh = _open(self.path)
        self.exclusive = False
        if sys.platform == "win32":  # no shared locks there: one process per OUT, as before
            self._windows()
            return
        import fcntl

        if _try(self.fh, fcntl.LOCK_EX):
            self.exclusive = True
            self.fh.seek(0)
            self.fh.truncate()
            self.fh.write(f"{os.getpid()} {SETTLING}\n")
            self.fh.flush()
            return
        deadline = time.monotonic() + OLD_VERSION_WAIT_S
        said = False
        while not _try(self.fh, fcntl.LOCK_SH):
            self.fh.seek(0)
            pid, _, what = self.fh.read().strip().partition(" ")
            if what == SETTLING:  # a process alone, moving an old ledger in or sweeping: it will share
                if not said:
                    log.info("waiting for edge-seg (pid %s) to settle the output folder %s", pid, state_dir.parent)
                    said = True
                deadline = time.monotonic() + OLD_VERSION_WAIT_S
            elif time.monotonic() > deadline:
                self.fh.close()
                raise SetupError(
                    f"another edge-seg (pid {pid or '?'}) is already writing to this output folder "
                    f"({state_dir.parent}) and admits no other process (a version up to 0.3.0); wait for it to end"
                )
            time.sleep(0.05)

    def _windows(self) -> None:
        import msvcrt

        try:
            msvcrt.locking(self.fh.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        except OSError:
            self.fh.close()
            raise SetupError(
                f"another edge-seg is already writing to this output folder ({self.path.parent.parent})"
            ) from None
        self.exclusive = True

    def share(self) -> None:
        """Let other processes in (after settling the folder alone). Blocks while one of them settles it."""
        if not self.exclusive or sys.platform == "win32":
            return
        import fcntl

        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"{os.getpid()}\n")
        self.fh.flush()
        fcntl.flock(self.fh.fileno(), fcntl.LOCK_SH)
        self.exclusive = False

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self.fh.close()


class Session:
    """This process's own lock, ``sessions/<id>.lock``: alive as long as the process is.

    The file names the process and its share of the scans (``part``: ``"K/N"``, or ``"all"``). A
    session is refused while another live one on the same folder has an overlapping share: the
    same part, a different N, or all of it (two processes doing the same scans would do each twice).
    """

    def __init__(self, state_dir: Path, part: str = "all") -> None:
        self.part = part
        self.dir = state_dir / SESSIONS_DIR
        try:
            self.dir.mkdir(exist_ok=True)
        except FileExistsError:
            raise SetupError(f"{self.dir} is a file, not a folder; remove it") from None
        except OSError as exc:
            raise SetupError(f"cannot create {self.dir}: {exc.strerror or exc}") from None
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.path = self.dir / f"{self.id}.lock"
        if sys.platform == "win32":  # the folder lock already admits one process only
            self.fh = _open(self.path)
            return
        import fcntl

        with _open(self.dir / REGISTER_NAME) as reg:  # one process at a time checks the others and joins
            fcntl.flock(reg.fileno(), fcntl.LOCK_EX)
            clash = self._clash()
            if clash:
                raise SetupError(
                    f"another edge-seg ({clash}) is already writing to this output folder "
                    f"({state_dir.parent}); several processes share one only with --num-parts N "
                    "and a different --part-id each"
                )
            # Locked under a hidden name, then renamed: no one can find it unlocked and take it for dead.
            staging = self.dir / f".{self.id}.new"
            self.fh = _open(staging)
            if not _try(self.fh, fcntl.LOCK_EX):  # a fresh random name: nobody else can hold it
                raise SetupError(f"cannot lock {staging}")
            self.fh.write(f"{os.getpid()} {part}\n")
            self.fh.flush()
            os.replace(staging, self.path)

    def _clash(self) -> str | None:
        """The live session whose share overlaps this one's, described, or None."""
        for path in sorted(self.dir.glob("*.lock")):
            try:
                pid, _, part = path.read_text(encoding="utf-8").strip().partition(" ")
            except OSError:
                continue
            if not self.alive(path.stem):
                continue
            if "all" in (part, self.part) or part == self.part or part.split("/")[1:] != self.part.split("/")[1:]:
                return f"pid {pid}" + ("" if part == "all" else f", part {part}")
        return None

    def alive(self, session: str) -> bool:
        """True if the session ``session`` (a record's ``owner``) still runs."""
        if session == self.id:
            return True
        path = self.dir / f"{session}.lock"
        if sys.platform == "win32" or not path.is_file():
            return False
        import fcntl

        with open(path, "a+", encoding="utf-8") as fh:
            return not _try(fh, fcntl.LOCK_EX)

    def sweep(self) -> None:
        """Remove the lock files of sessions that are gone (they settle nothing by being there)."""
        for path in self.dir.glob("*.lock"):
            if path != self.path and not self.alive(path.stem):
                with contextlib.suppress(OSError):
                    path.unlink()

    def end(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()
        with contextlib.suppress(OSError):
            self.fh.close()
