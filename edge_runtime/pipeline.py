"""Scans in, outputs out: the processing shared by one-shot runs and the watch daemon.

:class:`Processor` decides whether a scan needs work (ledger), reads it, runs the model, and writes its
outputs and ledger records. :meth:`Processor.process` cuts the scans into batches and hands each batch
to one of a few worker threads, which takes it from file to written masks; the workers overlap one
another (OpenCV and onnxruntime release the GIL), and the outcomes come back in input order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import cv2
import numpy as np

from edge_runtime.errors import ScanError
from edge_runtime.layout import error_path, output_key, output_path, relative
from edge_runtime.ledger import Ledger
from edge_runtime.model import available_cores
from edge_runtime.scanio import Scan, encode_png, read_scan, sync_dirs, write_atomic
from edge_runtime.segmenter import Segmentation, Segmenter

#: One scan's inference result: (frames, h, w) probability maps and (frames,) presence scores or None.
Prediction = tuple[np.ndarray, np.ndarray | None]
log = logging.getLogger(__name__)


class ScanChanged(ScanError):
    """The file changed while it was being read: it is still being written."""


class Extra(Protocol):
    """An output made beside the masks (:mod:`edge_runtime.overlay`, :mod:`edge_runtime.findings`).

    :meth:`paths` names the files before anything is written, so that the ledger's ``begin`` record
    lists them and a crash before they are all complete is not mistaken for a finished scan.
    """

    #: short name: the stage in :attr:`Outcome.timings`
    name: str
    #: name and format version: part of the job signature, so adding, dropping or changing it redoes scans
    signature: str
    #: its folder under OUT; with one threshold, scans under ``IN/<folder>/`` would collide and are refused
    folder: str

    def paths(self, processor: Processor, scan: Scan, rel: str) -> list[Path]:
        """The files :meth:`write` will write for this scan."""
        ...

    def write(
        self, processor: Processor, scan: Scan, rel: str, segs: list[Segmentation], item: Loaded, paths: list[Path]
    ) -> dict[str, Any]:
        """Write ``paths`` (atomically) after the masks; return facts for :attr:`Outcome.facts`."""
        ...


@dataclass(frozen=True)
class JobOptions:
    """What to make for each scan. Changing any of these makes earlier outputs out of date."""

    thresholds: tuple[float, ...]
    batch_size: int = 4
    fsync: bool = True
    #: outputs made after the masks, in this order (overlays before the report, which names them)
    extras: tuple[Extra, ...] = ()

    @property
    def extras_signature(self) -> str:
        return ",".join(e.signature for e in self.extras)


@dataclass
class Outcome:
    """What happened to one scan."""

    rel: str
    status: str  # "ok", "skipped" (up to date), "failed", or "changed" (modified while being read)
    outputs: list[str] = field(default_factory=list)
    reason: str = ""
    timings: dict[str, float] = field(default_factory=dict)  # milliseconds per stage
    facts: dict[str, Any] = field(default_factory=dict)  # from the extras, e.g. the findings' summary

    @property
    def ms(self) -> float:
        return sum(self.timings.values())


@dataclass
class Loaded:
    """A scan read and preprocessed, on its way through inference to its outputs."""

    rel: str
    scan: Scan
    tensors: np.ndarray  # (frames, h, w, c)
    timings: dict[str, float]


@dataclass
class Written:
    """A scan whose outputs are written, waiting for :meth:`Processor.record_done`."""

    outcome: Outcome
    record: dict[str, Any]  #: its ledger record, without the event
    folders: list[Path]  #: where its outputs went, to fsync before it is recorded done


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


class Processor:
    """Turns the scans under ``in_dir`` into outputs under ``out_dir``, recording each in ``ledger``."""

    def __init__(self, segmenter: Segmenter, in_dir: Path, out_dir: Path, options: JobOptions, ledger: Ledger):
        self.segmenter = segmenter
        self.in_dir = in_dir
        self.out_dir = out_dir
        self.options = options
        self.ledger = ledger
        info = segmenter.info
        sig = {
            "model": info.sha256,
            "thresholds": list(options.thresholds),
            "morph": info.morphology_size,
            "extras": options.extras_signature,
        }
        self.signature = hashlib.sha256(json.dumps(sig, sort_keys=True).encode()).hexdigest()[:16]
        self.force = False  #: redo scans even when their content was already processed
        #: threads that each take whole batches through the pipeline (None: see :meth:`worker_count`)
        self.workers: int | None = None
        self._claims: dict[str, str] = {}
        for rel, rec in ledger.records.items():
            if rec["event"] == "done":
                self._claims.setdefault(output_key(rel), rel)

    # -- deciding ------------------------------------------------------------------------------------
    def needs_work(self, rel: str, retry_failed: bool = True) -> bool:
        """False when the scan's outputs are up to date (or, unless ``retry_failed``, it failed as it is)."""
        try:
            st = os.stat(self.in_dir / rel)
        except OSError:
            return True  # let load() report it
        if self.ledger.up_to_date(rel, st.st_size, st.st_mtime_ns, self.signature):
            return False
        return retry_failed or not self.ledger.known_failure(rel, st.st_size, st.st_mtime_ns)

    def claim(self, rel: str) -> None:
        """Reserve the scan's output names; raise if another scan in IN already writes them."""
        parts = PurePosixPath(rel).parts
        if len(self.options.thresholds) == 1 and len(parts) > 1:
            for extra in self.options.extras:
                if parts[0] == extra.folder:
                    raise ScanError(
                        rel,
                        f"its mask would go to OUT/{extra.folder}/, the folder of the {extra.name}s; "
                        f"rename the input folder {extra.folder!r} or run without the {extra.name}s",
                    )
        key = output_key(rel)
        owner = self._claims.get(key)
        if owner is not None and owner != rel and (self.in_dir / owner).exists():
            raise ScanError(
                rel, f"its outputs would overwrite those of {owner} (same folder and name stem); rename one of the two"
            )
        self._claims[key] = rel

    # -- stages -------------------------------------------------------------------------------------
    def load(self, rel: str) -> Loaded:
        """Read, hash, decode and preprocess one scan (thread-safe). Raises ScanError."""
        path = self.in_dir / rel
        t0 = time.perf_counter()
        scan = read_scan(path)
        t1 = time.perf_counter()
        try:
            st = os.stat(path)
        except OSError:
            raise ScanChanged(rel, "the file disappeared while it was being read") from None
        if (st.st_size, st.st_mtime_ns) != (scan.size, scan.mtime_ns):
            raise ScanChanged(rel, "the file changed while it was being read (still being written?)")
        frames = [self.segmenter.preprocess(f) for f in scan.frames]
        tensors = frames[0][None] if len(frames) == 1 else np.stack(frames)  # infer() copies them into its batch
        return Loaded(rel, scan, tensors, {"read": (t1 - t0) * 1000.0, "preprocess": _ms(t1)})

    def infer(self, items: list[Loaded]) -> list[Prediction]:
        """Batched inference for several loaded scans: per scan, its (frames, h, w) maps and presence scores."""
        t0 = time.perf_counter()
        batch = items[0].tensors if len(items) == 1 else np.concatenate([it.tensors for it in items])
        bs = max(1, self.options.batch_size)
        chunks = [self.segmenter.run(batch[i : i + bs]) for i in range(0, len(batch), bs)]
        probs = chunks[0][0] if len(chunks) == 1 else np.concatenate([c[0] for c in chunks])
        presence = None if chunks[0][1] is None else np.concatenate([c[1] for c in chunks if c[1] is not None])
        per_frame = _ms(t0) / len(batch)
        out: list[Prediction] = []
        start = 0
        for it in items:
            n = len(it.tensors)
            out.append((probs[start : start + n], None if presence is None else presence[start : start + n]))
            it.timings["inference"] = per_frame * n
            start += n
        return out

    def finish(self, item: Loaded, prediction: Prediction) -> Outcome | Written:
        """Post-process and write the outputs atomically; :meth:`record_done` then records the scan as done.

        Returns a ``skipped`` :class:`Outcome` when the same content was already done with this signature.
        """
        rel, scan, opts = item.rel, item.scan, self.options
        # The same bytes already done with this signature (the file was touched or copied over itself).
        if not self.force and self.ledger.done_with_content(rel, scan.sha256, self.signature):
            rec = self.ledger.get(rel) or {}
            self.ledger.append({**rec, "size": scan.size, "mtime_ns": scan.mtime_ns, "time_ns": time.time_ns()})
            return Outcome(rel, "skipped", list(rec.get("outputs", [])), "content unchanged", item.timings)
        t0 = time.perf_counter()
        multi = len(scan.frames) > 1
        probs, presence = prediction
        scores = [None] * len(probs) if presence is None else [float(q) for q in presence]
        segs = [
            self.segmenter.postprocess(p, f.shape[:2], opts.thresholds, q)
            for p, q, f in zip(probs, scores, scan.frames, strict=True)
        ]
        item.timings["postprocess"] = _ms(t0)
        planned = [
            (output_path(self.out_dir, rel, t, opts.thresholds, i + 1 if multi else None), seg.masks[t])
            for i, seg in enumerate(segs)
            for t in opts.thresholds
        ]
        extras = [(extra, extra.paths(self, scan, rel)) for extra in opts.extras]
        outputs = [relative(self.out_dir, p) for p, _ in planned]
        outputs += [relative(self.out_dir, p) for _, paths in extras for p in paths]
        base = {
            "rel": rel,
            "size": scan.size,
            "mtime_ns": scan.mtime_ns,
            "sha256": scan.sha256,
            "sig": self.signature,
            "model": self.segmenter.info.sha256[:16],
            "frames": len(scan.frames),
        }
        self.ledger.append({**base, "event": "begin", "outputs": outputs})
        t1 = time.perf_counter()
        for path, mask in planned:
            write_atomic(path, encode_png(mask, path), fsync=opts.fsync)
        item.timings["write"] = _ms(t1)
        facts: dict[str, Any] = {}
        for extra, paths in extras:
            t2 = time.perf_counter()
            facts.update(extra.write(self, scan, rel, segs, item, paths) or {})
            item.timings[extra.name] = _ms(t2)
        folders = [p.parent for p, _ in planned] + [p.parent for _, paths in extras for p in paths]
        return Written(Outcome(rel, "ok", outputs, "", item.timings, facts), {**base, "outputs": outputs}, folders)

    def record_done(self, written: list[Written]) -> list[Outcome]:
        """Record scans whose outputs :meth:`finish` wrote as done, after one fsync of their folders.

        The renames must be on disk before the ledger says "done"; syncing the folders once for a
        whole batch rather than once per scan saves a folder fsync per scan (bench/README.md).
        """
        if self.options.fsync:
            sync_dirs([folder for w in written for folder in w.folders])
        outcomes = []
        for w in written:
            try:
                self.ledger.append({**w.record, "event": "done"})
                error_path(self.out_dir, w.outcome.rel).unlink(missing_ok=True)
                outcomes.append(w.outcome)
            except OSError as exc:
                reason = f"cannot record its outputs: {exc.strerror or exc}"
                outcomes.append(self.fail(w.outcome.rel, ScanError(w.outcome.rel, reason)))
        return outcomes

    def fail(self, rel: str, exc: ScanError) -> Outcome:
        """Record a scan that could not be processed: error file beside its mask, ledger record."""
        try:
            st = os.stat(self.in_dir / rel)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = -1, -1
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        text = f"scan: {rel}\nreason: {exc.reason}\ntime: {now}\nsize: {size} bytes\n"
        try:
            write_atomic(error_path(self.out_dir, rel), text, fsync=self.options.fsync)
        except OSError as err:
            log.error("cannot write the error record for %s: %s", rel, err)
        self.ledger.append({"rel": rel, "event": "error", "size": size, "mtime_ns": mtime, "reason": exc.reason})
        return Outcome(rel, "failed", [], exc.reason)

    # -- the pipeline -------------------------------------------------------------------------------
    def _safe_load(self, rel: str) -> Loaded | ScanError:
        """load(), with any failure returned as a ScanError whose ``path`` is ``rel``."""
        try:
            return self.load(rel)
        except ScanError as exc:
            return type(exc)(rel, exc.reason)
        except Exception as exc:  # a bug or an OS oddity must not stop the other scans
            log.exception("unexpected error reading %s", rel)
            return ScanError(rel, f"unexpected error: {type(exc).__name__}: {exc}")

    def _safe_finish(self, item: Loaded, prediction: Prediction) -> Outcome | Written:
        try:
            return self.finish(item, prediction)
        except OSError as exc:
            return self.fail(item.rel, ScanError(item.rel, f"cannot write its outputs: {exc.strerror or exc}"))
        except Exception as exc:
            log.exception("unexpected error writing the outputs of %s", item.rel)
            return self.fail(item.rel, ScanError(item.rel, f"unexpected error: {type(exc).__name__}: {exc}"))

    def worker_count(self) -> int:
        """Worker threads for :meth:`process`: :attr:`workers`, else one per core the session's intra-op
        threads leave free, plus one so that a worker waiting on the disk does not leave a core idle."""
        if self.workers:
            return self.workers
        return max(1, available_cores() // max(1, self.segmenter.model.threads)) + 1

    def work(self, batch: list[str | ScanError]) -> list[Outcome | ScanError]:
        """Load, infer, finish and record one batch of scans on the calling thread (one of :meth:`process`'s workers).

        Returns one entry per scan, in order: its :class:`Outcome`, or the :class:`ScanError` that kept
        it from being read, which :meth:`process` turns into an error record or a ``changed`` outcome.
        """
        got = [item if isinstance(item, ScanError) else self._safe_load(item) for item in batch]
        loaded = [g for g in got if isinstance(g, Loaded)]
        predictions = iter(self.infer(loaded) if loaded else [])
        results = [self._safe_finish(g, next(predictions)) if isinstance(g, Loaded) else g for g in got]
        written = [r for r in results if isinstance(r, Written)]
        recorded = iter(self.record_done(written))
        return [next(recorded) if isinstance(r, Written) else r for r in results]

    def process(
        self,
        rels: Iterable[str],
        defer: Callable[[str], bool] | None = None,
    ) -> Iterator[Outcome]:
        """Process ``rels`` (which the caller has decided need work), yielding outcomes in input order.

        The scans are cut into batches of ``options.batch_size`` (smaller ones at the end); each
        of :meth:`worker_count` threads takes a whole batch through :meth:`work` -- read, decode,
        preprocess, one inference run, post-process, write, record -- so a scan never changes threads,
        and the workers' stages overlap one another: while one worker decodes or waits on fsync, another
        runs the model. With a one-thread session (what the CLI uses) that keeps every core busy with
        little hand-off cost (bench/README.md, tuning log).

        ``defer(rel)``, when given and true for a scan that cannot be read, turns its failure into a
        ``changed`` outcome with no error record: the watcher uses it for files that were modified a
        moment ago and may still be incomplete, and retries them once they have settled.
        """
        workers = self.worker_count()
        bs = max(1, self.options.batch_size)

        def claimed() -> Iterator[str | ScanError]:
            for rel in rels:
                try:
                    self.claim(rel)
                    yield rel
                except ScanError as exc:
                    yield exc

        def batches() -> Iterator[list[str | ScanError]]:
            ahead: deque[str | ScanError] = deque()
            long_run = False
            for item in claimed():
                ahead.append(item)
                if len(ahead) >= bs * (workers + 1):
                    long_run = True
                    yield [ahead.popleft() for _ in range(bs)]
            # So that the workers finish together, rather than one running a whole batch alone while
            # the other cores idle (bench/README.md, tuning log): a long run's last scans go one a
            # batch; a short run (a daemon's group) is split evenly over the workers.
            size = 1 if long_run else max(1, min(bs, -(-len(ahead) // workers)))
            while ahead:
                yield [ahead.popleft() for _ in range(min(size, len(ahead)))]

        def settle(results: list[Outcome | ScanError]) -> Iterator[Outcome]:
            for res in results:
                if isinstance(res, Outcome):
                    yield res
                elif isinstance(res, ScanChanged) or (defer is not None and defer(res.path)):
                    yield Outcome(res.path, "changed", [], res.reason)  # maybe still being written
                else:
                    yield self.fail(res.path, res)

        pending: deque[Future] = deque()
        with ThreadPoolExecutor(workers, "edge-seg-work") as pool:
            for batch in batches():
                pending.append(pool.submit(self.work, batch))
                while pending and (pending[0].done() or len(pending) > 2 * workers):
                    yield from settle(pending.popleft().result())
            while pending:
                yield from settle(pending.popleft().result())
        self.ledger.sync()


def opencv_on_caller_threads() -> None:
    """Make OpenCV run each call on the thread that makes it, for a process whose work goes through
    :meth:`Processor.process`.

    The workers already keep every core busy; OpenCV's own pool would split their resizes over more
    threads, which then spin (``sched_yield``) waiting for the next call, taking CPU from the workers:
    0.1-0.2 ms a scan (bench/README.md, tuning log). Process-wide, so the CLI calls it, not the library.
    """
    cv2.setNumThreads(1)


def describe_outputs(outcome: Outcome) -> str:
    if not outcome.outputs:
        return ""
    extra = f" (+{len(outcome.outputs) - 1} more)" if len(outcome.outputs) > 1 else ""
    return f"{outcome.outputs[0]}{extra}"


def log_outcome(outcome: Outcome, logger: logging.Logger = log) -> None:
    """One line per scan: ``ok  a/s1.png -> a/s1.png  23 ms`` / ``FAIL a/bad.png: truncated PNG``."""
    if outcome.status == "ok":
        logger.info("ok   %s -> %s  %.0f ms", outcome.rel, describe_outputs(outcome), outcome.ms)
    elif outcome.status == "skipped":
        logger.debug("skip %s: %s", outcome.rel, outcome.reason or "up to date")
    else:
        logger.error("FAIL %s: %s", outcome.rel, outcome.reason, extra={"plain": True})
