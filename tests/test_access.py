"""Permissions (R / W / RW, delete_enable), bucket isolation and the path jail."""

from __future__ import annotations

import ftplib
import io
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import ALPHA, BETA, KEPT, _close, kept_attributes, put_with_attributes
from .server_proc import Account, ServerProcess
from .test_commands import get, put


@pytest.fixture
def login(server):
    sessions = []

    def _login(user: str) -> ftplib.FTP:
        ftp = server.login(user, f"{user}-pw")
        sessions.append(ftp)
        return ftp

    yield _login
    for ftp in sessions:
        _close(ftp)


def test_read_only_user_cannot_write(login, alice, area):
    put(alice, f"{area}.txt", b"data")
    reader = login("reader")
    assert get(reader, f"{area}.txt") == b"data"
    reader.retrlines("LIST")
    for cmd in (lambda: put(reader, f"{area}-new", b"x"),
                lambda: reader.mkd(f"{area}-dir"),
                lambda: reader.delete(f"{area}.txt"),
                lambda: reader.rename(f"{area}.txt", f"{area}-moved")):
        with pytest.raises(ftplib.error_perm, match="550"):
            cmd()


def test_write_only_user_cannot_download(login, cos, area):
    writer = login("writer")
    put(writer, f"{area}.txt", b"drop box")
    assert cos.get_object(Bucket=ALPHA, Key=f"{area}.txt")["Body"].get_raw_stream().read() \
        == b"drop box"
    with pytest.raises(ftplib.error_perm, match="550"):
        get(writer, f"{area}.txt")
    writer.retrlines("LIST")  # listing is allowed so upload-only clients can navigate


def test_delete_disabled_refuses_dele_rmd_and_overwriting_rename(login, cos, area):
    keeper = login("keeper")
    put(keeper, f"{area}-a", b"a")
    put(keeper, f"{area}-b", b"b")
    keeper.mkd(f"{area}-dir")
    with pytest.raises(ftplib.error_perm, match="550"):
        keeper.delete(f"{area}-a")
    with pytest.raises(ftplib.error_perm, match="550"):
        keeper.rmd(f"{area}-dir")
    with pytest.raises(ftplib.error_perm,
                       match="550 Overwriting by rename needs delete permission"):
        keeper.rename(f"{area}-a", f"{area}-b")
    assert get(keeper, f"{area}-b") == b"b"
    keeper.rename(f"{area}-a", f"{area}-c")  # a rename to a free name is allowed
    assert get(keeper, f"{area}-c") == b"a"


def test_users_on_different_buckets_are_isolated(login, alice, cos, area):
    put(alice, f"{area}.txt", b"alpha data")
    bob = login("bob")
    assert f"{area}.txt" not in bob.nlst()
    with pytest.raises(ftplib.error_perm, match="550"):
        get(bob, f"{area}.txt")
    put(bob, f"{area}.txt", b"beta data")
    assert get(alice, f"{area}.txt") == b"alpha data"
    assert cos.get_object(Bucket=BETA, Key=f"{area}.txt")["Body"].get_raw_stream().read() \
        == b"beta data"


@pytest.mark.parametrize("name", ["with space.txt", "ünïcødé 文件.txt", " lead and trail .txt"])
def test_unusual_names_round_trip(alice, cos, area, name):
    alice.mkd(area)
    put(alice, f"{area}/{name}", name.encode())
    assert get(alice, f"{area}/{name}") == name.encode()
    assert alice.nlst(area) == [name]
    assert cos.object_exists(Bucket=ALPHA, Key=f"{area}/{name}")


@pytest.mark.parametrize("escape", ["../../etc/passwd", "/../../x", "a/../../../y", "//double"])
def test_dotdot_and_slashes_stay_inside_bucket(alice, cos, area, escape):
    alice.mkd(area)
    alice.cwd(area)
    put(alice, escape, b"jailed")
    expected = {"../../etc/passwd": "etc/passwd", "/../../x": "x", "a/../../../y": "y",
                "//double": "double"}[escape]
    assert cos.get_object(Bucket=ALPHA, Key=expected)["Body"].get_raw_stream().read() \
        == b"jailed"
    alice.cwd("../../..")
    assert alice.pwd() == "/"


def test_listing_paginates_past_one_page(alice, cos, area):
    keys = [f"{area}/k{i:05d}" for i in range(2500)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: cos.put_object(Bucket=ALPHA, Key=key, Body=b""), keys))
    names = alice.nlst(area)
    assert sorted(names) == sorted(k.rsplit("/", 1)[1] for k in keys)
    lines = []
    alice.retrlines(f"LIST {area}", lines.append)
    assert len(lines) == 2500


def test_storbinary_into_missing_parent_creates_prefix(alice, area):
    put(alice, f"{area}/new/dir/file", b"x")
    assert alice.nlst(f"{area}/new") == ["dir"]
    alice.cwd(f"{area}/new")
    with pytest.raises(ftplib.error_perm, match="550"):
        alice.storbinary("STOR dir", io.BytesIO(b"onto a directory this session just saw"))


def test_rename_directory_moves_every_key(alice, cos, area):
    files = {"a.txt": b"a", "sub/b.txt": b"bb", "sub/deep/c.txt": b"ccc"}
    alice.mkd(area)
    alice.mkd(f"{area}/src")
    for rel, data in files.items():
        put(alice, f"{area}/src/{rel}", data)
    alice.rename(f"{area}/src", f"{area}/dst")
    for rel, data in files.items():
        assert get(alice, f"{area}/dst/{rel}") == data
    assert alice.nlst(area) == ["dst"]
    remaining = cos.list_objects(Bucket=ALPHA, Prefix=f"{area}/src").get("Contents", [])
    assert remaining == []


def test_rename_directory_needs_delete_permission_and_a_free_target(login, alice, area):
    keeper = login("keeper")
    keeper.mkd(f"{area}-k")
    put(keeper, f"{area}-k/f", b"1")
    with pytest.raises(ftplib.error_perm, match="550 Renaming a directory deletes its old"):
        keeper.rename(f"{area}-k", f"{area}-moved")
    assert get(keeper, f"{area}-k/f") == b"1"
    alice.mkd(f"{area}-other")
    with pytest.raises(ftplib.error_perm, match="550 Target exists"):
        alice.rename(f"{area}-k", f"{area}-other")
    with pytest.raises(ftplib.error_perm, match="550 Cannot move a directory into itself"):
        alice.rename(f"{area}-k", f"{area}-k/inside")


def test_rename_directory_failing_copy_deletes_nothing(alice, cos, area, emulator):
    alice.mkd(area)
    for name in ("one", "poison", "three"):
        put(alice, f"{area}/{name}", name.encode())
    emulator.set_faults(fail_copies_of="poison")
    try:
        with pytest.raises(ftplib.error_temp, match="451"):
            alice.rename(area, f"{area}-new")
    finally:
        emulator.set_faults(fail_copies_of="")
    for name in ("one", "poison", "three"):
        assert get(alice, f"{area}/{name}") == name.encode()
    assert cos.list_objects(Bucket=ALPHA, Prefix=f"{area}-new/").get("Contents", []) == []


def test_rename_onto_itself_changes_nothing(alice, area, cos):
    put_with_attributes(cos, f"{area}/scan.txt", b"scanned")
    alice.mkd(f"{area}/d")
    for name in ("scan.txt", "d"):
        assert alice.rename(f"{area}/{name}", f"{area}/{name}").startswith("250")
    assert get(alice, f"{area}/scan.txt") == b"scanned"
    assert kept_attributes(cos, f"{area}/scan.txt") == KEPT
    assert "d" in alice.nlst(area)


@pytest.mark.parametrize("size", [7, 2 * 1024 * 1024])  # bytes sent again, copied in COS
def test_appe_keeps_headers_metadata_and_storage_class_but_not_the_mfmt_time(alice, area,
                                                                             cos, size):
    data = os.urandom(size)
    put_with_attributes(cos, area, data)
    alice.sendcmd(f"MFMT 20200102030405 {area}")
    assert alice.storbinary(f"APPE {area}", io.BytesIO(b"tail")).startswith("226")
    assert get(alice, area) == data + b"tail"
    assert kept_attributes(cos, area) == KEPT
    assert "x-cos-meta-mtime" not in {name.lower() for name in
                                      cos.head_object(Bucket=ALPHA, Key=area)}
    assert not alice.sendcmd(f"MDTM {area}").startswith("213 2020")


def test_rename_keeps_content_headers_metadata_and_storage_class(alice, area, cos):
    put_with_attributes(cos, f"{area}/scan.txt", b"scanned")
    alice.rename(f"{area}/scan.txt", f"{area}/kept.txt")
    assert kept_attributes(cos, f"{area}/kept.txt") == KEPT
    alice.rename(area, f"{area}-moved")
    assert kept_attributes(cos, f"{area}-moved/kept.txt") == KEPT


def test_rename_above_copy_threshold_uses_multipart_copy(emulator, cos, tmp_path, area):
    account = Account("mover", "mover-pw", ALPHA)
    data = os.urandom(3 * 1024 * 1024 + 17)
    with ServerProcess(str(tmp_path), emulator.port, [account],
                       optional={"multipart_copy_threshold": str(1024 * 1024)}) as srv:
        ftp = srv.login("mover", "mover-pw")
        put_with_attributes(cos, f"{area}/big.bin", data)
        ftp.rename(f"{area}/big.bin", f"{area}/moved.bin")
        assert get(ftp, f"{area}/moved.bin") == data
        assert ftp.rename(f"{area}/moved.bin", f"/{area}/./moved.bin").startswith("250")
        assert get(ftp, f"{area}/moved.bin") == data  # a rename onto itself changes nothing
        put_with_attributes(cos, f"{area}/d/inner.bin", data)
        ftp.rename(f"{area}/d", f"{area}/e")
        assert get(ftp, f"{area}/e/inner.bin") == data
        _close(ftp)
    head = {k.lower(): v for k, v in cos.head_object(Bucket=ALPHA, Key=f"{area}/moved.bin").items()}
    assert head["etag"].endswith('-4"')  # 4 copied parts, not one CopyObject
    assert kept_attributes(cos, f"{area}/moved.bin") == KEPT
    assert kept_attributes(cos, f"{area}/e/inner.bin") == KEPT
    assert cos.object_exists(Bucket=ALPHA, Key=f"{area}/big.bin") is False
