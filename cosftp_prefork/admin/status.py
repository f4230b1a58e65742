"""``GET /api/v1/status``: the master (generation, ports, reload state and its errors), each
worker's health and memory, and the counts of logins and bans."""

from __future__ import annotations

import contextlib
import time
from typing import Any, Optional

import psutil

from ..server.scoreboard import (
    RELOAD_FAILED,
    RELOAD_OK,
    RELOAD_REFUSED,
    RELOAD_RUNNING,
    WorkerStatus,
    heartbeat_age,
)
from .app import Context, Response
from .reload import warnings_of

# A serving worker's heartbeat older than this is late (it beats every second; the master
# aborts it after worker_timeout).
LATE_HEARTBEAT = 5.0
# A refused file is a failed reload here, as before the master told them apart.
RELOAD_STATES = {RELOAD_RUNNING: "running", RELOAD_OK: "ok", RELOAD_FAILED: "failed",
                 RELOAD_REFUSED: "failed"}


def status(context: Context) -> Response:
    state, server = context.state, context.config.server
    master = state.master()
    now = time.time()
    reload_error = state.reload_error()
    counts = state.login_counts()
    return Response(200, {
        "master": {
            "pid": master.pid, "state": master.state, "generation": master.generation,
            "started": master.started,
            "uptime_seconds": max(0.0, now - master.started), "workers": master.worker_count,
            "config_path": master.config_path, "ftp_port": master.ftp_port,
            "implicit_tls_port": master.implicit_tls_port or None, "auth_tls": master.auth_tls,
            "rss_bytes": _memory(master.pid)},
        "reload": {"state": RELOAD_STATES.get(master.reload_result, "none"),
                   "count": master.reloads,
                   "errors": [reload_error] if reload_error else [],
                   **warnings_of(state)},
        "workers": [_worker(worker, server.worker_max_rss) for worker in
                    sorted(state.workers(), key=lambda w: (w.generation, w.index))],
        "logins": {"logged_in": sum(c[0] for c in counts.values()),
                   "waiting": sum(c[1] for c in counts.values())},
        "bans": sum(1 for row in state.ban_rows() if row.until > now),
        "time": now,
        "you": {"token": context.caller.name, "writable": context.caller.writable},
    })


def _worker(worker: WorkerStatus, max_rss_mib: int) -> dict[str, Any]:
    age = heartbeat_age(worker)
    health = worker.state
    if worker.state == "serving":
        health = "late" if age is None or age > LATE_HEARTBEAT else "ok"
    figures: dict[str, Any] = {"rss_bytes": None, "fds": None, "cpu_seconds": None}
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(worker.pid)
        with proc.oneshot():
            times = proc.cpu_times()
            figures = {"rss_bytes": proc.memory_info().rss, "fds": proc.num_fds(),
                       "cpu_seconds": times.user + times.system}
    return {"pid": worker.pid, "index": worker.index, "generation": worker.generation,
            "state": worker.state, "health": health, "heartbeat_age_seconds": age,
            "sessions": worker.sessions, "uploads": worker.uploads,
            "downloads": worker.downloads, "bytes_up": worker.bytes_up,
            "bytes_down": worker.bytes_down,
            "rss_limit_bytes": max_rss_mib * 2**20 if max_rss_mib else None, **figures}


def _memory(pid: int) -> Optional[int]:
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return None
