"""The control connection is Telnet (RFC 959 4.1, RFC 854): a 0xFF byte of a command or a
reply is sent as IAC IAC, and Telnet commands (IP and DM before ABOR) are not part of the
line. Only a session in a single-byte legacy encoding has 0xFF in its names (latin-1's
``ÿ``, cp1251's ``я``): UTF-8 and GBK never use that byte. Data connections are not Telnet
and carry names as they are (docs/replies.md)."""

from __future__ import annotations

import re
import socket
import subprocess

import pytest

from .conftest import ALPHA
from .server_proc import Account, ServerProcess
from .test_clients import UTF8_LOCALE, lftp_command

IAC = b"\xff"
Y = "\xff"  # latin-1's y-diaeresis: the byte 0xFF in the session's encoding


@pytest.fixture(scope="module")
def latin(emulator, tmp_path_factory):
    """A server whose names are latin-1."""
    proc = ServerProcess(str(tmp_path_factory.mktemp("telnet")), emulator.port,
                         [Account("latin", "latin-pw", ALPHA)],
                         optional={"ftp_encoding": "latin-1", "worker_processes": "1",
                                   "max_login_failures": "0"})
    proc.start()
    yield proc
    proc.stop()


class RawControl:
    """A logged-in control connection driven and read byte by byte."""

    def __init__(self, port: int, user: str, password: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.lines = self.sock.makefile("rb")
        assert self.reply().startswith(b"220")
        assert self.command(f"USER {user}".encode()).startswith(b"331")
        assert self.command(f"PASS {password}".encode()).startswith(b"230")

    def reply(self) -> bytes:
        """One reply, its lines joined (a multi-line reply whole)."""
        lines = [self.lines.readline()]
        if re.match(rb"\d{3}-", lines[0]):
            while not lines[-1].startswith(lines[0][:3] + b" "):
                lines.append(self.lines.readline())
        return b"".join(lines)

    def command(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def listing(self, line: bytes) -> bytes:
        """What ``line`` (a listing command) sends over a passive data connection."""
        reply = self.command(b"PASV")
        numbers = [int(n) for n in re.search(rb"\((\d+(?:,\d+){5})\)", reply).group(1).split(b",")]
        with socket.create_connection(("127.0.0.1", numbers[4] * 256 + numbers[5]),
                                      timeout=30) as data:
            assert self.command(line)[:3] in (b"125", b"150")
            received = b"".join(iter(lambda: data.recv(65536), b""))
        assert self.reply().startswith(b"226")
        return received

    def close(self) -> None:
        self.lines.close()
        self.sock.close()


@pytest.fixture
def raw(latin):
    session = RawControl(latin.port, "latin", "latin-pw")
    yield session
    session.close()


def undoubled(reply: bytes) -> bytes:
    """``reply`` as a Telnet receiver reads it; fails on a 0xFF that is not doubled."""
    assert IAC not in reply.replace(IAC + IAC, b""), reply
    return reply.replace(IAC + IAC, IAC)


def test_iac_iac_in_a_command_is_one_0xff_of_the_name(raw, area, cos):
    """lftp and other Telnet-minded clients double 0xFF: the name has one."""
    assert raw.command(f"MKD /{area}".encode()).startswith(b"257")
    made = f"/{area}/".encode() + IAC + IAC + b"dir"
    assert raw.command(b"MKD " + made) == b'257 "' + made + b'" directory created.\r\n'
    keys = [item["Key"] for item in
            cos.list_objects(Bucket=ALPHA, Prefix=f"{area}/")["Contents"]]
    assert f"{area}/{Y}dir/" in keys and f"{area}/{Y}{Y}dir/" not in keys, keys


def test_a_0xff_in_a_reply_is_doubled_on_the_control_connection_only(raw, area, cos):
    """The commands here send 0xFF alone, as ftplib and other clients that know no
    Telnet do: an IAC that no Telnet command follows is a byte of the name."""
    cos.put_object(Bucket=ALPHA, Key=f"{area}/{Y}dir/{Y}.txt", Body=b"x")
    assert raw.command(f"CWD /{area}/".encode() + IAC + b"dir").startswith(b"250")
    assert raw.command(b"PWD") == (f'257 "/{area}/'.encode() + IAC + IAC
                                   + b'dir" is the current directory.\r\n')
    for command in (b"MLST ", b"STAT "):
        reply = raw.command(command + IAC + b".txt")
        assert reply[:4] in (b"250-", b"213-"), reply
        assert IAC + b".txt" in undoubled(reply)
    # Data connections are no Telnet: the names as they are.
    assert raw.listing(b"NLST") == IAC + b".txt\r\n"
    assert raw.listing(b"LIST").endswith(b" " + IAC + b".txt\r\n")
    assert b"; " + IAC + b".txt\r\n" in raw.listing(b"MLSD")


def test_telnet_interrupt_and_synch_before_abor_are_not_part_of_the_command(server):
    """RFC 959 4.1.3: a client sends Telnet IP and Synch (IAC IP, IAC DM) before ABOR, as
    tnftp does; in a UTF-8 session the bytes were no UTF-8 and ABOR got a 501."""
    session = RawControl(server.port, "alice", "alice-pw")
    try:
        assert session.command(IAC + b"\xf4" + IAC + b"\xf2ABOR").startswith(b"225 ")
        assert session.command(IAC + b"\xf4" + IAC + b"\xf2STAT").startswith(b"211")
        assert session.command(b"NOOP").startswith(b"200 ")
    finally:
        session.close()


def test_lftp_names_with_0xff_in_a_latin1_session(latin, tmp_path, area, cos):
    """lftp doubles IAC in what it sends and undoubles it in what it reads (told not to
    send OPTS UTF8 ON, as for a server whose names are latin-1)."""
    local = tmp_path / f"{Y}.txt"
    local.write_bytes(b"y-diaeresis")
    script = (f"set ftp:use-utf8 false; set ftp:charset iso-8859-1; mkdir {area}; cd {area}; "
              f"put {local} -o {Y}.txt; cls -1; get {Y}.txt -o {tmp_path}/back")
    command = lftp_command(latin, script)
    command[2] = "latin,latin-pw"
    result = subprocess.run(command, env=UTF8_LOCALE, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{Y}.txt"], result.stdout
    assert cos.object_exists(Bucket=ALPHA, Key=f"{area}/{Y}.txt")
    assert (tmp_path / "back").read_bytes() == b"y-diaeresis"
