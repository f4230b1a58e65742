"""Uploads lost with a killed worker: lftp's retry of one, cut short, on a new connection.

lftp 4.9.2 (defaults: no ``ftp:use-allo``) sends a whole file; its worker is SIGKILLed
before the 226; lftp reconnects and its retry sends the file's first 192 KiB and closes the
data connection, an end of file in stream mode (docs/clients.md, lftp). The master keeps
what the dead worker's in-flight uploads had received (``server.scoreboard.uploads``); that
retry gets 426 and nothing is stored.
"""

from __future__ import annotations

import ftplib
import os
import re
import subprocess

import psutil
import pytest

from .conftest import ALPHA, TWO_WORKERS
from .emulator_proc import request_log
from .server_proc import Account, ServerProcess, wait_until
from .test_clients import lftp_command
from .test_commands import get, put
from .test_master import state_of

RETRY = 192 * 1024  # what lftp's retry sends before it closes
# How long the emulator holds the dead worker's PUT: longer than a test lasts (it then
# stores the file whole, as COS may do with a request that reached it before the kill).
HOLD_SECONDS = 600


@pytest.fixture(scope="module")
def server(emulator, tmp_path_factory):
    """A server of its own with two workers: its workers are killed (the other serves
    while the master replaces one)."""
    proc = ServerProcess(str(tmp_path_factory.mktemp("lost")), emulator.port,
                         [Account("alice", "alice-pw", ALPHA, "RW")],
                         optional={"max_login_failures": "0", **TWO_WORKERS})
    proc.start()
    yield proc
    proc.stop()


def worker_of(server: ServerProcess, ftp: ftplib.FTP) -> psutil.Process:
    """The worker serving the control connection of ``ftp``."""
    client = ftp.sock.getsockname()
    for worker in psutil.Process(server.proc.pid).children():
        if any(conn.raddr and tuple(conn.raddr)[:2] == client[:2]
               for conn in worker.net_connections(kind="tcp")):
            return worker
    raise AssertionError(f"no worker serves {client}")


def killed_before_the_reply(server: ServerProcess, emulator, ftp: ftplib.FTP, key: str,
                            data: bytes) -> None:
    """STOR ``data`` as ``key`` (one PUT: less than a part), all of it sent and the data
    connection closed; SIGKILL the worker while COS holds its PUT (before any 226), and
    wait until the master reaped it."""
    emulator.rendezvous(contains=key, exact=True, kind="PUT", parties=2,
                        timeout=HOLD_SECONDS)
    worker = worker_of(server, ftp)
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd(f"STOR {key}")
    conn.sendall(data)
    conn.close()
    wait_until(lambda: any(entry["kind"] == "PUT" and entry["target"] == key
                           for entry in request_log(emulator.port, contains=key)),
               what="the upload's PUT held at COS")
    # Another arming: later PUTs of this key must not meet the held one and let it go.
    emulator.rendezvous(contains=f"{key}-none", exact=True, parties=2, timeout=1)
    worker.kill()
    worker.wait(timeout=10)
    wait_until(lambda: worker.pid not in [w.pid for w in state_of(server).workers()],
               what="the dead worker reaped")
    ftp.close()


@pytest.mark.parametrize("first", [True, False], ids=["its-first-bytes", "other-bytes"])
def test_a_new_sessions_stor_of_the_start_of_an_upload_a_killed_worker_had_is_cut_short(
        server, emulator, cos, area, first):
    """After the kill, a new session's STOR of that name with that file's first 192 KiB
    only (lftp's retry) gets 426, nothing stored; sent again it stores (once). Another file
    of that size and name (other bytes) stores at once."""
    data = os.urandom(300_000)
    killed_before_the_reply(server, emulator, server.login("alice", "alice-pw"), area, data)
    again = data[:RETRY] if first else os.urandom(RETRY)
    retry = server.login("alice", "alice-pw")
    if first:
        with pytest.raises(ftplib.error_temp, match=r"426 .* the first 196608 of the 300000 "
                                                    r"bytes of the upload of this name"):
            put(retry, area, again)
        assert cos.object_exists(Bucket=ALPHA, Key=area) is False
    assert put(retry, area, again).startswith("226")
    assert get(retry, area) == again
    retry.quit()


def test_lftp_after_its_worker_was_killed_stores_the_whole_file(server, emulator, tmp_path,
                                                                area):
    """lftp with its defaults: its upload's worker SIGKILLed once the file was sent, before
    the 226; lftp reconnects and its retry, cut short, gets 426; it reconnects again, sends
    the whole file and exits 0; the object is the whole file, never its first 192 KiB."""
    data = os.urandom(1024 * 1024 - 48_576)  # one PUT, more than the retry sends
    source = tmp_path / "f.bin"
    source.write_bytes(data)
    key = f"{area}/f.bin"
    emulator.rendezvous(contains=key, exact=True, kind="PUT", parties=2,
                        timeout=HOLD_SECONDS)
    command = lftp_command(server, "set net:max-retries 4; set net:reconnect-interval-base 1; "
                                   "set net:reconnect-interval-multiplier 1; "
                                   f"put {source} -o {key}")
    ftp = server.login("alice", "alice-pw")
    ftp.mkd(area)
    ftp.quit()
    start = len(server.log_text())
    client = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        wait_until(lambda: any(entry["kind"] == "PUT" and entry["target"] == key
                               for entry in request_log(emulator.port, contains=key)),
                   what="lftp's PUT held at COS")
        emulator.rendezvous(contains=f"{key}-none", exact=True, parties=2, timeout=1)
        [worker] = [w for w in psutil.Process(server.proc.pid).children()
                    if _serves_lftp(w, client.pid)]
        worker.kill()
        worker.wait(timeout=10)
        _, errors = client.communicate(timeout=120)
    finally:
        client.kill()
        client.wait()
    assert client.returncode == 0, errors
    assert re.search(r"-> 426 Data connection closed after \d+ bytes, the first \d+ of the "
                     r"1000000 bytes of the upload of this name", server.log_text()[start:])
    check = server.login("alice", "alice-pw")
    assert get(check, key) == data
    check.quit()


def _serves_lftp(worker: psutil.Process, lftp_pid: int) -> bool:
    """Whether ``worker`` holds a connection from the lftp process ``lftp_pid``."""
    theirs = {tuple(conn.laddr)[:2] for conn in psutil.Process(lftp_pid).net_connections("tcp")}
    return any(conn.raddr and tuple(conn.raddr)[:2] in theirs
               for conn in worker.net_connections(kind="tcp"))
