"""Dask execution: a local cluster of worker processes started on first use, or an existing scheduler."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import CancelledError, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pipeline.errors import SkelError, error_message
from pipeline.log import quiet_libraries

if TYPE_CHECKING:
    from types import ModuleType

    from distributed import Client, Future, LocalCluster

# Dask sets MALLOC_TRIM_THRESHOLD_ in its workers' environment (and leaks it into ours); glibc then stops raising
# its mmap threshold, so every tensor above 128 kB is a fresh mapping, faulted in page by page and unmapped
# again: torch steps ran ~1.8x slower in processes that inherited it (docs/architecture.md, Dask execution).
TRIM = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"
LEAKED = "ignore::UserWarning:multiprocessing.resource_tracker"
LOST = "scheduler-connection-lost"  # the reason Dask's client gives the futures it cancels when the scheduler goes
log = logging.getLogger("skel")
STALL = 5  # patiences without a finished shard (with workers there) before the wait is said


class SchedulerLost(SkelError):
    """The scheduler went (or cancelled the shards), or the workers running shards died, while they ran: an
    interruption, not a failure of the work."""


def worker_died(exc: BaseException) -> bool:
    """Whether a shard's error is Dask's KilledWorker: the workers that ran it died (killed, out of memory) before
    it finished, each time Dask tried it; nothing of its own work failed."""
    distributed = sys.modules.get("distributed")  # imported by whatever ran the shard on Dask
    return distributed is not None and isinstance(exc, distributed.KilledWorker)


@dataclass
class Cluster:
    """Lazily started Dask client. ``workers=0`` (and no scheduler) runs shards in the driver process.

    Use as a context manager; the cluster starts only when a stage actually has shards to run.
    """

    workers: int  # 0: in the driver process
    scheduler: str | None = None
    patience: float = 60.0  # seconds a scheduler may have no worker (at connect, or while shards wait)
    _client: Client | None = field(default=None, init=False, repr=False)
    _cluster: LocalCluster | None = field(default=None, init=False, repr=False)

    @property
    def inline(self) -> bool:
        return self.scheduler is None and self.workers <= 0

    @property
    def client(self) -> Client:
        if self._client is None:
            if self.scheduler:
                import dask

                dd = _distributed()
                _probe(self.scheduler, dask.utils.parse_timedelta(dask.config.get("distributed.comm.timeouts.connect")))
                self._client = dd.Client(self.scheduler)
                try:
                    self._client.wait_for_workers(1, timeout=self.patience)
                except TimeoutError:
                    self.close()
                    raise SkelError(f"the scheduler {self.scheduler} has no worker (waited {self.patience:g} s): start "
                                    f"one with `dask worker {self.scheduler}`") from None
            else:
                self._start_local()
        return self._client

    def _start_local(self) -> None:
        """Start the local cluster and its client; one line (SkelError) naming the cause when it does not start."""
        import dask

        dd = _distributed()
        environ = dict(os.environ)
        _quiet_dask_diagnostics()
        # multiprocessing's resource tracker, started with the workers, warns at exit of the semaphores that killed
        # workers left (it removes them): noise after a run that has said what happened
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, (environ.get("PYTHONWARNINGS"), LEAKED)))
        try:
            with dask.config.set({TRIM: None}), _sigint_ignored():
                self._cluster = dd.LocalCluster(
                    n_workers=self.workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=":0",  # None still serves HTTP on 8787, and warns when it is taken
                    silence_logs=logging.CRITICAL,  # a failed shard is reported once, by the runner
                )
            self._client = dd.Client(self._cluster)
        except Exception as exc:  # Dask buries the cause under its own errors (Nanny failed to start)
            self.close()
            raise SkelError(f"could not start {self.workers} Dask worker processes: {_start_failure(exc)}") from exc
        finally:
            os.environ.clear()  # Dask's nanny writes its workers' variables into this process's environment:
            os.environ.update(environ)  # processes started later (side-by-side trainings) get the user's

    def finished(self, futures: Iterable[Future]) -> Iterator[Future]:
        """The futures as they finish. A scheduler left without workers would keep the rest waiting for ever (a
        worker that cannot import skel ends on its first task): after ``patience`` seconds without one, SkelError;
        so too when every worker has stayed paused (for memory) ``STALL`` patiences without a finished shard.
        A future the scheduler cancelled (it was lost) ends the run as an interruption: SchedulerLost."""
        ready = _distributed().as_completed(futures)
        alone, paused, checked = None, None, time.monotonic()  # since when no worker, every worker paused
        moved, told = checked, False  # when a shard last finished; whether the wait since was said
        while not ready.is_empty():
            batch = ready.next_batch(block=False)
            cancelled = [f for f in batch if f.cancelled()]
            yield from (f for f in batch if not f.cancelled())
            if cancelled:
                raise self._lost(cancelled[0], len(cancelled) + ready.count())
            now = time.monotonic()
            if batch:
                alone, moved, told = None, now, False
                continue
            time.sleep(0.05)
            if now - checked < min(5.0, self.patience):
                continue
            checked = now
            if workers := self.client.scheduler_info()["workers"]:
                alone = None
                held = [w for w in workers.values() if w.get("status") == "paused"]
                paused = (paused or now) if len(held) == len(workers) else None
                if paused is not None and now - max(paused, moved) >= STALL * self.patience:
                    raise SkelError(_paused(held, ready.count()))
                if not told and now - moved >= STALL * self.patience:  # a worker paused or swapping holds them
                    told = True
                    log.warning("no shard has finished for %.0f s (%d waiting, %d worker(s)); a paused or overloaded "
                                "worker may hold them. Ctrl-C stops; the same command resumes", now - moved,
                                ready.count(), len(workers))
            elif alone is None:
                alone = now
            elif now - alone >= self.patience:
                raise SkelError(f"the scheduler {self.scheduler or 'of the local cluster'} has had no worker for "
                                f"{self.patience:g} s while {ready.count()} shard(s) wait: its workers ended (killed, "
                                "out of memory, or unable to import skel, which ends a worker on its first task): see "
                                "the workers' logs; the same command resumes")

    def _lost(self, cancelled: Future, left: int) -> SchedulerLost:
        """The interruption of a run whose shards the scheduler cancelled: lost (its connection closed), or another
        reason, which the future's error names."""
        reason = "unknown"
        try:
            cancelled.result()
        except CancelledError as exc:
            reason = getattr(exc, "reason", reason)
        where = self.scheduler or "of the local cluster"
        what = (f"was lost with {left} shard(s) outstanding" if reason == LOST
                else f"cancelled {left} outstanding shard(s) ({reason})")
        return SchedulerLost(f"the scheduler {where} {what}; the same command resumes from what was committed")

    @property
    def threads(self) -> int:
        """Threads each worker process may use so that together they fill this machine's cores."""
        return max(1, default_workers() // max(1, self.workers))

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the client (and a local cluster); the next use of ``client`` starts them again."""
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()
        self._client = self._cluster = None


def _paused(workers: list[dict], waiting: int) -> str:
    """Why a run ends whose workers all stay paused: Dask pauses a worker whose process holds more than its pause
    share of its memory limit, and one that holds it while idle never runs a task again."""
    limits = sorted({w["memory_limit"] for w in workers if w.get("memory_limit")})
    limit = f" of {', '.join(f'{v / 2**20:.0f} MiB' for v in limits)}" if limits else ""
    return (f"every Dask worker ({len(workers)}) has stayed paused for want of memory (over Dask's pause share of its "
            f"memory limit{limit}) while {waiting} shard(s) wait: give the workers more memory (dask worker "
            "--memory-limit) or each shard fewer samples; the same command resumes")


def _distributed() -> ModuleType:
    """Dask's ``distributed``, imported when a cluster is first used rather than with skel (0.5 s of every command
    that runs nothing on Dask); its import sets levels of its own loggers, which skel's are set again over."""
    import distributed

    quiet_libraries()
    return distributed


def _probe(address: str, timeout: float) -> None:
    """A Dask scheduler answers at ``address`` within ``timeout`` seconds, else SkelError: Dask's Client waits for
    ever on a listener that is not a scheduler (an HTTP server, another service on that port)."""
    from distributed.comm import connect

    async def identity() -> str:  # a port where nothing listens: connect's own error, after its retries
        comm = None
        try:  # connect reads the other end's handshake too
            comm = await asyncio.wait_for(connect(address, timeout=timeout), 2 * timeout)
            await asyncio.wait_for(comm.write({"op": "identity", "reply": True}), timeout)
            reply = await asyncio.wait_for(comm.read(), timeout)
        except (TimeoutError, OSError):
            raise
        except Exception:  # noqa: BLE001 - another protocol: its bytes read as a frame's length (3 EiB to allocate)
            return "it answers in another protocol (a web server, a proxy?)"
        finally:
            if comm is not None:
                comm.abort()
        kind = reply.get("type") if isinstance(reply, dict) else None
        return "" if kind == "Scheduler" else f"it answers as {kind or 'something else'}"

    asking = "is it a Dask scheduler's address (`dask scheduler` prints it)?"
    try:
        with ThreadPoolExecutor(1) as pool:  # a loop of its own, under a running one too (a notebook)
            other = pool.submit(asyncio.run, identity()).result()
    except TimeoutError:
        raise SkelError(f"the scheduler {address} did not answer within {2 * timeout:g} s: {asking}") from None
    except (OSError, ValueError) as exc:
        raise SkelError(f"cannot reach the scheduler {address}: {error_message(exc)}") from None
    if other:
        raise SkelError(f"{address} is no Dask scheduler: {other}; {asking}")


def _quiet_dask_diagnostics() -> None:
    """A local cluster's scheduler runs in this process and times each full garbage collection with a callback that
    reads /proc (Dask's GC diagnosis). When that read fails (no file descriptor left: ``ulimit -n``) Python prints the
    ignored exception's traceback beside skel's one-line error. Such exceptions of Dask's diagnostics go to the debug
    log (``--verbose``); any other ignored exception is printed as before. Installed once per process."""
    previous = sys.unraisablehook
    if getattr(previous, "skel", False):
        return

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        if str(getattr(unraisable.object, "__module__", "")).startswith("distributed."):
            log.debug("ignored in %r: %r", unraisable.object, unraisable.exc_value)
        else:
            previous(unraisable)

    hook.skel = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored in this process for the block, so the worker processes started in it inherit SIG_IGN (Python
    keeps an ignored SIGINT ignored at start-up, and Dask's nanny sets no handler): a terminal's Ctrl-C reaches the
    whole process group, and the driver alone should answer it (it closes the cluster), not every worker with a
    traceback of its own; it does so once the block ends. Only the main thread sets handlers; elsewhere the block
    runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # An ignored signal is dropped: a Ctrl-C while the workers start (a second or two) was lost, and a recipe went
    # on for hours. A child of ours that keeps the default action dies of the terminal's Ctrl-C meanwhile (it goes
    # to the whole process group), which is answered once the block ends. It reads a pipe of ours, so it ends when
    # we close it, or when we die (kill -9 leaves no witness behind).
    try:
        witness = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    except OSError:  # no `cat` on PATH: a Ctrl-C meanwhile goes unanswered, as before
        witness = None
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if witness is not None:
            witness.stdin.close()
            if witness.wait() == -signal.SIGINT:
                raise KeyboardInterrupt


def _start_failure(exc: BaseException) -> str:
    """What kept a local cluster from starting: the first OSError in the chain of causes (else the deepest cause),
    with what to do about it."""
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    cause = next((e for e in chain if isinstance(e, OSError)), chain[-1])
    if isinstance(cause, OSError) and cause.errno == errno.EMFILE:
        return "too many open files (raise `ulimit -n` or run with -j 0)"
    return f"{error_message(cause)} (run with -j 0 to work in this process)"


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))
