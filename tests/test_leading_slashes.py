"""No FTP name reaches COS as a key starting with ``/`` (COS refuses such keys: Object
Overview, cloud.tencent.com/document/product/436/13324).

FTP clients send names with doubled, leading and ``.``/``..`` slashes (``//a``, ``/a//b``,
``/../a``); the server normalises them (pyftpdlib's ``ftpnorm``, then ``paths.object_key``).
The SDK drops one leading ``/`` of a Key, so a key the server built as ``//a`` would reach COS
as ``/a``. Each account here signs with a SecretId of its own, so the emulator's log (which
reads the request path as COS does: ``//a`` is the key ``/a``) shows every key the server
named for it: at a bucket's root, under a ``cos_prefix`` and in a virtual folder.
"""

from __future__ import annotations

import ftplib
import uuid
from typing import NamedTuple

import pytest

from .conftest import ALPHA, BETA, _close
from .emulator_proc import request_log
from .server_proc import Account, ServerProcess
from .test_commands import get, put
from .test_prefixes import keys_under

ROOT = f"slashes-{uuid.uuid4().hex[:8]}/"
FOLDER = f"""
[FOLDER_slashed]
cos_bucket = {BETA}
cos_region = ap-guangzhou
cos_prefix = {ROOT}folder
authority = RW
"""


class Place(NamedTuple):
    """An account, where it works (``base``: its FTP path, a directory made by the test)
    and where that lands in COS (``bucket``, the key prefix of ``base``'s keys)."""

    user: str
    secret_id: str
    base: str
    bucket: str
    prefix: str


def _id(user: str) -> str:
    return f"{user}-{uuid.uuid4().hex[:8]}"


AREA = f"area-{uuid.uuid4().hex[:6]}"
PLACES = [
    Place("sroot", _id("sroot"), f"/{ROOT}{AREA}", ALPHA, f"{ROOT}{AREA}/"),
    Place("sprefix", _id("sprefix"), f"/{AREA}", ALPHA, f"{ROOT}home/{AREA}/"),
    Place("smount", _id("smount"), f"/in/{AREA}", BETA, f"{ROOT}folder/{AREA}/"),
]
EXTRA = {"sroot": "", "sprefix": f"cos_prefix = {ROOT}home",
         "smount": f"cos_prefix = {ROOT}mounter\nvirtual_folders = /in=slashed"}


@pytest.fixture(scope="module")
def slashed(emulator, tmp_path_factory):
    accounts = [Account(place.user, f"{place.user}-pw", ALPHA, secret_id=place.secret_id,
                        extra=EXTRA[place.user]) for place in PLACES]
    proc = ServerProcess(str(tmp_path_factory.mktemp("slashes")), emulator.port, accounts,
                         sections=FOLDER, optional={"max_login_failures": "0"})
    proc.start()
    ftp = proc.login("sroot", "sroot-pw")  # at the bucket's root: its base's parent
    ftp.mkd(f"/{ROOT.rstrip('/')}")
    _close(ftp)
    yield proc
    proc.stop()


def _slashed_names(ftp: ftplib.FTP, base: str) -> None:
    """Every command naming a path, each spelled with extra slashes, ``.`` and ``..``."""
    bare = base.lstrip("/")
    ftp.mkd(f"//{bare}")
    put(ftp, f"//{bare}/one", b"1")
    put(ftp, f"/{base}//two", b"2")
    put(ftp, f"/.{base}/three", b"3")
    put(ftp, f"/..{base}/four", b"4")
    ftp.mkd(f"{base}//sub/")
    ftp.cwd("//")
    put(ftp, f"{bare}//five", b"5")
    ftp.cwd(f"/{base}//sub")
    put(ftp, "..//six", b"6")
    ftp.cwd("/")
    ftp.rename(f"//{bare}/one", f"/{base}//renamed")
    assert ftp.size(f"//{bare}//renamed") == 1
    assert ftp.sendcmd(f"MDTM //{bare}/renamed").startswith("213")
    assert get(ftp, f"///{bare}/renamed") == b"1"
    assert sorted(ftp.nlst(f"//{bare}")) == [
        "five", "four", "renamed", "six", "sub", "three", "two"]
    ftp.retrlines(f"LIST //{bare}/", lambda line: None)
    assert {name for name, _ in ftp.mlsd(f"//{bare}//")} == {
        "five", "four", "renamed", "six", "sub", "three", "two"}
    assert ftp.sendcmd(f"MLST //{bare}//six").startswith("250")
    ftp.delete(f"/{base}//two")
    ftp.rmd(f"//{bare}//sub/")


@pytest.mark.parametrize("place", PLACES, ids=[place.user for place in PLACES])
def test_no_ftp_name_reaches_cos_as_a_key_starting_with_a_slash(slashed, emulator, cos,
                                                                 place):
    ftp = slashed.login(place.user, f"{place.user}-pw")
    try:
        _slashed_names(ftp, place.base)
    finally:
        _close(ftp)
    assert sorted(keys_under(cos, place.prefix, place.bucket)) == sorted(
        f"{place.prefix}{name}" for name in ("", "five", "four", "renamed", "six", "three"))
    logged = request_log(emulator.port, signed_by=place.secret_id)
    assert logged, "the account's COS requests are in the emulator's log"
    named = [entry["target"] for entry in logged] + [
        entry["source"].partition("/")[2] for entry in logged if entry["source"]]
    assert not [key for key in named if key.startswith("/")]
