"""The master's health checks of its workers, every ``health_check_interval``.

A worker that hangs (not serving ``worker_boot_timeout`` after its fork, or no heartbeat in
the scoreboard for ``worker_timeout``) is aborted (``workers.abort_worker``); one over
``worker_max_rss`` is recycled gracefully by the master; one near its descriptor limit is
logged.
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Iterable

import psutil

from .. import metrics
from ..config.model import ServerConfig
from .scoreboard import SharedState
from .workers import WorkerProc, abort_worker

log = logging.getLogger(__name__)

FD_WARNING_RATIO = 0.8


def check_workers(workers: Iterable[WorkerProc], state: SharedState,
                  server: ServerConfig) -> list[WorkerProc]:
    """Abort the workers that hang; return those to recycle (too much memory)."""
    slots = {s.pid: s for s in state.workers()}
    fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    recycle = []
    for worker in list(workers):
        status = slots.get(worker.pid)
        if status is None or worker.abort is not None:
            continue
        if status.state == "starting":
            _check_boot(worker, state, server)
        elif _check_heartbeat(worker, status.heartbeat, state, server) and \
                _check_resources(worker, fd_limit, server):
            recycle.append(worker)
    return recycle


def _check_boot(worker: WorkerProc, state: SharedState, server: ServerConfig) -> None:
    """Abort a worker not serving within worker_boot_timeout of its start (it may hang
    before it ever writes a heartbeat)."""
    timeout = server.worker_boot_timeout
    booting = time.monotonic() - worker.started
    if timeout and booting > timeout:
        abort_worker(worker, f"not serving {booting:.0f}s after its start "
                     f"(worker_boot_timeout={timeout})", state, boot=True)


def _check_heartbeat(worker: WorkerProc, heartbeat: float, state: SharedState,
                     server: ServerConfig) -> bool:
    """Abort a worker whose heartbeat is older than worker_timeout; return whether it
    is alive."""
    timeout = server.worker_timeout
    age = time.time() - heartbeat if heartbeat else 0.0
    if timeout and age > timeout:
        abort_worker(worker, f"sent no heartbeat for {age:.0f}s (worker_timeout={timeout})",
                     state)
        return False
    return True


def _check_resources(worker: WorkerProc, fd_limit: int, server: ServerConfig) -> bool:
    """Warn of a worker near its descriptor limit; return whether it uses more than
    worker_max_rss (and is not draining already)."""
    try:
        proc = psutil.Process(worker.pid)
        rss_mib = proc.memory_info().rss / 2**20
        fds = proc.num_fds()
    except (psutil.Error, OSError):  # gone, or the master is out of descriptors: next time
        return False
    recycle = bool(server.worker_max_rss and rss_mib > server.worker_max_rss
                   and not worker.draining)
    if recycle:
        log.warning("worker %d (pid %d) uses %.0f MiB RSS (worker_max_rss=%d); recycling "
                    "it gracefully", worker.index, worker.pid, rss_mib, server.worker_max_rss)
        metrics.WORKER_RESTARTS.labels("recycled").inc()
    if fds > FD_WARNING_RATIO * fd_limit:
        log.warning("worker %d (pid %d) has %d open files of a limit of %d", worker.index,
                    worker.pid, fds, fd_limit)
    return recycle
