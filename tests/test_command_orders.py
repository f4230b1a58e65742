"""Unusual orderings of FTP commands, over real sessions: a table of the orderings polite
clients never send, each with the replies a careful server gives (RFC 959, 1123, 3659; what
vsftpd and proftpd answer), then a seeded random walk over the same commands in two or
three sessions at once. Invariants everywhere: every reply is a well-formed FTP reply, no
data connection carries bytes of another command, a file in COS is whole (the SHA-256 of
what one STOR sent) or absent, and the session still works afterwards."""

from __future__ import annotations

import ftplib
import hashlib
import os
import random
import re
import socket
import subprocess
from typing import Optional

import psutil
import pytest
from qcloud_cos.cos_exception import CosServiceError

from .conftest import ALPHA, STANDARD_ACCOUNTS, _close
from .server_proc import ServerProcess, wait_until
from .test_commands import get, put
from .test_transfers import pending_uploads

REPLY = re.compile(r"^[1-5][0-5]\d[ -]")
MIB = 1024 * 1024
# What the worker may keep after the walk's sessions closed: its pools' idle threads (a
# walk runs up to three transfers at once) and their pooled COS connections.
SPARE_THREADS = 4
SPARE_FDS = 8


class Session:
    """An ftplib session driven one command at a time: every reply is read and checked."""

    def __init__(self, server, user: str = "alice", password: str = "alice-pw") -> None:
        self.server = server
        self.ftp = server.login(user, password, timeout=20)
        self.ftp.voidcmd("TYPE I")

    def send(self, line: str) -> None:
        self.ftp.sock.sendall(line.encode("utf-8") + b"\r\n")

    def reply(self) -> str:
        text = self.ftp.getmultiline()
        assert REPLY.match(text) and text[:3] == text.splitlines()[-1][:3], \
            f"malformed reply {text!r}"
        return text

    def cmd(self, line: str) -> str:
        self.send(line)
        return self.reply()

    def abort(self) -> None:
        """ABOR: 426 for a transfer it cut, then 225/226."""
        self.send("ABOR")
        replies = [self.reply()]
        if replies[0].startswith("426"):
            replies.append(self.reply())
        assert replies[-1][:3] in ("225", "226"), replies

    def pasv(self) -> tuple[str, int]:
        reply = self.cmd("PASV")
        assert reply.startswith("227"), reply
        return ftplib.parse227(reply)

    def connect(self, address: tuple[str, int]) -> socket.socket:
        return socket.create_connection(address, timeout=20)

    def close(self) -> None:
        _close(self.ftp)


def drain(conn: socket.socket) -> bytes:
    """Everything the server sends on ``conn`` until it closes it."""
    out = bytearray()
    while chunk := conn.recv(MIB):
        out += chunk
    conn.close()
    return bytes(out)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored(cos, key: str) -> Optional[bytes]:
    """The object's bytes, or None if it is absent."""
    try:
        return cos.get_object(Bucket=ALPHA, Key=key)["Body"].get_raw_stream().read()
    except CosServiceError as exc:
        if exc.get_error_code() == "NoSuchKey":
            return None
        raise


def still_works(session: Session, area: str) -> None:
    """NOOP, a listing, a small STOR/RETR round trip: the session was not left confused."""
    assert session.ftp.voidcmd("NOOP").startswith("200")
    data = os.urandom(1000)
    assert put(session.ftp, f"{area}/check", data).startswith("226")
    assert get(session.ftp, f"{area}/check") == data
    assert "check" in session.ftp.nlst(area)


@pytest.fixture
def session(server):
    s = Session(server)
    yield s
    s.close()


@pytest.fixture
def rival(server):
    s = Session(server)
    yield s
    s.close()


def test_pasv_twice_then_one_connection(session, area, cos):
    """The first PASV's port is closed by the second; the transfer uses the second's."""
    data = os.urandom(5000)
    cos.put_object(Bucket=ALPHA, Key=f"{area}/f", Body=data)
    first = session.pasv()
    second = session.pasv()
    with pytest.raises(OSError):
        session.connect(first).recv(1)  # refused, or closed without a byte
    conn = session.connect(second)
    assert session.cmd(f"RETR {area}/f")[:3] in ("125", "150")
    assert drain(conn) == data
    assert session.reply().startswith("226")
    still_works(session, area)


def test_port_then_pasv_uses_the_passive_connection(session, area, cos):
    """PASV after PORT drops the active connection: the file goes down the passive one
    only, and the PORT listener gets nothing."""
    data = os.urandom(5000)
    cos.put_object(Bucket=ALPHA, Key=f"{area}/f", Body=data)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        assert session.cmd(f"PORT 127,0,0,1,{port >> 8},{port & 255}").startswith("200")
        address = session.pasv()
        conn = session.connect(address)
        assert session.cmd(f"RETR {area}/f")[:3] in ("125", "150")
        assert drain(conn) == data
        assert session.reply().startswith("226")
        listener.settimeout(0)
        try:
            active, _ = listener.accept()
        except BlockingIOError:
            pass
        else:
            active.settimeout(20)
            assert drain(active) == b""
    still_works(session, area)


def test_pasv_then_port_uses_the_active_connection(session, area, cos):
    data = os.urandom(5000)
    cos.put_object(Bucket=ALPHA, Key=f"{area}/f", Body=data)
    address = session.pasv()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        assert session.cmd(f"PORT 127,0,0,1,{port >> 8},{port & 255}").startswith("200")
        with pytest.raises(OSError):
            session.connect(address).recv(1)
        listener.settimeout(20)
        assert session.cmd(f"RETR {area}/f")[:3] in ("125", "150")
        active, _ = listener.accept()
        active.settimeout(20)
        assert drain(active) == data
    assert session.reply().startswith("226")
    still_works(session, area)


@pytest.mark.parametrize("command", ["RETR", "STOR", "APPE", "LIST", "NLST", "MLSD"])
def test_transfer_without_data_connection_then_pasv(session, area, cos, command):
    """425 (vsftpd: "Use PORT or PASV first"), nothing stored; after PASV the next
    transfer's data connection carries only its own bytes."""
    cos.put_object(Bucket=ALPHA, Key=f"{area}/f", Body=b"old")
    assert session.cmd(f"{command} {area}/g" if command in ("STOR", "APPE") else
                       f"{command} {area}/f" if command == "RETR" else
                       f"{command} {area}").startswith("425")
    assert stored(cos, f"{area}/g") is None
    conn = session.connect(session.pasv())
    assert session.cmd(f"NLST {area}")[:3] in ("125", "150")
    assert drain(conn).decode().split() == ["f"]
    assert session.reply().startswith("226")
    still_works(session, area)


def test_rest_then_a_listing_then_retr(session, area, cos):
    """REST before a listing does not cut the listing (RFC 3659 5.5: a misplaced REST may
    be kept for the next transfer, or ignored): the listing is whole."""
    data = os.urandom(5000)
    cos.put_object(Bucket=ALPHA, Key=f"{area}/f", Body=data)
    assert session.cmd("REST 3").startswith("350")
    conn = session.connect(session.pasv())
    assert session.cmd(f"NLST {area}")[:3] in ("125", "150")
    assert drain(conn).decode().split() == ["f"]
    assert session.reply().startswith("226")
    conn = session.connect(session.pasv())
    assert session.cmd(f"RETR {area}/f")[:3] in ("125", "150")
    assert drain(conn) in (data, data[3:])
    assert session.reply().startswith("226")
    still_works(session, area)


def test_rest_then_appe_is_refused(session, area, cos):
    cos.put_object(Bucket=ALPHA, Key=f"{area}/f", Body=b"abc")
    session.pasv()
    assert session.cmd("REST 2").startswith("350")
    assert session.cmd(f"APPE {area}/f")[:3] in ("450", "550", "503")
    assert stored(cos, f"{area}/f") == b"abc"
    still_works(session, area)


@pytest.mark.parametrize("command", ["RETR", "STOR"])
def test_rest_then_type_a_then_a_transfer_is_refused(session, area, cos, command):
    """REST is refused in ASCII mode (pyftpdlib 501; vsftpd refuses RETR "No support for
    resume of ASCII transfer"): TYPE A between REST and the transfer must not resume at a
    byte offset the client computed on converted line ends."""
    data = b"line\n" * 1000
    cos.put_object(Bucket=ALPHA, Key=f"{area}/f", Body=data)
    assert session.cmd(f"REST {5 if command == 'RETR' else len(data)}").startswith("350")
    assert session.cmd("TYPE A").startswith("200")
    session.pasv()
    assert session.cmd(f"{command} {area}/f")[:3] in ("550", "554", "501", "503")
    assert stored(cos, f"{area}/f") == data
    session.cmd("TYPE I")
    still_works(session, area)


@pytest.mark.parametrize("between", ["NOOP", "DELE", "RNFR", "STOR"])
def test_rnfr_then_anything_but_rnto(session, area, cos, between):
    """RFC 959: RNFR must be followed at once by RNTO. Whatever came between, RNTO never
    renames a file other than the one the client meant, and nothing is lost."""
    cos.put_object(Bucket=ALPHA, Key=f"{area}/a", Body=b"a")
    cos.put_object(Bucket=ALPHA, Key=f"{area}/b", Body=b"b")
    assert session.cmd(f"RNFR {area}/a").startswith("350")
    if between == "NOOP":
        session.cmd("NOOP")
    elif between == "DELE":
        assert session.cmd(f"DELE {area}/a").startswith("250")
    elif between == "RNFR":
        assert session.cmd(f"RNFR {area}/b").startswith("350")
    else:
        put(session.ftp, f"{area}/a", b"new a")
    reply = session.cmd(f"RNTO {area}/c")
    assert reply[:3] in ("250", "503", "550"), reply
    if reply.startswith("250"):  # the source is deleted just after the reply
        wait_until(lambda: stored(cos, f"{area}/{'b' if between == 'RNFR' else 'a'}") is None,
                   what="the rename's source to go")
    objects = {k: stored(cos, f"{area}/{k}") for k in "abc"}
    if between == "RNFR":  # the second RNFR replaces the first
        assert reply.startswith("250") and objects == {"a": b"a", "b": None, "c": b"b"}
    elif between == "DELE":
        assert reply[:3] in ("503", "550") and objects == {"a": None, "b": b"b", "c": None}
    elif reply.startswith("250"):
        assert objects["a"] is None and objects["c"] in (b"a", b"new a")
    still_works(session, area)


def test_abor_before_after_and_without_transfer(session, area, cos):
    cos.put_object(Bucket=ALPHA, Key=f"{area}/f", Body=b"x" * 100)
    assert session.cmd("ABOR").startswith("225")
    session.pasv()
    assert session.cmd("ABOR")[:3] in ("225", "226")
    conn = session.connect(session.pasv())
    assert session.cmd(f"RETR {area}/f")[:3] in ("125", "150")
    assert drain(conn) == b"x" * 100
    assert session.reply().startswith("226")
    assert session.cmd("ABOR").startswith("225")
    still_works(session, area)


def test_abor_during_an_upload_stores_nothing(session, area, cos):
    conn = session.connect(session.pasv())
    assert session.cmd(f"STOR {area}/f")[:3] in ("125", "150")
    conn.sendall(os.urandom(3 * MIB))
    session.abort()
    conn.close()
    assert stored(cos, f"{area}/f") is None
    wait_until(lambda: not pending_uploads(cos, f"{area}/f"), what="the upload aborted")
    still_works(session, area)


SECOND = {"RETR": "RETR {area}/r", "NLST": "NLST {area}", "STOR": "STOR {area}/w2",
          "MLSD": "MLSD {area}"}
BUSY = "450"  # RFC 959 lists 450 among RETR's, STOR's and LIST's replies


@pytest.mark.parametrize("second", sorted(SECOND))
def test_a_transfer_while_another_waits_for_its_connection(session, area, cos, second):
    """PASV, STOR (150, no data connection yet), then another transfer command: refused
    (on main it answered 150 too, and the STOR's 150 never got its final reply; the one
    data connection went to whichever command pyftpdlib looked at first)."""
    cos.put_object(Bucket=ALPHA, Key=f"{area}/r", Body=b"r" * 100)
    address = session.pasv()
    assert session.cmd(f"STOR {area}/w").startswith("150")
    assert session.cmd(SECOND[second].format(area=area)).startswith(BUSY)
    conn = session.connect(address)
    conn.sendall(b"first")
    conn.close()
    assert session.reply().startswith("226")
    assert session.cmd("NOOP").startswith("200")  # no reply left over
    assert stored(cos, f"{area}/w") == b"first" and stored(cos, f"{area}/w2") is None
    still_works(session, area)


@pytest.mark.parametrize("second", sorted(SECOND))
def test_a_transfer_while_a_download_runs(session, area, cos, second):
    """RETR of 8 MiB under way, then another transfer command: refused; the data
    connection carries the first file only (on main: 125 to both, the second's bytes were
    queued behind the first's or lost, and the replies shifted by one)."""
    data = os.urandom(8 * MIB)
    cos.put_object(Bucket=ALPHA, Key=f"{area}/big", Body=data)
    cos.put_object(Bucket=ALPHA, Key=f"{area}/r", Body=b"r" * 100)
    conn = session.connect(session.pasv())
    assert session.cmd(f"RETR {area}/big")[:3] in ("125", "150")
    head = conn.recv(1000)
    assert session.cmd(SECOND[second].format(area=area)).startswith(BUSY)
    assert head + drain(conn) == data
    assert session.reply().startswith("226")
    assert session.cmd("NOOP").startswith("200")
    assert stored(cos, f"{area}/w2") is None
    still_works(session, area)


@pytest.mark.parametrize("second", sorted(SECOND))
def test_a_transfer_while_an_upload_runs(session, area, cos, second):
    cos.put_object(Bucket=ALPHA, Key=f"{area}/r", Body=b"r" * 100)
    data = os.urandom(2 * MIB + 5)
    conn = session.connect(session.pasv())
    assert session.cmd(f"STOR {area}/w")[:3] in ("125", "150")
    conn.sendall(data[:MIB])
    assert session.cmd(SECOND[second].format(area=area)).startswith(BUSY)
    conn.sendall(data[MIB:])
    conn.close()
    assert session.reply().startswith("226")
    assert session.cmd("NOOP").startswith("200")
    assert sha(stored(cos, f"{area}/w")) == sha(data) and stored(cos, f"{area}/w2") is None
    still_works(session, area)


@pytest.mark.parametrize("setup", ["PASV", "EPSV", "PORT", "EPRT"])
@pytest.mark.parametrize("direction", ["RETR", "STOR"])
def test_a_new_data_connection_while_a_transfer_runs(session, area, cos, direction, setup):
    """PASV/EPSV/PORT/EPRT while a transfer runs is refused (450, as another transfer
    command is) and the transfer goes on to its 226, whole. pyftpdlib closed the running
    data channel for the new one: the transfer's 125/150 never got its final reply (the
    new command's 227/229/200 came instead), the upload was cut short."""
    data = os.urandom(3 * MIB)
    cos.put_object(Bucket=ALPHA, Key=f"{area}/f", Body=data)
    conn = session.connect(session.pasv())
    assert session.cmd(f"{direction} {area}/{'f' if direction == 'RETR' else 'g'}")[0] == "1"
    head = conn.recv(1000) if direction == "RETR" else b""
    if direction == "STOR":
        conn.sendall(data[:MIB])
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        line = {"PORT": f"PORT 127,0,0,1,{port >> 8},{port & 255}",
                "EPRT": f"EPRT |1|127.0.0.1|{port}|"}.get(setup, setup)
        assert session.cmd(line).startswith(BUSY)
    if direction == "RETR":
        assert head + drain(conn) == data
    else:
        conn.sendall(data[MIB:])
        conn.close()
    assert session.reply().startswith("226")
    assert session.cmd("NOOP").startswith("200")  # no reply left over
    if direction == "STOR":
        assert sha(stored(cos, f"{area}/g")) == sha(data)
    still_works(session, area)


@pytest.mark.parametrize("direction", ["RETR", "STOR"])
def test_quit_during_a_transfer_lets_it_finish(server, session, area, cos, direction):
    """RFC 959: QUIT during a transfer closes the session once the transfer ended and its
    reply went out: 226, then 221 (pyftpdlib answered 221 at once, 226 at the end). The
    session closed inside the data channel's close, before the transfer's event was
    reported: a traceback in the log (AttributeError on the session's filesystem), the
    download's or failed upload's event lost."""
    log_start = len(server.log_text())
    data = os.urandom(3 * MIB)
    cos.put_object(Bucket=ALPHA, Key=f"{area}/f", Body=data)
    conn = session.connect(session.pasv())
    assert session.cmd(f"{direction} {area}/{'f' if direction == 'RETR' else 'g'}")[0] == "1"
    if direction == "RETR":
        head = conn.recv(1000)
        session.send("QUIT")
        assert head + drain(conn) == data
    else:
        conn.sendall(data[:MIB])
        session.send("QUIT")
        conn.sendall(data[MIB:])
        conn.close()
    assert [session.reply()[:3] for _ in range(2)] == ["226", "221"]
    assert session.ftp.sock.recv(1) == b""  # and the session is closed
    if direction == "STOR":
        assert sha(stored(cos, f"{area}/g")) == sha(data)
    wait_until(lambda: "FTP session closed" in server.log_text()[log_start:],
               what="the session to close")
    log = server.log_text()[log_start:]
    assert "Traceback" not in log and "unhandled exception" not in log


@pytest.mark.parametrize("change", ["DELE", "STOR", "RNFR"])
def test_a_file_changed_by_another_session_while_read(session, rival, area, cos, change):
    """A second session deletes, overwrites or renames the file a first one is reading:
    the reader gets the old file whole (226) or a prefix of it with 426/451, never bytes
    of the new one."""
    old, new = os.urandom(8 * MIB), os.urandom(8 * MIB)
    cos.put_object(Bucket=ALPHA, Key=f"{area}/f", Body=old)
    conn = session.connect(session.pasv())
    assert session.cmd(f"RETR {area}/f")[0] == "1"
    head = conn.recv(1000)
    if change == "DELE":
        assert rival.cmd(f"DELE {area}/f").startswith("250")
    elif change == "STOR":
        assert put(rival.ftp, f"{area}/f", new).startswith("226")
    else:
        assert rival.cmd(f"RNFR {area}/f").startswith("350")
        assert rival.cmd(f"RNTO {area}/g").startswith("250")
    data, final = head + drain(conn), session.reply()
    if final.startswith("226"):
        assert data == old
    else:
        assert final[:3] in ("426", "451") and old.startswith(data), final
    still_works(session, area)
    still_works(rival, area)


def test_appe_to_a_file_another_session_writes(session, rival, area, cos):
    """APPE to a file whose STOR another session has under way: each ends with its own
    reply, and the object is one writer's whole result."""
    first = os.urandom(2 * MIB + 3)
    conn = rival.connect(rival.pasv())
    assert rival.cmd(f"STOR {area}/w")[0] == "1"
    conn.sendall(first[:MIB])
    appended = session.connect(session.pasv())
    reply = session.cmd(f"APPE {area}/w")
    if reply[0] == "1":
        appended.sendall(b"tail")
        appended.close()
        reply = session.reply()
    assert reply[:3] in ("226", "450", "451", "550"), reply
    conn.sendall(first[MIB:])
    conn.close()
    assert rival.reply()[:3] in ("226", "450", "451")
    assert stored(cos, f"{area}/w") in (first, b"tail", first + b"tail")
    still_works(session, area)
    still_works(rival, area)


def test_user_again_mid_session(session, area, cos):
    """USER while logged in starts a new login (RFC 959; vsftpd and proftpd refuse it):
    a wrong password leaves the session logged out, a right one logged in anew."""
    assert session.cmd("USER alice").startswith("331")
    assert session.cmd("PASS wrong").startswith("530")
    assert session.cmd(f"NLST {area}").startswith("530")
    assert session.cmd("USER alice").startswith("331")
    assert session.cmd("PASS alice-pw").startswith("230")
    session.cmd("TYPE I")
    still_works(session, area)


@pytest.mark.parametrize("setup", ["PASV", "EPSV", "PORT"])
@pytest.mark.parametrize("waiting", ["STOR", "RETR", "NLST"])
def test_a_new_data_connection_while_a_transfer_waits(session, area, cos, setup, waiting):
    """PASV, STOR/RETR/NLST (150), then PASV/EPSV/PORT before connecting: the waiting
    command is given up with its final reply (425) before the new command's; on main it
    was dropped silently, its 150 never answered. Nothing is stored, and the next data
    connection carries the next command's bytes only."""
    cos.put_object(Bucket=ALPHA, Key=f"{area}/r", Body=b"r" * 100)
    session.pasv()
    argument = {"STOR": f"{area}/w", "RETR": f"{area}/r", "NLST": area}[waiting]
    assert session.cmd(f"{waiting} {argument}").startswith("150")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        if setup == "PORT":
            port = listener.getsockname()[1]
            session.send(f"PORT 127,0,0,1,{port >> 8},{port & 255}")
        else:
            session.send(setup)
        assert session.reply().startswith("425")
        assert session.reply()[:3] in ("200", "227", "229")
    assert session.cmd("NOOP").startswith("200")
    assert stored(cos, f"{area}/w") is None
    still_works(session, area)


def test_active_mode_round_trips_with_ftplib_and_curl(server, session, area, cos):
    """Active mode as clients use it, after the connector's changes: ftplib's PORT and
    curl's EPRT/PORT (``-P``), an upload and downloads, one after another."""
    data = os.urandom(3 * MIB + 7)
    session.ftp.set_pasv(False)
    assert put(session.ftp, f"{area}/a", data).startswith("226")
    assert get(session.ftp, f"{area}/a") == data
    assert get(session.ftp, f"{area}/a", rest=MIB) == data[MIB:]
    assert session.ftp.nlst(area) == ["a"]
    done = subprocess.run(["curl", "-s", "-S", "-P", "127.0.0.1", "--user", "alice:alice-pw",
                           f"ftp://127.0.0.1:{server.port}/{area}/a"],
                          capture_output=True, timeout=60)
    assert done.returncode == 0 and done.stdout == data, done.stderr


# --- the random walk

class Walk:
    """Sessions taking seeded random steps over a few keys of one area; what each key may
    hold is every payload whose STOR got 226 (and, after a rename, what the source could
    hold). A step may leave a transfer half done for a later step (ABOR, QUIT, a hang-up,
    another transfer command) to meet."""

    BIG = 4 * MIB

    def __init__(self, server, cos, area: str, seed: int, sessions: int = 3) -> None:
        self.server, self.cos, self.area = server, cos, area
        self.rng = random.Random(seed)
        self.keys = [f"{area}/k{i}" for i in range(3)]
        self.big = os.urandom(self.BIG)
        cos.put_object(Bucket=ALPHA, Key=f"{area}/big", Body=self.big)
        self.allowed: dict[str, set[bytes]] = {key: set() for key in self.keys}
        self.sessions = [Session(server) for _ in range(sessions)]
        self.trace: list[str] = []

    def payload(self) -> bytes:
        return os.urandom(self.rng.choice([0, 1, 1000, 70_000, MIB + 17]))

    def step(self) -> None:
        index = self.rng.randrange(len(self.sessions))
        name = self.rng.choice(STEPS)
        self.trace.append(f"s{index} {name}")
        STEP_FUNCTIONS[name](self, self.sessions[index])
        self.sessions[index].ftp.voidcmd("NOOP")  # no reply left over, the session goes on
        self.check_stored()

    def check_stored(self) -> None:
        for key in self.keys:
            data = stored(self.cos, key)
            assert data is None or data in self.allowed[key], \
                f"{key} holds {len(data)} bytes no STOR sent whole"

    def retr(self, s: Session, key: str, offset: int = 0) -> None:
        conn = s.connect(s.pasv())
        if offset:
            assert s.cmd(f"REST {offset}").startswith("350")
        first = s.cmd(f"RETR {key}")
        if first[0] != "1":
            conn.close()
            assert first[:3] in ("550", "554"), first
            return
        data, final = drain(conn), s.reply()
        candidates = self.allowed.get(key) or {self.big}
        if final.startswith("226"):
            assert any(data == c[offset:] for c in candidates), f"RETR {key}: foreign bytes"
        else:
            assert final[:3] in ("426", "451"), final
            assert any(c[offset:].startswith(data) for c in candidates)

    def restart(self, s: Session) -> None:
        s.close()
        s.__init__(self.server)


def _stor(walk: Walk, s: Session) -> None:
    _stor_into(walk, s, walk.rng.choice(walk.keys), walk.payload())


def _retr(walk: Walk, s: Session) -> None:
    walk.retr(s, walk.rng.choice([*walk.keys, f"{walk.area}/big"]))


def _rest_retr(walk: Walk, s: Session) -> None:
    walk.retr(s, f"{walk.area}/big", walk.rng.randrange(walk.BIG))


def _list(walk: Walk, s: Session) -> None:
    conn = s.connect(s.pasv())
    assert s.cmd(f"{walk.rng.choice(['NLST', 'LIST', 'MLSD'])} {walk.area}")[0] == "1"
    listing = drain(conn).decode("utf-8")
    assert s.reply().startswith("226")
    names = {line.split()[-1].rsplit("/", 1)[-1].split(";")[-1].strip()
             for line in listing.splitlines() if line.strip()}
    assert names <= {"k0", "k1", "k2", "big", "check"}, f"foreign lines: {listing[:200]!r}"


def _no_data_connection(walk: Walk, s: Session) -> None:
    """ABOR drops a PASV or PORT an earlier step left unused; then a transfer gets 425."""
    assert s.cmd("ABOR")[:3] in ("225", "226")
    command = walk.rng.choice(["RETR", "STOR", "LIST", "MLSD"])
    assert s.cmd(f"{command} {walk.rng.choice(walk.keys)}").startswith("425")


def _unused_data_setup(walk: Walk, s: Session) -> None:
    """PASV, EPSV or PORT never used: the next transfer sets up its own."""
    kind = walk.rng.choice(["PASV", "EPSV", "PORT"])
    if kind == "PORT":
        with socket.create_server(("127.0.0.1", 0)) as listener:
            port = listener.getsockname()[1]
            assert s.cmd(f"PORT 127,0,0,1,{port >> 8},{port & 255}").startswith("200")
    else:
        assert s.cmd(kind)[:3] in ("227", "229")


def _abor_download(walk: Walk, s: Session) -> None:
    conn = s.connect(s.pasv())
    assert s.cmd(f"RETR {walk.area}/big")[0] == "1"
    head = conn.recv(walk.rng.choice([1, 1000, MIB]))
    assert walk.big.startswith(head)
    s.abort()
    conn.close()


def _abor_upload(walk: Walk, s: Session) -> None:
    conn = s.connect(s.pasv())
    assert s.cmd(f"STOR {walk.rng.choice(walk.keys)}")[0] == "1"
    conn.sendall(os.urandom(walk.rng.choice([0, 1000, MIB + 5])))
    s.abort()
    conn.close()


def _busy(walk: Walk, s: Session) -> None:
    """A transfer waits for its connection; another transfer command is refused; the
    first then runs."""
    key, data = walk.rng.choice(walk.keys), walk.payload()
    address = s.pasv()
    assert s.cmd(f"STOR {key}").startswith("150")
    second = walk.rng.choice(["RETR", "STOR", "NLST", "APPE"])
    assert s.cmd(f"{second} {walk.rng.choice(walk.keys)}").startswith("450")
    conn = s.connect(address)
    conn.sendall(data)
    conn.close()
    if s.reply().startswith("226"):
        walk.allowed[key].add(data)


def _rest_then_other(walk: Walk, s: Session) -> None:
    assert s.cmd(f"REST {walk.rng.randrange(1, 100)}").startswith("350")
    walk.rng.choice([_list, _unused_data_setup, _type_a_rest])(walk, s)
    assert s.cmd("REST 0").startswith("350")  # the walk's next transfer starts at 0


def _type_a_rest(walk: Walk, s: Session) -> None:
    assert s.cmd("TYPE A").startswith("200")
    assert s.cmd("REST 5").startswith("501")  # pyftpdlib refuses REST in ASCII mode
    assert s.cmd("TYPE I").startswith("200")


def _rename(walk: Walk, s: Session) -> None:
    source, target = walk.rng.sample(walk.keys, 2)
    reply = s.cmd(f"RNFR {source}")
    if not reply.startswith("350"):
        assert reply.startswith("550"), reply
        return
    if walk.rng.random() < 0.5:
        s.cmd(walk.rng.choice(["NOOP", "PWD", f"SIZE {target}", "TYPE I"]))
    reply = s.cmd(f"RNTO {target}")
    assert reply[:3] in ("250", "503", "550"), reply
    if reply.startswith("250"):
        walk.allowed[target] |= walk.allowed[source]


def _dele(walk: Walk, s: Session) -> None:
    assert s.cmd(f"DELE {walk.rng.choice(walk.keys)}")[:3] in ("250", "550")


def _user_again(walk: Walk, s: Session) -> None:
    assert s.cmd("USER alice").startswith("331")
    assert s.cmd("PASS alice-pw").startswith("230")
    assert s.cmd("TYPE I").startswith("200")


def _odd_arguments(walk: Walk, s: Session) -> None:
    """Empty, huge and odd arguments (no STOR: those names would land at the bucket's
    root; test_reliability covers names COS cannot store)."""
    assert s.cmd("ABOR")[:3] in ("225", "226")  # no data connection: no transfer starts
    line = walk.rng.choice(["RETR", "APPE", "CWD", "RNFR", "DELE", "SIZE", "REST", "PORT",
                            "MLST", "MDTM"])
    argument = walk.rng.choice(["", " ", "x" * 5000, "-1", "9" * 40, "../" * 200, "\t"])
    reply = s.cmd(f"{line} {argument}".rstrip() if argument != " " else f"{line}  ")
    assert reply[0] in "2345", reply
    if line == "REST" and reply.startswith("350"):
        assert s.cmd("REST 0").startswith("350")


def _quit_mid_transfer(walk: Walk, s: Session) -> None:
    """QUIT, or the control connection dropped, while a STOR or RETR is half done; a
    fresh session replaces this one. A hang-up stores nothing (the data connection's end
    is no end of file then); after QUIT the STOR may end normally (RFC 959: the transfer
    finishes first)."""
    quit_first = walk.rng.random() < 0.5
    walk.trace[-1] += " after QUIT" if quit_first else " hanging up"
    conn = s.connect(s.pasv())
    if walk.rng.random() < 0.5:
        key, data = walk.rng.choice(walk.keys), os.urandom(1000)
        assert s.cmd(f"STOR {key}")[0] == "1"
        conn.sendall(data)
        if quit_first:
            walk.allowed[key].add(data)
    else:
        assert s.cmd(f"RETR {walk.area}/big")[0] == "1"
        conn.recv(1000)
    if quit_first:
        s.send("QUIT")
    s.ftp.sock.shutdown(socket.SHUT_RDWR)  # ftplib's file keeps the descriptor open
    conn.close()
    walk.restart(s)


def _overlapping_stors(walk: Walk, s: Session) -> None:
    """Two sessions STOR one key at once, the first finishing last: the object is one
    of the two payloads, whole."""
    other = walk.rng.choice([o for o in walk.sessions if o is not s])
    key, first, second = walk.rng.choice(walk.keys), walk.payload(), walk.payload()
    conn = s.connect(s.pasv())
    assert s.cmd(f"STOR {key}")[0] == "1"
    conn.sendall(first[:len(first) // 2])
    _stor_into(walk, other, key, second)
    conn.sendall(first[len(first) // 2:])
    conn.close()
    reply = s.reply()
    assert reply[:3] in ("226", "450", "451"), reply
    if reply.startswith("226"):
        walk.allowed[key].add(first)
    other.ftp.voidcmd("NOOP")


def _stor_into(walk: Walk, s: Session, key: str, data: bytes) -> None:
    conn = s.connect(s.pasv())
    reply = s.cmd(f"STOR {key}")
    if reply[0] == "1":
        conn.sendall(data)
        conn.close()
        reply = s.reply()
    assert reply[:3] in ("226", "450", "451"), reply
    if reply.startswith("226"):
        walk.allowed[key].add(data)


def _read_while_replaced(walk: Walk, s: Session) -> None:
    """A RETR under way while another session overwrites or deletes the file: the reader
    gets one whole payload (226) or a prefix of one (426/451)."""
    key = walk.rng.choice(walk.keys)
    other = walk.rng.choice([o for o in walk.sessions if o is not s])
    before = set(walk.allowed[key])
    conn = s.connect(s.pasv())
    first = s.cmd(f"RETR {key}")
    if first[0] != "1":
        conn.close()
        assert first[:3] == "550", first
        return
    head = conn.recv(1000)
    if walk.rng.random() < 0.5:
        assert other.cmd(f"DELE {key}")[:3] in ("250", "550")
    else:
        _stor_into(walk, other, key, walk.payload())
    data, final = head + drain(conn), s.reply()
    if final.startswith("226"):
        assert data in before, f"RETR {key} under a rival write: foreign bytes"
    else:
        assert final[:3] in ("426", "451") and any(c.startswith(data) for c in before), final


STEP_FUNCTIONS = {f.__name__.lstrip("_"): f for f in (
    _overlapping_stors, _read_while_replaced,
    _stor, _retr, _rest_retr, _list, _no_data_connection, _unused_data_setup,
    _abor_download, _abor_upload, _busy, _rest_then_other, _rename, _dele, _user_again,
    _odd_arguments, _quit_mid_transfer)}
STEPS = [name for name in STEP_FUNCTIONS for _ in range(3 if name in ("stor", "retr") else 1)]


@pytest.fixture
def lone_worker(emulator, tmp_path, request):
    """A server with one worker, whose threads and descriptors the walk watches. Odd
    seeds walk with ``resume_ttl = 0``: a broken upload is aborted, not parked, so any
    multipart upload left behind is a leak."""
    optional = {"worker_processes": "1", "max_login_failures": "0",
                "max_connections_per_ip": "0"}
    if request.node.callspec.params["seed"] % 2:
        optional["resume_ttl"] = "0"
    with ServerProcess(str(tmp_path), emulator.port, STANDARD_ACCOUNTS,
                       optional=optional) as proc:
        yield proc


def _worker(server) -> psutil.Process:
    [worker] = psutil.Process(server.proc.pid).children()
    return worker


def _sessions_of(worker: psutil.Process, port: int) -> list:
    return [c for c in worker.net_connections() if c.laddr and c.laddr.port == port and
            c.status == psutil.CONN_ESTABLISHED]


# COSFTP_WALK_SEEDS="1 2 3" walks other seeds (to hunt; a failure prints its seed).
SEEDS = [int(seed) for seed in os.environ.get("COSFTP_WALK_SEEDS", "11 2027 4242").split()]


@pytest.mark.parametrize("seed", SEEDS)
def test_random_walk(lone_worker, cos, area, seed):
    server = lone_worker
    warm = Session(server)
    still_works(warm, area)  # the worker's pools exist before the baseline
    warm.close()
    worker = _worker(server)
    wait_until(lambda: not _sessions_of(worker, server.port), what="the warm-up to end")
    threads, fds = worker.num_threads(), worker.num_fds()
    log_start = len(server.log_text())
    walk = Walk(server, cos, area, seed)
    try:
        for _ in range(150):
            walk.step()
    except BaseException as exc:
        raise AssertionError(f"seed {seed}, steps {walk.trace[-8:]}: {exc!r}") from exc
    finally:
        for s in walk.sessions:
            s.close()
    log = server.log_text()[log_start:]
    assert "Traceback" not in log and "unhandled exception" not in log, f"seed {seed}"
    if seed % 2:
        wait_until(lambda: not cos.list_multipart_uploads(
            Bucket=ALPHA, Prefix=f"{area}/").get("Upload"),
            what=f"seed {seed}: no multipart upload left")
    wait_until(lambda: worker.num_threads() <= threads + SPARE_THREADS,
               what=f"seed {seed}: threads back near {threads}")
    wait_until(lambda: worker.num_fds() <= fds + SPARE_FDS,
               what=f"seed {seed}: descriptors back near {fds}")


def _port(session: Session, listener: socket.socket) -> str:
    port = listener.getsockname()[1]
    return session.cmd(f"PORT 127,0,0,1,{port >> 8},{port & 255}")


def test_port_answered_once_when_its_connection_closes_at_once(session, area, cos):
    """The client closes its listener right after PORT's 200: the data connection's end
    is no second answer to PORT (pyftpdlib sent 425 too, and every later reply was one
    behind), and a transfer then ends (425, or 426 if the server had not yet seen the
    connection close), not left waiting."""
    cos.put_object(Bucket=ALPHA, Key=f"{area}/f", Body=b"f")
    for _ in range(3):
        with socket.create_server(("127.0.0.1", 0)) as listener:
            reply = _port(session, listener)
        assert reply[:3] in ("200", "425"), reply
        assert session.cmd("NOOP").startswith("200")
        reply = session.cmd(f"NLST {area}")
        if reply[0] == "1":
            reply = session.reply()
        assert reply[:3] in ("425", "426", "226"), reply
        assert session.cmd("NOOP").startswith("200")
    still_works(session, area)


def test_retr_after_a_port_transfer_needs_a_new_port(session, area, cos):
    cos.put_object(Bucket=ALPHA, Key=f"{area}/f", Body=b"f" * 100)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(20)
        assert _port(session, listener).startswith("200")
        assert session.cmd(f"RETR {area}/f")[:3] in ("125", "150")
        conn, _ = listener.accept()
        conn.settimeout(20)
        assert drain(conn) == b"f" * 100
        assert session.reply().startswith("226")
    assert session.cmd(f"RETR {area}/f").startswith("425")
    still_works(session, area)
