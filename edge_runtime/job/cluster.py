"""A Dask cluster as the job's executor: ``edge-seg IN --out OUT --cluster tcp://SCHEDULER:8786``.

:func:`connect` reaches the scheduler (or starts a LocalCluster for ``local:N``), waits for a worker,
registers the plugin that loads the model once on every worker (:mod:`edge_runtime.job.cluster_worker`)
and refuses the run, with one line naming the worker, when a worker runs another edge-seg, lacks the
model or does not reach IN and OUT by the same paths as this machine. :class:`DaskExecutor` then runs
the scheduler's batches as Dask tasks of :data:`SCANS_PER_TASK` scans. The workers write the outputs;
this process, the client, keeps the ledger and the run records (:mod:`edge_runtime.job.recorder`): a
batch whose worker is lost is run again by Dask on another worker and recorded once, when it comes back.
A worker that joins during the run is checked as the first ones were; one that does not match gets no
work (the tasks ask for a worker resource only the admitted workers offer) and is named once in the log.
Needs the ``cluster`` extra (``pip install "edge-seg[cluster]"``).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from concurrent.futures import CancelledError
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, TypeVar

from edge_runtime._version import __version__
from edge_runtime.core.model import available_cores
from edge_runtime.errors import SetupError
from edge_runtime.files.durable import write_atomic
from edge_runtime.job.executors import Pending
from edge_runtime.job.settings import JobRequest, JobSpec, RunOptions
from edge_runtime.outputs.layout import STATE_DIR

log = logging.getLogger(__name__)

A = TypeVar("A")
R = TypeVar("R")

#: Scans per Dask task. The scheduler costs a few ms a task (bench/cluster.py); at 16 scans of ~20 ms
#: of CPU each that is about 1% (bench/README.md, "On a Dask cluster").
SCANS_PER_TASK = 16
#: Scans per task at the end of a run, so that the workers finish together (the thread executor's is 1,
#: which would make the scheduler's cost a task the cost a scan there).
TAIL_SCANS_PER_TASK = 4
#: Seconds to wait for the scheduler to answer, and for a first worker to join it.
CONNECT_TIMEOUT = 10.0
WORKER_TIMEOUT = 60.0
#: Seconds between two looks at the workers while waiting for a task (WORKER_TIMEOUT with none: SetupError).
RESULT_POLL = 2.0


def local_threads(workers: int) -> int:
    """Threads a worker of ``local:N``: as for threads (:func:`edge_runtime.job.scheduler.default_workers`),
    one per core it gets, plus one, so that a thread waiting on the disk does not leave a core idle."""
    return max(1, available_cores() // workers) + 1


def parse_address(value: str) -> str:
    """``local:N`` or a scheduler address (``tcp://host:8786``, ``tls://...``, ``host:8786``). Raises ValueError."""
    if value.startswith("local:"):
        n = value.removeprefix("local:")
        if not n.isdigit() or int(n) < 1:
            raise ValueError(f"local:N needs a number of workers of at least 1, not {n!r}")
        return value
    if "://" not in value:
        value = f"tcp://{value}"
    scheme, _, rest = value.partition("://")
    if scheme not in ("tcp", "tls", "ws", "wss", "inproc") or not rest:
        raise ValueError(f"{value!r} is not a Dask scheduler address (tcp://HOST:8786) nor local:N")
    return value


class DaskExecutor:
    """Runs batches as tasks on a Dask cluster; built by :func:`connect`, closed by :meth:`close`.

    Entering and leaving it (the scheduler does so for each ``process``) keeps the connection; only
    :meth:`close` ends it (and a LocalCluster it started).
    """

    def __init__(self, client: Any, cluster: Any, plugin: str, probe: Path) -> None:
        self.client = client
        self.cluster = cluster
        self.plugin = plugin  #: the plugin's name, and the worker resource of the workers admitted to the run
        self.probe = probe
        self.refused: dict[str, str] = {}  #: worker address -> why it takes no part (said once)
        self.address = ""  #: the scheduler's, for messages
        self._threads = 0
        self._counted = -1.0
        self._none_since: float | None = None  #: since when no admitted worker is there

    @property
    def workers(self) -> int:
        """Threads of the workers admitted to the run, counted again at most once a second: workers may
        join or leave. A worker that joined and was refused is named once in the log."""
        now = time.monotonic()
        if now - self._counted >= 1.0:
            self._counted = now
            workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
            admitted = {a: w for a, w in workers.items() if w.get("resources", {}).get(self.plugin)}
            self._threads = max(1, sum(int(w.get("nthreads", 1)) for w in admitted.values()))
            for address in sorted(set(workers) - set(admitted) - set(self.refused)):
                self._check_late(address)
            self._none_since = None if admitted else (self._none_since or now)
        return self._threads

    def check_workers(self) -> None:
        """Raise :class:`SetupError` once no worker that may run the job has been there for
        :data:`WORKER_TIMEOUT` seconds (all gone, or only refused ones left): the tasks would wait forever."""
        self.workers  # noqa: B018 -- counts them again (at most once a second)
        if self._none_since is not None and time.monotonic() - self._none_since >= WORKER_TIMEOUT:
            why = f"; {len(self.refused)} refused, e.g. {next(iter(self.refused.values()))}" if self.refused else ""
            start = "fix them" if self.address.startswith("local:") else f"start one with `dask worker {self.address}`"
            raise SetupError(
                f"no Dask worker that can run this job has been at {self.address} for {WORKER_TIMEOUT:g} s{why}; "
                f"{start} and run again to finish"
            )

    def _check_late(self, address: str) -> None:
        from edge_runtime.job.cluster_worker import worker_state

        try:
            state = self.client.run(worker_state, self.plugin, workers=[address], on_error="return").get(address)
        except Exception as exc:  # gone again, or not answering: asked again at the next count
            log.debug("could not ask Dask worker %s for its state: %s", address, exc)
            return
        if isinstance(state, BaseException):
            state = f"Dask worker {address} refused: it cannot run edge-seg {__version__} ({type(state).__name__})"
        if state is not None and not state.startswith(f"Dask worker {address} has not loaded"):
            self.refused[address] = state
            log.warning("%s; the run goes on without it", state)

    @property
    def work(self) -> Callable[..., Any]:
        """The task function the scheduler submits: a batch through the worker's own processor."""
        from edge_runtime.job.cluster_worker import run_batch

        return partial(run_batch, plugin=self.plugin)

    def submit(self, fn: Callable[[A], R], item: A) -> Pending[R]:
        # one unit of the run's resource: only the workers admitted to the run have it
        return _Task(self.client.submit(fn, item, pure=False, resources={self.plugin: 1}), self.check_workers)

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def close(self) -> None:
        self.probe.unlink(missing_ok=True)
        try:
            self.client.unregister_worker_plugin(self.plugin)
        except Exception as exc:  # a scheduler gone already: nothing to undo there
            log.debug("could not unregister the worker plugin: %s", exc)
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


class _Task(Generic[R]):
    """A Dask future whose failure to come back at all is a one-line :class:`SetupError`."""

    def __init__(self, future: Any, check: Callable[[], None]) -> None:
        self.future = future
        self.check = check  #: raises SetupError when no worker is left to run it

    def done(self) -> bool:
        return bool(self.future.done())

    def result(self) -> R:
        from distributed import KilledWorker

        try:
            while True:
                try:
                    result: R = self.future.result(timeout=RESULT_POLL)
                    break
                except TimeoutError:
                    self.check()
        except KilledWorker as exc:
            raise SetupError(
                f"Dask gave up on a batch of scans: every worker that ran it died ({exc}); see the workers' logs"
            ) from None
        except CancelledError:
            raise SetupError("the Dask scheduler lost this run's tasks (did it stop?); run again to finish") from None
        return result


def connect(
    address: str, request: JobRequest, spec: JobSpec, options: RunOptions, in_dir: Path, out_dir: Path
) -> DaskExecutor:
    """Reach the cluster, load the model on every worker and check them. Raises :class:`SetupError`."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise SetupError('--cluster needs Dask: pip install "edge-seg[cluster]"') from None
    from edge_runtime.job.cluster_worker import EdgeSegPlugin, WorkerBrief, in_listing, resource_name, worker_state

    if not logging.getLogger().isEnabledFor(logging.DEBUG):  # Dask's own chatter only with -v
        logging.getLogger("distributed").setLevel(logging.WARNING)
    cluster = None
    if address.startswith("local:"):
        n = int(address.removeprefix("local:"))
        cluster = LocalCluster(n_workers=n, threads_per_worker=local_threads(n), processes=True, dashboard_address=":0")
        client = Client(cluster)
    else:
        try:
            client = Client(address, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise SetupError(
                f"cannot reach the Dask scheduler at {address} ({exc}); is `dask scheduler` running there?"
            ) from None
    token = secrets.token_hex(16)
    probe = out_dir / STATE_DIR / f"cluster-probe-{token[:12]}"
    executor = None
    try:
        if not client.nthreads():
            log.info("waiting up to %g s for a Dask worker to join %s", WORKER_TIMEOUT, address)
        try:
            client.wait_for_workers(1, timeout=WORKER_TIMEOUT)
        except TimeoutError:
            raise SetupError(
                f"no Dask worker joined the scheduler at {address} within {WORKER_TIMEOUT:g} s; "
                f"start some with `dask worker {address}`"
            ) from None
        write_atomic(probe, token)
        brief = WorkerBrief(
            version=__version__,
            request=request,
            model_sha256=spec.model.sha256,
            signature=spec.signature,
            options=options,
            in_dir=str(in_dir),
            out_dir=str(out_dir),
            in_names=in_listing(in_dir),
            probe=str(probe.relative_to(out_dir)),
            probe_token=token,
        )
        name = resource_name(brief)
        try:
            client.register_plugin(EdgeSegPlugin(brief), name=name)
        except Exception as exc:  # a worker that cannot even unpickle it: no edge-seg, or a very different one
            raise SetupError(
                f"a Dask worker could not load the edge-seg plugin ({type(exc).__name__}: {exc}); "
                f"install edge-seg[cluster] {__version__} on every worker"
            ) from None
        executor = DaskExecutor(client, cluster, name, probe)
        executor.address = address
        for worker, state in sorted(client.run(worker_state, name, on_error="return").items()):
            if isinstance(state, BaseException):
                raise SetupError(
                    f"Dask worker {worker} refused: it cannot run edge-seg {__version__} "
                    f"({type(state).__name__}: {state}); install edge-seg[cluster] there"
                )
            if state is not None:
                raise SetupError(state)
    except BaseException:
        if executor is not None:
            executor.close()
        else:
            probe.unlink(missing_ok=True)
            client.close()
            if cluster is not None:
                cluster.close()
        raise
    log.info("Dask cluster %s: %d worker(s), %d thread(s)", address, len(client.nthreads()), executor.workers)
    return executor
