"""The COS emulator, driven with the real qcloud_cos SDK: what the other tests rely on."""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.client
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ElementTree
from concurrent.futures import ThreadPoolExecutor
from unittest import mock

import pytest
from moto.s3.models import FakeKey, S3Backend
from qcloud_cos import CosConfig, CosS3Client
from qcloud_cos.cos_exception import CosServiceError

from cosftp_prefork.cos.checksum import crc64
from cosftp_prefork.emulator import app as emulator_app
from cosftp_prefork.emulator import objects as emulator_objects
from cosftp_prefork.emulator.app import COS_MIN_PART_SIZE, Emulator, cos_host
from cosftp_prefork.emulator.serving import Limits

from .conftest import ALPHA, BETA
from .emulator_proc import EmulatorProcess, connections, request_log, sdk_client
from .server_proc import wait_until

MIB = 1024 * 1024


@pytest.fixture
def prefix() -> str:
    """A key prefix unique to this test, so tests sharing the session emulator never meet."""
    return f"emu-{uuid.uuid4().hex}/"


def read(cos, bucket: str, key: str, **kwargs) -> bytes:
    return cos.get_object(Bucket=bucket, Key=key, **kwargs)["Body"].get_raw_stream().read()


def service_error(call, **kwargs) -> CosServiceError:
    with pytest.raises(CosServiceError) as info:
        call(**kwargs)
    return info.value


def header(response: dict, name: str):
    """A response header, whatever case the SDK left it in."""
    return {k.lower(): v for k, v in response.items()}.get(name.lower())


# --- objects


def test_ranged_get_returns_exactly_the_range(cos, prefix):
    key = prefix + "range.bin"
    cos.put_object(Bucket=ALPHA, Key=key, Body=b"0123456789abcdef")
    response = cos.get_object(Bucket=ALPHA, Key=key, Range="bytes=5-9")
    assert response["Body"].get_raw_stream().read() == b"56789"
    assert header(response, "Content-Range") == "bytes 5-9/16"
    assert read(cos, ALPHA, key, Range="bytes=10-") == b"abcdef"


def test_missing_key_is_a_cos_no_such_key(cos, prefix):
    error = service_error(cos.get_object, Bucket=ALPHA, Key=prefix + "missing")
    assert error.get_error_code() == "NoSuchKey"
    assert error.get_status_code() == 404
    assert error.get_request_id()
    assert error.get_resource_location().endswith(prefix + "missing")
    error = service_error(cos.head_object, Bucket=ALPHA, Key=prefix + "missing")
    assert error.get_status_code() == 404


def test_missing_bucket_is_a_cos_no_such_bucket(cos, prefix):
    error = service_error(cos.get_object, Bucket="nosuch-1250000000", Key=prefix + "x")
    assert (error.get_error_code(), error.get_status_code()) == ("NoSuchBucket", 404)
    assert error.get_request_id()


def test_put_reports_crc64_and_head_carries_a_request_id(cos, prefix):
    data = os.urandom(4096)
    put = cos.put_object(Bucket=ALPHA, Key=prefix + "crc.bin", Body=data)
    assert header(put, "x-cos-hash-crc64ecma") == str(crc64(data))
    first = cos.head_object(Bucket=ALPHA, Key=prefix + "crc.bin")
    second = cos.head_object(Bucket=ALPHA, Key=prefix + "crc.bin")
    assert header(first, "x-cos-request-id") and header(second, "x-cos-request-id")
    assert header(first, "x-cos-request-id") != header(second, "x-cos-request-id")
    assert header(first, "Content-Length") == "4096"
    assert header(first, "x-cos-hash-crc64ecma") == str(crc64(data))
    assert not any(name.lower().startswith("x-amz-") for name in first)


def test_an_objects_crc64_is_computed_once_per_version():
    """A HEAD reports the CRC64 of the version it finds without reading the whole object
    again (COS keeps it with the object; a HEAD of 256 MiB took 150 ms here): after an
    overwrite, a multipart upload and a self-copy, each the right one."""
    def head_crc(key: str) -> str:
        return header(cos.head_object(Bucket=ALPHA, Key=key), "x-cos-hash-crc64ecma")

    with Emulator(buckets=[ALPHA]) as emu:
        cos = sdk_client(emu)
        first, second = os.urandom(4096), os.urandom(4096)
        cos.put_object(Bucket=ALPHA, Key="a", Body=first)
        computed = mock.Mock(wraps=crc64)  # PUTs compute in the shim, HEADs in objects
        with mock.patch.object(emulator_app, "crc64", computed), \
                mock.patch.object(emulator_objects, "crc64", computed):
            assert [head_crc("a") for _ in range(3)] == [str(crc64(first))] * 3
            assert computed.call_count == 0  # known since the PUT
            cos.put_object(Bucket=ALPHA, Key="a", Body=second)
            assert head_crc("a") == str(crc64(second))
            part = os.urandom(COS_MIN_PART_SIZE)
            upload = cos.create_multipart_upload(Bucket=ALPHA, Key="m")["UploadId"]
            etag = cos.upload_part(Bucket=ALPHA, Key="m", Body=part, PartNumber=1,
                                   UploadId=upload)["ETag"]
            cos.complete_multipart_upload(Bucket=ALPHA, Key="m", UploadId=upload,
                                          MultipartUpload={"Part": [{"PartNumber": 1,
                                                                     "ETag": etag}]})
            computed.reset_mock()
            assert [head_crc("m") for _ in range(3)] == [str(crc64(part))] * 3
            assert computed.call_count == 1  # the first HEAD of the completed object
            cos.copy_object(Bucket=ALPHA, Key="a", CopySource={
                "Bucket": ALPHA, "Key": "a", "Region": emu.region},
                CopyStatus="Replaced", Metadata={"x-cos-meta-mtime": "1"})
            assert head_crc("a") == str(crc64(second))


def _raw_request(emulator, method: str, path: str, bucket: str = ALPHA, body: bytes = b"",
                 ) -> tuple[http.client.HTTPResponse, bytes]:
    """``method`` of ``path`` in ``bucket`` sent as written (already percent-encoded):
    answer and body."""
    conn = http.client.HTTPConnection("127.0.0.1", emulator.port, timeout=10)
    try:
        conn.request(method, path, body=body or None,
                     headers={"Host": cos_host(bucket), "Authorization": "q-sign-algorithm=x"})
        response = conn.getresponse()
        return response, response.read()
    finally:
        conn.close()


def test_error_responses_carry_the_request_id_header(emulator, prefix):
    response, body = _raw_request(emulator, "GET", f"/{prefix}missing")
    assert response.status == 404
    request_id = response.getheader("x-cos-request-id")
    assert request_id and f"<RequestId>{request_id}</RequestId>".encode() in body
    assert b"<Code>NoSuchKey</Code>" in body


@pytest.mark.parametrize(("method", "path", "bucket", "status"), [
    ("GET", "missing", ALPHA, 404), ("HEAD", "missing", ALPHA, 404),
    ("HEAD", "missing", "nothere-1250000000", 404), ("GET", "", "nothere-1250000000", 404),
    ("GET", "?max-keys=many", ALPHA, 400), ("POST", "missing?uploadId=x", ALPHA, 404),
    ("PUT", "object", ALPHA, 200), ("HEAD", "object", ALPHA, 200), ("GET", "object", ALPHA, 200),
    ("GET", "", ALPHA, 200), ("DELETE", "object", ALPHA, 204)])
def test_every_answer_carries_coss_headers_and_no_awss(emulator, prefix, method, path, bucket,
                                                        status):
    """COS's common response headers (436/7729): ``Server: tencent-cos`` (once),
    ``x-cos-request-id`` on every answer and ``x-cos-trace-id`` on a failed one, whose
    ``Content-Type`` is application/xml (error codes, 436/7730), a HEAD's too; none of
    moto's own (its AWS request id, ``server: amazon.com``, a ``status`` header, a CORS
    grant to any origin when the request has no Origin)."""
    if path == "object" and method != "PUT":
        _raw_request(emulator, "PUT", f"/{prefix}object", body=b"abc")
    target = f"/{prefix}{path}" if not path.startswith("?") else f"/{path}&prefix={prefix}"
    response, _ = _raw_request(emulator, method, target if path else "/", bucket,
                               b"abc" if method == "PUT" else b"")
    assert response.status == status
    names = [name.lower() for name, _ in response.getheaders()]
    assert not [name for name in names if name.startswith(("x-amz", "access-control-"))
                or name == "status"], response.getheaders()
    assert response.getheader("Server") == "tencent-cos" and names.count("server") == 1
    assert response.getheader("x-cos-request-id")
    if status >= 400:
        assert response.getheader("Content-Type") == "application/xml"
        assert response.getheader("x-cos-trace-id")
    else:
        assert response.getheader("x-cos-trace-id") is None


@pytest.mark.parametrize(("sent", "resource"), [
    ("ctl%01name", "ctl%01name"), ("nul%00name", "nul%00name"),
    ("%C3%BCn%C3%AF%1B[1m", "\u00fcn\u00ef%1B[1m"), ("latin%FFname", "latin%FFname"),
    ("tab%09and%0Anewline", "tab%09and%0Anewline"), ("k" * 1100, "k" * 1100)])
def test_a_missing_key_of_any_name_is_cos_no_such_key(emulator, cos, prefix, sent, resource):
    """A GET of a missing key is 404 NoSuchKey in COS's error body (Code, Message, Resource,
    RequestId, TraceId: cloud.tencent.com/document/product/436/7730), whatever bytes the key
    holds: control bytes, escapes that are no UTF-8, more than COS's 850 bytes. The body is
    XML an SDK can parse: what XML cannot carry stays percent-encoded in the Resource (moto
    put the raw bytes into its own body, which the shim then could not read)."""
    response, body = _raw_request(emulator, "GET", f"/{prefix}{sent}")
    assert response.status == 404, body
    error = ElementTree.fromstring(body)
    request_id = response.getheader("x-cos-request-id")
    assert [(child.tag, child.text) for child in error] == [
        ("Code", "NoSuchKey"), ("Message", "The specified key does not exist."),
        ("Resource", f"/{prefix}{resource}"), ("RequestId", request_id),
        ("TraceId", request_id)]
    response, body = _raw_request(emulator, "HEAD", f"/{prefix}{sent}")
    assert (response.status, body) == (404, b"")
    assert response.getheader("x-cos-request-id")
    key = urllib.parse.unquote(f"{prefix}{sent}")
    if "\ufffd" not in urllib.parse.unquote(sent, errors="replace"):  # the SDK sends UTF-8
        error = service_error(cos.get_object, Bucket=ALPHA, Key=key)
        assert (error.get_status_code(), error.get_error_code()) == (404, "NoSuchKey")


@pytest.mark.parametrize("name", ["plain.bin", "with some spaces.bin", "目录/ünïcødé файл.bin"])
@pytest.mark.parametrize("target_bucket", [ALPHA, BETA])
def test_copy_object_with_cos_copy_source(cos, prefix, name, target_bucket):
    source, target = prefix + name, prefix + "copy of " + name
    data = os.urandom(100_000)
    cos.put_object(Bucket=ALPHA, Key=source, Body=data)
    cos.copy_object(Bucket=target_bucket, Key=target,
                    CopySource={"Bucket": ALPHA, "Key": source, "Region": "ap-guangzhou"})
    assert read(cos, target_bucket, target) == data
    assert read(cos, ALPHA, source) == data


def test_copy_of_missing_source_fails(cos, prefix):
    error = service_error(cos.copy_object, Bucket=ALPHA, Key=prefix + "to",
                          CopySource={"Bucket": ALPHA, "Key": prefix + "absent",
                                      "Region": "ap-guangzhou"})
    assert error.get_status_code() == 404
    assert service_error(cos.head_object, Bucket=ALPHA, Key=prefix + "to").get_status_code() \
        == 404


# --- listing


def test_list_objects_paginates_over_1200_keys(emulator, cos, prefix):
    keys = [f"{prefix}k{number:05d}" for number in range(1200)]
    clients = [emulator.client() for _ in range(8)]
    with ThreadPoolExecutor(len(clients)) as pool:
        list(pool.map(lambda item: clients[item[0] % len(clients)].put_object(
            Bucket=ALPHA, Key=item[1], Body=b"x"), enumerate(keys)))
    listed, pages, marker = [], [], ""
    while True:
        page = cos.list_objects(Bucket=ALPHA, Prefix=prefix, MaxKeys=500, Marker=marker)
        contents = page.get("Contents", [])
        pages.append(len(contents))
        listed += [entry["Key"] for entry in contents]
        if page["IsTruncated"] != "true":
            break
        assert page.get("NextMarker"), "a truncated page must say where to go on"
        marker = page["NextMarker"]
        assert len(pages) < 10, "pagination does not end"
    assert pages == [500, 500, 200]
    assert len(listed) == len(set(listed)) == 1200
    assert listed == keys


def test_delimiter_gives_common_prefixes(cos, prefix):
    for key in ("a/1", "a/2", "b/c/1", "top.txt", "zz"):
        cos.put_object(Bucket=ALPHA, Key=prefix + key, Body=b"x")
    page = cos.list_objects(Bucket=ALPHA, Prefix=prefix, Delimiter="/")
    assert [p["Prefix"] for p in page.get("CommonPrefixes", [])] == [prefix + "a/", prefix + "b/"]
    assert [c["Key"] for c in page.get("Contents", [])] == [prefix + "top.txt", prefix + "zz"]
    inner = cos.list_objects(Bucket=ALPHA, Prefix=prefix + "b/", Delimiter="/")
    assert [p["Prefix"] for p in inner.get("CommonPrefixes", [])] == [prefix + "b/c/"]
    assert "Contents" not in inner or inner["Contents"] == []


# --- multipart


def _multipart(cos, key: str, parts: list[bytes]) -> dict:
    upload_id = cos.create_multipart_upload(Bucket=ALPHA, Key=key)["UploadId"]
    etags = []
    for number, data in enumerate(parts, 1):
        result = cos.upload_part(Bucket=ALPHA, Key=key, Body=data, PartNumber=number,
                                 UploadId=upload_id)
        etags.append({"PartNumber": number, "ETag": result["ETag"]})
    return cos.complete_multipart_upload(Bucket=ALPHA, Key=key, UploadId=upload_id,
                                         MultipartUpload={"Part": etags})


def test_a_completed_upload_names_its_object_as_cos_does(cos, prefix):
    """Complete Multipart Upload (436/7742) gives the object's Location at COS's endpoint
    (``<bucket>.cos.<region>.myqcloud.com/<key>``, moto's was ``http://<bucket>.s3.amazonaws
    .com/<key>``), and ``x-cos-version-id`` only in a bucket whose versioning was ever
    enabled (moto said ``null`` in every bucket)."""
    result = _multipart(cos, prefix + "done.bin", [b"only part"])
    assert result["Location"] == f"{ALPHA}.cos.ap-guangzhou.myqcloud.com/{prefix}done.bin"
    assert header(result, "x-cos-version-id") is None
    assert (result["Bucket"], result["Key"]) == (ALPHA, prefix + "done.bin")


def test_every_uploaded_part_reports_its_crc64(cos, prefix):
    key = prefix + "parts.bin"
    upload_id = cos.create_multipart_upload(Bucket=ALPHA, Key=key)["UploadId"]
    for number, data in enumerate([os.urandom(MIB), b"tail"], 1):
        result = cos.upload_part(Bucket=ALPHA, Key=key, Body=data, PartNumber=number,
                                 UploadId=upload_id)
        assert header(result, "x-cos-hash-crc64ecma") == str(crc64(data))
    cos.abort_multipart_upload(Bucket=ALPHA, Key=key, UploadId=upload_id)


def test_multipart_with_1_mib_parts_completes(cos, prefix):
    assert COS_MIN_PART_SIZE == MIB
    parts = [os.urandom(MIB), os.urandom(MIB), os.urandom(MIB), b"tail"]
    result = _multipart(cos, prefix + "mp.bin", parts)
    data = b"".join(parts)
    assert read(cos, ALPHA, prefix + "mp.bin") == data
    assert header(result, "x-cos-hash-crc64ecma") == str(crc64(data))
    assert header(cos.head_object(Bucket=ALPHA, Key=prefix + "mp.bin"),
                  "x-cos-hash-crc64ecma") == str(crc64(data))


@pytest.mark.parametrize("name", ["a\nb", "line\r\nend/x", "dir\n/", "\n"])
def test_a_key_holding_a_newline_is_served_by_every_request(cos, prefix, name):
    """A key with a newline after its first "/" (the SDK can name it, FTP cannot) answers
    every request as any other key, those moto's routes serve too (whose patterns stopped at
    a newline: Flask's HTML 404, or a 500): multipart uploads, conditions, ACLs, versions,
    listings, DELETE Multiple Objects."""
    key = prefix + name
    parts = [os.urandom(MIB), b"tail"]
    _multipart(cos, key, parts)
    assert read(cos, ALPHA, key) == b"".join(parts)
    etag = cos.head_object(Bucket=ALPHA, Key=key)["ETag"]
    assert service_error(cos.head_object, Bucket=ALPHA, Key=key,
                         IfMatch='"0123"').get_status_code() == 412
    assert read(cos, ALPHA, key, IfMatch=etag) == b"".join(parts)
    cos.put_object_acl(Bucket=ALPHA, Key=key, ACL="private")
    assert cos.get_object_acl(Bucket=ALPHA, Key=key)["Owner"]
    cos.put_object(Bucket=ALPHA, Key=key, Body=b"again", ACL="private")
    assert read(cos, ALPHA, key, VersionId="null") == b"again"
    listed = cos.list_objects(Bucket=ALPHA, Prefix=prefix, EncodingType="url")
    assert [urllib.parse.unquote(item["Key"]) for item in listed["Contents"]] == [key]
    cos.delete_object(Bucket=ALPHA, Key=key, VersionId="null")
    assert service_error(cos.head_object, Bucket=ALPHA, Key=key).get_status_code() == 404


def test_part_copy_is_refused_once_the_source_has_another_etag(cos, prefix):
    source, target = prefix + "source.bin", prefix + "target.bin"
    first = cos.put_object(Bucket=ALPHA, Key=source, Body=os.urandom(MIB))["ETag"]
    upload_id = cos.create_multipart_upload(Bucket=ALPHA, Key=target)["UploadId"]
    copy = {"Bucket": ALPHA, "Key": target, "PartNumber": 1, "UploadId": upload_id,
            "CopySource": {"Bucket": ALPHA, "Key": source, "Region": "ap-guangzhou"},
            "CopySourceRange": f"bytes=0-{MIB - 1}"}
    assert cos.upload_part_copy(CopySourceIfMatch=first, **copy)["ETag"]
    cos.put_object(Bucket=ALPHA, Key=source, Body=os.urandom(MIB))
    error = service_error(cos.upload_part_copy, CopySourceIfMatch=first, **copy)
    assert (error.get_status_code(), error.get_error_code()) == (412, "PreconditionFailed")
    cos.abort_multipart_upload(Bucket=ALPHA, Key=target, UploadId=upload_id)


def test_an_object_replaced_while_it_is_read_is_still_read_whole():
    """COS serves a GET or a part copy the version it started with, even if the object is
    replaced meanwhile (moto closed the old object's buffer under the reader: 500, found
    with concurrent APPEs of one file)."""
    old = os.urandom(2 * MIB)  # larger than what moto keeps in memory: a spooled file
    find, value = S3Backend.get_object, FakeKey.value
    found: dict[int, tuple] = {}  # id(object) -> (backend, bucket) of the objects read
    replaced: list[str] = []

    def remember(backend, bucket_name, key_name, *args, **kwargs):
        key = find(backend, bucket_name, key_name, *args, **kwargs)
        if key is not None and key_name == "k":
            found[id(key)] = (backend, bucket_name)
        return key

    def replaced_first(key):
        if id(key) in found:  # about to be read: replace it first
            backend, bucket_name = found.pop(id(key))
            backend.put_object(bucket_name, "k", b"new %d" % len(replaced))
            replaced.append(key.name)
        return value.fget(key)

    with Emulator(buckets=[ALPHA]) as emu:
        cos = sdk_client(emu)
        cos.put_object(Bucket=ALPHA, Key="k", Body=old)
        upload_id = cos.create_multipart_upload(Bucket=ALPHA, Key="t")["UploadId"]
        with mock.patch.object(S3Backend, "get_object", remember), \
                mock.patch.object(FakeKey, "value", property(replaced_first, value.fset)):
            assert read(cos, ALPHA, "k") == old
            cos.put_object(Bucket=ALPHA, Key="k", Body=old)
            found.clear()
            cos.upload_part_copy(Bucket=ALPHA, Key="t", PartNumber=1, UploadId=upload_id,
                                 CopySource={"Bucket": ALPHA, "Key": "k",
                                             "Region": emu.region})
        parts = cos.list_parts(Bucket=ALPHA, Key="t", UploadId=upload_id)["Part"]
        assert [int(part["Size"]) for part in parts] == [len(old)]
        assert replaced == ["k", "k"]
        assert read(cos, ALPHA, "k") == b"new 1"


def test_a_completed_upload_reports_the_crc64_of_what_it_made():
    """The CRC64 CompleteMultipartUpload reports is that of the object it made, even if
    another request replaces it at once (it was read back afterwards, so two APPEs of one
    file completing together got each other's CRC64, and the server deleted a good file)."""
    part = os.urandom(MIB)

    def replaced_at_once(backend, bucket_name, multipart_id, body):
        made = complete(backend, bucket_name, multipart_id, body)
        backend.put_object(bucket_name, made.name, b"another object")
        return made

    with Emulator(buckets=[ALPHA]) as emu:
        # (moto's method as the emulator has it: taken before the first emulator of the
        # process existed, it lacked the wrapping that notes the CRC64 of what it made)
        complete = S3Backend.complete_multipart_upload
        cos = sdk_client(emu)
        upload_id = cos.create_multipart_upload(Bucket=ALPHA, Key="m")["UploadId"]
        etag = cos.upload_part(Bucket=ALPHA, Key="m", Body=part, PartNumber=1,
                               UploadId=upload_id)["ETag"]
        with mock.patch.object(S3Backend, "complete_multipart_upload", replaced_at_once):
            result = cos.complete_multipart_upload(
                Bucket=ALPHA, Key="m", UploadId=upload_id,
                MultipartUpload={"Part": [{"PartNumber": 1, "ETag": etag}]})
        assert header(result, "x-cos-hash-crc64ecma") == str(crc64(part))
        assert header(cos.head_object(Bucket=ALPHA, Key="m"),
                      "x-cos-hash-crc64ecma") == str(crc64(b"another object"))


def test_multipart_part_below_1_mib_is_refused(cos, prefix):
    with pytest.raises(CosServiceError) as info:
        _multipart(cos, prefix + "small.bin", [b"a" * (MIB - 1), b"tail"])
    assert info.value.get_error_code() == "EntityTooSmall"
    assert service_error(cos.head_object, Bucket=ALPHA, Key=prefix + "small.bin"
                         ).get_status_code() == 404


def test_abort_leaves_no_upload(cos, prefix):
    key = prefix + "aborted.bin"
    upload_id = cos.create_multipart_upload(Bucket=ALPHA, Key=key)["UploadId"]
    cos.upload_part(Bucket=ALPHA, Key=key, Body=b"x" * MIB, PartNumber=1, UploadId=upload_id)
    listed = cos.list_multipart_uploads(Bucket=ALPHA, Prefix=prefix).get("Upload", [])
    assert [(u["Key"], u["UploadId"]) for u in listed] == [(key, upload_id)]
    cos.abort_multipart_upload(Bucket=ALPHA, Key=key, UploadId=upload_id)
    assert cos.list_multipart_uploads(Bucket=ALPHA, Prefix=prefix).get("Upload", []) == []
    assert service_error(cos.head_object, Bucket=ALPHA, Key=key).get_status_code() == 404


def test_upload_listing_gives_the_real_initiation_time(cos, prefix):
    """moto says 2010 for every upload; COS, and so the emulator, says when it started."""
    before = time.time()
    cos.create_multipart_upload(Bucket=ALPHA, Key=prefix + "started.bin")
    [upload] = cos.list_multipart_uploads(Bucket=ALPHA, Prefix=prefix)["Upload"]
    started = datetime.datetime.fromisoformat(upload["Initiated"].replace("Z", "+00:00"))
    assert before - 1 <= started.timestamp() <= time.time()


def test_an_uploads_initiator_is_its_owner_not_an_aws_user(cos, prefix):
    """List Multipart Uploads (436/7736) names who initiated each upload; for uploads the
    bucket's owner started, as every one here, that is the Owner. moto named an AWS IAM user
    (``arn:aws:iam::123456789012:user/...``) that no COS account is."""
    cos.create_multipart_upload(Bucket=ALPHA, Key=prefix + "who.bin")
    [upload] = cos.list_multipart_uploads(Bucket=ALPHA, Prefix=prefix)["Upload"]
    assert upload["Initiator"] == upload["Owner"]
    assert "arn:" not in str(upload)


# --- CRC64 of unusual keys and chunked bodies (bugs found and fixed)


@pytest.mark.parametrize("name", ["ünïcødé.bin", "discount%41%25.bin"])
def test_reported_crc_of_non_ascii_or_percent_keys(cos, prefix, name):
    data = b"some content"
    cos.put_object(Bucket=ALPHA, Key=prefix + name, Body=data)
    assert header(cos.head_object(Bucket=ALPHA, Key=prefix + name),
                  "x-cos-hash-crc64ecma") == str(crc64(data))


def _raw_put(emulator, path: str, body: bytes, headers: dict) -> tuple[int, bytes]:
    """A PUT sent as written (the SDK computes its own Content-MD5): status and body."""
    conn = http.client.HTTPConnection("127.0.0.1", emulator.port, timeout=10)
    try:
        conn.request("PUT", urllib.parse.quote(path), body=body, headers={
            "Host": cos_host(ALPHA), "Authorization": "q-sign-algorithm=x", **headers})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_a_put_whose_content_md5_does_not_match_is_refused_and_changes_nothing(
        emulator, cos, prefix):
    """COS answers 400 BadDigest when the Content-MD5 a PUT Object or an UploadPart names
    is not the MD5 of the body it received, and stores nothing: the gateway sends one with
    every small PUT (its integrity check). moto ignores the header."""
    key = prefix + "md5 é.bin"
    cos.put_object(Bucket=ALPHA, Key=key, Body=b"first")
    for digest, code in ((hashlib.md5(b"other").digest(), b"BadDigest"),
                         (b"not 16 bytes", b"InvalidDigest")):
        status, body = _raw_put(emulator, "/" + key, b"second",
                                {"Content-MD5": base64.b64encode(digest).decode()})
        assert (status, b"<Code>%s</Code>" % code in body) == (400, True), body
        status, body = _raw_put(emulator, f"/{prefix}new", b"second",
                                {"Content-MD5": base64.b64encode(digest).decode()})
        assert status == 400, body
    assert read(cos, ALPHA, key) == b"first"
    assert service_error(cos.head_object, Bucket=ALPHA, Key=f"{prefix}new") \
        .get_status_code() == 404
    upload_id = cos.create_multipart_upload(Bucket=ALPHA, Key=key)["UploadId"]
    status, body = _raw_put(emulator, f"/{key}?partNumber=1&uploadId={upload_id}",
                            b"part", {"Content-MD5": "not base64!"})
    assert status == 400, body
    cos.abort_multipart_upload(Bucket=ALPHA, Key=key, UploadId=upload_id)
    right = base64.b64encode(hashlib.md5(b"second").digest()).decode()
    assert _raw_put(emulator, "/" + key, b"second", {"Content-MD5": right})[0] == 200
    assert read(cos, ALPHA, key) == b"second"


def test_chunked_put_stores_the_body(emulator, cos, prefix):
    conn = http.client.HTTPConnection("127.0.0.1", emulator.port, timeout=10)
    try:
        conn.request("PUT", f"/{prefix}chunked", body=iter([b"hello ", b"world"]),
                     headers={"Host": cos_host(ALPHA), "Authorization": "q-sign-algorithm=x"},
                     encode_chunked=True)
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    assert response.status == 200
    assert read(cos, ALPHA, f"{prefix}chunked") == b"hello world"


# --- the command line


def test_cli_exits_0_on_sigterm():
    emulator = EmulatorProcess(buckets=["cli-1250000000"])
    try:
        emulator.start()
        client = emulator.client()
        client.put_object(Bucket="cli-1250000000", Key="k", Body=b"alive")
        assert read(client, "cli-1250000000", "k") == b"alive"
        assert emulator.proc is not None and emulator.proc.poll() is None
    finally:
        code = emulator.stop()
    assert code == 0


def test_cli_exits_0_on_sigint():
    emulator = EmulatorProcess(buckets=[])
    try:
        emulator.start()
        assert emulator.proc is not None
        emulator.proc.send_signal(signal.SIGINT)
        assert emulator.proc.wait(timeout=30) == 0
    finally:
        emulator.stop()


def test_cli_says_when_its_port_is_taken():
    """A port in use is one clear line and exit status 1, not a traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "cosftp_prefork.emulator.app", "--port",
                               str(port)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"cos-emulator: cannot listen on 127.0.0.1:{port}: "
                                   "Address already in use")


def test_url_encoded_listing_encodes_prefixes_too(cos, prefix):
    """COS URL-encodes every key, prefix and marker with encoding-type=url; moto only the
    keys, which left control bytes raw in the XML (the SDK could not parse it)."""
    odd = f"{prefix}ctl\x01dir/"
    cos.put_object(Bucket=ALPHA, Key=odd + "f", Body=b"x")
    listed = cos.list_objects(Bucket=ALPHA, Prefix=prefix, Delimiter="/", EncodingType="url")
    assert [item["Prefix"] for item in listed["CommonPrefixes"]] == [
        urllib.parse.quote(odd, safe="/")]
    inside = cos.list_objects(Bucket=ALPHA, Prefix=odd, EncodingType="url")
    assert inside["Prefix"] == urllib.parse.quote(odd, safe="/")


def test_copy_source_may_name_a_private_endpoint(emulator, cos, prefix):
    private = CosS3Client(CosConfig(Endpoint="cos.private.example", SecretId="test-id",
                                    SecretKey="test-key", IP="127.0.0.1", Port=emulator.port,
                                    Scheme="http"), retry=1)
    cos.put_object(Bucket=ALPHA, Key=prefix + "src", Body=b"copied")
    private.copy_object(Bucket=ALPHA, Key=prefix + "dst", CopySource={
        "Bucket": ALPHA, "Key": prefix + "src", "Endpoint": "cos.private.example"})
    assert read(cos, ALPHA, prefix + "dst") == b"copied"


def test_requests_are_counted_by_kind(emulator, cos, prefix):
    emulator.requests(reset=True)
    cos.put_object(Bucket=ALPHA, Key=prefix + "k", Body=b"x")
    cos.head_object(Bucket=ALPHA, Key=prefix + "k")
    cos.list_objects(Bucket=ALPHA, Prefix=prefix)
    assert emulator.requests(reset=True, contains=prefix) == {"PUT": 1, "HEAD": 1, "LIST": 1}
    assert emulator.requests(contains=prefix) == {}


def test_requests_are_listed_by_the_key_that_signed_them(emulator, cos, prefix):
    """What test_prefixes.py asks of a hostile tenant's credentials: every key they named."""
    other = sdk_client(emulator, secret_id=f"emu-{uuid.uuid4().hex}")
    cos.put_object(Bucket=ALPHA, Key=prefix + "src", Body=b"x")
    other.head_object(Bucket=ALPHA, Key=prefix + "src")
    other.copy_object(Bucket=ALPHA, Key=prefix + "dst", CopySource={
        "Bucket": ALPHA, "Key": prefix + "src", "Region": emulator.region})
    other.list_objects(Bucket=ALPHA, Prefix=prefix + "d")
    source = f"{cos_host(ALPHA)}/{prefix}src"
    assert emulator.requests_signed_by(other._conf._secret_id) == [
        ("HEAD", prefix + "src", ""), ("COPY", prefix + "dst", source),
        ("LIST", prefix + "d", "")]


# --- conditional writes (x-cos-forbid-overwrite) and the rendezvous

NO_OVERWRITE = {"Metadata": {"x-cos-forbid-overwrite": "true"}}


@pytest.mark.parametrize("name", ["there", "ünï/cødé", "a%41b c"])
def test_a_put_that_forbids_overwriting_refuses_an_existing_object(cos, prefix, name):
    cos.put_object(Bucket=ALPHA, Key=prefix + name, Body=b"first")
    error = service_error(cos.put_object, Bucket=ALPHA, Key=prefix + name, Body=b"second",
                          **NO_OVERWRITE)
    assert (error.get_status_code(), error.get_error_code()) == (409, "FileAlreadyExists")
    assert read(cos, ALPHA, prefix + name) == b"first"
    cos.put_object(Bucket=ALPHA, Key=prefix + "new", Body=b"stored", **NO_OVERWRITE)
    assert read(cos, ALPHA, prefix + "new") == b"stored"


@pytest.mark.parametrize("status", ["Enabled", "Suspended"])
def test_forbidding_overwrites_is_ignored_once_versioning_was_enabled(cos, status):
    """COS: the header has no effect in a bucket whose versioning was ever enabled."""
    bucket = f"vers{uuid.uuid4().hex[:8]}-1250000000"
    cos.create_bucket(Bucket=bucket)
    cos.put_bucket_versioning(Bucket=bucket, Status="Enabled")
    if status == "Suspended":
        cos.put_bucket_versioning(Bucket=bucket, Status="Suspended")
    cos.put_object(Bucket=bucket, Key="k", Body=b"first")
    cos.put_object(Bucket=bucket, Key="k", Body=b"second", **NO_OVERWRITE)
    assert read(cos, bucket, "k") == b"second"


def test_of_two_puts_that_forbid_overwriting_one_name_one_stores(emulator, cos, prefix):
    """Checked and stored as one step: both requests in flight at once (the rendezvous
    holds the first until the second arrives), exactly one gets 409."""
    emulator.rendezvous(contains=prefix + "race", parties=2, timeout=30)

    def put(body: bytes) -> str:
        try:
            cos.put_object(Bucket=ALPHA, Key=prefix + "race", Body=body, **NO_OVERWRITE)
        except CosServiceError as exc:
            return exc.get_error_code()
        return "stored"

    with ThreadPoolExecutor(2) as pool:
        outcomes = sorted(pool.map(put, [b"one", b"two"]))
    assert emulator.rendezvous() == {"armed": False, "passed": 2, "broken": 0}
    assert outcomes == ["FileAlreadyExists", "stored"]


def test_the_rendezvous_breaks_when_requests_come_one_after_another(emulator, cos, prefix):
    emulator.rendezvous(contains=prefix, parties=2, timeout=0.5)
    cos.put_object(Bucket=ALPHA, Key=prefix + "a", Body=b"a")  # waits in vain, then goes
    cos.put_object(Bucket=ALPHA, Key=prefix + "b", Body=b"b")  # nothing armed any more
    assert emulator.rendezvous() == {"armed": False, "passed": 0, "broken": 1}
    assert read(cos, ALPHA, prefix + "a") == b"a"


def test_requests_a_former_arming_held_count_against_it_not_the_new_one(emulator, cos,
                                                                       prefix):
    """Arming anew replaces the rendezvous; a request the former arming still holds breaks
    when that one's time is up, and counts as its own, not the new arming's: a test's
    ``broken`` took in the requests an earlier test of the same emulator left held (4
    parts of a stopped server's uploads, 90 s later)."""
    emulator.rendezvous(contains=prefix + "old", parties=2, timeout=1)
    with ThreadPoolExecutor(2) as pool:
        held = pool.submit(cos.put_object, Bucket=ALPHA, Key=prefix + "old", Body=b"o")
        wait_until(lambda: [entry["end"] for entry in request_log(emulator.port, prefix + "old")]
                   == [None], what="the request the first arming holds")
        emulator.rendezvous(contains=prefix + "new", parties=2, timeout=30)
        held.result()  # it waited in vain for the first arming's second party
        assert emulator.rendezvous() == {"armed": True, "passed": 0, "broken": 0}
        list(pool.map(lambda body: cos.put_object(Bucket=ALPHA, Key=prefix + "new",
                                                  Body=body), [b"1", b"2"]))
    assert emulator.rendezvous() == {"armed": False, "passed": 2, "broken": 0}


def test_a_rendezvous_of_one_kind_lets_the_other_kinds_through(emulator, cos, prefix):
    emulator.rendezvous(contains=prefix, kind="DELETE", parties=2, timeout=0.5)
    cos.put_object(Bucket=ALPHA, Key=prefix + "k", Body=b"k")  # not held
    assert emulator.rendezvous() == {"armed": True, "passed": 0, "broken": 0}
    cos.delete_object(Bucket=ALPHA, Key=prefix + "k")  # held in vain
    assert emulator.rendezvous() == {"armed": False, "passed": 0, "broken": 1}


def test_a_rendezvous_of_one_part_lets_the_other_parts_through(emulator, cos, prefix):
    """A key's parts, its live marker and its park record all hold the key: a test that
    holds one part of an upload names its number."""
    key = prefix + "parts"
    upload_id = cos.create_multipart_upload(Bucket=ALPHA, Key=key)["UploadId"]
    emulator.rendezvous(contains=key, kind="PUT", part=2, parties=2, timeout=0.5)
    cos.put_object(Bucket=ALPHA, Key=f".cosftp/live/{key}/{upload_id}", Body=b"")  # not held
    cos.upload_part(Bucket=ALPHA, Key=key, Body=b"1" * MIB, PartNumber=1, UploadId=upload_id)
    assert emulator.rendezvous() == {"armed": True, "passed": 0, "broken": 0}
    cos.upload_part(Bucket=ALPHA, Key=key, Body=b"2", PartNumber=2, UploadId=upload_id)
    assert emulator.rendezvous() == {"armed": False, "passed": 0, "broken": 1}
    cos.abort_multipart_upload(Bucket=ALPHA, Key=key, UploadId=upload_id)
    cos.delete_object(Bucket=ALPHA, Key=f".cosftp/live/{key}/{upload_id}")
# --- connections


def test_sequential_sdk_requests_share_one_kept_alive_connection():
    """COS answers HTTP/1.1 with keep-alive; so does the emulator: a client's requests in
    sequence (a PUT, HEADs, GETs, a listing, a copy, a DELETE) travel on one TCP connection,
    not one connection each."""
    with Emulator(buckets=[ALPHA]) as emu:
        cos = sdk_client(emu)
        accepted = connections(emu.port)["accepted"]
        cos.put_object(Bucket=ALPHA, Key="k", Body=b"kept")
        for _ in range(3):
            cos.head_object(Bucket=ALPHA, Key="k")
            assert read(cos, ALPHA, "k") == b"kept"
        cos.list_objects(Bucket=ALPHA, Prefix="")
        cos.copy_object(Bucket=ALPHA, Key="k2", CopySource={
            "Bucket": ALPHA, "Key": "k", "Region": emu.region})
        cos.delete_object(Bucket=ALPHA, Key="k2")
        error = service_error(cos.head_object, Bucket=ALPHA, Key="missing")
        assert error.get_status_code() == 404
        assert read(cos, ALPHA, "k") == b"kept"  # after an error answer too
        # The control API's own request is the one other connection.
        assert connections(emu.port)["accepted"] - accepted == 1 + 1


def test_idle_connections_are_closed_and_kept_ones_are_bounded():
    """An idle connection is closed after the idle timeout (so the descriptors a crowd of
    clients leaves behind are freed), and past the limit of connections kept alive the
    answer says ``Connection: close``."""
    with Emulator(buckets=[ALPHA], limits=Limits(keep_alive_limit=2, idle_timeout=1)) as emu:
        kept = []
        for _ in range(3):
            conn = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=10)
            conn.request("HEAD", "/", headers={"Host": cos_host(ALPHA),
                                               "Authorization": "q-sign-algorithm=x"})
            response = conn.getresponse()
            response.read()
            kept.append((conn, response.getheader("Connection")))
        assert [said for _, said in kept] == ["keep-alive", "keep-alive", "close"]
        idle = kept[0][0].sock
        idle.settimeout(10)
        wait_until(lambda: idle.recv(1) == b"", timeout=30, what="the idle connection closed")
        for conn, _ in kept:
            conn.close()


def test_latency_is_per_request_on_a_kept_connection():
    """``latency_ms`` delays every request, not every connection: each request the log
    shows on one kept connection took at least that long inside the emulator."""
    with Emulator(buckets=[ALPHA], faults=emulator_app.Faults(latency_ms=50)) as emu:
        cos = sdk_client(emu)
        cos.put_object(Bucket=ALPHA, Key="slow", Body=b"x")
        for _ in range(3):
            cos.head_object(Bucket=ALPHA, Key="slow")
        logged = request_log(emu.port, contains="slow")
        assert [entry["kind"] for entry in logged] == ["PUT", "HEAD", "HEAD", "HEAD"]
        assert all(entry["end"] - entry["start"] >= 0.05 for entry in logged), logged
        # The SDK's connection, and one each for this test's two requests to the control API.
        assert connections(emu.port)["accepted"] == 3


def _raw_exchange(port: int, request: bytes) -> tuple[bytes, bool]:
    """Send ``request`` as is on a new connection; return what came back before the
    emulator closed it (or within a second), and whether it closed it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        sock.settimeout(1)
        answer = b""
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    return answer, True
                answer += data
        except socket.timeout:
            return answer, False


def _signed_head(extra: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    return (b"HEAD /missing " + version + b"\r\nHost: " + cos_host(ALPHA).encode() +
            b"\r\nAuthorization: q-sign-algorithm=sha1\r\n" + extra + b"\r\n")


@pytest.mark.parametrize("request_bytes, status", [
    (b"NONSENSE\r\n\r\n", b"400"),
    (b"HEAD / HTTP/2.0\r\n\r\n", b"505"),
    (_signed_head(b"no colon here\r\n"), b"400"),
    (_signed_head(b"x-cos-meta-a: 1\r\n folded: on\r\n"), b"400"),
    (_signed_head(b"".join(b"x-cos-meta-%d: 1\r\n" % n for n in range(101))), b"431"),
    (_signed_head(b"x-cos-meta-a: " + b"a" * 70000 + b"\r\n"), b"431"),
], ids=["request line", "HTTP/2", "field without colon", "folded field", "101 fields",
        "field line too long"])
def test_malformed_requests_are_answered_and_closed(emulator, request_bytes, status):
    """A request the emulator cannot read is answered 4xx/5xx (as COS's front answers it)
    and its connection closed, never taken for a request with fewer header fields."""
    answer, closed = _raw_exchange(emulator.port, request_bytes)
    assert answer.split(b" ", 2)[1] == status, answer[:200]
    assert closed


def test_connection_and_expect_fields_are_honoured(emulator):
    """HTTP/1.0 closes after the answer unless it asks to keep the connection; HTTP/1.1
    keeps it unless it says close; ``Expect: 100-continue`` gets its interim answer first."""
    answer, closed = _raw_exchange(emulator.port, _signed_head(version=b"HTTP/1.0"))
    assert answer.startswith(b"HTTP/1.1 404") and b"Connection: close" in answer and closed
    answer, closed = _raw_exchange(emulator.port, _signed_head(
        b"Connection: keep-alive\r\n", version=b"HTTP/1.0"))
    assert answer.startswith(b"HTTP/1.1 404") and not closed
    answer, closed = _raw_exchange(emulator.port, _signed_head(b"Connection: close\r\n"))
    assert answer.startswith(b"HTTP/1.1 404") and closed
    answer, closed = _raw_exchange(emulator.port, _signed_head())
    assert answer.startswith(b"HTTP/1.1 404") and not closed
    body = b"expected"
    put = (b"PUT /expect-100 HTTP/1.1\r\nHost: " + cos_host(ALPHA).encode() +
           b"\r\nAuthorization: q-sign-algorithm=sha1\r\nExpect: 100-continue\r\n"
           b"Content-Length: %d\r\n\r\n" % len(body))
    with socket.create_connection(("127.0.0.1", emulator.port), timeout=10) as sock:
        sock.sendall(put)
        interim = sock.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100 Continue"), interim
        sock.sendall(body)
        final = interim.split(b"\r\n\r\n", 1)[1] or sock.recv(65536)
        assert final.startswith(b"HTTP/1.1 200"), final
    assert read(sdk_client(emulator), ALPHA, "expect-100") == body


def test_a_client_reset_mid_request_leaves_nothing_on_stderr(capfd):
    """A client that resets its connection before its header ends (a COS client giving up)
    is no error of the emulator. socketserver printed one (a line of dashes, then the
    traceback) to stderr, and the line reached pytest's progress output when it came
    while pytest was between tests."""
    with Emulator(buckets=[ALPHA]) as emu:
        with socket.create_connection(("127.0.0.1", emu.port), timeout=30) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # its header not ended
            wait_until(lambda: emu._server._open, what="the connection accepted")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # The handler has returned once the connection is released (_open: private, but
        # the one sign that its thread is done).
        wait_until(lambda: not emu._server._open, what="the connection's thread done")
    assert capfd.readouterr().err == ""
