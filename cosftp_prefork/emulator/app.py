"""A local COS-compatible endpoint for the demo and the tests: moto's S3 engine behind a shim.

Not storage: everything lives in memory and disappears with the process. The server never
imports this module.

This module is the shim (``CosShim``) and its runner (``Emulator``, ``main``); its parts
live beside it: ``translate`` (COS's headers, copy source, error bodies and listing
encoding), ``faults`` (injected faults, the rendezvous), ``objects`` (CRC64 per object
version, one write of an object at a time, object lifetimes), ``conform`` (what COS
refuses), ``fast`` (answers without moto's dispatch), ``accounts``, ``listing``,
``routes`` (moto's routes for keys holding a newline) and ``serving`` (the HTTP/1.1 server).

The shim translates what differs between COS and S3 on the wire:

* request headers ``x-cos-*`` become ``x-amz-*`` (copy source, metadata directive and its
  ``Copy``/``Replaced`` values, meta-*),
  and response headers ``x-amz-*`` become ``x-cos-*``; every response carries
  ``x-cos-request-id`` and none of the headers moto's app adds (its AWS request id,
  ``server: amazon.com``, ``status``, a CORS grant to any origin); a failed one, a HEAD's
  too, is ``application/xml`` with ``x-cos-trace-id`` (436/7729, 436/7730);
* the COS copy source ``<bucket>.cos.<region>.myqcloud.com/<key>`` becomes ``<bucket>/<key>``;
* parts may be as small as COS allows (1 MiB), not S3's 5 MiB;
* object PUTs, uploaded parts and completed multipart uploads report
  ``x-cos-hash-crc64ecma`` like COS, and so do HEADs; an object's CRC64 is computed once
  per version (its ETag), as COS keeps it with the object, so a HEAD does not cost a read
  of the whole object;
* ListMultipartUploads gives each upload's real ``Initiated`` time (moto says 2010);
* error bodies are rewritten to the COS form (Code, Message, Resource, RequestId, TraceId)
  that the SDK's ``CosServiceError`` parses;
* a copy source may name a private endpoint (``<bucket>.<endpoint>/<key>``), as the SDK
  writes it for accounts configured with ``cos_endpoint`` only;
* listings asked for with ``encoding-type=url`` have their prefixes, markers and common
  prefixes URL-encoded like COS does (moto encodes only the keys), so keys holding control
  bytes never reach the XML raw;
* a key holding a newline is served by every request as any other (moto's routes stopped at
  it: ``routes.py``);
* listings come from a sorted index of the bucket's keys (``listing.py``), not from a scan
  of the whole bucket, so like COS their cost does not grow with the bucket, and they are
  paged as COS pages them (max-keys counts common prefixes and keys together; moto gave
  every common prefix on every page);
* HEAD Object, ListObjects and plain GET Object, PUT Object, PUT Object - Copy, DELETE
  Object and DELETE Multiple Objects are
  answered as moto answers them, without moto's request dispatch (``fast.py``: the
  emulator's CPU per request is not COS's, and the gateway sends more of these than its
  baselines);
* a PUT Object or UploadPart whose ``Content-MD5`` is not the MD5 of its body gets 400
  BadDigest (InvalidDigest if it is no MD5) and stores nothing, as on COS (moto ignores
  the header; ``conform.digest_refusal``);
* a PUT Object with ``x-cos-forbid-overwrite: true`` onto an existing object gets 409
  FileAlreadyExists, checked and stored as one step, unless the bucket's versioning was
  ever enabled (COS ignores the header there too);
* what COS refuses and moto took (or failed on with 500) is refused as COS documents it
  (``conform.py``): copy conditions and ranges, metadata directives, copy sources naming no
  object, missing uploads, parts out of order, ListObjects' max-keys and encoding-type,
  DELETE Multiple Objects' limit, ListMultipartUploads paged by key and markers;
* an object replaced or deleted while a GET or a copy reads it is still read whole (moto
  closes its buffer under the reader, which then fails with 500; COS serves the version the
  read started with), and the CRC64 a CompleteMultipartUpload or a HEAD reports is that of
  the very object it made or found, even if another request replaced it a moment later.

Every request is counted by kind (``GET /__emulator__/requests`` shows the counts, ``DELETE``
resets them; ``?contains=TEXT`` counts only requests whose key or listed prefix holds TEXT),
so tests and the bench can tell how many COS round-trips an FTP command costs;
``GET /__emulator__/log`` (same filter; ``?signed_by=SECRETID`` only the requests signed with
that key) lists each request with its start and end (``time.monotonic()``, shared by the
machine's processes), a COPY's source, the SecretId it was signed with and whether ``fast.py``
answered it (``fast``: which requests took the fast answers), so a test can tell
every key a client of the emulator named; and ``GET
/__emulator__/connections`` counts the TCP connections accepted (``serving.py`` keeps them
alive between requests, as COS does).

A rendezvous (``/__emulator__/rendezvous``, see :class:`Rendezvous`) holds chosen requests
until a given number of them are in flight at once: tests prove concurrency with it.

Credentials, what each key may do and the region of each bucket can be registered
(``PUT /__emulator__/accounts``, see ``accounts.py``): requests are then checked as COS
checks them (signature, unknown SecretId, actions a key is denied, a bucket asked for at
another region's endpoint), and GetService lists the buckets with their regions.

Faults can be injected (latency, 503 SlowDown, downloads cut off half-way, everything
down; for chosen COS operations, 500 InternalError or 503 ServiceUnavailable, or answers lost
once the request was carried out: see ``faults.Faults``) from the command line or at run
time with ``PUT /__emulator__/faults`` and a JSON body such as ``{"down": true}``; ``GET`` on
the same path shows the current settings.

moto takes the bucket from the first label of the ``Host`` header, which the SDK sets to
``<bucket>.cos.<region>.myqcloud.com`` when it is pointed at an IP and port, or from the path
(``/<bucket>/<key>``) where the host is an address, as S3 clients such as rclone send it. The
shim reads both the same way, once per request (``fast.place``): its checks (conditions,
``x-cos-forbid-overwrite``, ``deny_prefix``, COS's limits), its log and its counts see the
same bucket and key whichever way the client named them, and a copy source may be S3's
``x-amz-copy-source`` with S3's ``<bucket>/<key>`` (COS takes both).
"""

from __future__ import annotations

import argparse
import calendar
import email.utils
import io
import json
import logging
import os
import signal
import sys
import threading
import time
import urllib.parse
import uuid
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

import moto.s3.models
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.exceptions import MissingBucket
from moto.server import create_backend_app
from werkzeug.test import Client

from ..cos.checksum import crc64
from . import conform, fast, listing, routes
from .accounts import ACCOUNTS_PATH, SERVICE_HOSTS, Accounts, Refusal, signer
from .faults import Faults, Rendezvous, cut_short, operation
from .objects import KeyLocks, ObjectCrcs, forget_served, install_object_lifetimes, served_crc
from .serving import DEFAULT_LIMITS, KeepAliveServer, Limits
from .translate import (
    UploadTimes,
    cos_error_body,
    error_response,
    refusal_response,
    translate_headers,
    translate_request,
    url_encode_listing,
)

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]
DEFAULT_REGION = "ap-guangzhou"
# COS accepts parts of 1 MiB (all but the last); S3, and so moto, insists on 5 MiB.
COS_MIN_PART_SIZE = 1024 * 1024


CONTROL_PATH = "/__emulator__/faults"
REQUESTS_PATH = "/__emulator__/requests"
RENDEZVOUS_PATH = "/__emulator__/rendezvous"
LOG_PATH = "/__emulator__/log"
CONNECTIONS_PATH = "/__emulator__/connections"


@dataclass
class _Logged:
    """One request as the log shows it: its kind, the key it names or the prefix it lists,
    and when the emulator started and finished it (``time.monotonic()``, the clock every
    process on the machine shares, so a client can compare its own times)."""

    kind: str
    target: str
    start: float
    end: Optional[float] = None
    source: str = ""  # a COPY's x-cos-copy-source, as sent
    signer: str = ""  # the SecretId it says it is signed with
    # Answered by fast.py rather than moto's app: shows which requests of a bench row's
    # sides took the fast answers (docs/performance.md, "The emulator as an instrument").
    fast: bool = False


def _contains(environ: dict) -> str:
    """The ``contains`` filter of a request to the control API ("" for all)."""
    return urllib.parse.parse_qs(environ.get("QUERY_STRING", "")).get("contains", [""])[0]


def _json_response(start_response: Callable, value: Any) -> list[bytes]:
    body = json.dumps(value).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


def request_kind(environ: dict) -> str:
    """What COS operation a request is, as counted: ``HEAD``, ``GET``, ``PUT``, ``LIST``,
    ``COPY``, ``DELETE``, ``POST`` (multipart and batch operations) and so on."""
    method = environ["REQUEST_METHOD"]
    if method == "GET" and not fast.place(environ).is_object:
        return "LIST"
    if method == "PUT" and fast.copy_source(environ) is not None:
        return "COPY"
    return method


def _operation(environ: dict) -> str:
    """The COS API the request calls (``faults.operation``)."""
    return operation(environ["REQUEST_METHOD"], environ.get("QUERY_STRING", ""),
                     fast.copy_source(environ) is not None, fast.place(environ).is_object)


def _targets(environ: dict) -> tuple[str, str]:
    """The key a request names (as the client named it: the server has URL-decoded the
    path) and the prefix it lists (either may be "")."""
    return fast.place(environ).key, fast.query(environ, blanks=False).get("prefix", [""])[0]


def _part_number(environ: dict) -> int:
    """The part number of an UploadPart (or UploadPartCopy), 0 for any other request."""
    if "partNumber" not in environ.get("QUERY_STRING", ""):
        return 0
    number = urllib.parse.parse_qs(environ["QUERY_STRING"]).get("partNumber", [""])[0]
    return int(number) if number.isdigit() else 0


def _touches(environ: dict, prefix: str) -> bool:
    """Whether a request names a key, or lists a prefix, that starts with ``prefix``."""
    key, listed = _targets(environ)
    return key.startswith(prefix) or (bool(listed) and listed.startswith(prefix))


class CosShim:
    """WSGI middleware that makes moto's S3 app speak COS, with optional injected faults."""

    def __init__(self, app: WSGIApp, faults: Optional[Faults] = None) -> None:
        self.app = app
        self.faults = faults or Faults()
        self.accounts = Accounts(DEFAULT_REGION)
        self._lock = threading.Lock()
        self._upload_times = UploadTimes()
        self._crcs = ObjectCrcs()
        self._writes = KeyLocks()
        self.rendezvous = Rendezvous()
        # Each request since the last reset (kind, key or listed prefix, times); bounded.
        self.requests: deque[_Logged] = deque(maxlen=100_000)
        self.connections_accepted = 0
        # HEAD Object, ListObjects and plain GETs, PUTs and copies answered as moto answers them,
        # without its dispatch (fast.py).
        self.fast_answers = True

    def connection_accepted(self) -> None:
        """Count one TCP connection the server accepted (``/__emulator__/connections``)."""
        with self._lock:
            self.connections_accepted += 1

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == CONTROL_PATH:
            return self._control(environ, start_response, self.faults)
        if environ.get("PATH_INFO") == ACCOUNTS_PATH:
            return self._control(environ, start_response, self.accounts)
        if environ.get("PATH_INFO") == REQUESTS_PATH:
            return self._request_counts(environ, start_response)
        if environ.get("PATH_INFO") == RENDEZVOUS_PATH:
            return self._rendezvous_control(environ, start_response)
        if environ.get("PATH_INFO") == LOG_PATH:
            return self._request_log(environ, start_response)
        if environ.get("PATH_INFO") == CONNECTIONS_PATH:
            return _json_response(start_response, {"accepted": self.connections_accepted})
        key, listed = _targets(environ)
        logged = _Logged(request_kind(environ), key or listed, time.monotonic(),
                         source=urllib.parse.unquote(fast.copy_source(environ) or ""),
                         signer=signer(environ))
        with self._lock:
            self.requests.append(logged)
        try:
            return self._serve(environ, start_response, logged)
        finally:
            logged.end = time.monotonic()

    def _serve(self, environ: dict, start_response: Callable,
               logged: _Logged) -> Iterable[bytes]:
        request_id = uuid.uuid4().hex
        self.rendezvous.meet(logged.kind, logged.target, _part_number(environ))
        answered = self._as_account(environ, start_response, request_id)
        if answered is not None:
            return answered
        injected = self._inject(environ, start_response, request_id)
        if injected is not None:
            return injected
        refused = conform.refusal(environ) or self._copy_refusal(environ)
        if refused is not None:
            return refusal_response(start_response, refused, environ, request_id)
        crc = self._crc_of_upload(environ)
        refused = conform.digest_refusal(environ)
        if refused is not None:
            return refusal_response(start_response, refused, environ, request_id)
        with self._writes.holding(environ):
            if self._overwrite_forbidden(environ):
                return error_response(start_response, "409 Conflict", "FileAlreadyExists",
                                       environ.get("PATH_INFO", ""), request_id)
            body, status, headers = self._forward(environ, request_id, logged)
        headers = self.accounts.with_region(environ, headers)
        reported = self._object_crc(environ, headers, crc) \
            if crc is not None and status.startswith("2") else None
        if reported is not None:
            headers.append(("x-cos-hash-crc64ecma", self._reported_crc(reported)))
        if self.faults.lose_ops and self.faults.names(self.faults.lose_ops,
                                                      _operation(environ)) \
                and (self._count_down("lose_next") or self._roll("lose_rate")):
            with self._lock:
                self.faults.lost_answer()
            return self._lose(start_response, status, headers, body)
        start_response(status, headers)
        if environ["REQUEST_METHOD"] == "HEAD":
            return []
        if environ["REQUEST_METHOD"] == "GET" and fast.place(environ).is_object and len(body) > 1 \
                and self._reset_download():
            return cut_short(body)
        return [body]

    def _lose(self, start_response: Callable, status: str, headers: list,
              body: bytes) -> Iterable[bytes]:
        """The answer of a request carried out, lost: held ``stall_ms``, then cut off in
        its body (half sent) or, when it has none to cut, before its status line."""
        if self.faults.stall_ms:
            time.sleep(self.faults.stall_ms / 1000)
        if len(body) < 2:
            raise ConnectionResetError("injected: the answer lost")
        start_response(status, headers)
        return cut_short(body)

    def _reset_download(self) -> bool:
        return self._count_down("reset_next") or self._roll("reset_rate")

    def _count_down(self, name: str) -> bool:
        """Whether the fault counter ``name`` is still above 0; take one from it if so."""
        with self._lock:
            left = getattr(self.faults, name)
            if left > 0:
                setattr(self.faults, name, left - 1)
            return left > 0

    def _drop_counted(self) -> bool:
        """Whether ``drop_next`` drops this request: an answer was lost since it was set,
        and it is still above 0 (one taken from it if so)."""
        with self._lock:
            if not self.faults.answer_lost:
                return False
        return self._count_down("drop_next")

    def _roll(self, name: str) -> bool:
        rate = getattr(self.faults, name)
        with self._lock:
            return rate > 0 and self.faults.random.random() < rate

    def _inject(self, environ: dict, start_response: Callable,
                request_id: str) -> Optional[list[bytes]]:
        if self.faults.latency_ms:
            time.sleep(self.faults.latency_ms / 1000)
        resource = environ.get("PATH_INFO", "")
        if self.faults.down:
            return error_response(start_response, "503 Service Unavailable",
                                   "ServiceUnavailable", resource, request_id)
        if self.faults.deny_prefix and _touches(environ, self.faults.deny_prefix):
            return error_response(start_response, "403 Forbidden", "AccessDenied", resource,
                                   request_id)
        copy_source = fast.copy_source(environ) or ""
        if self.faults.fail_copies_of and self.faults.fail_copies_of in copy_source:
            return error_response(start_response, "503 Slow Down", "SlowDown", resource,
                                   request_id)
        if self._roll("error_rate"):
            return error_response(start_response, "503 Slow Down", "SlowDown", resource,
                                   request_id)
        if self.faults.fail_ops and self.faults.names(self.faults.fail_ops,
                                                      _operation(environ)) \
                and (self._count_down("fail_next") or self._roll("fail_rate")):
            with self._lock:
                internal = self.faults.random.random() < 0.5
            if internal:
                return error_response(start_response, "500 Internal Server Error",
                                       "InternalError", resource, request_id)
            return error_response(start_response, "503 Service Unavailable",
                                   "ServiceUnavailable", resource, request_id)
        if self.faults.drop_ops and self.faults.names(self.faults.drop_ops,
                                                      _operation(environ)) \
                and (self._drop_counted() or self._roll("drop_rate")):
            raise ConnectionResetError("injected: the request lost on the way")
        if copy_source and "partNumber" not in environ.get("QUERY_STRING", "") and \
                self._count_down("copy_errors_next"):
            return error_response(start_response, "200 OK", "InternalError", resource,
                                   request_id, "injected: the copy failed once begun")
        return None

    def _as_account(self, environ: dict, start_response: Callable,
                    request_id: str) -> Optional[list[bytes]]:
        """What COS answers from what it knows of accounts (``accounts.py``): a refusal of
        the credentials or of a bucket of another region, or GetService; else None."""
        refusal = self.accounts.refuse(environ)
        if refusal is not None:
            return refusal_response(start_response, refusal, environ, request_id)
        if environ.get("HTTP_HOST") not in SERVICE_HOSTS:
            return None
        body = self.accounts.list_buckets(self.app)
        start_response("200 OK", [("Content-Type", "application/xml"),
                                  ("Content-Length", str(len(body))),
                                  ("x-cos-request-id", request_id)])
        return [body]

    def _control(self, environ: dict, start_response: Callable, target: Any) -> list[bytes]:
        """Show ``target``'s settings (``Faults`` or ``Accounts``); a PUT changes them."""
        if environ["REQUEST_METHOD"] in ("PUT", "POST"):
            length = int(environ.get("CONTENT_LENGTH") or 0)
            target.update(json.loads(environ["wsgi.input"].read(length) or b"{}"))
        return _json_response(start_response, target.as_dict())

    def _request_counts(self, environ: dict, start_response: Callable) -> list[bytes]:
        contains = _contains(environ)
        with self._lock:
            counts = Counter(entry.kind for entry in self.requests if contains in entry.target)
            if environ["REQUEST_METHOD"] == "DELETE":
                self.requests.clear()
        return _json_response(start_response, dict(counts))

    def _request_log(self, environ: dict, start_response: Callable) -> list[bytes]:
        contains = _contains(environ)
        signed_by = urllib.parse.parse_qs(environ.get("QUERY_STRING", "")).get("signed_by")
        with self._lock:
            entries = [asdict(entry) for entry in self.requests if contains in entry.target
                       and (signed_by is None or entry.signer == signed_by[0])]
        return _json_response(start_response, entries)

    def _rendezvous_control(self, environ: dict, start_response: Callable) -> list[bytes]:
        if environ["REQUEST_METHOD"] in ("PUT", "POST"):
            length = int(environ.get("CONTENT_LENGTH") or 0)
            wanted = json.loads(environ["wsgi.input"].read(length) or b"{}")
            self.rendezvous.arm(str(wanted["contains"]), int(wanted["parties"]),
                                float(wanted.get("timeout", 10.0)), str(wanted.get("kind", "")),
                                bool(wanted.get("exact", False)), int(wanted.get("part", 0)))
        body = json.dumps(self.rendezvous.as_dict()).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]

    def _overwrite_forbidden(self, environ: dict) -> bool:
        """Whether a PUT Object with ``x-cos-forbid-overwrite: true`` would replace an object,
        which COS refuses with 409 FileAlreadyExists. COS ignores the header in a bucket
        whose versioning was ever enabled (Enabled or Suspended), and so does this. Asked of
        moto's backend itself (no request more per PUT)."""
        query = environ.get("QUERY_STRING", "")
        if environ["REQUEST_METHOD"] != "PUT" or fast.copy_source(environ) is not None or \
                "partNumber" in query or \
                environ.get("HTTP_X_COS_FORBID_OVERWRITE", "").lower() != "true":
            return False
        where = fast.place(environ)
        try:
            bucket = moto.s3.models.s3_backends[DEFAULT_ACCOUNT_ID]["aws"].get_bucket(
                where.bucket)
        except MissingBucket:
            return False  # moto answers NoSuchBucket
        return not bucket.versioning_status and where.key in bucket.keys

    def _copy_refusal(self, environ: dict) -> Optional[Refusal]:
        """COS's refusal of a copy whose source fails its conditions or is shorter than
        its range (``conform.copy_precondition``; moto checks neither date, and nothing on
        part copies); None otherwise, or if there is no such source (moto says so)."""
        source = fast.copy_source(environ)
        if source is None or not conform.has_copy_conditions(environ):
            return None
        # <bucket>.<endpoint>/<key> or S3's <bucket>/<key>: COS bucket names hold no dots
        host, _, path = source.lstrip("/").partition("/")
        bucket = host.split(".", 1)[0]
        key = fast.source_key(bucket, path, environ) if self.fast_answers else None
        if key is not None:  # (the time in whole seconds, as its Last-Modified says it)
            etag, size = str(key.etag), key.size
            modified = float(calendar.timegm(key.last_modified.timetuple()))
        else:  # (path-style: moto reads any host as a bucket but localhost's)
            headers = Client(self.app).head(f"/{bucket}/{path}", headers={
                "Host": "localhost",
                "Authorization": environ.get("HTTP_AUTHORIZATION", "")}).headers
            if "ETag" not in headers:
                return None
            etag, size = headers["ETag"], int(headers.get("Content-Length", 0))
            modified = email.utils.parsedate_to_datetime(headers["Last-Modified"]).timestamp()
        return conform.copy_precondition(environ, conform.SourceState(
            etag.strip('"'), modified, size))

    def _object_crc(self, environ: dict, headers: list[tuple[str, str]],
                    compute: Callable[[], Optional[int]]) -> Optional[int]:
        """The CRC64 a PUT or HEAD reports, remembered for the version its ETag names; a
        part's and a completed upload's are computed each time (their answers carry no ETag
        header to remember them by)."""
        etag = next((value for name, value in headers if name.lower() == "etag"), "")
        if not etag or "partNumber" in environ.get("QUERY_STRING", ""):
            return compute()
        return self._crcs.get(fast.place(environ), etag.strip('"'), compute)

    def _crc_of_upload(self, environ: dict) -> Optional[Callable[[], Optional[int]]]:
        """For an object PUT, an UploadPart, a CompleteMultipartUpload or a HEAD, return what
        computes the CRC64 COS reports for the object or part (``x-cos-hash-crc64ecma``);
        else None."""
        method, query = environ["REQUEST_METHOD"], environ.get("QUERY_STRING", "")
        if method == "PUT" and fast.copy_source(environ) is None:
            body = conform.buffered_body(environ)
            if "partNumber" in query and body and (self._count_down("corrupt_next_parts") or
                                                   self._roll("corrupt_part_rate")):
                body = bytes([body[0] ^ 1]) + body[1:]
                environ["wsgi.input"] = io.BytesIO(body)
            return lambda: crc64(body)
        if (method == "POST" and "uploadId" in query) or \
                (method == "HEAD" and fast.place(environ).is_object):
            forget_served()
            return served_crc
        return None

    def _reported_crc(self, value: int) -> str:
        wrong = self.faults.corrupt_crc or self._count_down("corrupt_crc_next")
        return str(value ^ 1 if wrong else value)

    def _forward(self, environ: dict, request_id: str,
                 logged: _Logged) -> tuple[bytes, str, list]:
        """Run moto (or make its answer: ``fast.py``, noted in ``logged``); return the
        COS-form body, status and headers."""
        translate_request(environ)
        made = fast.answer(environ) if self.fast_answers else None
        logged.fast = made is not None
        if made is None:
            made = self._run_moto(environ)
        status, moto_headers, body = made
        body = url_encode_listing(environ, conform.page_uploads(
            environ, self._upload_times.rewrite(environ, body)))
        body = conform.quiet_deletes(environ, status, body)
        if int(status.split()[0]) >= 400 and body and environ["REQUEST_METHOD"] != "HEAD":
            body = cos_error_body(body, environ.get("PATH_INFO", ""), request_id)
        headers = translate_headers(moto_headers, request_id, status, environ)
        headers, body = conform.completed_upload(environ, status, headers, body,
                                                 self.accounts.region)
        if environ["REQUEST_METHOD"] != "HEAD" or not any(
                n.lower() == "content-length" for n, _ in moto_headers):
            headers.append(("Content-Length", str(len(body))))
        else:
            headers += [(n, v) for n, v in moto_headers if n.lower() == "content-length"]
        return body, status, headers

    def _run_moto(self, environ: dict) -> fast.Answer:
        """moto's status, headers and body for this request."""
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list, exc_info: Any = None) -> Callable:
            captured["status"], captured["headers"] = status, headers
            return lambda data: None

        body = b"".join(self.app(routes.routed(environ), capture))
        return captured["status"], captured["headers"], body


def make_app(faults: Optional[Faults] = None) -> CosShim:
    """Return the COS-speaking WSGI app (moto's S3 backend behind :class:`CosShim`)."""
    moto.s3.models.S3_UPLOAD_PART_MIN_SIZE = COS_MIN_PART_SIZE
    listing.install()
    routes.install()
    install_object_lifetimes()
    return CosShim(create_backend_app("s3"), faults)


def cos_host(bucket: str, region: str = DEFAULT_REGION) -> str:
    """The virtual-host name the SDK sends for ``bucket``."""
    return f"{bucket}.cos.{region}.myqcloud.com"


class Emulator:
    """The emulator served from a background thread (``start``/``stop`` or ``with``)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, buckets: Sequence[str] = (),
                 region: str = DEFAULT_REGION, faults: Optional[Faults] = None,
                 limits: Limits = DEFAULT_LIMITS) -> None:
        self.host, self.port, self.region = host, port, region
        self.buckets = list(buckets)
        self.app = make_app(faults)
        self.app.accounts.default_region = region
        self.limits = limits
        self._server: Optional[KeepAliveServer] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Emulator:
        self._server = KeepAliveServer((self.host, self.port), self.app, self.limits,
                                       accepted=self.app.connection_accepted)
        self.port = self._server.port
        for bucket in self.buckets:
            self.create_bucket(bucket)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="cos-emulator")
        self._thread.start()
        return self

    def create_bucket(self, bucket: str) -> None:
        """Create ``bucket`` through moto (bypassing injected faults)."""
        response = Client(self.app.app).put(
            "/", headers={"Host": cos_host(bucket, self.region),
                          "Authorization": "q-sign-algorithm=sha1&q-ak=emulator"})
        if response.status_code >= 300 and b"BucketAlreadyOwnedByYou" not in response.data:
            raise RuntimeError(f"could not create bucket {bucket}: {response.status_code}")

    def stop(self) -> None:
        if self._server is not None:
            # Connections first: with every slot taken, the accept loop waits for one.
            self._server.close_connections()
            self._server.shutdown()
            self._server.server_close()
            self._server.close_connections()
            self._server = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _write_ready_file(path: str, port: int) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="ascii") as handle:
        handle.write(f"{port}\n")
    os.replace(tmp, path)


_CLI_EPILOG = """\
example (README "Run the emulator alone"):
  .venv/bin/python -m cosftp_prefork.emulator.app --port 9000 --bucket demo-1250000000
then point an account at it: cos_protocol = http, cos_ip = 127.0.0.1, cos_port = 9000,
cos_bucket = demo-1250000000, cos_region = ap-guangzhou, any cos_secretid/cos_secretkey.
Everything is kept in memory and lost when it stops (Ctrl-C or SIGTERM)."""


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cosftp_prefork.emulator.app", epilog=_CLI_EPILOG,
        description="Local COS emulator (moto S3 + COS shim), for the demo and the tests.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="0 (default) picks a free port")
    parser.add_argument("--bucket", action="append", default=[],
                        help="bucket to create, name-appid as in cos_bucket; repeatable")
    parser.add_argument("--region", default=DEFAULT_REGION)
    parser.add_argument("--ready-file", help="write the port here once serving")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay every request")
    parser.add_argument("--error-rate", type=float, default=0.0,
                        help="share of requests answered 503 SlowDown")
    parser.add_argument("--reset-rate", type=float, default=0.0,
                        help="share of downloads cut off half-way")
    parser.add_argument("--seed", type=int, help="random seed for injected faults")
    parser.add_argument("--max-connections", type=int, default=Limits.max_connections,
                        help="connections served at once, a thread each (more wait)")
    parser.add_argument("--keep-alive-limit", type=int, default=Limits.keep_alive_limit,
                        help="open connections past which answers say Connection: close")
    parser.add_argument("--idle-timeout", type=float, default=Limits.idle_timeout,
                        help="seconds a kept-alive connection may wait for its next request")
    args = parser.parse_args(argv)
    faults = Faults(args.latency_ms, args.error_rate, args.reset_rate, seed=args.seed)
    limits = Limits(args.max_connections, args.keep_alive_limit, args.idle_timeout)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    emulator = Emulator(args.host, args.port, args.bucket, args.region, faults, limits)
    try:
        emulator.start()
    except OSError as exc:  # a port in use, an address not of this machine: say so, briefly
        print(f"cos-emulator: cannot listen on {args.host}:{args.port}: {exc.strerror}",
              file=sys.stderr)
        return 1
    try:
        print(f"cos-emulator listening on {emulator.url} buckets={','.join(args.bucket)}",
              flush=True)
        if args.ready_file:
            _write_ready_file(args.ready_file, emulator.port)
        stop.wait()
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
