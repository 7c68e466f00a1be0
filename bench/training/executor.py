"""Where a study's runs train: in this process, in local worker processes, or on a Ray cluster.

The parent process alone decides what runs (:meth:`bench.training.studies.Runner.run_all`): it hands each
missing run to an executor as ``fn(item)`` (a run spec in, its record and checkpoint bytes out) and
writes every record itself as the result comes back. Workers write no record, so no locks are needed
and a killed study leaves only whole records. Backends (:func:`make_executor`):

- :class:`InProcess` (``--workers 1``): each call in this process, one after another.
- :class:`LocalPool` (``--workers N``): a ``concurrent.futures.ProcessPoolExecutor`` of N spawned
  processes, each setting torch's intra-op thread count once. They ignore SIGINT (the parent
  handles Ctrl-C and stops them) and end by themselves when the parent is gone (a SIGKILL skips
  every clean-up).
- :class:`RayCluster` (``--cluster ADDRESS|auto``): ``ray.remote`` tasks asking ``num_cpus`` =
  threads, on the cluster ``ray.init(address=...)`` connects to (a Ray this process already
  initialised is used as it is); as many calls at once as the cluster has CPUs / threads.

Results do not depend on the backend as long as every call trains with the same thread count.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import os
import signal
import threading
import time
from typing import Any, Callable, Iterable, Iterator

log = logging.getLogger(__name__)

#: how the cluster extra is installed (named in the error when Ray is missing)
CLUSTER_INSTALL = "pip install -e '.[cluster]'"


class ExecutorError(Exception):
    """The executor cannot go on (Ray missing or unreachable, a worker process died); one line."""


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its type's name when it has none)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class Executor:
    """Runs ``fn(item)`` calls, at most :attr:`slots` at once. Use as a context manager: leaving it
    normally waits for nothing (every call has returned); leaving it by an exception cancels the
    calls not started and stops the running ones. Inside it SIGTERM raises ``KeyboardInterrupt``
    (in the main thread), so a terminated study cleans up like an interrupted one."""

    #: calls run at once
    slots: int = 1
    #: whether calls run in this process (they then see its state: loaded datasets, patches)
    in_process: bool = False

    def __init__(self) -> None:
        self._running: dict[Any, int] = {}
        self._old_sigterm: Any = None

    def __enter__(self) -> "Executor":
        if threading.current_thread() is threading.main_thread():
            self._old_sigterm = signal.signal(signal.SIGTERM, _interrupt)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self._running:
                self._stop(list(self._running))
                self._running.clear()
            self._close(aborted=exc_type is not None)
        finally:
            if self._old_sigterm is not None:
                signal.signal(signal.SIGTERM, self._old_sigterm)
                self._old_sigterm = None

    def completed(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[tuple[int, Any]]:
        """``(index, fn(item))`` for every item, in the order the calls end.

        ``items`` is consumed lazily: the next item is taken only when a slot is free, after the
        results before it were yielded, so a generator may decide its next item from them (the
        ask / tell loop of :mod:`bench.training.tuning`).

        Raises the first exception a call raised, with its own type and message (a worker's
        ``TrainingError`` is a ``TrainingError`` here); :class:`ExecutorError` when a worker died."""
        todo = iter(enumerate(items))
        more = True
        while True:
            while more and len(self._running) < self.slots:
                nxt = next(todo, None)
                if nxt is None:
                    more = False
                    break
                self._running[self._submit(fn, nxt[1])] = nxt[0]
            if not self._running:
                return
            for handle in self._wait(list(self._running)):
                i = self._running.pop(handle)
                yield i, self._result(handle)

    # the backends' parts
    def _submit(self, fn, item):
        raise NotImplementedError

    def _wait(self, handles: list) -> list:
        raise NotImplementedError

    def _result(self, handle):
        raise NotImplementedError

    def _stop(self, handles: list) -> None:
        """Cancel or end the calls ``handles`` (after an exception or an interrupt)."""

    def _close(self, aborted: bool) -> None:
        """Release the workers."""


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


class InProcess(Executor):
    """Every call in this process, one after another (no pool: tests and debugging stay simple)."""

    in_process = True

    def completed(self, fn, items):
        for i, item in enumerate(items):
            yield i, fn(item)


class LocalPool(Executor):
    """``workers`` spawned processes on this machine, each with ``threads`` torch intra-op threads
    (None: torch's default)."""

    def __init__(self, workers: int, threads: int | None = None):
        super().__init__()
        import multiprocessing as mp

        self.slots = workers
        self._pool = cf.ProcessPoolExecutor(
            max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
            initargs=(threads, logging.getLogger().getEffectiveLevel(), os.getpid()))
        log.info("%d worker processes (%s torch thread(s) each)", workers, threads or "default")

    def _submit(self, fn, item):
        return self._pool.submit(fn, item)

    def _wait(self, handles):
        return list(cf.wait(handles, return_when=cf.FIRST_COMPLETED).done)

    def _result(self, future):
        try:
            return future.result()
        except cf.process.BrokenProcessPool:
            raise ExecutorError("a worker process died while training (killed, or out of memory?); every record "
                                "written so far is kept: run the command again to train the rest") from None

    def _stop(self, handles):
        for f in handles:
            f.cancel()
        # ProcessPoolExecutor ends running calls only from Python 3.14 on (terminate_workers)
        procs = list((getattr(self._pool, "_processes", None) or {}).values())
        for p in procs:
            p.terminate()
        for p in procs:
            p.join(10)

    def _close(self, aborted):
        self._pool.shutdown(wait=True, cancel_futures=True)

    def pids(self) -> list[int]:
        """The worker processes' pids (for tests and messages)."""
        return sorted((getattr(self._pool, "_processes", None) or {}).keys())


def _init_worker(threads: int | None, level: int, parent: int) -> None:
    """Initialiser of a :class:`LocalPool` process: torch threads, logging like the parent's
    (with the process name), SIGINT ignored, and an exit as soon as ``parent`` is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(processName)s: %(message)s",
                        datefmt="%H:%M:%S")
    if threads:
        import torch

        torch.set_num_threads(threads)
    from tqdm import tqdm

    # a thread lock for tqdm (its default is a multiprocessing one, which a terminated worker would
    # leave to the resource tracker to clean up, with a warning)
    tqdm.set_lock(threading.RLock())

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class RayCluster(Executor):
    """Ray tasks on the cluster at ``address`` (``auto``: the one ``ray start`` runs on this
    machine), each asking ``threads`` CPUs and training with that many torch threads."""

    def __init__(self, address: str, threads: int | None = None):
        super().__init__()
        try:
            import ray
        except ImportError:
            raise ExecutorError(f"--cluster needs Ray, which is not installed: {CLUSTER_INSTALL}") from None
        self._ray = ray
        if not ray.is_initialized():
            try:
                ray.init(address=address)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ExecutorError(f"cannot connect to the Ray cluster at {address!r} ({first_line(exc)}); "
                                    "start one (ray start --head) or give the address of its head node") from None
        cpus = ray.cluster_resources().get("CPU", 0)
        self.slots = max(1, int(cpus // (threads or 1)))
        self._remote = ray.remote(_with_threads).options(num_cpus=threads or 1)
        self._threads = threads
        log.info("Ray cluster with %g CPUs: %d run(s) at once (%s torch thread(s) each)", cpus, self.slots,
                 threads or "default")

    def _submit(self, fn, item):
        return self._remote.remote(self._threads, fn, item)

    def _wait(self, handles):
        while True:  # in steps, so that Ctrl-C and SIGTERM are seen
            ready, _ = self._ray.wait(handles, num_returns=1, timeout=1.0)
            if ready:
                return ready

    def _result(self, ref):
        from ray import exceptions as rx

        try:
            return self._ray.get(ref)
        except rx.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None
            raise ExecutorError(f"a Ray task failed: {first_line(exc)}") from None
        except rx.RayError as exc:
            raise ExecutorError(f"Ray lost a run ({type(exc).__name__}: {first_line(exc)}); every record written "
                                "so far is kept: run the command again to train the rest") from None

    def _stop(self, handles):
        for ref in handles:
            with contextlib.suppress(Exception):
                self._ray.cancel(ref, force=True)


def _with_threads(threads: int | None, fn: Callable[[Any], Any], item: Any) -> Any:
    """A Ray task: ``fn(item)`` with ``threads`` torch intra-op threads."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    return fn(item)


def make_executor(workers: int = 1, threads: int | None = None, cluster: str | None = None) -> Executor:
    """The executor of ``--workers`` / ``--cluster``: Ray with ``cluster``, else a local pool of
    ``workers`` processes, or this process alone when ``workers`` is 1."""
    if cluster:
        return RayCluster(cluster, threads)
    if workers <= 1:
        return InProcess()
    return LocalPool(workers, threads)
