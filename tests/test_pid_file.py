"""cosftpctl finds the server from any working directory, and only the real one.

Relative paths in the config file follow the file (issue 22, item 1), so start, status and
stop agree whichever directory they run from; stop exits 1 and says what holds the port when
it finds no server to stop. A zombie master or an unrelated process named in the pid file is
no running server (item 8).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
from typing import Callable

import psutil
import pytest

from .conftest import ALPHA
from .server_proc import ROOT, Account, ServerProcess, start_listening, wait_until

ACCOUNTS = [Account("ops", "ops-pw", ALPHA)]

# Starts `cosftpctl run` as its child and never reaps it once killed: a killed child stays
# a zombie, as under a container init that does not reap. A child that exits by itself (it
# could not listen: its port was taken) ends this parent too, a failed start that
# start_listening sees; waitid's WNOWAIT leaves the child unreaped while it looks.
NON_REAPING_PARENT = """
import os, signal, sys
pid = os.fork()
if pid == 0:
    out = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.execv(sys.executable, [sys.executable, "-m", "cosftp_prefork", *sys.argv[2:]])
print(pid, flush=True)
ended = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
if ended.si_code == os.CLD_EXITED:
    sys.exit(ended.si_status or 1)
while True:
    signal.pause()
"""


def _kill_masters_of(config_path: str) -> None:
    """Clean-up that does not rely on the code under test finding its server."""
    for process in psutil.process_iter(["cmdline"]):
        if f"cosftp: master [{config_path}]" in " ".join(process.info["cmdline"] or []):
            with contextlib.suppress(psutil.Error):
                process.kill()


@pytest.fixture
def make_server(emulator, tmp_path):
    """Write the config of a server in <tmp>/DIRECTORY; kill its master at the end."""
    made = []

    def make(directory: str = "etc/cosftp", port: int = 0, **optional: str) -> ServerProcess:
        proc = ServerProcess(str(tmp_path / directory), emulator.port, ACCOUNTS,
                             optional=optional, port=port)
        proc.write_config()
        made.append(proc)
        return proc
    yield make
    for proc in made:
        _kill_masters_of(proc.config_path)


@pytest.fixture
def relative(make_server):
    """A server whose config, <tmp>/etc/cosftp/vsftpd.conf, says ``log_dir = log``."""
    return make_server(log_dir="log")


@pytest.fixture
def absolute(make_server):
    """A server whose config names its log_dir by an absolute path (the pid file's place
    then never depended on the working directory)."""
    return make_server()


def _start_run(proc: ServerProcess, what: str, out: str,
               popen: Callable[[], subprocess.Popen]) -> subprocess.Popen:
    """Start ``proc``'s ``cosftpctl run`` through ``popen()`` (its output in the file
    ``out``) on a port chosen for it (``move_port``), and wait until its own processes
    listen there (``start_listening``): another test file's server on a port chosen free
    would answer the same 220. Chosen again if it was taken first ("Address already in
    use" in ``out``). Returns the process ``popen`` started."""
    def launch(port: int) -> subprocess.Popen:
        proc.move_port(port)
        with open(out, "w", encoding="utf-8"):
            pass  # the last start's output only: a lost port is read from it
        return popen()

    def lost_port(_: subprocess.Popen) -> bool:
        with open(out, encoding="utf-8", errors="replace") as handle:
            return "Address already in use" in handle.read()

    started, _ = start_listening(launch, what, lost_port=lost_port)
    return started


def _directory(tmp_path, name: str) -> str:
    """A working directory that is not the config file's."""
    (tmp_path / name).mkdir(exist_ok=True)
    return str(tmp_path / name)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _write_pid(proc: ServerProcess, pid: int) -> None:
    os.makedirs(proc.log_dir, exist_ok=True)
    with open(os.path.join(proc.log_dir, "cosftp.pid"), "w", encoding="ascii") as handle:
        handle.write(f"{pid}\n")


def test_paths_follow_the_config_file_from_any_working_directory(relative, tmp_path):
    started = relative.start_daemon(cwd=_directory(tmp_path, "a"))
    assert started.returncode == 0, started.stderr
    master = relative.daemon_pid()  # in <tmp>/etc/cosftp/log, beside the config file
    assert master is not None and not os.path.exists(tmp_path / "a" / "log")
    status = relative.ctl("status", cwd="/")
    assert status.returncode == 0 and f"master pid {master}" in status.stdout
    again = relative.ctl("start", cwd=_directory(tmp_path, "b"))
    assert again.returncode == 1 and f"already running as pid {master}" in again.stderr
    assert not os.path.exists(tmp_path / "b" / "log")
    stopped = relative.ctl("stop", cwd="/")
    assert stopped.returncode == 0 and f"stopped pid {master}" in stopped.stdout
    assert _gone(master)
    assert relative.ctl("status", cwd="/").returncode == 3
    idle = relative.ctl("stop", cwd=_directory(tmp_path, "b"))
    assert idle.returncode == 3 and f"nothing listens on port {relative.port}" in idle.stderr


def _shipped_unit() -> tuple[str, list[str]]:
    """WorkingDirectory and the cosftpctl arguments of ExecStart in the shipped unit."""
    with open(os.path.join(ROOT, "conf", "cosftp-prefork.service"), encoding="utf-8") as unit:
        lines = dict(line.strip().split("=", 1) for line in unit if "=" in line
                     and not line.startswith("#"))
    return lines["WorkingDirectory"], shlex.split(lines["ExecStart"])[1:]


def test_the_systemd_unit_as_shipped_keeps_its_log_directory(make_server, tmp_path):
    """The unit runs ``cosftpctl -c conf/vsftpd.conf run`` in /opt/cosftp-prefork: with
    ``log_dir = log`` the files stay in /opt/cosftp-prefork/log, as when relative paths
    followed the working directory, and cosftpctl finds them from anywhere."""
    working_dir, args = _shipped_unit()
    root = tmp_path / working_dir.lstrip("/")
    config = args[args.index("-c") + 1]
    proc = make_server(str(root / os.path.dirname(config)), log_dir="log")
    assert proc.config_path == str(root / config)
    out = str(tmp_path / "run.out")

    def popen() -> subprocess.Popen:
        with open(out, "wb") as output:
            return subprocess.Popen([sys.executable, "-m", "cosftp_prefork", *args],
                                    cwd=root, stdout=output, stderr=subprocess.STDOUT)
    run = _start_run(proc, "the server the unit runs", out, popen)
    try:
        wait_until(proc._serving, what=f"the server on port {proc.port}")
        with open(root / "log" / "cosftp.pid", encoding="ascii") as handle:
            assert int(handle.read()) == run.pid
        status = proc.ctl("status", cwd="/")
        assert status.returncode == 0 and f"master pid {run.pid}" in status.stdout
        assert proc.ctl("stop", cwd="/").returncode == 0
        assert run.wait(30) == 0
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()


def test_stop_fails_and_says_what_holds_the_port_when_it_finds_no_server(relative,
                                                                         make_server):
    assert relative.start_daemon().returncode == 0
    master = relative.daemon_pid()
    other = make_server("other", port=relative.port)  # another log_dir: no pid file
    holder = f"port {relative.port} is held by pid {master} (cosftp: master " \
             f"[{relative.config_path}]"
    stopped = other.ctl("stop", cwd="/")
    assert stopped.returncode == 1, stopped.stdout
    assert holder in stopped.stderr and "no pid in" in stopped.stderr
    status = other.ctl("status", cwd="/")
    assert status.returncode == 3 and holder in status.stdout
    assert relative.ctl("status", cwd="/").returncode == 0  # left alone


def test_stop_finds_its_master_by_the_port_when_the_pid_file_is_elsewhere(relative, tmp_path):
    """A master started while relative paths followed the working directory wrote its pid
    file elsewhere: status says so (4), stop finds it by the port it holds."""
    assert relative.start_daemon().returncode == 0
    master = relative.daemon_pid()
    os.rename(os.path.join(relative.log_dir, "cosftp.pid"), tmp_path / "elsewhere.pid")
    status = relative.ctl("status", cwd="/")
    assert status.returncode == 4, status.stdout
    assert f"port {relative.port} is held by pid {master}" in status.stdout
    stopped = relative.ctl("stop", cwd="/")
    assert stopped.returncode == 0, stopped.stderr
    assert f"stopping pid {master}" in stopped.stdout and f"stopped pid {master}" in stopped.stdout
    assert _gone(master)


def test_a_zombie_master_is_not_a_running_server(absolute, tmp_path):
    out = str(tmp_path / "run.out")
    parent = _start_run(absolute, "the server run by the non-reaping parent", out,
                        lambda: subprocess.Popen(
                            [sys.executable, "-c", NON_REAPING_PARENT, out,
                             "-c", absolute.config_path, "run"],
                            stdout=subprocess.PIPE, text=True))
    try:
        master = int(parent.stdout.readline())
        wait_until(lambda: absolute.daemon_pid() == master and absolute._serving(),
                   what="the server run by the non-reaping parent")
        workers = psutil.Process(master).children()
        os.kill(master, signal.SIGKILL)
        wait_until(lambda: psutil.Process(master).status() == psutil.STATUS_ZOMBIE,
                   what="the master to be a zombie")
        wait_until(lambda: all(_gone(worker.pid) for worker in workers),
                   what="the workers to follow their master")
        status = absolute.ctl("status", cwd="/")
        started = absolute.start_daemon(cwd=_directory(tmp_path, "a"))
        assert started.returncode == 0, started.stderr
        assert psutil.Process(master).status() == psutil.STATUS_ZOMBIE  # still unreaped
        assert status.returncode == 3 and f"names pid {master}, a zombie" in status.stdout
        assert absolute.daemon_pid() not in (None, master)
        assert absolute.ctl("stop", cwd="/").returncode == 0
    finally:
        parent.kill()
        parent.wait()


def test_a_pid_file_naming_another_program_is_not_a_running_server(absolute, tmp_path):
    with subprocess.Popen(["sleep", "600"]) as sleeper:
        try:
            _write_pid(absolute, sleeper.pid)
            started = absolute.start_daemon(cwd=_directory(tmp_path, "a"))
            assert started.returncode == 0, started.stderr
            assert absolute.daemon_pid() != sleeper.pid
            assert absolute.ctl("stop", cwd="/").returncode == 0
            _write_pid(absolute, sleeper.pid)
            status = absolute.ctl("status", cwd="/")
            assert status.returncode == 3
            assert f"names pid {sleeper.pid}, not its master but 'sleep 600'" in status.stdout
            stopped = absolute.ctl("stop", cwd="/")
            assert stopped.returncode == 3 and "not running" in stopped.stderr
            assert sleeper.poll() is None  # not signalled
        finally:
            sleeper.kill()
