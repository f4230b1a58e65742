"""COS requests signed as the SDK signs them and sent on the session's pooled connections.

Most of the worker's CPU for a small file went into making each COS request: first
``requests`` (its Session, PreparedRequest and Response) and the SDK's ``send_request``
around it, 0.73 to 1.0 ms of CPU per request; then, sent through urllib3's ``urlopen``,
0.42 to 0.55 ms, most of it urllib3's and http.client's request and response objects (an
answer's headers parsed by the ``email`` package). A HEAD, a small PUT, a copy, a DELETE or
a listing page now costs about 0.2 ms (docs/performance.md, "Issue 21: CPU per small file"):

- **Signed** by :class:`Signer`, which writes the ``Authorization`` header the SDK's
  ``CosS3Auth`` writes (its header filter, quoting and HMAC-SHA1 chain; compared with it in
  ``tests/test_signed.py``), its signing key derived once per key-time window. What goes
  in the request stays the SDK's: its argument-to-header mapping (``mapped``), copy source,
  User-Agent, token and Host headers, and the session's default headers.
- **Sent** on a connection of the same ``requests`` adapter's urllib3 pool the SDK would
  use: urllib3 opens it (TLS settings, certificate checks) and keeps it between requests,
  replacing one found dropped; the request's head and body are written, and the answer
  (status, headers, a body framed by Content-Length, chunks or the connection's end) read
  here. Where a proxy stands between (the environment's, read once per origin as
  ``WorkerSession`` reads it), and for a GET streamed to a client, the request goes
  through urllib3's ``urlopen`` as before.

An answer of 400 or more raises the SDK's ``CosServiceError`` as ``send_request`` makes it,
and any other failure ``CosClientError`` (``send_request`` turns every exception of
``requests`` into one): ``calls.call`` retries, counts and translates them as before.
"""
from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import urlsplit

import urllib3
from qcloud_cos import CosS3Client
from qcloud_cos.cos_exception import CosClientError, CosServiceError
from qcloud_cos.version import __version__ as SDK_VERSION
from requests import PreparedRequest
from requests.structures import CaseInsensitiveDict
from urllib3.util.wait import wait_for_read

from .signing import Signer, query, quoted_path, utf8
from .streams import StreamedBody
from .wire import Answer, framed_length, origin, read_body, read_head, request_head

# The SDK's timeout when the configuration names none (send_request's default).
_SDK_TIMEOUT = 30
# A request body up to this size goes out in one send with the head.
_JOINED_BODY_MAX = 64 * 1024


@dataclass
class _Route:
    """How requests reach one origin of one ``requests`` session: the adapter's urllib3
    pool for it, and whether a proxy stands between."""

    session: Any
    pool: urllib3.HTTPConnectionPool
    settings: dict
    proxied: bool


class Sender:
    """Signs and sends requests for the buckets of one SDK client (its configuration and
    ``requests`` session)."""

    def __init__(self, client: CosS3Client) -> None:
        self._client = client
        self._conf = client._conf
        self._signer = Signer(self._conf)
        self._seconds = self._conf._timeout if self._conf._timeout is not None else _SDK_TIMEOUT
        self._timeout = urllib3.Timeout(connect=self._seconds, read=self._seconds)
        self._routes: dict[str, _Route] = {}
        self._buckets: dict[str, tuple[str, Optional[str]]] = {}  # see _bucket_url
        self._defaults: tuple[Any, dict[str, tuple[str, Any]]] = (None, {})  # _session_headers

    def send(self, method: str, bucket: str, key: str = "", params: Optional[dict] = None,
             headers: Optional[dict] = None, body: Optional[bytes] = None,
             stream: bool = False) -> Answer:
        """Send one request for ``key`` of ``bucket`` (the bucket itself when ``key`` is
        ""); raise ``CosServiceError`` for an answer of 400 or more."""
        return self.start(method, bucket, key, params, headers, body, stream).answer()

    def start(self, method: str, bucket: str, key: str = "", params: Optional[dict] = None,
              headers: Optional[dict] = None, body: Optional[bytes] = None,
              stream: bool = False) -> Sent:
        """Send the request as :meth:`send` does, and return without reading its answer
        (where it goes through ``urlopen``, it is read here): :meth:`Sent.answer` reads it,
        so that a thread can have several requests in flight at once."""
        url = ""
        try:
            url, request_headers = self._signed(method, bucket, key, params or {},
                                                headers or {}, body)
            route = self._route(url)
            if route.proxied:
                response = self._urlopen(route, method, url, request_headers, body)
                if stream and response.status < 400:
                    return Sent(method, url, Answer(response.status, response.headers, b"",
                                                    response))
                return Sent(method, url, Answer(response.status, response.headers,
                                                response.read()))
            return Sent(method, url, None, self._request(route, method, url, request_headers,
                                                         body, stream),
                        self._conf._keep_alive)
        except CosClientError:
            raise
        except Exception as exc:  # send_request turns every exception into this one
            raise CosClientError(str(exc)) from exc

    def _signed(self, method: str, bucket: str, key: str, params: dict, headers: dict,
                body: Optional[bytes]) -> tuple[str, dict[str, str]]:
        """The URL and headers the SDK's ``send_request`` would send, signed as it signs."""
        conf = self._conf
        url, host = self._bucket_url(bucket)
        if key:
            url += quoted_path(key)
        own = dict(headers)
        own["User-Agent"] = conf._ua or f"cos-python-sdk-v{SDK_VERSION}"
        if conf._token is not None:
            own["x-cos-security-token"] = conf._token
        if host is not None:
            own["Host"] = host
        if not conf._keep_alive:
            own["Connection"] = "close"
        if body is not None:
            own["Content-Length"] = str(len(body))
        # Merged as the session merges them: any case, the request's name and value last.
        merged = self._session_headers()
        for name, value in own.items():
            merged[name.lower()] = (name, value)
        sent = dict(merged.values())
        signed = sent
        if conf._sign_host and "host" not in merged:  # CosS3Auth signs the URL's host then
            signed = {**sent, "host": urlsplit(url).hostname or ""}
        path = "/" + key if key and not key.startswith("/") else (key or "/")
        sent["Authorization"] = self._signer.authorization(method, path, params, signed)
        return (f"{url}?{query(params)}" if params else url), sent

    def _bucket_url(self, bucket: str) -> tuple[str, Optional[str]]:
        """The bucket's URL as ``conf.uri`` makes it, and the Host header the SDK sends with
        it where the configuration names an IP (None otherwise): the same for every request
        of the bucket, so made once (a few buckets per client; forgotten past 64)."""
        known = self._buckets.get(bucket)
        if known is None:
            conf = self._conf
            host = (conf._domain or conf.get_host(Bucket=bucket)) if conf._ip is not None \
                else None
            known = (conf.uri(bucket=bucket), host)
            if len(self._buckets) >= 64:
                self._buckets.clear()
            self._buckets[bucket] = known
        return known

    def _session_headers(self) -> dict[str, tuple[str, Any]]:
        """The session's default headers by lower-case name (a new dict each time), read once
        per session: neither the SDK nor this server changes them after it is made."""
        session = self._client._session
        known_session, defaults = self._defaults
        if known_session is not session:
            defaults = {name.lower(): (name, value) for name, value in session.headers.items()}
            self._defaults = (session, defaults)  # one tuple: safe across threads
        return dict(defaults)

    def _route(self, url: str) -> _Route:
        """The adapter's pool for ``url``'s origin, with the environment's proxy and TLS
        settings (read once per origin; again if the SDK replaced its session, as it does
        in a forked child, or the pool was closed)."""
        session = self._client._session
        key = origin(url)
        route = self._routes.get(key)
        if route is None or route.session is not session or route.pool.pool is None:
            https = key.startswith("https:")
            settings = session.merge_environment_settings(
                url, self._conf._proxies or {}, None,
                self._conf._verify_ssl if https else None,
                self._conf._ssl_cert if https else None)
            request = PreparedRequest()
            request.url = url
            adapter = session.get_adapter(url)
            pool = adapter.get_connection_with_tls_context(
                request, settings["verify"], proxies=settings["proxies"],
                cert=settings["cert"])
            adapter.cert_verify(pool, url, settings["verify"], settings["cert"])
            proxied = adapter.request_url(request, settings["proxies"]) != request.path_url
            route = _Route(session, pool, settings, proxied)
            self._routes[key] = route
        return route

    def _urlopen(self, route: _Route, method: str, url: str, headers: dict[str, str],
                 body: Optional[bytes]) -> urllib3.BaseHTTPResponse:
        """Send through urllib3 as the ``requests`` adapter would (a proxy's absolute URL,
        urllib3's retry setting); the answer's body is not read."""
        request = PreparedRequest()
        request.url = url
        adapter = route.session.get_adapter(url)
        return route.pool.urlopen(
            method, adapter.request_url(request, route.settings["proxies"]), body=body,
            headers={name: utf8(value) for name, value in headers.items()},  # UTF-8, as the SDK
            redirect=False, assert_same_host=False, preload_content=False,
            decode_content=False, retries=adapter.max_retries, timeout=self._timeout,
            chunked=False)

    def _request(self, route: _Route, method: str, url: str, headers: dict[str, str],
                 body: Optional[bytes], stream: bool = False) -> _InFlight:
        """Write one request on a connection of the route's pool (opened, TLS included, by
        urllib3 as for any of its requests); its answer is read by the returned
        :class:`_InFlight`, here rather than by urllib3's and http.client's request and
        response objects, which around a small request cost more CPU than the rest of it
        (docs/performance.md, "Issue 21: CPU per small file")."""
        head = request_head(method, url, headers, body is not None)
        # urllib3's own pool: a connection found dropped is replaced, at most maxsize kept.
        conn = route.pool._get_conn()
        try:
            if conn.is_closed:
                conn.timeout = self._seconds  # the connect's, as urlopen sets it
                conn.connect()  # urllib3's: TLS, certificate checks, as configured
            conn.sock.settimeout(self._seconds)
            if body and len(body) > _JOINED_BODY_MAX:
                conn.sock.sendall(head)
                conn.sock.sendall(body)
            else:
                conn.sock.sendall(head + (body or b""))
        except BaseException:
            conn.close()
            route.pool._put_conn(None)
            raise
        return _InFlight(route.pool, conn, method, stream)


class _InFlight:
    """A request written on a pooled connection, its answer not read yet. The connection
    goes back to the pool once the answer is read (or closed, if it cannot carry another
    request), and is closed by :meth:`drop`."""

    def __init__(self, pool: urllib3.HTTPConnectionPool, conn: Any, method: str,
                 stream: bool = False) -> None:
        self._pool, self._conn, self._method = pool, conn, method
        self._stream = stream  # a body below 400 is read later, as a StreamedBody

    def arrived(self) -> bool:
        """Whether bytes of the answer (or the connection's end) are there to read; a
        connection closed under it (its pool closed) has nothing more to wait for."""
        sock = self._conn.sock
        return sock is None or wait_for_read(sock, timeout=0)

    def read(self, keep_alive: bool) -> Answer:
        conn, self._conn = self._conn, None
        reader = conn.sock.makefile("rb")
        try:
            status, headers, reusable = read_head(reader)
            reusable = reusable and keep_alive  # not if the request said Connection: close
            if self._stream and status < 400:
                return Answer(status, headers, b"", StreamedBody(
                    self._pool, conn, reader, framed_length(headers), reusable))
            answer, framed = read_body(reader, self._method, status, headers)
        except BaseException:
            reader.close()
            conn.close()
            self._pool._put_conn(None)
            raise
        reader.close()
        reusable = reusable and framed
        if not reusable:
            conn.close()
        self._pool._put_conn(conn if reusable else None)
        return answer

    def drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            self._pool._put_conn(None)


class Sent:
    """A request of :meth:`Sender.start`: its answer read by :meth:`answer` (once), or the
    request given up by :meth:`drop` (its connection closed: the answer is not waited for).
    One thread at a time."""

    def __init__(self, method: str, url: str, answer: Optional[Answer],
                 in_flight: Optional[_InFlight] = None, keep_alive: bool = True) -> None:
        self._method, self._url = method, url
        self._answer, self._in_flight, self._keep_alive = answer, in_flight, keep_alive

    def arrived(self) -> bool:
        """Whether :meth:`answer` would return (or raise) without waiting for COS."""
        return self._in_flight is None or self._in_flight.arrived()

    def answer(self) -> Answer:
        """The answer; ``CosServiceError`` for one of 400 or more, ``CosClientError`` if it
        could not be read (or the request was dropped)."""
        if self._in_flight is not None:
            in_flight, self._in_flight = self._in_flight, None
            try:
                self._answer = in_flight.read(self._keep_alive)
            except Exception as exc:  # send_request turns every exception into this one
                raise CosClientError(str(exc)) from exc
        answer = self._answer
        if answer is None:
            raise CosClientError(f"{self._method} {self._url}: the request was given up")
        if answer.status >= 400:
            raise _service_error(self._method, self._url, answer)
        return answer

    def drop(self) -> None:
        """Give the request up: its connection, if the answer is still unread, is closed."""
        if self._in_flight is not None:
            self._in_flight.drop()
            self._in_flight = None


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
