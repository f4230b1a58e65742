"""The emulator's listing index (cosftp_prefork/emulator/listing.py): ListObjects paged as COS
pages (keys and common prefixes together, COS 436/7734), without moto's scan of the whole
bucket."""

from __future__ import annotations

import io
import random
import uuid
from unittest import mock

import pytest
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import FakeDeleteMarker, S3Backend, s3_backends
from moto.s3.utils import _VersionedKeyStore
from qcloud_cos import CosS3Client

from cosftp_prefork.emulator import listing
from cosftp_prefork.emulator.app import COS_MIN_PART_SIZE, Emulator

from .emulator_proc import sdk_client
from .server_proc import Account, ServerProcess

BUCKET = "listing-1250000000"
# "/" often, so keys nest; unicode, control bytes, XML and URL specials, the last code point.
ALPHABET = "//ab.é中 %+&<\x01\U0001f600\U0010ffff"
DELIMITERS = (None, "", "/", "a", "\U0010ffff", "ab")


@pytest.fixture(scope="module")
def emu():
    with Emulator(buckets=[BUCKET]) as running:
        yield running


@pytest.fixture(scope="module")
def cos(emu) -> CosS3Client:
    return sdk_client(emu)


def backend():
    return s3_backends[DEFAULT_ACCOUNT_ID]["global"]


def assert_indexed(bucket) -> None:
    """The store's sorted names are those of the keys it holds."""
    store = bucket.keys
    assert isinstance(store, listing.IndexedKeyStore)
    assert store._names == sorted(dict.keys(store))


def cos_listing(bucket, prefix, delimiter, marker, max_keys) -> tuple:
    """What COS lists, worked out from every key of the bucket: the keys under ``prefix``
    that are not delete markers, and each common prefix (up to and with the first
    ``delimiter`` after ``prefix``) once, in name order after ``marker``, ``max_keys`` of
    them (keys and prefixes together); NextMarker the last one, when truncated."""
    prefix, entries = prefix or "", {}
    for name in dict.keys(bucket.keys):
        if not name.startswith(prefix):
            continue
        cut = name.find(delimiter, len(prefix)) if delimiter else -1
        if cut >= 0:
            entries[name[:cut + len(delimiter)]] = None
        elif not isinstance(bucket.keys[name], FakeDeleteMarker):
            entries[name] = bucket.keys[name]
    after = backend()._pagination_tokens.get(marker) or marker if marker else None
    names = [name for name in sorted(entries) if after is None or name > after]
    if max_keys == 0:
        return [], [], False, None
    shown = names if max_keys is None else names[:max_keys]
    truncated = len(shown) < len(names)
    return ([entries[name] for name in shown if entries[name] is not None],
            [name for name in shown if entries[name] is None], truncated,
            shown[-1] if truncated else None)


def assert_same_answers(bucket, prefix, delimiter, marker, max_keys) -> tuple:
    """The indexed answer equals COS's; return it."""
    query = (prefix, delimiter, marker, max_keys)
    ours = listing.list_objects(backend(), bucket, *query)
    assert ours == cos_listing(bucket, *query), query
    return ours


def assert_same_v2_answers(bucket, prefix, delimiter, start_after, max_keys) -> None:
    """ListObjectsV2, which moto builds on ``list_objects``, answers as before too."""
    query = (prefix, delimiter, None, start_after, 1000 if max_keys is None else max_keys)
    ours = backend().list_objects_v2(bucket, *query)
    with mock.patch.object(S3Backend, "list_objects", listing.MOTO_LIST_OBJECTS):
        theirs = backend().list_objects_v2(bucket, *query)
    assert ours == theirs, query


def assert_same_pages(bucket, prefix, delimiter, max_keys) -> None:
    """Follow the listing page by page by its NextMarker: every entry once, in order."""
    marker, seen = None, []
    for _ in range(len(bucket.keys) + 2):
        keys, folders, truncated, next_marker = assert_same_answers(
            bucket, prefix, delimiter, marker, max_keys)
        assert len(keys) + len(folders) <= max_keys
        seen += sorted([key.name for key in keys] + folders)
        if not truncated:
            everything = cos_listing(bucket, prefix, delimiter, None, None)
            assert seen == sorted([key.name for key in everything[0]] + everything[1])
            return
        marker = next_marker
    raise AssertionError("the listing does not end")


def random_name(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 7)))


def random_queries(rng: random.Random, names: list[str]):
    for _ in range(40):
        name = rng.choice(names) if names else random_name(rng)
        prefix = rng.choice([None, "", name[:rng.randint(0, len(name))], random_name(rng)])
        marker = rng.choice([None, "", name, name[:-1], random_name(rng)])
        yield prefix, rng.choice(DELIMITERS), marker, rng.choice([None, 0, 1, 2, 3, 7, 1000])


def change_randomly(rng: random.Random, bucket, names: list[str], versioned: bool) -> None:
    """Put new keys, overwrite and delete some; in a versioned bucket also remove versions."""
    for _ in range(rng.randint(1, 30)):
        name = rng.choice(names) if names and rng.random() < 0.3 else random_name(rng)
        backend().put_object(bucket.name, name, b"x")
        names.append(name)
    for name in rng.sample(names, k=min(len(names), rng.randint(0, 8))):
        backend().delete_object(bucket.name, name)
    if versioned:
        for name in rng.sample(names, k=min(len(names), rng.randint(0, 4))):
            versions = bucket.keys.getlist(name, [])
            if versions:
                backend().delete_object(bucket.name, name,
                                        version_id=rng.choice(versions).version_id)


@pytest.mark.parametrize("versioned", [False, True], ids=["plain", "versioned"])
def test_indexed_answers_are_coss_over_random_buckets(emu, versioned):
    """Over random keys, prefixes, delimiters, markers and max-keys the index lists what
    COS lists (moto's own method counted no common prefix against max-keys and gave every
    one on every page); ListObjectsV2, which moto builds on it, answers as moto's."""
    rng = random.Random(15 + versioned)
    for _ in range(25):
        name = f"cmp-{uuid.uuid4().hex[:12]}"
        bucket = backend().create_bucket(name, emu.region)
        if versioned:
            backend().put_bucket_versioning(name, "Enabled")
        names: list[str] = []
        for _ in range(4):
            change_randomly(rng, bucket, names, versioned)
            assert_indexed(bucket)
            for query in random_queries(rng, names):
                assert_same_answers(bucket, *query)
                assert_same_v2_answers(bucket, *query)
            for delimiter in (None, "/"):
                assert_same_pages(bucket, "", delimiter, rng.choice([1, 2, 5]))


class Version:
    def dispose(self) -> None:
        pass


def test_every_mutator_of_the_key_store_is_followed_or_refused():
    mutators = {"__setitem__", "__delitem__", "pop", "popitem", "clear", "update",
                "setdefault", "__ior__", "setlist"}
    assert mutators <= set(listing.IndexedKeyStore.__dict__)
    store, one, two = listing.IndexedKeyStore(), Version(), Version()
    store["b/1"] = one
    store.setlist("a", [two])
    store["b/1"] = two
    assert store._names == ["a", "b/1"]
    assert store.entries("", "/", None, None) == [two, "b/"]
    del store["a"]
    store.pop("b/1")
    assert store._names == [] and store.entries("", "/", None, None) == []
    with pytest.raises(NotImplementedError, match="listing index"):
        store.update({"k": ["v"]})


def _multipart(cos, key: str) -> None:
    upload = cos.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    parts = []
    for number, body in enumerate((b"a" * COS_MIN_PART_SIZE, b"b"), start=1):
        etag = cos.upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=number,
                               Body=body)["ETag"]
        parts.append({"PartNumber": number, "ETag": etag})
    cos.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload,
                                  MultipartUpload={"Part": parts})


def _listed(cos, prefix: str) -> list[str]:
    page = cos.list_objects(Bucket=BUCKET, Prefix=prefix, MaxKeys=1000)
    return [entry["Key"] for entry in page.get("Contents", [])]


def test_index_follows_every_change_cos_requests_make(emu, cos):
    """Each request that changes keys, sent by the SDK over HTTP, keeps the index right:
    a path the index missed would list a deleted key or hide a new one."""
    top = f"ops-{uuid.uuid4().hex[:8]}/"
    source = {"Bucket": BUCKET, "Key": top + "a b", "Region": emu.region}
    steps = [
        ("PUT", lambda: cos.put_object(Bucket=BUCKET, Key=top + "a b", Body=b"1"),
         ["a b"]),
        ("overwrite", lambda: cos.put_object(Bucket=BUCKET, Key=top + "a b", Body=b"2"),
         ["a b"]),
        ("copy", lambda: cos.copy_object(Bucket=BUCKET, Key=top + "d/é", CopySource=source),
         ["a b", "d/é"]),
        ("self-copy", lambda: cos.copy_object(
            Bucket=BUCKET, Key=top + "a b", CopySource=source, CopyStatus="Replaced",
            Metadata={"x-cos-meta-m": "1"}), ["a b", "d/é"]),
        ("multipart", lambda: _multipart(cos, top + "d/big"), ["a b", "d/big", "d/é"]),
        ("DELETE", lambda: cos.delete_object(Bucket=BUCKET, Key=top + "a b"),
         ["d/big", "d/é"]),
        ("multi-delete", lambda: cos.delete_objects(Bucket=BUCKET, Delete={"Object": [
            {"Key": top + "d/big"}, {"Key": top + "d/é"}]}), []),
        ("PUT again", lambda: cos.put_object(Bucket=BUCKET, Key=top + "d/é", Body=b"3"),
         ["d/é"]),
    ]
    bucket = backend().get_bucket(BUCKET)
    for what, step, expected in steps:
        step()
        assert_indexed(bucket)
        assert _listed(cos, top) == [top + name for name in expected], what
        for delimiter in (None, "/"):
            assert_same_answers(bucket, top, delimiter, None, 1000)


def test_index_follows_delete_markers_and_version_deletes(emu, cos):
    name = f"versioned-{uuid.uuid4().hex[:8]}-1250000000"
    emu.create_bucket(name)
    cos.put_bucket_versioning(Bucket=name, Status="Enabled")
    bucket = backend().get_bucket(name)
    first = cos.put_object(Bucket=name, Key="d/k", Body=b"1")["x-cos-version-id"]
    cos.delete_object(Bucket=name, Key="d/k")  # a delete marker on top
    assert_indexed(bucket)
    # No key is listed, but the marker still makes its common prefix (as in moto).
    keys, folders, _, _ = assert_same_answers(bucket, "", "/", None, 1000)
    assert (keys, folders) == ([], ["d/"])
    marker = bucket.keys.getlist("d/k")[-1].version_id
    cos.delete_object(Bucket=name, Key="d/k", VersionId=marker)
    assert [key.name for key in assert_same_answers(bucket, "d/", "/", None, 1000)[0]] \
        == ["d/k"]
    cos.delete_object(Bucket=name, Key="d/k", VersionId=first)
    assert_indexed(bucket)
    assert "d/k" not in bucket.keys
    assert assert_same_answers(bucket, "", "/", None, 1000)[:2] == ([], [])


def test_ftp_commands_never_make_the_emulator_scan_the_bucket(emu, tmp_path, monkeypatch):
    """LIST, NLST, MLSD, STOR, SIZE, RNFR/RNTO and DELE through the gateway: moto's listing
    walked every key of the bucket on each ListObjects; the index answers without."""
    for number in range(300):
        backend().put_object(BUCKET, f"filler/{number:04d}", b"x")
    scans = []
    scan = _VersionedKeyStore._self_iterable
    monkeypatch.setattr(_VersionedKeyStore, "_self_iterable",
                        lambda store: scans.append(len(store)) or scan(store))
    top = f"ftp-{uuid.uuid4().hex[:8]}"
    with ServerProcess(str(tmp_path), emu.port, [Account("u", "p", BUCKET)]) as server:
        ftp = server.login("u", "p")
        try:
            ftp.mkd(top)
            ftp.storbinary(f"STOR {top}/a.txt", io.BytesIO(b"hello"))
            assert ftp.size(f"{top}/a.txt") == 5
            ftp.rename(f"{top}/a.txt", f"{top}/b.txt")
            assert ftp.nlst(top) == ["b.txt"]
            lines: list[str] = []
            ftp.retrlines(f"LIST {top}", lines.append)
            assert len(lines) == 1 and lines[0].endswith("b.txt")
            assert [name for name, _ in ftp.mlsd(top)] == ["b.txt"]
            ftp.delete(f"{top}/b.txt")
            assert ftp.nlst(top) == []
        finally:
            ftp.quit()
    assert scans == []
