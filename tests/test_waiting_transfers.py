"""The replies of a transfer command answered 150 whose data connection has yet to come,
and of the commands that meet it (ABOR, QUIT, the passive port's timeout, a graceful
stop): every 1xx gets exactly one final reply, in the order RFC 959 gives, so that a
client reading replies one by one never falls out of step."""

from __future__ import annotations

import os
import signal
import socket
import subprocess

import psutil
import pytest

from .conftest import ALPHA, STANDARD_ACCOUNTS
from .server_proc import ServerProcess, connection_refused, wait_until
from .test_clients import require
from .test_command_orders import MIB, Session, drain, sha, still_works, stored

WAITING = {"STOR": "STOR {area}/w", "RETR": "RETR {area}/r", "NLST": "NLST {area}"}


@pytest.fixture
def session(server):
    s = Session(server)
    yield s
    s.close()


def _wait(session: Session, area: str, cos, command: str) -> tuple[str, int]:
    """PASV, then ``command`` answered 150 with no data connection: the address of the
    passive port it waits on."""
    cos.put_object(Bucket=ALPHA, Key=f"{area}/r", Body=b"r" * 100)
    address = session.pasv()
    assert session.cmd(WAITING[command].format(area=area)).startswith("150")
    return address


@pytest.mark.parametrize("command", sorted(WAITING))
def test_abor_of_a_transfer_waiting_for_its_connection(session, area, cos, command):
    """RFC 959: ABOR while the service command is in progress closes it with 426, then
    answers 226 (pyftpdlib answered 225 alone, as if nothing had been under way: the 150
    never got its final reply; then 426 and 225). The port is closed, nothing is stored."""
    address = _wait(session, area, cos, command)
    session.send("ABOR")
    assert session.reply().startswith("426")
    assert session.reply().startswith("226")
    assert session.cmd("NOOP").startswith("200")  # no reply left over
    assert connection_refused(address[1])
    assert stored(cos, f"{area}/w") is None
    still_works(session, area)


@pytest.fixture
def quick_accept(emulator, tmp_path):
    """A server whose passive ports wait one second for their data connection, and whose
    active data connections may take one second to connect."""
    with ServerProcess(str(tmp_path), emulator.port, STANDARD_ACCOUNTS,
                       optional={"accept_timeout": "1", "connect_timeout": "1",
                                 "worker_processes": "1"}) as proc:
        yield proc


def test_a_transfer_whose_passive_port_times_out_gets_425_and_a_stop_proceeds(
        quick_accept, area, cos):
    """The passive port times out (accept_timeout) while a STOR waits for it: the STOR is
    given up with 425 and no longer counts as a transfer in flight, so a graceful stop
    (SIGQUIT) ends the session with 421 at once. pyftpdlib answered
    ``421 Passive data channel timed out.`` and kept the STOR waiting: the stop waited for
    it until graceful_timeout (600 s)."""
    s = Session(quick_accept)
    try:
        _wait(s, area, cos, "STOR")
        assert s.reply().startswith("425")
        assert s.cmd("NOOP").startswith("200")
        quick_accept.proc.send_signal(signal.SIGQUIT)
        assert s.reply().startswith("421")
        quick_accept.proc.wait(60)
    finally:
        s.close()
    assert stored(cos, f"{area}/w") is None


def test_an_active_connection_never_answered_times_out_at_connect_timeout(
        quick_accept, area, cos):
    """PORT to a listener whose accept queue is full (backlog 0 and one connection never
    accepted: Linux drops further SYNs, so the server's connect is never answered), STOR
    sent with it: 200, then the STOR's 425 "timed out" after connect_timeout (1 s here; it
    was a fixed 30 s, past this client's 20 s wait for a reply); nothing stored."""
    with socket.create_server(("127.0.0.1", 0), backlog=0) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=10):  # fills the queue
            s = Session(quick_accept)
            try:
                s.send(f"PORT 127,0,0,1,{port >> 8},{port & 255}\r\nSTOR {area}/w")
                assert s.reply().startswith("200")
                reply = s.reply()
                if reply.startswith("150"):
                    reply = s.reply()
                assert reply.startswith("425") and "timed out" in reply, reply
                assert s.cmd("NOOP").startswith("200")
            finally:
                s.close()
    assert stored(cos, f"{area}/w") is None


def _listening(server: ServerProcess, port: int) -> bool:
    """True while a worker of ``server`` listens on ``port`` (looked up without connecting:
    a connection from the client's address would be held as its data connection)."""
    return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port
               for worker in psutil.Process(server.proc.pid).children()
               for c in worker.net_connections())


def test_an_unused_passive_port_times_out_quietly(quick_accept, area, cos):
    """A PASV port nobody used closes at accept_timeout without a reply (pyftpdlib sent an
    unsolicited 421, read by the client as the next command's reply); the next transfer
    command gets 425 at once, not 150 and a wait for a port that is gone."""
    s = Session(quick_accept)
    try:
        address = s.pasv()
        assert _listening(quick_accept, address[1])
        wait_until(lambda: not _listening(quick_accept, address[1]),
                   what="the passive port closed")
        assert s.cmd("NOOP").startswith("200")
        assert s.cmd(f"NLST {area}").startswith("425")
        assert s.cmd("NOOP").startswith("200")
        still_works(s, area)
    finally:
        s.close()


def test_quit_with_an_idle_active_data_connection_closes_at_once(session, area):
    """QUIT after PORT's connection was made but before any transfer: 221 and the session
    closes (pyftpdlib waited for the idle data connection to close: the session stayed
    open until data_connection_timeout)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(20)
        port = listener.getsockname()[1]
        assert session.cmd(f"PORT 127,0,0,1,{port >> 8},{port & 255}").startswith("200")
        conn, _ = listener.accept()
        with conn:
            assert session.cmd("QUIT").startswith("221")
            session.ftp.sock.settimeout(20)
            assert session.ftp.sock.recv(1) == b""
            conn.settimeout(20)
            assert conn.recv(1) == b""


def test_quit_while_a_transfer_waits_for_its_connection(session, area, cos):
    """QUIT while a STOR waits for its data connection: the STOR gets its final reply
    (425) before 221 (pyftpdlib answered 221 alone), nothing is stored."""
    _wait(session, area, cos, "STOR")
    session.send("QUIT")
    assert session.reply().startswith("425")
    assert session.reply().startswith("221")
    assert session.ftp.sock.recv(1) == b""
    assert stored(cos, f"{area}/w") is None


def _port_command(kind: str, port: int) -> str:
    if kind == "PORT":
        return f"PORT 127,0,0,1,{port >> 8},{port & 255}"
    return f"EPRT |1|127.0.0.1|{port}|"


@pytest.mark.parametrize("kind", ["PORT", "EPRT"])
def test_pipelined_port_and_retr_are_answered_in_order(session, area, cos, kind):
    """PORT and RETR sent together (no wait for PORT's reply): 200, then the RETR's 1xx
    and 226, as vsftpd and proftpd answer (PORT answered at once, the connection used by the
    transfer). pyftpdlib answered PORT only once connected: the 150 came first, read by
    the client as PORT's reply, and every later reply one behind."""
    data = os.urandom(5000)
    cos.put_object(Bucket=ALPHA, Key=f"{area}/f", Body=data)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(20)
        port = listener.getsockname()[1]
        session.send(f"{_port_command(kind, port)}\r\nRETR {area}/f")
        assert session.reply().startswith("200")
        assert session.reply()[:3] in ("125", "150")
        conn, _ = listener.accept()
        conn.settimeout(20)
        assert drain(conn) == data
    assert session.reply().startswith("226")
    assert session.cmd("NOOP").startswith("200")
    still_works(session, area)


def test_pipelined_port_to_a_closed_port_and_stor(session, area, cos):
    """PORT to a port nobody listens on, STOR sent with it: 200 for PORT, then the STOR's
    own refusal (425, or 150 and 425 once the connection failed); nothing stored, nothing
    left over, and the next PASV transfer works."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
    session.send(f"PORT 127,0,0,1,{port >> 8},{port & 255}\r\nSTOR {area}/w")
    assert session.reply().startswith("200")
    reply = session.reply()
    if reply.startswith("150"):
        reply = session.reply()
    assert reply.startswith("425"), reply
    assert session.cmd("NOOP").startswith("200")
    assert stored(cos, f"{area}/w") is None
    still_works(session, area)


@pytest.mark.parametrize("sync", ["on", "off"])
def test_lftp_active_mode_with_and_without_sync_mode(server, area, cos, tmp_path, sync):
    """lftp in active mode; with ``ftp:sync-mode off`` it sends PORT and the transfer
    command together. Before, it read the 150 as PORT's reply, waited, timed out and
    reconnected over and over (listing, download and upload never done)."""
    data = os.urandom(300_000)
    cos.put_object(Bucket=ALPHA, Key=f"{area}/f", Body=data)
    script = (f"set ftp:sync-mode {sync}; set ftp:passive-mode off; set net:max-retries 1; "
              f"set net:timeout 15; set cmd:fail-exit true; cd {area}; cls -1; "
              f"get f -o {tmp_path}/f; put {tmp_path}/f -o g; bye")
    done = subprocess.run([require("lftp"), "-u", "alice,alice-pw", "-p", str(server.port), "-e",
                           script, "127.0.0.1"], capture_output=True, timeout=90)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [b"f"]
    assert (tmp_path / "f").read_bytes() == data
    assert sha(stored(cos, f"{area}/g")) == sha(data)


def test_curl_active_mode_upload_listing_and_download(server, area, cos, tmp_path):
    """curl ``--ftp-port`` (EPRT, and PORT with ``--disable-eprt``): it waits for the 200,
    sends the transfer command, and accepts the connection the server made meanwhile."""
    data = os.urandom(2 * MIB + 3)
    source = tmp_path / "up"
    source.write_bytes(data)
    base = [require("curl"), "-s", "-S", "--ftp-create-dirs", "--ftp-port", "127.0.0.1", "--user",
            "alice:alice-pw"]
    url = f"ftp://127.0.0.1:{server.port}/{area}/"
    for extra, name in (([], "a"), (["--disable-eprt"], "b")):
        done = subprocess.run([*base, *extra, "-T", str(source), url + name],
                              capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert sha(stored(cos, f"{area}/{name}")) == sha(data)
        done = subprocess.run([*base, *extra, "-l", url], capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert name.encode() in done.stdout.split()
        done = subprocess.run([*base, *extra, url + name], capture_output=True, timeout=60)
        assert done.returncode == 0 and done.stdout == data, done.stderr


@pytest.fixture
def lone(emulator, tmp_path):
    """A server of one worker, for a test to stop."""
    with ServerProcess(str(tmp_path), emulator.port, STANDARD_ACCOUNTS,
                       optional={"worker_processes": "1"}) as proc:
        yield proc


def _replies_until_closed(session: Session) -> list[str]:
    """The reply codes the server sends until it closes the control connection."""
    codes = []
    try:
        while line := session.ftp.getline():
            codes.append(line[:3])
    except EOFError:
        pass
    return codes


def test_a_stop_answers_a_quit_that_waits_for_a_transfer(lone, area, cos):
    """QUIT during an upload waits for the upload to end; a stop (TERM) that ends it first
    answers the upload 426 and the QUIT 221, as when the transfer ends otherwise (the
    client asked to go; 421 said the service went away under a command it had not sent).
    Before, the QUIT's answer was 421; nothing is stored."""
    s = Session(lone)
    try:
        conn = s.connect(s.pasv())
        assert s.cmd(f"STOR {area}/w")[0] == "1"
        conn.sendall(os.urandom(MIB))
        start = len(lone.log_text())
        s.send("QUIT")
        wait_until(lambda: "<- QUIT" in lone.log_text()[start:], what="the QUIT read")
        lone.proc.send_signal(signal.SIGTERM)
        assert _replies_until_closed(s) == ["426", "221"]
        conn.close()
        lone.proc.wait(60)
    finally:
        s.close()
    assert stored(cos, f"{area}/w") is None


@pytest.mark.parametrize("command", sorted(WAITING))
def test_a_stop_answers_a_transfer_waiting_for_its_connection(lone, area, cos, command):
    """A stop (TERM) while a transfer command waits for its data connection gives it its
    own final reply, 426 as a running transfer the stop cuts gets, before the 421 that
    closes the session; ABOR, QUIT and a port that timed out answer a waiting command so
    too. Before, its 150 got the 421 alone. Nothing is stored."""
    s = Session(lone)
    try:
        _wait(s, area, cos, command)
        lone.proc.send_signal(signal.SIGTERM)
        assert _replies_until_closed(s) == ["426", "421"]
        lone.proc.wait(60)
    finally:
        s.close()
    assert stored(cos, f"{area}/w") is None
