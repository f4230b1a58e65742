"""HTTP/1.1 as COS requests and answers are written and read on a kept-alive connection:
a request's head (refused where a header could be forged, as http.client refuses it) and an
answer's status, headers and body, read here rather than by urllib3's and http.client's
request and response objects, which around a small request cost more CPU than the rest of
it (docs/performance.md, "Issue 21: CPU per small file")."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import urlsplit

import urllib3
from urllib3 import HTTPHeaderDict

# What an answer's head may hold, as http.client bounds it.
_MAX_LINE = 65_536
_MAX_HEADERS = 100
# Header names as HTTP defines them; a value with a line break could smuggle a header in.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BREAKS = re.compile(r"[\r\n\0]")


@dataclass
class Answer:
    """What COS answered: the status, the headers (any case), and the body (``data``), or
    the undrained response to read it from when ``stream`` was asked for (``raw``)."""

    status: int
    headers: Any
    data: bytes
    raw: Optional[urllib3.BaseHTTPResponse] = None


def request_head(method: str, url: str, headers: dict[str, Any],
                 has_body: bool) -> bytes:
    """The head of a request for the absolute ``url``: its request line, a Host header
    where ``headers`` has none (as http.client writes it), ``headers`` (values sent as
    UTF-8, as the SDK sends them), and ``Content-Length: 0`` for a PUT, POST or PATCH
    without a body (as urllib3 sends one); ``ValueError`` if a header could be forged."""
    base = origin(url)
    lines = [f"{method} {url[len(base):] or '/'} HTTP/1.1"]
    if not any(name.lower() == "host" for name in headers):
        lines.append(f"Host: {_host_header(urlsplit(base))}")
    lines += [f"{name}: {_text(value)}" for name, value in headers.items()]
    if not has_body and method in ("PUT", "POST", "PATCH"):
        lines.append("Content-Length: 0")
    return _joined_head(lines)


def _text(value: Any) -> str:
    """A header value as sent: the SDK sends them as UTF-8."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def origin(url: str) -> str:
    """``scheme://host[:port]`` of an absolute URL."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0].split('?', 1)[0]}"


def _host_header(parts: Any) -> str:
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    default = 443 if parts.scheme == "https" else 80
    return host if parts.port in (None, default) else f"{host}:{parts.port}"


def _joined_head(lines: list[str]) -> bytes:
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


def read_head(reader: Any) -> tuple[int, HTTPHeaderDict, bool]:
    """The status and headers of an answer (past interim 1xx ones), and whether the
    connection may carry another request once its body is read."""
    while True:
        version, status = _status_line(reader)
        headers = _header_lines(reader)
        if not 100 <= status < 200:
            break
    tokens = {token.strip().lower() for token in headers.get("connection", "").split(",")}
    return status, headers, version == "HTTP/1.1" and "close" not in tokens


def read_body(reader: Any, method: str, status: int, headers: HTTPHeaderDict
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


def framed_length(headers: HTTPHeaderDict) -> int:
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
