"""cosftpctl start/stop/status/check, the pid file, process titles and worker clean-up."""

from __future__ import annotations

import ftplib
import os
import signal
import socket
import subprocess
import sys

import psutil
import pytest

from cosftp_prefork.server.scoreboard import SharedState, state_path

from .conftest import ALPHA, TWO_WORKERS
from .server_proc import ROOT, Account, ServerProcess, wait_until
from .test_master import add_unresolvable_masquerade


@pytest.fixture
def daemon(emulator, tmp_path):
    proc = ServerProcess(str(tmp_path), emulator.port, [Account("ops", "ops-pw", ALPHA)])
    proc.write_config()
    yield proc
    proc.ensure_stopped(proc.daemon_pid())


def pid_file(proc: ServerProcess) -> str:
    return os.path.join(proc.log_dir, "cosftp.pid")


def master_process(proc: ServerProcess) -> psutil.Process:
    with open(pid_file(proc), encoding="ascii") as handle:
        return psutil.Process(int(handle.read()))


def test_start_status_stop(daemon):
    assert daemon.ctl("status").returncode == 3
    started = daemon.start_daemon()
    assert started.returncode == 0, started.stderr
    status = daemon.ctl("status")
    assert status.returncode == 0 and "master pid" in status.stdout
    master = master_process(daemon)
    workers = master.children()
    assert len(workers) == 1
    with ftplib.FTP() as ftp:
        ftp.connect("127.0.0.1", daemon.port, timeout=10)
        ftp.login("ops", "ops-pw")
    again = daemon.ctl("start")
    assert again.returncode == 1 and "already running" in again.stderr
    assert daemon.ctl("stop").returncode == 0
    assert daemon.ctl("status").returncode == 3
    assert not os.path.exists(pid_file(daemon))
    for proc in [master, *workers]:
        assert not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE


def test_status_sessions_and_stop_read_only_where_the_server_is(daemon):
    """status, sessions and stop read only the options that say where the server is
    ([OPTIONAL], [NETWORK]), not the accounts, whose validity is check's and reload's to
    judge: a server started with its secrets in its environment (systemd's
    EnvironmentFile) is inspected and stopped from a shell without them, and after an
    account section was broken further down, with no error about either."""
    daemon.accounts = [Account("ops", "ops-pw", ALPHA, secret_key="${OPS_SECRET_KEY}")]
    daemon.env = {**os.environ, "OPS_SECRET_KEY": "test-key"}
    daemon.write_config()
    assert daemon.start_daemon().returncode == 0
    daemon.env = {name: value for name, value in os.environ.items()
                  if name != "OPS_SECRET_KEY"}  # the operator's shell
    with open(daemon.config_path, "a", encoding="utf-8") as handle:
        handle.write("\n[COS_ACCOUNT_late]\nauthority = X\n")
    status = daemon.ctl("status")
    assert status.returncode == 0 and "master pid" in status.stdout, status
    assert status.stderr == "", status
    sessions = daemon.ctl("sessions")
    assert sessions.returncode == 0 and sessions.stderr == "", sessions
    checked = daemon.ctl("check")
    assert checked.returncode == 2, checked
    assert "environment variable OPS_SECRET_KEY is not set" in checked.stderr, checked
    stopped = daemon.ctl("stop")
    assert stopped.returncode == 0 and stopped.stderr == "", stopped
    assert "stopped pid" in stopped.stdout, stopped


def test_reload_finds_a_server_whose_log_dir_comes_from_the_environment(daemon):
    """reload, status, sessions and stop read where the pid file is as load_config reads
    it, ${NAME} from the environment included (reload took the name for a directory)."""
    daemon.optional = {"log_dir": "${OPS_LOG_DIR}"}
    daemon.env = {**os.environ, "OPS_LOG_DIR": daemon.log_dir}
    daemon.write_config()
    assert daemon.start_daemon().returncode == 0
    for command in ("reload", "status", "sessions", "stop"):
        done = daemon.ctl(command)
        assert done.returncode == 0, (command, done)


def test_start_returns_once_every_worker_serves(daemon):
    daemon.optional = TWO_WORKERS  # every one, not the first
    daemon.write_config()
    assert daemon.start_daemon().returncode == 0
    state = SharedState.open(state_path(pid_file(daemon)))
    assert state is not None
    assert [w.state for w in state.workers()] == ["serving", "serving"]
    with ftplib.FTP() as ftp:
        ftp.connect("127.0.0.1", daemon.port, timeout=10)
        ftp.login("ops", "ops-pw")


def test_start_fails_with_the_reason_when_workers_cannot_start(daemon):
    add_unresolvable_masquerade(daemon)
    started = daemon.ctl("start")
    assert started.returncode == 1, started.stdout
    assert "started" not in started.stdout
    assert "server exited with status 1" in started.stderr
    assert "'nowhere.invalid' does not resolve" in started.stderr
    assert daemon.ctl("status").returncode == 3
    assert "failed 5 times" not in daemon.log_text()  # stopped at once, not after a crash loop
    checked = daemon.ctl("check")
    assert checked.returncode == 2
    assert "[NETWORK] masquerade_address: 'nowhere.invalid' does not resolve" in checked.stderr


def test_start_on_a_port_in_use_fails_with_the_reason(daemon):
    with socket.create_server(("127.0.0.1", daemon.port)):
        started = daemon.ctl("start")
    assert started.returncode == 1
    assert f"cannot listen on 127.0.0.1 port {daemon.port}" in started.stderr
    assert "Address already in use" in started.stderr
    assert "Traceback" not in started.stderr
    assert daemon.ctl("status").returncode == 3


def test_start_logs_each_line_once(daemon):
    assert daemon.start_daemon().returncode == 0
    master = master_process(daemon)
    with ftplib.FTP() as ftp:
        ftp.connect("127.0.0.1", daemon.port, timeout=10)
        ftp.login("ops", "ops-pw")
    assert daemon.ctl("stop").returncode == 0
    log = daemon.log_text()
    assert f"master {master.pid} listening on" in log and f"master {master.pid} stopped" in log
    with open(os.path.join(daemon.log_dir, "cosftp.out"), encoding="utf-8") as handle:
        out = handle.read()
    assert out == "", out  # stderr holds only what comes before logging, and crashes


def test_stale_pid_file_does_not_block_start(daemon):
    os.makedirs(daemon.log_dir, exist_ok=True)
    dead = psutil.Popen(["true"])
    dead.wait()
    with open(pid_file(daemon), "w") as handle:
        handle.write(f"{dead.pid}\n")
    assert daemon.start_daemon().returncode == 0
    assert daemon.ctl("status").returncode == 0


def test_killed_worker_is_replaced_and_master_death_stops_workers(daemon):
    assert daemon.start_daemon().returncode == 0
    master = master_process(daemon)
    victim = master.children()[0]
    victim.send_signal(signal.SIGKILL)
    wait_until(lambda: len([c for c in master.children() if c.pid != victim.pid
                            and c.status() != psutil.STATUS_ZOMBIE]) == 1,
               what="replacement worker")
    workers = master.children()
    master.send_signal(signal.SIGKILL)
    wait_until(lambda: not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE
                               for w in workers), what="workers to exit after master died")


def test_bad_config_is_refused_with_section_and_option(daemon):
    with open(daemon.config_path, "a", encoding="utf-8") as handle:
        handle.write("\n[COS_ACCOUNT_9]\ncos_secretid = a\ncos_secretkey = b\n"
                     "cos_bucket = nobucketform\ncos_region = ap-guangzhou\nhome_dir = /h9\n"
                     "ftp_login_user_name = u9\nftp_login_user_password = p\nauthority = RW\n")
    for command in ("check", "start", "run"):
        done = daemon.ctl(command)
        assert done.returncode == 2
        assert "[COS_ACCOUNT_9]" in done.stderr and "cos_bucket" in done.stderr


EXAMPLE = os.path.join(ROOT, "conf", "vsftpd.conf.example")


def check(path: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cosftp_prefork", "-c", path, "check"],
                          capture_output=True, text=True, timeout=60)


def test_check_refuses_the_untouched_example_naming_each_placeholder():
    result = check(EXAMPLE)
    assert result.returncode == 2, result.stdout
    assert ": OK," not in result.stdout
    for section in ("COS_ACCOUNT_0", "COS_ACCOUNT_1"):
        for option in ("cos_secretid", "cos_secretkey"):
            assert f"configuration error: {EXAMPLE} [{section}] {option}: is a placeholder" \
                in result.stderr
        assert f"warning: {EXAMPLE} [{section}] cos_bucket: examplebucket-1250000000 is " \
            "the example's bucket" in result.stderr
        assert f"warning: {EXAMPLE} [{section}] ftp_login_user_password: is the " \
            "example's password" in result.stderr


def test_check_accepts_the_example_with_its_credentials_filled_in(tmp_path):
    """The other placeholders are warnings: check still exits 0."""
    with open(EXAMPLE, encoding="utf-8") as handle:
        text = handle.read()
    filled = tmp_path / "vsftpd.conf"
    filled.write_text(text.replace("cos_secretid = XXXXXX", "cos_secretid = AKIDfilled")
                      .replace("cos_secretkey = XXXXXX", "cos_secretkey = filled-key"))
    result = check(str(filled))
    assert result.returncode == 0, result.stderr
    assert f"{filled}: OK, 2 account(s)" in result.stdout
    for section in ("COS_ACCOUNT_0", "COS_ACCOUNT_1"):
        for option in ("cos_bucket", "ftp_login_user_password"):
            assert f"warning: {filled} [{section}] {option}: " in result.stderr
    assert "cos_secret" not in result.stderr
