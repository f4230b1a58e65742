"""Supervision, signals, status and server-wide limits, with real processes (reload:
test_master_reload.py; stops: test_master_stops.py; workers: test_worker_starts.py and
test_worker_health.py, which share these helpers)."""

from __future__ import annotations

import contextlib
import fcntl
import ftplib
import os
import re
import signal
import socket
import struct
from collections import Counter
from collections.abc import Callable

import psutil
import pytest

from cosftp_prefork.server.scoreboard import SharedState, state_path
from cosftp_prefork.server.scoreboard.layout import (
    BANS_AT,
    DETAILS_AT,
    HEADER,
    MASTER_STATES,
    PORTS,
    RUNNING,
)

from .conftest import ALPHA, TWO_WORKERS, _close, two_worker_daemon
from .server_proc import (
    Account,
    ServerProcess,
    wait_until,
)
from .test_commands import get, put

MIB = 1024 * 1024


def pid_file(proc: ServerProcess) -> str:
    return os.path.join(proc.log_dir, "cosftp.pid")


def master_of(proc: ServerProcess) -> psutil.Process:
    with open(pid_file(proc), encoding="ascii") as handle:
        return psutil.Process(int(handle.read()))


def live_children(master: psutil.Process) -> list[psutil.Process]:
    alive = []
    for child in master.children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child)
        except psutil.NoSuchProcess:
            pass
    return alive


def state_of(proc: ServerProcess) -> SharedState:
    state = SharedState.open(state_path(pid_file(proc)))
    assert state is not None
    return state


def sessions_by_pid(proc: ServerProcess) -> Counter:
    """Sessions per worker pid, from the shared session table."""
    return Counter(session.pid for session in state_of(proc).session_details())


def serving(proc: ServerProcess, generation: int, count: int) -> bool:
    workers = [w for w in state_of(proc).workers()
               if w.generation == generation and w.state == "serving"]
    return len(workers) == count


def no_sessions_left(proc: ServerProcess) -> None:
    """The start-up probe's connection counts against the limits until it is released."""
    wait_until(lambda: not sessions_by_pid(proc), what="probe session released")


def rewrite_config(proc: ServerProcess, **changes: str) -> None:
    with open(proc.config_path, encoding="utf-8") as handle:
        text = handle.read()
    for option, value in changes.items():
        text, count = re.subn(rf"(?m)^{option} = .*$", f"{option} = {value}", text)
        assert count, option
    with open(proc.config_path, "w", encoding="utf-8") as handle:
        handle.write(text)


def add_unresolvable_masquerade(proc: ServerProcess) -> None:
    """A config the master accepts but whose workers cannot start (the name never resolves)."""
    with open(proc.config_path, encoding="utf-8") as handle:
        text = handle.read()
    text = text.replace("[NETWORK]\n", "[NETWORK]\nmasquerade_address = nowhere.invalid\n")
    with open(proc.config_path, "w", encoding="utf-8") as handle:
        handle.write(text)


def login(proc: ServerProcess, password: str = "ops-pw") -> ftplib.FTP:
    return proc.login("ops", password)


@two_worker_daemon
def test_titles_show_generation_and_sessions(daemon):
    master = master_of(daemon)
    wait_until(lambda: serving(daemon, 1, 2), what="workers serving")
    assert " ".join(master.cmdline()).strip() == \
        f"cosftp: master [{daemon.config_path}] gen=1 workers=2"
    ftp = login(daemon)
    titles = lambda: sorted(" ".join(c.cmdline()).strip() for c in live_children(master))  # noqa: E731
    wait_until(lambda: any("sessions=1" in t for t in titles()), what="session in a title")
    assert all(re.fullmatch(r"cosftp: worker [12] gen=1 sessions=[01] up=0 down=0", t)
               for t in titles()), titles()
    _close(ftp)


@two_worker_daemon
def test_status_matches_reality(daemon):
    wait_until(lambda: serving(daemon, 1, 2), what="workers serving")
    sessions = [login(daemon) for _ in range(3)]
    wait_until(lambda: sum(w.sessions for w in state_of(daemon).workers()) == 3,
               what="3 sessions counted")
    out = daemon.ctl("status")
    assert out.returncode == 0
    master = master_of(daemon)
    assert f"master pid {master.pid}" in out.stdout and "generation 1" in out.stdout
    rows = worker_rows(out.stdout)
    assert sorted(int(r[0]) for r in rows) == sorted(c.pid for c in live_children(master))
    assert sum(int(r[4]) for r in rows) == 3
    assert all(r[3] == "serving" for r in rows)
    for ftp in sessions:
        _close(ftp)


def test_a_master_of_another_version_is_found_but_its_state_file_left_alone(daemon):
    """After an upgrade, the master still running was started by the version before, whose
    state file has another layout: cosftpctl must not read it with this one's offsets (nor
    write into it: unban), and must say which process runs and what to do."""
    wait_until(lambda: serving(daemon, 1, 1), what="workers serving")
    path = state_path(pid_file(daemon))
    # The master rewrites its header only when something changes: wait until it has
    # published "running" (its last write at start), then write what the versions before
    # the layout's fingerprint wrote: version 1.
    running = MASTER_STATES.index(RUNNING)
    wait_until(lambda: _raw_master_state(path) == running, what="the master's 'running'")
    with open(path, "r+b") as handle:
        os.pwrite(handle.fileno(), struct.pack("<I", 1), 4)
        bans = os.pread(handle.fileno(), DETAILS_AT - BANS_AT, BANS_AT)
    pid = master_of(daemon).pid
    for command in (("status",), ("sessions",), ("reload",), ("unban", "--all")):
        out = daemon.ctl(*command)
        assert out.returncode == 4, (command, out.stdout, out.stderr)
        assert f"pid {pid} runs another version of cosftp-prefork" in out.stderr, command
    with open(path, "rb") as handle:  # the workers write their slots all the time
        assert os.pread(handle.fileno(), DETAILS_AT - BANS_AT, BANS_AT) == bans
    assert daemon.ctl("stop").returncode == 0  # stop needs only the pid file


def _raw_master_state(path: str) -> int:
    """The master's state as its header stores it (``status`` shows "running" sooner)."""
    with open(path, "rb") as handle:
        return PORTS.unpack(os.pread(handle.fileno(), PORTS.size, HEADER.size))[3]


def worker_rows(status: str) -> list[list[str]]:
    """The columns of each worker's row of ``status`` (the lines that start with a pid)."""
    return [line.split() for line in status.splitlines() if re.match(r"\s*\d+\s", line)]


def status_rows(proc: ServerProcess) -> list[list[str]]:
    out = proc.ctl("status")
    assert out.returncode == 0, out.stderr
    return worker_rows(out.stdout)


def worker_of(proc: ServerProcess, ftp: ftplib.FTP) -> int:
    """The pid of the worker serving ``ftp``'s control connection."""
    return worker_serving(proc, ftp.sock)


def worker_serving(proc: ServerProcess, sock: socket.socket) -> int:
    """The pid of the worker holding the server's end of the connection ``sock``."""
    client_port = sock.getsockname()[1]
    for worker in state_of(proc).workers():
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(worker.pid)
            # net_connections since psutil 6.0, connections before (setup.py allows 5.9).
            listing = getattr(process, "net_connections", None) or process.connections
            for conn in listing("tcp"):
                if conn.raddr and conn.raddr.port == client_port:
                    return worker.pid
    raise AssertionError(f"no worker serves client port {client_port}")


def one_session_per_worker(proc: ServerProcess, log_in: Callable[[ServerProcess], ftplib.FTP]
                           = login) -> dict[int, ftplib.FTP]:
    """Log in (with ``log_in``) until every worker serves a session (the workers balance new
    ones); return one session per worker pid, the others closed."""
    sessions: dict[int, ftplib.FTP] = {}
    extra = []
    for _ in range(8):
        ftp = log_in(proc)
        pid = worker_of(proc, ftp)
        (extra if pid in sessions else []).append(ftp)
        sessions.setdefault(pid, ftp)
        if len(sessions) == 2:
            break
    for ftp in extra:
        _close(ftp)
    assert len(sessions) == 2, sessions
    return sessions


@contextlib.contextmanager
def state_file_locked(proc: ServerProcess):
    """Hold a POSIX lock on the whole state file, as a process hung while holding it would:
    a worker admitting a new connection then blocks in the kernel, for real."""
    fd = os.open(state_path(pid_file(proc)), os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


PIDS_ROOT = "/sys/fs/cgroup/pids"


def write_cgroup(directory: str, name: str, value: str) -> None:
    with open(os.path.join(directory, name), "w", encoding="ascii") as handle:
        handle.write(value)


@contextlib.contextmanager
def pids_cgroup(name: str):
    """A pids cgroup of the test's own (its path), removed afterwards: a process in it can
    fork only up to its ``pids.max``, as under a systemd unit's TasksMax. Skips without a
    writable cgroup v1 pids hierarchy (root)."""
    if not os.access(os.path.join(PIDS_ROOT, "cgroup.procs"), os.W_OK):
        pytest.skip("needs a writable cgroup v1 pids hierarchy (root)")
    group = os.path.join(PIDS_ROOT, f"cosftp-test-{os.getpid()}-{name}")
    os.mkdir(group)
    try:
        yield group
    finally:
        os.rmdir(group)


@contextlib.contextmanager
def forks_refused(pid: int):
    """``pid`` moved into a pids cgroup of its own that holds what it runs now and no more:
    its forks fail with EAGAIN, as under a systemd unit's TasksMax that a crowd of session
    threads filled. Its children stay where they are."""
    with pids_cgroup(str(pid)) as group:
        with open(f"/proc/{pid}/cgroup", encoding="ascii") as handle:
            home = next(line.split(":", 2)[2].strip() for line in handle
                        if line.split(":")[1] == "pids")
        try:
            write_cgroup(group, "cgroup.procs", str(pid))
            with open(os.path.join(group, "pids.current"), encoding="ascii") as handle:
                write_cgroup(group, "pids.max", handle.read().strip())
            yield
        finally:
            with contextlib.suppress(ProcessLookupError):  # gone (the test then says why)
                write_cgroup(PIDS_ROOT + home, "cgroup.procs", str(pid))


def test_status_counts_a_download_whose_data_connection_came_first(daemon, area):
    wait_until(lambda: serving(daemon, 1, 1), what="workers serving")
    ftp = login(daemon)
    data = os.urandom(8 * MIB)
    put(ftp, area, data)
    ftp.voidcmd("TYPE I")
    # Clients connect to the passive port before they send RETR. The NOOP's reply proves
    # the server saw the connection (already queued when NOOP was read) before the RETR.
    conn = socket.create_connection(ftp.makepasv(), timeout=30)
    ftp.voidcmd("NOOP")
    assert ftp.sendcmd(f"RETR {area}").startswith("125")  # not read yet: still in progress
    wait_until(lambda: sum(int(r[6]) for r in status_rows(daemon)) == 1,
               what="download in status")
    master = master_of(daemon)
    assert any(" down=1" in " ".join(c.cmdline()) for c in live_children(master))
    received = bytearray()
    while chunk := conn.recv(MIB):
        received.extend(chunk)
    conn.close()
    ftp.voidresp()
    assert bytes(received) == data
    wait_until(lambda: sum(int(r[6]) for r in status_rows(daemon)) == 0, what="download ended")
    rows = status_rows(daemon)
    assert sum(int(r[8]) for r in rows) >= len(data)  # BYTES_DOWN
    assert sum(int(r[7]) for r in rows) >= len(data)  # BYTES_UP
    _close(ftp)


def test_status_counts_an_append(daemon, area):
    wait_until(lambda: serving(daemon, 1, 1), what="workers serving")
    ftp = login(daemon)
    put(ftp, area, b"head-")
    ftp.voidcmd("TYPE I")
    conn = socket.create_connection(ftp.makepasv(), timeout=30)
    ftp.voidcmd("NOOP")
    assert ftp.sendcmd(f"APPE {area}").startswith("125")
    conn.sendall(b"tail")
    wait_until(lambda: sum(int(r[5]) for r in status_rows(daemon)) == 1,
               what="upload in status")
    conn.close()
    ftp.voidresp()
    wait_until(lambda: sum(int(r[5]) for r in status_rows(daemon)) == 0, what="upload ended")
    assert get(ftp, area) == b"head-tail"
    _close(ftp)


@two_worker_daemon
def test_worker_slots_count_sessions_as_they_start(daemon):
    """The workers balance their load by the session counts of their slots, which each
    worker writes as a session starts or ends (not a scan of the whole session table per
    accept): right after the greeting, before any heartbeat, they agree with the table."""
    wait_until(lambda: serving(daemon, 1, 2), what="workers serving")
    state, sessions = state_of(daemon), []
    for _ in range(4):
        sessions.append(ftplib.FTP())
        sessions[-1].connect(daemon.host, daemon.port, timeout=10)  # the 220 is read
        slots = {w.pid: w.sessions for w in state.workers() if w.sessions}
        assert slots == dict(sessions_by_pid(daemon))
    for ftp in sessions:
        _close(ftp)
    wait_until(lambda: not any(w.sessions for w in state.workers()), what="sessions ended")


@two_worker_daemon
def test_a_worker_steps_aside_before_accepting_when_a_peer_became_less_busy(daemon):
    """A worker looks at its peers' session counts before it accepts a connection, not
    only after: when a peer's sessions end, the next connection goes to that peer even if
    this worker has not looked since (between accepts it looks once a second). The peer is
    then stopped (SIGSTOP), so that only the busier worker could take the connection."""
    wait_until(lambda: serving(daemon, 1, 2), what="workers serving")
    no_sessions_left(daemon)
    by_worker: dict[int, list[ftplib.FTP]] = {}
    for _ in range(3):  # two on one worker, one on the other (the balance)
        ftp = ftplib.FTP()
        ftp.connect(daemon.host, daemon.port, timeout=30)
        by_worker.setdefault(worker_of(daemon, ftp), []).append(ftp)
    (busy, two), (idle, [one]) = sorted(by_worker.items(), key=lambda item: -len(item[1]))
    _close(one)
    state = state_of(daemon)
    wait_until(lambda: {w.pid: w.sessions for w in state.workers()}[idle] == 0,
               what="the idle worker's session ended")
    os.kill(idle, signal.SIGSTOP)
    try:
        late = socket.create_connection((daemon.host, daemon.port), timeout=30)
    finally:
        os.kill(idle, signal.SIGCONT)
    assert late.recv(100).startswith(b"220")
    assert worker_serving(daemon, late) == idle, f"worker {busy} with {len(two)} sessions took it"
    late.close()
    for ftp in two:
        _close(ftp)


@two_worker_daemon
def test_kill_worker_mid_session_others_continue(daemon):
    master = master_of(daemon)
    wait_until(lambda: serving(daemon, 1, 2), what="workers serving")
    sessions = [login(daemon) for _ in range(6)]
    by_pid = sessions_by_pid(daemon)
    assert len(by_pid) == 2 and min(by_pid.values()) >= 2, f"unbalanced: {by_pid}"
    victim = min(by_pid)
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len([c for c in live_children(master) if c.pid != victim]) == 2,
               timeout=2, what="replacement worker within 2 s")
    alive = 0
    for ftp in sessions:
        try:
            ftp.voidcmd("NOOP")
            alive += 1
        except (OSError, EOFError, ftplib.Error):
            pass
    survivor = next(pid for pid in by_pid if pid != victim)
    assert alive == by_pid[survivor]
    for ftp in sessions:
        _close(ftp)


def test_connection_limits_hold_across_workers(emulator, tmp_path):
    proc = ServerProcess(str(tmp_path), emulator.port, [Account("ops", "ops-pw", ALPHA)],
                         optional={"max_connection_num": "3", "worker_processes": "3"})
    with proc:
        wait_until(lambda: serving(proc, 1, 3), what="workers serving")
        no_sessions_left(proc)
        sessions = [login(proc) for _ in range(3)]
        with pytest.raises(ftplib.error_temp, match="421"):
            login(proc)
        _close(sessions.pop())
        wait_until(lambda: sum(w.sessions for w in state_of(proc).workers()) == 2,
                   what="session released")
        sessions.append(login(proc))
        for ftp in sessions:
            _close(ftp)


def test_per_ip_limit(emulator, tmp_path):
    proc = ServerProcess(str(tmp_path), emulator.port, [Account("ops", "ops-pw", ALPHA)],
                         # Counted in the master's state, across workers.
                         optional={"max_connections_per_ip": "2", **TWO_WORKERS})
    with proc:
        no_sessions_left(proc)
        sessions = [login(proc) for _ in range(2)]
        with pytest.raises(ftplib.error_temp, match=r"421.*same IP"):
            login(proc)
        for ftp in sessions:
            _close(ftp)


def test_usr1_reopens_log_file(daemon):
    log_path = os.path.join(daemon.log_dir, "cosftp.log")
    os.rename(log_path, log_path + ".1")
    master_of(daemon).send_signal(signal.SIGUSR1)
    wait_until(lambda: os.path.exists(log_path) and "log files reopened" in daemon.log_text(),
               what="new log file")
