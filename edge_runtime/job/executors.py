"""Where batches run: a part that can be swapped (threads in this process, or a Dask cluster).

An executor takes a function and one batch, and gives back a future of the function's result. The
scheduler decides what goes in a batch and in what order results are taken; the executor only runs.
:class:`ThreadExecutor` is here; the Dask one, which needs the ``cluster`` extra, is
:class:`edge_runtime.job.cluster.DaskExecutor`.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Protocol, TypeVar

A = TypeVar("A")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class Pending(Protocol[R_co]):
    """A result on its way: a :class:`concurrent.futures.Future`, or a Dask future."""

    def done(self) -> bool: ...

    def result(self) -> R_co: ...


class Executor(Protocol):
    """Runs work items somewhere; used as a context manager around a run."""

    @property
    def workers(self) -> int:
        """How many batches run side by side (on a cluster: now, as workers come and go)."""
        ...

    def submit(self, fn: Callable[[A], R], item: A) -> Pending[R]: ...

    def __enter__(self) -> Executor: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class ThreadExecutor:
    """Worker threads in this process. OpenCV and onnxruntime release the GIL, so they overlap."""

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self._pool: ThreadPoolExecutor | None = None

    def submit(self, fn: Callable[[A], R], item: A) -> Future[R]:
        if self._pool is None:
            raise RuntimeError("ThreadExecutor.submit outside its with-block")
        return self._pool.submit(fn, item)

    def __enter__(self) -> ThreadExecutor:
        self._pool = ThreadPoolExecutor(self.workers, "edge-seg-work")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
