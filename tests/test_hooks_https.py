"""The hooks over HTTPS, as receivers and auth services are deployed: each test service
behind a TLS front (``tls_front``), the server trusting its certificate through
``SSL_CERT_FILE`` (OpenSSL's default store, which urllib3 reads) or not at all.

An untrusted receiver is a receiver down: its events wait in the spool, and reach it once
the server trusts it. An untrusted auth service is an auth service down: 421, and the log
says why.
"""

from __future__ import annotations

import ftplib

import pytest

from .auth_service import AuthService
from .conftest import ALPHA
from .hook_receiver import Receiver
from .hooked import FILE_ACCOUNTS, definition
from .server_proc import Account, ServerProcess, wait_until
from .test_commands import put
from .test_events import SECRET, spool_batches
from .tls_front import TlsFront, environment

UNTRUSTED = "CERTIFICATE_VERIFY_FAILED"


@pytest.fixture
def receiver(tmp_path):
    rec = Receiver(str(tmp_path / "received.jsonl"), SECRET).start()
    front = TlsFront(tmp_path, rec.port)
    try:
        with front:
            yield rec, f"https://127.0.0.1:{front.port}/events", front.ca
    finally:
        rec.kill()


def _uploads(receiver: Receiver) -> set[str]:
    return {e["path"] for e in receiver.accepted() if e["event"] == "upload"}


def test_events_reach_an_https_receiver_and_wait_while_it_is_not_trusted(emulator, tmp_path,
                                                                         receiver, area):
    rec, url, ca = receiver
    server = ServerProcess(str(tmp_path / "server"), emulator.port,
                           [Account("ev", "ev-pw", ALPHA)],
                           hooks={"event_hook_secret": SECRET, "event_hook_url": url,
                                  "event_hook_events": "upload"},
                           env=environment())
    with server:
        ftp = server.login("ev", "ev-pw")
        ftp.mkd(area)
        assert put(ftp, f"{area}/first", b"1" * 100).startswith("226")
        ftp.quit()
        wait_until(lambda: UNTRUSTED in server.log_text(), what="the refused certificate logged")
        assert spool_batches(server), "the event was dropped"
    assert not _uploads(rec)
    server.env = environment(ca)
    with server:
        ftp = server.login("ev", "ev-pw")
        assert put(ftp, f"{area}/second", b"2" * 100).startswith("226")
        ftp.quit()
        wait_until(lambda: _uploads(rec) == {f"/{area}/first", f"/{area}/second"},
                   timeout=30, what="both uploads at the receiver")
    assert all(entry["verified"] for entry in rec.entries())


@pytest.fixture
def auth_front(tmp_path):
    service = AuthService().start()
    try:
        with TlsFront(tmp_path, service.port) as front:
            yield service, f"https://127.0.0.1:{front.port}/auth", front.ca
    finally:
        service.stop()


@pytest.mark.parametrize("trusted", [True, False])
def test_an_https_auth_service_is_asked_only_when_trusted(emulator, tmp_path, auth_front,
                                                          trusted):
    service, url, ca = auth_front
    service.users["hooked"] = ("hooked-pw", definition(emulator))
    server = ServerProcess(str(tmp_path / "server"), emulator.port, FILE_ACCOUNTS,
                           optional={"auth_hook_url": url, "auth_hook_timeout": "5000",
                                     "max_login_failures": "0"},
                           env=environment(ca if trusted else ""))
    with server:
        if trusted:
            server.login("hooked", "hooked-pw").quit()
            assert [asked["user"] for asked in service.asked] == ["hooked"]
            return
        with pytest.raises(ftplib.error_temp, match=r"^421"):
            server.login("hooked", "hooked-pw")
        assert not service.asked
        wait_until(lambda: UNTRUSTED in server.log_text(), what="the refused certificate logged")
        server.login("filer", "filer-pw").quit()  # the file's accounts log in as ever

