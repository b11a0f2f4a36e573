"""Where ``mfdata label`` computes: a Dask client on a local cluster or on an existing one.

A scheduler is named by one string, recorded in the manifest: ``local:N`` starts a
``dask.distributed`` LocalCluster of N worker processes, one thread each (OpenMP and BLAS
included: the parallelism is over processes), stopped when labelling ends; ``tcp://HOST:PORT``
(any Dask address) connects to a cluster someone else started and leaves it running, its workers
threaded as their owner chose. ``--workers N`` is the spelling of ``local:N``.

:func:`in_batches` hands the work out: batches of items as one task each, grown from the time
finished batches took, so that many millisecond calculations do not each pay Dask's cost per
task (several milliseconds where the client, the scheduler and the workers share two cores).
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from mfdata.calculators import MissingProgramError
from mfdata.errors import UsageError

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
LOCAL = re.compile(r"local:(\d+)")
ADDRESS = re.compile(r"[a-z]+://\S+")
# A batch is grown to about this much work: Dask's cost per task is small beside it, and a kill
# loses little. Never more items than MAX_BATCH in one task.
BATCH_SECONDS = 0.5
MAX_BATCH = 100


class TaskFailed(Exception):
    """A task brought no result: the cluster dropped it, or every worker running it died."""

    def __init__(self, items: list, reason: str):
        super().__init__(reason)
        self.items = items
        self.reason = reason


def scheduler_spec(workers: int | None = None, scheduler: str | None = None) -> str:
    """The scheduler string of ``--workers N`` (``local:N``) or ``--scheduler``, checked."""
    if workers is not None and scheduler is not None:
        raise UsageError(
            f"--workers {workers} and --scheduler {scheduler}: give one "
            f"(--workers N means --scheduler local:N)"
        )
    spec = f"local:{workers}" if workers is not None else scheduler or "local:1"
    local = LOCAL.fullmatch(spec)
    valid = int(local[1]) >= 1 if local else ADDRESS.fullmatch(spec) is not None
    if not valid:
        shown = f"--workers {workers}" if workers is not None else f"--scheduler {spec}"
        raise UsageError(
            f"{shown}: need local:N (N >= 1 worker processes) or the address of a running "
            f"Dask scheduler, e.g. tcp://HOST:8786"
        )
    return spec


@contextmanager
def dask_client(spec: str, at_most: int) -> Iterator:
    """A ``distributed.Client`` for ``spec``; a local cluster gets at most ``at_most`` workers."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise MissingProgramError(
            "dask.distributed is not installed; install the labelling extra: "
            "pip install 'mfkit[label]'"
        ) from exc
    local = LOCAL.fullmatch(spec)
    if local is None:
        try:
            client = Client(spec)
        except OSError as exc:
            raise UsageError(f"--scheduler {spec}: no Dask scheduler answered: {exc}") from exc
        with client:
            yield client
        return
    with _single_threaded_children():
        cluster = LocalCluster(
            n_workers=min(int(local[1]), at_most),
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        )
    with cluster, Client(cluster) as client:
        yield client


@contextmanager
def _single_threaded_children() -> Iterator[None]:
    """Worker processes start with one thread each (OpenMP, BLAS): Dask's nanny copies these
    variables when it is made (the parent's values win over Dask's config) and sets them again
    before every worker (re)start."""
    saved = {key: os.environ.get(key) for key in THREAD_VARIABLES}
    os.environ.update({key: "1" for key in THREAD_VARIABLES})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def in_batches(
    client,
    function: Callable,
    constants: tuple,
    items: list[int],
    payload: Callable[[int], tuple],
    name: str,
) -> Iterator:
    """``function(*constants, [payload(i) for i in batch])`` for batches of ``items`` on the
    cluster; yields each batch's result as it finishes.

    The first batches hold one item; later ones about :data:`BATCH_SECONDS` of work, from the
    time finished batches took. About two batches per worker thread are queued at a time,
    counted again as workers come and go, so the scheduler never holds the whole run. Keys are
    unique: nothing is shared with another run.

    Dask runs a task again when its worker dies, and gives up (``KilledWorker``) when it was on
    the workers of ``allowed-failures + 1`` deaths. That blames every task the dead workers
    held, bystanders too; so the items of such a task become suspects: nothing new is handed
    out, and once the cluster is idle each suspect runs alone. One that kills every worker
    while alone is the culprit (:class:`TaskFailed`); the others carry on.
    """
    from distributed import KilledWorker, as_completed

    todo = deque(items)
    suspects: deque[int] = deque()
    batch_of: dict = {}  # future -> its items
    alone: set = set()  # the futures of suspects running alone
    busy_seconds, finished_items = 0.0, 0
    completed = as_completed(with_results=True, raise_errors=False)

    def submit(batch: list[int]):
        payloads = [payload(i) for i in batch]
        future = client.submit(
            _timed, function, *constants, payloads, key=f"{name}-{uuid.uuid4().hex}"
        )
        batch_of[future] = batch
        completed.add(future)
        return future

    def refill() -> None:
        if suspects:
            if not batch_of:
                alone.add(submit([suspects.popleft()]))
            return
        queued = max(2, 2 * sum(client.nthreads().values()))
        while todo and len(batch_of) < queued:
            size = round(BATCH_SECONDS * finished_items / busy_seconds) if busy_seconds else 1
            submit([todo.popleft() for _ in range(min(max(size, 1), MAX_BATCH, len(todo)))])

    refill()
    for future, result in completed:
        batch = batch_of.pop(future)
        if future.status == "finished":
            seconds, value = result
            busy_seconds += seconds
            finished_items += len(batch)
            alone.discard(future)
            refill()
            yield value
            continue
        if future.status == "cancelled":
            raise TaskFailed(batch, "the cluster cancelled its task (was the scheduler restarted?)")
        exc = future.exception()
        if not isinstance(exc, KilledWorker):
            raise TaskFailed(batch, f"{type(exc).__name__}: {exc}")
        if future in alone:
            raise TaskFailed(
                batch,
                f"it killed every worker it ran on, with nothing else in flight (tries: "
                f"{exc.allowed_failures + 1}; distributed.scheduler.allowed-failures sets them)",
            )
        suspects.extend(batch)
        refill()


def _timed(function: Callable, *args) -> tuple[float, object]:
    """``function(*args)`` and the seconds it took, on the worker."""
    start = time.perf_counter()
    value = function(*args)
    return time.perf_counter() - start, value
