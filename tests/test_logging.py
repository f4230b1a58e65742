"""The log is evidence: what clients send cannot forge lines or reach a terminal raw, and
the files holding it are not world-readable."""

from __future__ import annotations

import ftplib
import io
import os
import re
import socket
import stat
import sys

import pytest

from .conftest import ALPHA
from .server_proc import Account, ServerProcess, wait_until
from .test_commands import rename_whose_copy_fails

FORGED = "2026-01-01 00:00:00,000 WARNING [1 worker 1] cosftp_prefork.ftp.handler: FORGED-LINE"


@pytest.fixture(scope="module", params=["DEBUG", "INFO"])
def logged(request, emulator, tmp_path_factory):
    """A server at each log level: at DEBUG pyftpdlib logs every command line, at INFO
    its one-line summaries of file commands."""
    proc = ServerProcess(str(tmp_path_factory.mktemp("logged")), emulator.port,
                         [Account("reader", "reader-pw", ALPHA, "R"),
                          Account("alice", "alice-pw", ALPHA)],
                         optional={"max_login_failures": "0", "log_level": request.param})
    proc.start()
    yield proc
    proc.stop()


def raw_session(server: ServerProcess, lines: list[bytes]) -> list[bytes]:
    """Send ``lines`` (each ended by CRLF) one after the other; return the replies."""
    replies = []
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        reader = sock.makefile("rb")
        replies.append(reader.readline())
        for line in lines:
            sock.sendall(line + b"\r\n")
            replies.append(reader.readline())
    return replies


def log_bytes(server: ServerProcess) -> bytes:
    with open(os.path.join(server.log_dir, "cosftp.log"), "rb") as handle:
        return handle.read()


def test_a_bare_lf_in_user_cannot_forge_a_log_line(logged):
    replies = raw_session(logged, [b"USER mallory\n" + FORGED.encode(), b"PASS guess"])
    assert replies[-1].startswith(b"530"), replies
    wait_until(lambda: b"FORGED-LINE" in log_bytes(logged), what="the failed login logged")
    text = log_bytes(logged).decode("utf-8")
    assert not [line for line in text.splitlines() if line.startswith(FORGED)]
    assert "mallory\\n" + FORGED in text  # the attempt is still there, escaped


def test_stderr_gets_the_escaped_lines_the_file_gets(logged):
    """Under ``cosftpctl run`` each line goes to cosftp.log and to stderr (server.out
    here); the two handlers share the line made once: the same text, escaped, with its
    session stamp."""
    marker = b"twice\x1b[2J"
    raw_session(logged, [b"USER reader", b"PASS reader-pw", b"DELE " + marker, b"QUIT"])

    def lines_of(data: bytes) -> list[str]:
        return [line for line in data.decode("utf-8").splitlines() if "twice\\x1b[2J" in line]

    def stderr_bytes() -> bytes:
        with open(os.path.join(logged.workdir, "server.out"), "rb") as handle:
            return handle.read()

    wait_until(lambda: lines_of(log_bytes(logged)) and lines_of(stderr_bytes()),
               what="the refused DELE logged in both")
    in_file = lines_of(log_bytes(logged))
    assert in_file == lines_of(stderr_bytes())
    assert all(" user=reader ip=127.0.0.1]" in line for line in in_file), in_file
    assert b"\x1b" not in stderr_bytes()


def test_ansi_escapes_in_names_are_escaped(logged):
    replies = raw_session(logged, [b"USER \x1b[31mred\x1b[0m", b"PASS guess"])
    assert replies[-1].startswith(b"530"), replies
    # Refused for want of permission (the account is read-only), logged with the path.
    replies = raw_session(logged, [b"USER reader", b"PASS reader-pw",
                                   b"DELE \x1b]0;owned\x07\x1b[2Jname", b"RNFR \x1b[5mblink",
                                   "DELE \u009b31mc1".encode(), b"QUIT"])
    assert replies[2].startswith(b"230") and replies[3].startswith(b"550"), replies
    # Looked up in COS (and not found) for a user who may delete and rename.
    replies = raw_session(logged, [b"USER alice", b"PASS alice-pw", b"DELE \x1b[1mbold",
                                   b"RNFR \x1b[1mbold", b"QUIT"])
    assert replies[3].startswith(b"550") and replies[4].startswith(b"550"), replies
    wait_until(lambda: all(word in log_bytes(logged) for word in (b"blink", b"2Jname", b"bold")),
               what="the commands logged")
    data = log_bytes(logged)
    assert b"\x1b" not in data and b"\x07" not in data and "\x9b".encode() not in data
    text = data.decode("utf-8")
    assert "\\x1b[31mred" in text and "\\x1b]0;owned\\x07\\x1b[2Jname" in text
    assert "\\x9b31mc1" in text and "\\x1b[1mbold" in text


# Unicode's Bidi_Control characters: the embeddings and overrides, the isolates, and the
# three implicit marks (ALM, LRM, RLM), which reorder the text around them as well.
BIDI_CONTROLS = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def test_every_bidi_control_in_a_user_name_is_escaped(logged):
    """A name cannot reorder how its log line reads: a right-to-left mark before the
    address a line ends with displays it, and what follows, in another order."""
    replies = raw_session(logged, [f"USER bidi{BIDI_CONTROLS}end".encode(), b"PASS guess"])
    assert replies[-1].startswith(b"530"), replies
    wait_until(lambda: b"bidi" in log_bytes(logged), what="the failed login logged")
    text = log_bytes(logged).decode("utf-8")
    assert not [char for char in BIDI_CONTROLS if char in text], \
        [f"U+{ord(char):04X}" for char in BIDI_CONTROLS if char in text]
    assert "bidi" + "".join(f"\\u{ord(char):04x}" for char in BIDI_CONTROLS) + "end" in text


def test_a_missing_name_with_control_bytes_is_550_and_logged_escaped(logged, area, cos):
    """SIZE, MDTM and RETR of a missing name holding control bytes (such names from other
    tools stay reachable, so the server lets them through to COS) answer 550 as for any
    missing file, and the log gets the name escaped (at DEBUG, where commands are logged)."""
    cos.put_object(Bucket=ALPHA, Key=f"{area}/kept", Body=b"x")
    closed = log_bytes(logged).count(b"FTP session closed")
    ftp = logged.login("alice", "alice-pw")
    name = f"{area}/gone\x01\x1b[2Jctl"
    for command in ("SIZE", "MDTM"):
        with pytest.raises(ftplib.error_perm, match=r"^550"):
            ftp.sendcmd(f"{command} {name}")
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        ftp.retrbinary(f"RETR {name}", lambda data: None)
    ftp.quit()
    wait_until(lambda: log_bytes(logged).count(b"FTP session closed") > closed,
               what="the session's end logged")
    data = log_bytes(logged)
    assert b"\x01" not in data and b"\x1b" not in data
    if logged.optional["log_level"] == "DEBUG":
        assert "RETR " + name.replace("\x01", "\\x01").replace("\x1b", "\\x1b") \
            in data.decode("utf-8")


def test_pool_threads_log_the_session_they_work_for(logged, area, emulator):
    """A directory rename copies its keys on the worker's copy pool; the COS retries logged
    there name the session, user and address like the lines of the session's own thread."""
    ftp = logged.login("alice", "alice-pw")
    ftp.voidcmd("TYPE I")
    rename_whose_copy_fails(ftp, emulator, f"{area}/dir/doomed", f"{area}/dir", f"{area}/moved")
    ftp.quit()
    text = log_bytes(logged).decode("utf-8")
    retries = [line for line in text.splitlines()
               if f"COPY {area}/dir/doomed" in line and "; retry 1 in" in line]
    assert retries, "no retry of the failing copy logged"
    assert all(re.search(r"\[\d+ worker \d+ session=[0-9a-f]+ user=alice ip=127\.0\.0\.1\] ",
                         line) for line in retries), retries


def test_a_new_file_is_one_line_at_info_an_append_says_the_whole_size(logged, area):
    """At INFO a STOR from byte 0 writes one line, pyftpdlib's transfer line (written after
    COS confirmed the object: its bytes are the object's), as vsftpd writes one per
    transfer; an APPE (or a resumed STOR) also says the stored object's whole size, which
    its transfer line, the bytes of this transfer, does not."""
    ftp = logged.login("alice", "alice-pw")
    ftp.voidcmd("TYPE I")
    ftp.storbinary(f"STOR {area}/one", io.BytesIO(b"12345"))
    ftp.storbinary(f"APPE {area}/one", io.BytesIO(b"678"))
    ftp.quit()
    wait_until(lambda: f"APPE /{area}/one completed=1" in log_bytes(logged).decode(),
               what="the APPE's transfer line")
    lines = [line for line in log_bytes(logged).decode().splitlines() if f"/{area}/one" in line]
    stored = [line.split("] ", 1)[1] for line in lines if ": stored " in line]
    if logged.optional["log_level"] == "INFO":
        assert stored == [f"cosftp_prefork.cos.uploads: path=/{area}/one: stored 8 bytes"], lines
        assert len([line for line in lines if " STOR " in line]) == 1, lines
    else:  # DEBUG says both
        assert [line.rsplit(" ", 2)[-2] for line in stored] == ["5", "8"], lines


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_log_files_are_not_world_readable(emulator, tmp_path):
    old_umask = os.umask(0o022)  # what most systems use: files would be 0644
    try:
        proc = ServerProcess(str(tmp_path), emulator.port, [Account("ops", "ops-pw", ALPHA)])
        started = proc.start_daemon()
    finally:
        os.umask(old_umask)
    master_pid = proc.daemon_pid()
    try:
        assert started.returncode == 0, started.stderr
        log_file = os.path.join(proc.log_dir, "cosftp.log")
        assert mode(log_file) == 0o640
        assert mode(os.path.join(proc.log_dir, "cosftp.out")) == 0o640
        os.rename(log_file, log_file + ".1")  # what logrotate does (without copytruncate)
        with ftplib.FTP() as ftp:
            ftp.connect("127.0.0.1", proc.port, timeout=30)
            ftp.login("ops", "ops-pw")
        wait_until(lambda: os.path.exists(log_file), what="the log file created again")
        assert mode(log_file) == 0o640
    finally:
        proc.ensure_stopped(master_pid)


def test_tracebacks_keep_their_lines_but_cannot_forge_one():
    """Pure logic: an exception message (which may quote a path) inside a traceback."""
    import logging

    from cosftp_prefork.logfiles import EscapingFormatter

    formatter = EscapingFormatter("%(levelname)s %(message)s")
    try:
        raise ValueError("bad path /a\n" + FORGED + "\x1b[2J")
    except ValueError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed: %s", ("x\ry",),
                                   exc_info=sys.exc_info())
    lines = formatter.format(record).split("\n")
    assert lines[0] == "ERROR failed: x\\ry"
    assert lines[1] == "Traceback (most recent call last):"
    assert all(line.startswith("\t") for line in lines[2:]), lines
    assert lines[-2:] == ["\tValueError: bad path /a", f"\t{FORGED}\\x1b[2J"]
