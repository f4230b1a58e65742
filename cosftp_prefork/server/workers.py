"""The master's book of its forked workers: what it knows of each, the back-off of a
position whose workers keep dying young, and how it signals them.

A worker that hangs is aborted as gunicorn does: SIGABRT, on which its faulthandler dumps
every thread's stack into a memfd the master made for it, then SIGKILL if it is still alive
after a grace period. The master logs the dump when it reaps the worker.

A worker that did not settle what it held in the quotas' usage (killed in an upload, or with
sessions of an auth hook's home logged in) has it given back once it is reaped
(:func:`give_back_holdings`, ``server.usage``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Optional

from .logs import log_block
from .scoreboard import ABORTING, SharedState
from .usage import UsageTable

log = logging.getLogger(__name__)

FAST_FAILURE_SECONDS = 5.0
MAX_BACKOFF_SECONDS = 30.0
ABORT_GRACE_SECONDS = 5.0  # from SIGABRT (faulthandler dumps the stacks) to SIGKILL
STACK_DUMP_LIMIT = 2**20


@dataclass
class Abort:
    """A worker being aborted: sent SIGABRT (its faulthandler dumps every thread's stack),
    to be sent SIGKILL at ``kill_at`` if still alive."""

    why: str
    boot: bool  # it never served: a failure to start, not a crash
    kill_at: float
    killed: bool = False


@dataclass
class WorkerProc:
    """What the master knows about one forked worker."""

    pid: int
    index: int
    generation: int
    slot: int
    started: float
    stack_fd: int  # a memfd the worker's faulthandler writes to; read back when it exits
    draining: bool = False
    abort: Optional[Abort] = None


@dataclass
class Backoff:
    """Fast-failure book-keeping for one worker position."""

    fast_failures: int = 0
    next_start: float = 0.0

    def record_exit(self, lived: float, now: float) -> float:
        """Note an unexpected exit after ``lived`` seconds; return the delay before restart."""
        self.fast_failures = self.fast_failures + 1 if lived < FAST_FAILURE_SECONDS else 0
        delay = min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** self.fast_failures) if self.fast_failures \
            else 0.0
        self.next_start = now + delay
        return delay


def give_back_holdings(dead: list[WorkerProc], usage: Optional[UsageTable]) -> list[WorkerProc]:
    """Take what each of the ``dead`` workers still held out of the quotas' usage (reserved
    bytes and files, sessions of auth hook homes), and log it; return those whose turn
    must wait because a worker holds the usage table's lock now (the master never waits on
    it: it tries again on its next turn)."""
    if usage is None:
        return []
    waiting = []
    for worker in dead:
        dropped = usage.drop_holdings(worker.slot, worker.pid)
        if dropped is None:
            waiting.append(worker)
        elif dropped.homes:
            log.warning("worker %d (pid %d) died holding %d bytes and %d files reserved and "
                        "%d sessions in %d homes with a quota; given back", worker.index,
                        worker.pid, dropped.nbytes, dropped.files, dropped.sessions,
                        dropped.homes)
    return waiting


def signal_workers(signum: int, workers: Iterable[WorkerProc]) -> None:
    """Send ``signum`` to each of ``workers`` that is still there."""
    for worker in list(workers):
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signum)


def abort_worker(worker: WorkerProc, why: str, state: SharedState, boot: bool = False) -> None:
    """SIGABRT a hung worker (its faulthandler dumps its stacks), SIGKILL it later."""
    signal_workers(signal.SIGABRT, [worker])
    worker.abort = Abort(why, boot, time.monotonic() + ABORT_GRACE_SECONDS)
    state.set_state(worker.slot, ABORTING)
    log.error("worker %d (pid %d) %s; sent SIGABRT: the stacks of its threads follow in "
              "this log once it exits (SIGKILL in %.0fs)", worker.index, worker.pid, why,
              ABORT_GRACE_SECONDS)


def kill_overdue(workers: Iterable[WorkerProc]) -> None:
    """SIGKILL aborted workers that outlived their grace period."""
    now = time.monotonic()
    for worker in list(workers):
        abort = worker.abort
        if abort is not None and not abort.killed and now > abort.kill_at:
            abort.killed = True
            log.error("worker %d (pid %d) still running %.0fs after SIGABRT; sending "
                      "SIGKILL", worker.index, worker.pid, ABORT_GRACE_SECONDS)
            signal_workers(signal.SIGKILL, [worker])


def report_stacks(worker: WorkerProc, how: str) -> None:
    """Log the stack dump the worker's faulthandler left (on SIGABRT, or a crash such as
    SIGSEGV), or that an aborted worker left none; close its memfd."""
    try:
        size = os.fstat(worker.stack_fd).st_size
        dump = os.pread(worker.stack_fd, min(size, STACK_DUMP_LIMIT), 0)
    finally:
        os.close(worker.stack_fd)
    text = dump.decode("utf-8", "replace").strip()
    if text:
        log_block(log, logging.ERROR, text,
                  "worker %d (pid %d) %s; the stacks of its threads when it died:",
                  worker.index, worker.pid, how)
    elif worker.abort is not None:
        log.error("worker %d (pid %d) %s without a stack dump: it could not run its "
                  "SIGABRT handler (stopped, or stuck in the kernel)", worker.index,
                  worker.pid, how)


def describe_status(status: int) -> str:
    """How a child ended, from its ``waitpid`` status, for the log."""
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.WEXITSTATUS(status)}"


def load_worker() -> type:
    """Import the worker's stack, in a forked child only (a worker, or the probe of
    ``privileges``): the master never loads pyftpdlib or the COS SDK, so the workers of a
    reload run the code installed at that time."""
    from .worker import Worker

    return Worker
