"""The emulator's HTTP server: HTTP/1.1 with connections kept alive between requests, as
COS serves them.

werkzeug's development server, which served the emulator before, answers every request with
``Connection: close`` (and after each answer reads whatever the client sends in the next
10 ms, which would swallow the next request of a kept connection), so every COS request of
the gateway and of the direct SDK paid a TCP connection of its own. COS answers HTTP/1.1
with ``Connection: keep-alive`` (its common response headers) and its SDKs pool connections
(cos-java-sdk drops one after 60 s idle). This server keeps each connection for as long as
the client does, within bounds: at most ``max_connections`` at once, one thread each (more
wait in the listen backlog); once ``keep_alive_limit`` are open, answers say
``Connection: close``; a connection idle for ``idle_timeout`` seconds is closed.

It serves any WSGI application; the stdlib's ``BaseHTTPRequestHandler`` reads the request
line and headers (as it did under werkzeug), this module runs the application and writes
its answer. What the application leaves unread of a request body is read and dropped after
the answer, so the next request on the connection starts where it should.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable, Optional
from urllib.parse import unquote, urlsplit

from werkzeug.serving import DechunkedInput
from werkzeug.wsgi import LimitedStream

log = logging.getLogger(__name__)

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]
# An answer's head and a body up to this size go out in one send.
_JOINED_BODY_MAX = 64 * 1024
_NO_BODY_STATUSES = (204, 304)
# A request's header fields: at most this many, each line at most this long (http.client's).
_MAX_HEADERS = 100
_MAX_LINE = 65536


@dataclass(frozen=True)
class Limits:
    """How many connections the server holds, and for how long (see the module's doc)."""

    max_connections: int = 256
    keep_alive_limit: int = 128
    idle_timeout: float = 60.0


DEFAULT_LIMITS = Limits()


class _DateHeader:
    """The ``Date`` header's value (RFC 7231's IMF-fixdate, whole seconds), formatted once
    per second: ``email.utils.formatdate`` was 11 µs of every answer, some 3-5 % of the
    emulator's CPU per small request (docs/performance.md)."""

    def __init__(self) -> None:
        self._known: tuple[int, str] = (-1, "")  # one tuple: read and replaced whole

    def now(self) -> str:
        second = int(time.time())
        known = self._known
        if known[0] != second:
            known = self._known = (second, email.utils.formatdate(second, usegmt=True))
        return known[1]


_DATE = _DateHeader()


def _latin1(text: str) -> str:
    """A str as WSGI carries it: its UTF-8 bytes read as latin-1 (PEP 3333)."""
    return text.encode("utf-8", "surrogateescape").decode("latin-1")


class _Answer:
    """The WSGI ``start_response`` and ``write`` of one request, writing to its connection."""

    def __init__(self, handler: _Handler) -> None:
        self._handler = handler
        self._head: Optional[tuple[str, list[tuple[str, str]]]] = None
        self.sent = False
        self._chunked = False

    def start(self, status: str, headers: list[tuple[str, str]],
              exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info is not None and self.sent:
            raise exc_info[1].with_traceback(exc_info[2])
        self._head = (status, headers)
        return self.write

    def write(self, data: bytes) -> None:
        if not self.sent:
            self._send_head(data)
        elif self._chunked and data:
            self._handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        elif data:
            self._handler.wfile.write(data)

    def finish(self) -> None:
        if not self.sent:
            self._send_head(b"")
        if self._chunked:
            self._handler.wfile.write(b"0\r\n\r\n")

    def _send_head(self, first: bytes) -> None:
        if self._head is None:
            raise RuntimeError("the application wrote before start_response")
        handler = self._handler
        status, headers = self._head
        log.info("%s %r %s", handler.command, handler.path, status)
        code = int(status.split()[0])
        names = {name.lower() for name, _ in headers}
        bodiless = handler.command == "HEAD" or code < 200 or code in _NO_BODY_STATUSES
        self._chunked = "content-length" not in names and not bodiless
        keep = not handler.close_connection and handler.server.may_keep_alive()
        handler.close_connection = not keep
        lines = [f"HTTP/1.1 {status}", *(f"{name}: {value}" for name, value in headers),
                 f"Date: {_DATE.now()}", "Server: tencent-cos",
                 f"Connection: {'keep-alive' if keep else 'close'}"]
        if self._chunked:
            lines.append("Transfer-Encoding: chunked")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.sent = True
        if self._chunked and first:
            first = b"%x\r\n%s\r\n" % (len(first), first)
        if len(first) <= _JOINED_BODY_MAX:
            handler.wfile.write(head + first)
        else:  # no copy of a large body to join it to the head
            handler.wfile.write(head)
            handler.wfile.write(first)


class _Handler(BaseHTTPRequestHandler):
    """One connection: its requests one after the other, each answered by the app."""

    protocol_version = "HTTP/1.1"
    # An answer's head and body are two writes when the body is large: without TCP_NODELAY
    # the body's last segment could wait for the client's delayed ACK of the head.
    disable_nagle_algorithm = True
    server: KeepAliveServer

    def setup(self) -> None:
        # The socket's timeout: how long a kept connection may wait for its next request
        # (and, within a request, for the client's next bytes).
        self.timeout = self.server.limits.idle_timeout
        super().setup()

    def handle_one_request(self) -> None:
        try:
            self.raw_requestline = self.rfile.readline(65537)
        except (socket.timeout, ConnectionError):
            self.close_connection = True  # idle too long, or gone
            return
        if not self.raw_requestline:
            self.close_connection = True
            return
        if len(self.raw_requestline) > 65536:
            self.send_error(414)
            return
        if self.parse_request():  # on a malformed request it answers, and closes
            self._run_app()

    def parse_request(self) -> bool:
        """Read the request line and header fields into ``command``, ``path``,
        ``request_version`` and ``headers``; say whether the connection stays open after the
        answer, and answer ``Expect: 100-continue``. False after answering a malformed
        request (the connection then closes).

        The stdlib's parse_request runs the header fields through the email parser, a tenth
        of the emulator's CPU per request, which counts against whichever side of a bench
        row sends more requests: fields are split at their colon here."""
        # HTTP/1.1 until the request line says otherwise: an error answer then has a status
        # line (the stdlib's default, HTTP/0.9, would send a bare page).
        self.command, self.request_version, self.close_connection = None, "HTTP/1.1", True
        self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = self.requestline.split()
        if not words:
            return False  # a blank line: nothing to answer
        if len(words) != 3 or not words[2].startswith("HTTP/"):
            self.send_error(HTTPStatus.BAD_REQUEST, "Bad request syntax")
            return False
        if words[2] not in ("HTTP/1.0", "HTTP/1.1"):
            self.send_error(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED)
            return False
        self.command, self.path, self.request_version = words
        fields = self._header_fields()
        if fields is None:
            return False
        self.headers = _RequestHeaders(fields)  # type: ignore[assignment]
        connection = self.headers.get("Connection", "").lower()
        self.close_connection = connection == "close" or (
            self.request_version == "HTTP/1.0" and connection != "keep-alive")
        if self.request_version == "HTTP/1.1" and \
                self.headers.get("Expect", "").lower() == "100-continue":
            return self.handle_expect_100()
        return True

    def _header_fields(self) -> Optional[list[tuple[str, str]]]:
        """The request's header fields, up to the blank line; None after answering 400 or
        431 (a line that is no field, too many fields, a line too long)."""
        fields: list[tuple[str, str]] = []
        while True:
            line = self.rfile.readline(_MAX_LINE + 1)
            if len(line) > _MAX_LINE:
                self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Line too long")
                return None
            if line in (b"\r\n", b"\n", b""):
                return fields
            if len(fields) == _MAX_HEADERS:
                self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Too many headers")
                return None
            name, colon, value = line.decode("iso-8859-1").partition(":")
            if not colon or not name or name != name.strip():  # folded lines are obsolete
                self.send_error(HTTPStatus.BAD_REQUEST, "Bad header field")
                return None
            fields.append((name, value.strip()))

    def _run_app(self) -> None:
        environ = self._environ()
        answer = _Answer(self)
        try:
            result = self.server.app(environ, answer.start)
            try:
                for data in result:
                    answer.write(data)
                answer.finish()
            finally:
                if hasattr(result, "close"):
                    result.close()
        except ConnectionError:
            self.close_connection = True  # the client went away, or a reset the app made
            return
        except Exception:
            log.exception("%s %r failed", self.command, self.path)
            self.close_connection = True
            if not answer.sent:
                self.send_error(500)
            return
        if not self.close_connection:
            _drain(environ["wsgi.input"])

    def _environ(self) -> dict:
        path, query = _target(self.path)
        environ: dict[str, Any] = {
            "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.errors": self.server.errors,
            "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
            "SERVER_SOFTWARE": "tencent-cos", "REQUEST_METHOD": self.command,
            # The path's bytes (PEP 3333): an escape that is no UTF-8 stays its byte.
            "SCRIPT_NAME": "", "PATH_INFO": _latin1(unquote(path, errors="surrogateescape")),
            "QUERY_STRING": _latin1(query),
            # The path as it arrived, which moto matches keys against (werkzeug sets both).
            "REQUEST_URI": _latin1(self.path), "RAW_URI": _latin1(self.path),
            "REMOTE_ADDR": self.client_address[0], "REMOTE_PORT": self.client_address[1],
            "SERVER_NAME": self.server.server_address[0],
            "SERVER_PORT": str(self.server.server_address[1]),
            "SERVER_PROTOCOL": self.request_version,
        }
        for name, value in self.headers.items():
            if "_" in name:
                continue  # as werkzeug: a header spelled with "_" could pose as another
            key = name.upper().replace("-", "_")
            if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                key = "HTTP_" + key
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            environ["wsgi.input"] = DechunkedInput(self.rfile)
            environ["wsgi.input_terminated"] = True
        else:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            environ["wsgi.input"] = LimitedStream(self.rfile, length)
        return environ

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s: " + format, self.client_address[0], *args)


def _target(target: str) -> tuple[str, str]:
    """The path and query of a request line's target, the path exactly as sent (still
    URL-encoded). Why not ``urlsplit``: it reads a path starting with ``//`` as a host
    (``//a/b``: host ``a``, path ``/b``), where COS reads the key ``/a/b`` (the SDK sends a
    Key ``//a/b`` so, dropping one ``/``). Only a target with a scheme (the absolute form
    of RFC 9112 3.2.2, which proxies send) names a host."""
    if target.startswith("/"):
        path, _, query = target.partition("?")
        return path, query
    url = urlsplit(target)
    return url.path, url.query


class _RequestHeaders:
    """A request's header fields in the order they came; ``get`` finds the first of a name
    whatever its case, as the stdlib's message does."""

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        self._fields = fields
        self._first: dict[str, str] = {}
        for name, value in fields:
            self._first.setdefault(name.lower(), value)

    def items(self) -> list[tuple[str, str]]:
        return list(self._fields)

    def get(self, name: str, default: Any = None) -> Any:
        return self._first.get(name.lower(), default)


def _drain(body: Any) -> None:
    """Read what the application left of a request body."""
    if isinstance(body, LimitedStream):
        body.exhaust()
    else:
        while body.read(65536):
            pass


class KeepAliveServer(socketserver.ThreadingTCPServer):
    """Serve ``app`` on ``(host, port)`` with the :class:`Limits` given; ``accepted`` is
    called once per TCP connection accepted."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: WSGIApp, limits: Limits = DEFAULT_LIMITS,
                 accepted: Callable[[], None] = lambda: None) -> None:
        self.app, self.limits, self._accepted = app, limits, accepted
        self.errors = _LogStream()
        self._slots = threading.BoundedSemaphore(limits.max_connections)
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        super().__init__(address, _Handler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def may_keep_alive(self) -> bool:
        """Whether connections are few enough to keep this one after its answer."""
        with self._lock:
            return len(self._open) <= self.limits.keep_alive_limit

    def process_request(self, request: Any, client_address: Any) -> None:
        self._slots.acquire()  # at most max_connections threads; the backlog holds the rest
        with self._lock:
            self._open.add(request)
        self._accepted()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request)

    def _release(self, request: Any) -> None:
        with self._lock:
            self._open.discard(request)
        self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """What a connection's thread raised: a client that reset or let time out its
        connection mid-request (a COS client giving up) is no error of the emulator; the
        rest goes to this module's log. socketserver printed both to stderr, where a test
        run shows them between its results."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            log.debug("connection from %s ended mid-request: %r", client_address, error)
            return
        log.exception("connection from %s failed", client_address)

    def close_connections(self) -> None:
        """End every open connection (their threads then finish): on stop, kept
        connections would otherwise wait out their idle timeout."""
        with self._lock:
            connections = list(self._open)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by its thread
                connection.shutdown(socket.SHUT_RDWR)


class _LogStream:
    """``wsgi.errors``: what the application writes there goes to this module's log."""

    def write(self, text: str) -> None:
        if text.strip():
            log.warning("%s", text.rstrip())

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pass
