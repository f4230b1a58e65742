"""What COS knows of its accounts, for the emulator: keys, what each may do, bucket regions.

Nothing here applies until a test registers it (``PUT /__emulator__/accounts``), so tests that
sign with any key keep working. Once registered:

* a request signed with a registered SecretId has its signature checked the way COS checks
  it (``q-sign-algorithm=sha1``, ``q-ak``, ``q-sign-time``, ``q-key-time``,
  ``q-header-list``, ``q-url-param-list``, ``q-signature``): the expected signature is
  computed by the SDK's own ``CosS3Auth`` over the headers and parameters the request says it
  signed. A wrong one gets 403 ``SignatureDoesNotMatch``; a signature whose time window has
  not begun gets 403 ``RequestTimeTooSkewed`` and one whose window is over 403
  ``AccessDenied`` ("Request has expired"), as COS answers (``clock_offset`` moves the
  emulator's clock to test both);
* with ``strict``, a SecretId that is not registered gets 403 ``InvalidAccessKeyId``;
* a key may be refused COS actions (``deny``, or only ``allow`` some): 403 ``AccessDenied``,
  like a CAM policy that does not grant the action; and it may be given ``buckets``, the
  only buckets it reaches (a CAM policy's resources): a request on another bucket, or a copy
  whose source is in another bucket (COS reads a copy's source with the request's
  credentials), gets 403 ``AccessDenied``;
* a bucket given a region answers only at its region's endpoint
  (``<bucket>.cos.<region>.myqcloud.com``): elsewhere it does not exist (404
  ``NoSuchBucket``), which is what a COS region answers for a bucket of another region;
  HEAD and GET Bucket report it as ``x-cos-bucket-region`` (the emulator's default region
  for the others).

GetService (``GET /`` at ``service.cos.myqcloud.com``) lists every bucket with its region
(``Location``), registered or not (then the emulator's default region).

A body such as ``{"strict": true, "keys": {"AKIDa": {"secret": "s", "deny": ["GetBucket"]}},
"buckets": {"photos-1250000000": "ap-shanghai"}, "clock_offset": 0}`` is merged into what is
registered; ``GET`` shows it, without the secrets.
"""

from __future__ import annotations

import hmac
import re
import threading
import time
import types
import urllib.parse
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Callable, Optional
from xml.sax.saxutils import escape

import qcloud_cos.cos_auth
from qcloud_cos import CosConfig
from qcloud_cos.cos_auth import CosS3Auth
from werkzeug.test import Client

from .fast import copy_source, place
from .fast import query as parsed_query

ACCOUNTS_PATH = "/__emulator__/accounts"
SERVICE_HOSTS = ("service.cos.myqcloud.com", "service.cos.tencentcos.cn")
# <bucket>.cos.<region>.myqcloud.com; "accelerate" serves every region.
_BUCKET_HOST = re.compile(r"^([^.]+)\.cos\.([a-z0-9-]+)\.(?:myqcloud\.com|tencentcos\.cn)$")
_NOT_A_REGION = {"accelerate"}


@dataclass(frozen=True)
class Refusal:
    """How COS turns a request down."""

    status: str
    code: str
    message: str


ACCESS_DENIED = Refusal("403 Forbidden", "AccessDenied", "Access Denied.")


def cos_action(environ: dict) -> str:
    """The CAM action name of a request (``GetBucket``, ``PutObject``…), as a policy
    grants it."""
    method = environ["REQUEST_METHOD"]
    query = parsed_query(environ)
    if environ.get("HTTP_HOST", "") in SERVICE_HOSTS:
        return "GetService"
    if not place(environ).is_object:
        if method == "GET":
            return "ListMultipartUploads" if "uploads" in query else "GetBucket"
        if method == "POST" and "delete" in query:
            return "DeleteMultipleObjects"
        return {"HEAD": "HeadBucket", "PUT": "PutBucket", "DELETE": "DeleteBucket"}.get(
            method, method)
    if method in ("GET", "HEAD"):
        if "uploadId" in query:
            return "ListParts"
        return "HeadObject" if method == "HEAD" else "GetObject"
    if method == "POST":
        return "InitiateMultipartUpload" if "uploads" in query else "CompleteMultipartUpload"
    if method == "DELETE":
        return "AbortMultipartUpload" if "uploadId" in query else "DeleteObject"
    if "partNumber" in query:
        return "UploadPartCopy" if copy_source(environ) is not None else "UploadPart"
    return "PutObject"  # a copy too: COS asks for PutObject on the destination


@dataclass(frozen=True)
class Key:
    """A registered SecretId: its SecretKey and the actions it may not take."""

    secret: str
    allow: Optional[frozenset[str]] = None  # None: every action
    deny: frozenset[str] = frozenset()
    buckets: Optional[frozenset[str]] = None  # None: every bucket

    def permits(self, action: str) -> bool:
        return action not in self.deny and (self.allow is None or action in self.allow)

    def reaches(self, environ: dict) -> bool:
        """Whether the request's bucket, and its copy source's, are among ``buckets``."""
        if self.buckets is None or environ.get("HTTP_HOST", "") in SERVICE_HOSTS:
            return True
        buckets = [place(environ).bucket]
        source = urllib.parse.unquote(copy_source(environ) or "")
        if source:  # <bucket>.<any endpoint>/<key> or <bucket>/<key>: no dots in a bucket
            buckets.append(source.lstrip("/").split("/", 1)[0].split(".", 1)[0])
        return all(bucket in self.buckets for bucket in buckets)


class _SigningClock:
    """Stands in for the ``time`` module inside ``qcloud_cos.cos_auth``.

    The SDK signs "now" (its window starts 60 s before ``time.time()``); to compute the
    signature a request was made with, ``at(moment)`` makes the SDK's clock read ``moment``
    in the calling thread only. Every other use, and every other thread, sees the real
    clock.
    """

    def __init__(self) -> None:
        self._moment = threading.local()

    def time(self) -> float:
        moment = getattr(self._moment, "value", None)
        return time.time() if moment is None else moment

    def at(self, moment: Optional[float]) -> None:
        self._moment.value = moment

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


_CLOCK = _SigningClock()
qcloud_cos.cos_auth.time = _CLOCK


_FIELDS = "cosftp.emulator.authorization"  # the fields parsed, and the header they came from


def _authorization_fields(environ: dict) -> dict[str, str]:
    """The Authorization header's fields, parsed once per request (the log's ``signer``
    and the credentials' check both read them). Not to be changed by the caller."""
    value = environ.get("HTTP_AUTHORIZATION", "")
    known = environ.get(_FIELDS)
    if known is None or known[0] != value:
        known = environ[_FIELDS] = (value, dict(urllib.parse.parse_qsl(
            value, keep_blank_values=True)))
    return known[1]


def signer(environ: dict) -> str:
    """The SecretId a request says it is signed with (``q-ak``), "" for none."""
    return _authorization_fields(environ).get("q-ak", "")


def _signed_headers(environ: dict, names: Iterable[str]) -> Optional[dict[str, str]]:
    """The request's values of the headers the signature covers; None if one is missing."""
    headers = {}
    for name in names:
        cgi = name.upper().replace("-", "_")
        key = cgi if cgi in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + cgi
        if key not in environ:
            return None
        headers[name] = environ[key]
    return headers


def expected_signature(environ: dict, secret_id: str, secret_key: str,
                       fields: dict[str, str]) -> Optional[str]:
    """The ``q-signature`` the SDK computes for this request with ``secret_key`` over what
    ``fields`` (the Authorization header's) say was signed; None if that cannot be had."""
    try:
        start, end = (int(part) for part in fields["q-sign-time"].split(";"))
    except (KeyError, ValueError):
        return None
    header_names = [n for n in fields.get("q-header-list", "").split(";") if n]
    headers = _signed_headers(environ, header_names)
    if headers is None or fields.get("q-key-time") != fields["q-sign-time"]:
        return None
    param_names = {n for n in fields.get("q-url-param-list", "").split(";") if n}
    params = {name: values[-1] for name, values in parsed_query(environ).items()
              if name.lower() in param_names}
    # PATH_INFO holds the decoded key as latin-1 (WSGI); the SDK signs the key itself.
    path = environ.get("PATH_INFO", "/").encode("latin-1").decode("utf-8", "surrogateescape")
    conf = CosConfig(Region="ap-guangzhou", SecretId=secret_id, SecretKey=secret_key)
    # The listed headers are all given: the SDK must not add a Host of its own.
    auth = CosS3Auth(conf, path or "/", params, expire=end - start - 60, sign_host=False)
    request = types.SimpleNamespace(method=environ["REQUEST_METHOD"], url="http://emulator/",
                                    headers=headers)
    _CLOCK.at(start + 60)
    try:
        auth(request)
    finally:
        _CLOCK.at(None)
    computed = _authorization_fields({"HTTP_AUTHORIZATION": request.headers["Authorization"]})
    if (computed["q-header-list"], computed["q-url-param-list"]) != (
            fields.get("q-header-list"), fields.get("q-url-param-list")):
        return None
    return computed["q-signature"]


class Accounts:
    """The registered keys, bucket regions and switches; checks each request against them."""

    def __init__(self, default_region: str) -> None:
        self.default_region = default_region
        self._lock = threading.Lock()
        self.strict = False
        self.clock_offset = 0.0
        self.keys: dict[str, Key] = {}
        self.regions: dict[str, str] = {}

    def update(self, changes: dict) -> None:
        with self._lock:
            self.strict = bool(changes.get("strict", self.strict))
            self.clock_offset = float(changes.get("clock_offset", self.clock_offset))
            for secret_id, spec in changes.get("keys", {}).items():
                allow, buckets = spec.get("allow"), spec.get("buckets")
                self.keys[secret_id] = Key(spec["secret"],
                                           None if allow is None else frozenset(allow),
                                           frozenset(spec.get("deny", ())),
                                           None if buckets is None else frozenset(buckets))
            self.regions.update(changes.get("buckets", {}))

    def as_dict(self) -> dict:
        with self._lock:
            keys = {secret_id: {"allow": None if key.allow is None else sorted(key.allow),
                                "deny": sorted(key.deny),
                                "buckets": None if key.buckets is None else sorted(key.buckets)}
                    for secret_id, key in self.keys.items()}
            return {"strict": self.strict, "clock_offset": self.clock_offset, "keys": keys,
                    "buckets": dict(self.regions)}

    def refuse(self, environ: dict) -> Optional[Refusal]:
        """Why COS would turn this request down (None: it would not): credentials first,
        then the bucket's region."""
        refusal = self._check_key(environ)
        if refusal is None and self._elsewhere(environ):
            return Refusal("404 Not Found", "NoSuchBucket", "The specified bucket does not exist.")
        return refusal

    def _check_key(self, environ: dict) -> Optional[Refusal]:
        fields = _authorization_fields(environ)
        secret_id = fields.get("q-ak", "")
        with self._lock:
            key, strict, now = self.keys.get(secret_id), self.strict, time.time() + \
                self.clock_offset
        if key is None:
            if strict:
                return Refusal("403 Forbidden", "InvalidAccessKeyId",
                               "The SecretId you provided does not exist.")
            return None
        expected = expected_signature(environ, secret_id, key.secret, fields)
        if expected is None or not hmac.compare_digest(expected, fields.get("q-signature", "")):
            return Refusal("403 Forbidden", "SignatureDoesNotMatch",
                           "The Signature you specified is invalid.")
        start, end = (int(part) for part in fields["q-sign-time"].split(";"))
        if now < start:
            return Refusal("403 Forbidden", "RequestTimeTooSkewed", "The difference between "
                           "the request time and the server's time is too large.")
        if now > end:
            return Refusal("403 Forbidden", "AccessDenied", "Request has expired")
        if key.permits(cos_action(environ)) and key.reaches(environ):
            return None
        return ACCESS_DENIED

    def _elsewhere(self, environ: dict) -> bool:
        """Whether the request names a bucket of another region than its endpoint's."""
        found = _BUCKET_HOST.match(environ.get("HTTP_HOST", ""))
        if found is None or found.group(2) in _NOT_A_REGION:
            return False
        with self._lock:
            region = self.regions.get(found.group(1))
        return region is not None and region != found.group(2)

    def with_region(self, environ: dict,
                    headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """``headers`` with the bucket's region as ``x-cos-bucket-region`` on a HEAD or GET
        Bucket (moto's says us-east-1)."""
        headers = [(n, v) for n, v in headers if n.lower() != "x-cos-bucket-region"]
        found = _BUCKET_HOST.match(environ.get("HTTP_HOST", ""))
        if found is None or environ.get("PATH_INFO", "/") not in ("", "/"):
            return headers
        return [*headers, ("x-cos-bucket-region", self.region(found.group(1)))]

    def region(self, bucket: str) -> str:
        """The region ``bucket`` was registered in (else the emulator's)."""
        with self._lock:
            return self.regions.get(bucket, self.default_region)

    def list_buckets(self, moto: Callable) -> bytes:
        """GetService: every bucket moto holds, with its region, in COS's form."""
        headers = {"Host": "s3.amazonaws.com",
                   "Authorization": "q-sign-algorithm=sha1&q-ak=emulator"}
        listed = Client(moto).get("/", headers=headers)
        entries = []
        for element in ElementTree.fromstring(listed.data).iter():
            if element.tag.rpartition("}")[2] != "Bucket":
                continue
            fields = {child.tag.rpartition("}")[2]: child.text or "" for child in element}
            with self._lock:
                region = self.regions.get(fields.get("Name", ""), self.default_region)
            entries.append(f"<Bucket><Name>{escape(fields.get('Name', ''))}</Name>"
                           f"<Location>{escape(region)}</Location><CreationDate>"
                           f"{escape(fields.get('CreationDate', ''))}</CreationDate>"
                           "<BucketType>cos</BucketType></Bucket>")
        return ('<?xml version="1.0" encoding="UTF-8"?>\n<ListAllMyBucketsResult><Owner>'
                "<ID>qcs::cam::uin/100000000001:uin/100000000001</ID>"
                "<DisplayName>100000000001</DisplayName></Owner>"
                f"<Buckets>{''.join(entries)}</Buckets></ListAllMyBucketsResult>").encode()
