"""HASH, XCRC, XMD5 and XSHA*: checksums of stored files, checked against the real bytes."""

from __future__ import annotations

import ftplib
import hashlib
import os
import zlib

import pytest
from fastcrc import crc64

from cosftp_prefork.cos.bucket import ObjectInfo
from cosftp_prefork.cos.checksum import PrefixCrcs, crc64_combine
from cosftp_prefork.cos.digests import stored_digest

from .test_commands import put

MIB = 1024 * 1024
EXPECTED = {
    "SHA-256": lambda data: hashlib.sha256(data).hexdigest(),
    "SHA-1": lambda data: hashlib.sha1(data).hexdigest(),
    "SHA-512": lambda data: hashlib.sha512(data).hexdigest(),
    "MD5": lambda data: hashlib.md5(data).hexdigest(),
    "CRC32": lambda data: f"{zlib.crc32(data):08x}",
    "CRC64": lambda data: f"{crc64.xz(data):016x}",
}


@pytest.fixture(scope="module", params=[0, 1000, 2 * MIB + 17], ids=["empty", "one-put",
                                                                   "multipart"])
def stored(request, server):
    """A file of each kind, uploaded once for the module: (path, bytes)."""
    ftp = server.login("alice", "alice-pw")
    path = f"digests_{request.param}_{os.getpid()}.bin"
    data = os.urandom(request.param)
    put(ftp, path, data)
    ftp.quit()
    return path, data


@pytest.mark.parametrize("algorithm", list(EXPECTED))
def test_hash_matches_the_bytes(alice, stored, algorithm):
    path, data = stored
    assert alice.sendcmd(f"OPTS HASH {algorithm.lower()}") == f"200 {algorithm}"
    reply = alice.sendcmd(f"HASH {path}")
    assert reply == f"213 {algorithm} 0-{len(data)} {EXPECTED[algorithm](data)} /{path}"


@pytest.mark.parametrize(("command", "algorithm"), [
    ("XCRC", "CRC32"), ("XMD5", "MD5"), ("XSHA1", "SHA-1"), ("XSHA256", "SHA-256"),
    ("XSHA512", "SHA-512"),
])
def test_x_commands_match_the_bytes(alice, stored, command, algorithm):
    path, data = stored
    assert alice.sendcmd(f"{command} {path}") == f"250 {EXPECTED[algorithm](data)}"


def test_feat_and_opts_hash(alice):
    assert " HASH SHA-256*;SHA-1;SHA-512;MD5;CRC32;CRC64\n" in alice.sendcmd("FEAT")
    assert alice.sendcmd("OPTS HASH") == "200 SHA-256"
    alice.sendcmd("OPTS HASH CRC64")
    assert " HASH SHA-256;SHA-1;SHA-512;MD5;CRC32;CRC64*\n" in alice.sendcmd("FEAT")
    with pytest.raises(ftplib.error_perm, match="504 Unknown algorithm"):
        alice.sendcmd("OPTS HASH WHIRLPOOL")
    assert alice.sendcmd("OPTS HASH") == "200 CRC64"


def test_hash_of_a_name_with_spaces_and_unicode(alice, area):
    path = f"{area} 文件 x.txt"
    put(alice, path, b"spaces")
    assert alice.sendcmd(f"XMD5 {path}") == f"250 {hashlib.md5(b'spaces').hexdigest()}"
    assert alice.sendcmd(f"HASH {path}").endswith(f" /{path}")


def test_hash_refusals(server, alice, area):
    alice.mkd(area)
    for target in (area, f"{area}/missing"):
        with pytest.raises(ftplib.error_perm, match="550"):
            alice.sendcmd(f"HASH {target}")
        with pytest.raises(ftplib.error_perm, match="550"):
            alice.sendcmd(f"XCRC {target}")
    put(alice, f"{area}/f", b"x")
    writer = server.login("writer", "writer-pw")  # upload-only: reading a checksum is reading
    with pytest.raises(ftplib.error_perm, match="550 Not enough privileges"):
        writer.sendcmd(f"HASH {area}/f")
    writer.quit()
    reader = server.login("reader", "reader-pw")
    assert reader.sendcmd(f"XSHA1 {area}/f") == f"250 {hashlib.sha1(b'x').hexdigest()}"
    reader.quit()


def test_stored_digests_need_no_read():
    md5 = hashlib.md5(b"abc").hexdigest()
    assert stored_digest(ObjectInfo("k", 3, 0.0, etag=md5.upper()), "MD5") == md5
    assert stored_digest(ObjectInfo("k", 3, 0.0, etag=f"{md5}-2"), "MD5") == ""
    assert stored_digest(ObjectInfo("k", 3, 0.0, crc64=255), "CRC64") == "00000000000000ff"
    assert stored_digest(ObjectInfo("k", 3, 0.0), "CRC64") == ""
    assert stored_digest(ObjectInfo("k", 3, 0.0, etag=md5), "SHA-1") == ""


@pytest.mark.parametrize("first, second", [(0, 0), (0, 7), (7, 0), (1, 1), (1000, 3 * 2**20 + 5)])
def test_crc64_combine_equals_the_crc64_of_the_joined_bytes(first, second):
    """Uploads combine their parts' CRC64s into the object's: the same value as hashing it."""
    a, b = os.urandom(first), os.urandom(second)
    assert crc64_combine(crc64.xz(a), crc64.xz(b), second) == crc64.xz(a + b)


@pytest.mark.parametrize("pieces",
                         [[100_000], [1] * 5000 + [95_000], [4096, 4095, 1, 9000, 82_808]])
def test_prefix_crcs_are_the_crc64_of_each_4_kib_prefix(pieces):
    """An upload's first bytes, told apart from a retry's (ftp.retries): the CRC64 of the
    first n bytes for every n a multiple of 4 KiB within the limit, however the bytes came."""
    data = os.urandom(sum(pieces))
    prefix, at = PrefixCrcs(limit=64 * 1024), 0
    for size in pieces:
        prefix.update(data[at:at + size])
        at += size
    assert prefix.length == len(data)
    assert [prefix.at(n) for n in range(4096, 64 * 1024 + 1, 4096)] == \
        [crc64.xz(data[:n]) for n in range(4096, 64 * 1024 + 1, 4096)]
    assert [prefix.at(n) for n in (0, 4095, 4097, 68 * 1024)] == [None] * 4
