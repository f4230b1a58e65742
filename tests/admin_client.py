"""A server with the admin API on, and a client of the API that validates every answer it
gets against the API's own OpenAPI document (``openapi-core``): a response the document does
not describe fails the test that received it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any, Optional

import requests
from openapi_core import OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse
from requests.adapters import HTTPAdapter

from .conftest import ALPHA
from .server_proc import FREE_PORT, Account, ServerProcess

RW_TOKEN = "rw-0b7f1c9e6d2a4f3e8c5b"  # what an operator hands out; the config has its hash
RO_TOKEN = "ro-5e2d8a7c1b9f4e6d3a0c"
TENANT_QUOTA = (8 * 1024 * 1024, 10)  # quota_size 8M, quota_files 10


def admin_accounts() -> list[Account]:
    """alice (RW) and reader (R) on the bucket's root, without a quota; tenant rooted at a
    prefix of its own (new for each server: its home starts empty) with ``TENANT_QUOTA``."""
    prefix = f"admin-{uuid.uuid4().hex[:8]}/"
    return [Account("alice", "alice-pw", ALPHA, "RW"),
            Account("reader", "reader-pw", ALPHA, "R"),
            Account("tenant", "tenant-pw", ALPHA, extra=f"cos_prefix = {prefix}\n"
                    f"quota_size = {TENANT_QUOTA[0] >> 20}M\nquota_files = {TENANT_QUOTA[1]}")]


def hash_token(token: str) -> str:
    """The hash ``cosftpctl hash-password`` prints for ``token`` (read from stdin)."""
    done = subprocess.run([sys.executable, "-m", "cosftp_prefork", "hash-password"],
                          input=f"{token}\n", capture_output=True, text=True, timeout=60,
                          check=True)
    return done.stdout.strip()


def admin_server(workdir: str, cos_port: int, network: Optional[dict[str, str]] = None,
                 tokens: Optional[str] = None, **optional: str) -> ServerProcess:
    """A server (not started) with the admin API on a free port, the tokens ``ops`` (rw,
    ``RW_TOKEN``) and ``viewer`` (ro, ``RO_TOKEN``) unless ``tokens`` says otherwise."""
    if tokens is None:
        tokens = f"ops:{hash_token(RW_TOKEN)}:rw, viewer:{hash_token(RO_TOKEN)}:ro"
    proc = ServerProcess(workdir, cos_port, admin_accounts(),
                         network={"admin_port": FREE_PORT, **(network or {})},
                         optional={"max_connections_per_ip": "0", **optional},
                         sections=f"\n[ADMIN]\ntokens = {tokens}\n")
    return proc


def folder_admin_server(workdir: str, cos_port: int) -> tuple[ServerProcess, str]:
    """``admin_server`` with fone and ftwo (no quota of their own) mounting, at /pool, one
    virtual folder of quota_size 3M and quota_files 7 (its prefix returned, new for each
    server: it starts empty)."""
    proc = admin_server(workdir, cos_port)
    prefix = f"admin-folder-{uuid.uuid4().hex[:8]}/"
    proc.sections += (f"\n[FOLDER_pool]\ncos_prefix = {prefix}\nauthority = RW\n"
                      "quota_size = 3M\nquota_files = 7\n")
    proc.accounts = [*proc.accounts, *(
        Account(user, f"{user}-pw", ALPHA, extra=f"cos_prefix = {prefix[:-1]}-{user}/\n"
                "virtual_folders = /pool=pool") for user in ("fone", "ftwo"))]
    return proc, prefix


def serving_admin(emulator, tmp_path_factory, name: str,
                  hooks: Optional[dict[str, str]] = None) -> Iterator[ServerProcess]:
    """For a module's fixture: ``admin_server`` running, bans after 3 failed logins, with
    ``hooks`` as its [HOOKS] section if given; two workers, whose sessions and health the
    API and the console list together."""
    proc = admin_server(str(tmp_path_factory.mktemp(name)), emulator.port,
                        max_login_failures="3", ban_time="600", worker_processes="2")
    proc.hooks.update(hooks or {})
    with proc:
        yield proc


class _SourceAdapter(HTTPAdapter):
    """Connections from one local address (127.0.0.0/8 is all loopback)."""

    def __init__(self, source: str) -> None:
        self.source = source
        super().__init__()

    def init_poolmanager(self, *args, **kwargs) -> None:
        kwargs["source_address"] = (self.source, 0)
        super().init_poolmanager(*args, **kwargs)


class AdminClient:
    """Calls the admin API at ``base`` (``http://127.0.0.1:PORT``) from ``source``; checks
    each answer against the OpenAPI document the server serves."""

    _documents: dict[str, OpenAPI] = {}

    def __init__(self, base: str, token: Optional[str] = RW_TOKEN, source: str = "127.0.0.1",
                 verify: Any = True) -> None:
        self.base, self.token, self.verify = base, token, verify
        self.session = requests.Session()
        for scheme in ("http://", "https://"):
            self.session.mount(scheme, _SourceAdapter(source))

    def document(self) -> OpenAPI:
        if self.base not in self._documents:
            raw = self.session.get(f"{self.base}/api/v1/openapi.json", timeout=30,
                                   verify=self.verify)
            raw.raise_for_status()
            self._documents[self.base] = OpenAPI.from_dict(raw.json())
        return self._documents[self.base]

    def call(self, method: str, path: str, token: Optional[str] = "", **kwargs: Any
             ) -> requests.Response:
        """``method`` on ``/api/v1`` + ``path`` with ``token`` (default: the client's; None:
        no Authorization header); the answer is validated against the document."""
        token = self.token if token == "" else token
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        # verify per request: REQUESTS_CA_BUNDLE would win over the session's
        response = self.session.request(method, f"{self.base}/api/v1{path}", headers=headers,
                                        timeout=90, verify=self.verify, **kwargs)
        self.document().validate_response(RequestsOpenAPIRequest(response.request),
                                          RequestsOpenAPIResponse(response))
        return response

    def get(self, path: str, **kwargs: Any) -> Any:
        """The JSON of a GET that must succeed."""
        response = self.call("GET", path, **kwargs)
        assert response.status_code == 200, response.text
        return response.json()

    def session_of(self, user: str) -> Optional[dict[str, Any]]:
        """The first live session of ``user``, as ``GET /sessions`` lists it."""
        return next((s for s in self.get("/sessions")["sessions"] if s["user"] == user), None)


def audit_lines(proc: ServerProcess) -> list[str]:
    """The admin API's audit lines in the server log, without the time stamp."""
    return [re.sub(r"^\S+ \S+ ", "", line) for line in proc.log_text().splitlines()
            if "cosftp_prefork.admin.audit:" in line]


def admin_url(proc: ServerProcess, scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{proc.admin_port}"


def pid_file(proc: ServerProcess) -> str:
    return os.path.join(proc.log_dir, "cosftp.pid")
