"""``cosftpctl run``, ``start`` and ``stop``: the server's life, from the files it needs
checked before it starts to its master gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Optional

from ...config.model import Config, ServerConfig
from ...errors import ConfigError
from ...safefiles import check_directory, open_append
from ..files import check_files, hand_over_files
from ..logs import LOG_FILE_NAME, OUT_FILE_NAME
from ..metrics_dir import give_to, use_metrics_dir
from ..pidfile import (
    EXIT_NOT_RUNNING,
    Target,
    describe_pid_file,
    find_master,
    is_alive,
    poll,
    port_holders,
    whereabouts,
)
from ..privileges import Identity, workers_identity
from ..scoreboard import SharedState, state_path

START_TIMEOUT = 60.0  # the server stops itself sooner when its workers cannot start
# The master gives workers stop_timeout after TERM (graceful_timeout + stop_timeout after
# QUIT: what is left then ends as after TERM), then SIGABRT and, 5s later, SIGKILL; stop
# waits that long and this margin more for it to be gone.
STOP_MARGIN = 15
STOP_TIMEOUT = ServerConfig.stop_timeout + STOP_MARGIN


def target_of(config: Config) -> Target:
    """Where the server of ``config`` is found: its pid file and port."""
    return Target(config.path, config.server.pid_file, config.network.listen_port,
                  config.network.listen_addresses)


def cmd_run(config: Config, log_file_only: bool = False) -> int:
    running = find_master(target_of(config))
    if running:
        print(f"cosftpctl: already running as pid {running} ({config.server.pid_file})",
              file=sys.stderr)
        return 1
    identity = _identity(config)
    try:
        check_files(config, identity.gid if identity else None)
        hand_over_files(config, identity.uid if identity else None)
    except OSError as exc:
        print(f"cosftpctl: cannot start: {exc}", file=sys.stderr)
        return 1
    try:
        metrics = use_metrics_dir(config, identity)  # before anything imports prometheus_client
        from ..master import Master  # which opens the master's metric files
        give_to(metrics, identity)
    except OSError as exc:
        print(f"cosftpctl: cannot prepare the metrics directory: {exc}", file=sys.stderr)
        return 1

    return Master(config, foreground=not log_file_only, identity=identity).run()


def _identity(config: Config) -> Optional[Identity]:
    """Who the workers of ``config`` run as (``workers_identity``); exits with status 2, as
    for any configuration error, if that user or group cannot be used."""
    try:
        return workers_identity(config)
    except ConfigError as exc:
        print(f"cosftpctl: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)


def cmd_start(config: Config) -> int:
    """Start ``run`` in the background; return 0 once every worker serves, else stop it
    and print why."""
    running = find_master(target_of(config))
    if running:
        print(f"cosftpctl: already running as pid {running}", file=sys.stderr)
        return 1
    log_dir = config.server.log_dir
    # The server logs to cosftp.log itself; its stderr file keeps only what comes before
    # logging is set up, and crashes (which may quote what a client sent): as private as
    # the log, and never written through a link planted at its name.
    out_path = os.path.join(log_dir, OUT_FILE_NAME)
    identity = _identity(config)
    try:
        check_directory(log_dir, identity.gid if identity else None)
        out_fd = open_append(out_path)
    except OSError as exc:
        print(f"cosftpctl: cannot start: {exc}", file=sys.stderr)
        return 1
    offsets = {path: _size(path) for path in (os.path.join(log_dir, LOG_FILE_NAME), out_path)}
    with open(out_fd, "ab") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "cosftp_prefork", "-c", config.path, "run",
             "--log-file-only"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
        )
    problem = _wait_until_serving(target_of(config), child)
    if problem is None:
        print(f"cosftpctl: started, pid {child.pid}, log in {log_dir}")
        return 0
    print(f"cosftpctl: {problem}", file=sys.stderr)
    for line in _failure_lines(offsets):
        print(f"  {line}", file=sys.stderr)
    print(f"cosftpctl: see {', '.join(offsets)}", file=sys.stderr)
    return 1


def _wait_until_serving(target: Target, child: subprocess.Popen) -> Optional[str]:
    """Wait until every worker of ``child`` serves; return what went wrong, or None."""
    if poll(lambda: child.poll() is not None or _all_serving(target, child.pid),
            START_TIMEOUT):
        return None if child.returncode is None else \
            f"server exited with status {child.returncode}"
    child.terminate()
    try:
        child.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
    return f"workers not serving within {START_TIMEOUT:.0f}s; server stopped"


def _all_serving(target: Target, pid: int) -> bool:
    if find_master(target) != pid:
        return False
    state = SharedState.open(state_path(target.pid_file))
    if state is None:
        return False
    try:
        master = state.master()
        serving = [w for w in state.workers()
                   if w.generation == master.generation and w.state == "serving"]
        return master.pid == pid and len(serving) >= master.worker_count
    finally:
        state.close()


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _failure_lines(offsets: dict[str, int], limit: int = 10) -> list[str]:
    """The errors the server logged, and anything it wrote to stderr, since ``offsets``
    (path: its size before the start)."""
    lines = []
    for path, offset in offsets.items():
        text = _read_from(path, offset)
        if path.endswith(LOG_FILE_NAME):
            text = [line for line in text if " ERROR " in line or " CRITICAL " in line]
        lines += text
    return lines[-limit:]


def _read_from(path: str, offset: int) -> list[str]:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []


def stop(target: Target, graceful: bool = False,
         graceful_timeout: int = ServerConfig.graceful_timeout,
         stop_timeout: int = ServerConfig.stop_timeout) -> int:
    """Signal the master of ``target`` to stop (TERM, or QUIT if ``graceful``) and wait until
    it is gone. It is the one in the pid file, else a master of this file holding the port
    (one whose pid file is elsewhere). No server found: 3 (not running, as ``status``), or
    1 if something else holds the port."""
    pid = find_master(target)
    if pid is None:
        holders = port_holders(target)
        pid = next((holder.pid for holder in holders if holder.ours), None)
        if pid is None:
            print(f"cosftpctl: not running ({whereabouts(target, holders)})", file=sys.stderr)
            return 1 if holders else EXIT_NOT_RUNNING
        print(f"cosftpctl: {describe_pid_file(target)}; stopping pid {pid}, the master of "
              f"{target.config_path} listening on port {target.port}", flush=True)
    os.kill(pid, signal.SIGQUIT if graceful else signal.SIGTERM)
    timeout = (graceful_timeout if graceful else 0) + stop_timeout + STOP_MARGIN
    if graceful:
        print(f"cosftpctl: stopping pid {pid} gracefully: new connections refused, transfers "
              f"in flight have up to {graceful_timeout}s to finish", flush=True)
    if poll(lambda: not is_alive(pid), timeout):
        print(f"cosftpctl: stopped pid {pid}")
        return 0
    print(f"cosftpctl: pid {pid} did not stop within {timeout:.0f}s", file=sys.stderr)
    return 1
