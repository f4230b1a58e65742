"""Start the real server (``cosftpctl run``) as a subprocess for end-to-end tests."""

from __future__ import annotations

import contextlib
import dataclasses
import ftplib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, TypeVar

import psutil

T = TypeVar("T")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listens(pid: int, port: int) -> bool:
    """True if process ``pid`` or one of its descendants listens on TCP ``port``."""
    try:
        launched = psutil.Process(pid)
        processes = [launched, *launched.children(recursive=True)]
    except psutil.NoSuchProcess:
        return False
    for process in processes:
        with contextlib.suppress(psutil.Error):
            if any(conn.status == psutil.CONN_LISTEN and conn.laddr.port == port
                   for conn in process.net_connections("tcp")):
                return True
    return False


# Deadlines stretch with the machine's load, up to this many times: the suite shares 2 cores
# with its own servers, several test files at once and other developers' runs (load 17-26
# met), where a condition that takes 5 s when quiet can take 30.
MAX_DEADLINE_SCALE = 3.0


def deadline_scale() -> float:
    """How much longer than on a quiet machine things take now: the 1-minute load average per
    CPU, at least 1, at most ``MAX_DEADLINE_SCALE``."""
    per_cpu = os.getloadavg()[0] / (os.cpu_count() or 1)
    return min(MAX_DEADLINE_SCALE, max(1.0, per_cpu))


# How often ``within`` looks at the load again while a subprocess runs.
STRETCH_STEP = 5.0


def wait_until(predicate, timeout: float = 15.0, interval: float = 0.05, what: str = "") -> None:
    """Poll ``predicate`` until it returns truthy; fail once it has not for ``timeout``
    seconds on a quiet machine, stretched by the load while it waits (``deadline_scale``)."""
    started = time.monotonic()
    allowed = timeout
    while time.monotonic() - started < allowed:
        if predicate():
            return
        time.sleep(interval)
        allowed = max(allowed, timeout * deadline_scale())
    raise AssertionError(f"timed out after {allowed:.0f}s ({timeout}s on a quiet machine) "
                         f"waiting for {what or predicate}")


def within(call: Callable[[float], T], timeout: float) -> T:
    """``call(seconds)``, a subprocess's ``wait`` or ``communicate`` (which raise
    ``TimeoutExpired`` and may be called again, losing no output), asked again until it
    returns; ``TimeoutExpired`` once it has not for ``timeout`` seconds on a quiet machine,
    stretched by the load while it waits (``deadline_scale``), as ``wait_until``'s. A hang
    guard, not a timing: at load 24 on 2 cores a 5,000-account ``cosftpctl reload`` took
    over 60 s (two parses of the file, 1.3 s of CPU each, at a twelfth of a core)."""
    started = time.monotonic()
    allowed = timeout
    while True:
        try:
            return call(max(0.05, min(STRETCH_STEP, started + allowed - time.monotonic())))
        except subprocess.TimeoutExpired as exc:
            allowed = max(allowed, timeout * deadline_scale())
            if time.monotonic() - started >= allowed:
                raise subprocess.TimeoutExpired(exc.cmd, allowed, exc.output,
                                                exc.stderr) from None


def connection_refused(port: int, host: str = "127.0.0.1") -> bool:
    """True if nothing listens on ``host:port`` any more."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return False
    except OSError:
        return True


def unreachable_receiver() -> dict[str, str]:
    """[HOOKS] sending upload events to a receiver that is down: they wait in the spool."""
    return {"event_hook_url": f"http://127.0.0.1:{free_port()}/down",
            "event_hook_secret": "s3cret", "event_hook_events": "upload"}


@dataclass
class Account:
    user: str
    password: str
    bucket: str
    authority: str = "RW"
    delete_enable: bool = True
    extra: str = ""  # more "option = value" lines for the section
    region: str = "ap-guangzhou"  # "" leaves cos_region out (say, for cos_endpoint in extra)
    secret_id: str = "test-id"
    secret_key: str = "test-key"
    cos_port: int = 0  # 0: the emulator's
    protocol: str = "http"  # "https" needs a TLS front before the emulator (test_cos_https)

    def section(self, index: int, cos_port: int) -> str:
        return f"""
[COS_ACCOUNT_{index}]
cos_secretid = {self.secret_id}
cos_secretkey = {self.secret_key}
cos_bucket = {self.bucket}
{f"cos_region = {self.region}" if self.region else ""}
cos_protocol = {self.protocol}
cos_ip = 127.0.0.1
cos_port = {self.cos_port or cos_port}
home_dir = /home/{self.user}
ftp_login_user_name = {self.user}
ftp_login_user_password = {self.password}
authority = {self.authority}
delete_enable = {"true" if self.delete_enable else "false"}
{self.extra}
"""


def check_uncommented_example(directory) -> tuple[str, subprocess.CompletedProcess]:
    """conf/vsftpd.conf.example with its commented-out sections and options ("#[", "#name")
    uncommented and its placeholders filled, written into ``directory``: its path and what
    ``cosftpctl check`` says of it."""
    with open(os.path.join(ROOT, "conf", "vsftpd.conf.example"), encoding="utf-8") as handle:
        text = handle.read()
    text = re.sub(r"^#(?=[\[\w])", "", text, flags=re.MULTILINE).replace("XXXXXX", "filled")
    path = os.path.join(str(directory), "vsftpd.conf")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path, subprocess.run([sys.executable, "-m", "cosftp_prefork", "-c", path, "check"],
                                capture_output=True, text=True, timeout=60)


def many_accounts(count: int, bucket: str, prefix: str, shared: str) -> list[Account]:
    """``count`` accounts ``u<i>`` (password ``u<i>-pw``), as a shared-bucket service has
    them: every third rooted at ``<prefix>u<i>/`` of ``bucket`` (signing with one of seven
    keys), every third at the root of ``shared``, the others each in a bucket of its own
    (``own<i>-1250000000``, which the emulator does not have)."""
    accounts = []
    for i in range(count):
        if i % 3 == 0:
            accounts.append(Account(f"u{i}", f"u{i}-pw", bucket, secret_id=f"key-{i % 7}",
                                    extra=f"cos_prefix = {prefix}u{i}/"))
        elif i % 3 == 1:
            accounts.append(Account(f"u{i}", f"u{i}-pw", shared))
        else:
            accounts.append(Account(f"u{i}", f"u{i}-pw", f"own{i}-1250000000"))
    return accounts


def mounting(accounts: list[Account], every: int, mount: str) -> list[Account]:
    """``accounts`` with every ``every``-th one, from the first, mounting ``mount``
    (``/path=name`` of ``virtual_folders``)."""
    return [dataclasses.replace(account, extra=f"{account.extra}\nvirtual_folders = {mount}")
            if every and i % every == 0 else account for i, account in enumerate(accounts)]


@dataclass
class ServerProcess:
    """A ``cosftpctl run`` process with a generated config in ``workdir``."""

    workdir: str
    cos_port: int
    accounts: list[Account]
    optional: dict[str, str] = field(default_factory=dict)
    file_option: dict[str, str] = field(default_factory=dict)
    network: dict[str, str] = field(default_factory=dict)
    sections: str = ""  # more sections, as they are written in the file ([FOLDER_x]...)
    hooks: dict[str, str] = field(default_factory=dict)  # [HOOKS], if any
    port: int = 0
    proc: Optional[subprocess.Popen] = None
    # How to run cosftpctl (default: this interpreter's ``-m cosftp_prefork``) and with
    # which environment (default: this process's).
    launcher: Optional[list[str]] = None
    env: Optional[dict[str, str]] = None

    @property
    def config_path(self) -> str:
        return os.path.join(self.workdir, "vsftpd.conf")

    @property
    def log_dir(self) -> str:
        return os.path.join(self.workdir, "log")

    def write_config(self) -> None:
        self.port = self.port or free_port()
        optional = {"worker_processes": "2", "min_part_size": str(1024 * 1024),
                    "upload_thread_num": "4", "log_level": "DEBUG", "log_dir": self.log_dir}
        if os.geteuid() == 0:
            # The tests' interpreter and directories are root's (pyenv under /root, 0700):
            # workers that dropped to nobody could not import them. The tests of the drop
            # (test_privileges.py) set up what it needs and unset this.
            optional["run_as_root"] = "true"
        optional.update(self.optional)
        text = "".join(a.section(i, self.cos_port) for i, a in enumerate(self.accounts))
        text += self.sections
        network = {"listen_address": "127.0.0.1", "listen_port": str(self.port),
                   "passive_port": "30000,60000", **self.network}
        text += "\n[NETWORK]\n" + "".join(f"{k} = {v}\n" for k, v in network.items())
        # 1 GiB keeps the part size at min_part_size (1 MiB): 1 GiB fits in 10,000 parts.
        file_option = {"single_file_max_size": str(1024 ** 3), **self.file_option}
        text += "\n[FILE_OPTION]\n" + "".join(f"{k} = {v}\n" for k, v in file_option.items())
        text += "\n[OPTIONAL]\n" + "".join(f"{k} = {v}\n" for k, v in optional.items())
        if self.hooks:
            text += "\n[HOOKS]\n" + "".join(f"{k} = {v}\n" for k, v in self.hooks.items())
        os.makedirs(self.workdir, exist_ok=True)
        with open(self.config_path, "w", encoding="utf-8") as handle:
            handle.write(text)

    def ctl(self, *args: str, timeout: float = 60,
            cwd: Optional[str] = None) -> subprocess.CompletedProcess:
        """Run ``cosftpctl -c CONFIG ARGS`` (from ``cwd``, default ``workdir``) and return the
        completed process; killed after ``timeout`` seconds stretched by the load
        (``within``)."""
        command = [sys.executable, "-m", "cosftp_prefork", "-c", self.config_path, *args]
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=cwd or self.workdir, env=self.env) as proc:
            try:
                out, err = within(lambda seconds: proc.communicate(timeout=seconds), timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
        return subprocess.CompletedProcess(command, proc.returncode, out, err)

    def start(self) -> ServerProcess:
        # A port free_port() chose may be taken by another test file's server before this
        # one binds it (files run in parallel): then another is chosen, at most twice.
        chosen_here = not self.port
        for _ in range(2):
            try:
                return self._start()
            except AssertionError as exc:
                if not (chosen_here and "Address already in use" in str(exc)):
                    raise
                self.port = free_port()
        return self._start()

    def launch(self) -> ServerProcess:
        """Run the server in the background, not waiting for it to serve."""
        self.write_config()
        out = open(os.path.join(self.workdir, "server.out"), "wb")  # noqa: SIM115
        launcher = self.launcher or [sys.executable, "-m", "cosftp_prefork"]
        self.proc = subprocess.Popen(
            [*launcher, "-c", self.config_path, "run"],
            stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir, env=self.env,
        )
        out.close()
        return self

    def _start(self) -> ServerProcess:
        self.launch()
        try:
            # A deadline, not a timing: a loaded machine may take long to start a big table.
            wait_until(self._serving, timeout=60, what=f"server on port {self.port}")
        except AssertionError as exc:
            output = self.output()
            self.stop()  # a server that did not come up is not left running
            raise AssertionError(f"{exc} ({output})") from None
        return self

    def listening(self) -> bool:
        """True once this server's own processes listen on its port. Test files run in
        parallel: the port free_port() chose may be taken by another file's server before
        this one binds it, and that server answers the same 220 (a bench's first login once
        got its 530)."""
        return self.proc is None or listens(self.proc.pid, self.port)

    @property
    def host(self) -> str:
        """The address to reach the server at: the first ``listen_address`` (loopback for
        a wildcard)."""
        first = self.network.get("listen_address", "127.0.0.1").split(",")[0].strip()
        return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(first, first)

    def _serving(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"server exited early: {self.output()}")
        if not self.listening():
            return False
        try:
            with ftplib.FTP() as ftp:
                ftp.connect(self.host, self.port, timeout=2)
            return True
        except (OSError, EOFError, ftplib.Error):
            return False

    def log_text(self) -> str:
        """The whole server log (master and workers)."""
        with open(os.path.join(self.log_dir, "cosftp.log"), encoding="utf-8",
                  errors="replace") as handle:
            return handle.read()

    def output(self) -> str:
        try:
            with open(os.path.join(self.workdir, "server.out"), encoding="utf-8",
                      errors="replace") as handle:
                return handle.read()[-4000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 30) -> Optional[int]:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return within(lambda seconds: self.proc.wait(timeout=seconds), timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def ensure_stopped(self, master_pid: Optional[int]) -> None:
        """Stop a daemonised master via cosftpctl, killing it if that does not work."""
        self.ctl("stop")
        if master_pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(master_pid, signal.SIGKILL)  # its workers follow it (PDEATHSIG)

    def daemon_pid(self) -> Optional[int]:
        try:
            with open(os.path.join(self.log_dir, "cosftp.pid"), encoding="ascii") as handle:
                return int(handle.read())
        except (OSError, ValueError):
            return None

    def login(self, user: str, password: str, timeout: float = 30,
              host: Optional[str] = None) -> ftplib.FTP:
        ftp = ftplib.FTP(encoding="utf-8")
        ftp.connect(host or self.host, self.port, timeout=timeout)
        ftp.login(user, password)
        return ftp

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
