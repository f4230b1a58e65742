"""One consistent, disk-like namespace: every session sees what any other wrote, names behave
as on a disk, every stored name stays reachable (issue 13)."""

from __future__ import annotations

import ftplib
import io

import pytest

from .conftest import ALPHA, STANDARD_ACCOUNTS, TENANT_PREFIX, _close
from .server_proc import Account, ServerProcess, wait_until
from .test_clients import require, run
from .test_transfers import curl_put


def put(ftp: ftplib.FTP, path: str, data: bytes) -> str:
    return ftp.storbinary(f"STOR {path}", io.BytesIO(data))


def get(ftp: ftplib.FTP, path: str) -> bytes:
    out = bytearray()
    ftp.retrbinary(f"RETR {path}", out.extend)
    return bytes(out)


def exists(cos, key: str) -> bool:
    return cos.object_exists(Bucket=ALPHA, Key=key)


@pytest.fixture
def second(server):
    """Another session of alice's, as libraries open one connection per file."""
    ftp = server.login("alice", "alice-pw")
    yield ftp
    _close(ftp)


# --- consistency across sessions


def test_a_file_written_by_another_session_is_visible_at_once(alice, second, area):
    with pytest.raises(ftplib.error_perm, match="550"):
        alice.size(f"{area}/new.txt")  # the "not there" answer must not be kept
    put(second, f"{area}/new.txt", b"12345")
    assert alice.size(f"{area}/new.txt") == 5
    assert get(alice, f"{area}/new.txt") == b"12345"


def test_after_another_session_deletes_size_and_retr_answer_550(alice, second, area):
    put(alice, f"{area}/gone.txt", b"abc")
    assert alice.size(f"{area}/gone.txt") == 3
    second.delete(f"{area}/gone.txt")
    with pytest.raises(ftplib.error_perm, match="550"):
        alice.size(f"{area}/gone.txt")
    with pytest.raises(ftplib.error_perm, match="550"):
        get(alice, f"{area}/gone.txt")


def test_after_another_session_overwrites_size_and_retr_agree(alice, second, area):
    put(alice, f"{area}/v.txt", b"old")
    assert alice.size(f"{area}/v.txt") == 3
    alice.sendcmd(f"MDTM {area}/v.txt")
    put(second, f"{area}/v.txt", b"the new version")
    size = alice.size(f"{area}/v.txt")
    data = get(alice, f"{area}/v.txt")
    assert size == len(data) == len(b"the new version")
    assert data == b"the new version"


def test_rename_that_must_not_overwrite_sees_a_file_written_a_moment_ago(server, alice, area,
                                                                         cos):
    keeper = server.login("keeper", "keeper-pw")  # may not delete: RNTO must not overwrite
    try:
        put(keeper, f"{area}/src.txt", b"keeper's")
        with pytest.raises(ftplib.error_perm, match="550"):
            keeper.size(f"{area}/dst.txt")
        put(alice, f"{area}/dst.txt", b"alice's")
        keeper.sendcmd(f"RNFR {area}/src.txt")
        with pytest.raises(ftplib.error_perm, match="550"):
            keeper.sendcmd(f"RNTO {area}/dst.txt")
    finally:
        _close(keeper)
    assert cos.get_object(Bucket=ALPHA, Key=f"{area}/dst.txt")["Body"].get_raw_stream() \
        .read() == b"alice's"


def test_size_mdtm_retr_request_budget(alice, emulator, area):
    """The sequence download tools send, counted at the emulator (docs/performance.md)."""
    put(alice, f"{area}/f.bin", b"x" * 1000)
    emulator.requests(reset=True)
    assert alice.size(f"{area}/f.bin") == 1000
    alice.sendcmd(f"MDTM {area}/f.bin")
    assert len(get(alice, f"{area}/f.bin")) == 1000
    counts = emulator.requests(contains=area)
    # SIZE: a look-up LIST + the parked-uploads LIST; MDTM: HEAD; RETR: one GET (its answer
    # says the size and ETag; was HEAD + GET, and before that the HEAD came from a cache).
    assert counts == {"LIST": 2, "HEAD": 1, "GET": 1}, counts


# --- names that behave like a file system


def test_stor_onto_a_directory_is_refused_and_the_directory_stays(alice, area, cos):
    alice.mkd(area)
    alice.mkd(f"{area}/dir")
    put(alice, f"{area}/dir/child.txt", b"child")
    cos.put_object(Bucket=ALPHA, Key=f"{area}/implicit/inner.txt", Body=b"i")  # no marker
    for name in ("dir", "implicit"):
        with pytest.raises(ftplib.error_perm, match=r"55[03]"):
            put(alice, f"{area}/{name}", b"would hide the directory")
        assert not exists(cos, f"{area}/{name}")
    alice.cwd(f"{area}/dir")
    assert alice.nlst() == ["child.txt"]


def test_stor_under_a_file_is_refused(alice, area, cos):
    put(alice, f"{area}/file", b"a file")
    for path in ("file/x", "file/deeper/x"):
        with pytest.raises(ftplib.error_perm, match=r"55[03]"):
            put(alice, f"{area}/{path}", b"lost")
        assert not exists(cos, f"{area}/{path}")
    with pytest.raises(ftplib.error_perm, match=r"55[03]"):
        alice.mkd(f"{area}/file/sub")
    put(alice, f"{area}/other", b"o")
    alice.sendcmd(f"RNFR {area}/other")  # the session's own upload: no HEAD
    with pytest.raises(ftplib.error_perm, match=r"55[03]"):
        alice.sendcmd(f"RNTO {area}/file/other")
    put(alice, f"{area}/last", b"l")
    for path in ("file/other", "file/deeper/other"):  # any file: its HEAD beside the look-ups
        alice.sendcmd(f"RNFR {area}/other")
        with pytest.raises(ftplib.error_perm, match=r"550 Not a directory"):
            alice.sendcmd(f"RNTO {area}/{path}")
        assert not exists(cos, f"{area}/{path}")
    assert exists(cos, f"{area}/other")


def test_mkd_needs_its_parent(alice, area, cos):
    with pytest.raises(ftplib.error_perm, match="550"):
        alice.mkd(f"{area}/deeper")
    assert not exists(cos, f"{area}/deeper/")
    alice.mkd(area)
    alice.mkd(f"{area}/deeper")
    assert exists(cos, f"{area}/deeper/")


def test_stor_into_a_missing_directory_is_accepted_by_default(alice, area, cos):
    put(alice, f"{area}/not/made/yet.txt", b"camera")
    assert exists(cos, f"{area}/not/made/yet.txt")


def test_dele_of_the_last_file_keeps_its_directory(alice, area, cos):
    cos.put_object(Bucket=ALPHA, Key=f"{area}/only/one.txt", Body=b"1")  # no marker
    alice.delete(f"{area}/only/one.txt")
    assert alice.nlst(area) == ["only"]
    alice.cwd(f"{area}/only")
    assert alice.nlst() == []


def test_rename_of_the_last_file_keeps_its_directory(alice, area, cos):
    cos.put_object(Bucket=ALPHA, Key=f"{area}/from/f.txt", Body=b"1")
    cos.put_object(Bucket=ALPHA, Key=f"{area}/dirs/d/g.txt", Body=b"2")
    alice.rename(f"{area}/from/f.txt", f"{area}/f.txt")
    alice.rename(f"{area}/dirs/d", f"{area}/d")
    assert sorted(alice.nlst(area)) == ["d", "dirs", "f.txt", "from"]
    alice.cwd(f"{area}/from")
    alice.cwd(f"/{area}/dirs")


@pytest.mark.parametrize("removed, commands, listed", [
    ("only.txt", ["DELE {area}/d/only.txt"], {"d": "dir"}),
    ("only.txt", ["RNFR {area}/d/only.txt", "RNTO {area}/only.txt"],
     {"d": "dir", "only.txt": "file"}),
    ("c/", ["RMD {area}/d/c"], {"d": "dir"}),
    ("c/x.txt", ["RNFR {area}/d/c", "RNTO {area}/c"], {"d": "dir", "c": "dir"}),
], ids=["DELE", "RNTO", "RMD", "RNTO-directory"])
def test_a_directory_losing_its_last_entry_lists_for_another_session_meanwhile(
        alice, second, area, cos, emulator, removed, commands, listed):
    """While DELE, RNTO or RMD takes the last entry of a directory (no marker: it exists
    through that entry only), another session listing its parent sees the directory, before,
    during and after: its marker is written before the entry is deleted, not after (where
    the listing found neither the entry nor the marker). The rendezvous holds the marker's
    PUT until the test's own PUT of the same marker meets it, sent once the other session
    has listed."""
    cos.put_object(Bucket=ALPHA, Key=f"{area}/d/{removed}", Body=b"1")
    marker = f"{area}/d/"
    *first, last = [command.format(area=area) for command in commands]
    for command in first:
        alice.sendcmd(command)
    emulator.requests(reset=True)
    emulator.rendezvous(contains=marker, exact=True, kind="PUT", parties=2, timeout=60)
    alice.putcmd(last)
    wait_until(lambda: emulator.requests(contains=marker).get("PUT"),
               what="the server's PUT of the marker, held")
    try:
        assert mlsd_types(second, area).get("d") == "dir"
    finally:
        cos.put_object(Bucket=ALPHA, Key=marker, Body=b"")  # lets the held PUT go
    assert alice.getresp().startswith("2")
    # RNTO's marker and delete come after its reply: the held PUT's thread may count its
    # passage, and the entry be deleted, after the test's PUT and the reply.
    wait_until(lambda: sum(emulator.rendezvous().values()) == 2 and
               not exists(cos, f"{area}/d/{removed}"),
               what="the held PUT let go, then the entry deleted")
    assert emulator.rendezvous() == {"armed": False, "passed": 2, "broken": 0}
    assert mlsd_types(second, area) == listed
    assert mlsd_types(second, f"{area}/d") == {}


def test_two_sessions_deleting_a_directorys_last_two_files_at_once_keep_it(
        alice, second, area, cos, emulator):
    """Two sessions DELE the last two files of a directory at once: each sees the other's
    file beside its own, and no marker, before deleting; the rendezvous holds both DELETEs
    until both are in flight. Writing the marker only before the delete of what was the
    directory's last entry lost the directory (each saw the other's file)."""
    for name in ("a.txt", "b.txt"):
        cos.put_object(Bucket=ALPHA, Key=f"{area}/d/{name}", Body=b"1")
    emulator.rendezvous(contains=f"{area}/d/", kind="DELETE", parties=2, timeout=60)
    alice.putcmd(f"DELE {area}/d/a.txt")
    second.putcmd(f"DELE {area}/d/b.txt")
    assert alice.getresp().startswith("250")
    assert second.getresp().startswith("250")
    assert emulator.rendezvous() == {"armed": False, "passed": 2, "broken": 0}
    assert mlsd_types(second, area) == {"d": "dir"}
    assert mlsd_types(alice, f"{area}/d") == {}


def test_a_directory_two_sessions_empty_at_once_lists_for_a_third_meanwhile(
        server, alice, second, area, cos, emulator):
    """Two sessions empty a directory (no marker: it exists through its two files) at once:
    "second" deletes b.txt, having seen a.txt beside it, while alice deletes a.txt, seeing
    b.txt. The rendezvous holds second's DELETE, so second has sent all it sends before
    it; the test then deletes b.txt itself, as second's DELETE would (DeleteMultipleObjects,
    which the rendezvous does not hold): the moment after the last DELETE, before anything
    second sends after it. A third session listing the parent then must see the directory:
    its marker is written before an entry of a directory without one is deleted. Written
    after the last DELETE, by the session that then found the directory empty, the listing
    missed it."""
    for name in ("a.txt", "b.txt"):
        cos.put_object(Bucket=ALPHA, Key=f"{area}/d/{name}", Body=b"1")
    held = f"{area}/d/b.txt"
    emulator.requests(reset=True)
    emulator.rendezvous(contains=held, exact=True, kind="DELETE", parties=2, timeout=60)
    second.putcmd(f"DELE {held}")
    wait_until(lambda: emulator.requests(contains=held).get("DELETE"),
               what="second's DELETE, held")
    alice.delete(f"{area}/d/a.txt")
    cos.delete_objects(Bucket=ALPHA, Delete={"Object": [{"Key": held}]})
    third = server.login("alice", "alice-pw")
    try:
        assert mlsd_types(third, area).get("d") == "dir"
    finally:
        _close(third)
        cos.delete_object(Bucket=ALPHA, Key=held)  # lets the held DELETE go
    assert second.getresp().startswith("250")
    assert emulator.rendezvous() == {"armed": False, "passed": 2, "broken": 0}
    assert mlsd_types(alice, area) == {"d": "dir"}
    assert mlsd_types(alice, f"{area}/d") == {}


def test_rmd_of_the_last_subdirectory_keeps_its_parent(alice, area, cos):
    cos.put_object(Bucket=ALPHA, Key=f"{area}/p/c/", Body=b"")
    alice.rmd(f"{area}/p/c")
    assert alice.nlst(area) == ["p"]


@pytest.fixture(scope="module")
def strict_server(emulator, tmp_path_factory):
    proc = ServerProcess(str(tmp_path_factory.mktemp("strict")), emulator.port,
                         [Account("strict", "strict-pw", ALPHA, "RW",
                                  extra="require_existing_dir = true"),
                          *STANDARD_ACCOUNTS[:1]],
                         optional={"max_login_failures": "0", "worker_processes": "1"})
    proc.start()
    yield proc
    proc.stop()


def test_require_existing_dir_refuses_uploads_into_missing_directories(strict_server, area,
                                                                       cos):
    ftp = strict_server.login("strict", "strict-pw")
    try:
        for command in ("STOR", "APPE"):
            with pytest.raises(ftplib.error_perm, match="550"):
                ftp.storbinary(f"{command} {area}/missing/x.txt", io.BytesIO(b"x"))
        assert not exists(cos, f"{area}/missing/x.txt")
        ftp.mkd(area)
        put(ftp, f"{area}/x.txt", b"x")
        ftp.sendcmd(f"RNFR {area}/x.txt")
        with pytest.raises(ftplib.error_perm, match="550"):
            ftp.sendcmd(f"RNTO {area}/missing/x.txt")
        put(ftp, f"{area}/last.txt", b"l")
        ftp.sendcmd(f"RNFR {area}/x.txt")  # not the session's own upload: its HEAD first
        with pytest.raises(ftplib.error_perm, match="550 No such directory"):
            ftp.sendcmd(f"RNTO {area}/missing/x.txt")
        assert exists(cos, f"{area}/x.txt")
        assert not exists(cos, f"{area}/missing/x.txt")
    finally:
        _close(ftp)
    other = strict_server.login("alice", "alice-pw")  # the option is per account
    try:
        put(other, f"{area}/elsewhere/y.txt", b"y")
    finally:
        _close(other)


# --- key length


def _name_for_key_bytes(area: str, total: int) -> str:
    return f"{area}/" + "n" * (total - len(area) - 1)


def test_a_name_of_exactly_850_bytes_is_reachable_by_every_command(alice, area, cos):
    alice.mkd(area)
    longest = _name_for_key_bytes(area, 850)
    put(alice, longest, b"long")
    assert alice.size(longest) == 4
    alice.sendcmd(f"MDTM {longest}")
    assert get(alice, longest) == b"long"
    assert alice.nlst(area) == [longest.split("/")[1]]
    renamed = _name_for_key_bytes(area, 849) + "r"
    alice.rename(longest, renamed)
    assert get(alice, renamed) == b"long"
    with pytest.raises(ftplib.error_perm, match="550"):
        alice.rmd(area)  # not empty: the file is there
    alice.delete(renamed)
    alice.rmd(area)
    assert not exists(cos, renamed.lstrip("/"))


def test_names_over_the_limit_are_refused_up_front(alice, area):
    alice.mkd(area)
    put(alice, f"{area}/src", b"s")
    too_long = _name_for_key_bytes(area, 851)
    for command in ("STOR", "APPE"):
        with pytest.raises(ftplib.error_perm, match="553"):
            alice.storbinary(f"{command} {too_long}", io.BytesIO(b"x"))
    alice.sendcmd(f"RNFR {area}/src")
    with pytest.raises(ftplib.error_perm, match="553"):
        alice.sendcmd(f"RNTO {too_long}")
    with pytest.raises(ftplib.error_perm, match="553"):
        alice.mkd(_name_for_key_bytes(area, 850))  # its marker "name/" would be 851 bytes
    alice.mkd(_name_for_key_bytes(area, 849))


def test_directory_rename_that_would_make_a_key_too_long_gets_553(alice, area, cos):
    inner = "i" * (850 - len(f"{area}/d/") - 30)  # 30 bytes to spare
    put(alice, f"{area}/d/{inner}", b"kept")
    longer = f"{area}/" + "d" * 60
    with pytest.raises(ftplib.error_perm, match="553"):
        alice.rename(f"{area}/d", longer)
    assert get(alice, f"{area}/d/{inner}") == b"kept"
    assert alice.nlst(area) == ["d"]


# --- control characters


@pytest.mark.parametrize("char", ["\x01", "\x09", "\x1b", "\x1f", "\x7f"])
def test_control_characters_in_new_names_get_553(alice, area, cos, char):
    alice.mkd(area)
    put(alice, f"{area}/src", b"s")
    name = f"{area}/bad{char}name"
    for command in ("STOR", "APPE"):
        with pytest.raises(ftplib.error_perm, match="553"):
            alice.storbinary(f"{command} {name}", io.BytesIO(b"x"))
    with pytest.raises(ftplib.error_perm, match="553"):
        alice.mkd(name)
    alice.sendcmd(f"RNFR {area}/src")
    with pytest.raises(ftplib.error_perm, match="553"):
        alice.sendcmd(f"RNTO {name}")
    assert not exists(cos, name)


def test_a_name_starting_with_a_backslash_at_a_bucket_root_gets_553(server, alice, area, cos):
    """COS refuses a key starting with ``\\`` (Object Overview, 436/13324; the emulator
    too). A name at the root of a bucket is such a key: 553 before anything runs, not a
    COS error. Deeper, or under a ``cos_prefix``, it is a name like any other."""
    put(alice, f"{area}/src", b"s")
    at_root = f"/\\{area}.txt"
    for command in ("STOR", "APPE"):
        with pytest.raises(ftplib.error_perm, match=r"^553 "):
            alice.storbinary(f"{command} {at_root}", io.BytesIO(b"x"))
    with pytest.raises(ftplib.error_perm, match=r"^553 "):
        alice.mkd(f"/\\{area}")
    alice.sendcmd(f"RNFR {area}/src")
    with pytest.raises(ftplib.error_perm, match=r"^553 "):
        alice.sendcmd(f"RNTO {at_root}")
    assert get(alice, f"{area}/src") == b"s"
    put(alice, f"{area}/\\deeper", b"d")
    assert exists(cos, f"{area}/\\deeper")
    tenant = server.login("tenant", "tenant-pw")
    try:
        put(tenant, at_root, b"t")
        assert get(tenant, at_root) == b"t"
    finally:
        _close(tenant)
    assert exists(cos, f"{TENANT_PREFIX}\\{area}.txt")


def test_keys_with_control_bytes_from_other_tools_list_and_stay_reachable(alice, area, cos):
    for key in (f"{area}/tab\tand\x01", f"{area}/csi\x9b1m/inner", f"{area}/plain"):
        cos.put_object(Bucket=ALPHA, Key=key, Body=b"other tool")
    names = sorted(alice.nlst(area))
    assert names == ["csi\x9b1m", "plain", "tab\tand\x01"]
    lines: list[str] = []
    alice.retrlines(f"LIST {area}", lines.append)
    assert len(lines) == 3
    assert sorted(name for name, _ in alice.mlsd(area)) == names
    assert alice.nlst(f"{area}/csi\x9b1m") == ["inner"]
    assert get(alice, f"{area}/tab\tand\x01") == b"other tool"
    alice.delete(f"{area}/tab\tand\x01")
    assert alice.pwd() == "/"


# --- accounts with an endpoint and no region


@pytest.fixture(scope="module")
def endpoint_server(emulator, tmp_path_factory):
    account = Account("private", "private-pw", ALPHA, "RW", region="",
                      extra="cos_endpoint = cos.private.example")
    proc = ServerProcess(str(tmp_path_factory.mktemp("endpoint")), emulator.port, [account],
                         optional={"max_login_failures": "0", "worker_processes": "1"})
    proc.start()
    yield proc
    proc.stop()


def test_endpoint_account_renames_appends_and_sets_times(endpoint_server, area, cos):
    ftp = endpoint_server.login("private", "private-pw")
    try:
        put(ftp, f"{area}/a.txt", b"hello ")
        ftp.storbinary(f"APPE {area}/a.txt", io.BytesIO(b"world"))
        ftp.rename(f"{area}/a.txt", f"{area}/b.txt")
        assert ftp.sendcmd(f"MFMT 20200102030405 {area}/b.txt").startswith("213")
        assert ftp.sendcmd(f"MDTM {area}/b.txt") == "213 20200102030405"
        assert get(ftp, f"{area}/b.txt") == b"hello world"
    finally:
        _close(ftp)
    assert not exists(cos, f"{area}/a.txt")


# --- STOR into a directory nobody made (kept: devices upload to dated paths without MKD)


def test_stor_into_missing_directories_makes_each_of_them_a_directory_everywhere(
        alice, second, area, cos):
    """A STOR into directories nobody made is stored (the old server did; cameras and
    scanners upload to a dated path, many without MKD). Each directory on the way then is
    one for every command of every session: listed as a directory by LIST, NLST, MLSD and
    MLST, entered by CWD, refused by SIZE, MKD (it exists) and RMD (not empty); and it stays
    when its last file goes, as on a disk."""
    path = f"{area}/2026/12/07"
    assert put(alice, f"{path}/cam.jpg", b"jpeg").startswith("226")
    assert not exists(cos, f"{area}/2026/")  # no markers: one PUT per upload
    parent = ""
    for name in (area, "2026", "12", "07"):
        listed = parent or "/"
        lines = []
        second.retrlines(f"LIST {listed}", lines.append)
        assert next(line for line in lines if line.split()[-1] == name).startswith("d")
        assert name in [entry.rsplit("/", 1)[-1] for entry in second.nlst(listed)]
        assert mlsd_types(second, listed)[name] == "dir"
        directory = f"{parent}/{name}"
        assert "type=dir;" in second.sendcmd(f"MLST {directory}")
        second.cwd(directory)
        assert second.pwd() == directory
        with pytest.raises(ftplib.error_perm, match=r"^550 "):
            second.size(directory)
        with pytest.raises(ftplib.error_perm, match=r"^550 "):
            second.mkd(directory)
        with pytest.raises(ftplib.error_perm, match=r"^550 "):
            second.rmd(directory)
        parent = directory
    second.cwd("/")
    alice.rename(f"{path}/cam.jpg", f"{area}/moved/cam.jpg")  # RNTO and APPE alike
    alice.storbinary(f"APPE {area}/appended/log.txt", io.BytesIO(b"line"))
    assert mlsd_types(second, area) == {"2026": "dir", "moved": "dir", "appended": "dir"}
    assert mlsd_types(second, f"{area}/2026/12") == {"07": "dir"}  # kept without its file
    second.cwd(path)
    second.cwd("/")


def mlsd_types(ftp: ftplib.FTP, path: str) -> dict[str, str]:
    return {name: facts["type"] for name, facts in ftp.mlsd(path, ["type"])}


def test_curl_stores_into_a_missing_path_and_walks_it_back_with_cwd(server, area, tmp_path):
    """curl, as devices do: STOR of the whole path (--ftp-method nocwd) into directories
    nobody made is stored; curl's default method then reads it back with a CWD into each
    directory, so every one of them must be a directory for CWD too. curl's default upload
    CWDs first and fails on the missing directory unless --ftp-create-dirs (MKD each)."""
    source = tmp_path / "scan.pdf"
    source.write_bytes(b"%PDF scan")
    done = curl_put(server.port, "alice", "alice-pw", source, f"{area}/2026/12/scan.pdf",
                    "--ftp-method", "nocwd")
    assert done.returncode == 0, done.stderr
    url = f"ftp://127.0.0.1:{server.port}/{area}/2026/12/scan.pdf"
    fetched = run([require("curl"), "-sS", "-u", "alice:alice-pw", "--ftp-method",
                   "multicwd", url])
    assert fetched == "%PDF scan"
    refused = curl_put(server.port, "alice", "alice-pw", source, f"{area}/other/scan.pdf")
    assert refused.returncode == 9 and "CWD" in refused.stderr  # 550 on the missing CWD
    made = curl_put(server.port, "alice", "alice-pw", source, f"{area}/other/scan.pdf",
                    "--ftp-create-dirs")
    assert made.returncode == 0, made.stderr
