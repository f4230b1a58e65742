"""The emulator answers as the COS API documents where moto did not (emulator/conform.py):
copy conditions and ranges, metadata directives, malformed copy sources, missing uploads,
ListObjects' max-keys and encoding-type, DELETE Multiple Objects' limit. Driven with the
real SDK, or signed by the SDK's own ``CosS3Auth`` where the SDK refuses to send the request."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import os
import time
import uuid

import pytest
from qcloud_cos.cos_auth import CosS3Auth
from qcloud_cos.cos_exception import CosClientError, CosServiceError

from cosftp_prefork.emulator.app import Emulator
from cosftp_prefork.emulator.faults import operation

from .conftest import ALPHA
from .emulator_proc import sdk_client

MIB = 1024 * 1024
FUTURE = email.utils.formatdate(time.time() + 24 * 3600, usegmt=True)
PAST = email.utils.formatdate(time.time() - 365 * 24 * 3600, usegmt=True)


@pytest.fixture
def prefix() -> str:
    return f"conform-{uuid.uuid4().hex}/"


@pytest.fixture
def source(cos, prefix) -> dict:
    """An object of 2 MiB to copy; its SDK copy source, with ``etag`` beside."""
    key = prefix + "source.bin"
    etag = cos.put_object(Bucket=ALPHA, Key=key, Body=b"s" * (2 * MIB))["ETag"]
    return {"Bucket": ALPHA, "Key": key, "Region": "ap-guangzhou", "etag": etag}


def copy_source(source: dict) -> dict:
    return {name: value for name, value in source.items() if name != "etag"}


def refused(call, **kwargs) -> tuple[int, str]:
    with pytest.raises(CosServiceError) as info:
        call(**kwargs)
    return info.value.get_status_code(), info.value.get_error_code()


def signed(cos, method: str, key: str, headers: dict, query: str = "", body: bytes = b""):
    """Send a request the SDK would not build, signed as the SDK signs; return the
    response (the SDK raises ``CosServiceError`` for an error status)."""
    url = cos._conf.uri(bucket=ALPHA, path=key or None) + (f"?{query}" if query else "")
    return cos.send_request(method=method, url=url, bucket=ALPHA, data=body,
                            auth=CosS3Auth(cos._conf, key), headers=dict(headers))


CONDITIONS = [  # (SDK argument, value given the source's ETag, whether COS copies)
    ("CopySourceIfModifiedSince", lambda etag: FUTURE, False),
    ("CopySourceIfModifiedSince", lambda etag: PAST, True),
    ("CopySourceIfUnmodifiedSince", lambda etag: PAST, False),
    ("CopySourceIfUnmodifiedSince", lambda etag: FUTURE, True),
    ("CopySourceIfNoneMatch", lambda etag: etag, False),
    ("CopySourceIfNoneMatch", lambda etag: '"0123"', True),
    ("CopySourceIfMatch", lambda etag: '"0123"', False),
    ("CopySourceIfMatch", lambda etag: etag, True),
]


@pytest.mark.parametrize("argument,value,copies", CONDITIONS)
def test_a_copy_is_refused_when_its_source_condition_fails(cos, prefix, source, argument,
                                                           value, copies):
    """PUT Object - Copy (436/10881): each x-cos-copy-source-If-* that fails is 412."""
    target = prefix + "copy.bin"
    kwargs = {"Bucket": ALPHA, "Key": target, "CopySource": copy_source(source),
              argument: value(source["etag"])}
    if copies:
        cos.copy_object(**kwargs)
        assert cos.head_object(Bucket=ALPHA, Key=target)["Content-Length"] == str(2 * MIB)
    else:
        assert refused(cos.copy_object, **kwargs) == (412, "PreconditionFailed")
        assert refused(cos.head_object, Bucket=ALPHA, Key=target)[0] == 404


@pytest.fixture
def local_time_west_of_utc():
    """This process's local time 5 hours behind UTC (moto keeps times as naive UTC: read as
    local time, they would be 5 hours off)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "EST+5"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


@pytest.mark.parametrize("argument,copies", [("CopySourceIfModifiedSince", False),
                                             ("CopySourceIfUnmodifiedSince", True)])
def test_a_copy_condition_on_the_very_second_of_the_change(local_time_west_of_utc, argument,
                                                           copies):
    """The source's own Last-Modified: not modified since then (412 for If-Modified-Since),
    unmodified since then (copied for If-Unmodified-Since), in any time zone."""
    bucket = "zone-1250000000"
    with Emulator(buckets=[bucket]) as emu:
        cos = sdk_client(emu)
        cos.put_object(Bucket=bucket, Key="source", Body=b"s")
        headers = cos.head_object(Bucket=bucket, Key="source")
        stamp = {name.lower(): value for name, value in headers.items()}["last-modified"]
        kwargs = {"Bucket": bucket, "Key": "copy", argument: stamp, "CopySource": {
            "Bucket": bucket, "Key": "source", "Region": emu.region}}
        if copies:
            cos.copy_object(**kwargs)
        else:
            assert refused(cos.copy_object, **kwargs) == (412, "PreconditionFailed")


@pytest.mark.parametrize("argument,value,copies", CONDITIONS)
def test_a_part_copy_is_refused_when_its_source_condition_fails(cos, prefix, source, argument,
                                                                value, copies):
    """Upload Part - Copy (436/8287): the same conditions, the same 412."""
    target = prefix + "parts.bin"
    upload = cos.create_multipart_upload(Bucket=ALPHA, Key=target)["UploadId"]
    kwargs = {"Bucket": ALPHA, "Key": target, "PartNumber": 1, "UploadId": upload,
              "CopySource": copy_source(source), "CopySourceRange": f"bytes=0-{MIB - 1}",
              argument: value(source["etag"])}
    try:
        if copies:
            assert cos.upload_part_copy(**kwargs)["ETag"]
        else:
            assert refused(cos.upload_part_copy, **kwargs) == (412, "PreconditionFailed")
            assert not cos.list_parts(Bucket=ALPHA, Key=target, UploadId=upload).get("Part")
    finally:
        cos.abort_multipart_upload(Bucket=ALPHA, Key=target, UploadId=upload)


@pytest.mark.parametrize("directive", ["Bogus", "COPY", "replaced", ""])
def test_a_metadata_directive_other_than_copy_or_replaced_is_invalid(cos, prefix, source,
                                                                      directive):
    """x-cos-metadata-directive is the enum Copy, Replaced (436/10881; the SDK refuses to
    send another): 400 InvalidArgument, where moto copied as with Copy."""
    target = prefix + "copy.bin"
    headers = {"x-cos-copy-source": f"{ALPHA}.cos.ap-guangzhou.myqcloud.com/{source['Key']}",
               "x-cos-metadata-directive": directive}
    assert refused(signed, cos=cos, method="PUT", key=target, headers=headers) == \
        (400, "InvalidArgument")
    assert refused(cos.head_object, Bucket=ALPHA, Key=target)[0] == 404
    for directive in ("Copy", "Replaced"):
        assert signed(cos, "PUT", target, {**headers, "x-cos-metadata-directive": directive})


@pytest.mark.parametrize("value", ["", "garbage", "alpha-1250000000.cos.ap-guangzhou.myqcloud.com",
                                   "alpha-1250000000.cos.ap-guangzhou.myqcloud.com/",
                                   "/alpha-1250000000.cos.ap-guangzhou.myqcloud.com/?versionId=1"])
def test_a_copy_source_naming_no_object_is_invalid(cos, prefix, value):
    """A copy source without a bucket or a key: 400 InvalidCopySource (the error codes,
    436/7730: "不合法的复制源"), not a 500."""
    assert refused(signed, cos=cos, method="PUT", key=prefix + "copy.bin",
                   headers={"x-cos-copy-source": value}) == (400, "InvalidCopySource")


@pytest.mark.parametrize("wanted", ["bytes=0-2097152", "bytes=5-2", "bytes=0-", "0-9"])
def test_a_part_copy_range_outside_its_source_or_malformed_is_invalid(cos, prefix, source,
                                                                      wanted):
    """x-cos-copy-source-range is bytes=first-last within the source (436/8287); moto
    copied what there was."""
    target = prefix + "parts.bin"
    upload = cos.create_multipart_upload(Bucket=ALPHA, Key=target)["UploadId"]
    try:
        assert refused(cos.upload_part_copy, Bucket=ALPHA, Key=target, PartNumber=1,
                       UploadId=upload, CopySource=copy_source(source),
                       CopySourceRange=wanted) == (400, "InvalidArgument")
        cos.upload_part_copy(Bucket=ALPHA, Key=target, PartNumber=1, UploadId=upload,
                             CopySource=copy_source(source),
                             CopySourceRange=f"bytes=0-{2 * MIB - 1}")
    finally:
        cos.abort_multipart_upload(Bucket=ALPHA, Key=target, UploadId=upload)


def test_a_missing_upload_is_no_such_upload_for_part_copies_and_completions(cos, prefix,
                                                                            source):
    """NoSuchUpload, 404 (436/7730), where moto failed with 500."""
    target = prefix + "parts.bin"
    assert refused(cos.upload_part_copy, Bucket=ALPHA, Key=target, PartNumber=1,
                   UploadId="no-such-upload", CopySource=copy_source(source)) == \
        (404, "NoSuchUpload")
    assert refused(cos.complete_multipart_upload, Bucket=ALPHA, Key=target,
                   UploadId="no-such-upload", MultipartUpload={"Part": [
                       {"PartNumber": 1, "ETag": source["etag"]}]}) == (404, "NoSuchUpload")


def test_complete_refuses_parts_out_of_order(cos, prefix):
    """Complete Multipart Upload with part numbers not ascending: 400 InvalidPartOrder
    (moto joined the parts in the order given); nothing is made, the upload stays."""
    target = prefix + "parts.bin"
    upload = cos.create_multipart_upload(Bucket=ALPHA, Key=target)["UploadId"]
    etags = [cos.upload_part(Bucket=ALPHA, Key=target, Body=bytes([n]) * MIB, PartNumber=n,
                             UploadId=upload)["ETag"] for n in (1, 2)]
    try:
        assert refused(cos.complete_multipart_upload, Bucket=ALPHA, Key=target,
                       UploadId=upload, MultipartUpload={"Part": [
                           {"PartNumber": 2, "ETag": etags[1]},
                           {"PartNumber": 1, "ETag": etags[0]}]}) == (400, "InvalidPartOrder")
        assert refused(cos.head_object, Bucket=ALPHA, Key=target)[0] == 404
    finally:
        cos.abort_multipart_upload(Bucket=ALPHA, Key=target, UploadId=upload)


def test_a_listing_gives_at_most_1000_keys_whatever_max_keys_asks(cos, prefix):
    """GET Bucket (436/7734): max-keys is at most 1000."""
    for number in range(1001):
        cos.put_object(Bucket=ALPHA, Key=f"{prefix}{number:04d}", Body=b"")
    page = cos.list_objects(Bucket=ALPHA, Prefix=prefix, MaxKeys=5000)
    assert len(page["Contents"]) == 1000 and page["IsTruncated"] == "true"


@pytest.mark.parametrize("query", ["max-keys=-1", "max-keys=abc", "encoding-type=base64"])
def test_listing_parameters_cos_cannot_read_are_invalid(cos, query):
    """A max-keys that is not a number from 0, an encoding-type other than url: 400
    InvalidArgument (moto failed with 500 on the first, listed on the others)."""
    assert refused(signed, cos=cos, method="GET", key="", headers={}, query=query) == \
        (400, "InvalidArgument")


def test_one_delete_request_takes_at_most_1000_objects(cos, prefix):
    """DELETE Multiple Objects (436/8289): at most 1,000 objects a request."""
    cos.put_object(Bucket=ALPHA, Key=prefix + "kept", Body=b"x")
    objects = [{"Key": prefix + "kept"}] + [{"Key": f"{prefix}{n}"} for n in range(1000)]
    assert refused(cos.delete_objects, Bucket=ALPHA,
                   Delete={"Object": objects, "Quiet": "true"})[0] == 400
    assert cos.head_object(Bucket=ALPHA, Key=prefix + "kept")
    cos.delete_objects(Bucket=ALPHA, Delete={"Object": objects[:1000], "Quiet": "true"})
    assert refused(cos.head_object, Bucket=ALPHA, Key=prefix + "kept")[0] == 404


def _delete_body(keys: list[str], quiet: str) -> bytes:
    objects = "".join(f"<Object><Key>{key}</Key></Object>" for key in keys)
    return f"<Delete><Quiet>{quiet}</Quiet>{objects}</Delete>".encode()


@pytest.mark.parametrize(("md5", "error"), [
    (None, "MissingContentMD5"), ("not an md5", "InvalidDigest"),
    (base64.b64encode(hashlib.md5(b"another body").digest()).decode(), "BadDigest")])
def test_a_delete_request_without_its_bodys_content_md5_is_refused(cos, prefix, md5, error):
    """DELETE Multiple Objects must carry the Content-MD5 of its body (436/8289: "此请求必须
    携带 Content-MD5 用来校验 Body 的完整性"; common request headers, 436/7728): without it, or
    with one that is no MD5 or not the body's, nothing is deleted (400; InvalidDigest and
    BadDigest as in the error codes, 436/7730). moto took it without any."""
    cos.put_object(Bucket=ALPHA, Key=prefix + "kept", Body=b"x")
    body = _delete_body([prefix + "kept"], "false")
    headers = {"Content-Type": "application/xml"} | ({"Content-MD5": md5} if md5 else {})
    assert refused(signed, cos=cos, method="POST", key="", headers=headers, query="delete",
                   body=body) == (400, error)
    assert cos.head_object(Bucket=ALPHA, Key=prefix + "kept")


@pytest.mark.parametrize("body", [b"<Delete><Object><Key>a</Key></Object>", b"not xml",
                                  b"<Delete><Object><Key>\x01</Key></Object></Delete>",
                                  b"<Delete></Delete>", b"<Delete><Quiet>true</Quiet></Delete>"])
def test_a_delete_request_whose_body_is_no_xml_is_malformed(cos, body):
    """A DELETE Multiple Objects body that is no XML (cut short, or holding a byte XML 1.0
    cannot carry) or names no object is 400 MalformedXML (error codes, 436/7730; 436/8289:
    an Object is required); moto failed with 500."""
    md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
    assert refused(signed, cos=cos, method="POST", key="", query="delete", body=body,
                   headers={"Content-Type": "application/xml", "Content-MD5": md5}) == \
        (400, "MalformedXML")


@pytest.mark.parametrize("quiet", ["true", "false"])
def test_a_quiet_delete_answers_only_its_failures(cos, prefix, quiet):
    """DELETE Multiple Objects (436/8289): in Quiet mode the answer holds only the objects
    that failed (none here: a missing key is deleted too); Verbose lists every one. moto
    answered every request verbosely."""
    cos.put_object(Bucket=ALPHA, Key=prefix + "a", Body=b"x")
    keys = [prefix + "a", prefix + "missing"]
    result = cos.delete_objects(Bucket=ALPHA, Delete={
        "Object": [{"Key": key} for key in keys], "Quiet": quiet})
    deleted = result.get("Deleted") or []
    assert [item["Key"] for item in deleted] == ([] if quiet == "true" else keys)
    assert not result.get("Error")
    assert refused(cos.head_object, Bucket=ALPHA, Key=prefix + "a")[0] == 404


def test_a_listing_pages_common_prefixes_and_keys_together(cos, prefix):
    """GET Bucket (436/7734): max-keys counts CommonPrefixes and Contents together, and
    NextMarker carries on after the last of either (moto gave every common prefix on every
    page, uncounted)."""
    for name in ("a/1", "b", "c/1", "c/2", "d", "e/1"):
        cos.put_object(Bucket=ALPHA, Key=prefix + name, Body=b"")
    pages, marker = [], ""
    while True:
        page = cos.list_objects(Bucket=ALPHA, Prefix=prefix, Delimiter="/", Marker=marker,
                                MaxKeys=2)
        names = sorted([item["Prefix"] for item in page.get("CommonPrefixes", [])] +
                       [item["Key"] for item in page.get("Contents", [])])
        pages.append([name[len(prefix):] for name in names])
        if page["IsTruncated"] != "true":
            break
        marker = page["NextMarker"]
    assert pages == [["a/", "b"], ["c/", "d"], ["e/"]]


def test_a_key_longer_than_850_bytes_is_refused(cos, source, prefix):
    """Object keys are at most 850 bytes (Object Overview, 436/13324): 400 KeyTooLong for
    a PUT, a copy or a multipart upload naming a longer one (moto took 1,024)."""
    long_key = prefix + "é" * ((851 - len(prefix)) // 2) + "x" * ((851 - len(prefix)) % 2)
    assert len(long_key.encode()) == 851
    for call, kwargs in ((cos.put_object, {"Body": b"x"}),
                         (cos.copy_object, {"CopySource": copy_source(source)}),
                         (cos.create_multipart_upload, {})):
        assert refused(call, Bucket=ALPHA, Key=long_key, **kwargs) == (400, "KeyTooLong")
    assert refused(cos.head_object, Bucket=ALPHA, Key=long_key)[0] == 404
    cos.put_object(Bucket=ALPHA, Key=prefix + "x" * (850 - len(prefix)), Body=b"x")


@pytest.mark.parametrize("char", ["\x18", "\x19", "\x1a", "\x1b"], ids=repr)
def test_a_key_holding_can_em_sub_or_esc_is_refused(cos, source, prefix, char):
    """COS does not take CAN, EM, SUB or ESC (0x18-0x1B) in an object key (Object Overview,
    436/13324; its error code is not documented: InvalidArgument here) from a PUT, a copy
    or a multipart upload; other control characters it stores (moto took all of them)."""
    key = f"{prefix}bad{char}[2J"
    for call, kwargs in ((cos.put_object, {"Body": b"x"}),
                         (cos.copy_object, {"CopySource": copy_source(source)}),
                         (cos.create_multipart_upload, {})):
        assert refused(call, Bucket=ALPHA, Key=key, **kwargs) == (400, "InvalidArgument")
    assert refused(cos.head_object, Bucket=ALPHA, Key=key)[0] == 404
    cos.put_object(Bucket=ALPHA, Key=f"{prefix}kept\x07\x1c\x7f", Body=b"x")


def test_a_key_starting_with_a_backslash_is_refused(cos, source, prefix):
    """An object key cannot start with ``\\`` (Object Overview, 436/13324, which names no
    error code: InvalidArgument here) in a PUT, a copy or a multipart upload; elsewhere in
    the key it is kept (moto stored it anywhere)."""
    key = f"\\{prefix}bad"
    for call, kwargs in ((cos.put_object, {"Body": b"x"}),
                         (cos.copy_object, {"CopySource": copy_source(source)}),
                         (cos.create_multipart_upload, {})):
        assert refused(call, Bucket=ALPHA, Key=key, **kwargs) == (400, "InvalidArgument")
    cos.put_object(Bucket=ALPHA, Key=f"{prefix}kept\\back/", Body=b"")
    assert cos.object_exists(Bucket=ALPHA, Key=f"{prefix}kept\\back/")



def raw_path(cos, method: str, path: str, key: str, body: bytes = b""):
    """Send ``path`` (already URL-encoded, after the endpoint's ``/``) as it is, signed
    for ``key`` as the SDK signs it; return the response (``CosServiceError`` for an error
    status). The SDK's own URLs cannot carry a ``%2F`` it did not encode."""
    return cos.send_request(method=method, url=cos._conf.uri(bucket=ALPHA) + path,
                            bucket=ALPHA, data=body, auth=CosS3Auth(cos._conf, key),
                            headers={})


@pytest.mark.parametrize("key", ["//{prefix}bad", "//"], ids=["//a/b", "//"])
def test_a_key_starting_with_a_slash_is_refused(cos, source, prefix, key):
    """An object key cannot start with ``/`` (Object Overview, 436/13324, which names no
    error code: InvalidArgument here, as for ``\\``) in a PUT, a copy or a multipart
    upload. The SDK drops one leading ``/`` of its Key (``CosConfig.uri``): Key ``//a/b`` is
    the URL path ``//a/b``, the key ``/a/b``. The emulator read that path as host ``a``,
    path ``/b``, and stored ``b``; and ``//`` (the key ``/``) as the bucket (500)."""
    key = key.format(prefix=prefix)
    for call, kwargs in ((cos.put_object, {"Body": b"x"}),
                         (cos.copy_object, {"CopySource": copy_source(source)}),
                         (cos.create_multipart_upload, {})):
        assert refused(call, Bucket=ALPHA, Key=key, **kwargs) == (400, "InvalidArgument")
    assert refused(cos.head_object, Bucket=ALPHA, Key=key)[0] == 404


def test_a_percent_encoded_slash_is_a_slash_of_the_key(cos, prefix):
    """``%2F`` in the path is ``/`` in the key, as COS reads it (the SDK sends ``./`` of a
    key as ``.%2F``): ``a%2Fb`` is the key ``a/b``, and ``%2Fa`` the key ``/a``, refused as
    any key starting with ``/``."""
    raw_path(cos, "PUT", f"{prefix}a%2Fb", f"{prefix}a/b", b"x")
    assert cos.head_object(Bucket=ALPHA, Key=f"{prefix}a/b")["Content-Length"] == "1"
    with pytest.raises(CosServiceError) as info:
        raw_path(cos, "PUT", f"%2F{prefix}c", f"/{prefix}c", b"x")
    assert (info.value.get_status_code(), info.value.get_error_code()) == \
        (400, "InvalidArgument")


@pytest.mark.parametrize("how", ["HEAD", "GET", "DELETE"])
def test_a_request_naming_a_key_that_starts_with_a_slash_names_that_key(cos, prefix, how):
    """A GET, HEAD or DELETE of ``//a/b`` names the key ``/a/b``, which cannot exist (404;
    a DELETE of a missing key is 204, 436/7743): not the key ``b`` (the emulator read the
    path as host ``a``, path ``/b``), nor, for ``//``, the bucket (it listed it)."""
    name = f"slashed-{uuid.uuid4().hex}"
    cos.put_object(Bucket=ALPHA, Key=name, Body=b"x")
    for key in (f"//{prefix}{name}", "//"):
        if how == "HEAD":
            assert refused(cos.head_object, Bucket=ALPHA, Key=key) == (404, "NoSuchResource")
        elif how == "GET":
            assert refused(cos.get_object, Bucket=ALPHA, Key=key,
                           KeySimplifyCheck=False) == (404, "NoSuchKey")
        else:
            cos.delete_object(Bucket=ALPHA, Key=key)
    assert cos.head_object(Bucket=ALPHA, Key=name)["Content-Length"] == "1"


def test_multipart_uploads_are_listed_by_key_a_page_at_a_time(cos, prefix):
    """List Multipart Uploads (436/7736): by key then upload ID, max-uploads a page, after
    key-marker (and upload-id-marker for that key), with the next markers when truncated.
    moto listed every upload in the order made and ignored all three."""
    made = [(key, cos.create_multipart_upload(Bucket=ALPHA, Key=prefix + key)["UploadId"])
            for key in ("b", "a", "b", "c", "a")]
    try:
        pages, markers = [], {}
        while True:
            page = cos.list_multipart_uploads(Bucket=ALPHA, Prefix=prefix, MaxUploads=2,
                                              **markers)
            pages.append([(item["Key"][len(prefix):], item["UploadId"])
                          for item in page.get("Upload", [])])
            if page["IsTruncated"] != "true":
                break
            markers = {"KeyMarker": page["NextKeyMarker"],
                       "UploadIdMarker": page["NextUploadIdMarker"]}
        assert [len(listed) for listed in pages] == [2, 2, 1]
        assert [upload for listed in pages for upload in listed] == sorted(made)
        after_a = cos.list_multipart_uploads(Bucket=ALPHA, Prefix=prefix,
                                             KeyMarker=prefix + "a")
        assert [item["Key"][len(prefix):] for item in after_a["Upload"]] == ["b", "b", "c"]
    finally:
        for key, upload in made:
            cos.abort_multipart_upload(Bucket=ALPHA, Key=prefix + key, UploadId=upload)


def test_a_copy_can_be_made_to_fail_once_begun_with_200_and_an_error(emulator, cos, prefix,
                                                                     source):
    """PUT Object - Copy (436/10881): an error during the copy comes as 200 with the error
    as the body. The fault ``copy_errors_next`` answers that many copies so, copying
    nothing; the SDK raises it as it would for COS."""
    target = prefix + "copy.bin"
    emulator.set_faults(copy_errors_next=1)
    try:
        with pytest.raises(CosServiceError) as info:
            cos.copy_object(Bucket=ALPHA, Key=target, CopySource=copy_source(source))
    finally:
        emulator.set_faults(copy_errors_next=0)
    assert info.value.get_status_code() == 200
    assert info.value.get_error_code() == "InternalError"
    assert refused(cos.head_object, Bucket=ALPHA, Key=target)[0] == 404
    cos.copy_object(Bucket=ALPHA, Key=target, CopySource=copy_source(source))


def test_chosen_operations_can_fail_with_cos_5xx_or_lose_their_answer(emulator, cos, prefix):
    """``fail_ops`` + ``fail_rate``: those COS operations answered 500 InternalError or 503
    ServiceUnavailable (COS's 5xx codes, 436/7730) and not carried out; ``lose_ops`` +
    ``lose_rate``: carried out, their answer cut off (the client cannot tell). Other
    operations go their way."""
    key = prefix + "faulty.bin"
    emulator.set_faults(fail_ops="PutObject", fail_rate=1.0)
    try:
        assert refused(cos.put_object, Bucket=ALPHA, Key=key, Body=b"x") in (
            (500, "InternalError"), (503, "ServiceUnavailable"))
        assert cos.list_objects(Bucket=ALPHA, Prefix=key).get("Contents") is None
        emulator.set_faults(fail_ops="", fail_rate=0, lose_ops="PutObject", lose_rate=1.0)
        with pytest.raises(CosClientError):
            cos.put_object(Bucket=ALPHA, Key=key, Body=b"x")
        assert cos.list_objects(Bucket=ALPHA, Prefix=key)["Contents"][0]["Size"] == "1"
    finally:
        emulator.set_faults(fail_ops="", fail_rate=0, lose_ops="", lose_rate=0)


def test_drop_next_drops_only_once_an_answer_was_lost(emulator, cos, prefix):
    """``drop_next``: the next that many ``drop_ops`` requests lost on their way (not
    carried out), counted only once a ``lose_ops`` answer was lost: a request carried out
    and its answer lost, then its retries dropped. One try per request here (the fixture's
    client retries once)."""
    once = sdk_client(emulator)

    def stored(name: str) -> bool:
        return bool(cos.list_objects(Bucket=ALPHA, Prefix=prefix + name).get("Contents"))

    emulator.set_faults(lose_ops="PutObject", lose_next=1, drop_ops="PutObject", drop_next=1)
    try:
        with pytest.raises(CosClientError):  # carried out, answer lost: not dropped first
            once.put_object(Bucket=ALPHA, Key=prefix + "lost", Body=b"x")
        with pytest.raises(CosClientError):  # dropped: not carried out
            once.put_object(Bucket=ALPHA, Key=prefix + "dropped", Body=b"x")
        once.put_object(Bucket=ALPHA, Key=prefix + "after", Body=b"x")
        assert (stored("lost"), stored("dropped"), stored("after")) == (True, False, True)
    finally:
        emulator.set_faults(lose_ops="", lose_next=0, drop_ops="", drop_next=0)


@pytest.mark.parametrize(("method", "query", "copied", "is_object", "name"), [
    ("PUT", "", False, True, "PutObject"), ("PUT", "partNumber=2&uploadId=u", False, True,
                                            "UploadPart"),
    ("PUT", "", True, True, "CopyObject"), ("PUT", "partNumber=1&uploadId=u", True, True,
                                            "UploadPartCopy"),
    ("POST", "uploads", False, True, "InitiateMultipartUpload"),
    ("POST", "uploadId=u", False, True, "CompleteMultipartUpload"),
    ("POST", "delete", False, False, "DeleteMultipleObjects"),
    ("GET", "prefix=a", False, False, "ListObjects"), ("GET", "", False, True, "GetObject"),
    ("GET", "uploadId=u", False, True, "ListParts"),
    ("GET", "uploads", False, False, "ListMultipartUploads"),
    ("DELETE", "uploadId=u", False, True, "AbortMultipartUpload"),
    ("DELETE", "", False, True, "DeleteObject"), ("HEAD", "", False, True, "HeadObject")])
def test_faults_name_operations_as_cos_does(method, query, copied, is_object, name):
    assert operation(method, query, copied, is_object) == name
