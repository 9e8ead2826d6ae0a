"""Spreading scans over workers: cutting them into batches, keeping every worker busy, outcomes in input order."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial
from pathlib import PurePosixPath

from edge_runtime.core.model import available_cores
from edge_runtime.errors import ScanError
from edge_runtime.job.executors import Executor, Pending, ThreadExecutor
from edge_runtime.job.outcome import Outcome
from edge_runtime.job.plan import Planner, collision_order, group_key
from edge_runtime.job.processor import Processor, Result
from edge_runtime.job.recorder import Recorder

#: What runs one batch on a worker: :meth:`Processor.work`, or its Dask stand-in
#: (:func:`edge_runtime.job.cluster_worker.run_batch`), which finds the worker's own processor.
Work = Callable[..., list[Result]]


def default_workers(session_threads: int) -> int:
    """One worker per core the session's intra-op threads leave free, plus one, so that a worker
    waiting on the disk does not leave a core idle."""
    return max(1, available_cores() // max(1, session_threads)) + 1


def _key(item: str | ScanError) -> tuple[str, str]:
    relp = PurePosixPath(item.path if isinstance(item, ScanError) else item)
    return str(relp.parent), group_key(relp.name)


def arrange(rels: Iterable[str]) -> list[str]:
    """The scans in their order, except that scans whose outputs may collide (:func:`group_key`) follow the
    first of them, in :func:`collision_order`: so one worker takes them in that order, whatever the timing.
    """
    groups: dict[tuple[str, str], list[str]] = {}
    for rel in rels:
        groups.setdefault(_key(rel), []).append(rel)
    return [rel for group in groups.values() for rel in sorted(group, key=collision_order)]


def _take(ahead: deque[str | ScanError], n: int) -> list[str | ScanError]:
    """The next ``n`` scans, and any after them in the same collision group (a group is never split)."""
    batch = [ahead.popleft() for _ in range(min(n, len(ahead)))]
    while ahead and _key(ahead[0]) == _key(batch[-1]):
        batch.append(ahead.popleft())
    return batch


class Scheduler:
    """Takes the scans a source hands it through the planner and the processor, batch by batch.

    Each of the executor's workers takes a whole batch through :meth:`Processor.work` -- read, decode,
    preprocess, one inference run, post-process, write -- so a scan never changes threads, and
    the workers' stages overlap one another: while one worker decodes or waits on fsync, another runs
    the model. With a one-thread session (what the CLI uses) that keeps every core busy with little
    hand-off cost (bench/README.md, tuning log). This process records each batch's results as they
    come back, in input order (:class:`Recorder`), so the workers may be elsewhere (a Dask cluster).
    """

    def __init__(
        self,
        processor: Processor,
        planner: Planner,
        recorder: Recorder,
        workers: int | None = None,
        executor: Callable[[int], Executor] = ThreadExecutor,
        work: Work | None = None,
        batch_size: int | None = None,
        tail_size: int = 1,
        send_owners: bool = False,
    ) -> None:
        self.processor = processor
        self.planner = planner
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
        #: hand ``work`` the done records of the scans each batch may take names from (``owners=``): a
        #: Dask worker, which has no ledger, reserves the output names with them
        self.send_owners = send_owners

    def batches(self, rels: Iterable[str]) -> Iterator[list[str | ScanError]]:
        """The scans, claimed, in batches of ``batch_size`` (smaller ones at the end).

        So that the workers finish together, rather than one running a whole batch alone while the
        other cores idle (bench/README.md, tuning log): a long run's last scans go ``tail_size`` (one)
        a batch; a short run (a daemon's group) is split evenly over the workers.
        """
        bs, workers = self.batch_size, self.workers
        ahead: deque[str | ScanError] = deque()
        long_run = False
        for rel in arrange(rels):
            try:
                self.planner.claim(rel)
                ahead.append(rel)
            except ScanError as exc:
                ahead.append(exc)
            if len(ahead) >= bs * (workers + 1):
                long_run = True
                yield _take(ahead, bs)
        size = self.tail_size if long_run else max(1, min(bs, -(-len(ahead) // workers)))
        while ahead:
            yield _take(ahead, size)

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
        recorder = self.recorder
        with self.executor(self.workers) as pool:
            for batch in self.batches(rels):
                if stop is not None and stop():
                    break
                known: Mapping[str, str] = recorder.known(batch)
                if self.send_owners:
                    work = partial(self.work, known=known, owners=self.planner.owners(batch))
                else:
                    work = partial(self.work, known=known)
                pending.append(pool.submit(work, batch))
                while pending and (pending[0].done() or len(pending) > 2 * pool.workers):
                    yield from recorder.record(pending.popleft().result(), defer)
            while pending:
                yield from recorder.record(pending.popleft().result(), defer)
        recorder.ledger.sync()
        if recorder.keep_outputs:
            recorder.sweep_leftovers()
