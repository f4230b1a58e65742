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
import re
import socket
from typing import Optional

import pytest

from .conftest import ALPHA, _close
from .server_proc import wait_until
from .test_commands import get, put
from .test_transfers import pending_uploads

REPLY = re.compile(r"^[1-5][0-5]\d[ -]")
MIB = 1024 * 1024


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
    if not cos.object_exists(Bucket=ALPHA, Key=key):
        return None
    return cos.get_object(Bucket=ALPHA, Key=key)["Body"].get_raw_stream().read()


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
    session.send("ABOR")
    replies = [session.reply()]
    if replies[0].startswith("426"):
        replies.append(session.reply())
    assert replies[-1][:3] in ("225", "226"), replies
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
