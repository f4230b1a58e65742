"""One consistent, disk-like namespace (issue 13)."""

from __future__ import annotations

import ftplib
import io

import pytest

from .conftest import ALPHA, _close
from .server_proc import Account, ServerProcess


def put(ftp: ftplib.FTP, path: str, data: bytes) -> str:
    return ftp.storbinary(f"STOR {path}", io.BytesIO(data))


def get(ftp: ftplib.FTP, path: str) -> bytes:
    out = bytearray()
    ftp.retrbinary(f"RETR {path}", out.extend)
    return bytes(out)


def exists(cos, key: str) -> bool:
    return cos.object_exists(Bucket=ALPHA, Key=key)


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
