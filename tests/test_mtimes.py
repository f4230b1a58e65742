"""MFMT: a client-set modification time, honoured by MDTM, LIST, MLSD and lftp mirror."""

from __future__ import annotations

import ftplib
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
    for bad in (f"MFMT 2020 {area}/f", f"MFMT {STAMP} {area}", f"MFMT {STAMP} {area}/none"):
        with pytest.raises(ftplib.error_perm, match="550"):
            alice.sendcmd(bad)
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


def test_lftp_mirror_keeps_timestamps(server, tmp_path, area):
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    times = {"a.txt": 1_500_000_000, "sub/b.txt": 1_600_000_000}
    for rel, mtime in times.items():
        (tree / rel).write_text(rel)
        os.utime(tree / rel, (mtime, mtime))
    lftp(server, f'mirror -R "{tree}" {area}')
    back = tmp_path / "back"
    lftp(server, f'mirror {area} "{back}"')
    for rel, mtime in times.items():
        assert int((back / rel).stat().st_mtime) == mtime, rel
