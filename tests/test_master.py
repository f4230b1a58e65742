"""Supervision, reload, signals, health and server-wide limits, with real processes."""

from __future__ import annotations

import contextlib
import fcntl
import ftplib
import os
import re
import select
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Callable

import psutil
import pytest

from cosftp_prefork.server.scoreboard import SharedState, state_path

from .conftest import ALPHA, _close
from .emulator_proc import request_log
from .server_proc import (
    ROOT,
    Account,
    ServerProcess,
    connection_refused,
    free_port,
    unreachable_receiver,
    wait_until,
)
from .test_auth import BAD_HASHES
from .test_commands import get, put

MIB = 1024 * 1024


@pytest.fixture
def daemon(emulator, tmp_path, request):
    """A daemonised server; a test may give it [OPTIONAL] settings (indirect parameter)."""
    proc = ServerProcess(str(tmp_path), emulator.port, [Account("ops", "ops-pw", ALPHA)],
                         optional=getattr(request, "param", {}))
    proc.write_config()
    started = proc.ctl("start")
    assert started.returncode == 0, started.stderr
    master_pid = proc.daemon_pid()
    yield proc
    proc.ensure_stopped(master_pid)


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


def worker_rows(status: str) -> list[list[str]]:
    """The columns of each worker's row of ``status`` (the lines that start with a pid)."""
    return [line.split() for line in status.splitlines() if re.match(r"\s*\d+\s", line)]


def status_rows(proc: ServerProcess) -> list[list[str]]:
    out = proc.ctl("status")
    assert out.returncode == 0, out.stderr
    return worker_rows(out.stdout)


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


def test_graceful_stop_lets_transfers_finish_and_refuses_new_connections(daemon, cos, area):
    """``cosftpctl stop --graceful`` (QUIT): the listener closes at once, an upload and a
    download in flight both end with 226 and whole, then every session gets 421 (an idle
    one does not hold the stop up) and the server exits."""
    wait_until(lambda: serving(daemon, 1, 2), what="workers serving")
    master = master_of(daemon)
    cos.put_object(Bucket=ALPHA, Key=f"{area}-big", Body=os.urandom(8 * MIB))
    idle, uploader, downloader = login(daemon), login(daemon), login(daemon)
    uploader.voidcmd("TYPE I")
    downloader.voidcmd("TYPE I")
    data = os.urandom(3 * MIB)
    upload = uploader.transfercmd(f"STOR {area}")
    upload.sendall(data[:MIB])
    download = downloader.transfercmd(f"RETR {area}-big")
    received = download.recv(65536)
    stopping = psutil.Popen([sys.executable, "-m", "cosftp_prefork", "-c",
                             daemon.config_path, "stop", "--graceful"], cwd=daemon.workdir,
                            stdout=subprocess.PIPE, text=True)
    wait_until(lambda: connection_refused(daemon.port), what="listener closed")
    upload.sendall(data[MIB:])
    upload.close()
    assert uploader.voidresp().startswith("226")
    assert master.is_running() and connection_refused(daemon.port)
    while chunk := download.recv(MIB):
        received += chunk
    download.close()
    assert downloader.voidresp().startswith("226")
    assert len(received) == 8 * MIB
    replies = {name: _replies_after_data_closed(ftp) for name, ftp in
               (("idle", idle), ("upload", uploader), ("download", downloader))}
    assert all([r[:4] for r in got] == ["421 "] for got in replies.values()), replies
    out, _ = stopping.communicate(timeout=60)
    assert stopping.returncode == 0 and f"stopped pid {master.pid}" in out
    master.wait(30)
    assert cos.get_object(Bucket=ALPHA, Key=area)["Body"].get_raw_stream().read() == data
    for ftp in (idle, uploader, downloader):
        ftp.close()


def parkable_upload(ftp: ftplib.FTP, cos, key: str) -> socket.socket:
    """Start a STOR of 3 MiB to ``key``; return its data connection once COS stored a part
    (a stop parks the parts stored; one not started yet when the stop came is dropped)."""
    from .test_resume import parts_of
    from .test_transfers import start_upload

    upload = start_upload(ftp, cos, key, 3 * MIB)
    wait_until(lambda: parts_of(cos, key), what="a part stored")
    return upload


def test_fast_stop_cuts_a_graceful_stop_short(daemon, cos, area):
    """``stop`` during a ``stop --graceful`` that waits for an upload: the upload is parked
    (426, then 421) and the server exits at once."""
    from .test_resume import is_parked

    wait_until(lambda: serving(daemon, 1, 2), what="workers serving")
    master = master_of(daemon)
    uploader = login(daemon)
    upload = parkable_upload(uploader, cos, area)
    graceful = psutil.Popen([sys.executable, "-m", "cosftp_prefork", "-c",
                             daemon.config_path, "stop", "--graceful"], cwd=daemon.workdir,
                            stdout=subprocess.DEVNULL)
    wait_until(lambda: connection_refused(daemon.port), what="listener closed")
    assert daemon.ctl("stop").returncode == 0
    _send_until_closed(upload)
    assert [r[:4] for r in _replies_after_data_closed(uploader)] == ["426 ", "421 "]
    assert graceful.wait(60) == 0
    master.wait(30)
    assert is_parked(cos, area)
    uploader.close()


def test_reload_during_a_graceful_stop_is_refused_and_the_transfer_finishes(daemon, cos, area):
    """A HUP while a graceful stop waits for an upload (logrotate's, a configuration
    tool's) is refused: the master keeps waiting, the upload ends with 226 and whole."""
    wait_until(lambda: serving(daemon, 1, 2), what="workers serving")
    master = master_of(daemon)
    uploader = login(daemon)
    uploader.voidcmd("TYPE I")
    data = os.urandom(2 * MIB)
    upload = uploader.transfercmd(f"STOR {area}")
    upload.sendall(data[:MIB])
    master.send_signal(signal.SIGQUIT)
    wait_until(lambda: connection_refused(daemon.port), what="listener closed")
    master.send_signal(signal.SIGHUP)
    stopped = f"master {master.pid} stopped"
    wait_until(lambda: "reload failed" in daemon.log_text() or stopped in daemon.log_text(),
               what="HUP handled")
    assert stopped not in daemon.log_text()  # it waits for the upload
    assert "reload failed, still serving the previous configuration: the server is " \
        "stopping" in daemon.log_text()
    upload.sendall(data[MIB:])
    upload.close()
    assert uploader.voidresp().startswith("226")
    master.wait(60)
    assert stopped in daemon.log_text()
    assert cos.get_object(Bucket=ALPHA, Key=area)["Body"].get_raw_stream().read() == data
    uploader.close()


def test_a_graceful_stop_waits_for_an_upload_whose_data_connection_is_to_come(daemon, cos,
                                                                              area):
    """A STOR answered 150 whose data connection the client has not opened yet is a
    transfer in flight: a graceful stop waits for it and it ends with 226 (the worker took
    the session for idle: 421, and the data connection was refused)."""
    wait_until(lambda: serving(daemon, 1, 2), what="workers serving")
    master = master_of(daemon)
    uploader = login(daemon)
    uploader.voidcmd("TYPE I")
    host, port = ftplib.parse227(uploader.sendcmd("PASV"))
    uploader.putcmd(f"STOR {area}")
    assert uploader.getresp().startswith("150")
    master.send_signal(signal.SIGQUIT)
    wait_until(lambda: connection_refused(daemon.port), what="listener closed")
    data = os.urandom(MIB)
    with socket.create_connection((host, port), timeout=30) as upload:
        upload.sendall(data)
    assert uploader.voidresp().startswith("226")
    master.wait(60)
    assert cos.get_object(Bucket=ALPHA, Key=area)["Body"].get_raw_stream().read() == data
    uploader.close()


def test_ttin_ttou_change_worker_count(daemon):
    master = master_of(daemon)
    wait_until(lambda: serving(daemon, 1, 2), what="workers serving")
    master.send_signal(signal.SIGTTIN)
    wait_until(lambda: len(live_children(master)) == 3 and serving(daemon, 1, 3),
               what="3 workers")
    master.send_signal(signal.SIGTTOU)
    wait_until(lambda: len(live_children(master)) == 2, what="2 workers")
    master.send_signal(signal.SIGTTOU)  # one at a time: identical pending signals merge
    wait_until(lambda: len(live_children(master)) == 1, what="1 worker")
    _close(login(daemon))


def test_worker_the_master_cannot_fork_is_started_later_and_the_server_serves_on(emulator,
                                                                               tmp_path):
    """The master out of descriptors (or of processes: fork's EAGAIN under a pids limit a
    crowd of session threads filled) when it starts a worker: it says so, serves on with
    the workers it has (health checks too), and starts the missing one once it can."""
    proc = ServerProcess(str(tmp_path), emulator.port, [Account("ops", "ops-pw", ALPHA)],
                         optional={"health_check_interval": "1"})
    with proc:
        wait_until(lambda: serving(proc, 1, 2), what="workers serving")
        master = psutil.Process(proc.proc.pid)
        limits = master.rlimit(psutil.RLIMIT_NOFILE)
        master.rlimit(psutil.RLIMIT_NOFILE, (3, limits[1]))  # no new descriptor past stdio
        try:
            master.send_signal(signal.SIGTTIN)
            # Two attempts: seconds apart, health checks ran between them.
            wait_until(lambda: proc.log_text().count("cannot start worker 3") == 2
                       or f"master {master.pid} stopped" in proc.log_text(),
                       timeout=60, what="two failed starts of worker 3 logged")
            assert f"master {master.pid} stopped" not in proc.log_text()
            _close(login(proc))
        finally:
            master.rlimit(psutil.RLIMIT_NOFILE, limits)
        wait_until(lambda: serving(proc, 1, 3), timeout=60, what="worker 3 serving")


def test_ttin_stops_at_max_worker_processes_and_ttou_at_one(emulator, tmp_path):
    """SIGTTIN past max_worker_processes, SIGTTOU below one worker: each refused with a
    warning naming the limit; the master stays up and serves."""
    proc = ServerProcess(str(tmp_path), emulator.port, [Account("ops", "ops-pw", ALPHA)],
                         optional={"worker_processes": "1", "max_worker_processes": "2"})
    with proc:
        wait_until(lambda: serving(proc, 1, 1), what="one worker serving")
        master = psutil.Process(proc.proc.pid)
        master.send_signal(signal.SIGTTIN)
        wait_until(lambda: serving(proc, 1, 2), what="2 workers")
        master.send_signal(signal.SIGTTIN)
        wait_until(lambda: "SIGTTIN: already 2 workers, the most max_worker_processes (2) "
                   "allows; none added" in proc.log_text() or len(live_children(master)) > 2,
                   what="the second SIGTTIN handled")
        assert len(live_children(master)) == 2
        master.send_signal(signal.SIGTTOU)
        wait_until(lambda: len(live_children(master)) == 1, what="1 worker")
        master.send_signal(signal.SIGTTOU)
        wait_until(lambda: "SIGTTOU: already 1 worker, the fewest there can be; none "
                   "removed" in proc.log_text(), what="the second SIGTTOU handled")
        assert serving(proc, 1, 1) and len(live_children(master)) == 1
        _close(login(proc))


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


def test_helper_the_master_cannot_fork_is_started_later_and_the_server_serves_on(emulator,
                                                                               tmp_path):
    """The events process dies while the master cannot fork (EAGAIN): the master says so
    with the errno, serves on and tries again, and starts it once it can."""
    proc = ServerProcess(str(tmp_path), emulator.port, [Account("ops", "ops-pw", ALPHA)],
                         hooks=unreachable_receiver())
    with proc:
        wait_until(lambda: serving(proc, 1, 2) and "started events process" in proc.log_text(),
                   what="workers and the events process running")
        events = int(re.search(r"started events process \(pid (\d+)\)",
                               proc.log_text())[1])
        master = psutil.Process(proc.proc.pid)
        stopped = f"master {master.pid} stopped"
        with forks_refused(master.pid):
            os.kill(events, signal.SIGKILL)
            wait_until(lambda: proc.log_text().count("cannot start events process") == 2
                       or stopped in proc.log_text() or proc.proc.poll() is not None,
                       timeout=60, what="two failed starts of the events process logged")
            assert stopped not in proc.log_text() and proc.proc.poll() is None, proc.output()
            assert "cannot start events process: [Errno 11] " in proc.log_text()
            _close(login(proc))
        wait_until(lambda: proc.log_text().count("started events process") == 2, timeout=60,
                   what="the events process started again")


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
    old_port, new_port = daemon.port, free_port()
    rewrite_config(daemon, listen_port=str(new_port))
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


def test_crash_looping_workers_back_off_then_master_stops(emulator, tmp_path):
    """Here every worker is killed as soon as it appears."""
    proc = ServerProcess(str(tmp_path), emulator.port, [Account("ops", "ops-pw", ALPHA)])
    with proc:
        master = psutil.Process(proc.proc.pid)

        def kill_workers() -> bool:
            if proc.proc.poll() is not None:
                return True
            for child in live_children(master):
                with contextlib.suppress(psutil.Error):
                    child.kill()
            return False

        wait_until(kill_workers, timeout=120, what="the master to give up")
    assert proc.proc.returncode == 1
    log = proc.log_text()
    assert "failed 5 times in a row" in log
    assert log.count("started worker") <= 2 * 5 + 2  # backed off instead of spinning
    assert re.search(r"restarting in [1-9]", log)


def test_worker_that_cannot_start_stops_the_master_at_once(emulator, tmp_path):
    proc = ServerProcess(str(tmp_path), emulator.port, [Account("ops", "ops-pw", ALPHA)])
    proc.write_config()
    add_unresolvable_masquerade(proc)
    assert proc.ctl("run", timeout=120).returncode == 1
    log = proc.log_text()
    assert "'nowhere.invalid' does not resolve" in log
    assert "cannot start with this configuration; stopping the server" in log
    assert "restarting in" not in log


@pytest.fixture
def strict_health(emulator, tmp_path):
    proc = ServerProcess(str(tmp_path), emulator.port, [Account("ops", "ops-pw", ALPHA)],
                         optional={"worker_timeout": "2", "health_check_interval": "1"})
    with proc:
        yield proc


def test_stopped_worker_is_sigkilled_after_the_abort_grace(strict_health):
    """A SIGSTOPped worker cannot run its SIGABRT handler: SIGKILL follows, and the log says
    why there is no stack dump."""
    proc = strict_health
    wait_until(lambda: serving(proc, 1, 2), what="workers serving")
    master = psutil.Process(proc.proc.pid)
    stuck = live_children(master)[0]
    stuck.suspend()  # SIGSTOP: alive, but its heartbeat stops
    wait_until(lambda: not stuck.is_running() or stuck.status() == psutil.STATUS_ZOMBIE,
               timeout=30, what="stuck worker killed")
    wait_until(lambda: len(live_children(master)) == 2, what="replacement")
    log = proc.log_text()
    assert re.search(rf"pid {stuck.pid}\) sent no heartbeat for \d+s \(worker_timeout=2\); "
                     "sent SIGABRT", log)
    assert f"(pid {stuck.pid}) still running 5s after SIGABRT; sending SIGKILL" in log
    assert f"(pid {stuck.pid}) killed by SIGKILL without a stack dump" in log
    _close(login(proc))


def test_status_points_to_where_an_aborting_workers_stacks_go(tmp_path):
    """The master marks a worker it sent SIGABRT as ``aborting``; status names the log."""
    from cosftp_prefork.server.cli import format_status
    from cosftp_prefork.server.scoreboard import ABORTING, SERVING, MasterStatus

    state = SharedState.create(str(tmp_path / "cosftp.pid.state"))
    state.write_header(MasterStatus(os.getpid(), 1, 0.0, 2, "vsftpd.conf"))
    for slot, state_now in enumerate((SERVING, SERVING)):
        state.write_slot(slot, 1000 + slot, slot + 1, 1, state_now, 0.0, 1.0, (0, 0, 0, 0, 0))
    state.set_state(1, ABORTING)
    shown = format_status(state, "/var/log/cosftp/cosftp.log").splitlines()
    assert re.match(r"\s*1001\s+1\s+2\s+aborting\s", shown[3])
    assert shown[-1] == ("aborting: sent SIGABRT to hung worker(s) 1001; the stacks of their "
                        "threads go to /var/log/cosftp/cosftp.log, then SIGKILL")
    state.close()


def test_status_says_a_fast_stop_cuts_the_transfers(tmp_path):
    """The master's state goes through the state file's header; status explains it."""
    from cosftp_prefork.server.cli import format_status
    from cosftp_prefork.server.scoreboard import MasterStatus

    state = SharedState.create(str(tmp_path / "cosftp.pid.state"))
    state.write_header(MasterStatus(os.getpid(), 1, 0.0, 2, "vsftpd.conf", state="stopping"))
    assert state.master().state == "stopping" and state.master().stopping
    assert format_status(state).splitlines()[1] == (
        "state: stopping: new connections refused; the transfers in flight end with 426 "
        "(uploads parked), then the workers exit")
    state.close()


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


def stack_dump(log: str, pid: int) -> str:
    """The stack dump the master logged for worker ``pid`` (its first line, then the
    tab-indented rest)."""
    match = re.search(rf"\(pid {pid}\) killed by SIGABRT; the stacks of its threads when it "
                      r"died:\n(.*\n(?:\t.*\n)+)", log)
    assert match, f"no stack dump of pid {pid} in the log"
    return match.group(1)


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


def test_hung_worker_dumps_its_stacks_and_is_replaced(strict_health, area):
    """A worker blocked for real (its main thread waits on a lock someone else holds) is
    sent SIGABRT: its faulthandler stack dump lands in the log, it is replaced, and the
    client on the other worker never notices."""
    proc = strict_health
    wait_until(lambda: serving(proc, 1, 2), what="workers serving")
    sessions = one_session_per_worker(proc)
    with state_file_locked(proc):
        # The worker that accepts this connection blocks admitting it, before the 220.
        victim = socket.create_connection((proc.host, proc.port), timeout=30)
        wait_until(lambda: re.search(r"\(pid (\d+)\) sent no heartbeat for \d+s "
                                     r"\(worker_timeout=2\); sent SIGABRT", proc.log_text()),
                   timeout=30, what="hung worker aborted")
        hung = int(re.search(r"\(pid (\d+)\) sent no heartbeat", proc.log_text()).group(1))
        survivor_pid = next(pid for pid in sessions if pid != hung)
        survivor = sessions[survivor_pid]
        assert survivor.voidcmd("NOOP").startswith("200")
    # Logged right after the dump, so the dump is whole.
    wait_until(lambda: f"(pid {hung}) exited unexpectedly" in proc.log_text(),
               what="hung worker reaped")
    dump = stack_dump(proc.log_text(), hung)
    assert "Current thread" in dump and dump.count("Thread 0x") >= 1  # every thread
    assert "in handle_accepted" in dump and "in lockf" not in dump  # Python frames only
    master = psutil.Process(proc.proc.pid)
    wait_until(lambda: len(live_children(master)) == 2 and hung not in
               {c.pid for c in live_children(master)}, what="replacement")
    assert survivor_pid in {c.pid for c in live_children(master)}
    put(survivor, area, b"the other worker never noticed")
    assert get(survivor, area) == b"the other worker never noticed"
    _close(survivor)
    victim.close()
    fresh = login(proc)
    assert get(fresh, area) == b"the other worker never noticed"
    _close(fresh)


def test_worker_hung_before_its_first_heartbeat_is_timed_out(emulator, tmp_path, area):
    """A reload whose new workers block before their first heartbeat (their new log_dir's
    log file is a FIFO nobody reads, like a hung mount): one is aborted with a stack dump
    after worker_boot_timeout, the reload rolls back, the other new one is stopped, and the
    old workers serve on."""
    proc = ServerProcess(str(tmp_path), emulator.port, [Account("ops", "ops-pw", ALPHA)],
                         # 20 s: on a loaded machine a new worker's imports alone took
                         # over 3 s (and over 10 s at load 20 on 2 cores), and it was
                         # aborted before it reached the log file.
                         optional={"worker_boot_timeout": "20", "health_check_interval": "1"})
    with proc:
        wait_until(lambda: serving(proc, 1, 2), what="workers serving")
        master = psutil.Process(proc.proc.pid)
        old = {c.pid for c in live_children(master)}
        client = login(proc)
        hung_dir = os.path.join(str(tmp_path), "hung-log")
        os.makedirs(hung_dir)
        os.mkfifo(os.path.join(hung_dir, "cosftp.log"))
        rewrite_config(proc, log_dir=hung_dir)
        master.send_signal(signal.SIGHUP)
        # The first hung worker aborted rolls the reload back (or, on a loaded machine, the
        # reload's deadline does); a worker told to stop while it still sets up exits at once.
        wait_until(lambda: re.search(r"reload failed \(.*\); rolling back to generation 1",
                                     proc.log_text()), timeout=60, what="the roll-back")
        wait_until(lambda: {c.pid for c in live_children(master)} == old, timeout=30,
                   what="only the old workers left")
        log = proc.log_text()
        assert re.search(r"not serving \d+s after its start \(worker_boot_timeout=20\); sent "
                         r"SIGABRT", log)
        new = {int(pid) for pid in re.findall(r"\(pid (\d+)\) not serving", log)}
        for pid in new:
            # Gone from the children is not yet reaped: the master logs the dump when it reaps.
            wait_until(lambda pid=pid: f"(pid {pid}) killed by SIGABRT" in proc.log_text(),
                       what=f"the stack dump of pid {pid}")
            assert "in setup_logging" in stack_dump(proc.log_text(), pid)
        put(client, area, b"old generation serving")
        assert get(client, area) == b"old generation serving"
        _close(client)


def test_a_stop_does_not_wait_for_workers_hung_in_their_set_up(emulator, tmp_path):
    """A reload's new workers blocked before they serve (their log file a FIFO nobody reads)
    hold no session: a stop (SIGTERM) ends them at once, and with them the master, rather
    than waiting for a set-up that never ends or worker_boot_timeout; nothing is left."""
    proc = ServerProcess(str(tmp_path), emulator.port, [Account("ops", "ops-pw", ALPHA)],
                         optional={"worker_boot_timeout": "600"})
    with proc:
        wait_until(lambda: serving(proc, 1, 2), what="workers serving")
        master = psutil.Process(proc.proc.pid)
        hung_dir = os.path.join(str(tmp_path), "hung-log")
        os.makedirs(hung_dir)
        os.mkfifo(os.path.join(hung_dir, "cosftp.log"))
        rewrite_config(proc, log_dir=hung_dir)
        master.send_signal(signal.SIGHUP)
        wait_until(lambda: len(live_children(master)) == 4, what="the new workers forked")
        everyone = [master, *live_children(master)]
        master.send_signal(signal.SIGTERM)
        wait_until(lambda: not [p for p in everyone if p.is_running() and
                                p.status() != psutil.STATUS_ZOMBIE],
                   what="the master and every worker gone")


def test_worker_hung_in_its_import_leaves_its_stacks(emulator, tmp_path):
    """A worker that hangs while it imports the server's code (a hung mount under the
    installation; here a pyftpdlib that opens a FIFO nobody writes) is aborted after
    worker_boot_timeout with its stacks in the log, the import among them."""
    stub = tmp_path / "stub"
    (stub / "pyftpdlib").mkdir(parents=True)
    fifo = tmp_path / "never-written"
    os.mkfifo(fifo)
    (stub / "pyftpdlib" / "__init__.py").write_text(f"open({str(fifo)!r}).read()\n")
    proc = ServerProcess(str(tmp_path), emulator.port, [Account("ops", "ops-pw", ALPHA)],
                         optional={"worker_boot_timeout": "3", "health_check_interval": "1",
                                   "worker_processes": "1"})
    proc.write_config()
    master = psutil.Popen([sys.executable, "-m", "cosftp_prefork", "-c", proc.config_path,
                           "run"], cwd=proc.workdir, env={**os.environ, "PYTHONPATH": str(stub)},
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: os.path.exists(os.path.join(proc.log_dir, "cosftp.log")) and
                   re.search(r"\(pid \d+\) killed by SIGABRT", proc.log_text()),
                   timeout=60, what="the hung worker aborted and reaped")
        log = proc.log_text()
        pid = int(re.search(r"\(pid (\d+)\) not serving \d+s after its start", log)[1])
        assert "in load_worker" in stack_dump(log, pid)
    finally:
        for child in master.children(recursive=True):  # blocked in the import: no PDEATHSIG
            child.kill()
        master.kill()
        master.wait(30)


def test_worker_over_rss_limit_is_recycled_gracefully(emulator, tmp_path, area):
    proc = ServerProcess(str(tmp_path), emulator.port, [Account("ops", "ops-pw", ALPHA)],
                         optional={"worker_max_rss": "1", "health_check_interval": "1",
                                   "worker_processes": "1"})
    with proc:
        ftp = login(proc)
        first = state_of(proc).workers()[0].pid
        wait_until(lambda: f"(pid {first}) uses" in proc.log_text(), what="recycle logged")
        assert re.search(rf"pid {first}\) uses \d+ MiB RSS \(worker_max_rss=1\)",
                         proc.log_text())
        put(ftp, area, b"the draining worker still serves its session")
        assert get(ftp, area) == b"the draining worker still serves its session"
        _close(ftp)
        fresh = login(proc)
        assert get(fresh, area) == b"the draining worker still serves its session"
        _close(fresh)


def test_usr1_reopens_log_file(daemon):
    log_path = os.path.join(daemon.log_dir, "cosftp.log")
    os.rename(log_path, log_path + ".1")
    master_of(daemon).send_signal(signal.SIGUSR1)
    wait_until(lambda: os.path.exists(log_path) and "log files reopened" in daemon.log_text(),
               what="new log file")


def _replies_after_data_closed(ftp: ftplib.FTP) -> list[str]:
    """The replies the server sent on the control connection until it closed it."""
    replies = []
    try:
        while True:
            line = ftp.getline()
            if not line:
                return replies
            replies.append(line)
    except (EOFError, OSError):
        return replies


def _drain(conn: socket.socket) -> None:
    """Read (a download) until the server closes the data connection."""
    try:
        while conn.recv(1024 * 1024):
            pass
    except OSError:
        pass
    conn.close()


def _send_until_closed(conn: socket.socket) -> None:
    """Keep uploading until the server closes the data connection."""
    try:
        while True:
            conn.sendall(os.urandom(256 * 1024))
    except OSError:
        pass
    conn.close()


def test_stop_parks_an_upload_whose_part_cos_takes_long_to_store(daemon, emulator, cos, area):
    """A fast stop parks an upload once the parts COS is receiving are stored, however long
    that takes within the stop's time (the master allows 30 s): the worker waited 5 s for
    each session thread (pyftpdlib's join_timeout), then exited under it, and the upload
    was lost (not parked). COS holds the upload's first requests for 8 s here (the
    emulator's rendezvous): its live marker, so its first part waits for a pool thread when
    the stop comes (which the park cancelled, under load, then aborted the upload)."""
    from .test_resume import is_parked

    wait_until(lambda: serving(daemon, 1, 2), what="workers serving")
    uploader = login(daemon)
    emulator.rendezvous(contains=area, kind="PUT", parties=100, timeout=8)
    uploader.voidcmd("TYPE I")
    upload = uploader.transfercmd(f"STOR {area}")
    upload.sendall(os.urandom(3 * MIB))
    wait_until(lambda: any(entry["kind"] == "PUT" and entry["end"] is None
                           for entry in request_log(emulator.port, area)),
               what="a part held by COS")
    master = master_of(daemon)
    workers = live_children(master)
    master.terminate()
    _send_until_closed(upload)
    assert [r[:4] for r in _replies_after_data_closed(uploader)] == ["426 ", "421 "]
    assert not psutil.wait_procs([master, *workers], timeout=60)[1], "still running"
    assert is_parked(cos, area)
    uploader.close()


# A fast stop's time here, stop_timeout (30 s by default): its workers close their sessions
# 5 s before it, and write their parks in the last 5 s of that.
SHORT_STOP = {"stop_timeout": "15"}


@pytest.mark.parametrize("daemon, signum, allowed",
                         [(SHORT_STOP, signal.SIGTERM, 15),
                          ({**SHORT_STOP, "graceful_timeout": "1"}, signal.SIGQUIT, 16)],
                         ids=["stop", "graceful stop past graceful_timeout"],
                         indirect=["daemon"])
def test_stop_parks_the_stored_parts_of_uploads_cos_holds_past_its_time(daemon, signum, allowed,
                                                                        emulator, cos, area):
    """A fast stop has one deadline for all its sessions (the master allows stop_timeout):
    uploads whose part 2 COS holds longer than that are parked with part 1 (what COS stored)
    before it. The worker waited for each session thread in turn (25 s each) and each park
    waited for its part without end: the master SIGABRTed the worker and no upload was
    parked. A graceful stop whose transfers outlast graceful_timeout ends the same way, and
    the master allows it the fast stop's time after graceful_timeout (it allowed 10 s)."""
    from .test_resume import park_records, parts_of

    wait_until(lambda: serving(daemon, 1, 2), what="workers serving")
    keys = [f"{area}-{n}" for n in range(4)]  # two sessions at least in one worker
    emulator.rendezvous(contains=area, kind="PUT", part=2, parties=100, timeout=90)
    sessions, uploads = [login(daemon) for _ in keys], []
    for ftp, key in zip(sessions, keys):
        ftp.voidcmd("TYPE I")
        uploads.append(ftp.transfercmd(f"STOR {key}"))
        uploads[-1].sendall(os.urandom(3 * MIB))
    wait_until(lambda: all(parts_of(cos, key) for key in keys), what="part 1 of each stored")
    held = lambda: {entry["target"] for entry in request_log(emulator.port, area)  # noqa: E731
                    if entry["kind"] == "PUT" and entry["end"] is None}
    wait_until(lambda: held() == set(keys), what="part 2 of each held by COS")
    master = master_of(daemon)
    workers = live_children(master)
    master.send_signal(signum)
    for ftp, upload in zip(sessions, uploads):
        _send_until_closed(upload)
        assert [r[:4] for r in _replies_after_data_closed(ftp)] == ["426 ", "421 "]
        ftp.close()
    assert not psutil.wait_procs([master, *workers], timeout=60)[1], "still running"
    log = daemon.log_text()
    assert "SIGABRT" not in log
    assert f"stopping 2 workers; those still running in {allowed}s are aborted" in log
    assert re.search(r"worker \d closing \d sessions, for 10s at most", log)
    assert [[r["size"] for r in park_records(cos, key)] for key in keys] == [[MIB]] * len(keys)


@pytest.mark.parametrize("daemon", [{"resume_ttl": "4", **SHORT_STOP}],  # a sweep a second
                         indirect=True)
def test_stop_does_not_wait_for_a_janitor_sweep_cos_holds(daemon, emulator):
    """A stopping worker exits by its deadline even while its janitor's sweep waits on COS:
    it waited for the sweep to end, and the master SIGABRTed it stop_timeout after the
    TERM."""
    wait_until(lambda: serving(daemon, 1, 2), what="workers serving")
    emulator.rendezvous(contains=".cosftp/", kind="LIST", parties=100, timeout=45)
    try:
        wait_until(lambda: any(entry["kind"] == "LIST" and entry["end"] is None
                               for entry in request_log(emulator.port, ".cosftp/")),
                   what="a janitor sweep held by COS")
        master = master_of(daemon)
        workers = live_children(master)
        master.terminate()
        assert not psutil.wait_procs([master, *workers], timeout=60)[1], "still running"
    finally:  # the held sweep is the stopped worker's; later listings go their way
        emulator.rendezvous(contains="\0none", parties=1, timeout=1)
    assert "SIGABRT" not in daemon.log_text()


def test_help_and_readme_say_what_term_and_quit_do():
    """TERM parks uploads (as the guarantees say), it does not abort them; QUIT lets
    transfers finish and is what stop --graceful sends."""
    shown = subprocess.run([sys.executable, "-m", "cosftp_prefork", "--help"],
                           capture_output=True, text=True, check=True).stdout
    term = next(line for line in shown.splitlines() if line.strip().startswith("TERM"))
    assert "426" in term and "parked" in shown and "abort" not in term
    quit_help = shown[shown.index("  QUIT"):shown.index("  HUP")]
    assert "stop --graceful" in quit_help and "226" in quit_help and "refused" in quit_help
    stop_help = subprocess.run([sys.executable, "-m", "cosftp_prefork", "stop", "--help"],
                               capture_output=True, text=True, check=True).stdout
    assert "--graceful" in stop_help
    with open(os.path.join(ROOT, "docs", "operations.md"), encoding="utf-8") as handle:
        rows = [line for line in handle if line.startswith(("| TERM", "| QUIT"))]
    assert "parked" in rows[0] and "`426`" in rows[0] and "`421`" in rows[0]
    assert "abort" not in rows[0] and "stop --graceful" in rows[1] and "`226`" in rows[1]


@pytest.mark.parametrize("how", ["stop", "kill -9 master"])
def test_stop_tells_idle_clients_421_and_transfers_426(daemon, cos, area, how):
    """TERM (cosftpctl stop), and a master killed with -9 (its workers get TERM), park the
    upload in flight, end the download in flight with 426 and close every control
    connection with 421, logged in or not."""
    from .test_resume import is_parked

    wait_until(lambda: serving(daemon, 1, 2), what="workers serving")
    cos.put_object(Bucket=ALPHA, Key=f"{area}-big", Body=os.urandom(48 * MIB))
    idle, fresh = login(daemon), ftplib.FTP()
    fresh.connect("127.0.0.1", daemon.port, timeout=30)
    downloader, uploader = login(daemon), login(daemon)
    downloader.voidcmd("TYPE I")
    download = downloader.transfercmd(f"RETR {area}-big")
    assert download.recv(65536)  # then stops reading: the server's send buffer fills
    upload = parkable_upload(uploader, cos, area)
    master = master_of(daemon)
    workers = live_children(master)
    if how == "stop":
        stopping = psutil.Popen([sys.executable, "-m", "cosftp_prefork", "-c",
                                 daemon.config_path, "stop"], cwd=daemon.workdir)
    else:
        master.kill()
    # The download's reply comes once the server gave up on it; only then read its data.
    assert select.select([downloader.sock], [], [], 60)[0], "no reply to the download"
    _drain(download)
    _send_until_closed(upload)
    replies = {name: _replies_after_data_closed(ftp) for name, ftp in
               (("idle", idle), ("fresh", fresh), ("download", downloader),
                ("upload", uploader))}
    if how == "stop":
        assert stopping.wait(60) == 0
    assert not psutil.wait_procs(workers, timeout=60)[1], "workers still running"
    for name in ("idle", "fresh"):
        assert [r[:4] for r in replies[name]] == ["421 "], replies
    for name in ("download", "upload"):
        assert [r[:4] for r in replies[name]] == ["426 ", "421 "], replies
    assert "shutting down" in replies["upload"][0]
    assert is_parked(cos, area)
    for ftp in (idle, fresh, downloader, uploader):
        ftp.close()
