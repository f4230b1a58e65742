"""The emulator answers as COS does for credentials, permissions and regions, once they are
registered (``cosftp_prefork/emulator/accounts.py``); driven with the real qcloud_cos SDK."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ElementTree

import pytest
from qcloud_cos import CosS3Client
from qcloud_cos.cos_auth import CosS3Auth
from qcloud_cos.cos_exception import CosServiceError

from .emulator_proc import EmulatorProcess, sdk_client, strict_emulator

HOME = "home-1250000000"
SHANGHAI = "east-1250000000"  # registered in ap-shanghai
KEYS = {"AKIDowner": {"secret": "owner-key"},
        "AKIDreader": {"secret": "reader-key",
                       "deny": ["PutObject", "InitiateMultipartUpload", "DeleteObject"]},
        "AKIDlister": {"secret": "lister-key", "allow": ["GetBucket"]}}


@pytest.fixture(scope="module")
def registered():
    """An emulator of its own that knows three keys and refuses any other SecretId."""
    with strict_emulator([HOME, SHANGHAI], KEYS, {SHANGHAI: "ap-shanghai"}) as emu:
        yield emu


def client(emu, secret_id: str, secret_key: str, region: str = "") -> CosS3Client:
    return sdk_client(emu, secret_id=secret_id, secret_key=secret_key, region=region)


def owner(emu, region: str = "") -> CosS3Client:
    return client(emu, "AKIDowner", "owner-key", region)


def refusal(call, **kwargs) -> tuple[int, str, str]:
    """(HTTP status, COS error code, message) of a call that must fail."""
    with pytest.raises(CosServiceError) as info:
        call(**kwargs)
    error = info.value
    return error.get_status_code(), error.get_error_code(), error.get_error_msg()


def test_signatures_are_checked_over_headers_parameters_and_key(registered):
    """Every kind of request the server sends passes with the right SecretKey: the
    signature covers Host, Content-Type, Content-MD5, x-cos-meta-*, query parameters and a
    key with spaces, non-ASCII and reserved characters."""
    cos = owner(registered)
    key = f"sig-{uuid.uuid4().hex}/é dir/a+b?c&d=e.txt"
    cos.put_object(Bucket=HOME, Key=key, Body=b"x" * 10, EnableMD5=True,
                   ContentType="text/plain", Metadata={"x-cos-meta-mtime": "1700000000"})
    assert cos.head_object(Bucket=HOME, Key=key)["Content-Length"] == "10"
    listed = cos.list_objects(Bucket=HOME, Prefix=key.split("/")[0] + "/", MaxKeys=5,
                              EncodingType="url")
    assert len(listed["Contents"]) == 1
    upload = cos.create_multipart_upload(Bucket=HOME, Key=key + ".mpu")["UploadId"]
    cos.upload_part(Bucket=HOME, Key=key + ".mpu", PartNumber=1, UploadId=upload, Body=b"y")
    cos.abort_multipart_upload(Bucket=HOME, Key=key + ".mpu", UploadId=upload)
    cos.copy_object(Bucket=HOME, Key=key + ".copy", CopySource={
        "Bucket": HOME, "Key": key, "Region": registered.region})
    cos.delete_object(Bucket=HOME, Key=key + ".copy")



def test_a_key_starting_with_a_slash_is_signed_as_the_sdk_signs_it(registered):
    """The SDK signs a Key ``//a/b`` over the path ``//a/b`` (the key ``/a/b``): the
    signature matches, and COS's answer is about the key (404 for a HEAD, 400
    InvalidArgument for a PUT: Object Overview, 436/13324), not 403 SignatureDoesNotMatch
    (the emulator checked it over ``/b``, having read ``a`` as a host)."""
    cos = owner(registered)
    key = f"//sig-{uuid.uuid4().hex}/b"
    assert refusal(cos.head_object, Bucket=HOME, Key=key)[:2] == (404, "NoSuchResource")
    assert refusal(cos.put_object, Bucket=HOME, Key=key, Body=b"x")[:2] == \
        (400, "InvalidArgument")


def test_a_wrong_secret_key_gets_signature_does_not_match(registered):
    status, code, _ = refusal(client(registered, "AKIDowner", "not-the-key").list_objects,
                              Bucket=HOME)
    assert (status, code) == (403, "SignatureDoesNotMatch")
    status, _, _ = refusal(client(registered, "AKIDowner", "not-the-key").head_bucket,
                           Bucket=HOME)
    assert status == 403


def test_an_unknown_secret_id_gets_invalid_access_key_id_when_strict(registered):
    status, code, _ = refusal(client(registered, "AKIDstranger", "any").list_objects,
                              Bucket=HOME)
    assert (status, code) == (403, "InvalidAccessKeyId")


def test_unregistered_keys_pass_unless_strict():
    """Other tests sign with any key: without registrations nothing is checked."""
    with EmulatorProcess(buckets=[HOME]) as emu:
        emu.set_accounts(keys=KEYS)
        client(emu, "test-id", "test-key").list_objects(Bucket=HOME)
        status, code, _ = refusal(client(emu, "AKIDowner", "wrong").list_objects, Bucket=HOME)
        assert (status, code) == (403, "SignatureDoesNotMatch")


def test_denied_actions_get_access_denied(registered):
    reader = client(registered, "AKIDreader", "reader-key")
    reader.head_bucket(Bucket=HOME)
    reader.list_objects(Bucket=HOME, MaxKeys=1)
    status, code, _ = refusal(reader.put_object, Bucket=HOME, Key="denied", Body=b"x")
    assert (status, code) == (403, "AccessDenied")
    status, code, _ = refusal(reader.create_multipart_upload, Bucket=HOME, Key="denied")
    assert (status, code) == (403, "AccessDenied")
    lister = client(registered, "AKIDlister", "lister-key")
    lister.list_objects(Bucket=HOME, MaxKeys=1)
    assert refusal(lister.head_bucket, Bucket=HOME)[0] == 403


def test_a_bucket_asked_for_at_another_region_does_not_exist_there(registered):
    """A COS region answers NoSuchBucket for a bucket of another region; HEAD has no body."""
    status, code, _ = refusal(owner(registered).list_objects, Bucket=SHANGHAI)
    assert (status, code) == (404, "NoSuchBucket")
    assert refusal(owner(registered).head_bucket, Bucket=SHANGHAI)[0] == 404
    head = owner(registered, "ap-shanghai").head_bucket(Bucket=SHANGHAI)
    assert head["x-cos-bucket-region"] == "ap-shanghai"
    assert owner(registered).head_bucket(Bucket=HOME)["x-cos-bucket-region"] == "ap-guangzhou"


def test_get_service_lists_buckets_with_their_regions(registered):
    cos = owner(registered)
    response = cos.send_request(
        method="GET", url=f"http://127.0.0.1:{registered.port}/",
        headers={"Host": "service.cos.myqcloud.com"},
        auth=CosS3Auth(cos._conf))
    regions = {bucket.findtext("Name"): bucket.findtext("Location")
               for bucket in ElementTree.fromstring(response.content).iter("Bucket")}
    assert regions == {HOME: "ap-guangzhou", SHANGHAI: "ap-shanghai"}


@pytest.mark.parametrize(("offset", "code", "message"), [
    (-3600, "RequestTimeTooSkewed", ""),  # the client's clock is an hour ahead
    (20000, "AccessDenied", "Request has expired"),  # its signature's window is over
])
def test_signature_time_window(offset, code, message):
    with EmulatorProcess(buckets=[HOME]) as emu:
        emu.set_accounts(keys=KEYS, clock_offset=offset)
        status, got, text = refusal(owner(emu).list_objects, Bucket=HOME)
        assert (status, got) == (403, code)
        assert message in text


def test_the_settings_show_no_secret(registered):
    shown = registered.set_accounts()
    assert shown["keys"]["AKIDreader"]["deny"] == sorted(KEYS["AKIDreader"]["deny"])
    assert "reader-key" not in str(shown) and shown["strict"] is True



def test_a_key_limited_to_buckets_reaches_no_other_not_even_as_a_copy_source():
    """A CAM policy's resources: a key given ``buckets`` gets AccessDenied on any other
    bucket, and for a copy whose source is in one (COS reads a copy's source with the
    credentials of the request)."""
    keys = {**KEYS, "AKIDhomeonly": {"secret": "home-only", "buckets": [HOME]}}
    with strict_emulator([HOME, SHANGHAI], keys, {}) as emu:
        owner(emu).put_object(Bucket=SHANGHAI, Key="theirs.txt", Body=b"theirs")
        owner(emu).put_object(Bucket=HOME, Key="mine.txt", Body=b"mine")
        limited = client(emu, "AKIDhomeonly", "home-only")
        assert refusal(limited.list_objects, Bucket=SHANGHAI)[:2] == (403, "AccessDenied")
        source = {"Bucket": SHANGHAI, "Key": "theirs.txt", "Region": "ap-guangzhou"}
        assert refusal(limited.copy_object, Bucket=HOME, Key="copy.txt",
                       CopySource=source)[:2] == (403, "AccessDenied")
        limited.copy_object(Bucket=HOME, Key="copy.txt",
                            CopySource={**source, "Bucket": HOME, "Key": "mine.txt"})
        owner(emu).copy_object(Bucket=HOME, Key="copy2.txt", CopySource=source)
        assert owner(emu).get_object(Bucket=HOME, Key="copy2.txt")["Body"].get_raw_stream() \
            .read() == b"theirs"
        assert emu.set_accounts()["keys"]["AKIDhomeonly"]["buckets"] == [HOME]
