"""COS's wire form of moto's S3: ``x-cos-*`` headers and COS's copy source in, S3's out;
COS's error body, listing encoding and multipart upload times in the answers."""

from __future__ import annotations

import re
import time
import urllib.parse
from typing import Callable
from xml.sax.saxutils import escape, unescape

from .accounts import Refusal
from .fast import query as parsed_query


def _cos_copy_source_to_s3(value: str) -> str:
    """``b-1.cos.ap-x.myqcloud.com/k`` (or ``b-1.<any endpoint>/k``) -> ``b-1/k``; an
    S3-form value passes unchanged (COS bucket names hold no dots)."""
    value = value.lstrip("/")
    host, _, key = value.partition("/")
    if "." in host:
        return f"{host.split('.', 1)[0]}/{key}"
    return value


_METADATA_DIRECTIVES = {"Copy": "COPY", "Replaced": "REPLACE"}


def translate_request(environ: dict) -> None:
    for name in [n for n in environ if n.startswith("HTTP_X_COS_")]:
        environ["HTTP_X_AMZ_" + name[len("HTTP_X_COS_"):]] = environ.pop(name)
    if "HTTP_X_AMZ_COPY_SOURCE" in environ:
        environ["HTTP_X_AMZ_COPY_SOURCE"] = _cos_copy_source_to_s3(
            environ["HTTP_X_AMZ_COPY_SOURCE"])
    directive = environ.get("HTTP_X_AMZ_METADATA_DIRECTIVE")
    if directive is not None:  # COS says Copy / Replaced, S3 COPY / REPLACE
        environ["HTTP_X_AMZ_METADATA_DIRECTIVE"] = _METADATA_DIRECTIVES.get(directive, directive)


# What moto's app adds to every answer and COS never sends: its AWS request id, its server
# name (serving.py writes COS's, which two Server headers would contradict) and a ``status``
# header; and the shim's own (the request id, the body's length), written once after.
_NOT_COS = frozenset({"x-amzn-requestid", "server", "status", "x-cos-request-id",
                      "content-length"})
# moto's Flask app grants every origin (Access-Control-Allow-Origin: *) on every answer; COS
# answers CORS headers only to a request with an Origin, by the bucket's rules (moto's S3
# answers those itself, fast.py leaves them to it).
_CORS_GRANT = ("access-control-allow-origin", "*")


def translate_headers(headers: list[tuple[str, str]], request_id: str, status: str,
                      environ: dict) -> list[tuple[str, str]]:
    """COS's headers for moto's (or fast.py's) answer: ``x-amz-*`` as ``x-cos-*``, none of
    moto's own, the request id; a failed answer's as :func:`error_headers` makes them."""
    failed = status >= "400"  # (a three-digit status line)
    cors = "HTTP_ORIGIN" in environ
    out = []
    for name, value in headers:
        lower = name.lower()
        if lower.startswith("x-amz-"):
            name = "x-cos-" + name[len("x-amz-"):]
            lower = name.lower()
        if lower in _NOT_COS or (failed and lower == "content-type") or \
                (not cors and (lower, value) == _CORS_GRANT):
            continue
        out.append((name, value))
    return [*out, *error_headers(request_id)] if failed else \
        [*out, ("x-cos-request-id", request_id)]


def error_headers(request_id: str) -> list[tuple[str, str]]:
    """What COS writes on every failed answer, a HEAD's too (it has no body): its error
    body's type (error codes, 436/7730), the request id and the trace id (common response
    headers, 436/7729: ``x-cos-trace-id`` only when a request fails; the body's TraceId)."""
    return [("Content-Type", "application/xml"), ("x-cos-request-id", request_id),
            ("x-cos-trace-id", request_id)]


_ERROR_FIELD = re.compile(rb"<(Code|Message)>([^<]*)</\1>")
# What an error body gives percent-encoded: C0 controls and DEL (XML 1.0 cannot carry most of
# them; a log or a terminal should not get them raw) and the bytes of a path that are no UTF-8.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f\udc80-\udcff]")


def _percent_encoded(match: re.Match) -> str:
    code = ord(match.group())
    return f"%{code - 0xDC00 if code >= 0xDC00 else code:02X}"


def printable(text: str) -> str:
    """``text`` with control characters and undecodable bytes (surrogate escapes) as %XX."""
    return _UNPRINTABLE.sub(_percent_encoded, text)


def path_text(path: str) -> str:
    """A WSGI ``PATH_INFO`` (its bytes as latin-1) as the text COS names the resource by: the
    UTF-8 it holds, with what ``printable`` encodes percent-encoded again."""
    return printable(path.encode("latin-1").decode("utf-8", "surrogateescape"))


def cos_error_body(body: bytes, resource: str, request_id: str) -> bytes:
    """COS's error body (Code, Message, Resource, RequestId, TraceId; 436/7730) for moto's
    (or the shim's) ``<Error>`` ``body`` about the request path ``resource``.

    Code and Message are read by pattern, not by an XML parser: moto writes the key raw into
    its body, and a key with a control byte makes that body no XML (a missing one then came
    out as InternalError where COS says NoSuchKey)."""
    fields = {name.decode(): unescape(value.decode("utf-8", "replace"))
              for name, value in _ERROR_FIELD.findall(body)}
    code = fields.get("Code") or "InternalError"
    message = fields.get("Message", "") if "Code" in fields \
        else body.decode("utf-8", "replace")[:200]
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error>'
        f"<Code>{escape(printable(code))}</Code><Message>{escape(printable(message))}</Message>"
        f"<Resource>{escape(path_text(resource))}</Resource><RequestId>{request_id}</RequestId>"
        f"<TraceId>{request_id}</TraceId></Error>"
    ).encode()


_ENCODED_LIST_FIELDS = re.compile(rb"<(Prefix|Marker|NextMarker|Delimiter)>([^<]*)</\1>")


def url_encode_listing(environ: dict, body: bytes) -> bytes:
    """URL-encode what moto leaves raw in a listing asked for with ``encoding-type=url``
    (COS encodes every key, prefix and marker there; moto only the keys)."""
    query = parsed_query(environ, blanks=False)
    if environ["REQUEST_METHOD"] != "GET" or query.get("encoding-type") != ["url"]:
        return body

    def encode(match: re.Match) -> bytes:
        raw = unescape(match.group(2).decode("utf-8"))
        value = urllib.parse.quote(raw, safe="/")
        return b"<%s>%s</%s>" % (match.group(1), value.encode(), match.group(1))

    return _ENCODED_LIST_FIELDS.sub(encode, body)


def error_xml(code: str, message: str) -> bytes:
    """An ``<Error>`` as moto writes it, for ``cos_error_body`` to make COS's of."""
    return f"<Error><Code>{code}</Code><Message>{escape(message)}</Message></Error>".encode()


def error_response(start_response: Callable, status: str, code: str, resource: str,
                    request_id: str, message: str = "injected fault") -> list[bytes]:
    body = cos_error_body(error_xml(code, message), resource, request_id)
    headers = error_headers(request_id) if status >= "400" else [
        ("Content-Type", "application/xml"), ("x-cos-request-id", request_id)]
    start_response(status, [*headers, ("Content-Length", str(len(body)))])
    return [body]


def refusal_response(start_response: Callable, refused: Refusal, environ: dict,
             request_id: str) -> list[bytes]:
    """COS's error answer for a request refused (by ``conform`` or the accounts)."""
    return error_response(start_response, refused.status, refused.code,
                           environ.get("PATH_INFO", ""), request_id, refused.message)


class UploadTimes:
    """Real ``Initiated`` times in ListMultipartUploads.

    moto answers with one fixed date (2010) for every upload; COS gives the real one, and
    the janitor goes by it. The shim notes when each upload was initiated and puts that
    time in the listing (same length, so Content-Length holds).
    """

    _UPLOAD_ID = re.compile(rb"<UploadId>([^<]+)</UploadId>")

    def __init__(self) -> None:
        self._started: dict[bytes, float] = {}

    def rewrite(self, environ: dict, body: bytes) -> bytes:
        """Return ``body`` with real times in an upload listing; note initiations."""
        query = parsed_query(environ)
        if "uploads" not in query:
            return body
        if environ["REQUEST_METHOD"] == "POST":
            found = self._UPLOAD_ID.search(body)
            if found:
                self._started[found.group(1)] = time.time()
            return body
        return re.sub(rb"<Upload>.*?</Upload>", self._real_time, body, flags=re.S)

    def _real_time(self, match: re.Match) -> bytes:
        upload = match.group(0)
        found = self._UPLOAD_ID.search(upload)
        started = self._started.get(found.group(1)) if found else None
        if started is None:
            return upload
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(started)).encode()
        return re.sub(rb"<Initiated>[^<]*</Initiated>",
                      b"<Initiated>" + stamp + b"</Initiated>", upload)
