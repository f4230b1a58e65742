"""Every command the old server documented, driven with ftplib against the real server."""

from __future__ import annotations

import ftplib
import io

import pytest

from .conftest import ALPHA


def put(ftp: ftplib.FTP, path: str, data: bytes) -> str:
    return ftp.storbinary(f"STOR {path}", io.BytesIO(data))


def rename_whose_copy_fails(ftp: ftplib.FTP, emulator, doomed: str, src: str,
                            dst: str) -> None:
    """Store ``doomed``, make the emulator fail every copy of it, and rename ``src`` (which
    is ``doomed`` or holds it) to ``dst``: the rename must answer 451."""
    put(ftp, doomed, b"d")
    emulator.set_faults(fail_copies_of=doomed)
    try:
        with pytest.raises(ftplib.error_temp, match="451"):
            ftp.rename(src, dst)
    finally:
        emulator.set_faults(fail_copies_of="")


def get(ftp: ftplib.FTP, path: str, rest=None) -> bytes:
    out = bytearray()
    ftp.retrbinary(f"RETR {path}", out.extend, rest=rest)
    return bytes(out)


def test_login_pwd_and_bad_password(server, alice):
    assert alice.pwd() == "/"
    with pytest.raises(ftplib.error_perm, match="530"):
        server.login("alice", "wrong")
    with pytest.raises(ftplib.error_perm, match="530"):
        server.login("nobody", "alice-pw")


def test_mkdir_cd_cdup_pwd(alice, area, cos):
    assert alice.mkd(area) == f"/{area}"
    assert cos.head_object(Bucket=ALPHA, Key=f"{area}/")["Content-Length"] == "0"
    alice.cwd(area)
    assert alice.pwd() == f"/{area}"
    alice.mkd("sub")
    alice.cwd("sub")
    assert alice.pwd() == f"/{area}/sub"
    alice.sendcmd("CDUP")
    assert alice.pwd() == f"/{area}"
    with pytest.raises(ftplib.error_perm, match="550"):
        alice.cwd("missing")
    with pytest.raises(ftplib.error_perm, match="550"):
        alice.mkd("sub")


def test_implicit_directory_from_keys_lists_and_cds(alice, area, cos):
    cos.put_object(Bucket=ALPHA, Key=f"{area}/deep/file.txt", Body=b"x")
    assert alice.nlst(area) == ["deep"]
    alice.cwd(f"{area}/deep")
    assert alice.nlst() == ["file.txt"]


def test_list_shows_sizes_and_dirs(alice, area):
    alice.mkd(area)
    put(alice, f"{area}/a.txt", b"12345")
    alice.mkd(f"{area}/sub")
    lines = []
    alice.retrlines(f"LIST {area}", lines.append)
    by_name = {line.split()[-1]: line for line in lines}
    assert set(by_name) == {"a.txt", "sub"}
    assert by_name["a.txt"].startswith("-") and " 5 " in by_name["a.txt"]
    assert by_name["sub"].startswith("d")
    assert "1970" not in by_name["sub"]


def test_mlsd_and_mlst(alice, area):
    alice.mkd(area)
    put(alice, f"{area}/m.bin", b"abc")
    alice.mkd(f"{area}/d")
    facts = dict(alice.mlsd(area))
    assert facts["m.bin"]["type"] == "file" and facts["m.bin"]["size"] == "3"
    assert facts["d"]["type"] == "dir"
    reply = alice.sendcmd(f"MLST {area}/m.bin")
    assert "size=3" in reply and "type=file" in reply


def test_size_mdtm_and_missing(alice, area):
    put(alice, f"{area}.txt", b"hello")
    assert alice.size(f"{area}.txt") == 5
    assert alice.sendcmd(f"MDTM {area}.txt").startswith("213 20")
    with pytest.raises(ftplib.error_perm, match="550"):
        alice.size(f"{area}.missing")


def test_dele(alice, area, cos):
    put(alice, f"{area}.txt", b"bye")
    assert alice.delete(f"{area}.txt").startswith("250")
    assert cos.object_exists(Bucket=ALPHA, Key=f"{area}.txt") is False
    with pytest.raises(ftplib.error_perm, match="550"):
        alice.delete(f"{area}.txt")


def test_rmd_only_when_empty(alice, area, cos):
    alice.mkd(area)
    put(alice, f"{area}/f", b"1")
    with pytest.raises(ftplib.error_perm, match="550"):
        alice.rmd(area)
    alice.delete(f"{area}/f")
    alice.rmd(area)
    assert cos.object_exists(Bucket=ALPHA, Key=f"{area}/") is False
    with pytest.raises(ftplib.error_perm, match="550"):
        alice.rmd(area)


def test_rename_file_copies_content(alice, area, cos):
    data = bytes(range(256)) * 100
    put(alice, f"{area}-src.bin", data)
    alice.rename(f"{area}-src.bin", f"{area}-dst.bin")
    assert get(alice, f"{area}-dst.bin") == data
    # The source is deleted after the reply (ftp/background.py): the session's next command
    # that could see it waits for that, and COS no longer holds it then.
    with pytest.raises(ftplib.error_perm, match="550"):
        alice.size(f"{area}-src.bin")
    assert cos.object_exists(Bucket=ALPHA, Key=f"{area}-src.bin") is False
    with pytest.raises(ftplib.error_perm, match="550"):
        alice.rename(f"{area}-missing", f"{area}-x")


def test_rnto_without_rnfr(alice):
    with pytest.raises(ftplib.error_perm, match="503"):
        alice.sendcmd("RNTO x")


def test_stou_is_refused_cleanly(alice):
    with pytest.raises(ftplib.error_perm, match="502"):
        alice.sendcmd("STOU")
    assert alice.voidcmd("NOOP").startswith("200")


def test_quit(server):
    ftp = server.login("alice", "alice-pw")
    assert ftp.quit().startswith("221")
