"""Spreading scans over workers: cutting them into batches, keeping every worker busy, outcomes in input order."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial

from edge_runtime.core.model import available_cores
from edge_runtime.errors import ScanError
from edge_runtime.job.executors import Executor, Pending, ThreadExecutor
from edge_runtime.job.outcome import Outcome
from edge_runtime.job.processor import Processor, Result, Unnamed
from edge_runtime.job.recorder import Recorded, Recorder
from edge_runtime.outputs.naming import Names, Naming, collision_order, group_of

#: What runs one batch on a worker: :meth:`Processor.work`, or its Dask stand-in
#: (:func:`edge_runtime.job.cluster_worker.run_batch`), which finds the worker's own processor.
Work = Callable[..., list[Result]]


def default_workers(session_threads: int) -> int:
    """One worker per core the session's intra-op threads leave free, plus one, so that a worker
    waiting on the disk does not leave a core idle."""
    return max(1, available_cores() // max(1, session_threads)) + 1


def arrange(rels: Iterable[str], folds_case: bool = False) -> list[str]:
    """The scans in their order, except that scans whose outputs may collide (:func:`group_of`) follow the
    first of them, in :func:`collision_order`: the order the naming takes them in, one at a time.
    """
    groups: dict[str, list[str]] = {}
    for rel in rels:
        groups.setdefault(group_of(rel, folds_case), []).append(rel)
    return [rel for group in groups.values() for rel in sorted(group, key=collision_order)]


def _take(ahead: deque[str], n: int, folds_case: bool) -> list[str]:
    """The next ``n`` scans, and any after them in the same group (a group is never split: the naming
    sees all of it at once, and those of it that wait are known to wait)."""
    batch = [ahead.popleft() for _ in range(min(n, len(ahead)))]
    while ahead and group_of(ahead[0], folds_case) == group_of(batch[-1], folds_case):
        batch.append(ahead.popleft())
    return batch


class Scheduler:
    """Takes the scans a source hands it through the naming and the processor, batch by batch.

    Each of the executor's workers takes a whole batch through :meth:`Processor.work` -- read, decode,
    preprocess, one inference run, post-process, write -- so a scan never changes threads, and
    the workers' stages overlap one another: while one worker decodes or waits on fsync, another runs
    the model. With a one-thread session (what the CLI uses) that keeps every core busy with little
    hand-off cost (bench/README.md, tuning log). This process records each batch's results as they
    come back, in input order (:class:`Recorder`), so the workers may be elsewhere (a Dask cluster).
    Each scan goes with the output names the naming granted it (:class:`Naming`); a scan that waits
    for another of its group, or whose names the naming settles after reading, goes in a later batch.
    """

    def __init__(
        self,
        processor: Processor,
        naming: Naming,
        recorder: Recorder,
        workers: int | None = None,
        executor: Callable[[int], Executor] = ThreadExecutor,
        work: Work | None = None,
        batch_size: int | None = None,
        tail_size: int = 1,
    ) -> None:
        self.processor = processor
        self.naming = naming
        self.recorder = recorder
        #: batches run side by side (None: :func:`default_workers`)
        self.workers = workers or default_workers(processor.segmenter.model.threads)
        self.executor = executor
        #: called on a worker with a batch and ``known=`` (:meth:`Processor.work`'s arguments)
        self.work: Work = work or processor.work
        #: scans per batch (a Dask task carries more than one inference run's worth: bench/README.md)
        self.batch_size = max(1, batch_size or processor.options.batch_size)
        #: scans per batch at the end of a long run (one for threads; a Dask task carries a few)
        self.tail_size = max(1, min(tail_size, self.batch_size))
        self._again: list[str] = []  # scans to send once more: they waited for their group, or won a name

    def batches(self, rels: Iterable[str]) -> Iterator[list[str]]:
        """The scans in batches of ``batch_size`` (smaller ones at the end).

        So that the workers finish together, rather than one running a whole batch alone while the
        other cores idle (bench/README.md, tuning log): a long run's last scans go ``tail_size`` (one)
        a batch; a short run (a daemon's group) is split evenly over the workers.
        """
        bs, workers = self.batch_size, self.workers
        ahead: deque[str] = deque()
        long_run = False
        for rel in arrange(rels, self.naming.folds_case):
            ahead.append(rel)
            if len(ahead) >= bs * (workers + 1):
                long_run = True
                yield _take(ahead, bs, self.naming.folds_case)
        size = self.tail_size if long_run else max(1, min(bs, -(-len(ahead) // workers)))
        while ahead:
            yield _take(ahead, size, self.naming.folds_case)

    def process(
        self,
        rels: Iterable[str],
        defer: Callable[[str], bool] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> Iterator[Outcome]:
        """Process ``rels`` (which the caller has decided need work), yielding outcomes in input order.

        ``defer(rel)``, when given and true for a scan that cannot be read, turns its failure into a
        ``changed`` outcome with no error record: the watcher uses it for files that were modified a
        moment ago and may still be incomplete, and retries them once they have settled.

        ``stop()``, when given, is asked before each batch is handed out: once true, no more are, and
        the batches already out are finished and yielded (the rest of ``rels`` is left untouched).
        """

        pending: deque[Pending[list[Result]]] = deque()
        stopped = stop if stop is not None else lambda: False
        try:
            with self.executor(self.workers) as pool:
                for batch in self.batches(rels):
                    if stopped():
                        break
                    self._submit(pool, pending, batch)
                    while pending and (pending[0].done() or len(pending) > 2 * pool.workers):
                        yield from self._collect(pool, pending, defer, stopped)
                while pending:
                    yield from self._collect(pool, pending, defer, stopped)
        finally:  # what still waited when a stop came is left untouched, as the rest of ``rels``
            self._again.clear()
            self.naming.reset()
        self.recorder.ledger.sync()
        if self.recorder.keep_outputs:
            self.recorder.sweep_leftovers()

    def _submit(self, pool: Executor, pending: deque[Pending[list[Result]]], batch: list[str]) -> None:
        """Hand a batch to a worker, each scan with the names granted to it (those that wait stay here)."""
        granted = [g for g in map(self.naming.grant, batch) if g is not None]
        if granted:
            known: Mapping[str, str] = self.recorder.known(g.rel for g in granted if isinstance(g, Names))
            pending.append(pool.submit(partial(self.work, known=known), granted))

    def _collect(
        self,
        pool: Executor,
        pending: deque[Pending[list[Result]]],
        defer: Callable[[str], bool] | None,
        stopped: Callable[[], bool],
    ) -> Iterator[Outcome]:
        """The oldest batch's results: the naming settles the scans handed back unnamed, the recorder
        records the rest, and the scans that waited for them go out again (unless a stop came)."""
        settled: list[Recorded] = []
        for res in pending.popleft().result():
            if isinstance(res, Unnamed):
                yield from self._contest(res, settled)
            else:
                settled.append(res)
        for outcome in self.recorder.record(settled, defer):
            self._again += self.naming.release(outcome.rel)
            yield outcome
        if self._again and not stopped():
            again, self._again = self._again, []
            self._submit(pool, pending, again)

    def _contest(self, res: Unnamed, settled: list[Recorded]) -> Iterator[Outcome]:
        """A scan whose outputs others keep: refused, or it takes them from the scans done before (they
        are recorded as refused, before anything of it is written) and goes out again."""
        try:
            taken = self.naming.contest(res.rel, res.outputs)
        except ScanError as exc:
            settled.append(exc)
            return
        for other, shared in taken:
            try:
                lost = self.recorder.displace(other, res.rel, shared, res.outputs)
            except OSError as exc:
                outcome = self.recorder.unwritten(res.rel, exc, "cannot record the scan whose outputs it takes")
                self._again += self.naming.release(res.rel)
                yield outcome
                return
            if not self.naming.waiting(other):  # (else its own outcome comes, and says why)
                yield lost
        self._again.append(res.rel)
