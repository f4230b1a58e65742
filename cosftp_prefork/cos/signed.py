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

import contextlib
import functools
import hashlib
import hmac
import os
import re
import socket
import threading
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from typing import Any, Callable, Optional
from urllib.parse import quote, quote_plus, urlsplit

import urllib3
from qcloud_cos import CosS3Client
from qcloud_cos.cos_auth import filter_headers
from qcloud_cos.cos_exception import CosClientError, CosServiceError
from qcloud_cos.version import __version__ as SDK_VERSION
from requests import PreparedRequest
from requests.structures import CaseInsensitiveDict
from urllib3 import HTTPHeaderDict
from urllib3.util.wait import wait_for_read

# The SDK's timeout when the configuration names none (send_request's default).
_SDK_TIMEOUT = 30
# The SDK signs for 10,000 s from 60 s before now (CosS3Auth's ``expire``).
_SDK_EXPIRE = 10_000
_SDK_LEAD = 60
# What an answer's head may hold, as http.client bounds it.
_MAX_LINE = 65_536
_MAX_HEADERS = 100
# Header names as HTTP defines them; a value with a line break could smuggle a header in.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BREAKS = re.compile(r"[\r\n\0]")
# A request body up to this size goes out in one send with the head.
_JOINED_BODY_MAX = 64 * 1024


@dataclass
class Answer:
    """What COS answered: the status, the headers (any case), and the body (``data``), or
    the undrained response to read it from when ``stream`` was asked for (``raw``)."""

    status: int
    headers: Any
    data: bytes
    raw: Optional[urllib3.BaseHTTPResponse] = None


class Signer:
    """The ``Authorization`` header the SDK's ``CosS3Auth`` writes, for the credentials of
    one SDK configuration.

    COS lets a signing key serve a whole key-time window (``q-key-time``; the SDK signs
    with ``q-sign-time`` equal to it). ``CosS3Auth`` starts a window at every request (60 s
    before now, for 10,000 s), so it derives the key anew each time; here one window serves
    ``WINDOW`` seconds of requests (it still starts at least 60 s before each and ends at
    least 10,000 - ``WINDOW`` s after) and its key is derived once. Equal to ``CosS3Auth``'s
    header for the same window (``tests/test_signed.py`` compares them).
    """

    WINDOW = 600

    def __init__(self, conf: Any) -> None:
        self._conf = conf
        self._known: tuple[str, str, str] = ("", "", "")  # secret key, key time, signing key

    def key_time(self, now: float) -> str:
        """The key-time window that serves a request made at ``now``."""
        opened = int(now) - int(now) % self.WINDOW
        return f"{opened - _SDK_LEAD};{opened + _SDK_EXPIRE}"

    def authorization(self, method: str, path: str, params: dict, headers: Any,
                      key_time: Optional[str] = None) -> str:
        """Sign a request for ``path`` (the key, not URL-encoded, or "/") with ``params``
        and ``headers`` (the ones it sends; ``host`` among them when signed)."""
        conf = self._conf
        if conf._anonymous:
            return ""
        # As CosS3Auth reads them, at each request: a credential provider may refresh them.
        credential = None if conf._secret_id and conf._secret_key else \
            getattr(conf, "_credential_inst", None)
        secret_id = conf._secret_id or (credential.secret_id if credential else None)
        secret_key = conf._secret_key or (credential.secret_key if credential else None)
        key_time = key_time or self.key_time(time.time())
        signed_headers = _signed_headers(headers)
        signed_params = _encoded(params if conf._sign_params else {})
        text = "\n".join((method.lower(), path, _joined(signed_params),
                          _joined(signed_headers), ""))
        digest = hashlib.sha1(text.encode("utf-8")).hexdigest()
        string_to_sign = f"sha1\n{key_time}\n{digest}\n"
        signature = hmac.digest(self._signing_key(secret_key, key_time).encode(),
                                string_to_sign.encode(), "sha1").hex()
        return (f"q-sign-algorithm=sha1&q-ak={secret_id}&q-sign-time={key_time}"
                f"&q-key-time={key_time}&q-header-list={';'.join(sorted(signed_headers))}"
                f"&q-url-param-list={';'.join(sorted(signed_params))}&q-signature={signature}")

    def _signing_key(self, secret_key: str, key_time: str) -> str:
        known_secret, known_time, known_key = self._known
        if (known_secret, known_time) != (secret_key, key_time):
            known_key = hmac.new(_utf8(secret_key), key_time.encode(), hashlib.sha1).hexdigest()
            self._known = (secret_key, key_time, known_key)  # one tuple: safe across threads
        return known_key


def _utf8(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def _text(value: Any) -> str:
    """A header value as sent: the SDK sends them as UTF-8."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# The same few header and parameter names come with every request: each name's quoting
# (and whether the SDK's filter signs a header) is remembered rather than redone.
@functools.lru_cache(maxsize=1024)
def _encoded_name(name: Any) -> str:
    return quote(_utf8(name), "-_.~").lower()


@functools.lru_cache(maxsize=1024)
def _signed_name(name: Any) -> Optional[str]:
    """The name of a header as ``CosS3Auth`` signs it, None if its filter leaves that
    header unsigned."""
    return _encoded_name(name) if filter_headers({name: ""}) else None


@functools.lru_cache(maxsize=1024)
def _query_name(name: str) -> str:
    return quote_plus(name)


def _signed_headers(headers: Any) -> dict[str, str]:
    """:func:`_encoded` of the headers ``CosS3Auth``'s filter signs."""
    signed = {}
    for name, value in headers.items():
        signed_name = _signed_name(name)
        if signed_name is not None:
            signed[signed_name] = quote(_utf8(value), "-_.~")
    return signed


def _encoded(pairs: Any) -> dict[str, str]:
    """Names (lower case) and values URL-encoded as ``CosS3Auth`` signs them."""
    return {_encoded_name(name): quote(_utf8(value), "-_.~") for name, value in pairs.items()}


def _query(params: dict[str, Any]) -> str:
    """``urlencode(params)`` (names are strings here)."""
    return "&".join(f"{_query_name(name)}="
                    f"{quote_plus(value if isinstance(value, bytes) else str(value))}"
                    for name, value in params.items())


def _joined(pairs: dict[str, str]) -> str:
    return "&".join(f"{name}={value}" for name, value in sorted(pairs.items()))


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
            url += _quoted_path(key)
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
        return (f"{url}?{_query(params)}" if params else url), sent

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
        origin = _origin(url)
        route = self._routes.get(origin)
        if route is None or route.session is not session or route.pool.pool is None:
            https = origin.startswith("https:")
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
            self._routes[origin] = route
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
            headers={name: _utf8(value) for name, value in headers.items()},  # UTF-8, as the SDK
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
        origin = _origin(url)
        lines = [f"{method} {url[len(origin):] or '/'} HTTP/1.1"]
        if not any(name.lower() == "host" for name in headers):  # as http.client writes it
            lines.append(f"Host: {_host_header(urlsplit(origin))}")
        lines += [f"{name}: {_text(value)}" for name, value in headers.items()]
        if body is None and method in ("PUT", "POST", "PATCH"):
            lines.append("Content-Length: 0")  # as urllib3 sends a request without a body
        head = _request_head(lines)
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
            status, headers, reusable = _read_head(reader)
            reusable = reusable and keep_alive  # not if the request said Connection: close
            if self._stream and status < 400:
                return Answer(status, headers, b"", StreamedBody(
                    self._pool, conn, reader, _framed_length(headers), reusable))
            answer, framed = _read_body(reader, self._method, status, headers)
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


class SocketBody:
    """The rest of a streamed answer's body, framed by Content-Length and read from a plain
    TCP socket, for a caller that moves it in the kernel (``splice(2)`` into a pipe) instead
    of reading it into memory. :func:`socket_body` makes one from a streamed answer.

    The bytes the answer's reader had buffered with the head go into the pipe first. A body
    that ends before its Content-Length raises ``ConnectionError``; one from which no byte
    arrives within the answer's timeout, ``TimeoutError``.
    """

    def __init__(self, release: Callable[[bool], None], sock: socket.socket,
                 buffered: bytes, remaining: int) -> None:
        self._release = release  # gives the connection back: True once the whole body went
        self._sock = sock
        self._buffered = memoryview(buffered)  # the first of the ``remaining`` bytes
        self.remaining = remaining  # bytes of the body not yet in a pipe
        self._timeout = sock.gettimeout()

    def splice_into(self, pipe: int, size: int) -> int:
        """Move up to ``size`` bytes of the body into the pipe ``pipe`` (which has room
        for them); return how many, 0 at the end of the body."""
        size = min(size, self.remaining)
        if not size:
            return 0
        if self._buffered:
            moved = os.write(pipe, self._buffered[:size])
            self._buffered = self._buffered[moved:]
        else:
            moved = self._splice(pipe, size)
        self.remaining -= moved
        return moved

    def _splice(self, pipe: int, size: int) -> int:
        while True:
            try:
                moved = os.splice(self._sock.fileno(), pipe, size,
                                  flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
            except BlockingIOError:
                if not wait_for_read(self._sock, timeout=self._timeout):
                    raise TimeoutError(f"COS sent nothing for {self._timeout} s") from None
                continue
            if not moved:
                raise ConnectionError(f"COS answer cut short: {self.remaining} bytes missing")
            return moved

    def close(self) -> None:
        """Give the connection back to its pool: ready for the next request once the whole
        body went, else closed."""
        self._release(not self.remaining)


def _response_release(response: urllib3.BaseHTTPResponse) -> Callable[[bool], None]:
    """How a :class:`SocketBody` of urllib3's ``response`` gives its connection back."""
    def release(whole: bool) -> None:
        if whole:  # http.client's answer closed, as it closes itself after a read to the end
            response._fp.close()  # the answer, not the connection
            response.release_conn()
        response.close()
        response.release_conn()  # a closed connection: the pool opens a new one for it
    return release


class StreamedBody:
    """The body of a streamed GET's answer (status below 400, ``Sender.start(stream=True)``)
    written and read on a pooled connection here, as the small requests' answers are, not
    through urllib3's ``urlopen`` and http.client's response (a quarter of the worker's CPU
    per small RETR, docs/performance.md): read by :meth:`read` or :meth:`readinto`, or
    moved into a pipe by the :class:`SocketBody` of :meth:`socket_body`. The connection goes
    back to the pool once the whole body was read, and is closed if the body is given up
    before (:meth:`close`, which may come from another thread while one reads: it shuts the
    connection down first, so that a read waiting for COS returns at once)."""

    def __init__(self, pool: urllib3.HTTPConnectionPool, conn: Any, reader: Any, length: int,
                 reusable: bool) -> None:
        self._pool, self._conn, self._reader = pool, conn, reader
        self.remaining = length  # bytes of the body not read yet
        self._reusable = reusable
        self._lock = threading.Lock()  # the connection is given back once

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes (fewer only at the end), ``b""`` at the end;
        ``ConnectionError`` if the connection ends first."""
        data = self._reader.read(min(size, self.remaining)) if self.remaining else b""
        self._count(len(data))
        return data

    def readinto(self, buffer: memoryview) -> int:
        """Read into ``buffer``; how many bytes, 0 at the end."""
        count = self._reader.readinto(buffer[:self.remaining]) if self.remaining else 0
        self._count(count or 0)
        return count or 0

    def socket_body(self) -> Optional[SocketBody]:
        """The rest of the body as a :class:`SocketBody`, or None (see :func:`socket_body`)."""
        sock = self._conn.sock if self._conn is not None else None
        if not SPLICEABLE or type(sock) is not socket.socket:
            return None
        buffered = self._reader.read1(min(self.remaining, 64 * 1024)) if self.remaining else b""
        self.remaining -= len(buffered)
        return SocketBody(self._release, sock, buffered, self.remaining + len(buffered))

    def close(self) -> None:
        self._release(not self.remaining)

    def _count(self, count: int) -> None:
        if not count and self.remaining:
            raise ConnectionError(f"COS answer cut short: {self.remaining} bytes missing")
        self.remaining -= count
        if not self.remaining:
            self._release(True)

    def _release(self, whole: bool) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is None:
            return
        if not whole and conn.sock is not None:
            with contextlib.suppress(OSError):  # a read blocked in another thread returns
                conn.sock.shutdown(socket.SHUT_RDWR)
        self._reader.close()
        if not (whole and self._reusable):
            conn.close()
        self._pool._put_conn(conn if whole and self._reusable else None)


# Linux, Python 3.10 and later (os.splice, fcntl.F_SETPIPE_SZ came together): else copied.
SPLICEABLE = hasattr(os, "splice")


def body_into(response: urllib3.BaseHTTPResponse, buffer: memoryview) -> int:
    """Read the next bytes of a streamed answer's body into ``buffer``; how many, 0 at its
    end (or where the connection ended: the caller knows the size it expects). Through
    http.client's ``readinto``, which fills ``buffer`` from the socket: urllib3's ``read``
    makes a new bytes object per read, which cost a relay 10-20 % more CPU per GiB
    (docs/performance.md). At the end the connection goes back to the pool, as urllib3's
    ``read`` gives it back."""
    if isinstance(response, StreamedBody):
        return response.readinto(buffer)
    answer = response._fp  # http.client's response under urllib3's
    count = answer.readinto(buffer)
    if answer.isclosed():
        response.release_conn()
    return count


def socket_body(response: urllib3.BaseHTTPResponse) -> Optional[SocketBody]:
    """The body of a streamed answer (``Sender.start(stream=True)``) not read yet, as a
    :class:`SocketBody`; None when it cannot be spliced: TLS (the bytes on the socket are
    ciphertext), a body not framed by Content-Length, or no ``splice`` on this system.
    After this, the body is read only through the :class:`SocketBody`."""
    if isinstance(response, StreamedBody):
        return response.socket_body()
    answer = getattr(response, "_fp", None)  # http.client's response under urllib3's
    conn = response.connection
    sock = getattr(conn, "sock", None)
    if not SPLICEABLE or type(sock) is not socket.socket or answer is None or \
            getattr(answer, "chunked", True) or getattr(answer, "length", None) is None or \
            answer.fp is None:
        return None
    remaining = answer.length
    # What http.client's reader holds past the head: read1 returns it without reading the
    # socket (or, with nothing buffered, reads once from it: bytes the body sends anyway).
    buffered = answer.fp.read1(min(remaining, 64 * 1024)) if remaining else b""
    return SocketBody(_response_release(response), sock, buffered, remaining)


def _quoted_path(key: str) -> str:
    """``key`` as ``CosConfig.uri`` writes it after the bucket's URL."""
    path = key[1:] if key.startswith("/") else key
    return quote(path.encode("utf-8"), "/-_.~").replace("./", ".%2F")


def _origin(url: str) -> str:
    """``scheme://host[:port]`` of an absolute URL."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0].split('?', 1)[0]}"


def _host_header(parts: Any) -> str:
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    default = 443 if parts.scheme == "https" else 80
    return host if parts.port in (None, default) else f"{host}:{parts.port}"


def _request_head(lines: list[str]) -> bytes:
    """The request line and headers, refused if a header could be forged (a name that is
    no token, a line break anywhere), as http.client refuses them."""
    head = "\r\n".join(lines)
    # The joins are the head's only CR and LF unless a line holds one: counted in the whole
    # head rather than searched line by line (4 us less per request, docs/performance.md).
    breaks = len(lines) - 1
    if head.count("\r") != breaks or head.count("\n") != breaks or "\0" in head:
        for line in lines:
            if _BREAKS.search(line):
                raise ValueError(f"Invalid header: it holds a line break: {line[:80]!r}")
    for line in lines[1:]:
        name = line.partition(":")[0]
        if not _is_token(name):
            raise ValueError(f"Invalid header name {name[:80]!r}")
    return (head + "\r\n\r\n").encode("utf-8")


@functools.lru_cache(maxsize=1024)
def _is_token(name: str) -> bool:
    """Whether a header name is a token (the same few names come with every request)."""
    return _TOKEN.fullmatch(name) is not None


def _read_head(reader: Any) -> tuple[int, HTTPHeaderDict, bool]:
    """The status and headers of an answer (past interim 1xx ones), and whether the
    connection may carry another request once its body is read."""
    while True:
        version, status = _status_line(reader)
        headers = _header_lines(reader)
        if not 100 <= status < 200:
            break
    tokens = {token.strip().lower() for token in headers.get("connection", "").split(",")}
    return status, headers, version == "HTTP/1.1" and "close" not in tokens


def _read_body(reader: Any, method: str, status: int, headers: HTTPHeaderDict
               ) -> tuple[Answer, bool]:
    """The answer with its whole body, and whether the body had an end of its own (else the
    connection's end was it)."""
    if method == "HEAD" or status in (204, 304):
        return Answer(status, headers, b""), True
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return Answer(status, headers, _chunked(reader)), True
    length = headers.get("content-length")
    if length is None:  # the body ends with the connection
        return Answer(status, headers, reader.read()), False
    size = int(length)
    data = reader.read(size)
    if len(data) != size:
        raise ConnectionError(f"COS answer cut short: {len(data)} of {size} bytes")
    return Answer(status, headers, data), True


def _framed_length(headers: HTTPHeaderDict) -> int:
    """The Content-Length of a streamed answer's body. COS frames every GET Object answer
    so; one in chunks or ended by the connection is refused (read whole, it could be any
    size)."""
    length = headers.get("content-length")
    if length is None or "chunked" in headers.get("transfer-encoding", "").lower() or \
            not length.strip().isdigit():
        raise ConnectionError("COS answered a GET without a Content-Length")
    return int(length)


def _line(reader: Any) -> bytes:
    line = reader.readline(_MAX_LINE + 1)
    if len(line) > _MAX_LINE:
        raise ValueError("COS answered a line longer than 64 KiB")
    return line


def _status_line(reader: Any) -> tuple[str, int]:
    line = _line(reader)
    if not line:
        raise ConnectionError("COS closed the connection before answering")
    version, _, rest = line.decode("latin-1").partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/") or not code.isdigit():
        raise ValueError(f"COS answered no HTTP status line: {line[:80]!r}")
    return version, int(code)


def _header_lines(reader: Any) -> HTTPHeaderDict:
    headers = HTTPHeaderDict()
    for _ in range(_MAX_HEADERS + 1):
        line = _line(reader)
        if line in (b"\r\n", b"\n", b""):
            return headers
        name, _, value = line.decode("latin-1").partition(":")
        headers.add(name.strip(), value.strip())
    raise ValueError(f"COS answered more than {_MAX_HEADERS} headers")


def _chunked(reader: Any) -> bytes:
    chunks = []
    while True:
        size = int(_line(reader).split(b";", 1)[0].strip() or b"x", 16)
        if size == 0:
            while _line(reader) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        chunk = reader.read(size)
        if len(chunk) != size or reader.read(2) != b"\r\n":
            raise ConnectionError("COS answer cut short in a chunk")
        chunks.append(chunk)


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
