"""The storage layer on the emulator: what the SDK's answers become."""

from __future__ import annotations

import dataclasses
import os
import uuid

import pytest

from cosftp_prefork.cos.bucket import Bucket, ObjectInfo
from cosftp_prefork.cos.listing import DIRECTORY, FILE, name_kind
from cosftp_prefork.cos.naming import may_speculate
from cosftp_prefork.cos.registry import BucketRegistry
from cosftp_prefork.emulator.app import Emulator
from cosftp_prefork.errors import AlreadyExists, NotFound, PermissionDenied, StorageError

from .conftest import ALPHA
from .emulator_proc import connections, emulator_account
from .server_proc import closed_port

MIB = 1024 * 1024


def test_a_part_copy_of_a_replaced_object_says_so(emulator, cos):
    bucket = Bucket(cos, ALPHA, emulator.region)
    source, target = f"storage-{uuid.uuid4().hex}", f"storage-{uuid.uuid4().hex}"
    bucket.put(source, os.urandom(MIB))
    seen = bucket.head(source)
    upload_id = bucket.create_multipart(target).upload_id
    try:
        assert bucket.upload_part_copy(target, upload_id, 1, seen, 0, MIB - 1)
        bucket.put(source, os.urandom(MIB))
        with pytest.raises(StorageError, match=f"{source} was replaced while it was being "
                                               "copied; nothing was changed") as info:
            bucket.upload_part_copy(target, upload_id, 2, seen, 0, MIB - 1)
        assert info.value.code == "ObjectChanged"
    finally:
        bucket.abort_multipart(target, upload_id)


def test_the_worker_session_reads_the_proxy_environment_once_per_host(monkeypatch):
    """requests reads HTTP(S)_PROXY / NO_PROXY for every request; the worker's session asks
    once per host and answers what requests would (NO_PROXY included)."""
    import requests

    from cosftp_prefork.cos.bucket import WorkerSession

    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "direct.example")
    asked: list[str] = []
    real = requests.sessions.get_environ_proxies
    monkeypatch.setattr(requests.sessions, "get_environ_proxies",
                        lambda url, no_proxy=None: asked.append(url) or real(url, no_proxy))
    urls = ["http://b-1.cos.example/a?max-keys=1", "http://b-1.cos.example/b",
            "http://direct.example/c", "http://direct.example/d"]
    plain = requests.Session()
    expected = [plain.merge_environment_settings(url, {}, None, None, None) for url in urls]
    assert expected[0]["proxies"]["http"] == "http://proxy.example:3128"
    assert "http" not in expected[2]["proxies"]
    asked.clear()
    session = WorkerSession()
    assert [session.merge_environment_settings(url, None, None, None, None)
            for url in urls] == expected
    assert session.merge_environment_settings(urls[0], None, True, None, None)["stream"] is True
    assert len(asked) == 3  # b-1, direct.example, and b-1 for a streamed request
    own = session.merge_environment_settings(urls[1], {"http": "http://own:1"}, None, None, None)
    assert own["proxies"]["http"] == "http://own:1"


@pytest.mark.parametrize("keys, expected", [
    ([], None),
    (["k/own"], None),  # only the upload's own object: no evidence of a directory
    (["k/own", "k/other"], DIRECTORY),
    (["k", "k/own"], FILE),  # a file at the name wins, as in listings
    (["k/", "k.txt"], DIRECTORY),  # the marker sorts after the sibling "k.txt"
    (["k!a", "k-b", "k/c", "k/own"], DIRECTORY),  # siblings fill the first page
    (["k!a", "k-b", "k/own"], None),
    (["k-1", "k-2", "k-3"], None),
    (["k/own", "k0"], None),  # the listing went past every key under k/
])
def test_what_a_name_is_counts_nothing_of_the_uploads_own_key(emulator, cos, keys, expected):
    bucket = Bucket(cos, ALPHA, emulator.region)
    base = f"kind-{uuid.uuid4().hex}/"
    for key in keys:
        bucket.put(base + key, b"")
    assert name_kind(bucket, base + "k", ignore=base + "k/own") == expected


def test_a_put_that_may_not_replace_says_so_and_changes_nothing(emulator, cos):
    bucket = Bucket(cos, ALPHA, emulator.region)
    key = f"absent-{uuid.uuid4().hex}"
    first = bucket.put(key, b"first", if_absent=True)
    with pytest.raises(AlreadyExists) as info:
        bucket.put(key, b"second", if_absent=True)
    assert info.value.status == 409 and info.value.code == "FileAlreadyExists"
    assert bucket.head(key).etag == first.etag and first.version_id == ""
    assert bucket.versioning() == ""


def test_credentials_that_may_not_read_the_versioning_status_are_asked_once(emulator, cos,
                                                                            monkeypatch):
    """Without the status, new files wait for their look-ups; COS's AccessDenied is not
    asked again with every STOR (a request and a log line each)."""
    bucket = Bucket(cos, ALPHA, emulator.region)
    asked: list[str] = []

    def denied() -> str:
        asked.append(bucket.name)
        raise PermissionDenied("COS GET versioning failed", code="AccessDenied", status=403)
    monkeypatch.setattr(bucket, "versioning", denied)
    assert [may_speculate(bucket) for _ in range(3)] == [False] * 3
    assert asked == [ALPHA]
def test_the_workers_requests_in_sequence_share_one_connection():
    """The worker's COS session (BucketRegistry: WorkerSession and its pool) keeps its
    connection to COS alive across requests: a STOR's look-ups and PUT, a RETR's HEAD and
    GET, a small read, a copy and a DELETE in sequence open one TCP connection."""
    with Emulator(buckets=[ALPHA]) as emu:
        registry = BucketRegistry()
        bucket = registry.bucket(emulator_account(emu, ALPHA))
        accepted = connections(emu.port)["accepted"]
        bucket.list_page("d/", max_keys=1)
        put = bucket.put("d/f", b"kept alive")
        seen = bucket.head("d/f")
        assert seen.etag == put.etag
        stream = bucket.open_read("d/f", etag=seen.etag)
        assert stream.read(100) == b"kept alive" and stream.read(100) == b""
        stream.close()
        assert bucket.read_small("d/f", 10) == b"kept alive"
        bucket.copy(seen, "d/g", client_mtime=1_600_000_000, pinned=True)
        bucket.delete("d/g")
        with pytest.raises(NotFound):
            bucket.head("d/g")
        bucket.delete("d/f")
        registry.close()
        # The worker's one connection, and the second of this test's control requests.
        assert connections(emu.port)["accepted"] - accepted == 1 + 1


def test_the_hot_calls_are_signed_and_sent_without_requests_session(monkeypatch):
    """A small file's COS requests (look-up, PUT, HEAD, GET, copy, DELETE) are signed by the
    SDK and sent through the session's pool without ``requests`` building a Session
    request and a PreparedRequest for each (most of the worker's CPU per small file)."""
    import requests

    built: list[str] = []
    real_request, real_prepare = requests.Session.request, requests.PreparedRequest.prepare
    monkeypatch.setattr(requests.Session, "request", lambda self, method, url, *args, **kw:
                        built.append(method) or real_request(self, method, url, *args, **kw))
    monkeypatch.setattr(requests.PreparedRequest, "prepare", lambda self, *args, **kw:
                        built.append("prepare") or real_prepare(self, *args, **kw))
    with Emulator(buckets=[ALPHA]) as emu:
        bucket = BucketRegistry().bucket(emulator_account(emu, ALPHA))
        bucket.list_page("d/", max_keys=1)
        put = bucket.put("d/f", b"signed")
        seen = bucket.head("d/f")
        assert (seen.size, seen.etag) == (6, put.etag)
        assert bucket.read_small("d/f", 6) == b"signed"
        assert bucket.copy(seen, "d/g", pinned=True) == put.etag
        bucket.delete("d/g")
        assert [page.key for page in bucket.list_page("d/").objects] == ["d/f"]
    assert built == []


def test_the_workers_requests_take_the_proxy_the_environment_names(monkeypatch):
    """The worker's COS requests go through the proxy that ``HTTP_PROXY`` names, as the SDK's
    do (``requests`` reads it; ``WorkerSession`` once per host): with COS's own address
    unreachable, only the proxy (here the emulator, which serves absolute-form requests)
    can answer them; a host in ``NO_PROXY`` is reached directly."""
    with Emulator(buckets=[ALPHA]) as emu:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{emu.port}")
        monkeypatch.setenv("NO_PROXY", "")
        unreachable = dataclasses.replace(emulator_account(emu, ALPHA), cos_port=closed_port())
        bucket = BucketRegistry().bucket(unreachable)
        bucket.put("p/f", b"through the proxy")
        assert bucket.head("p/f").size == 17
        assert bucket.read_small("p/f", 17) == b"through the proxy"
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        direct = BucketRegistry().bucket(unreachable)
        with pytest.raises(StorageError) as info:
            direct.head("p/f")
        assert info.value.code == "ClientError"


def test_a_request_the_http_layer_refuses_is_a_storage_error(emulator, cos):
    """Whatever fails while a request is made or sent (here http.client refusing a header
    value with a line break, which a stored attribute could carry) is a StorageError, as
    the SDK's send_request made every such failure a CosClientError: never an exception
    that escapes the storage layer and ends the session."""
    bucket = Bucket(cos, ALPHA, emulator.region)
    odd = ObjectInfo(key="x", size=0, mtime=0.0,
                     attributes=(("content-type", "text/plain\r\nX-Injected: 1"),))
    with pytest.raises(StorageError) as info:
        bucket.put(f"storage-{uuid.uuid4().hex}", b"data", like=odd)
    assert info.value.code == "ClientError"
