"""A small HTTP auth hook for the tests: users with passwords and account definitions, and
the ways a real service fails (slow, down, garbage answers, errors)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any, Optional

from .quiet_http import QuietHTTPServer

# How the service answers every request (besides NORMAL: look the user up).
# HELD: each answer waits for its turn (``let_one_answer``), then answers as NORMAL;
# FORBIDDEN: a no as HTTP 403.
NORMAL, SLOW, NOT_JSON, ERROR, HELD, FORBIDDEN = ("normal", "slow", "not_json", "error",
                                                  "held", "forbidden")


class AuthService:
    """``users``: {user: (password, account definition)}. ``asked`` records every request's
    JSON body. ``mode`` may be changed while it runs."""

    def __init__(self) -> None:
        self.users: dict[str, tuple[str, dict[str, Any]]] = {}
        self.asked: list[dict[str, Any]] = []
        self.mode = NORMAL
        self.in_flight = self.most_in_flight = 0  # requests being answered now, at most
        self.release = threading.Event()  # ends the SLOW answers still waiting
        self._turns = threading.Semaphore(0)  # HELD answers allowed to go
        self._lock = threading.Lock()
        self._server: Optional[QuietHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/auth"

    def start(self) -> AuthService:
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                request = json.loads(self.rfile.read(length))
                with service._lock:
                    service.asked.append(request)
                    service.in_flight += 1
                    service.most_in_flight = max(service.most_in_flight, service.in_flight)
                try:
                    status, body = service.answer(request)
                finally:
                    with service._lock:
                        service.in_flight -= 1
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the server gave up waiting (a SLOW answer): what is tested

            def log_message(self, *args) -> None:
                pass

        self.release.clear()
        self._server = QuietHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def answer(self, request: dict[str, Any]) -> tuple[int, bytes]:
        if self.mode == SLOW:
            self.release.wait(60)  # far longer than the server's auth_hook_timeout
        if self.mode == HELD:
            self._turns.acquire(timeout=60)
        if self.mode == ERROR:
            return 503, b'{"error": "database down"}'
        if self.mode == NOT_JSON:
            return 200, b"<html>welcome</html>"
        known = self.users.get(request["user"])
        if known is None or known[0] != request["password"]:
            if self.mode == FORBIDDEN:
                return 403, b'{"error": "wrong password"}'
            return 200, json.dumps({"allow": False}).encode()
        return 200, json.dumps({"allow": True, "account": known[1]}).encode()

    def let_one_answer(self) -> None:
        self._turns.release()

    def asked_for(self, user: str) -> int:
        with self._lock:
            return sum(1 for request in self.asked if request["user"] == user)

    def reset(self) -> AuthService:
        """Back to a new service's state, on the same port: answering (started again if it
        was stopped), NORMAL, no users, nothing asked, no answer held or released ahead.
        Returns self."""
        if self._server is None:
            self.start()
        with self._lock:
            self.users.clear()
            self.asked.clear()
            self.mode = NORMAL
            self.most_in_flight = self.in_flight
        self.release.clear()
        self._turns = threading.Semaphore(0)
        return self

    def stop(self) -> None:
        """Stop listening: the port then refuses connections (a service that is down); the
        same port is used by ``start`` again."""
        self.release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = None
