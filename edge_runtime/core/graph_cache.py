"""The per-machine cache of onnxruntime's optimised graph, so that a model opens in a fraction of the time.

onnxruntime optimises a graph each time a session opens it (level ALL: constant folding -- which
rebuilds int8-stored weights as float32 --, fusions, and weight layouts for this CPU's instruction set).
The first open of a model on a machine saves that optimised graph in the user's cache folder
(:func:`default_cache_dir`, or ``--cache-dir``); later opens load it with optimisations off. Its layouts
are this CPU's, so it never ships with a model: the file's name is a key of the model file's sha256, the
onnxruntime version, the execution provider and the CPU's instruction set (:func:`cache_key`), followed by
a CRC-32 of the file's own bytes.

- A new file is built on a thread beside the first run (which opens the model as without a cache): written
  under a hidden temporary name in the folder, checked -- on a fixed input every output of the saved
  graph must equal the original's -- then renamed into place, so a reader never sees half a file, and a
  graph that computes anything else is never used.
- A file whose bytes do not match its CRC, or that onnxruntime cannot load, is removed and rebuilt.
- A folder that cannot be made or written: nothing is written, and the model opens as without a cache.
- Any file may be deleted at any time (the next open builds it again).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import platform
import tempfile
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

PROVIDER = "CPUExecutionProvider"
#: The seed of the fixed input a saved graph is checked on.
CHECK_SEED = 20261202
_CHUNK = 1 << 20


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/edge-seg``, or ``~/.cache/edge-seg`` when that variable is unset or empty."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edge-seg"


def cpu_features() -> str:
    """The CPU's architecture and instruction-set flags, as the kernel reports them (Linux), sorted."""
    flags = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            name, _, value = line.partition(":")
            if name.strip() in ("flags", "Features"):  # x86 / Arm
                flags = " ".join(sorted(value.split()))
                break
    return f"{platform.machine()} {flags or platform.processor()}"


def ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def cache_key(model_sha256: str, provider: str = PROVIDER) -> str:
    """The key of one model's optimised graph on this machine and onnxruntime (hex, 32 characters)."""
    facts = {"model": model_sha256, "onnxruntime": ort_version(), "provider": provider, "cpu": cpu_features()}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:32]


def file_crc(path: Path) -> int:
    crc = 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            crc = zlib.crc32(chunk, crc)
    return crc


@dataclass
class Opened:
    """A session, what the cache did (``optimised graph loaded from PATH``, ...), and the thread that will build
    the cache (not started: the caller starts it once it has accepted the model, :meth:`start_build`)."""

    session: Any
    note: str
    building: threading.Thread | None = None

    def start_build(self) -> None:
        if self.building is not None and self.building.ident is None:
            self.building.start()

    def wait(self) -> None:
        """Wait until the cache's build, if one was started, has written the file (or given up)."""
        if self.building is not None and self.building.ident is not None:
            self.building.join()


def open_cached(
    ort: Any,
    model: Path,
    model_sha256: str,
    options: Callable[[bool], Any],
    cache_dir: Path | None,
) -> Opened:
    """An ``InferenceSession`` on ``model``: the cached optimised graph when there is a good one.

    ``options(optimise)`` gives the session options, with onnxruntime's optimisations at level ALL or off.
    Without ``cache_dir`` the model is opened as it is. When the cache has no good graph and its folder takes
    writes, the model is opened as it is, and :meth:`Opened.start_build` starts a thread that builds the cache
    beside the run (the process waits for it before it exits), so the first run on a machine is not held up.
    Errors opening ``model`` itself are onnxruntime's.
    """
    plain = partial(ort.InferenceSession, str(model), providers=[PROVIDER])
    if cache_dir is None:
        return Opened(plain(options(True)), "no graph cache")
    key = cache_key(model_sha256)
    for path in _candidates(cache_dir, key):
        session = _load(ort, path, options)
        if session is not None:
            return Opened(session, f"optimised graph loaded from {path}")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(cache_dir, os.W_OK):  # (a read-only file system says so here, even to root)
            raise PermissionError(errno.EACCES, "no write permission")
    except OSError as exc:
        return Opened(plain(options(True)), f"no graph cache: {cache_dir} takes no writes ({exc.strerror or exc})")
    session = plain(options(True))
    builder = threading.Thread(
        target=build, args=(ort, model, cache_dir, key, options), name="edge-seg-graph-cache", daemon=False
    )
    return Opened(session, f"optimised graph being built into {cache_dir}, for the next runs", builder)


def cached_graph(model_sha256: str, cache_dir: Path) -> Path | None:
    """The cache's file for a model on this machine and this onnxruntime (newest first), or None."""
    found = _candidates(cache_dir, cache_key(model_sha256))
    return found[0] if found else None


def _candidates(cache_dir: Path, key: str) -> list[Path]:
    try:
        return sorted(cache_dir.glob(f"{key}-*.onnx"), key=_mtime, reverse=True)
    except OSError:  # a cache folder that cannot be listed
        return []


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _load(ort: Any, path: Path, options: Callable[[bool], Any]) -> Any:
    """The session on a cached file, or None (the file is removed) when it is corrupt.

    The file's CRC is computed on a thread while onnxruntime opens it (both release the GIL): the check costs
    no wall time (about 20 ms of a 50 MB graph's 65 ms open, bench/README.md, issue 30). A session on a
    file that fails it is dropped unused.
    """
    crc: list[int | OSError] = []

    def check() -> None:
        try:
            crc.append(file_crc(path))
        except OSError as exc:
            crc.append(exc)

    checking = threading.Thread(target=check, name="edge-seg-graph-crc")
    checking.start()
    session, reason = None, None
    try:
        session = ort.InferenceSession(str(path), options(False), providers=[PROVIDER])
    except Exception as exc:  # onnxruntime raises several private exception types
        reason = f"onnxruntime cannot load it: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc}"
    finally:
        checking.join()
    if isinstance(crc[0], OSError):
        log.debug("graph cache: cannot read %s: %s", path, crc[0].strerror or crc[0])
        return None
    if path.stem.rsplit("-", 1)[-1] != f"{crc[0]:08x}":
        session, reason = None, "its bytes do not match its CRC"
    if session is not None:
        return session
    log.warning("graph cache: %s is corrupt (%s); it is removed and built again", path, reason)
    with contextlib.suppress(OSError):
        path.unlink()
    return None


def build(ort: Any, model: Path, cache_dir: Path, key: str, options: Callable[[bool], Any]) -> Path | None:
    """Save ``model``'s optimised graph under a temporary name in ``cache_dir``, check it, and rename it into
    place; its path, or None. A folder that stops taking writes, or a graph that fails its check, leaves
    nothing behind.
    """
    try:
        fd, name = tempfile.mkstemp(prefix=f".{key}-", suffix=".tmp", dir=cache_dir)
        os.close(fd)
    except OSError as exc:
        log.debug("graph cache: cannot write into %s (%s); not cached", cache_dir, exc.strerror or exc)
        return None
    tmp = Path(name)
    try:
        opts = options(True)
        opts.optimized_model_filepath = str(tmp)
        session = ort.InferenceSession(str(model), opts, providers=[PROVIDER])
        feeds = check_feeds(session)
        expected = session.run(None, feeds)
        del session  # one session at a time: the first run's peak memory is the run's and one more session
        saved = ort.InferenceSession(str(tmp), options(False), providers=[PROVIDER])
        same = all(np.array_equal(a, b) for a, b in zip(expected, saved.run(None, feeds), strict=True))
        del saved
        if not same:
            log.warning("graph cache: the optimised graph of %s computes other outputs; not cached", model)
            return None
        # No fsync: a file torn by a power cut fails its CRC on the next open and is built again.
        path = cache_dir / f"{key}-{file_crc(tmp):08x}.onnx"
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        log.debug("graph cache: built %s", path)
        return path
    except OSError as exc:  # a full disk, say: the runs go on without the cache
        log.debug("graph cache: cannot write into %s (%s); not cached", cache_dir, exc.strerror or exc)
    except Exception as exc:  # onnxruntime could not save or load the graph, or an input is not float32
        log.warning("graph cache: the optimised graph of %s could not be saved or checked (%s)", model, exc)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()  # gone already once renamed into place
    return None


def check_feeds(session: Any) -> dict[str, np.ndarray]:
    """The fixed input a saved graph is checked on: seeded noise in [0, 1), batch 1, for every input."""
    rng = np.random.default_rng(CHECK_SEED)
    feeds = {}
    for inp in session.get_inputs():
        if inp.type != "tensor(float)":
            raise ValueError(f"input {inp.name!r} is {inp.type}, not float32")
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        feeds[inp.name] = rng.random(shape, dtype=np.float32)
    return feeds
