"""Supervision, reload, signals, status and server-wide limits, with real processes (stops:
test_master_stops.py; workers' health: test_worker_health.py, which share these helpers)."""

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

from .conftest import ALPHA, _close
from .server_proc import (
    Account,
    ServerProcess,
    closed_port,
    connection_refused,
    release_port,
    unreachable_receiver,
    wait_until,
)
from .test_auth import BAD_HASHES
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
    wait_until(lambda: serving(daemon, 1, 2), what="workers serving")
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
    wait_until(lambda: serving(daemon, 1, 2), what="workers serving")
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
    wait_until(lambda: serving(daemon, 1, 2), what="workers serving")
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


def test_sighup_password_change_keeps_sessions(daemon, area):
    wait_until(lambda: serving(daemon, 1, 2), what="workers serving")
    old = login(daemon)
    rewrite_config(daemon, ftp_login_user_password="new-pw")
    done = daemon.ctl("reload")
    assert done.returncode == 0, done.stderr
    assert "generation 2" in done.stdout
    put(old, area, b"still works")
    assert get(old, area) == b"still works"
    with pytest.raises(ftplib.error_perm, match="530"):
        login(daemon, "ops-pw")
    fresh = login(daemon, "new-pw")
    assert get(fresh, area) == b"still works"
    wait_until(lambda: [w.generation for w in state_of(daemon).workers()
                        if w.state != "draining"] == [2, 2], what="generation 2 serving")
    _close(old)
    _close(fresh)
    wait_until(lambda: all(w.generation == 2 for w in state_of(daemon).workers()),
               what="old generation gone once its session ended")


def test_reload_with_broken_config_keeps_serving(daemon):
    wait_until(lambda: serving(daemon, 1, 2), what="workers serving")
    rewrite_config(daemon, authority="XYZ")
    done = daemon.ctl("reload")
    assert done.returncode != 0
    assert "authority" in done.stderr and "[COS_ACCOUNT_0]" in done.stderr
    os.kill(master_of(daemon).pid, signal.SIGHUP)  # straight to the master, too
    wait_until(lambda: "reload failed" in daemon.log_text(), what="reload failure logged")
    assert state_of(daemon).master().generation == 1
    _close(login(daemon))


def test_reload_prints_the_masters_own_verdict_on_a_broken_file(daemon):
    """``cosftpctl reload`` leaves the file to the master, which reads and refuses it: the
    command prints the master's message (file, section, option, problem), the one its log
    has, and exits 2, as for any invalid file."""
    wait_until(lambda: serving(daemon, 1, 2), what="workers serving")
    before = state_of(daemon).master().reloads
    rewrite_config(daemon, authority="XYZ")
    done = daemon.ctl("reload")
    assert done.returncode == 2, done
    logged = re.search(r"reload failed, still serving the previous configuration: (.*)",
                       daemon.log_text())
    assert logged, done
    assert "[COS_ACCOUNT_0] authority: must be one of" in logged.group(1)
    assert f"cosftpctl: configuration error: {logged.group(1)}; the server still serves " \
        "the previous configuration" in done.stderr, done
    master = state_of(daemon).master()
    assert (master.reloads, master.generation) == (before + 1, 1)


def test_reload_waits_for_the_verdict_as_long_as_told(daemon):
    """``reload --timeout``: a master that cannot answer (stopped) gives no verdict within
    it, exit 1, saying it may still run; the HUP it finds when it goes on still reloads."""
    wait_until(lambda: serving(daemon, 1, 2), what="workers serving")
    master = master_of(daemon)
    master.suspend()
    try:
        done = daemon.ctl("reload", "--timeout", "0.5")
    finally:
        master.resume()
    assert done.returncode == 1, done
    assert "no reload verdict within 0.5s; it may still be running" in done.stderr, done
    wait_until(lambda: serving(daemon, 2, 2), what="the reload the HUP asked for")


def test_reload_from_a_shell_without_the_servers_environment(emulator, tmp_path):
    """A secret the file takes from the server's environment (``${NAME}``, as systemd's
    EnvironmentFile gives it) need not be in the shell of whoever runs ``cosftpctl
    reload``: the master reads the file, with its own environment."""
    proc = ServerProcess(str(tmp_path), emulator.port,
                         [Account("ops", "ops-pw", ALPHA, secret_key="${COSFTP_TEST_SECRET}")],
                         env={**os.environ, "COSFTP_TEST_SECRET": "test-key"})
    with proc:
        rewrite_config(proc, ftp_login_user_password="new-pw")
        proc.env = {k: v for k, v in os.environ.items() if k != "COSFTP_TEST_SECRET"}
        done = proc.ctl("reload")
        assert done.returncode == 0, done
        _close(proc.login("ops", "new-pw"))


def add_to_optional(proc: ServerProcess, lines: str) -> None:
    with open(proc.config_path, encoding="utf-8") as handle:
        text = handle.read()
    with open(proc.config_path, "w", encoding="utf-8") as handle:
        handle.write(text.replace("[OPTIONAL]\n", f"[OPTIONAL]\n{lines}"))


def printed_warnings(done) -> list[str]:
    return [line[len("warning: "):] for line in done.stderr.splitlines()
            if line.startswith("warning: ")]


def test_reload_prints_the_warnings_the_master_logged_for_it(daemon):
    """A reload that changes what takes effect only at the next start (here
    ipv6_prefix_length) is applied, and the master's warning says what is kept: the
    operator running cosftpctl reload reads it there, as the log has it, not only in
    the log."""
    wait_until(lambda: serving(daemon, 1, 2), what="workers serving")
    add_to_optional(daemon, "ipv6_prefix_length = 56\n")
    done = daemon.ctl("reload")
    assert done.returncode == 0, done
    assert "cosftpctl: reloaded, generation 2" in done.stdout, done
    warned = printed_warnings(done)
    assert warned == ["reload: [OPTIONAL] ipv6_prefix_length takes effect at the next start "
                      "(stop, start: the saved bans are regrouped then); IPv6 clients are "
                      "still counted and banned by their /64"], done
    assert f"WARNING [{master_of(daemon).pid} master] cosftp_prefork.server.reload: " \
        f"{warned[0]}\n" in daemon.log_text()
    rewrite_config(daemon, ipv6_prefix_length="64")  # the running length: nothing to say
    again = daemon.ctl("reload")
    assert again.returncode == 0 and printed_warnings(again) == [], again


def test_reload_warnings_reach_the_terminal_escaped_and_bounded(daemon):
    """The warnings quote the file: an unknown option named with an escape sequence
    reaches the terminal escaped, as the log has it; 60 long ones are printed as far as
    the shared state holds them, then counted."""
    wait_until(lambda: serving(daemon, 1, 2), what="workers serving")
    hostile = "red\x1b[31mtext\u202egnp"
    long_names = [f"unknown_{i:02d}_{'x' * 200}" for i in range(60)]
    add_to_optional(daemon, f"{hostile} = 1\n" + "".join(f"{n} = 1\n" for n in long_names))
    done = daemon.ctl("reload")
    assert done.returncode == 0, done
    assert "\x1b" not in done.stderr and "\u202e" not in done.stderr, done
    warned = printed_warnings(done)
    assert warned[0] == f"config: {daemon.config_path} [OPTIONAL] red\\x1b[31mtext" \
        "\\u202egnp: unknown option, ignored", done
    shown = len(warned) - 2  # the hostile one, the count
    assert 10 < shown < 60, done
    assert warned[-1] == f"{60 - shown} more in the server's cosftp.log", done
    for warning, name in zip(warned[1:-1], long_names):
        assert warning == f"config: {daemon.config_path} [OPTIONAL] {name}: unknown " \
            "option, ignored"
        assert warning in daemon.log_text()


def test_reload_of_a_file_it_cannot_read_says_so(tmp_path):
    """cosftpctl reload reads the file to find the pid file: one it cannot read (not
    UTF-8 here; missing, or no permission) is said as load_config says it, exit 2, not
    taken for a file of defaults whose pid file leads nowhere ("not running", 3)."""
    proc = ServerProcess(str(tmp_path), closed_port(), [Account("ops", "ops-pw", ALPHA)])
    proc.write_config()
    with open(proc.config_path, "ab") as handle:
        handle.write(b"ftpd_banner = caf\xe9\n")
    done = proc.ctl("reload")
    assert done.returncode == 2, done
    assert f"cosftpctl: configuration error: {proc.config_path}: cannot read configuration " \
        "file: 'utf-8' codec can't decode byte 0xe9" in done.stderr, done


def test_reload_refuses_unusable_hashes_and_keeps_the_old_password(daemon):
    for name in ("n-not-power-of-two", "over-64-mib"):
        with open(daemon.config_path, encoding="utf-8") as handle:
            text = handle.read()
        with open(daemon.config_path, "w", encoding="utf-8") as handle:
            handle.write(text.replace("ftp_login_user_password = ops-pw",
                                      f"ftp_login_user_password = {BAD_HASHES[name]}"))
        done = daemon.ctl("reload")
        assert done.returncode != 0, name
        assert "[COS_ACCOUNT_0] ftp_login_user_password: is not a usable scrypt" in done.stderr
        with open(daemon.config_path, "w", encoding="utf-8") as handle:
            handle.write(text)
    _close(daemon.login("ops", "ops-pw"))


def test_reload_rolls_back_when_new_workers_cannot_start(daemon):
    wait_until(lambda: serving(daemon, 1, 2), what="workers serving")
    add_unresolvable_masquerade(daemon)
    done = daemon.ctl("reload")
    assert done.returncode == 1 and "reload failed" in done.stderr
    assert state_of(daemon).master().generation == 1
    assert serving(daemon, 1, 2)
    _close(login(daemon))


def test_upload_in_flight_survives_reload(daemon, cos, area):
    wait_until(lambda: serving(daemon, 1, 2), what="workers serving")
    ftp = login(daemon)
    ftp.voidcmd("TYPE I")
    data = os.urandom(6 * MIB + 3)
    conn = ftp.transfercmd(f"STOR {area}")
    conn.sendall(data[: 2 * MIB])
    rewrite_config(daemon, upload_thread_num="2")
    assert daemon.ctl("reload").returncode == 0
    conn.sendall(data[2 * MIB:])
    conn.close()
    assert ftp.voidresp().startswith("226")
    assert get(ftp, area) == data
    _close(ftp)


def test_reload_whose_new_port_is_taken_changes_nothing(daemon):
    """A reload to a port in use that also turns events on: refused, naming the address;
    the old configuration serves on, and no events process starts for the refused one."""
    wait_until(lambda: serving(daemon, 1, 2), what="workers serving")
    master = master_of(daemon)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rewrite_config(daemon, listen_port=str(port))
        with open(daemon.config_path, "a", encoding="utf-8") as handle:
            handle.write("\n[HOOKS]\n" + "".join(f"{k} = {v}\n"
                                                  for k, v in unreachable_receiver().items()))
        done = daemon.ctl("reload")
    assert done.returncode != 0
    assert f"127.0.0.1 port {port}" in done.stderr
    assert re.search(rf"reload failed, still serving the previous configuration: .*"
                     rf"127\.0\.0\.1 port {port}", daemon.log_text())
    # Many turns of the master's loop, where it starts a missing helper, pass while a
    # new worker starts.
    master.send_signal(signal.SIGTTIN)
    wait_until(lambda: serving(daemon, 1, 3), what="3 workers")
    assert "events process" not in daemon.log_text()
    assert state_of(daemon).master().generation == 1
    _close(login(daemon))


def test_reload_rebinds_when_port_changes(daemon):
    wait_until(lambda: serving(daemon, 1, 2), what="workers serving")
    old_port, new_port = daemon.port, closed_port()
    rewrite_config(daemon, listen_port=str(new_port))
    release_port(new_port)  # held until now: no other test file's server takes it
    assert daemon.ctl("reload").returncode == 0
    daemon.port = new_port
    _close(login(daemon))
    wait_until(lambda: connection_refused(old_port), what="old port closed")


def test_reload_adds_and_drops_listen_addresses(daemon):
    """The IPv4 listener is kept (its session too); ::1 is opened, then closed again."""
    wait_until(lambda: serving(daemon, 1, 2), what="workers serving")
    kept = login(daemon)
    rewrite_config(daemon, listen_address="127.0.0.1, ::1")
    assert daemon.ctl("reload").returncode == 0
    _close(daemon.login("ops", "ops-pw", host="::1"))
    assert kept.voidcmd("NOOP").startswith("200")
    rewrite_config(daemon, listen_address="127.0.0.1")
    assert daemon.ctl("reload").returncode == 0
    wait_until(lambda: connection_refused(daemon.port, "::1"), what="::1 closed")
    _close(login(daemon))
    _close(kept)


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
                         optional={"max_connections_per_ip": "2"})
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
