"""MFMT: a client-set modification time, honoured by MDTM, LIST, MLSD and lftp mirror."""

from __future__ import annotations

import ftplib
import io
import os
import time

import pytest

from .conftest import ALPHA, KEPT, kept_attributes, put_with_attributes
from .server_proc import Account, ServerProcess
from .test_clients import lftp
from .test_commands import get, put

MIB = 1024 * 1024
STAMP = "20200102030405"


def mlsd_modify(ftp: ftplib.FTP, directory: str) -> dict[str, str]:
    return {name: facts["modify"] for name, facts in ftp.mlsd(directory, ["type", "modify"])
            if facts.get("type") == "file"}


def markers(cos, directory: str) -> list[str]:
    listing = cos.list_objects(Bucket=ALPHA, Prefix=f".cosftp/mtime/{directory}/")
    return [item["Key"] for item in listing.get("Contents", [])]


@pytest.mark.parametrize("size", [10, 2 * MIB + 1])
def test_mfmt_is_honoured_by_mdtm_mlsd_list_and_mlst(server, alice, area, cos, size):
    data = os.urandom(size)
    alice.mkd(area)
    put(alice, f"{area}/f.bin", data)
    assert alice.sendcmd(f"MFMT {STAMP} {area}/f.bin") == f"213 Modify={STAMP}; /{area}/f.bin."
    assert alice.sendcmd(f"MDTM {area}/f.bin") == f"213 {STAMP}"
    assert mlsd_modify(alice, area) == {"f.bin": STAMP}
    listing = []
    alice.retrlines(f"LIST {area}", listing.append)
    assert "Jan 02  2020 f.bin" in listing[0]
    head = cos.head_object(Bucket=ALPHA, Key=f"{area}/f.bin")
    assert head["x-cos-meta-mtime"] == "1577934245"
    assert get(alice, f"{area}/f.bin") == data  # the copy onto itself kept the bytes
    fresh = server.login("alice", "alice-pw")  # nothing cached from the commands above
    assert f"modify={STAMP};" in fresh.sendcmd(f"MLST {area}/f.bin")
    fresh.quit()


def test_mfmt_again_replaces_the_time_and_an_overwrite_drops_it(alice, area, cos):
    alice.mkd(area)
    put(alice, f"{area}/f", b"one")
    alice.sendcmd(f"MFMT {STAMP} {area}/f")
    alice.sendcmd(f"MFMT 20210101000000 {area}/f")
    assert mlsd_modify(alice, area) == {"f": "20210101000000"}
    assert [key.rsplit("#", 1)[0] for key in markers(cos, area)] == [
        f".cosftp/mtime/{area}/f#1609459200"]
    put(alice, f"{area}/f", b"two")
    this_year = time.strftime("%Y", time.gmtime())
    assert mlsd_modify(alice, area)["f"].startswith(this_year)
    assert alice.sendcmd(f"MDTM {area}/f").startswith(f"213 {this_year}")


def test_mfmt_keeps_content_headers_metadata_and_storage_class(alice, area, cos):
    put_with_attributes(cos, area, b"scanned")
    alice.sendcmd(f"MFMT {STAMP} {area}")
    assert alice.sendcmd(f"MDTM {area}") == f"213 {STAMP}"
    assert kept_attributes(cos, area) == KEPT


def test_mfmt_of_a_large_object_uses_a_multipart_copy(emulator, tmp_path, area, cos):
    data = os.urandom(2 * MIB + 5)
    put_with_attributes(cos, area, data)
    with ServerProcess(str(tmp_path), emulator.port, [Account("alice", "alice-pw", ALPHA)],
                       optional={"multipart_copy_threshold": str(MIB)}) as srv:
        ftp = srv.login("alice", "alice-pw")
        ftp.sendcmd(f"MFMT {STAMP} {area}")
        assert ftp.sendcmd(f"MDTM {area}") == f"213 {STAMP}"
        assert get(ftp, area) == data
        assert cos.head_object(Bucket=ALPHA, Key=area)["ETag"].endswith('-3"')  # in parts
        assert kept_attributes(cos, area) == KEPT
        ftp.rename(area, f"{area}-moved")  # a multipart copy again
        assert mlsd_modify(ftp, "/")[f"{area}-moved"] == STAMP
        ftp.quit()


def test_renamed_files_and_directories_keep_their_mfmt_time_in_listings(server, alice, area,
                                                                       cos):
    alice.mkd(area)
    put(alice, f"{area}/f", b"one")
    put(alice, f"{area}/sub/g", b"two")
    alice.sendcmd(f"MFMT {STAMP} {area}/f")
    alice.sendcmd(f"MFMT 20210101000000 {area}/sub/g")
    alice.rename(f"{area}/f", f"{area}/f2")
    alice.rename(f"{area}/sub", f"{area}/sub2")
    fresh = server.login("alice", "alice-pw")
    assert mlsd_modify(fresh, area) == {"f2": STAMP}
    assert mlsd_modify(fresh, f"{area}/sub2") == {"g": "20210101000000"}
    fresh.quit()
    assert [key.rsplit("#", 2)[0] for key in markers(cos, area)] == [
        f".cosftp/mtime/{area}/f2", f".cosftp/mtime/{area}/sub2/g"]  # the old ones are gone
    put(alice, f"{area}/f", b"one")  # the same bytes again under the old name: its own time
    assert not mlsd_modify(alice, area)["f"].startswith("2020")


def test_mfmt_refusals(server, alice, area):
    alice.mkd(area)
    put(alice, f"{area}/f", b"x")
    for bad in (f"MFMT {STAMP} {area}", f"MFMT {STAMP} {area}/none"):
        with pytest.raises(ftplib.error_perm, match="550"):
            alice.sendcmd(bad)
    with pytest.raises(ftplib.error_perm, match="501"):  # a syntax error (test_replies.py)
        alice.sendcmd(f"MFMT 2020 {area}/f")
    reader = server.login("reader", "reader-pw")
    with pytest.raises(ftplib.error_perm, match="550 Not enough privileges"):
        reader.sendcmd(f"MFMT {STAMP} {area}/f")
    reader.quit()


def test_the_servers_own_data_is_out_of_reach(alice, area):
    put(alice, f"{area}-f", b"x")
    alice.sendcmd(f"MFMT {STAMP} {area}-f")  # makes sure .cosftp/ exists in the bucket
    assert ".cosftp" not in alice.nlst("/")
    with pytest.raises(ftplib.error_perm, match="550"):
        alice.cwd("/.cosftp")
    with pytest.raises(ftplib.error_perm, match="550"):
        get(alice, f"/.cosftp/mtime/{area}-f#1577934245")
    with pytest.raises(ftplib.error_perm, match="553"):
        put(alice, "/.cosftp/planted", b"x")


def test_lftp_mirror_keeps_timestamps(server, tmp_path, area, emulator):
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    times = {"a.txt": 1_500_000_000, "sub/b.txt": 1_600_000_000}
    for rel, mtime in times.items():
        (tree / rel).write_text(rel)
        os.utime(tree / rel, (mtime, mtime))
    emulator.requests(reset=True)
    lftp(server, f'mirror -R "{tree}" {area}')
    sent = emulator.requests(contains=area)
    # lftp sends MFMT right after each STOR: one pinned self-copy each, no HEAD.
    assert sent["COPY"] == len(times) and "HEAD" not in sent, sent
    back = tmp_path / "back"
    lftp(server, f'mirror {area} "{back}"')
    for rel, mtime in times.items():
        assert int((back / rel).stat().st_mtime) == mtime, rel


def mfmt_requests(emulator, ftp: ftplib.FTP, path: str) -> dict:
    """The COS requests of ``MFMT STAMP path``, which must succeed."""
    emulator.requests(reset=True)
    assert ftp.sendcmd(f"MFMT {STAMP} {path}") == f"213 Modify={STAMP}; /{path}."
    return emulator.requests(contains=path)


GENERAL_MFMT = {"HEAD": 1, "COPY": 1, "LIST": 1, "PUT": 1}  # see test_request_budget


def shown_times(ftp: ftplib.FTP, directory: str, name: str) -> tuple[str, str, str]:
    """What MDTM, MLSD and LIST show as the time of ``directory/name``."""
    listing: list[str] = []
    ftp.retrlines(f"LIST {directory}", listing.append)
    line = next(line for line in listing if line.endswith(f" {name}"))
    return (ftp.sendcmd(f"MDTM {directory}/{name}"), mlsd_modify(ftp, directory)[name],
            " ".join(line.split()[5:8]))


@pytest.mark.parametrize("size", [10, 2 * MIB + 1])
def test_mfmt_right_after_the_sessions_own_stor_is_one_pinned_copy(server, alice, area, cos,
                                                                   emulator, size):
    data = os.urandom(size)
    alice.mkd(area)
    put(alice, f"{area}/f", data)
    before = kept_attributes(cos, f"{area}/f")
    assert mfmt_requests(emulator, alice, f"{area}/f") == {"COPY": 1, "PUT": 1}
    assert shown_times(alice, area, "f") == (f"213 {STAMP}", STAMP, "Jan 02 2020")
    fresh = server.login("alice", "alice-pw")
    assert shown_times(fresh, area, "f") == (f"213 {STAMP}", STAMP, "Jan 02 2020")
    assert get(fresh, f"{area}/f") == data
    fresh.quit()
    # The copy named no attributes, as the STOR did not: COS's defaults, as before.
    assert kept_attributes(cos, f"{area}/f") == before
    assert len(markers(cos, area)) == 1


def test_mfmt_answers_once_cos_holds_the_time_another_session_reads_it_at_once(
        server, alice, area, emulator):
    """MFMT right after the session's own STOR (lftp mirror -R) answers 213 only once the
    self-copy is done, not before with the write left running: another session reading the
    file right after the 213 (rclone spreads one file's commands over its connections) must
    see that time, and its own MFMT after it must win. The rendezvous holds the copy (in
    vain, for a moment); a 213 sent before COS holds the time would let the other session
    read the time from before the MFMT."""
    alice.mkd(area)
    put(alice, f"{area}/f", b"mine")
    emulator.rendezvous(contains=f"{area}/f", kind="COPY", parties=2, timeout=2)
    assert alice.sendcmd(f"MFMT {STAMP} {area}/f") == f"213 Modify={STAMP}; /{area}/f."
    other = server.login("alice", "alice-pw")
    try:
        assert other.sendcmd(f"MDTM {area}/f") == f"213 {STAMP}"
        assert emulator.rendezvous() == {"armed": False, "passed": 0, "broken": 1}
        other.sendcmd(f"MFMT 20210102030405 {area}/f")
        assert other.sendcmd(f"MDTM {area}/f") == "213 20210102030405"
    finally:
        other.quit()
    assert shown_times(alice, area, "f") == ("213 20210102030405", "20210102030405",
                                             "Jan 02 2021")


@pytest.mark.parametrize("writer", ["ftp", "tool"])
def test_a_file_overwritten_between_stor_and_mfmt_gets_the_time_the_general_way(
        server, alice, area, cos, emulator, writer):
    """The pinned copy is refused (412): the time goes to the other session's bytes, which
    keep what that writer gave them, after a HEAD."""
    alice.mkd(area)
    put(alice, f"{area}/f", b"mine")
    theirs = b"theirs, written in between"
    if writer == "ftp":
        other = server.login("alice", "alice-pw")
        put(other, f"{area}/f", theirs)
        other.quit()
    else:
        put_with_attributes(cos, f"{area}/f", theirs)
    expected = kept_attributes(cos, f"{area}/f")
    sent = mfmt_requests(emulator, alice, f"{area}/f")
    # The refused copy and the marker written beside it (deleted again), then HEAD first.
    assert sent == {**GENERAL_MFMT, "COPY": 2, "PUT": 2, "DELETE": 1}, sent
    assert get(alice, f"{area}/f") == theirs
    assert shown_times(alice, area, "f") == (f"213 {STAMP}", STAMP, "Jan 02 2020")
    assert kept_attributes(cos, f"{area}/f") == expected
    if writer == "tool":
        assert expected == KEPT


def test_mfmt_of_a_file_deleted_since_the_sessions_stor_is_550(server, alice, area):
    put(alice, area, b"mine")
    other = server.login("alice", "alice-pw")
    other.delete(area)
    other.quit()
    with pytest.raises(ftplib.error_perm, match="550 No such file"):
        alice.sendcmd(f"MFMT {STAMP} {area}")


@pytest.mark.parametrize("failed", ["", "-other"], ids=["same file", "another file"])
def test_mfmt_after_a_failed_stor_takes_the_general_path(alice, area, emulator, failed):
    """Only the session's last upload counts, and only once it committed."""
    put(alice, area, b"old")
    emulator.set_faults(corrupt_next_parts=1)  # the next upload's first part arrives damaged
    try:
        with pytest.raises(ftplib.error_temp, match="451"):
            put(alice, area + failed, os.urandom(2 * MIB + 1))
    finally:
        emulator.set_faults(corrupt_next_parts=0)
    assert mfmt_requests(emulator, alice, area) == GENERAL_MFMT
    assert get(alice, area) == b"old"
    assert alice.sendcmd(f"MDTM {area}") == f"213 {STAMP}"


def write_again(server, ftp: ftplib.FTP, path: str, write: str) -> None:
    """Another write of ``path`` by the session of ``ftp`` (or of another file)."""
    if write == "DELE":  # and the same bytes stored again by another session: same ETag
        ftp.delete(path)
        other = server.login("alice", "alice-pw")
        put(other, path, b"mine")
        other.quit()
    elif write == "RNFR/RNTO":
        ftp.rename(path, f"{path}-2")
        ftp.rename(f"{path}-2", path)
        assert f"{path}-2" not in ftp.nlst()  # a listing waits for the rename's delete
    elif write == "APPE":
        ftp.storbinary(f"APPE {path}", io.BytesIO(b" and more"))
    else:
        put(ftp, f"{path}-other", b"x")


@pytest.mark.parametrize("write", ["DELE", "RNFR/RNTO", "APPE", "STOR of another file"])
def test_another_write_by_the_session_makes_mfmt_ask_cos_first(server, alice, area, emulator,
                                                              write):
    put(alice, area, b"mine")
    write_again(server, alice, area, write)
    assert mfmt_requests(emulator, alice, area) == GENERAL_MFMT
    assert alice.sendcmd(f"MDTM {area}") == f"213 {STAMP}"
