"""The admin API end to end: a real server with ``admin_port``, called over HTTP(S) by
``requests``, every answer validated against the OpenAPI document the server serves
(``admin_client``), the document itself checked with ``openapi-spec-validator``. FTP clients
are ftplib sessions from their own loopback addresses (127.0.0.0/8)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import ftplib
import io
import json
import os
import re
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
import requests
from openapi_spec_validator import validate

from cosftp_prefork.admin.auth import TokenVerifier
from cosftp_prefork.admin.process import MAX_CONNECTIONS, MAX_PER_SOURCE
from cosftp_prefork.config.model import AdminToken
from cosftp_prefork.config.settings import parse_config
from cosftp_prefork.errors import ConfigError

from .admin_client import (
    RO_TOKEN,
    RW_TOKEN,
    TENANT_QUOTA,
    AdminClient,
    admin_server,
    admin_url,
    audit_lines,
    folder_admin_server,
    hash_token,
    serving_admin,
)
from .conftest import ALPHA
from .crowds import Member, tcp_queues, unread_session
from .server_proc import connection_refused, wait_until
from .tls_clients import write_certificate

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def admin(emulator, tmp_path_factory):
    yield from serving_admin(emulator, tmp_path_factory, "admin")


@pytest.fixture
def api(admin) -> AdminClient:
    return AdminClient(admin_url(admin))


def log_in(proc, source: str = "127.0.0.1", user: str = "alice",
           password: str = "alice-pw") -> ftplib.FTP:
    ftp = ftplib.FTP(encoding="utf-8")
    ftp.connect(proc.host, proc.port, timeout=30, source_address=(source, 0))
    ftp.login(user, password)
    return ftp


class HeldUpload:
    """``ALLO size`` and ``STOR path`` whose bytes the test sends when it wants to."""

    def __init__(self, ftp: ftplib.FTP, path: str, size: int) -> None:
        ftp.voidcmd("TYPE I")
        ftp.voidcmd(f"ALLO {size}")
        self.ftp, self.sent = ftp, 0
        self.conn = ftp.transfercmd(f"STOR {path}")

    def send(self, count: int) -> None:
        self.conn.sendall(b"u" * count)
        self.sent += count

    def reply_after_kick(self) -> str:
        """What the control connection says once the server closed the session."""
        with contextlib.suppress(OSError):
            self.conn.close()
        try:
            return self.ftp.getresp()
        except ftplib.Error as exc:
            return str(exc)


def test_the_openapi_document_is_valid_and_public(api):
    response = api.call("GET", "/openapi.json", token=None)
    assert response.status_code == 200
    document = response.json()
    validate(document)  # openapi-spec-validator: raises on an invalid document
    assert {"/status", "/sessions", "/sessions/{session_id}", "/bans", "/bans/{address}",
            "/accounts", "/quotas", "/events", "/reload"} <= set(document["paths"])


def test_every_call_needs_a_token(api):
    for path in ("/status", "/sessions", "/bans", "/accounts", "/quotas", "/events"):
        response = api.call("GET", path, token=None)
        assert response.status_code == 401, path
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert api.call("DELETE", "/sessions/1", token=None).status_code == 401
    assert api.call("POST", "/reload", token=None).status_code == 401


def test_status_shows_the_workers_health_and_memory(api, admin):
    status = api.get("/status")
    assert status["master"]["pid"] == admin.proc.pid
    assert status["master"]["ftp_port"] == admin.port
    assert status["you"] == {"token": "ops", "writable": True}
    workers = status["workers"]
    assert len(workers) == 2 and {w["health"] for w in workers} == {"ok"}
    assert all(w["rss_bytes"] > 10 * MIB and w["rss_limit_bytes"] == 2048 * MIB
               for w in workers)
    assert api.get("/status", token=RO_TOKEN)["you"] == {"token": "viewer", "writable": False}


def test_sessions_show_an_upload_with_its_size_rate_and_progress(api, admin, area):
    area = f"progress_{area[-6:]}"
    ftp = log_in(admin)
    upload = HeldUpload(ftp, f"{area}.bin", 8 * MIB)
    try:
        shown: list[dict] = []
        for step in (1, 2):
            upload.send(MIB)
            # The tick that shows the new bytes shows a rate: they came within its 5 s.
            wait_until(lambda: _transfer_at(api, upload.sent, shown),
                       what=f"{upload.sent} bytes shown after step {step}")
        session = shown[-1]
        assert session["transfer"] == {
            "direction": "upload", "in_flight": True, "file": f"/{area}.bin",
            "bytes": 2 * MIB, "expected_bytes": 8 * MIB,
            "rate": session["transfer"]["rate"]}
        assert session["transfer"]["rate"] > 0
        assert session["client"] == "127.0.0.1" and session["logged_in"]
        assert session["command"] == f"STOR {area}.bin"
        upload.send(6 * MIB)
        upload.conn.close()
        assert ftp.voidresp().startswith("226")
        ftp.voidcmd("TYPE I")
        with ftp.transfercmd(f"RETR {area}.bin", rest=MIB) as conn:
            conn.recv(1)  # the download runs; what it should move is the rest of the file
            wait_until(lambda: api.session_of("alice")["transfer"]["direction"] == "download",
                       what="the download shown")
            download = api.session_of("alice")["transfer"]
            while conn.recv(MIB):
                pass
        ftp.voidresp()
        assert download["expected_bytes"] == 7 * MIB and download["file"] == f"/{area}.bin"
    finally:
        ftp.close()


def _transfer_at(api: AdminClient, nbytes: int, shown: list) -> bool:
    """True once alice's session shows a transfer at ``nbytes``; that session goes to
    ``shown``."""
    session = api.session_of("alice")
    if session and session["transfer"] and session["transfer"]["bytes"] == nbytes:
        shown.append(session)
        return True
    return False


def test_kick_closes_the_session_with_421_and_parks_its_upload(api, admin, area):
    ftp = log_in(admin, "127.0.0.3")
    upload = HeldUpload(ftp, f"{area}.bin", 4 * MIB)
    upload.send(3 * MIB)
    wait_until(lambda: _transfer_at(api, upload.sent, []), what="the upload's bytes shown")
    session_id = api.session_of("alice")["id"]
    refused = api.call("DELETE", f"/sessions/{session_id}", token=RO_TOKEN)
    assert (refused.status_code, refused.json()) == (403, {"error": "token viewer is "
                                                                    "read-only"})
    assert api.call("DELETE", "/sessions/999999999").status_code == 404
    assert api.call("DELETE", "/sessions/x%0a1").status_code == 404
    kicked = api.call("DELETE", f"/sessions/{session_id}")
    assert (kicked.status_code, kicked.json()) == (200, {"id": session_id, "closed": True})
    assert upload.reply_after_kick() == "421 Session closed by the server's administrator."
    assert api.session_of("alice") is None
    wait_until(lambda: f"path=/{area}.bin: upload interrupted after" in admin.log_text(),
               what="the upload parked")
    lines = audit_lines(admin)
    assert f"INFO [{_admin_pid(lines)} admin] cosftp_prefork.admin.audit: viewer (ro) from " \
           f"127.0.0.1: DELETE /api/v1/sessions/{session_id}: 403 token viewer is read-only" \
           in lines
    assert any(re.fullmatch(rf"INFO \[\d+ admin\] cosftp_prefork\.admin\.audit: ops \(rw\) "
                            rf"from 127\.0\.0\.1: DELETE /api/v1/sessions/{session_id}: "
                            rf"session {session_id} \(worker \d+\) closed", line)
               for line in lines), lines


def test_kick_closes_a_session_whose_quit_waits_for_its_upload(api, admin, area):
    """QUIT during an upload waits for the upload to end (RFC 959); a kick meanwhile closes
    the session at once with 421 and parks the upload, as without the QUIT. Before, the
    session read nothing once QUIT came, so it never saw the kick (its control connection
    shut for reading) until the transfer ended: a client holding its upload kept the
    session as long as it liked."""
    ftp = log_in(admin, "127.0.0.4")
    upload = HeldUpload(ftp, f"{area}.bin", 4 * MIB)
    upload.send(3 * MIB)
    wait_until(lambda: _transfer_at(api, upload.sent, []), what="the upload's bytes shown")
    start = len(admin.log_text())
    ftp.putcmd("QUIT")
    wait_until(lambda: "<- QUIT" in admin.log_text()[start:], what="the QUIT read")
    kicked = api.call("DELETE", f"/sessions/{api.session_of('alice')['id']}")
    assert kicked.status_code == 200
    ftp.sock.settimeout(20)
    replies = []
    with contextlib.suppress(EOFError):
        while True:
            replies.append(ftp.getline())
    assert replies == ["421 Session closed by the server's administrator."]
    wait_until(lambda: f"path=/{area}.bin: upload interrupted after" in admin.log_text(),
               what="the upload parked")
    upload.conn.close()
    ftp.close()


KICK_LINE = b"421 Session closed by the server's administrator.\r\n"


def _whole_replies_then_kick(stream: bytes) -> bool:
    """True if ``stream`` is whole HELP replies, then the kick's 421 on its own line, last."""
    reply = stream[:stream.index(b"\r\n214 ") + 2]
    reply += stream[len(reply):].partition(b"\r\n")[0] + b"\r\n"
    count = (len(stream) - len(KICK_LINE)) // len(reply)
    return stream == reply * count + KICK_LINE


def test_a_kick_finishes_the_reply_being_sent_then_says_421(api, admin):
    """A client that reads no replies (a small receive buffer) sends HELPs a read's worth
    (682, 298 KB of replies) at a time until the worker stops reading: the kernel took
    a few MB of replies, the rest wait in the worker, the one being sent half-sent. The admin
    API kicks it; only then does it read: whole HELP replies, the 421 on a line of its
    own, the end. Before: the worker's queue was dropped whole, the reply being sent with
    it, the 421 found no room, and the close (input unread) reset the connection: the
    client read half a reply, then the reset."""
    sock = unread_session(admin.port, "127.0.0.13")
    paused = "ip=127.0.0.13] cosftp_prefork.ftp.backpressure: the client reads no replies"
    for _ in range(100):  # a read's worth at a time, each read before the next is sent
        sock.sendall(b"HELP\r\n" * 682)
        wait_until(lambda: paused in admin.log_text() or
                   not tcp_queues(admin.port, sock.getsockname()[1])[1],
                   what="the HELPs read, or the worker to stop reading")
        if paused in admin.log_text():
            break
    [session] = [s for s in api.get("/sessions")["sessions"] if s["client"] == "127.0.0.13"]
    answers = []
    # the client must be free to read while the API waits for the kick
    kicker = threading.Thread(target=lambda: answers.append(
        api.call("DELETE", f"/sessions/{session['id']}")))
    kicker.start()
    try:
        wait_until(lambda: f"admin API asked to close session {session['id']}" in
                   admin.log_text(), what="the kick carried out")
        sock.settimeout(30)
        chunks = []
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        stream = b"".join(chunks)
    finally:
        kicker.join()
        sock.close()
    assert stream.endswith(KICK_LINE), stream[-200:]
    assert _whole_replies_then_kick(stream), stream[-600:]
    assert answers[0].status_code in (200, 202), answers[0].text


def test_a_kick_during_a_command_wins_over_the_commands_sent_with_it(api, admin, emulator,
                                                                     area):
    """SIZE, NOOP and NOOP in one packet; COS holds the SIZE's look-up (the emulator's
    rendezvous) while the admin API kicks the session: the SIZE gets its answer, then the
    kick's 421, and the NOOPs read with it are not run. Before: they ran after the kick
    (213 200 200, then the 421)."""
    key = f"{area}.bin"
    cos = emulator.client()
    cos.put_object(Bucket=ALPHA, Key=key, Body=b"12345")
    ftp = log_in(admin, "127.0.0.5")
    lists = emulator.requests(contains=key).get("LIST", 0)
    emulator.rendezvous(contains=key, exact=True, kind="LIST", parties=2, timeout=120)
    ftp.sock.sendall(f"SIZE {key}\r\nNOOP\r\nNOOP\r\n".encode())
    wait_until(lambda: emulator.requests(contains=key).get("LIST", 0) > lists,
               what="the SIZE's LIST held in COS")
    wait_until(lambda: api.session_of("alice") is not None, what="the session listed")
    session_id = api.session_of("alice")["id"]
    assert api.call("DELETE", f"/sessions/{session_id}").status_code in (200, 202)
    wait_until(lambda: f"admin API asked to close session {session_id}" in admin.log_text(),
               what="the kick carried out")
    cos.list_objects(Bucket=ALPHA, Prefix=key)  # the rendezvous' second party: both go on
    ftp.sock.settimeout(20)
    replies = []
    with contextlib.suppress(EOFError):
        while True:
            replies.append(ftp.getline())
    assert replies == ["213 5", "421 Session closed by the server's administrator."]
    ftp.close()


def _admin_pid(lines: list[str]) -> str:
    return re.search(r"\[(\d+) admin\]", lines[-1]).group(1)


def _refused_as_banned(proc, source: str) -> bool:
    try:
        log_in(proc, source).close()
    except ftplib.error_temp as exc:
        return "421 Too many failed logins" in str(exc)
    return False


def test_a_ban_closes_the_connections_of_its_address_before_its_answer(api, admin):
    """16 connections from 127.0.0.14 (max_prelogin_connections_per_ip), greeted, not
    logged in; the admin API bans the address. Once the ban shows in its list (before the
    POST's answer, which waits for the bans file), each one's next command gets no answer
    but the ban's 421, then the end: the ban is in force from the moment it was made (each
    session checks before a command; each worker, woken at once, closes its own). Before:
    the workers' tick closed them, within a second: a command sent meanwhile was run (NOOP
    answered 200)."""
    members = [Member(admin.port, "127.0.0.14") for _ in range(16)]
    answers: list = []
    poster = threading.Thread(target=lambda: answers.append(api.call(
        "POST", "/bans", json={"address": "127.0.0.14", "seconds": 600})))
    try:
        assert {member.reply()[:4] for member in members} == {"220 "}
        poster.start()
        wait_until(lambda: any(ban["address"] == "127.0.0.14" and ban["banned"]
                               for ban in api.get("/bans")["bans"]), interval=0,
                   what="the ban in the table")
        for member in members:
            member.send("NOOP")
        replies = [(member.reply(), member.reply()) for member in members]
        assert set(replies) == {
            ("421 Too many failed logins from your address; try again later.", "")}, replies
    finally:
        poster.join()
        for member in members:
            member.close()
        assert api.call("DELETE", "/bans/127.0.0.14").json()["lifted"]
    assert answers[0].status_code == 201, answers[0].text


def test_ban_list_and_lift(api, admin):
    banned = api.call("POST", "/bans", json={"address": "127.0.0.6", "seconds": 500})
    assert banned.status_code == 201 and banned.json()["saved"]
    assert _refused_as_banned(admin, "127.0.0.6")
    listed = {b["address"]: b for b in api.get("/bans", token=RO_TOKEN)["bans"]}
    assert listed["127.0.0.6"]["banned"] and 0 < listed["127.0.0.6"]["seconds_left"] <= 500
    assert listed["127.0.0.6"]["banned_until"] == banned.json()["banned_until"]
    assert api.call("DELETE", "/bans/127.0.0.6", token=RO_TOKEN).status_code == 403
    lifted = api.call("DELETE", "/bans/%3A%3Affff%3A127.0.0.6")  # the same address
    assert (lifted.status_code, lifted.json()) == (200, {
        "address": "127.0.0.6", "lifted": True, "failures_forgotten": 0,
        "message": "ban lifted on this node"})
    log_in(admin, "127.0.0.6").quit()
    again = api.call("DELETE", "/bans/127.0.0.6")
    assert again.json()["message"] == "was not banned" and not again.json()["lifted"]
    lines = audit_lines(admin)
    assert any(line.endswith("ops (rw) from 127.0.0.1: POST /api/v1/bans: banned 127.0.0.6 "
                             "for 500s") for line in lines), lines
    assert any(line.endswith("DELETE /api/v1/bans/%3A%3Affff%3A127.0.0.6: unban 127.0.0.6: "
                             "ban lifted on this node") for line in lines), lines


@pytest.mark.parametrize(("body", "status", "error"), [
    ({"address": "10.0.0.0/8"}, 422, "give one address, not a network"),
    ({"address": "127.0.0.1"}, 422, "127.0.0.1 is your own address: the ban would lock "
                                    "you out"),
    ({"address": "not-an-ip\x1b[2J"}, 422, "'not-an-ip\\x1b[2J' is not an IP address (like "
                                           "192.0.2.7 or 2001:db8::7)"),
    ({"address": "127.0.0.9", "seconds": 0}, 422, '"seconds" must be a whole number from 1 '
                                                  'to 31622400'),
    ({"seconds": 5}, 422, 'send {"address": "192.0.2.7"} (and "seconds", if not ban_time)'),
])
def test_a_ban_that_cannot_be_made_changes_nothing(api, body, status, error):
    before = api.get("/bans")["bans"]
    response = api.call("POST", "/bans", json=body)
    assert (response.status_code, response.json()) == (status, {"error": error})
    assert api.get("/bans")["bans"] == before


def test_failed_tokens_are_rate_limited_and_ban_the_address(api, admin):
    stranger = AdminClient(admin_url(admin), token="guessed", source="127.0.0.8")
    statuses = []

    def failed_three_times() -> bool:
        statuses.append(stranger.call("GET", "/status").status_code)
        return statuses.count(401) == 3

    # Tried again as soon as each answer is in (no pause between polls): a try lands within
    # the second after a failure, and is answered 429 without a check.
    wait_until(failed_three_times, timeout=30, interval=0, what="three checked failures")
    assert 429 in statuses
    assert _refused_as_banned(admin, "127.0.0.8")  # max_login_failures = 3: FTP too
    right = stranger.call("GET", "/status", token=RW_TOKEN)
    assert right.status_code == 403 and "banned" in right.json()["error"]
    listed = {b["address"]: b for b in api.get("/bans")["bans"]}
    assert listed["127.0.0.8"]["failures"] == 3
    assert api.call("DELETE", "/bans/127.0.0.8").json()["failures_forgotten"] == 3
    assert stranger.call("GET", "/status", token=RW_TOKEN).status_code == 200
    assert "127.0.0.8: admin API: invalid token" in admin.log_text()


def test_accounts_never_show_a_secret(api, admin):
    answer = api.call("GET", "/accounts", token=RO_TOKEN)
    text = answer.text
    for secret in ("test-id", "test-key", "alice-pw", "reader-pw", "tenant-pw", "scrypt"):
        assert secret not in text
    accounts = {a["user"]: a for a in answer.json()["accounts"]}
    assert accounts["reader"] == {
        "user": "reader", "section": "COS_ACCOUNT_1", "bucket": ALPHA, "prefix": None,
        "region": "ap-guangzhou", "endpoint": None, "home_dir": "/home/reader",
        "authority": "R", "delete_enable": True, "anonymous": False, "tls_required": False,
        "ftp_encoding": "utf-8"}
    assert re.fullmatch(r"admin-[0-9a-f]{8}/", accounts["tenant"]["prefix"])


def test_quotas_show_a_tenants_usage_against_its_limits(api, admin):
    quotas = {q["user"]: q for q in api.get("/quotas", token=RO_TOKEN)["quotas"]}
    assert quotas["alice"] == {"user": "alice", "unlimited": True,
                               "size": {"used": None, "limit": None},
                               "files": {"used": None, "limit": None},
                               "reserved_bytes": None, "scanned": None}
    size, files = TENANT_QUOTA
    # Not used since the server started: its home is not scanned yet, its usage unknown.
    assert quotas["tenant"] == {"user": "tenant", "unlimited": False,
                                "size": {"used": None, "limit": size},
                                "files": {"used": None, "limit": files},
                                "reserved_bytes": None, "scanned": None}
    ftp = log_in(admin, user="tenant", password="tenant-pw")
    ftp.storbinary("STOR first.bin", io.BytesIO(b"q" * MIB))
    ftp.quit()
    wait_until(lambda: _tenant_usage(api) == ((MIB, size), (1, files)),
               what="the tenant's upload counted")
    answer = api.get("/quotas")
    tenant = next(q for q in answer["quotas"] if q["user"] == "tenant")
    assert answer["enabled"] and tenant["reserved_bytes"] == 0 and tenant["scanned"] > 0
    assert answer["folders"] == []  # no virtual folder has a quota


def _tenant_usage(api: AdminClient) -> tuple:
    tenant = next(q for q in api.get("/quotas")["quotas"] if q["user"] == "tenant")
    return tuple((tenant[kind]["used"], tenant[kind]["limit"]) for kind in ("size", "files"))


def test_quotas_list_a_virtual_folders_quota_with_the_users_mounting_it(emulator, tmp_path):
    """A folder with quota_size 3M and quota_files 7 mounted by two accounts: one entry in
    ``folders`` naming both, its usage unknown until used, then what an upload into it
    through either account's mount point stored."""
    proc, prefix = folder_admin_server(str(tmp_path / "folders"), emulator.port)
    with proc:
        api = AdminClient(admin_url(proc))
        answer = api.get("/quotas", token=RO_TOKEN)
        assert answer["folders"] == [{
            "folder": "pool", "bucket": ALPHA, "prefix": prefix, "users": ["fone", "ftwo"],
            "size": {"used": None, "limit": 3 * MIB}, "files": {"used": None, "limit": 7},
            "reserved_bytes": None, "scanned": None}]
        assert {q["user"]: q["unlimited"] for q in answer["quotas"]}["fone"]
        ftp = log_in(proc, user="ftwo", password="ftwo-pw")
        ftp.storbinary("STOR /pool/a.bin", io.BytesIO(b"p" * MIB))
        ftp.quit()
        wait_until(lambda: [(f["size"]["used"], f["files"]["used"]) for f in
                            api.get("/quotas")["folders"]] == [(MIB, 1)],
                   what="the upload into the folder counted")


def test_events_say_they_are_not_enabled(api):
    assert api.get("/events") == {"enabled": False, "queued": 0, "spool_bytes": 0,
                                  "spool_limit_bytes": None, "dead_letters": 0,
                                  "oldest_queued_seconds": None}


def test_a_cross_site_request_changes_nothing(api, admin):
    """What a browser adds to a request another site's page makes: refused before anything
    changes, even with a valid token; no answer grants CORS; a form's body is refused."""
    api.call("POST", "/bans", json={"address": "127.0.0.10"})
    for headers in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Origin": f"http://127.0.0.1:{admin.admin_port + 1}"}):
        response = api.call("DELETE", "/bans/127.0.0.10", headers=headers)
        assert response.status_code == 403 and "cross-" in response.json()["error"]
        assert "Access-Control-Allow-Origin" not in response.headers
    form = api.call("POST", "/bans", data={"address": "127.0.0.11"})  # urlencoded, as a form
    assert form.status_code == 415
    plain = api.call("POST", "/reload", data="x", headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415
    preflight = requests.options(f"{admin_url(admin)}/api/v1/bans/127.0.0.10", timeout=30,
                                 headers={"Origin": "http://evil.example",
                                          "Access-Control-Request-Method": "DELETE"})
    assert preflight.status_code == 405
    assert not [h for h in preflight.headers if h.lower().startswith("access-control")]
    assert "127.0.0.10" in {b["address"] for b in api.get("/bans")["bans"]}
    assert "127.0.0.11" not in {b["address"] for b in api.get("/bans")["bans"]}
    same_origin = api.call("DELETE", "/bans/127.0.0.10",
                           headers={"Origin": admin_url(admin), "Sec-Fetch-Site": "same-origin"})
    assert same_origin.status_code == 200 and same_origin.json()["lifted"]


def test_head_answers_as_get_without_a_body_and_405_says_what_is_allowed(api, admin):
    """HEAD of a resource is its GET's status and headers, no body (what monitoring probes
    and `curl -I` send); a method a resource does not take is 405 with an Allow header."""
    url = f"{admin_url(admin)}/api/v1/status"
    auth = {"Authorization": f"Bearer {api.token}"}
    head = requests.head(url, headers=auth, timeout=30)
    get = requests.get(url, headers=auth, timeout=30)
    assert (head.status_code, head.headers["Content-Type"]) == (200, "application/json")
    assert head.content == b"" and int(head.headers["Content-Length"]) > 0
    assert requests.head(url, timeout=30).status_code == 401  # a token still needed
    assert get.status_code == 200
    wrong = requests.put(url, headers=auth, timeout=30)
    assert wrong.status_code == 405
    assert wrong.headers["Allow"] == "GET, HEAD"
    bans = requests.patch(f"{admin_url(admin)}/api/v1/bans", headers=auth, timeout=30)
    assert bans.status_code == 405 and bans.headers["Allow"] == "GET, HEAD, POST"


def test_the_console_and_document_are_served_with_a_strict_policy(admin):
    page = requests.get(f"{admin_url(admin)}/", timeout=30)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["X-Frame-Options"] == "DENY"
    assert "<script src=\"/console.js\" defer></script>" in page.text
    assert "Set-Cookie" not in page.headers
    script = requests.get(f"{admin_url(admin)}/console.js", timeout=30)
    assert script.headers["Content-Type"].startswith("text/javascript")
    assert "sessionStorage" in script.text and "document.cookie" not in script.text
    assert requests.get(f"{admin_url(admin)}/other", timeout=30).status_code == 404


def test_slow_and_oversized_requests_are_cut_off(api, admin):
    with socket.create_connection(("127.0.0.1", admin.admin_port), timeout=30) as sock:
        sock.sendall(b"GET /api/v1/status HTTP/1.1\r\n")  # and nothing more
        assert sock.recv(4096) == b""  # closed at the deadline, unanswered
    big = api.call("POST", "/bans", data=b"{" + b" " * 8000 + b"}",
                   headers={"Content-Type": "application/json"})
    assert big.status_code == 413
    assert "admin connection closed: request head not complete within 5s" in admin.log_text()


@contextlib.contextmanager
def restored_config(proc) -> Iterator[str]:
    """The text of ``proc``'s configuration file, written back when the block ends."""
    with open(proc.config_path, encoding="utf-8") as handle:
        good = handle.read()
    try:
        yield good
    finally:
        write_config_text(proc, good)


def write_config_text(proc, text: str) -> None:
    with open(proc.config_path, "w", encoding="utf-8") as handle:
        handle.write(text)


def test_reload_refuses_a_bad_file_and_takes_a_good_one(api, admin):
    generation = api.get("/status")["master"]["generation"]
    try:
        with restored_config(admin) as good:
            write_config_text(admin, good.replace("worker_processes = 2",
                                                  "worker_processes = many"))
            refused = api.call("POST", "/reload")
            assert (refused.status_code, refused.json()) == (422, {
                "error": "the configuration was refused; nothing changed",
                "errors": [f"{admin.config_path} [OPTIONAL] worker_processes: must be an "
                           "integer, got 'many'"]})
            assert api.call("POST", "/reload", token=RO_TOKEN).status_code == 403
            status = api.get("/status")
            assert status["master"]["generation"] == generation
            assert status["reload"]["state"] == "failed"
            assert "'many'" in status["reload"]["errors"][0]
            log_in(admin).quit()  # still serving
            new_token = "rw-after-reload-7c1d"
            write_config_text(admin, re.sub(r"tokens = .*",
                                            f"tokens = next:{hash_token(new_token)}:rw", good))
            reloaded = api.call("POST", "/reload")
            assert (reloaded.status_code, reloaded.json()) == (200, {
                "result": "ok", "generation": generation + 1, "warnings": [],
                "warnings_not_shown": 0})
            # The admin API was replaced with the new file's tokens: the old one is refused.
            old = AdminClient(admin_url(admin), token=RW_TOKEN, source="127.0.0.12")
            wait_until(lambda: old.call("GET", "/status").status_code == 401,
                       what="the old token refused")
            renewed = AdminClient(admin_url(admin), token=new_token).get("/status")
            assert renewed["you"]["token"] == "next" and renewed["reload"] == {
                "state": "ok", "count": renewed["reload"]["count"], "errors": [], "warnings": [],
                "warnings_not_shown": 0}
    finally:  # the new token's server back to the file's
        AdminClient(admin_url(admin), token="rw-after-reload-7c1d").call("POST", "/reload")
    assert any(line.endswith(f"POST /api/v1/reload: reloaded: generation {generation + 1}")
               for line in audit_lines(admin))


def test_a_reload_answers_the_warnings_the_master_logged_for_it(api, admin):
    """As ``cosftpctl reload`` prints them: a setting that waits for the next start is
    something the caller must hear of, not only the log."""
    with restored_config(admin) as good:
        write_config_text(admin, good.replace("\n[OPTIONAL]\n",
                                              "\n[OPTIONAL]\nipv6_prefix_length = 56\n"))
        reloaded = api.call("POST", "/reload")
        assert reloaded.status_code == 200, reloaded.text
        warnings = reloaded.json()["warnings"]
        assert len(warnings) == 1 and warnings[0].startswith(
            "reload: [OPTIONAL] ipv6_prefix_length takes effect at the next start"), warnings
        assert reloaded.json()["warnings_not_shown"] == 0
        assert api.get("/status")["reload"]["warnings"] == warnings
    assert api.call("POST", "/reload").json()["warnings"] == []


def test_https_with_the_servers_certificate(emulator, tmp_path):
    cert, key = write_certificate(tmp_path)
    proc = admin_server(str(tmp_path / "tls"), emulator.port,
                        network={"tls_certfile": cert, "tls_keyfile": key})
    with proc:
        client = AdminClient(admin_url(proc, "https"), verify=cert)
        assert client.get("/status")["master"]["auth_tls"]
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{admin_url(proc)}/api/v1/status", timeout=30)  # no plain HTTP
        with socket.create_connection(("127.0.0.1", proc.admin_port), timeout=30) as sock:
            sock.sendall(b"\x16\x03\x01")  # a ClientHello's first bytes, then nothing
            assert sock.recv(4096) == b""  # closed by the server (the socket's timeout: 30 s)
        wait_until(lambda: "admin connection closed: TLS handshake not complete within 5s"
                   in proc.log_text(), what="the stalled handshake logged")


@pytest.mark.parametrize(("tokens", "problem"), [
    ("ops:plain-token:rw", "token ops: store the token's hash (cosftpctl hash-password), "
                           "never the token itself"),
    ("ops:{hash}:admin", "token ops: the mode must be rw or ro"),
    ("ops:{hash}:rw, ops:{hash}:ro", "token ops is listed twice"),
    ("o p:{hash}:rw", "entry 1: the name must be 1-32 letters, digits, '_', '.' or '-'"),
    ("ops:{hash}", "entry 1 is not name:hash:rw or name:hash:ro"),
])
def test_check_names_a_bad_token_without_quoting_a_hash(tokens, problem):
    hashed = "scrypt$16384$8$1$c2FsdHNhbHRzYWx0c2FsdA==$" + "A" * 43 + "="
    text = ("[COS_ACCOUNT_0]\ncos_secretid = a\ncos_secretkey = b\ncos_bucket = x-1250000000\n"
            "cos_region = ap-guangzhou\nhome_dir = /\nftp_login_user_name = u\n"
            "ftp_login_user_password = p\nauthority = RW\n[NETWORK]\nadmin_port = 9999\n"
            f"[ADMIN]\ntokens = {tokens.format(hash=hashed)}\n")
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "t.conf")
    assert str(raised.value) == f"t.conf [ADMIN] tokens: {problem}"
    assert "scrypt$" not in str(raised.value)


def test_the_admin_port_needs_a_token_and_a_port_of_its_own():
    base = ("[COS_ACCOUNT_0]\ncos_secretid = a\ncos_secretkey = b\ncos_bucket = x-1250000000\n"
            "cos_region = ap-guangzhou\nhome_dir = /\nftp_login_user_name = u\n"
            "ftp_login_user_password = p\nauthority = RW\n[NETWORK]\nlisten_port = 2121\n")
    for network, problem in (("admin_port = 9999\n", "[NETWORK] admin_port: needs at least "
                              "one token in [ADMIN] tokens"),
                             ("admin_port = 2121\n", "[NETWORK] admin_port: 2121 is already "
                              "listen_port")):
        with pytest.raises(ConfigError) as raised:
            parse_config(base + network, "t.conf")
        assert problem in str(raised.value)
    assert parse_config(base, "t.conf").admin.port == 0  # off by default


def test_bans_saved_by_the_api_survive_a_restart(emulator, tmp_path):
    proc = admin_server(str(tmp_path), emulator.port, max_login_failures="3")
    with proc:
        client = AdminClient(admin_url(proc))
        assert client.call("POST", "/bans", json={"address": "127.0.0.13"}).status_code == 201
    with open(f"{proc.log_dir}/cosftp.pid.bans", encoding="ascii") as handle:
        saved = json.load(handle)["bans"]
    assert [ban["address"] for ban in saved] == ["127.0.0.13"]


def test_a_graceful_stop_shows_in_status_and_refuses_a_reload(emulator, tmp_path, area):
    """A graceful stop waits for an upload; meanwhile ``GET /status`` and ``cosftpctl
    status`` say the server is stopping gracefully (not running), the admin API, still up,
    answers a reload 503 saying the server is stopping (not after waiting for the master to
    take it), and the upload still ends with 226."""
    proc = admin_server(str(tmp_path), emulator.port)
    with proc:
        api = AdminClient(admin_url(proc))
        assert api.get("/status")["master"]["state"] == "running"
        ftp = log_in(proc)
        upload = HeldUpload(ftp, f"{area}.bin", 2 * MIB)
        upload.send(MIB)
        # The worker counts the upload in the session's thread just after the 150: a
        # graceful stop before that finds no transfer in flight to wait for.
        wait_until(lambda: sum(w["uploads"] for w in api.get("/status")["workers"]) == 1,
                   what="the upload counted")
        proc.proc.send_signal(signal.SIGQUIT)
        wait_until(lambda: connection_refused(proc.port), what="the FTP listener closed")
        assert api.get("/status")["master"]["state"] == "stopping gracefully"
        shown = proc.ctl("status")
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.splitlines()[1] == (
            "state: stopping gracefully: new connections refused; the transfers in flight "
            "finish (graceful_timeout), then the workers exit")
        refused = api.call("POST", "/reload")
        assert (refused.status_code, refused.json()) == (503, {
            "error": "the server is stopping; start it again to use the configuration file"})
        assert "reload asked for by the admin API" not in proc.log_text()
        upload.send(MIB)
        upload.conn.close()
        assert ftp.voidresp().startswith("226")
        ftp.close()  # no QUIT: the stopping worker may have said 421 and closed already
        assert proc.proc.wait(60) == 0


def _admin_process(proc) -> psutil.Process:
    """The admin API's process: the master's child titled ``cosftp: admin API``."""
    for child in psutil.Process(proc.proc.pid).children():
        with contextlib.suppress(psutil.Error):
            if "admin API" in " ".join(child.cmdline()):
                return child
    raise AssertionError("no admin API process")


def _answered(client: AdminClient, token: str) -> tuple[int, Any, int]:
    """``GET /status`` with ``token`` until it is answered: (status, its JSON, connections
    closed unanswered before). A connection over a limit (8 from one address, 32 at once) is
    closed at once without an answer, and a token whose check waited its turn past
    CHECK_WAIT (a loaded machine) is answered 503 "try again": a client tries again, as
    browsers do."""
    refused = 0
    while True:
        try:
            response = client.call("GET", "/status", token=token)
        except requests.ConnectionError:
            response = None
        if response is not None and response.status_code != 503:
            return response.status_code, response.json(), refused
        refused += 1
        assert refused < 10_000, "never answered"


def test_a_crowd_is_answered_within_the_connection_limits(emulator, tmp_path):
    """A slowloris holding its address's 8 connections with half a request (a 9th from it
    is closed unanswered at once), then 30 clients with valid tokens at once (12 of them
    from one address, over its 8), and 5 with wrong tokens, on a new server (the token not
    yet remembered: the requests bringing it while it is checked share that scrypt, two
    checks at once at most): every valid client gets its
    status as its token's owner, every wrong token 401, nothing hangs, and the admin API's
    threads stay within its connection cap."""
    proc = admin_server(str(tmp_path), emulator.port)
    with proc:
        url, admin = admin_url(proc), _admin_process(proc)
        AdminClient(url).document()  # the OpenAPI document, fetched once for all
        idle_threads = admin.num_threads()
        held = [socket.create_connection(("127.0.0.1", proc.admin_port), timeout=30,
                                         source_address=("127.0.0.50", 0))
                for _ in range(MAX_PER_SOURCE)]
        for sock in held:
            sock.sendall(b"GET /api/v1/status HTTP/1.1\r\n")  # and nothing more
        with socket.create_connection(("127.0.0.1", proc.admin_port), timeout=30,
                                      source_address=("127.0.0.50", 0)) as extra:
            assert extra.recv(4096) == b""
        # Closed at once, not at the request deadline: the 8 before it are still open.
        assert select.select(held, [], [], 0)[0] == []
        peak = [idle_threads]
        crowd_done = threading.Event()

        def watch_threads() -> None:
            while not crowd_done.wait(0.01):
                with contextlib.suppress(psutil.Error):
                    peak.append(admin.num_threads())

        watcher = threading.Thread(target=watch_threads)
        watcher.start()
        sources = ["127.0.0.30"] * 12 + [f"127.0.0.{n}" for n in range(60, 78)]
        wrong = [f"127.0.0.{n}" for n in range(90, 95)]
        try:
            with concurrent.futures.ThreadPoolExecutor(len(sources) + len(wrong)) as pool:
                valid = [pool.submit(_answered, AdminClient(url, source=s), RW_TOKEN)
                         for s in sources]
                guessed = [pool.submit(_answered, AdminClient(url, source=s), "guessed")
                           for s in wrong]
                answers = [f.result(timeout=120) for f in valid]
                failures = [f.result(timeout=120) for f in guessed]
        finally:
            crowd_done.set()
            watcher.join()
            for sock in held:
                sock.close()
        assert [(status, body.get("you", body)) for status, body, _ in answers] == \
            [(200, {"token": "ops", "writable": True})] * len(sources)
        assert [(status, body) for status, body, _ in failures] == \
            [(401, {"error": "invalid token"})] * len(wrong)
        assert max(peak) <= idle_threads + MAX_CONNECTIONS, max(peak)
        wait_until(lambda: admin.num_threads() == idle_threads, what="the threads ended")


class _HeldFirstCheck:
    """A stored token hash whose first check waits for ``release``; counts its checks."""

    def __init__(self, stored: Any) -> None:
        self.stored, self.calls, self.release = stored, 0, threading.Event()
        self._lock = threading.Lock()

    def matches(self, token: str) -> bool:
        with self._lock:
            self.calls += 1
            first = self.calls == 1
        if first:
            self.release.wait(60)
        return self.stored.matches(token)


def _waiting_in(thread: threading.Thread, function: str) -> bool:
    frame = sys._current_frames().get(thread.ident)
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False


def test_requests_bringing_a_token_being_checked_share_its_check():
    """Eight requests with one token before it is remembered (a crowd of console tabs after
    a reload): one scrypt answers them all. Each ran its own, two at a time, and a crowd on
    a loaded machine queued past CHECK_WAIT into 503s (test_a_crowd_is_answered... did)."""
    verifier = TokenVerifier((AdminToken("ops", hash_token(RW_TOKEN), True),))
    caller, stored = verifier._tokens[0]
    held = _HeldFirstCheck(stored)
    verifier._tokens[0] = (caller, held)
    answers: list[Any] = []
    threads = [threading.Thread(target=lambda n=n: answers.append(
        verifier.verify(RW_TOKEN, f"127.0.0.{n}"))) for n in range(1, 9)]
    for thread in threads:
        thread.start()
    wait_until(lambda: held.calls >= 1, what="the first check")
    first = next(t for t in threads if _waiting_in(t, "matches"))
    wait_until(lambda: held.calls >= 2 or all(_waiting_in(t, "_wait") for t in threads
                                              if t is not first),
               what="a second check, or every other request waiting for the first")
    held.release.set()
    for thread in threads:
        thread.join(60)
    assert held.calls == 1
    assert answers == [caller] * 8


def test_the_ban_list_says_whose_ban_the_node_holds(emulator, tmp_path):
    """A node holds its own bans and copies of bans made on other nodes (``BanRow.copy``;
    here restored from its bans file, as a node's start restores both): ``GET /bans`` says
    which in ``copy`` (null for an address with failed logins only), as ``cosftpctl
    bans``'s WHOSE column does. Found: the list did not say."""
    proc = admin_server(str(tmp_path), emulator.port, max_login_failures="3")
    until = int(time.time()) + 600
    os.makedirs(proc.log_dir, exist_ok=True)
    with open(f"{proc.log_dir}/cosftp.pid.bans", "w", encoding="ascii") as handle:
        json.dump({"bans": [{"address": "127.0.0.31", "until": until},
                            {"address": "127.0.0.32", "until": until, "copy": True}]}, handle)
    os.chmod(f"{proc.log_dir}/cosftp.pid.bans", 0o600)  # as the master writes it
    with proc:
        with pytest.raises(ftplib.error_perm):
            log_in(proc, "127.0.0.33", password="wrong")
        listed = {b["address"]: b["copy"] for b in AdminClient(admin_url(proc)).get("/bans")
                  ["bans"]}
    assert listed == {"127.0.0.31": False, "127.0.0.32": True, "127.0.0.33": None}
