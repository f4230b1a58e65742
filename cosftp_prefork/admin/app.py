"""What the admin API does with one request, HTTP aside: route it, check its token and that
it may do what it asks, refuse what a cross-site page could have sent, and write the audit
line of every call that would change something.

Requests a cross-site page could make (CSRF): the API uses no cookie, so a browser sends
nothing that proves who a cross-site request comes from; every call under ``/api/v1/`` but
the OpenAPI document needs ``Authorization: Bearer``, which a form cannot send and a
cross-origin ``fetch`` can send only after a CORS preflight this server never grants (no
``Access-Control-*`` header, ``OPTIONS`` refused). On top of that, a request that would
change something is refused (403) when its ``Origin`` is not this server's or its
``Sec-Fetch-Site`` says ``cross-site``, and a body must be ``application/json`` (415), which
no form can send.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Optional
from urllib.parse import unquote, urlsplit

from ..config.model import Config
from ..server.gate import Client, Gate
from ..server.scoreboard import SharedState
from .auth import Caller, TokenRefused, TokenVerifier

log = logging.getLogger(__name__)
audit = logging.getLogger("cosftp_prefork.admin.audit")

API = "/api/v1"


@dataclass(frozen=True)
class Request:
    """One HTTP request as the API sees it; ``headers`` is case-insensitive."""

    method: str
    target: str
    headers: Mapping[str, str]
    body: bytes
    client: str
    scheme: str = "http"

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    def json(self) -> Any:
        """The body as JSON (400 if it is not; 415 if not sent as ``application/json``)."""
        kind = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise ApiError(415, "send the body as Content-Type: application/json")
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ApiError(400, "the body is not valid JSON") from None


@dataclass
class Response:
    status: int
    body: Any = None  # JSON-able, or bytes with ``content_type``
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    audit: str = ""  # what a state-changing call did, for its audit line


class ApiError(Exception):
    """A request the API answers with ``status`` and ``{"error": message, ...}``."""

    def __init__(self, status: int, message: str, **more: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.more = status, message, more
        self.headers: dict[str, str] = {}

    def response(self) -> Response:
        return Response(self.status, {"error": self.message, **self.more},
                        headers=self.headers, audit=f"{self.status} {self.message}")


@dataclass(frozen=True)
class Context:
    """What a resource handler works with: the configuration, the shared state, the
    master's pid, the gate (bans as the workers see them), the caller and the request."""

    config: Config
    state: SharedState
    master_pid: int
    gate: Gate
    caller: Caller
    request: Request

    def master_alive(self) -> Optional[int]:
        """The master's pid while it runs (this process is its child)."""
        return self.master_pid if os.getppid() == self.master_pid else None


Handler = Callable[..., Response]


@dataclass(frozen=True)
class Route:
    """``method`` on ``pattern`` (``{name}`` matches one path segment, given to ``handler``
    as a keyword, percent-decoded); ``writes``: changes something (rw tokens only)."""

    method: str
    pattern: str
    handler: Handler
    writes: bool = False

    def match(self, method: str, path: str) -> Optional[dict[str, str]]:
        """The parameters ``path`` gives if this route serves ``method`` on it, else None."""
        return self.params(path) if method in self.methods else None

    @property
    def methods(self) -> tuple[str, ...]:
        """What it answers: a GET answers HEAD too (its headers, no body)."""
        return ("GET", "HEAD") if self.method == "GET" else (self.method,)

    def params(self, path: str) -> Optional[dict[str, str]]:
        """The parameters of ``path`` if it is this route's resource, else None."""
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.pattern)
        found = re.fullmatch(regex, path)
        return None if found is None else {k: unquote(v) for k, v in found.groupdict().items()}


class AdminApp:
    """Routes requests to the resources: ``routes`` need a token, ``public`` do not (the
    console's files and the OpenAPI document)."""

    def __init__(self, config: Config, state: SharedState, master_pid: int, gate: Gate,
                 routes: list[Route], public: dict[str, Callable[[], Response]]) -> None:
        self.config, self.state, self.master_pid, self.gate = config, state, master_pid, gate
        self.routes, self.public = routes, public
        self.tokens = TokenVerifier(config.admin.tokens)

    def handle(self, request: Request) -> Response:
        path = request.path
        if request.method in ("GET", "HEAD") and path in self.public:
            return self.public[path]()
        if not path.startswith(f"{API}/"):
            return ApiError(404, "not found: the console is at /, the API under "
                            f"{API}/").response()
        matches = [(route, params) for route in self.routes
                   if (params := route.match(request.method, path)) is not None]
        if not matches:
            return self._unmatched(path)
        route, params = matches[0]
        try:
            caller = self._caller(request)
        except ApiError as exc:
            return exc.response()
        response = self._run(route, params, caller, request)
        if route.writes:
            audit.info("%s from %s: %s %s: %s", caller.describe(), request.client,
                       request.method, path, response.audit or response.status)
        return response

    def _unmatched(self, path: str) -> Response:
        """404 for no such resource; 405 naming what it allows (RFC 9110 asks for Allow)."""
        allowed = sorted({method for route in self.routes if route.params(path) is not None
                          for method in route.methods})
        if not allowed:
            return ApiError(404, f"no such resource: see {API}/openapi.json").response()
        error = ApiError(405, "method not allowed")
        error.headers["Allow"] = ", ".join(allowed)
        return error.response()

    def _run(self, route: Route, params: dict[str, str], caller: Caller,
             request: Request) -> Response:
        try:
            if route.writes:
                _same_origin(request)
                if not caller.writable:
                    raise ApiError(403, f"token {caller.name} is read-only")
            context = Context(self.config, self.state, self.master_pid, self.gate, caller,
                              request)
            return route.handler(context, **params)
        except ApiError as exc:
            return exc.response()

    def _caller(self, request: Request) -> Caller:
        """Who sent ``request``: its bearer token's owner. Refused (ApiError) from a banned
        address, without a token, with a wrong one (counted towards the address's ban)."""
        client = self.gate.client(request.client)
        if self.gate.is_banned(client):
            error = ApiError(403, "your address is banned (too many failed logins or tokens)")
            error.headers["Retry-After"] = str(self.config.server.ban_time)
            raise error
        scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            error = ApiError(401, "sign in: send Authorization: Bearer <token>")
            error.headers["WWW-Authenticate"] = 'Bearer realm="cosftp admin"'
            raise error
        try:
            return self.tokens.verify(token.strip(), request.client)
        except TokenRefused as exc:
            if exc.checked:
                self._failed_token(client)
            error = ApiError(exc.status, exc.message)
            if exc.status == 401:
                error.headers["WWW-Authenticate"] = 'Bearer realm="cosftp admin", ' \
                                                    'error="invalid_token"'
            elif exc.status == 429:
                error.headers["Retry-After"] = "1"
            raise error from None

    def _failed_token(self, client: Client) -> None:
        """Count a failed token as a failed login of ``client``'s address."""
        self.gate.refusals.note(client.ip, "admin API: invalid token")
        if self.gate.login_failed(client):
            log.warning("banning %s after repeated failed logins and admin API tokens",
                        client.ip)


def wait_for(done: Callable[[], bool], seconds: float) -> bool:
    """Ask ``done`` every 50 ms until it is true (True) or ``seconds`` passed (False): what
    the master or a worker does for a request shows in the shared state within a second."""
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _same_origin(request: Request) -> None:
    """Refuse (403) a state-changing request a browser says comes from another site."""
    if (request.headers.get("Sec-Fetch-Site") or "").lower() == "cross-site":
        raise ApiError(403, "cross-site request refused")
    origin = request.headers.get("Origin")
    host = request.headers.get("Host")
    if origin is not None and (host is None or origin != f"{request.scheme}://{host}"):
        raise ApiError(403, "cross-origin request refused")
