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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable, Optional, TypeVar, Union

import psutil

T = TypeVar("T")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    """A loopback TCP port nothing was bound to a moment ago. Nothing keeps it free: test
    files run in parallel, and another file's process may bind it before the process this
    test meant it for. A process that must listen there starts through
    ``start_listening``; a port that must stay closed is ``closed_port``'s."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Passive ports of the tests' servers: below the kernel's ephemeral ports
# (ip_local_port_range, 32768-60999 by default), where free_port()'s bind(0) and every
# client's connect() get theirs. With passive ports inside that range (30000-60000 before)
# a passive listener could take the port free_port() had just chosen for another test
# file's process, which then lost it (test_events' example receiver once did), and client
# connections took passive ports (43 of 305 passive binds of one run met EADDRINUSE and
# tried another). The other areas below it: test_cluster's nodes 20000-28999,
# test_reliability's exhaustion test 29000-29999; test_data_connections' scanned server
# sits above it (61000-61127).
TEST_PASSIVE_PORTS = range(30000, 32768)
# Passive ports of the servers the harness starts outside pytest: the bench scripts run by
# hand, perhaps beside a test run. Below the kernel's too, and below every area of the
# tests (the lowest, test_cluster's, starts at 20000), so that neither takes the other's.
BENCH_PASSIVE_PORTS = range(12000, 20000)
# delay_failed_login of the tests' servers; bench scripts run by hand keep the server's
# default, so that what they measure of failed logins is what a deployment gets.
TEST_FAILED_LOGIN_DELAY = "0"
# The fewest ports of a worker's share; with more workers than shares of this size, the
# shares of neighbouring workers overlap (a port taken is skipped, not an error).
MIN_PASSIVE_SHARE = 50


def under_pytest() -> bool:
    """True in a test run (a bench script a test runs too: the variables are inherited),
    False in a bench script run by hand."""
    return "PYTEST_XDIST_WORKER" in os.environ or "PYTEST_CURRENT_TEST" in os.environ


def passive_ports(part: int = 0, parts: int = 1) -> tuple[int, int]:
    """The passive range (low, high) of this process's servers: under pytest (a bench
    script a test runs too: the variables are inherited), this pytest-xdist worker's own
    share of ``TEST_PASSIVE_PORTS`` (a worker runs one test file at a time), so servers of
    test files running in parallel do not pick each other's ports, the whole of it outside
    xdist; outside pytest, ``BENCH_PASSIVE_PORTS``. Of that, the ``part``-th of ``parts``
    equal slices: a process that starts two servers at once gives each a slice (the
    bench's gateway and ``rclone serve ftp``)."""
    if under_pytest():
        workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
        index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
        size = len(TEST_PASSIVE_PORTS)
        share = max(MIN_PASSIVE_SHARE, size // workers)
        low = TEST_PASSIVE_PORTS.start + index * share % (size - share + 1)
    else:
        low, share = BENCH_PASSIVE_PORTS.start, len(BENCH_PASSIVE_PORTS)
    low, share = low + part * (share // parts), share // parts
    return low, low + share - 1


# Sockets bound to a port and never listening, by port (closed_port): kept for as long as
# this process runs unless released.
_HELD: dict[int, socket.socket] = {}


def closed_port(port: int = 0) -> int:
    """Hold loopback TCP ``port`` (0: one the kernel picks) closed until ``release_port``:
    a socket is bound there and never listens, so connections are refused and no other
    process can bind the port (the socket does not set SO_REUSEADDR, which a listener's
    bind would need to share it). A port left free (``free_port``) as "nothing listens
    here" can be taken meanwhile by another test file's server, which then answers: a
    receiver "that is down" takes the events, a Redis "that is down" is up. Returns the
    port; raises OSError if ``port`` is taken."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    port = sock.getsockname()[1]
    _HELD[port] = sock
    return port


def release_port(port: int) -> None:
    """Let go of ``port`` if ``closed_port`` holds it, so that a process can bind it."""
    held = _HELD.pop(port, None)
    if held is not None:
        held.close()


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` and its descendants listen on (none if it is gone)."""
    try:
        launched = psutil.Process(pid)
        processes = [launched, *launched.children(recursive=True)]
    except psutil.NoSuchProcess:
        return set()
    ports = set()
    for process in processes:
        with contextlib.suppress(psutil.Error):
            ports.update(conn.laddr.port for conn in process.net_connections("tcp")
                         if conn.status == psutil.CONN_LISTEN)
    return ports


def listens(pid: int, port: int) -> bool:
    """True if process ``pid`` or one of its descendants listens on TCP ``port``."""
    return port in listening_ports(pid)


# A port of ``start_listening`` to choose: an int is that port (0: one ``free_port``
# chooses), a callable chooses one each time it is called (say, a port below 1024).
PortChoice = Union[int, Callable[[], int]]


def start_listening(launch: Callable[..., subprocess.Popen], what: str,
                    ports: Sequence[PortChoice] = (0,), *, tries: int = 3,
                    timeout: float = 30,
                    lost_port: Optional[Callable[[subprocess.Popen], bool]] = None,
                    ) -> tuple[subprocess.Popen, tuple[int, ...]]:
    """Start a process that listens on TCP ports of its own and wait until it does:
    ``launch(*ports)`` starts it, each 0 of ``ports`` replaced by a port ``free_port``
    chose and each callable by the port it returns (a port ``closed_port`` holds is
    released first).

    Test files run in parallel: a port chosen free may be bound by another file's process
    before this one binds it, and that process would answer in its place (another file's
    redis-server answers PING, its receiver takes the events). So this waits for the
    launched process or a descendant to listen on every port (``listening_ports``), never
    for an answer. If it exits first, and ``lost_port(proc)`` says that is why (default:
    whatever made it exit), the ports chosen here are chosen again, ``tries`` times in
    all; ports given (ints other than 0) are kept.

    Returns the running process and its ports. Raises AssertionError if it exited for good,
    or did not listen within ``timeout`` seconds (stretched with the load, as
    ``wait_until``'s): it is killed then."""
    for _ in range(tries):
        chosen = tuple(_choose(port) for port in ports)
        for port in chosen:
            release_port(port)
        proc = launch(*chosen)
        try:
            wait_until(lambda proc=proc, chosen=chosen: proc.poll() is not None
                       or set(chosen) <= listening_ports(proc.pid),
                       timeout=timeout, what=f"{what} to listen on {chosen}")
        except AssertionError:
            proc.kill()
            proc.wait()
            raise
        if proc.poll() is None:
            return proc, chosen
        if not any(_chosen_here(port) for port in ports) or \
                not (lost_port is None or lost_port(proc)):
            break
    raise AssertionError(f"{what} exited with {proc.returncode} before it listened on "
                         f"{chosen}")


def _chosen_here(port: PortChoice) -> bool:
    """True if ``start_listening`` chooses ``port`` (0 or a chooser), not the caller."""
    return callable(port) or port == 0


def _choose(port: PortChoice) -> int:
    """The port to try for ``port``: itself, ``free_port``'s for 0, a chooser's answer."""
    if callable(port):
        return port()
    return port or free_port()


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
    """[HOOKS] sending upload events to a receiver that is down: they wait in the spool.
    Its port stays closed for as long as this process runs (``closed_port``): no other test
    file's receiver takes the events."""
    return {"event_hook_url": f"http://127.0.0.1:{closed_port()}/down",
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


# [NETWORK] options of another port the server listens on: ServerProcess.start waits for
# them too.
PORT_OPTIONS = ("implicit_tls_port", "metrics_port", "admin_port")
# The value of such an option (in ServerProcess.network) that has start choose the port.
FREE_PORT = "free"


def tls_network(cert: str, key: str, implicit: bool = False) -> dict[str, str]:
    """[NETWORK] options for FTPS with ``cert`` and ``key``; with ``implicit``, an implicit
    FTPS port too (ServerProcess.start chooses it: FREE_PORT)."""
    network = {"tls_certfile": cert, "tls_keyfile": key}
    if implicit:
        network["implicit_tls_port"] = FREE_PORT
    return network


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
    # How a ``port`` of 0 is chosen (default ``free_port``): a chooser of ports below 1024,
    # say. Called again when the port chosen was lost.
    choose_port: Optional[Callable[[], int]] = None
    # The ports ``write_config`` chose, by option name (listen_port and PORT_OPTIONS):
    # ``start_daemon`` chooses them again if they were taken.
    _chosen: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    @property
    def config_path(self) -> str:
        return os.path.join(self.workdir, "vsftpd.conf")

    @property
    def log_dir(self) -> str:
        return os.path.join(self.workdir, "log")

    def write_config(self) -> None:
        """Write the config file; a port not chosen yet (``port`` 0, ``FREE_PORT``) gets
        one from ``free_port`` (``start`` chooses them itself, and again if lost)."""
        if not self.port:
            self.port = self._chosen["listen_port"] = (self.choose_port or free_port)()
        for name in PORT_OPTIONS:
            if self.network.get(name) == FREE_PORT:
                self._chosen[name] = free_port()
                self.network[name] = str(self._chosen[name])
        # One worker: a worker's start costs ~0.5 s of CPU (its imports) and the suite,
        # CPU-bound on 2 cores, started 787 of them for 410 servers with two each. A test
        # whose point needs several workers (balancing, one killed while another serves,
        # limits counted across workers, reloads) sets worker_processes itself.
        optional = {"worker_processes": "1", "min_part_size": str(1024 * 1024),
                    "upload_thread_num": "4", "log_level": "DEBUG", "log_dir": self.log_dir}
        if under_pytest():
            # No wait before a failed login's 530 (3 s by default): tests that earn bans or
            # send wrong passwords would spend it asleep. The tests of the delay itself
            # (test_login_delay.py) set it.
            optional["delay_failed_login"] = TEST_FAILED_LOGIN_DELAY
        if os.geteuid() == 0:
            # The tests' interpreter and directories are root's (pyenv under /root, 0700):
            # workers that dropped to nobody could not import them. The tests of the drop
            # (test_privileges.py) set up what it needs and unset this.
            optional["run_as_root"] = "true"
        optional.update(self.optional)
        text = "".join(a.section(i, self.cos_port) for i, a in enumerate(self.accounts))
        text += self.sections
        network = {"listen_address": "127.0.0.1", "listen_port": str(self.port),
                   "passive_port": "{},{}".format(*passive_ports()), **self.network}
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

    def start_daemon(self, cwd: Optional[str] = None,
                     tries: int = 3) -> subprocess.CompletedProcess:
        """``cosftpctl start`` (from ``cwd``, as ``ctl``) with the config file as it is now,
        written first if it is not yet. A port ``write_config`` chose may be bound by
        another test file's process before the master binds it; the master then exits
        ("Address already in use" among the errors start prints) and the start fails. Such
        ports are then chosen again (``choose_ports_again``), ``tries`` starts in all, as
        ``start`` does; ports a test gave are kept. Returns the last start's completed
        process: a test asserts its status."""
        if not os.path.exists(self.config_path):
            self.write_config()
        for _ in range(tries):
            started = self.ctl("start", cwd=cwd)
            if started.returncode == 0 or "Address already in use" not in started.stderr \
                    or not self.choose_ports_again():
                break
        return started

    def choose_ports_again(self) -> bool:
        """Give every port ``write_config`` chose, and the test left as it was, another port
        chosen as it was (``choose_port``, ``free_port``), here and in the config file as it
        is now (``move_port``). Returns False if there was none."""
        again = [name for name, port in self._chosen.items() if self._port_of(name) == port]
        for name in again:
            chooser = (self.choose_port or free_port) if name == "listen_port" else free_port
            self._chosen[name] = chooser()
            self.move_port(self._chosen[name], name)
        return bool(again)

    def move_port(self, port: int, option: str = "listen_port") -> None:
        """Set [NETWORK] ``option`` (listen_port or one of ``PORT_OPTIONS``) to ``port`` here
        and on its line of the config file, keeping whatever a test added to the file since
        ``write_config``. Raises AssertionError if the file has not exactly one such line."""
        with open(self.config_path, encoding="utf-8") as handle:
            text = handle.read()
        text, lines = re.subn(rf"^{option} = \d+$", f"{option} = {port}", text,
                              flags=re.MULTILINE)
        assert lines == 1, f"{lines} '{option} =' lines in {self.config_path}"
        with open(self.config_path, "w", encoding="utf-8") as handle:
            handle.write(text)
        if option == "listen_port":
            self.port = port
        else:
            self.network[option] = str(port)

    def _port_of(self, option: str) -> int:
        """The port of [NETWORK] ``option`` now (listen_port or one of PORT_OPTIONS)."""
        if option == "listen_port":
            return self.port
        return int(self.network.get(option, 0))

    def start(self) -> ServerProcess:
        """Run the server and wait until it serves: its own processes listen on its port
        and on the ports of ``PORT_OPTIONS`` it has (``start_listening``), and it greets.
        ``port`` 0 (by ``choose_port`` if set) and an option set to ``FREE_PORT`` get a
        port chosen here, chosen again if another test file's process took it first (the
        server then exits: "Address already in use"), three times in all; they keep it when
        the server starts again.
        Returns self; raises AssertionError with the server's output if it does not come
        up (it is stopped then)."""
        names = [name for name in PORT_OPTIONS if self.network.get(name)]
        given: list[PortChoice] = [
            self.port or self.choose_port or 0,
            *(0 if self.network[name] == FREE_PORT else int(self.network[name])
              for name in names)]

        def launch(port: int, *others: int) -> subprocess.Popen:
            self.port = port
            self.network.update(zip(names, map(str, others)))
            return self.launch().proc

        try:
            start_listening(launch, "the server", given, timeout=60,
                            lost_port=lambda _: "Address already in use" in self.output())
            # A deadline, not a timing: a loaded machine may take long to start a big table.
            wait_until(self._serving, timeout=60, what=f"server on port {self.port}")
        except AssertionError as exc:
            output = self.output()
            self.stop()  # a server that did not come up is not left running
            raise AssertionError(f"{exc} ({output})") from None
        return self

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

    def listening(self) -> bool:
        """True once this server's own processes listen on its port. Test files run in
        parallel: the port free_port() chose may be taken by another file's server before
        this one binds it, and that server answers the same 220 (a bench's first login once
        got its 530)."""
        return self.proc is None or listens(self.proc.pid, self.port)

    @property
    def metrics_port(self) -> int:
        """The port of the metrics exporter (0: none), once ``start`` chose it."""
        return int(self.network.get("metrics_port", 0))

    @property
    def admin_port(self) -> int:
        """The port of the admin API (0: none), once ``start`` chose it."""
        return int(self.network.get("admin_port", 0))

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
        # Only if that pid is still this server's master: once it stopped, the kernel may
        # have given its pid to any process of the machine (another test's server worker).
        with contextlib.suppress(psutil.Error):
            master = psutil.Process(master_pid)
            if f"[{self.config_path}]" in " ".join(master.cmdline()):
                master.kill()  # its workers follow it (PDEATHSIG)

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
