"""COS requests signed by the SDK and sent straight through the session's connection pools.

Most of the worker's CPU for a small file went into building each COS request: ``requests``
(its Session, PreparedRequest and Response) and the SDK's ``send_request`` around it, 0.73 to
1.0 ms of CPU per request against 0.42 to 0.48 ms for the same signed requests sent this way
(one process, the same emulator, interleaved; docs/performance.md). The calls a file takes
(HEAD, a small PUT, GET, copy, DELETE, a listing page) are sent here; what makes the request
stays the SDK's: its argument-to-header mapping (``mapped``), its copy source, its signature
(``CosS3Auth``), its User-Agent, token and Host headers. The request goes through the same
``requests`` adapter the SDK would use, with the same connection pool, TLS settings, proxy
(the environment's, read as the session reads it: ``WorkerSession``), timeout and urllib3
retry setting. An answer of 400 or more raises the SDK's ``CosServiceError`` as
``send_request`` makes it, and any other failure ``CosClientError`` (``send_request`` turns
every exception of ``requests`` into one): ``bucket._call`` retries, counts and translates
them as before.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import urlencode

import urllib3
from qcloud_cos import CosS3Client
from qcloud_cos.cos_auth import CosS3Auth
from qcloud_cos.cos_comm import format_values
from qcloud_cos.cos_exception import CosClientError, CosServiceError
from qcloud_cos.version import __version__ as SDK_VERSION
from requests import PreparedRequest, Session
from requests.structures import CaseInsensitiveDict

# The SDK's timeout when the configuration names none (send_request's default).
_SDK_TIMEOUT = 30


@dataclass
class Answer:
    """What COS answered: the status, the headers (any case), and the body (``data``), or
    the undrained response to read it from when ``stream`` was asked for (``raw``)."""

    status: int
    headers: Any
    data: bytes
    raw: Optional[urllib3.BaseHTTPResponse] = None


class Sender:
    """Signs and sends requests for the buckets of one SDK client (its configuration and
    ``requests`` session)."""

    def __init__(self, client: CosS3Client) -> None:
        self._client = client
        self._conf = client._conf
        timeout = self._conf._timeout if self._conf._timeout is not None else _SDK_TIMEOUT
        self._timeout = urllib3.Timeout(connect=timeout, read=timeout)

    def send(self, method: str, bucket: str, key: str = "", params: Optional[dict] = None,
             headers: Optional[dict] = None, body: Optional[bytes] = None,
             stream: bool = False) -> Answer:
        """Send one request for ``key`` of ``bucket`` (the bucket itself when ``key`` is
        ""); raise ``CosServiceError`` for an answer of 400 or more."""
        try:
            response, url = self._exchange(method, bucket, key, params or {}, headers or {},
                                           body, stream)
            if stream and response.status < 400:
                return Answer(response.status, response.headers, b"", response)
            data = response.read()
        except CosClientError:
            raise
        except Exception as exc:  # send_request turns every exception into this one
            raise CosClientError(str(exc)) from exc
        answer = Answer(response.status, response.headers, data)
        if answer.status >= 400:
            raise _service_error(method, url, answer)
        return answer

    def _exchange(self, method: str, bucket: str, key: str, params: dict, headers: dict,
                  body: Optional[bytes], stream: bool) -> tuple[urllib3.BaseHTTPResponse, str]:
        """Sign the request and send it as the ``requests`` adapter would: its pool for
        the URL, TLS settings and proxy, urllib3's retry setting; return the answer, its
        body not read, and the URL."""
        # Read each time: the SDK replaces its built-in session in a forked child.
        session = self._client._session
        request = self._signed(session, method, bucket, key, params, headers, body)
        settings = session.merge_environment_settings(
            request.url, self._conf._proxies or {}, stream, self._verify(), self._cert())
        adapter = session.get_adapter(request.url)
        pool = adapter.get_connection_with_tls_context(
            request, settings["verify"], proxies=settings["proxies"], cert=settings["cert"])
        adapter.cert_verify(pool, request.url, settings["verify"], settings["cert"])
        response = pool.urlopen(
            method, adapter.request_url(request, settings["proxies"]), body=body,
            headers=request.headers, redirect=False, assert_same_host=False,
            preload_content=False, decode_content=False, retries=adapter.max_retries,
            timeout=self._timeout, chunked=False)
        return response, request.url

    def _signed(self, session: Session, method: str, bucket: str, key: str, params: dict,
                headers: dict, body: Optional[bytes]) -> PreparedRequest:
        """The request as the SDK's ``send_request`` would send it, signed by the SDK."""
        conf = self._conf
        url = conf.uri(bucket=bucket, path=key) if key else conf.uri(bucket=bucket)
        own = dict(headers)
        own["User-Agent"] = conf._ua or f"cos-python-sdk-v{SDK_VERSION}"
        if conf._token is not None:
            own["x-cos-security-token"] = conf._token
        if conf._ip is not None:
            own["Host"] = conf._domain or conf.get_host(Bucket=bucket)
        if not conf._keep_alive:
            own["Connection"] = "close"
        merged = CaseInsensitiveDict(session.headers)  # as the session merges them
        merged.update(format_values(own))  # UTF-8 bytes, as the SDK sends its headers
        if body is not None:
            merged["Content-Length"] = str(len(body))
        request = PreparedRequest()
        request.method = method
        request.url = f"{url}?{urlencode(params)}" if params else url
        request.headers = merged
        request.body = body
        CosS3Auth(conf, key or None, params=params)(request)
        return request

    def _verify(self) -> Any:
        return self._conf._verify_ssl if self._conf._scheme == "https" else None

    def _cert(self) -> Any:
        return self._conf._ssl_cert if self._conf._scheme == "https" else None


def _service_error(method: str, url: str, answer: Answer) -> CosServiceError:
    """The ``CosServiceError`` the SDK's ``send_request`` raises for this answer."""
    headers = answer.headers
    if method == "HEAD" and answer.status == 404:
        info = {"code": "NoSuchResource", "message": "The Resource You Head Not Exist",
                "resource": url}
        for header, field in (("x-cos-request-id", "requestid"), ("x-cos-trace-id", "traceid")):
            if header in headers:
                info[field] = headers[header]
        return CosServiceError(method, info, answer.status)
    if "x-cos-error-code" in headers:
        info = {"code": headers["x-cos-error-code"], "message": answer.data.decode(
            "utf-8", "replace")}
        if "x-cos-request-id" in headers:
            info["requestid"] = headers["x-cos-request-id"]
        return CosServiceError(method, info, answer.status)
    text = answer.data.decode("utf-8", "replace")
    return CosServiceError(method, text or CaseInsensitiveDict(headers), answer.status)


def copy_etag(answer: Answer) -> str:
    """The ETag a copy's answer carries in its body; COS may answer 200 with an error body
    instead, which raises ``CosServiceError`` as the SDK's ``copy_object`` does."""
    root = ElementTree.fromstring(answer.data)
    for element in root:
        if element.tag.rpartition("}")[2] == "ETag":
            return (element.text or "").strip('"')
    raise CosServiceError("PUT", answer.data.decode("utf-8", "replace"), 200)
