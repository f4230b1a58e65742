"""``cosftpctl status`` and ``sessions``: the running server as its shared state file shows
it, with psutil's figures for its workers."""

from __future__ import annotations

import contextlib
import time
from typing import Optional

from ...config.model import REDIS_MINIMUM
from ...logfiles import escape_controls
from ..logs import LOG_FILE_NAME
from ..pidfile import EXIT_NOT_RUNNING, Target, find_master, port_holders, whereabouts
from ..scoreboard import (
    CLUSTER_BUSY_CLOSED,
    CLUSTER_BUSY_OPEN,
    CLUSTER_DOWN_CLOSED,
    CLUSTER_DOWN_OPEN,
    CLUSTER_ERRORS,
    CLUSTER_LOADING_CLOSED,
    CLUSTER_LOADING_OPEN,
    CLUSTER_NONE,
    CLUSTER_READ_ONLY_CLOSED,
    CLUSTER_READ_ONLY_OPEN,
    CLUSTER_UNSUPPORTED_CLOSED,
    CLUSTER_UNSUPPORTED_OPEN,
    MASTER_STARTING,
    RUNNING,
    MasterStatus,
    SessionDetail,
    SharedState,
    WorkerStatus,
    heartbeat_age,
    state_path,
)

EXIT_UNKNOWN = 4  # LSB status code for "program status is unknown"


def _state_of(target: Target) -> Optional[SharedState]:
    """The shared state of the running master of ``target``; None if none was found."""
    pid = find_master(target)
    return SharedState.open(state_path(target.pid_file)) if pid else None


def _not_running(target: Target) -> int:
    """Say why no server was found; return 4 if a master of this file holds the port (its
    pid file is elsewhere), else 3."""
    holders = port_holders(target)
    print(f"cosftpctl: not running ({whereabouts(target, holders)})")
    if not any(holder.ours for holder in holders):
        return EXIT_NOT_RUNNING
    print("cosftpctl: that master's pid file is not where this file puts it (started before "
          "relative paths followed the config file?): stop it with cosftpctl stop, then start "
          "it again")
    return EXIT_UNKNOWN


def status(target: Target, log_file: str = f"the server's {LOG_FILE_NAME}") -> int:
    """Print master and worker status; return 0 if running, 3 (or 4) if not."""
    state = _state_of(target)
    if state is None:
        return _not_running(target)
    print(format_status(state, log_file))
    return 0


def sessions(target: Target) -> int:
    """Print the live sessions of every worker; return 0 if running, 3 (or 4) if not."""
    state = _state_of(target)
    if state is None:
        return _not_running(target)
    print(format_sessions(state.session_details(), time.time()))
    return 0


def format_sessions(details: list[SessionDetail], now: float) -> str:
    """The sessions' table; the user names and commands, which clients sent, escaped as the
    log escapes them: they must not write to the operator's terminal."""
    lines = [f"{'PID':>7} {'USER':<16} {'CLIENT':<39} {'STATE':<9} {'BYTES':>12} "
             f"{'RATE/S':>10} {'IDLE':>8}  COMMAND"]
    for d in details:
        lines.append(
            f"{d.pid:>7} {escape_controls(d.user) or '-':<16} {d.client:<39} "
            f"{'logged in' if d.logged_in else 'login':<9} {d.nbytes:>12} {d.rate:>10.0f} "
            f"{_duration(max(0.0, now - d.last_active)):>8}  {escape_controls(d.command) or '-'}")
    lines.append(f"{len(details)} session(s)")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _ports(master: MasterStatus) -> str:
    ports = f"port {master.ftp_port}" + (" (AUTH TLS)" if master.auth_tls else "")
    if master.implicit_tls_port:
        ports += f"  implicit FTPS port {master.implicit_tls_port}"
    return ports


_UNSUPPORTED = (f"Redis NOT SUPPORTED (older than {'.'.join(map(str, REDIS_MINIMUM))}, or "
                f"will not tell its version; see the log) by")
_READ_ONLY = ("Redis REFUSING WRITES (a read-only replica, too few replicas, a failed save, "
              "out of memory; see the log) to")
# Redis up but serving no command: unreachable to the node, but its answer says why.
_BUSY = ("Redis BUSY (running a script past busy-reply-threshold until it ends or SCRIPT "
         "KILL; see the log) to")
_LOADING = "Redis LOADING (its dataset, after a restart; see the log) to"
# A worker view that is not "reachable": what the status line says of it, and what the
# node does meanwhile.
_CLUSTER_TROUBLE = {
    CLUSTER_DOWN_OPEN: ("Redis UNREACHABLE from", "serving on the local scoreboard"),
    CLUSTER_DOWN_CLOSED: ("Redis UNREACHABLE from", "refusing new connections"),
    CLUSTER_BUSY_OPEN: (_BUSY, "serving on the local scoreboard"),
    CLUSTER_BUSY_CLOSED: (_BUSY, "refusing new connections"),
    CLUSTER_LOADING_OPEN: (_LOADING, "serving on the local scoreboard"),
    CLUSTER_LOADING_CLOSED: (_LOADING, "refusing new connections"),
    CLUSTER_UNSUPPORTED_OPEN: (_UNSUPPORTED, "serving on the local scoreboard"),
    CLUSTER_UNSUPPORTED_CLOSED: (_UNSUPPORTED, "refusing new connections"),
    CLUSTER_READ_ONLY_OPEN: (_READ_ONLY, "serving on the local scoreboard"),
    CLUSTER_READ_ONLY_CLOSED: (_READ_ONLY, "refusing new connections"),
    CLUSTER_ERRORS: ("Redis ANSWERING ERRORS (see the log) to",
                     "those calls use the node's own figures; the others are shared"),
}


# What the master's state means to a client when it is not "running" (the stopping states
# as docs/operations.md's Signals table says).
_STATE_MEANINGS = {
    MASTER_STARTING: "no worker serves yet; connections wait in the listen queue",
    "stopping gracefully": "new connections refused; the transfers in flight finish "
                           "(graceful_timeout), then the workers exit",
    "stopping": "new connections refused; the transfers in flight end with 426 (uploads "
                "parked), then the workers exit",
}


def _state_line(master: MasterStatus) -> list[str]:
    """``state: ...`` unless the master runs: an operator watching a slow start or graceful
    stop must not read the server as serving."""
    if master.state == RUNNING:
        return []
    return [f"state: {master.state}: {_STATE_MEANINGS.get(master.state, 'stopping')}"]


def _cluster_line(workers: list[WorkerStatus]) -> list[str]:
    """``cluster: ...`` when [CLUSTER] redis_url is set: can the workers use Redis?"""
    if not {worker.cluster for worker in workers} - {CLUSTER_NONE}:
        return []
    lines = []
    for view, (what, meanwhile) in _CLUSTER_TROUBLE.items():
        workers_seeing = [str(w.index) for w in workers if w.cluster == view]
        if workers_seeing:
            lines.append(f"cluster: {what} worker(s) {', '.join(workers_seeing)}: {meanwhile}")
    return lines or ["cluster: Redis reachable; bans and connection counts shared"]


def _logins_line(state: SharedState, now: float) -> str:
    """Sessions logged in, connections waiting to log in (per worker) and addresses banned
    on this node."""
    counts = state.login_counts()
    workers = sorted(state.workers(), key=lambda w: (w.generation, w.index))
    waiting = ", ".join(f"worker {w.index}: {counts.get(w.pid, (0, 0))[1]}" for w in workers)
    banned = sum(1 for row in state.ban_rows() if row.until > now)
    return (f"logins: {sum(c[0] for c in counts.values())} logged in, "
            f"{sum(c[1] for c in counts.values())} waiting to log in ({waiting}); "
            f"{banned} address(es) banned on this node (cosftpctl bans lists them)")


def format_status(state: SharedState, log_file: str = LOG_FILE_NAME) -> str:
    """Return the master line and one row per worker, with psutil figures, and a note on
    where the stack dump of a worker being aborted goes."""
    import psutil

    master = state.master()
    now = time.time()
    lines = [f"master pid {master.pid}  up {_duration(now - master.started)}  "
             f"generation {master.generation}  workers {master.worker_count}  "
             f"config {master.config_path}  {_ports(master)}",
             *_state_line(master),
             *_cluster_line(state.workers()),
             f"{'PID':>7} {'GEN':>4} {'WORKER':>6} {'STATE':<9} {'SESS':>5} {'UP':>3} "
             f"{'DOWN':>4} {'BYTES_UP':>12} {'BYTES_DOWN':>12} {'RSS_MIB':>8} {'CPU%':>5} "
             f"{'FDS':>4} {'BEAT':>5}"]
    procs = {}
    for worker in state.workers():
        with contextlib.suppress(psutil.Error):
            procs[worker.pid] = psutil.Process(worker.pid)
            procs[worker.pid].cpu_percent(None)
    time.sleep(0.2)
    aborting = []
    for worker in state.workers():
        rss = cpu = fds = "-"
        with contextlib.suppress(psutil.Error, KeyError):
            proc = procs[worker.pid]
            rss = f"{proc.memory_info().rss / 2**20:.1f}"
            cpu, fds = f"{proc.cpu_percent(None):.1f}", str(proc.num_fds())
        beat = heartbeat_age(worker)
        lines.append(
            f"{worker.pid:>7} {worker.generation:>4} {worker.index:>6} {worker.state:<9} "
            f"{worker.sessions:>5} {worker.uploads:>3} {worker.downloads:>4} "
            f"{worker.bytes_up:>12} {worker.bytes_down:>12} {rss:>8} {cpu:>5} {fds:>4} "
            f"{'-' if beat is None else f'{beat:.1f}s':>5}")
        if worker.state == "aborting":
            aborting.append(str(worker.pid))
    lines.append(_logins_line(state, now))
    if aborting:
        lines.append(f"aborting: sent SIGABRT to hung worker(s) {', '.join(aborting)}; the "
                     f"stacks of their threads go to {log_file}, then SIGKILL")
    return "\n".join(lines)
