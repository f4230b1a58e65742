"""A webhook receiver and pre-check service for the tests, in a process of its own.

``python -m tests.hook_receiver --port N --record FILE --secret S`` serves until killed:

* ``POST /events`` (any path but the two below): checks ``X-Cosftp-Signature`` against the
  body with the secret, waits ``delay`` seconds, then appends one JSON line to FILE (the
  body, whether the signature matched, the status it answers) and answers ``status``;
* ``POST /pre``: a pre-check: an upload whose file name contains ``deny`` (a delete, rename
  or rmdir whose name contains ``keep``) is refused with ``reason``, a name containing
  ``slow`` is answered after ``slow_seconds``, one containing ``garbage`` gets a body that is
  no answer; anything else is allowed; the question is recorded too;
* ``POST /__control__``: JSON that sets ``status``, ``delay``, ``reason``, ``slow_seconds``.

``Receiver`` starts, kills (``-9``), restarts and reads it from a test. What it recorded is
on disk, so it outlives a kill.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

from .server_proc import closed_port, start_listening

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path == "/__control__":
            self.server.settings.update(json.loads(body))
            self._answer(200, b"{}")
            return
        if self.path == "/pre":
            self._pre_check(body)
            return
        settings = dict(self.server.settings)
        time.sleep(settings["delay"])
        self.server.record({"kind": "event", "status": settings["status"],
                            "verified": self._verified(body),
                            "event_header": self.headers.get("X-Cosftp-Event"),
                            "body": json.loads(body)})
        self._answer(settings["status"], b"ok")

    def _pre_check(self, body: bytes) -> None:
        question = json.loads(body)
        settings = dict(self.server.settings)
        self.server.record({"kind": "pre", "verified": self._verified(body), "body": question})
        path = (question.get("path") or "").rsplit("/", 1)[-1]  # the name, not its folders
        if "slow" in path:
            time.sleep(settings["slow_seconds"])
        if "garbage" in path:
            self._answer(200, b"<html>not an answer</html>")
        elif ("deny" if question["event"] == "pre_upload" else "keep") in path:
            self._answer(200, json.dumps({"allow": False,
                                          "reason": settings["reason"]}).encode())
        else:
            self._answer(200, b'{"allow": true}')

    def _verified(self, body: bytes) -> bool:
        expected = "sha256=" + hmac.new(self.server.secret.encode(), body,
                                        hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, self.headers.get("X-Cosftp-Signature", ""))

    def _answer(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, path: str, secret: str) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.path, self.secret = path, secret
        self.settings = {"status": 200, "delay": 0.0, "reason": "Not allowed here",
                         "slow_seconds": 3.0}
        self._lock = threading.Lock()

    def handle_error(self, request, client_address) -> None:
        pass  # a server that timed out before the answer: it will send again

    def record(self, entry: dict) -> None:
        with self._lock, open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")


class Receiver:
    """The receiver process, from a test. Its port is chosen at once (a server's config
    names it before the receiver runs) and held closed (``closed_port``) until it first
    runs: another test file's receiver cannot take the events meant for it. Once killed,
    the port is not held again (a bind without SO_REUSEADDR, which holding needs, fails on
    the connections it left in TIME_WAIT); those keep ``free_port`` from choosing it for
    a minute, and ``start`` checks that the receiver itself listens there again."""

    def __init__(self, record: str, secret: str) -> None:
        self.port, self.record, self.secret = closed_port(), record, secret
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    @property
    def pre_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/pre"

    def start(self, **settings: Any) -> Receiver:
        """Run the receiver on its port, wait until it listens there (``start_listening``)
        and give it ``settings`` (see the module's doc). Returns self; raises
        AssertionError if it does not listen."""
        self.proc, _ = start_listening(
            lambda port: subprocess.Popen(
                [sys.executable, "-m", "tests.hook_receiver", "--port", str(port),
                 "--record", self.record, "--secret", self.secret], cwd=ROOT),
            "the hook receiver", (self.port,))
        self.control(**settings)
        return self

    def control(self, **settings: Any) -> None:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/__control__",
                                         data=json.dumps(settings).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=5) as answer:
            answer.read()

    def kill(self) -> None:
        """``kill -9``, and wait for it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def entries(self, kind: str = "event") -> list[dict]:
        try:
            with open(self.record, encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        except FileNotFoundError:
            return []
        return [entry for entry in map(json.loads, lines) if entry["kind"] == kind]

    def accepted(self) -> list[dict]:
        """The event bodies it answered with 2xx, duplicates included."""
        return [e["body"] for e in self.entries() if 200 <= e["status"] < 300]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--record", required=True)
    parser.add_argument("--secret", required=True)
    args = parser.parse_args()
    server = _Server(args.port, args.record, args.secret)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()


if __name__ == "__main__":
    main()
