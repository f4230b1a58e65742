"""The admin API's process: forked by the master (``server.master``), it serves the API and
the console on the socket the master bound, as the workers' user, until TERM or the master
is gone. The master replaces it after every successful reload, so that it serves the new
configuration's tokens and accounts.
"""

from __future__ import annotations

import logging
import os
import socket
from importlib import resources
from typing import Callable

from ..config.model import Config
from ..server.gate import Gate
from ..server.httpserve import serve
from ..server.scoreboard import SharedState
from . import accounts, bans, events, reload, sessions, status
from .app import API, AdminApp, Response, Route
from .handler import AdminHandler, AdminServer
from .openapi import document_bytes
from .tls import server_context

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 32
MAX_PER_SOURCE = 8  # a browser opens up to 6 connections to a host
ROUTES = [
    Route("GET", f"{API}/status", status.status),
    Route("GET", f"{API}/sessions", sessions.sessions),
    Route("DELETE", f"{API}/sessions/{{session_id}}", sessions.kick, writes=True),
    Route("GET", f"{API}/bans", bans.bans),
    Route("POST", f"{API}/bans", bans.add, writes=True),
    Route("DELETE", f"{API}/bans/{{address}}", bans.lift, writes=True),
    Route("GET", f"{API}/accounts", accounts.accounts),
    Route("GET", f"{API}/quotas", accounts.quotas),
    Route("GET", f"{API}/events", events.events),
    Route("POST", f"{API}/reload", reload.reload, writes=True),
]
_CONSOLE = {"/": ("index.html", "text/html; charset=utf-8"),
            "/console.js": ("console.js", "text/javascript; charset=utf-8"),
            "/console.css": ("console.css", "text/css; charset=utf-8")}


def public_files() -> dict[str, Callable[[], Response]]:
    """What is served without a token: the console's files (package data, read once) and
    the OpenAPI document."""
    folder = resources.files(__package__) / "console"
    files = {path: Response(200, (folder / name).read_bytes(), kind)
             for path, (name, kind) in _CONSOLE.items()}
    files[f"{API}/openapi.json"] = Response(200, document_bytes())
    return {path: (lambda response=response: response) for path, response in files.items()}


def serve_admin(sock: socket.socket, config: Config, state: SharedState,
                master_pid: int) -> int:
    """Serve the admin API on ``sock`` until TERM or the master is gone."""
    tls = server_context(config.network.tls) if config.network.tls is not None else None
    gate = Gate(state, config.server, os.getpid())
    server = AdminServer(sock, AdminHandler, "admin", MAX_CONNECTIONS, MAX_PER_SOURCE, tls)
    gate.refusals = server.refusals  # one burst log, flushed by the accept loop
    server.app = AdminApp(config, state, master_pid, gate, ROUTES, public_files())
    host, port = sock.getsockname()[:2]
    scheme = "https" if tls is not None else "http"
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    log.info("admin API %d serving %s://%s/ (console) and %s/ with %d token(s)",
             os.getpid(), scheme, where, API, len(config.admin.tokens))
    return serve(server, master_pid)
