"""The shim's checks, its log and its counts read the bucket and key of a request the same
way whichever way it names the bucket: the COS SDK's virtual host, or the path-style
``/<bucket>/<key>`` to ``127.0.0.1:<port>`` that S3 clients (rclone, boto3) send, with S3's
``x-amz-copy-source`` (COS takes it). Driven over real sockets by boto3 with
``addressing_style='path'`` and by the COS SDK."""

from __future__ import annotations

import email.utils
import uuid

import boto3
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends
from qcloud_cos import CosConfig
from qcloud_cos.cos_auth import CosS3Auth
from qcloud_cos.cos_exception import CosServiceError

from cosftp_prefork.emulator.app import Emulator
from cosftp_prefork.emulator.conform import LIST_MAX_KEYS, MAX_KEY_BYTES

from .emulator_proc import sdk_client

BUCKET = "paths-1250000000"


@pytest.fixture(scope="module")
def emu():
    with Emulator(buckets=[BUCKET]) as running:
        yield running


@pytest.fixture
def s3(emu):
    """boto3 path-style to the emulator's address, as rclone and the AWS SDKs send it."""
    return boto3.client("s3", endpoint_url=emu.url, region_name="us-east-1",
                        aws_access_key_id="paths", aws_secret_access_key="secret",
                        config=Config(s3={"addressing_style": "path"},
                                      retries={"total_max_attempts": 1}))


@pytest.fixture
def prefix() -> str:
    return f"p{uuid.uuid4().hex[:8]}/"


def with_headers(client, operation: str, headers: dict) -> None:
    """Send ``headers`` with every ``operation`` of ``client`` (COS headers boto3 has no
    parameter for)."""
    def add(request, **_):
        for name, value in headers.items():
            request.headers[name] = value
    client.meta.events.register(f"before-sign.s3.{operation}", add)


def status(call, **kwargs) -> tuple[int, str]:
    try:
        call(**kwargs)
    except ClientError as exc:
        return exc.response["ResponseMetadata"]["HTTPStatusCode"], exc.response["Error"]["Code"]
    return 200, ""


def test_forbid_overwrite_holds_path_style(s3, prefix):
    s3.put_object(Bucket=BUCKET, Key=prefix + "kept", Body=b"first")
    with_headers(s3, "PutObject", {"x-cos-forbid-overwrite": "true"})
    assert status(s3.put_object, Bucket=BUCKET, Key=prefix + "kept", Body=b"second") == \
        (409, "FileAlreadyExists")
    assert s3.get_object(Bucket=BUCKET, Key=prefix + "kept")["Body"].read() == b"first"
    assert status(s3.put_object, Bucket=BUCKET, Key=prefix + "new", Body=b"n") == (200, "")


@pytest.mark.parametrize("condition", ["x-cos-copy-source-If-Match",
                                       "x-amz-copy-source-if-match",
                                       "x-cos-copy-source-If-Unmodified-Since"])
def test_copy_conditions_hold_for_an_s3_form_source_path_style(s3, prefix, condition):
    """A copy whose source fails its condition is refused 412 when the source is written
    S3's way (``x-amz-copy-source: /<bucket>/<key>``), the condition COS's or S3's; one
    that holds copies."""
    etag = s3.put_object(Bucket=BUCKET, Key=prefix + "src", Body=b"source")["ETag"]
    dates = condition.endswith("Since")
    headers = {condition: "Sun, 01 Jan 2006 00:00:00 GMT" if dates else '"' + "f" * 32 + '"'}
    with_headers(s3, "CopyObject", headers)
    copy = {"Bucket": BUCKET, "Key": prefix + "dst", "CopySource": f"/{BUCKET}/{prefix}src"}
    assert status(s3.copy_object, **copy) == (412, "PreconditionFailed")
    assert status(s3.head_object, Bucket=BUCKET, Key=prefix + "dst")[0] == 404
    headers[condition] = email.utils.formatdate(2_000_000_000, usegmt=True) if dates else etag
    assert status(s3.copy_object, **copy) == (200, "")


def test_copy_condition_holds_for_an_s3_form_cos_copy_source(emu, prefix):
    """The COS SDK's copy with ``x-cos-copy-source: <bucket>/<key>`` (no endpoint) and a
    stale ``x-cos-copy-source-If-Match``: 412, nothing copied."""
    cos = sdk_client(emu)
    cos.put_object(Bucket=BUCKET, Key=prefix + "src", Body=b"source")
    with pytest.raises(CosServiceError) as info:
        cos.send_request(method="PUT", url=cos._conf.uri(bucket=BUCKET, path=prefix + "dst"),
                         bucket=BUCKET, auth=CosS3Auth(cos._conf, prefix + "dst"), headers={
                             "x-cos-copy-source": f"{BUCKET}/{prefix}src",
                             "x-cos-copy-source-If-Match": '"' + "f" * 32 + '"'})
    assert info.value.get_status_code() == 412
    assert not cos.object_exists(Bucket=BUCKET, Key=prefix + "dst")


def test_the_log_names_keys_as_the_client_did(emu, s3, prefix):
    """No bucket in a path-style key, no second URL-decoding of non-ASCII or "%41", in
    either style."""
    first = len(emu.app.requests)
    s3.put_object(Bucket=BUCKET, Key=prefix + "é 中%41", Body=b"x")
    sdk_client(emu).put_object(Bucket=BUCKET, Key=prefix + "sdk é%41", Body=b"x")
    targets = [entry.target for entry in list(emu.app.requests)[first:]]
    assert targets == [prefix + "é 中%41", prefix + "sdk é%41"], targets


def test_deny_prefix_holds_path_style(emu, s3, prefix):
    """``deny_prefix`` applies to path-style requests (the bucket is no part of the key)."""
    emu.app.faults.update({"deny_prefix": prefix + "secret"})
    try:
        assert status(s3.put_object, Bucket=BUCKET, Key=prefix + "secret/a", Body=b"x") == \
            (403, "AccessDenied")
        assert status(s3.list_objects, Bucket=BUCKET, Prefix=prefix + "secret/")[0] == 403
        assert status(s3.put_object, Bucket=BUCKET, Key=prefix + "open", Body=b"x") == (200, "")
    finally:
        emu.app.faults.update({"deny_prefix": ""})
    assert status(s3.head_object, Bucket=BUCKET, Key=prefix + "secret/a")[0] == 404


def test_path_style_listings_and_copies_are_counted_as_such(emu, s3, prefix):
    s3.put_object(Bucket=BUCKET, Key=prefix + "a", Body=b"x")
    first = len(emu.app.requests)
    s3.list_objects(Bucket=BUCKET, Prefix=prefix)
    s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    s3.copy_object(Bucket=BUCKET, Key=prefix + "b", CopySource=f"{BUCKET}/{prefix}a")
    logged = list(emu.app.requests)[first:]
    assert [(entry.kind, entry.target) for entry in logged] == [
        ("LIST", prefix), ("LIST", prefix), ("COPY", prefix + "b")]
    assert logged[2].source == f"{BUCKET}/{prefix}a"


def test_the_listing_cap_holds_path_style(emu, s3, prefix):
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for index in range(LIST_MAX_KEYS + 1):  # (moto's backend: 1,001 PUTs are not the point)
        backend.put_object(BUCKET, f"{prefix}{index:04d}", b"")
    listed = s3.list_objects(Bucket=BUCKET, Prefix=prefix, MaxKeys=5000)
    assert len(listed["Contents"]) == LIST_MAX_KEYS and listed["IsTruncated"]


def test_the_key_length_limit_holds_path_style(s3, prefix):
    """850 bytes of key are taken, 851 refused: the bucket in the path counts for nothing."""
    longest = prefix + "é" + "k" * (MAX_KEY_BYTES - 2 - len(prefix))
    assert status(s3.put_object, Bucket=BUCKET, Key=longest, Body=b"x") == (200, "")
    assert status(s3.put_object, Bucket=BUCKET, Key=longest + "k", Body=b"x") == \
        (400, "KeyTooLong")
    assert status(s3.head_object, Bucket=BUCKET, Key=longest + "k")[0] == 404


def test_a_keys_actions_and_buckets_hold_path_style(emu, prefix):
    """A registered key allowed only ``BUCKET`` and denied GetObject, signing path-style
    requests as the COS SDK signs: its bucket is the path's (not the address's first
    label), and a GET of the bucket is GetBucket, not GetObject."""
    emu.app.accounts.update({"keys": {"AKIDpaths": {"secret": "paths-key", "buckets": [BUCKET],
                                                    "deny": ["GetObject"]}}})
    conf = CosConfig(Region=emu.region, SecretId="AKIDpaths", SecretKey="paths-key")
    sdk_client(emu).put_object(Bucket=BUCKET, Key=prefix + "a", Body=b"x")

    def sent(method: str, path: str) -> int:
        return requests.request(method, emu.url + path, timeout=30, auth=CosS3Auth(
            conf, path, {}, sign_host=False)).status_code

    assert sent("HEAD", f"/{BUCKET}/{prefix}a") == 200
    assert sent("GET", f"/{BUCKET}") == 200
    assert sent("GET", f"/{BUCKET}/{prefix}a") == 403
    emu.create_bucket("elsewhere-1250000000")
    assert sent("GET", "/elsewhere-1250000000") == 403
