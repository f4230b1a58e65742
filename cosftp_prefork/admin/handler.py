"""HTTP for the admin API: each request (read whole, within its deadline, by ``httpserve``)
handed to the ``AdminApp``, each answer sent with the headers that keep a browser from
framing it, sniffing it, caching it or sharing it with another site."""

from __future__ import annotations

import json
import logging

from ..server.httpserve import BoundedHTTPServer, DeadlineHandler
from .app import AdminApp, ApiError, Request, Response

log = logging.getLogger(__name__)

MAX_BODY = 4096  # the largest body the API takes: {"address": ..., "seconds": ...}

# No Access-Control-* header anywhere: no other origin may read or send anything.
_ALWAYS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}
# The console's own files only: no inline script, nothing from elsewhere, no framing.
CONSOLE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                  "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                  "form-action 'none'")
_DATA_POLICY = "default-src 'none'; frame-ancestors 'none'"


class AdminServer(BoundedHTTPServer):
    app: AdminApp


class AdminHandler(DeadlineHandler):
    server: AdminServer
    MAX_BODY = MAX_BODY

    def version_string(self) -> str:
        return "cosftp-admin"

    def do_GET(self) -> None:
        self._serve()

    do_HEAD = do_POST = do_DELETE = do_PUT = do_PATCH = do_OPTIONS = do_GET

    def _serve(self) -> None:
        if self.body_too_large:
            response = ApiError(413, f"request body over {MAX_BODY} bytes").response()
        else:
            # What is left is the body: httpserve read the Content-Length, no byte more.
            request = Request(self.command, self.path, self.headers, self.rfile.read(),
                              self.client_address[0],
                              "https" if self.server.tls is not None else "http")
            try:
                response = self.server.app.handle(request)
            except Exception:
                log.exception("admin API: %s %s failed", self.command, self.path)
                response = ApiError(500, "internal error (see the server's log)").response()
        self._send(response)

    def _send(self, response: Response) -> None:
        if isinstance(response.body, bytes):
            body = response.body
        else:
            body = json.dumps(response.body).encode("utf-8")
        self.send_response(response.status)
        headers = {**_ALWAYS, "Content-Type": response.content_type,
                   "Content-Length": str(len(body)),
                   "Content-Security-Policy": CONSOLE_POLICY
                   if response.content_type.startswith("text/html") else _DATA_POLICY,
                   **response.headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
