"""Workers the master supervises: hung or over-limit workers and their stacks, with real
processes (split from test_master.py: each file runs on one test worker, and the one file
was the suite's longest; test_worker_starts.py: starting them)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys

import psutil
import pytest

from cosftp_prefork.server.scoreboard import SharedState

from .conftest import ALPHA, TWO_WORKERS, _close
from .server_proc import (
    Account,
    ServerProcess,
    wait_until,
)
from .test_commands import get, put
from .test_master import (
    live_children,
    login,
    one_session_per_worker,
    rewrite_config,
    serving,
    state_file_locked,
    state_of,
)


@pytest.fixture
def strict_health(emulator, tmp_path):
    """Hung workers found fast; two, so that one serves while the other hangs."""
    proc = ServerProcess(str(tmp_path), emulator.port, [Account("ops", "ops-pw", ALPHA)],
                         optional={"worker_timeout": "2", "health_check_interval": "1",
                                   **TWO_WORKERS})
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
    from cosftp_prefork.server.ctl.status import format_status
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
    from cosftp_prefork.server.ctl.status import format_status
    from cosftp_prefork.server.scoreboard import MasterStatus

    state = SharedState.create(str(tmp_path / "cosftp.pid.state"))
    state.write_header(MasterStatus(os.getpid(), 1, 0.0, 2, "vsftpd.conf", state="stopping"))
    assert state.master().state == "stopping" and state.master().stopping
    assert format_status(state).splitlines()[1] == (
        "state: stopping: new connections refused; the transfers in flight end with 426 "
        "(uploads parked), then the workers exit")
    state.close()


def stack_dump(log: str, pid: int) -> str:
    """The stack dump the master logged for worker ``pid`` (its first line, then the
    tab-indented rest)."""
    match = re.search(rf"\(pid {pid}\) killed by SIGABRT; the stacks of its threads when it "
                      r"died:\n(.*\n(?:\t.*\n)+)", log)
    assert match, f"no stack dump of pid {pid} in the log"
    return match.group(1)


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
                         optional={"worker_boot_timeout": "20", "health_check_interval": "1",
                                   **TWO_WORKERS})
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
        wait_until(lambda: serving(proc, 1, 1), what="workers serving")
        master = psutil.Process(proc.proc.pid)
        hung_dir = os.path.join(str(tmp_path), "hung-log")
        os.makedirs(hung_dir)
        os.mkfifo(os.path.join(hung_dir, "cosftp.log"))
        rewrite_config(proc, log_dir=hung_dir)
        master.send_signal(signal.SIGHUP)
        wait_until(lambda: len(live_children(master)) == 2, what="the new worker forked")
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
