"""Workers that do not run as root: started as root (they become run_as_user), and a master
that is not root at all but may bind port < 1024 (the unprivileged systemd unit).

Both need an interpreter and the server's code that ``nobody`` can read. The tests' own may
not be (pyenv keeps its interpreters in ~/.pyenv, and root's home is 0700), so
``nobody_python`` checks, and if ``nobody`` cannot import the worker with the tests'
interpreter it copies that interpreter's binary, shared library and standard library (not its
site-packages nor its test suite: ~110 MB, a second) into a world-readable directory under
/var/tmp, and points it at the tests' site-packages and checkout with a ``.pth`` file, like
installing the server under /opt. The server's directories are made under /var/tmp too
(pytest's are under /tmp/pytest-of-root, 0700).
"""

from __future__ import annotations

import contextlib
import grp
import io
import os
import pathlib
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import urllib.request

import psutil
import pytest

from cosftp_prefork.config.settings import parse_config
from cosftp_prefork.errors import ConfigError

from .admin_client import RW_TOKEN, AdminClient, hash_token
from .conftest import ALPHA, TWO_WORKERS
from .server_proc import FREE_PORT, Account, ServerProcess, wait_until
from .test_config import MINIMAL, set_option
from .test_master import pids_cgroup, rewrite_config, write_cgroup
from .tls_clients import write_certificate

NOBODY = pwd.getpwnam("nobody") if "nobody" in {p.pw_name for p in pwd.getpwall()} else None
CAP_NET_BIND_SERVICE = 1 << 10
SETPRIV = shutil.which("setpriv")
as_root = pytest.mark.skipif(os.geteuid() != 0 or NOBODY is None,
                             reason="starts the server as root and needs a nobody user")
ACCOUNT = Account("ops", "ops-pw", ALPHA)


def as_nobody(*command: str) -> list[str]:
    assert SETPRIV is not None
    return [SETPRIV, "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", *command]


# Run as nobody: fails unless it may read every directory the master's probe checks
# (``privileges.code_directories`` as the master finds them, given in argv[1]) and imports
# the worker. The import alone is not enough: an interpreter whose home nobody cannot enter
# (pyenv's, under /root) falls back to another standard library (Debian's /usr/lib/python3)
# and may import the worker from there, where the master's probe refuses to start.
NOBODY_IMPORTS = """
import json, os, sys
for path in json.loads(sys.argv[1]):
    assert os.access(path, os.R_OK | os.X_OK), path
import cosftp_prefork.server.worker
"""


def nobody_imports(python: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    found = subprocess.run(
        [python, "-c", "import json; from cosftp_prefork.server.privileges import "
         "code_directories; print(json.dumps(code_directories()))"],
        env=env, capture_output=True, text=True, timeout=120, cwd="/", check=True)
    return subprocess.run(as_nobody(python, "-c", NOBODY_IMPORTS, found.stdout), env=env,
                          capture_output=True, text=True, timeout=120, cwd="/")


def public_dir(prefix: str) -> str:
    """A new directory under /var/tmp that every user may enter (not write)."""
    path = tempfile.mkdtemp(prefix=prefix, dir="/var/tmp")
    os.chmod(path, 0o755)
    return path


def copy_interpreter(base: str) -> tuple[str, dict[str, str]]:
    """The running interpreter, copied under ``base`` without its site-packages, that
    imports the tests' site-packages (and through it the checkout); its path and the
    environment to run it with."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    stdlib = sysconfig.get_paths()["stdlib"]
    shutil.copytree(stdlib, os.path.join(base, "lib", version), symlinks=True,
                    ignore=shutil.ignore_patterns("test", "site-packages", "idlelib",
                                                  "tkinter", "turtledemo"))
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    for name in os.listdir(libdir) if os.path.isdir(libdir) else []:
        if name.startswith(f"lib{version}.so"):
            shutil.copy2(os.path.join(libdir, name), os.path.join(base, "lib", name))
    os.makedirs(os.path.join(base, "bin"))
    python = os.path.join(base, "bin", version)
    shutil.copy2(os.path.realpath(sys._base_executable), python)
    site = os.path.join(base, "lib", version, "site-packages")
    os.makedirs(site)
    with open(os.path.join(site, "cosftp-tests.pth"), "w", encoding="utf-8") as handle:
        handle.write(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    # The binary may find its shared library by an absolute RUNPATH into the original.
    return python, {**os.environ, "LD_LIBRARY_PATH": os.path.join(base, "lib")}


@pytest.fixture(scope="module")
def nobody_python():
    """``(python, env)``: an interpreter with which ``nobody`` imports the whole worker."""
    if SETPRIV is None:
        pytest.skip("setpriv (util-linux) is not installed")
    env = {**os.environ}
    if nobody_imports(sys.executable, env).returncode == 0:
        yield sys.executable, env
        return
    base = public_dir("cosftp-python-")
    try:
        python, env = copy_interpreter(base)
        tried = nobody_imports(python, env)
        if tried.returncode != 0:
            pytest.skip(f"nobody cannot import the server even from a copy of the "
                        f"interpreter (the checkout or its venv is private?): {tried.stderr}")
        yield python, env
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def workdir():
    path = public_dir("cosftp-server-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def dropping_server(workdir: str, cos_port: int, python_env, **optional: str) -> ServerProcess:
    """A server started as root whose children drop to nobody: two workers, so that every
    one drops, not only the first forked."""
    python, env = python_env
    return ServerProcess(workdir, cos_port, [ACCOUNT],
                         optional={"run_as_root": "false", "xferlog_enable": "true",
                                   **TWO_WORKERS, **optional},
                         network={"metrics_port": FREE_PORT},
                         launcher=[python, "-m", "cosftp_prefork"], env=env)


def status_fields(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        return dict(line.rstrip("\n").split(":\t", 1) for line in handle if ":\t" in line)


def children(master_pid: int) -> dict[str, psutil.Process]:
    """The master's live children by title: ``worker 1``, ``worker 2``, ``metrics``,
    ``admin``."""
    found = {}
    for child in psutil.Process(master_pid).children():
        with contextlib.suppress(psutil.Error):
            title = " ".join(child.cmdline())
            if child.status() != psutil.STATUS_ZOMBIE:
                match = re.match(r"cosftp: (worker \d+|metrics|admin)", title)
                if match:
                    found[match.group(1)] = child
    return found


def assert_unprivileged(proc: psutil.Process, uid: int, gid: int) -> None:
    """``proc`` is ``uid``/``gid`` alone (real, effective, saved; no other group), holds no
    capability and cannot gain any (no_new_privs)."""
    assert tuple(proc.uids()) == (uid,) * 3 and tuple(proc.gids()) == (gid,) * 3
    fields = status_fields(proc.pid)
    assert fields["Groups"].split() == []
    for name in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(fields[name], 16) == 0, (name, fields[name])
    assert fields["NoNewPrivs"].strip() == "1"


def open_files(pid: int) -> set[str]:
    """What the descriptors of ``pid`` point to that are files on disk."""
    targets = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("/") and not target.startswith(("/dev/", "/memfd:")):
                targets.add(target)
    return targets


def transfer(proc: ServerProcess, name: str, password: str = "ops-pw") -> bytes:
    data = os.urandom(300_000)
    with proc.login("ops", password) as ftp:
        ftp.storbinary(f"STOR {name}", io.BytesIO(data))
        got = io.BytesIO()
        ftp.retrbinary(f"RETR {name}", got.write)
    assert got.getvalue() == data
    return data


def read(path: str) -> str:
    """The text of ``path``; "" while it does not exist."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except FileNotFoundError:
        return ""


@as_root
def test_started_as_root_workers_and_exporter_run_as_nobody(emulator, workdir, nobody_python):
    proc = dropping_server(workdir, emulator.port, nobody_python).start()
    try:
        _check_dropped(proc)
        _check_log_reopen(proc)
        _check_reload(proc)
        assert proc.stop() == 0
        assert not os.path.exists(os.path.join(proc.log_dir, "cosftp.pid"))
    finally:
        proc.stop()


# Installed through PYTHONPATH in the master: when a root process imports prometheus_client
# (which opens that process's metric files at once, following links), it notes who owns the
# metrics directory then.
OWNER_AT_IMPORT = """import os, sys

def _note(event, args):
    where = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if event == "import" and args[0] == "prometheus_client" and where and os.geteuid() == 0:
        with open({seen!r}, "a", encoding="ascii") as handle:
            handle.write(f"{{os.stat(where).st_uid}}\\n")

sys.addaudithook(_note)
"""


@as_root
def test_the_masters_metric_files_are_made_before_the_workers_user_owns_their_directory(
        emulator, workdir, nobody_python):
    """The metrics directory is the workers' user's (they make their files in it), and
    prometheus_client opens the master's files as root, following links: were the
    directory given away first, another process of that user could plant a link where root
    then writes."""
    python, env = nobody_python
    hook = os.path.join(workdir, "hook")
    os.mkdir(hook, 0o755)
    seen = os.path.join(workdir, "owners")
    with open(os.path.join(hook, "sitecustomize.py"), "w", encoding="utf-8") as handle:
        handle.write(OWNER_AT_IMPORT.format(seen=seen))
    env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, (hook, env.get("PYTHONPATH"))))}
    with dropping_server(workdir, emulator.port, (python, env)) as proc:
        wait_until(lambda: len(children(proc.proc.pid)) == 3, what="two workers and the exporter")
        assert read(seen).split() == ["0"]  # the master's one import, root's directory then
        metrics_dir = os.path.join(proc.log_dir, "cosftp.pid.metrics")
        assert os.stat(metrics_dir).st_uid == NOBODY.pw_uid  # and the workers' since


@as_root
def test_the_admin_api_runs_as_nobody_and_serves_https(emulator, workdir, nobody_python):
    """The admin API drops root as the workers do, and still serves HTTPS with a key only
    root may read: it builds its TLS context from the key the master loaded."""
    cert, key = write_certificate(pathlib.Path(workdir))
    os.chmod(key, 0o600)
    proc = dropping_server(workdir, emulator.port, nobody_python)
    proc.network.update(admin_port=FREE_PORT, tls_certfile=cert, tls_keyfile=key)
    proc.sections = f"\n[ADMIN]\ntokens = ops:{hash_token(RW_TOKEN)}:rw\n"
    with proc:
        wait_until(lambda: "admin" in children(proc.proc.pid), what="the admin API")
        assert_unprivileged(children(proc.proc.pid)["admin"], NOBODY.pw_uid, NOBODY.pw_gid)
        status = AdminClient(f"https://127.0.0.1:{proc.admin_port}", verify=cert).get("/status")
        assert status["master"]["pid"] == proc.proc.pid


def _check_dropped(proc: ServerProcess) -> None:
    assert psutil.Process(proc.proc.pid).uids().effective == 0
    wait_until(lambda: len(children(proc.proc.pid)) == 3, what="two workers and the exporter")
    for child in children(proc.proc.pid).values():
        assert_unprivileged(child, NOBODY.pw_uid, NOBODY.pw_gid)
    log = os.path.join(proc.log_dir, "cosftp.log")
    xferlog = os.path.join(proc.log_dir, "xferlog")
    state = os.path.join(proc.log_dir, "cosftp.pid.state")
    for index in (1, 2):
        # What a worker has open: its output, the logs it appends to, the shared state (and
        # the quotas' usage table beside it) and its own metrics files (none of the
        # master's, nor its pid or bans file).
        worker = children(proc.proc.pid)[f"worker {index}"]
        own = {name for name in open_files(worker.pid)
               if re.search(rf"/cosftp\.pid\.metrics/[a-z_]+_{worker.pid}\.db$", name)}
        assert open_files(worker.pid) - own <= {log, xferlog, state, state + ".usage",
                                                os.path.join(proc.workdir, "server.out")}
        # Not dumpable since it changed user: another process of nobody cannot read it.
        peek = subprocess.run(as_nobody("cat", f"/proc/{worker.pid}/environ"),
                              capture_output=True, text=True, timeout=60)
        assert peek.returncode != 0 and "Permission denied" in peek.stderr
    transfer(proc, "dropped.bin")
    for path in (log, xferlog):
        assert os.stat(path).st_uid == NOBODY.pw_uid
    assert os.stat(os.path.join(proc.log_dir, "cosftp.pid")).st_uid == 0
    wait_until(lambda: "dropped.bin" in read(xferlog), what="the worker's xferlog line")
    metrics = f"http://127.0.0.1:{proc.network['metrics_port']}/metrics"
    with urllib.request.urlopen(metrics, timeout=10) as answer:
        assert b"cosftp_transfers_total" in answer.read()
    assert "workers and metrics exporter run as nobody:nogroup" in proc.log_text()


def _check_log_reopen(proc: ServerProcess) -> None:
    """logrotate without ``create``: the files moved away, then USR1. The master (root)
    makes them again, the workers' own, and the workers write to them."""
    log = os.path.join(proc.log_dir, "cosftp.log")
    xferlog = os.path.join(proc.log_dir, "xferlog")
    for path in (log, xferlog):
        os.rename(path, path + ".1")
    proc.proc.send_signal(signal.SIGUSR1)
    wait_until(lambda: read(log).count("log files reopened") >= 3, what="every process reopened")
    transfer(proc, "after-rotation.bin")
    wait_until(lambda: "after-rotation.bin" in read(xferlog), what="xferlog line in the new file")
    assert re.search(r"\[\d+ worker \d\b.*after-rotation\.bin", read(log))
    assert "after-rotation.bin" not in read(xferlog + ".1")
    for path in (log, xferlog):
        assert os.stat(path).st_uid == NOBODY.pw_uid


def _check_reload(proc: ServerProcess) -> None:
    old = {child.pid for child in children(proc.proc.pid).values()}
    rewrite_config(proc, ftp_login_user_password="new-pw")
    done = proc.ctl("reload")
    assert done.returncode == 0, done.stderr
    wait_until(lambda: not old & {w.pid for n, w in children(proc.proc.pid).items()
                                  if n.startswith("worker")}, what="the old workers gone")
    for name, child in children(proc.proc.pid).items():
        assert_unprivileged(child, NOBODY.pw_uid, NOBODY.pw_gid), name
    transfer(proc, "reloaded.bin", password="new-pw")


@as_root
def test_run_as_user_and_group_are_those_configured(emulator, workdir, nobody_python):
    other = next((g for g in grp.getgrall() if g.gr_gid not in (0, NOBODY.pw_gid)), None)
    if other is None:
        pytest.skip("no group other than root's and nobody's")
    proc = dropping_server(workdir, emulator.port, nobody_python, run_as_user="nobody",
                           run_as_group=other.gr_name).start()
    try:
        gid = other.gr_gid
        wait_until(lambda: len(children(proc.proc.pid)) == 3, what="workers and exporter")
        for child in children(proc.proc.pid).values():
            assert_unprivileged(child, NOBODY.pw_uid, gid)
        transfer(proc, "grouped.bin")
    finally:
        proc.stop()


@as_root
def test_code_that_run_as_user_cannot_read_stops_the_start(emulator, workdir, nobody_python):
    """The package under a 0700 directory (a venv in root's home): the server says which
    directory keeps nobody out, before forking a worker."""
    private = os.path.join(workdir, "private")
    shutil.copytree(os.path.dirname(os.path.dirname(__import__("cosftp_prefork").__file__))
                    + "/cosftp_prefork", os.path.join(private, "cosftp_prefork"))
    os.chmod(private, 0o700)
    python, env = nobody_python
    proc = dropping_server(workdir, emulator.port, (python, {**env, "PYTHONPATH": private}))
    proc.write_config()
    done = subprocess.run([python, "-m", "cosftp_prefork", "-c", proc.config_path, "run"],
                          env={**env, "PYTHONPATH": private}, capture_output=True, text=True,
                          timeout=120, cwd="/")
    assert done.returncode == 1
    assert (f"the workers, running as nobody:nogroup (uid {NOBODY.pw_uid}, gid "
            f"{NOBODY.pw_gid}), cannot read {private}/cosftp_prefork: {private} (mode "
            "drwx------, owner root, group root) does not let it in. Install the server where "
            "that user can read it") in done.stderr
    assert "started worker" not in done.stderr
    check = subprocess.run([python, "-m", "cosftp_prefork", "-c", proc.config_path, "check"],
                           env={**env, "PYTHONPATH": private}, capture_output=True, text=True,
                           timeout=120, cwd="/")
    assert check.returncode == 0 and f"cannot read {private}/cosftp_prefork" in check.stderr


@as_root
def test_log_dir_that_run_as_user_cannot_reach_stops_the_start(emulator, workdir,
                                                               nobody_python):
    hidden = os.path.join(workdir, "hidden")
    os.makedirs(os.path.join(hidden, "log"))
    os.chmod(hidden, 0o700)
    proc = dropping_server(workdir, emulator.port, nobody_python,
                           log_dir=os.path.join(hidden, "log"))
    proc.write_config()
    python, env = nobody_python
    done = subprocess.run([python, "-m", "cosftp_prefork", "-c", proc.config_path, "run"],
                          env=env, capture_output=True, text=True, timeout=120, cwd="/")
    assert done.returncode == 1
    assert (f"cannot append to {hidden}/log/cosftp.log: Permission denied; {hidden} (mode "
            "drwx------, owner root, group root) does not let it in") in done.stderr


@as_root
def test_unknown_run_as_user_is_a_configuration_error(emulator, workdir, nobody_python):
    proc = dropping_server(workdir, emulator.port, nobody_python,
                           run_as_user="no-such-user-here")
    proc.write_config()
    for command in ("check", "start", "run"):
        done = proc.ctl(command)
        assert done.returncode == 2
        assert "[OPTIONAL] run_as_user: no user 'no-such-user-here' on this system" in done.stderr


@pytest.mark.parametrize(("lines", "problem"), [
    ({"run_as_user": "root"}, "run_as_user: root would let the workers"),
    ({"run_as_group": "0"}, "run_as_group: root would let the workers"),
    ({"run_as_root": "true", "run_as_user": "cosftp"},
     "run_as_user: 'cosftp' contradicts run_as_root = true"),
    ({"run_as_user": "bad name"}, "run_as_user: must be a user or group name"),
])
def test_root_workers_only_with_run_as_root(lines, problem):
    text = MINIMAL
    for option, value in lines.items():
        text = set_option(text, "OPTIONAL", option, value)
    with pytest.raises(ConfigError, match=re.escape(problem)):
        parse_config(text, "r.conf", {})
    allowed = set_option(set_option(MINIMAL, "OPTIONAL", "run_as_root", "true"), "OPTIONAL",
                         "run_as_user", "root")
    assert parse_config(allowed, "r.conf", {}).run_as.as_root
    assert parse_config(MINIMAL, "r.conf", {}).run_as.user == "nobody"


UNPRIVILEGED_UNIT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                 "conf", "cosftp-prefork-unprivileged.service")


def unit_service(path: str) -> dict[str, str]:
    """The ``Key=value`` lines of a systemd unit's ``[Service]`` section."""
    with open(path, encoding="utf-8") as handle:
        section = handle.read().split("[Service]", 1)[1].split("\n[", 1)[0]
    return dict(line.split("=", 1) for line in section.splitlines()
                if "=" in line and not line.startswith("#"))


# Where free_privileged_port looks: below 1024, clear of the well-known ports of the
# services a machine may run (ftp 21, ssh 22, http 80, https 443, ftps 989-990...).
PRIVILEGED_PORTS = range(600, 989)


def free_privileged_port() -> int:
    """A port below 1024 free on loopback now (found as root), at random: a port found by a
    scan in order is the one another test scanning at the same time finds, and nothing
    keeps it free, so the server's start chooses again if it lost it (``choose_port``)."""
    for port in random.sample(PRIVILEGED_PORTS, len(PRIVILEGED_PORTS)):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port below 1024 on 127.0.0.1")


@as_root
@pytest.mark.skipif(SETPRIV is None, reason="setpriv (util-linux) is not installed")
def test_master_without_root_binds_a_privileged_port_with_the_capability(emulator, workdir,
                                                                         nobody_python):
    """conf/cosftp-prefork-unprivileged.service: User=cosftp,
    AmbientCapabilities=CAP_NET_BIND_SERVICE, NoNewPrivileges. The master keeps the
    capability (a reload may bind another port); its children drop it."""
    python, env = nobody_python
    service = unit_service(UNPRIVILEGED_UNIT)
    assert service["User"] == service["Group"] == "cosftp"
    assert service["NoNewPrivileges"] == "yes"
    caps = ",".join("+" + cap.lower().removeprefix("cap_")
                    for cap in service["AmbientCapabilities"].split())
    os.chown(workdir, NOBODY.pw_uid, NOBODY.pw_gid)
    proc = ServerProcess(workdir, emulator.port, [ACCOUNT], choose_port=free_privileged_port,
                         optional={"run_as_root": "false", **TWO_WORKERS},
                         network={"metrics_port": FREE_PORT}, env=env)
    # What the unit does, with nobody standing in for cosftp.
    proc.launcher = [SETPRIV, "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                     f"--inh-caps={caps}", f"--ambient-caps={caps}", "--no-new-privs", "--",
                     python, "-m", "cosftp_prefork"]
    proc.start()
    try:
        master = psutil.Process(proc.proc.pid)
        assert tuple(master.uids()) == (NOBODY.pw_uid,) * 3
        assert int(status_fields(master.pid)["CapEff"], 16) == CAP_NET_BIND_SERVICE
        wait_until(lambda: len(children(master.pid)) == 3, what="workers and exporter")
        for child in children(master.pid).values():
            assert_unprivileged(child, NOBODY.pw_uid, NOBODY.pw_gid)
        transfer(proc, "unprivileged.bin")
        assert len(re.findall(r"the server runs as nobody \(uid \d+\), not root: its workers "
                              r"keep that user, no privilege drop", proc.log_text())) == 1
        assert os.stat(os.path.join(proc.log_dir, "cosftp.pid")).st_uid == NOBODY.pw_uid
        assert proc.stop() == 0
    finally:
        proc.stop()
    # Without the capability, nobody cannot listen there: what the test relies on.
    without = subprocess.run(as_nobody(python, "-m", "cosftp_prefork", "-c", proc.config_path,
                                       "run"), env=env, capture_output=True, text=True,
                             timeout=120, cwd=workdir)
    assert without.returncode == 1
    assert f"cannot listen on 127.0.0.1 port {proc.port}: [Errno 13] Permission denied" \
        in without.stderr


@as_root
def test_the_events_process_and_its_commands_run_as_nobody(emulator, workdir, nobody_python):
    """Started as root, the events process drops to the workers' user like the exporter:
    the command it runs per event is nobody's, and so is the spool (0700) workers write."""
    out = os.path.join(workdir, "events.out")
    with open(out, "w"):
        pass
    os.chown(out, NOBODY.pw_uid, NOBODY.pw_gid)
    script = os.path.join(workdir, "on-event.sh")
    with open(script, "w") as handle:
        handle.write(f"#!/bin/sh\n{{ id -u; cat; echo; }} >> {out}\n")
    os.chmod(script, 0o755)
    proc = dropping_server(workdir, emulator.port, nobody_python)
    proc.hooks = {"event_hook_command": script, "event_hook_events": "upload"}
    with proc:
        transfer(proc, "evented.bin")
        wait_until(lambda: "evented.bin" in read(out), what="the command's output")
        events = next(child for child in psutil.Process(proc.proc.pid).children()
                      if "cosftp: events" in " ".join(child.cmdline()))
        assert_unprivileged(events, NOBODY.pw_uid, NOBODY.pw_gid)
    assert read(out).splitlines()[0] == str(NOBODY.pw_uid)
    spool = os.path.join(proc.log_dir, "events")
    for path in (spool, os.path.join(spool, "state")):
        assert os.stat(path).st_uid == NOBODY.pw_uid
    assert os.stat(spool).st_mode & 0o777 == 0o700


@as_root
def test_a_probe_the_master_cannot_fork_stops_the_start_with_a_message(emulator, workdir,
                                                                        nobody_python):
    """The master's try of the workers' user is its first fork: refused (EAGAIN, a pids limit
    of one: the master alone), the start ends naming the limit, without a traceback."""
    python, env = nobody_python
    proc = dropping_server(workdir, emulator.port, nobody_python, run_as_user="nobody")
    proc.write_config()
    with pids_cgroup("probe") as group:
        write_cgroup(group, "pids.max", "1")
        done = subprocess.run(
            [python, "-m", "cosftp_prefork", "-c", proc.config_path, "run"], env=env,
            capture_output=True, text=True, timeout=120, cwd="/",
            preexec_fn=lambda: write_cgroup(group, "cgroup.procs", str(os.getpid())))
    assert done.returncode == 1, done.stderr
    assert "cannot fork a process to try the workers' user (Resource temporarily " \
           "unavailable, errno 11): raise the limit on processes" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
