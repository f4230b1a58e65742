"""Replies real clients rely on, names in legacy encodings, and pipelined input."""

from __future__ import annotations

import ftplib
import random
import re
import socket
import struct

import pytest

from .conftest import ALPHA, _close
from .server_proc import Account, ServerProcess, wait_until
from .test_commands import get, put
from .test_master import state_of

STAMP = "20200102030405"


def lines_of(ftp: ftplib.FTP, command: str) -> list[str]:
    lines: list[str] = []
    ftp.retrlines(command, lines.append)
    return lines


def names_in(listing: list[str]) -> list[str]:
    """The names of a LIST output (the last column)."""
    return [line.split(maxsplit=8)[-1] for line in listing]


@pytest.fixture
def tree(alice, area) -> str:
    """``area`` with g1.txt, g2.txt, h.txt and the directory sub."""
    alice.mkd(area)
    for name in ("g1.txt", "g2.txt", "h.txt"):
        put(alice, f"{area}/{name}", name.encode())
    alice.mkd(f"{area}/sub")
    return area


# --- MLSD


def test_mlsd_unix_mode_is_plain_octal_and_unique_differs(alice, tree):
    alice.sendcmd("OPTS MLST type;size;unix.mode;unique;perm;")
    facts = dict(alice.mlsd(tree, ["type", "unix.mode", "unique", "perm"]))
    assert facts["g1.txt"]["unix.mode"] == "0644"
    assert facts["sub"]["unix.mode"] == "0755"
    uniques = [entry["unique"] for entry in facts.values()]
    assert len(set(uniques)) == len(uniques) == 4
    # The same object keeps its fact from one listing to the next.
    again = dict(alice.mlsd(tree, ["unique"]))
    assert again["h.txt"]["unique"] == facts["h.txt"]["unique"]
    # Only RFC 3659's perm letters (pyftpdlib adds its own T and M).
    assert all(set(entry["perm"]) <= set("acdeflmprw") for entry in facts.values())


def test_mlsd_of_a_missing_directory_is_550(alice, area):
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        lines_of(alice, f"MLSD {area}-missing")
    assert alice.voidcmd("NOOP").startswith("200")


# --- SITE CHMOD


def test_site_chmod_is_an_accepted_no_op(server, alice, area, cos):
    put(alice, f"{area}.txt", b"mode")
    assert alice.sendcmd(f"SITE CHMOD 644 {area}.txt").startswith("200")
    assert cos.get_object(Bucket=ALPHA, Key=f"{area}.txt")["Body"].get_raw_stream().read() \
        == b"mode"
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        alice.sendcmd(f"SITE CHMOD 644 {area}-missing.txt")
    reader = server.login("reader", "reader-pw")
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        reader.sendcmd(f"SITE CHMOD 644 {area}.txt")  # a change, refused without W
    _close(reader)


# --- times


def test_list_of_a_file_shows_the_mfmt_time(server, alice, area):
    alice.mkd(area)
    put(alice, f"{area}/f.bin", b"x")
    alice.sendcmd(f"MFMT {STAMP} {area}/f.bin")
    fresh = server.login("alice", "alice-pw")  # has not listed the directory
    try:
        assert "Jan 02  2020 f.bin" in lines_of(fresh, f"LIST {area}/f.bin")[0]
        assert fresh.sendcmd(f"MDTM {area}/f.bin") == f"213 {STAMP}"
        assert "Jan 02  2020 f.bin" in lines_of(fresh, f"LIST {area}")[0]
    finally:
        _close(fresh)


# --- ls-style options


@pytest.mark.parametrize("options", ["-la", "-a", "-l", "-al", "-a -l"])
def test_list_and_nlst_skip_leading_ls_options(alice, tree, options):
    assert names_in(lines_of(alice, f"LIST {options} /{tree}")) == [
        "g1.txt", "g2.txt", "h.txt", "sub"]
    assert lines_of(alice, f"NLST {options} /{tree}") == ["g1.txt", "g2.txt", "h.txt", "sub"]


def test_bare_ls_options_still_list_the_working_directory(alice, tree):
    alice.cwd(tree)
    assert names_in(lines_of(alice, "LIST -al")) == ["g1.txt", "g2.txt", "h.txt", "sub"]


# --- wildcards


def test_wildcards_in_list_nlst_and_mlsd(alice, tree):
    assert lines_of(alice, f"NLST {tree}/g*.txt") == [f"{tree}/g1.txt", f"{tree}/g2.txt"]
    assert lines_of(alice, f"NLST /{tree}/?1.txt") == [f"/{tree}/g1.txt"]
    assert names_in(lines_of(alice, f"LIST {tree}/[gh]?.txt")) == ["g1.txt", "g2.txt"]
    assert names_in(lines_of(alice, f"LIST -la {tree}/*.txt")) == [
        "g1.txt", "g2.txt", "h.txt"]
    assert [name for name, _ in alice.mlsd(f"{tree}/s*")] == ["sub"]
    alice.cwd(tree)
    assert lines_of(alice, "NLST g*") == ["g1.txt", "g2.txt"]


def test_wildcards_that_match_nothing_or_span_directories_are_550(alice, tree):
    with pytest.raises(ftplib.error_perm, match=r"^550 No files match"):
        lines_of(alice, f"NLST {tree}/z*")
    with pytest.raises(ftplib.error_perm, match=r"^550 Wildcards"):
        lines_of(alice, f"LIST {tree[:3]}*/g1.txt")
    assert alice.voidcmd("NOOP").startswith("200")


def test_a_pattern_of_more_than_32_wildcards_is_550(alice, tree):
    """Before: any pattern was compiled, at ~50 us per wildcard holding the worker's GIL
    (1,000 wildcards: 52 ms in which no other session of the worker ran)."""
    assert lines_of(alice, f"NLST {tree}/{'*' * 31}1.txt") == [f"{tree}/g1.txt"]
    assert lines_of(alice, f"NLST {tree}/{'?' * 6}{'*' * 26}") == [
        f"{tree}/g1.txt", f"{tree}/g2.txt"]
    for command in ("NLST", "LIST", "MLSD"):
        with pytest.raises(ftplib.error_perm, match=r"^550 Too many wildcards: at most 32"):
            lines_of(alice, f"{command} {tree}/{'*a' * 33}")
    assert alice.voidcmd("NOOP").startswith("200")


def test_a_name_holding_wildcard_characters_lists_as_itself(alice, tree):
    put(alice, f"{tree}/g[1].txt", b"literal")
    assert lines_of(alice, f"NLST {tree}/g[1].txt") == ["g[1].txt"]


def test_wildcards_stop_at_max_list_file(emulator, tmp_path, area):
    with ServerProcess(str(tmp_path), emulator.port, [Account("alice", "pw", ALPHA)],
                       optional={"max_list_file": "3", "worker_processes": "1"}) as srv:
        ftp = srv.login("alice", "pw")
        ftp.mkd(area)
        for index in range(5):
            put(ftp, f"{area}/g{index}", b"x")
        assert lines_of(ftp, f"NLST {area}/g*") == [f"{area}/g0", f"{area}/g1", f"{area}/g2"]
        _close(ftp)


def test_a_wildcard_counts_matches_and_lists_from_one_listing(emulator, cos, tmp_path, area):
    """``max_list_file`` stopped the scan, not the matches: NLST *.txt of 100,000 keys
    answered 550 No files match when the .txt names came after the first 10,000; and LIST *
    asked COS once per name it showed (40,059 requests for 4 listings, 225 s). Now the
    directory's pages are read until max_list_file names match, and every line comes from
    them."""
    for name in [f"a{n:02}.log" for n in range(12)] + [f"b{n:02}.txt" for n in range(8)]:
        cos.put_object(Bucket=ALPHA, Key=f"{area}/{name}", Body=b"x")
    with ServerProcess(str(tmp_path), emulator.port, [Account("alice", "pw", ALPHA)],
                       optional={"max_list_file": "5", "worker_processes": "1"}) as srv:
        ftp = srv.login("alice", "pw")
        assert lines_of(ftp, f"NLST {area}/*.txt") == [f"{area}/b{n:02}.txt" for n in range(5)]
        emulator.requests(reset=True)
        assert names_in(lines_of(ftp, f"LIST {area}/*.log")) == [f"a{n:02}.log"
                                                                 for n in range(5)]
        requests = emulator.requests(contains=area)
        _close(ftp)
    # Whether the name exists as written (a directory, a file), the directory's page and
    # its MFMT markers' page: none per name listed.
    assert requests == {"LIST": 4}, requests


# --- pipelining


def pipelined(port: int, payload: bytes, timeout: float = 10) -> list[str]:
    """Send ``payload`` in one write and return the replies up to the server's close."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        received = b""
        while b"\r\n" not in received:
            received += sock.recv(4096)
        sock.sendall(payload)
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    return [line for line in received.decode("latin-1").split("\r\n")[1:] if line]


LOGIN = b"USER alice\r\nPASS alice-pw\r\n"


def test_an_overlong_line_is_one_500_and_its_tail_never_runs(server, area, cos):
    smuggled = b"X" * 2100 + b" DELE " + area.encode()
    put_ftp = server.login("alice", "alice-pw")
    put(put_ftp, area, b"keep me")
    _close(put_ftp)
    replies = pipelined(server.port, LOGIN + smuggled + b"\r\nNOOP\r\nQUIT\r\nNOOP\r\n")
    assert [reply[:3] for reply in replies] == ["331", "230", "500", "200", "221"]
    assert cos.object_exists(Bucket=ALPHA, Key=area)


def test_nothing_runs_after_quit(server, area, cos):
    """A QUIT that waits for a transfer to end must not run what was sent after it."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(LOGIN + b"TYPE I\r\nPASV\r\n")
        replies = [reader.readline() for _ in range(4)]
        port = re.search(rb"\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)", replies[-1])
        data = socket.create_connection(("127.0.0.1", int(port[5]) * 256 + int(port[6])))
        # Once NOOP is answered the server has accepted the data connection: the STOR
        # then has it at once (125), and the QUIT waits for the transfer.
        sock.sendall(b"NOOP\r\n")
        assert reader.readline().startswith(b"200")
        sock.sendall(f"STOR {area}\r\nQUIT\r\nMKD {area}-late\r\nNOOP\r\n".encode())
        assert reader.readline().startswith(b"125")
        data.sendall(b"stored")
        data.close()
        rest = reader.read().decode().splitlines()
    assert sorted(line[:3] for line in rest) == ["221", "226"]
    assert cos.object_exists(Bucket=ALPHA, Key=area)
    assert not cos.object_exists(Bucket=ALPHA, Key=f"{area}-late/")


def nobody_waits_to_log_in(proc: ServerProcess) -> bool:
    state = state_of(proc)
    try:
        return all(session.logged_in for session in state.session_details())
    finally:
        state.close()


def test_pipelined_command_mixes_leave_no_traceback(server, area):
    log_start = len(server.log_text())
    rng = random.Random(13)
    commands = [b"NOOP", b"PWD", b"PASV", b"EPSV", b"LIST", b"NLST", b"MLSD", b"QUIT",
                b"ABOR", b"STAT", b"REIN", b"TYPE I", b"REST 5", b"X" * 3000,
                b"Y" * 2100 + b"QUIT", b"\xff\xf4\xff\xf2ABOR", b"SIZE " + area.encode(),
                b"STOR " + area.encode(), b"RETR " + area.encode(), b"APPE " + area.encode(),
                b"MKD " + area.encode(), b"CWD /", b"OPTS UTF8 ON", b"FEAT", b"HELP",
                b"STOR caf\xe9", b"LIST -la /", b"NLST *", b"SITE CHMOD 644 " + area.encode()]
    for _ in range(60):
        sequence = [rng.choice(commands) for _ in range(rng.randint(1, 10))]
        payload = LOGIN + b"".join(command + b"\r\n" for command in sequence)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.recv(4096)
            sock.sendall(payload)
            if rng.random() < 0.5:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # Those logins wait their turn to be checked (max_password_checks), each holding one of
    # the address's places not logged in, which a REIN below needs too: let them finish.
    wait_until(lambda: nobody_waits_to_log_in(server), what="the fuzzed logins answered")
    # A sane sequence: after 221 only the end of a transfer may follow.
    for _ in range(10):
        sequence = [rng.choice(commands) for _ in range(rng.randint(1, 10))] + [b"QUIT"]
        replies = pipelined(server.port, LOGIN + b"".join(c + b"\r\n" for c in sequence))
        after_quit = replies[[r[:3] for r in replies].index("221") + 1:]
        assert all(r[:3] in ("226", "426", "451") for r in after_quit), replies
        assert 'Command "" not understood' not in " ".join(replies)
    bystander = server.login("alice", "alice-pw")
    assert bystander.voidcmd("NOOP").startswith("200")
    _close(bystander)
    text = server.log_text()[log_start:]
    assert "Traceback" not in text and "unhandled exception" not in text


# --- names in other encodings


def test_undecodable_names_are_refused_with_553_not_merged(server, alice, area, cos):
    alice.mkd(area)
    alice.encoding = "latin-1"  # sends e-acute as 0xE9 and u-umlaut as 0xFC: not UTF-8
    try:
        for name in ("caf\xe9.txt", "caf\xfc.txt"):
            with pytest.raises(ftplib.error_perm, match=r"^553"):
                put(alice, f"{area}/{name}", b"legacy")
        assert alice.voidcmd("NOOP").startswith("200")  # the session goes on
    finally:
        alice.encoding = "utf-8"
    listing = cos.list_objects(Bucket=ALPHA, Prefix=f"{area}/")["Contents"]
    assert [item["Key"] for item in listing] == [f"{area}/"]
    wait_until(lambda: "STOR refused: its argument is not valid utf-8" in server.log_text(),
               what="the refusal in the log")


@pytest.fixture(scope="module")
def legacy(emulator, tmp_path_factory):
    """A server whose names are latin-1, with one GBK account."""
    accounts = [Account("latin", "latin-pw", ALPHA),
                Account("gbuser", "gb-pw", ALPHA, extra="ftp_encoding = gbk")]
    proc = ServerProcess(str(tmp_path_factory.mktemp("legacy")), emulator.port, accounts,
                         optional={"ftp_encoding": "latin-1", "worker_processes": "1",
                                   "max_login_failures": "0"})
    proc.start()
    yield proc
    proc.stop()


def login_as(server, user: str, password: str, encoding: str) -> ftplib.FTP:
    ftp = ftplib.FTP(encoding=encoding)
    ftp.connect("127.0.0.1", server.port, timeout=30)
    ftp.login(user, password)
    return ftp


def test_latin1_names_become_distinct_utf8_keys(legacy, area, cos):
    ftp = login_as(legacy, "latin", "latin-pw", "latin-1")
    ftp.mkd(area)
    put(ftp, f"{area}/caf\xe9.txt", b"e")
    put(ftp, f"{area}/caf\xfc.txt", b"u")
    assert sorted(ftp.nlst(area)) == ["caf\xe9.txt", "caf\xfc.txt"]
    assert dict(ftp.mlsd(area))["caf\xe9.txt"]["size"] == "1"
    _close(ftp)
    keys = {item["Key"] for item in cos.list_objects(Bucket=ALPHA, Prefix=f"{area}/")["Contents"]}
    assert keys >= {f"{area}/café.txt", f"{area}/cafü.txt"}


def test_gbk_account_and_opts_utf8(legacy, area, cos):
    ftp = login_as(legacy, "gbuser", "gb-pw", "gbk")
    ftp.mkd(area)
    put(ftp, f"{area}/报告.txt", b"gbk")
    assert ftp.nlst(area) == ["报告.txt"]
    assert cos.object_exists(Bucket=ALPHA, Key=f"{area}/报告.txt")
    assert "UTF8" in ftp.sendcmd("FEAT")
    assert ftp.sendcmd("OPTS UTF8 ON").startswith("200")
    ftp.encoding = "utf-8"  # what FileZilla does after the 200
    put(ftp, f"{area}/数据.txt", b"utf8")
    assert sorted(ftp.nlst(area)) == sorted(["报告.txt", "数据.txt"])
    assert ftp.sendcmd("OPTS UTF8 OFF").startswith("200")
    ftp.encoding = "gbk"
    assert sorted(ftp.nlst(area)) == sorted(["报告.txt", "数据.txt"])
    _close(ftp)
    assert cos.object_exists(Bucket=ALPHA, Key=f"{area}/数据.txt")
    # Chosen before login, UTF-8 stays: the account's encoding does not override it.
    early = ftplib.FTP(encoding="utf-8")
    early.connect("127.0.0.1", legacy.port, timeout=30)
    assert early.sendcmd("OPTS UTF8 ON").startswith("200")
    early.login("gbuser", "gb-pw")
    assert sorted(early.nlst(area)) == sorted(["报告.txt", "数据.txt"])
    _close(early)


def test_a_key_the_session_encoding_lacks_is_listed_with_a_placeholder(legacy, area, cos):
    cos.put_object(Bucket=ALPHA, Key=f"{area}/snow☃.txt", Body=b"x")
    ftp = login_as(legacy, "latin", "latin-pw", "latin-1")
    assert ftp.nlst(area) == ["snow?.txt"]
    assert ftp.voidcmd("NOOP").startswith("200")
    _close(ftp)


# --- reply codes the standards list (docs/replies.md)


def test_rein_answers_220_as_rfc_959_lists_it(alice):
    """RFC 959 5.4 gives REIN 120, 220, 421, 500, 502 (pyftpdlib answered 230, "logged
    in", to the command that logs out); before a login it is the state asked for."""
    assert alice.sendcmd("REIN").startswith("220 ")
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        alice.sendcmd("PWD")
    assert alice.sendcmd("REIN").startswith("220 ")
    assert alice.login("alice", "alice-pw").startswith("230")
    assert alice.pwd() == "/"


def test_rein_resets_every_parameter_to_its_default(alice, area):
    """RFC 959 4.1.1: REIN flushes "all I/O and account information" and resets "all
    parameters ... to the default settings", as on a new connection. pyftpdlib forgot the
    account, TYPE, REST and RNFR, but kept EPSV ALL (PASV then 501 for the next login) and
    the OPTS choices (MLST facts, HASH algorithm)."""
    put(alice, f"{area}.txt", b"rein")
    alice.sendcmd("TYPE I")
    alice.sendcmd("EPSV ALL")
    alice.sendcmd("OPTS MLST size;")
    alice.sendcmd("OPTS HASH MD5")
    alice.sendcmd("ALLO 1000000")
    alice.sendcmd("REST 2")
    alice.sendcmd(f"RNFR {area}.txt")
    assert alice.sendcmd("REIN").startswith("220 ")
    alice.login("alice", "alice-pw")
    assert "TYPE: ASCII" in alice.sendcmd("STAT")
    assert alice.sendcmd("PASV").startswith("227 ")
    facts = alice.sendcmd(f"MLST {area}.txt")
    assert "modify=" in facts and "type=file;" in facts
    assert alice.sendcmd(f"HASH {area}.txt").startswith("213 SHA-256 ")
    with pytest.raises(ftplib.error_perm, match=r"^503 "):
        alice.sendcmd(f"RNTO {area}-renamed.txt")
    assert get(alice, f"{area}.txt") == b"rein"  # from byte 0: REST 2 is gone
    # An upload shorter than the ALLO of the old login is not cut short.
    assert put(alice, f"{area}-2.txt", b"short").startswith("226")


def test_a_new_user_keeps_the_transfer_parameters(alice, area):
    """RFC 959 4.1.1: a USER while logged in flushes "any user, password, and account
    information" and "All transfer parameters are unchanged" (pyftpdlib put TYPE back to
    A; over TLS, PBSZ and PROT are kept too: test_tls). What the old login had pending
    goes with it: REST and RNFR. REIN resets everything (the test above)."""
    put(alice, f"{area}.txt", b"user")
    alice.sendcmd("TYPE I")
    alice.sendcmd("OPTS HASH MD5")
    alice.sendcmd("REST 2")
    alice.sendcmd(f"RNFR {area}.txt")
    alice.login("alice", "alice-pw")
    assert "TYPE: Binary" in alice.sendcmd("STAT")
    assert alice.sendcmd(f"HASH {area}.txt").startswith("213 MD5 ")
    with pytest.raises(ftplib.error_perm, match=r"^503 "):
        alice.sendcmd(f"RNTO {area}-renamed.txt")
    assert get(alice, f"{area}.txt") == b"user"  # from byte 0: REST 2 is gone


def test_epsv_all_is_200_then_only_epsv_sets_up_data_connections(alice):
    """RFC 2428 4: EPSV ALL succeeds with a 2xx (vsftpd and proftpd answer 200; pyftpdlib
    answered 220, the greeting's code), and PORT, EPRT and PASV are refused after it."""
    assert alice.sendcmd("EPSV ALL").startswith("200 ")
    for command in ("PASV", "PORT 127,0,0,1,4,1", "EPRT |1|127.0.0.1|1025|"):
        with pytest.raises(ftplib.error_perm, match=r"^501"):
            alice.sendcmd(command)
    assert alice.sendcmd("EPSV").startswith("229 ")


@pytest.mark.parametrize("command", ["EPSV 2", "EPSV 3", "EPSV 99", "EPRT |2|::1|5000|",
                                     "EPRT |3|1.2.3.4|5000|"])
def test_an_unsupported_network_protocol_is_522_with_the_one_to_use(alice, command):
    """RFC 2428 2 and 3: 522 and the protocols the server takes, in the form clients parse
    ("use (1)": squid, for one, reads what follows the parenthesis)."""
    with pytest.raises(ftplib.error_perm,
                       match=r"^522 Network protocol not supported, use \(1\)"):
        alice.sendcmd(command)
    with pytest.raises(ftplib.error_perm, match=r"^501"):
        alice.sendcmd("EPSV x")
    assert alice.sendcmd("EPSV 1").startswith("229 ")


@pytest.mark.parametrize("stamp", ["2020", "2020010203040x", "20201301000000",
                                   "202001020304050"])
def test_mfmt_with_a_malformed_time_is_501_and_asks_cos_nothing(alice, area, emulator,
                                                                 stamp):
    """A time that is not YYYYMMDDHHMMSS is a syntax error in the argument (501, as for
    MDTM's siblings in RFC 3659), not "file unavailable" (pyftpdlib's 550)."""
    put(alice, f"{area}.txt", b"t")
    emulator.requests(reset=True)
    with pytest.raises(ftplib.error_perm, match=r"^501 "):
        alice.sendcmd(f"MFMT {stamp} {area}.txt")
    assert emulator.requests(contains=area) == {}
    assert alice.sendcmd(f"MFMT {STAMP} {area}.txt").startswith("213 Modify=")


@pytest.mark.parametrize("command, reply", [("REIN", "220"), ("USER alice", "331")])
def test_a_new_login_gives_a_waiting_transfer_its_final_reply_first(alice, area, cos, command,
                                                                   reply):
    """A STOR answered 150 and still waiting for its data connection when REIN or USER
    starts a new login is given up: its 150 gets its final reply (425) before the new
    login's, as for QUIT and PASV (the client reads one final reply per 150); it got none."""
    alice.sendcmd("PASV")
    assert alice.sendcmd(f"STOR {area}").startswith("150")
    with pytest.raises(ftplib.error_temp, match=r"^425 "):
        alice.sendcmd(command)
    assert alice.getresp().startswith(reply)
    alice.login("alice", "alice-pw")
    assert alice.sendcmd("NOOP").startswith("200")
    assert not cos.object_exists(Bucket=ALPHA, Key=area)
