"""Workers the master starts: TTIN/TTOU, forks the kernel refuses, crash loops, a worker
that cannot start, with real processes (split from test_worker_health.py, with the same
helpers of test_master.py, so that the two run on two xdist workers)."""

from __future__ import annotations

import contextlib
import os
import re
import signal

import psutil

from .conftest import ALPHA, TWO_WORKERS, _close, two_worker_daemon
from .server_proc import (
    Account,
    ServerProcess,
    unreachable_receiver,
    wait_until,
)
from .test_master import (
    add_unresolvable_masquerade,
    forks_refused,
    live_children,
    login,
    master_of,
    serving,
)


@two_worker_daemon
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
                         optional={"health_check_interval": "1", **TWO_WORKERS})
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


def test_helper_the_master_cannot_fork_is_started_later_and_the_server_serves_on(emulator,
                                                                               tmp_path):
    """The events process dies while the master cannot fork (EAGAIN): the master says so
    with the errno, serves on and tries again, and starts it once it can."""
    proc = ServerProcess(str(tmp_path), emulator.port, [Account("ops", "ops-pw", ALPHA)],
                         hooks=unreachable_receiver())
    with proc:
        wait_until(lambda: serving(proc, 1, 1) and "started events process" in proc.log_text(),
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
    # Backed off instead of spinning: its one worker started once, then once per failure.
    assert log.count("started worker") <= 5 + 1
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
