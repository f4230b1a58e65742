"""``cosftpctl``: start, stop and inspect the server. The only place that exits the process."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import signal
import subprocess
import sys
import time
from typing import Optional

from ..config.locations import base_dir
from ..config.model import REDIS_MINIMUM, Config, Located, ServerConfig
from ..config.passwords import hash_password
from ..config.placeholders import find_placeholders
from ..config.settings import load_config, locate_in_text, locate_server, resolve_masquerade
from ..errors import ConfigError
from ..safefiles import check_directory, open_append
from .ctl.bans import run_bans
from .filelayout import OtherLayoutError
from .files import check_files, hand_over_files
from .logs import LOG_FILE_NAME, OUT_FILE_NAME
from .manual import describe
from .metrics_dir import give_to, use_metrics_dir
from .pidfile import (
    EXIT_NOT_RUNNING,
    Target,
    describe_pid_file,
    find_master,
    is_alive,
    poll,
    port_holders,
    whereabouts,
)
from .privileges import Identity, describe_workers, probe, workers_identity
from .quotactl import cmd_quota, cmd_quota_scan
from .reloadctl import EXIT_REFUSED, RELOAD_TIMEOUT, cmd_reload
from .scoreboard import (
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

DEFAULT_CONFIG = os.path.join("conf", "vsftpd.conf")
START_TIMEOUT = 60.0  # the server stops itself sooner when its workers cannot start
# The master gives workers stop_timeout after TERM (graceful_timeout + stop_timeout after
# QUIT: what is left then ends as after TERM), then SIGABRT and, 5s later, SIGKILL; stop
# waits that long and this margin more for it to be gone.
STOP_MARGIN = 15
STOP_TIMEOUT = ServerConfig.stop_timeout + STOP_MARGIN
EXIT_UNKNOWN = 4  # LSB status code for "program status is unknown"

SIGNAL_HELP = """signals understood by the master:
  TERM, INT  fast stop (stop): close the listener; a transfer in flight ends with 426 (an
             upload is parked for resume, nothing half-written), every client gets 421; exit
  QUIT       graceful stop (stop --graceful): close the listener (new connections are
             refused), let the transfers in flight end with 226; each worker then tells
             its sessions 421 and exits (after graceful_timeout: as TERM); a TERM (stop)
             cuts it short; exit
  HUP        reload the config file (an invalid file is refused, old config kept)
  USR1       reopen log files (logrotate)
  TTIN/TTOU  one worker more / less
each command's exit status and examples: cosftpctl COMMAND --help
"""
ONLINE_TIMEOUT = 10.0
ONLINE_THREADS = 64  # accounts tried at once by check --online
ONLINE_START_MARGIN = 60.0  # for the probe process to start (it imports the SDK)


def _seconds(text: str) -> float:
    """A positive number of seconds, for argparse."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < 3600:
        raise argparse.ArgumentTypeError(f"must be seconds between 0 and 3600, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cosftpctl", description="FTP server for Tencent Cloud COS buckets.",
        epilog=SIGNAL_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                        help=f"configuration file (default: {DEFAULT_CONFIG})")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run in the foreground (systemd, containers)")
    run.add_argument("--log-file-only", action="store_true",
                     help="log to log_dir/cosftp.log only, not to stderr too (what start uses)")
    sub.add_parser("start", help="start in the background and return once it serves")
    stop_cmd = sub.add_parser("stop", help="stop the running server (fast: TERM); exit 3 if "
                              "none runs, 1 if another program holds the port")
    stop_cmd.add_argument("--graceful", action="store_true",
                          help="QUIT: refuse new connections, let the transfers in flight "
                               "finish (at most graceful_timeout), then stop")
    reload = sub.add_parser("reload", help="have the master validate the config and reload it "
                            "without dropping sessions")
    reload.add_argument("--timeout", type=_seconds, default=RELOAD_TIMEOUT,
                        help="seconds to wait for the master's verdict (default %(default)g)")
    sub.add_parser("status", help="show master and workers (exit 0), or exit 3 if not running")
    sub.add_parser("sessions", help="one line per live session (like ftpwho): user, client, "
                   "command, bytes, rate, idle time")
    sub.add_parser("bans", help="addresses banned, or with failed logins in the window: "
                   "failures, end of the ban, where (this node, saved, the cluster)")
    unban = sub.add_parser(
        "unban", help="lift the ban of an address at once on every worker (and, with "
        "[CLUSTER], every node) and forget its failed logins; exit 0 also if it was not "
        "banned (as fail2ban-client's unbanip)")
    which = unban.add_mutually_exclusive_group(required=True)
    which.add_argument("address", nargs="?", help="one IPv4 or IPv6 address")
    which.add_argument("--all", action="store_true", help="every address")
    check = sub.add_parser(
        "check", help="validate the configuration file and exit (2: invalid, or the "
        "example's placeholder credentials); --online: also try each account on COS")
    check.add_argument("--online", action="store_true",
                       help="with each account's credentials, HEAD its bucket, list one key "
                            "and (write authority) start and abort an upload under "
                            ".cosftp/check/; one line per account; exit 1 if one fails")
    check.add_argument("--timeout", type=_seconds, default=ONLINE_TIMEOUT,
                       help="seconds each account may take online (default %(default)s)")
    quota = sub.add_parser("quota", help="usage and limits of each account's quota "
                           "(quota_size, quota_files) in the running server")
    quota.add_argument("user", nargs="?", help="this account only")
    quota_scan = sub.add_parser("quota-scan", help="scan the homes with a quota now (files "
                                "other tools wrote are counted) and show their usage")
    quota_scan.add_argument("user", nargs="?", help="this account's home only")
    sub.add_parser("hash-password",
                   help="read a password (prompt or stdin) and print its scrypt form")
    for name, command in sub.choices.items():
        describe(name, command)
    return parser


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
        from .master import Master  # which opens the master's metric files
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


def _printable(text: str) -> str:
    """``text`` with every character that is not printable (control bytes, bidi marks)
    escaped: a client-supplied name must not write to the operator's terminal."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def format_sessions(details: list[SessionDetail], now: float) -> str:
    lines = [f"{'PID':>7} {'USER':<16} {'CLIENT':<39} {'STATE':<9} {'BYTES':>12} "
             f"{'RATE/S':>10} {'IDLE':>8}  COMMAND"]
    for d in details:
        lines.append(
            f"{d.pid:>7} {_printable(d.user) or '-':<16} {d.client:<39} "
            f"{'logged in' if d.logged_in else 'login':<9} {d.nbytes:>12} {d.rate:>10.0f} "
            f"{_duration(max(0.0, now - d.last_active)):>8}  {_printable(d.command) or '-'}")
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


def cmd_check(config: Config, online: bool = False,
              timeout: float = ONLINE_TIMEOUT) -> int:
    """Validate the file: 2 if it cannot work (options, placeholder credentials, masquerade
    name, Redis), warnings on stderr; then, with ``online``, the probe's verdicts."""
    placeholders = find_placeholders(config)
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for found in placeholders:
        if not found.fatal:
            print(f"warning: {found.describe(config.path)}", file=sys.stderr)
    try:
        resolve_masquerade(config)
        cluster = _check_cluster(config)
        identity = workers_identity(config)
    except ConfigError as exc:
        print(f"cosftpctl: configuration error: {exc}", file=sys.stderr)
        return 2
    fatal = [found for found in placeholders if found.fatal]
    for found in fatal:
        print(f"cosftpctl: configuration error: {found.describe(config.path)}",
              file=sys.stderr)
    if fatal:
        return 2
    tls = f", FTPS with {config.network.tls.certfile}" if config.network.tls else ""
    print(f"{config.path}: OK, {len(config.accounts)} account(s){tls}")
    print(f"relative paths from {base_dir(config.path)}: log_dir {config.server.log_dir}, "
          f"pid_file {config.server.pid_file}")
    _check_identity(identity)
    if cluster:
        print(cluster, file=sys.stderr if cluster.startswith("warning") else sys.stdout)
    return _check_online(config, timeout) if online else 0


def _check_online(config: Config, timeout: float) -> int:
    """Run ``cos/probe.py`` in a child process (this process becomes the master on
    ``run``, which never loads the COS SDK); its lines go to our stdout. The child bounds
    each account by ``timeout``; this bounds the child, whatever happens to it."""
    rounds = -(-len(config.accounts) // ONLINE_THREADS)
    limit = ONLINE_START_MARGIN + timeout * (rounds + 1)
    command = [sys.executable, "-m", "cosftp_prefork.cos.probe", "--timeout", str(timeout),
               "--threads", str(ONLINE_THREADS), config.path]
    sys.stdout.flush()  # our lines first: the child writes to the same stdout
    try:
        return subprocess.run(command, timeout=limit, check=False).returncode
    except subprocess.TimeoutExpired:
        print(f"cosftpctl: the online check did not end within {limit:g} s", file=sys.stderr)
        return 1


def _check_identity(identity: Optional[Identity]) -> None:
    """Print who the workers run as and, if they drop privileges, warn when they could not
    import the server's code (the installation, not the file: start refuses then)."""
    print(describe_workers(identity))
    if identity is not None:
        from .workers import load_worker

        problem = probe(identity, (), (), load_worker)
        if problem:
            print(f"warning: {problem}", file=sys.stderr)


def _check_cluster(config: Config) -> Optional[str]:
    """Ask the [CLUSTER] Redis its version, as a worker does when it starts (raises
    ``ConfigError`` if it is too old); the line to print, if Redis is configured."""
    if not config.cluster.redis_url:
        return None
    from .cluster import check_config  # redis-py is loaded only when it is needed

    try:
        return check_config(config.cluster)
    except ConfigError as exc:
        raise ConfigError(exc.problem, config.path, exc.section, exc.option) from exc


# The commands that read of the file only where its server is (``locate_server``): they
# work whatever else is wrong in it, and fast with thousands of accounts.
LOCATING_COMMANDS = ("stop", "status", "sessions", "reload")


def cmd_hash_password() -> int:
    """Print the scrypt form of a password read from the terminal or standard input."""
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("cosftpctl: passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        print("cosftpctl: empty password", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def _located_anyway(config_path: str) -> Located:
    """``locate_server`` of the file at ``config_path``, each option it could not use
    printed as a configuration error; where the defaults put the server of a file that
    cannot be read (said too). Stopping or inspecting a running server must not depend on
    the file being valid: the command goes on."""
    try:
        located = locate_server(config_path)
    except ConfigError as exc:
        print(f"cosftpctl: configuration error: {exc}", file=sys.stderr)
        return locate_in_text("", os.path.abspath(config_path))
    for problem in located.problems:
        print(f"cosftpctl: configuration error: {problem}", file=sys.stderr)
    return located


def _run_located(args: argparse.Namespace) -> int:
    """Run one of ``LOCATING_COMMANDS``; return its exit status."""
    if args.command == "reload":  # the master reads the file and gives its verdict
        try:
            located = locate_server(args.config)
        except ConfigError as exc:
            print(f"cosftpctl: configuration error: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        return cmd_reload(Target.located(args.config, located), args.timeout)
    located = _located_anyway(args.config)
    target = Target.located(args.config, located)
    if args.command == "stop":
        return stop(target, args.graceful, located.graceful_timeout, located.stop_timeout)
    if args.command == "status":
        return status(target, os.path.join(located.log_dir, LOG_FILE_NAME))
    return sessions(target)


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except OtherLayoutError as exc:  # the master of the version before an upgrade
        print(f"cosftpctl: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN


def _run(args: argparse.Namespace) -> int:
    """Run the command ``args`` name; return its exit status."""
    if args.command == "hash-password":
        return cmd_hash_password()
    if args.command in LOCATING_COMMANDS:
        return _run_located(args)
    if args.command in ("bans", "unban"):  # what they read of the file: ctl.bans
        return run_bans(args.config, args.command == "unban",
                        None if args.command == "bans" or args.all else args.address)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"cosftpctl: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "run":
        return cmd_run(config, args.log_file_only)
    if args.command == "start":
        return cmd_start(config)
    if args.command == "check":
        return cmd_check(config, args.online, args.timeout)
    if args.command == "quota":
        return cmd_quota(config, args.user)
    return cmd_quota_scan(config, args.user)  # the last one


if __name__ == "__main__":
    sys.exit(main())
