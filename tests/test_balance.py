"""A burst of connections spreads over the workers, a worker still setting up included.

The workers share one listening socket; each steps aside while it holds more than one
session above its least busy peer (``BalancedFTPServer.rebalance``). A burst that comes
while a peer boots (the server's start, a reload, a dead worker's replacement, whose clients
all reconnect at once) must not all land on the worker already serving: a session stays on
its worker for its whole life.

To hold a worker in its set-up for as long as the test needs, the server runs with a
``pyftpdlib`` in front of the real one that waits, in each worker's import of it, until
the test writes to a FIFO named after that worker's pid (the master never imports
pyftpdlib); then it loads the real package in its place.
"""

from __future__ import annotations

import contextlib
import ftplib
import os
import socket
import threading
from collections import Counter

import psutil

from .conftest import ALPHA, _close
from .server_proc import Account, ServerProcess, wait_until
from .test_master import serving, state_of

GATE_ENV = "COSFTP_TEST_IMPORT_GATE"
GATED_PYFTPDLIB = f"""
import importlib, os, sys
_fifo = os.path.join(os.environ[{GATE_ENV!r}], str(os.getpid()))
os.mkfifo(_fifo)
with open(_fifo, encoding="ascii") as _held:
    _held.read()
_stub = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _stub]
del sys.modules[__name__]
sys.modules[__name__] = importlib.import_module(__name__)
"""


def gated_server(tmp_path, emulator, workers: int) -> tuple[ServerProcess, str]:
    """A server (not launched) whose workers each wait in their import of pyftpdlib for
    ``release``; and the directory of their FIFOs."""
    stub, gate = tmp_path / "stub", tmp_path / "gate"
    (stub / "pyftpdlib").mkdir(parents=True)
    (stub / "pyftpdlib" / "__init__.py").write_text(GATED_PYFTPDLIB)
    gate.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(stub), *filter(None, [os.environ.get("PYTHONPATH")])]), GATE_ENV: str(gate)}
    proc = ServerProcess(str(tmp_path / "server"), emulator.port,
                         [Account("ops", "ops-pw", ALPHA)], env=env,
                         optional={"worker_processes": str(workers), "max_login_failures": "0",
                                   "max_connection_num": "200", "max_connections_per_ip": "0",
                                   "max_prelogin_connections": "0",
                                   "max_prelogin_connections_per_ip": "0"})
    return proc, str(gate)


def release(gate: str, pid: int) -> bool:
    """Let worker ``pid`` go on with its import; False if it does not wait at the gate yet."""
    try:
        fd = os.open(os.path.join(gate, str(pid)), os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # no FIFO yet (ENOENT), or no reader on it yet (ENXIO)
        return False
    os.close(fd)
    return True


def waiting(gate: str) -> list[int]:
    return [int(name) for name in os.listdir(gate)]


def release_all(gate: str) -> None:
    for pid in waiting(gate):
        release(gate, pid)


def holder(proc: ServerProcess, client_ports: set[int]) -> Counter:
    """How many of the connections from ``client_ports`` each worker pid holds."""
    held: Counter = Counter()
    for worker in state_of(proc).workers():
        with contextlib.suppress(psutil.Error):
            for conn in psutil.Process(worker.pid).net_connections("tcp"):
                if conn.raddr and conn.raddr.port in client_ports:
                    held[worker.pid] += 1
    return held


class Burst:
    """``count`` clients that connect at once (released together), then each reads its 220
    and logs in; ``connected`` counts the TCP connections made (the kernel completes them
    whether or not a worker accepted them yet)."""

    def __init__(self, proc: ServerProcess, count: int) -> None:
        self.proc, self.count = proc, count
        self.start = threading.Barrier(count)
        self.lock = threading.Lock()
        self.connected = 0
        self.sessions: list[ftplib.FTP] = []
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._client) for _ in range(count)]

    def _client(self) -> None:
        ftp = ftplib.FTP(encoding="utf-8")
        try:
            self.start.wait()
            ftp.sock = socket.create_connection((self.proc.host, self.proc.port), timeout=120)
            with self.lock:
                self.connected += 1
            ftp.af, ftp.file = ftp.sock.family, ftp.sock.makefile("r", encoding="utf-8")
            ftp.welcome = ftp.getresp()
            ftp.login("ops", "ops-pw")
        except Exception as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
            ftp.close()
            return
        with self.lock:
            self.sessions.append(ftp)

    def __enter__(self) -> Burst:
        for thread in self.threads:
            thread.start()
        return self

    def join(self) -> None:
        for thread in self.threads:
            thread.join()

    def __exit__(self, *exc) -> None:
        self.join()
        for ftp in self.sessions:
            _close(ftp)


def test_a_burst_while_a_worker_sets_up_is_shared_with_it(emulator, tmp_path):
    """32 sessions opened at once while the second of two workers is still setting up end
    within 2 of each other on the two workers (each steps aside once it holds more than
    one session above its least busy peer, a starting one counting as holding none), every
    one greeted and logged in. Before, the worker serving took all 32."""
    proc, gate = gated_server(tmp_path, emulator, workers=2)
    proc.launch()
    try:
        wait_until(lambda: waiting(gate), timeout=60, what="a worker at the import gate")
        first = waiting(gate)[0]
        wait_until(lambda: release(gate, first), what="the first worker released")
        wait_until(lambda: serving(proc, 1, 1), timeout=60, what="the first worker serving")
        second = next(w.pid for w in state_of(proc).workers() if w.pid != first)
        assert [w.state for w in state_of(proc).workers() if w.pid == second] == ["starting"]
        with Burst(proc, 32) as burst:
            wait_until(lambda: burst.connected + len(burst.errors) == burst.count,
                       timeout=60, what="every client connected")
            wait_until(lambda: release(gate, second), timeout=60,
                       what="the second worker released")
            burst.join()
            assert not burst.errors, burst.errors
            assert len(burst.sessions) == 32
            held = holder(proc, {ftp.sock.getsockname()[1] for ftp in burst.sessions})
            assert sum(held.values()) == 32, held
            assert set(held) == {first, second}, held
            assert abs(held[first] - held[second]) <= 2, held
    finally:
        release_all(gate)
        proc.stop()
