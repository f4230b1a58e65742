"""A local COS-compatible endpoint for the demo and the tests: moto's S3 engine behind a shim.

Not storage: everything lives in memory and disappears with the process. The server never
imports this module.

The shim translates what differs between COS and S3 on the wire:

* request headers ``x-cos-*`` become ``x-amz-*`` (copy source, metadata directive, meta-*),
  and response headers ``x-amz-*`` become ``x-cos-*``; every response carries
  ``x-cos-request-id``;
* the COS copy source ``<bucket>.cos.<region>.myqcloud.com/<key>`` becomes ``<bucket>/<key>``;
* parts may be as small as COS allows (1 MiB), not S3's 5 MiB;
* error bodies are rewritten to the COS form (Code, Message, Resource, RequestId, TraceId)
  that the SDK's ``CosServiceError`` parses.

moto takes the bucket from the first label of the ``Host`` header, which the SDK sets to
``<bucket>.cos.<region>.myqcloud.com`` when it is pointed at an IP and port.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import uuid
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable, Sequence
from typing import Any, Callable, Optional
from xml.sax.saxutils import escape

import moto.s3.models
from moto.server import create_backend_app
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.test import Client

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]
DEFAULT_REGION = "ap-guangzhou"
# COS accepts parts of 1 MiB (all but the last); S3, and so moto, insists on 5 MiB.
COS_MIN_PART_SIZE = 1024 * 1024


def _cos_copy_source_to_s3(value: str) -> str:
    """``b-1.cos.ap-x.myqcloud.com/k`` -> ``b-1/k``; an S3-form value passes unchanged."""
    value = value.lstrip("/")
    host, _, key = value.partition("/")
    if ".myqcloud.com" in host or ".tencentcos.cn" in host:
        return f"{host.split('.', 1)[0]}/{key}"
    return value


def _translate_request(environ: dict) -> None:
    for name in [n for n in environ if n.startswith("HTTP_X_COS_")]:
        environ["HTTP_X_AMZ_" + name[len("HTTP_X_COS_"):]] = environ.pop(name)
    if "HTTP_X_AMZ_COPY_SOURCE" in environ:
        environ["HTTP_X_AMZ_COPY_SOURCE"] = _cos_copy_source_to_s3(
            environ["HTTP_X_AMZ_COPY_SOURCE"])


def _translate_headers(headers: list[tuple[str, str]], request_id: str) -> list[tuple[str, str]]:
    out = []
    for name, value in headers:
        if name.lower().startswith("x-amz-"):
            name = "x-cos-" + name[len("x-amz-"):]
        if name.lower() in ("x-cos-request-id", "content-length"):
            continue
        out.append((name, value))
    out.append(("x-cos-request-id", request_id))
    return out


def _cos_error_body(body: bytes, resource: str, request_id: str) -> bytes:
    code, message = "InternalError", ""
    try:
        root = ElementTree.fromstring(body)
        code = root.findtext(".//Code") or code
        message = root.findtext(".//Message") or ""
    except ElementTree.ParseError:
        message = body.decode("utf-8", "replace")[:200]
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error>'
        f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        f"<Resource>{escape(resource)}</Resource><RequestId>{request_id}</RequestId>"
        f"<TraceId>{request_id}</TraceId></Error>"
    ).encode()


class CosShim:
    """WSGI middleware that makes moto's S3 app speak COS."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        _translate_request(environ)
        request_id = uuid.uuid4().hex
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list, exc_info: Any = None) -> Callable:
            captured["status"], captured["headers"] = status, headers
            return lambda data: None

        body = b"".join(self.app(environ, capture))
        status: str = captured["status"]
        if int(status.split()[0]) >= 400 and body and environ["REQUEST_METHOD"] != "HEAD":
            body = _cos_error_body(body, environ.get("PATH_INFO", ""), request_id)
        headers = _translate_headers(captured["headers"], request_id)
        if environ["REQUEST_METHOD"] != "HEAD" or not any(
                n.lower() == "content-length" for n, _ in captured["headers"]):
            headers.append(("Content-Length", str(len(body))))
        else:
            headers += [(n, v) for n, v in captured["headers"] if n.lower() == "content-length"]
        start_response(status, headers)
        return [body] if environ["REQUEST_METHOD"] != "HEAD" else []


def make_app() -> WSGIApp:
    """Return the COS-speaking WSGI app (moto's S3 backend behind :class:`CosShim`)."""
    moto.s3.models.S3_UPLOAD_PART_MIN_SIZE = COS_MIN_PART_SIZE
    return CosShim(create_backend_app("s3"))


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


def cos_host(bucket: str, region: str = DEFAULT_REGION) -> str:
    """The virtual-host name the SDK sends for ``bucket``."""
    return f"{bucket}.cos.{region}.myqcloud.com"


class Emulator:
    """The emulator served from a background thread (``start``/``stop`` or ``with``)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, buckets: Sequence[str] = (),
                 region: str = DEFAULT_REGION, verbose: bool = False) -> None:
        self.host, self.port, self.region = host, port, region
        self.buckets = list(buckets)
        self.app = make_app()
        self._verbose = verbose
        self._server: Optional[BaseWSGIServer] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Emulator:
        handler = WSGIRequestHandler if self._verbose else _QuietHandler
        self._server = make_server(self.host, self.port, self.app, threaded=True,
                                   request_handler=handler)
        self.port = self._server.server_port
        for bucket in self.buckets:
            self.create_bucket(bucket)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="cos-emulator")
        self._thread.start()
        return self

    def create_bucket(self, bucket: str) -> None:
        """Create ``bucket`` through the same HTTP path the SDK uses."""
        response = Client(self.app).put(
            "/", headers={"Host": cos_host(bucket, self.region),
                          "Authorization": "q-sign-algorithm=sha1&q-ak=emulator"})
        if response.status_code >= 300 and b"BucketAlreadyOwnedByYou" not in response.data:
            raise RuntimeError(f"could not create bucket {bucket}: {response.status_code}")

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Local COS emulator (moto S3 + COS shim).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--bucket", action="append", default=[], help="name-appid; repeatable")
    parser.add_argument("--region", default=DEFAULT_REGION)
    parser.add_argument("--ready-file", help="write the port here once serving")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with Emulator(args.host, args.port, args.bucket, args.region, args.verbose) as emulator:
        print(f"cos-emulator listening on {emulator.url} buckets={','.join(args.bucket)}",
              flush=True)
        if args.ready_file:
            _write_ready_file(args.ready_file, emulator.port)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
