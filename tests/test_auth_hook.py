"""External authentication end to end: a real server asks a small HTTP service (or a
program) about users that are not in its file, and serves the accounts it answers with."""

from __future__ import annotations

import contextlib
import ftplib
import io
import os
import re
import signal
import socket
import stat
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import psutil
import pytest

from cosftp_prefork.config.options import SETTINGS
from cosftp_prefork.config.quotas import home_id
from cosftp_prefork.config.settings import hook_account, parse_config
from cosftp_prefork.cos.registry import BucketRegistry

from .admin_client import RO_TOKEN, AdminClient, admin_server, admin_url
from .auth_service import ERROR, FORBIDDEN, HELD, NORMAL, NOT_JSON, SLOW, AuthService
from .conftest import ALPHA, BETA
from .crowds import kill_the_worker, workers_of
from .server_proc import Account, ServerProcess, wait_until
from .test_cluster import Daemon, LoneNode, start_redis
from .test_cluster_redis import RedisUnderTest
from .test_commands import put
from .test_master import sessions_by_pid
from .test_quotas import (
    announced_race,
    keys_under,
    kill_while_holding,
    park,
    reserved,
    stopped,
    used,
)
from .tls_clients import client_context, write_certificate

MIB = 1024 * 1024

# The keys a hook's answer may name (cos_credentials) rather than send.
SHARED_KEYS = "\n[COS_CREDENTIALS_shared]\ncos_secretid = shared-id\ncos_secretkey = shared-key\n"
FILE_ACCOUNTS = [Account("filer", "filer-pw", ALPHA, extra=SHARED_KEYS)]


def definition(emulator, bucket: str = ALPHA, **options) -> dict:
    """An account definition as a hook answers it: a [COS_ACCOUNT_N] section's options."""
    return {"cos_bucket": bucket, "cos_region": "ap-guangzhou", "cos_protocol": "http",
            "cos_ip": "127.0.0.1", "cos_port": emulator.port, "cos_secretid": "test-id",
            "cos_secretkey": "test-key", "authority": "RW", **options}


@pytest.fixture
def service():
    hook = AuthService().start()
    yield hook
    hook.stop()


def hooked_server(emulator, tmp_path, url: str, kind: type[ServerProcess] = ServerProcess,
                  **optional: str) -> ServerProcess:
    # One worker: the cache of yeses is per worker, and the tests count the hook's calls.
    settings = {"auth_hook_url": url, "auth_hook_timeout": "1000", "worker_processes": "1",
                "max_login_failures": "0", **optional}
    return kind(str(tmp_path), emulator.port, FILE_ACCOUNTS, optional=settings)


@pytest.fixture
def server(emulator, tmp_path, service):
    with hooked_server(emulator, tmp_path, service.url) as proc:
        yield proc


@pytest.fixture(scope="module")
def hook():
    """The hook of the tests that only add users of their own to it (none changes its mode
    or stops it): they share it and ``hooked``, one server start for all of them."""
    shared = AuthService().start()
    yield shared
    shared.stop()


@pytest.fixture(scope="module")
def hooked(emulator, tmp_path_factory, hook):
    with hooked_server(emulator, tmp_path_factory.mktemp("hooked"), hook.url) as proc:
        yield proc


def refused(server: ServerProcess, user: str, password: str) -> str:
    """The reply to a login that must fail."""
    with pytest.raises(ftplib.Error) as failure:
        server.login(user, password).quit()
    return str(failure.value)


def test_a_hook_account_logs_in_and_reaches_its_bucket_beside_the_files(hooked, hook,
                                                                        emulator, cos):
    keys = {"cos_secretid": None, "cos_secretkey": None, "cos_credentials": "shared"}
    hook.users["hooky"] = ("hooky-pw", definition(emulator, BETA, **keys))
    name = f"hook-{uuid.uuid4().hex}.txt"
    with hooked.login("hooky", "hooky-pw") as ftp:
        ftp.storbinary(f"STOR {name}", io.BytesIO(b"from a hook account"))
    stored = cos.get_object(Bucket=BETA, Key=name)["Body"].get_raw_stream().read()
    assert stored == b"from a hook account"
    assert hook.asked[-1] == {"user": "hooky", "password": "hooky-pw",
                                 "client_address": "127.0.0.1", "tls": False}
    # Beside it, the file's accounts are the file's: never sent to the hook.
    hooked.login("filer", "filer-pw").quit()
    assert refused(hooked, "filer", "wrong").startswith("530")
    assert hook.asked_for("filer") == 0


def test_the_hooks_authority_holds(hooked, hook, emulator):
    hook.users["looker"] = ("looker-pw", definition(emulator, authority="R",
                                                       delete_enable=False))
    with hooked.login("looker", "looker-pw") as ftp, pytest.raises(ftplib.error_perm,
                                                                   match=r"^550"):
        ftp.storbinary("STOR refused.txt", io.BytesIO(b"x"))


@pytest.mark.parametrize("mode", [NORMAL, FORBIDDEN])
def test_a_no_is_530_and_never_cached(server, service, emulator, mode):
    service.mode = mode  # {"allow": false}, or HTTP 403
    service.users["denied"] = ("right-pw", definition(emulator))
    assert refused(server, "denied", "wrong-pw").startswith("530")
    assert refused(server, "denied", "wrong-pw").startswith("530")
    assert service.asked_for("denied") == 2


@pytest.mark.parametrize("bad, reason", [
    ({"cos_bucket": "not a bucket"}, "cos_bucket: must be <name>-<appid>"),
    ({"authority": "X"}, "authority: must be one of R, W, RW"),
    ({"ftp_login_user_password": "x"}, "ftp_login_user_password: is set by the server"),
    ({"quota": 5}, "quota: is not an account option"),
    ({"cos_secretkey": "${HOME}"}, "environment variable HOME is not set"),
])
def test_an_invalid_account_is_refused_with_its_reason_logged(hooked, hook, emulator,
                                                               bad, reason):
    user = f"bad{uuid.uuid4().hex[:8]}"
    hook.users[user] = ("pw", {**definition(emulator), **bad})
    assert refused(hooked, user, "pw").startswith("530")
    wait_until(lambda: reason in hooked.log_text(), what=f"the reason {reason!r} logged")


def test_an_answer_that_is_not_json_is_refused(server, service):
    service.mode = NOT_JSON
    assert refused(server, "anyone", "pw").startswith("530")
    wait_until(lambda: "the answer is not JSON" in server.log_text())


@pytest.mark.parametrize("mode", [SLOW, ERROR])
def test_a_slow_or_failing_hook_says_try_later(server, service, emulator, mode):
    service.users["patient"] = ("patient-pw", definition(emulator))
    service.mode = mode
    assert refused(server, "patient", "patient-pw").startswith("421")
    service.release.set()
    service.mode = NORMAL
    server.login("patient", "patient-pw").quit()


def test_a_hook_that_is_down_says_try_later(server, service, emulator):
    service.users["patient"] = ("patient-pw", definition(emulator))
    service.stop()
    assert refused(server, "patient", "patient-pw").startswith("421")
    service.start()
    server.login("patient", "patient-pw").quit()


def test_a_yes_is_cached_for_its_password_only_until_it_expires(emulator, tmp_path, service):
    service.users["cached"] = ("cached-pw", definition(emulator))
    with hooked_server(emulator, tmp_path, service.url, auth_cache_ttl="2") as server:
        server.login("cached", "cached-pw").quit()
        server.login("cached", "cached-pw").quit()
        assert service.asked_for("cached") == 1
        # Another password is never the cached one's: the hook is asked, and says no.
        assert refused(server, "cached", "other-pw").startswith("530")
        assert service.asked_for("cached") == 2
        # Once the yes expired, the hook is asked again.
        service.users["cached"] = ("new-pw", definition(emulator))
        wait_until(lambda: logs_in(server, "cached", "new-pw"), timeout=30,
                   what="the cached yes to expire")
        assert service.asked_for("cached") >= 3


def logs_in(server: ServerProcess, user: str, password: str) -> bool:
    try:
        server.login(user, password).quit()
        return True
    except (ftplib.error_perm, ftplib.error_temp):  # 530, or 421: try later
        return False


def test_wrong_passwords_through_the_hook_count_towards_a_ban_a_hook_down_does_not(
        emulator, tmp_path, service):
    service.users["guess"] = ("right-pw", definition(emulator))
    with hooked_server(emulator, tmp_path, service.url, max_login_failures="2") as server:
        service.mode = ERROR
        for _ in range(3):
            assert refused(server, "guess", "right-pw").startswith("421")
        service.mode = NORMAL
        server.login("guess", "right-pw").quit()  # not banned
        for _ in range(2):
            refused(server, "guess", "wrong-pw")
        assert refused(server, "guess", "right-pw").startswith("421")  # banned


def test_a_hook_command_answers_on_stdout(emulator, tmp_path):
    program = tmp_path / "hook.py"
    program.write_text(f"""#!{sys.executable}
import json, sys
asked = json.load(sys.stdin)
ok = asked["user"] == "cmd" and asked["password"] == "cmd-pw"
json.dump({{"allow": ok, "account": {definition(emulator)!r}}}, sys.stdout)
""")
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    settings = {"auth_hook_command": str(program), "auth_hook_timeout": "10000",
                "worker_processes": "1", "max_login_failures": "0"}
    with ServerProcess(str(tmp_path / "srv"), emulator.port, FILE_ACCOUNTS,
                       optional=settings) as server:
        server.login("cmd", "cmd-pw").quit()
        assert refused(server, "cmd", "wrong").startswith("530")


def test_a_reload_changes_the_hook(emulator, tmp_path, service):
    other = AuthService().start()
    try:
        other.users["moved"] = ("moved-pw", definition(emulator))
        with hooked_server(emulator, tmp_path, service.url) as server:
            assert refused(server, "moved", "moved-pw").startswith("530")
            server.optional["auth_hook_url"] = other.url
            server.write_config()
            assert server.ctl("reload").returncode == 0
            wait_until(lambda: logs_in(server, "moved", "moved-pw"), timeout=30,
                       what="the new hook to be asked")
    finally:
        other.stop()


def test_hook_first_asks_the_hook_before_the_file(emulator, tmp_path, service):
    # The hook knows "filer" as a reader; the file knows it as a writer.
    service.users["filer"] = ("hook-pw", definition(emulator, authority="R"))
    with hooked_server(emulator, tmp_path, service.url, auth_hook_order="hook_first") as server:
        with server.login("filer", "hook-pw") as ftp, pytest.raises(ftplib.error_perm,
                                                                    match=r"^550"):
            ftp.storbinary("STOR refused.txt", io.BytesIO(b"x"))
        # The hook says no to the file's password: the file's account decides.
        with server.login("filer", "filer-pw") as ftp:
            ftp.storbinary(f"STOR {uuid.uuid4().hex}.txt", io.BytesIO(b"x"))
        assert service.asked_for("filer") == 2


def test_the_hook_is_told_about_tls_and_its_tls_required_holds(emulator, tmp_path, service):
    cert, key = write_certificate(tmp_path)
    service.users["secure"] = ("secure-pw", definition(emulator, tls_required=True))
    with ServerProcess(str(tmp_path / "srv"), emulator.port, FILE_ACCOUNTS,
                       optional={"auth_hook_url": service.url, "auth_hook_timeout": "1000",
                                 "worker_processes": "1", "max_login_failures": "0"},
                       network={"tls_certfile": cert, "tls_keyfile": key}) as server:
        assert refused(server, "secure", "secure-pw").startswith("530")
        assert service.asked[-1]["tls"] is False
        wait_until(lambda: "requires TLS" in server.log_text())
        with ftplib.FTP_TLS(context=client_context()) as ftp:
            ftp.connect("127.0.0.1", server.port, timeout=30)
            ftp.login("secure", "secure-pw")
            ftp.prot_p()
            ftp.nlst()
        assert service.asked[-1]["tls"] is True


@pytest.mark.skipif(not any(s.name == "cos_prefix" for s in SETTINGS),
                    reason="cos_prefix is not an account option yet (the prefixes branch)")
def test_a_hook_account_with_a_prefix_stays_inside_it(hooked, hook, emulator, cos):
    prefix = f"tenants/{uuid.uuid4().hex}"
    hook.users["tenant"] = ("tenant-pw", definition(emulator, cos_prefix=prefix))
    with hooked.login("tenant", "tenant-pw") as ftp:
        ftp.storbinary("STOR inside.txt", io.BytesIO(b"tenant data"))
        assert ftp.nlst() == ["inside.txt"]
    stored = cos.get_object(Bucket=ALPHA, Key=f"{prefix}/inside.txt")
    assert stored["Body"].get_raw_stream().read() == b"tenant data"


def test_the_cos_clients_of_hook_accounts_are_shared_and_bounded(emulator):
    """Users cycling through the hook cannot grow a worker's clients without bound: accounts
    reaching one bucket with the same keys share one, and only the last used are kept."""
    config = parse_config(f"""[COS_ACCOUNT_0]
cos_secretid = i
cos_secretkey = k
cos_bucket = {ALPHA}
cos_region = ap-guangzhou
home_dir = /h
ftp_login_user_name = filer
ftp_login_user_password = pw
authority = RW
[OPTIONAL]
auth_hook_url = http://127.0.0.1:1/auth
""")
    registry = BucketRegistry()
    first = registry.bucket(hook_account(definition(emulator), "one", config))
    assert registry.bucket(hook_account(definition(emulator), "two", config)) is first
    for number in range(BucketRegistry.MAX_HOOK_BUCKETS):
        registry.bucket(hook_account(definition(emulator, cos_secretid=f"id{number}"),
                                     f"user{number}", config))
    assert registry.bucket(hook_account(definition(emulator), "one", config)) is not first


def test_a_quota_of_the_file_counts_the_hook_accounts_under_it(emulator, tmp_path, service):
    home = f"hq-{uuid.uuid4().hex[:8]}/"
    boss = Account("boss", "boss-pw", ALPHA, extra=f"cos_prefix = {home}\nquota_files = 1")
    service.users["member"] = ("member-pw", definition(emulator, cos_prefix=f"{home}member"))
    settings = {"auth_hook_url": service.url, "auth_hook_timeout": "1000",
                "worker_processes": "1", "max_login_failures": "0"}
    with ServerProcess(str(tmp_path), emulator.port, [*FILE_ACCOUNTS, boss],
                       optional=settings) as server, server.login("member", "member-pw") as ftp:
        ftp.storbinary("STOR one.txt", io.BytesIO(b"1"))
        with pytest.raises(ftplib.error_perm, match=r"^552"):
            ftp.storbinary("STOR two.txt", io.BytesIO(b"2"))


def test_a_hook_accounts_encoding_applies_once_logged_in(hooked, hook, emulator, cos):
    hook.users["camera"] = ("camera-pw", definition(emulator, ftp_encoding="gbk"))
    name = f"照片-{uuid.uuid4().hex[:8]}.jpg"
    ftp = ftplib.FTP(encoding="gbk")
    with ftp:
        ftp.connect("127.0.0.1", hooked.port, timeout=30)
        ftp.login("camera", "camera-pw")
        ftp.storbinary(f"STOR {name}", io.BytesIO(b"jpeg"))
        assert name in ftp.nlst()
    assert cos.head_object(Bucket=ALPHA, Key=name)["Content-Length"] == "4"


def test_a_worker_asks_the_hook_auth_hook_parallel_at_a_time(emulator, tmp_path, service):
    """Six logins at once, two hook calls at a time: each answer the service lets go makes
    room for the next call, never for more."""
    service.mode = HELD
    replies: list[str] = []

    def log_in(number: int) -> None:
        replies.append(refused(server, f"crowd{number}", "pw")[:3])

    with hooked_server(emulator, tmp_path, service.url, auth_hook_parallel="2",
                       auth_hook_timeout="8000") as server:
        crowd = [threading.Thread(target=log_in, args=(n,)) for n in range(6)]
        for thread in crowd:
            thread.start()
        for step in range(6):
            wait_until(lambda: len(service.asked) >= min(step + 2, 6),  # noqa: B023
                       what=f"hook call {min(step + 2, 6)}")
            service.let_one_answer()
        for thread in crowd:
            thread.join()
    assert replies == ["530"] * 6
    assert service.most_in_flight == 2


# --- quotas given by the hook's answers (issue 23: the hook's accounts' own homes)


def quoted(emulator, prefix: str, **quota) -> dict:
    """An answer rooting its account at ``prefix`` of ALPHA with ``quota``."""
    return definition(emulator, cos_prefix=prefix, **quota)


@pytest.fixture
def quota_server(emulator, tmp_path, service):
    # auth_cache_ttl 0: every login brings a new answer (the latest answer's limits hold).
    with hooked_server(emulator, tmp_path, service.url, auth_cache_ttl="0",
                       quota_scan_interval="0", auth_hook_quota_homes="3") as proc:
        yield proc


def test_a_hook_answer_gives_its_account_a_quota_kept_like_the_files(quota_server, service,
                                                                   emulator, cos):
    """quota_size from the answer: the first use scans what another tool wrote, ALLO and a
    resume past it get 552 before their bytes, an upload crossing it is stopped and undone,
    SITE QUOTA shows it."""
    home = f"hookquota-{uuid.uuid4().hex[:8]}/"
    service.users["quoted"] = ("quoted-pw", quoted(emulator, home, quota_size="4M"))
    cos.put_object(Bucket=ALPHA, Key=f"{home}by-another-tool.bin", Body=b"o" * MIB)
    ftp = quota_server.login("quoted", "quoted-pw")
    assert used(ftp) == (MIB, 1)
    assert "4 MiB = 4194304 bytes" in ftp.sendcmd("SITE QUOTA")
    with pytest.raises(ftplib.error_perm, match=r"^552 Quota exceeded: this account's home"):
        ftp.sendcmd(f"ALLO {4 * MIB}")
    assert put(ftp, "fits.bin", b"f" * MIB).startswith("226")
    assert stopped(ftp, "crosses.bin", b"c" * (3 * MIB)).startswith("552 Quota exceeded")
    assert f"{home}crosses.bin" not in keys_under(cos, home)
    assert not keys_under(cos, f"{home}.cosftp/parked/")  # undone, not parked
    assert used(ftp) == (2 * MIB, 2)
    # A resume past the quota: refused before its bytes, the parked upload kept.
    data = b"p" * (3 * MIB)
    park(ftp, cos, "parked.bin", f"{home}parked.bin", data[:2 * MIB + 10])
    ftp = quota_server.login("quoted", "quoted-pw")
    offset = ftp.size("parked.bin")
    assert offset == 2 * MIB
    put(ftp, "more.bin", b"m" * MIB)  # 3 MiB used: no room for the 2 MiB parked
    with pytest.raises(ftplib.error_perm, match=r"^552 Quota exceeded"):
        ftp.storbinary("STOR parked.bin", io.BytesIO(data[offset:]), rest=offset)
    assert ftp.size("parked.bin") == offset  # still parked, still resumable
    ftp.delete("fits.bin")
    ftp.delete("more.bin")
    ftp.storbinary("STOR parked.bin", io.BytesIO(data[offset:]), rest=offset)
    assert used(ftp) == (4 * MIB, 2)
    ftp.quit()


def test_sessions_of_a_hook_quota_racing_for_its_last_bytes_cannot_both_win(quota_server,
                                                                          service, emulator):
    home = f"hookrace-{uuid.uuid4().hex[:8]}/"
    service.users["racer"] = ("racer-pw", quoted(emulator, home, quota_size="2M"))
    first, second = (quota_server.login("racer", "racer-pw") for _ in range(2))
    announced_race((first, "a.bin"), (second, "b.bin"), 3 * MIB // 2, "Quota exceeded")
    assert used(second) == (3 * MIB // 2, 1)
    for ftp in (first, second):
        ftp.quit()


def test_the_files_quota_wins_and_between_answers_the_latest(quota_server, service,
                                                              emulator, tmp_path):
    """A home of the file keeps the file's quota whatever an answer says; a home only
    answers give has the limits of the latest answer, for every session of it."""
    shared = f"hooklatest-{uuid.uuid4().hex[:8]}/"
    service.users["early"] = ("early-pw", quoted(emulator, shared, quota_files=1))
    service.users["late"] = ("late-pw", quoted(emulator, shared, quota_files=3))
    early = quota_server.login("early", "early-pw")
    assert "files: 0 used of 1" in early.sendcmd("SITE QUOTA")
    late = quota_server.login("late", "late-pw")
    for ftp in (early, late):  # the latest answer holds for the session logged in before
        assert "files: 0 used of 3" in ftp.sendcmd("SITE QUOTA")
    put(early, "one.txt", b"1")
    put(early, "two.txt", b"2")  # past the early answer's 1
    service.users["early"] = ("early-pw", quoted(emulator, shared, quota_files=2))
    quota_server.login("early", "early-pw").quit()  # a newer answer: 2 files
    with pytest.raises(ftplib.error_perm, match=r"^552 .*2 of its 2 files \(quota_files\)"):
        put(late, "three.txt", b"3")
    for ftp in (early, late):
        ftp.quit()


def test_a_hook_quota_on_a_home_of_the_file_is_the_files(emulator, tmp_path, service):
    home = f"hookfile-{uuid.uuid4().hex[:8]}/"
    boss = Account("boss", "boss-pw", ALPHA, extra=f"cos_prefix = {home}\nquota_files = 1")
    service.users["same"] = ("same-pw", quoted(emulator, home, quota_files=5))
    settings = {"auth_hook_url": service.url, "auth_hook_timeout": "1000",
                "worker_processes": "1", "max_login_failures": "0"}
    with ServerProcess(str(tmp_path), emulator.port, [*FILE_ACCOUNTS, boss],
                       optional=settings) as server, server.login("same", "same-pw") as ftp:
        assert "files: 0 used of 1" in ftp.sendcmd("SITE QUOTA")
        ftp.storbinary("STOR one.txt", io.BytesIO(b"1"))
        with pytest.raises(ftplib.error_perm, match=r"^552"):
            ftp.storbinary("STOR two.txt", io.BytesIO(b"2"))
        wait_until(lambda: "the file's quota of this home holds" in server.log_text(),
                   what="the answer's quota said to be overruled")


def test_hook_quotas_fill_at_most_auth_hook_quota_homes_then_421(quota_server, service,
                                                                 emulator):
    """auth_hook_quota_homes = 3 homes of the usage table for answers' quotas, each held
    by a live session: a fourth home is refused with 421 and a log line; homes already kept
    and accounts without a quota still log in."""
    tag = uuid.uuid4().hex[:8]
    for number in range(4):
        service.users[f"h{number}"] = ("pw", quoted(emulator, f"hookfull-{tag}/{number}/",
                                                    quota_files=9))
    service.users["free"] = ("pw", definition(emulator, cos_prefix=f"hookfull-{tag}/free/"))
    held = [quota_server.login(f"h{number}", "pw") for number in range(3)]
    assert refused(quota_server, "h3", "pw").startswith("421")
    wait_until(lambda: "auth_hook_quota_homes" in quota_server.log_text(),
               what="the full table logged")
    quota_server.login("h0", "pw").quit()
    quota_server.login("free", "pw").quit()
    for ftp in held:
        ftp.quit()


def few_hook_homes(emulator, tmp_path, service, root: str, user: str, users: int,
                   homes: int) -> ServerProcess:
    """A server keeping ``homes`` rows for the answers' quotas (auth_cache_ttl and
    quota_scan_interval 0: a row is free at once when no session of its home is logged in),
    and ``users`` hook accounts ``<user>0``... (password ``pw``), each its own home under
    ``root`` with a quota of 9 files."""
    for number in range(users):
        service.users[f"{user}{number}"] = ("pw", quoted(emulator, f"{root}/{number}/",
                                                         quota_files=9))
    return hooked_server(emulator, tmp_path, service.url, auth_cache_ttl="0",
                         quota_scan_interval="0", auth_hook_quota_homes=str(homes))


def test_a_hook_homes_row_is_free_again_once_no_session_holds_it(emulator, tmp_path,
                                                                  service, cos):
    """auth_hook_quota_homes = 2, auth_cache_ttl and quota_scan_interval 0 (a row is free
    at once when no session of its home is logged in): while both rows have a live
    session a third home gets 421; once one of them logs out the third gets in, in turn; a
    freed home answered again is scanned again at its first use; a row with a live session
    keeps its usage through it all."""
    tag = uuid.uuid4().hex[:8]
    with few_hook_homes(emulator, tmp_path, service, f"hookreuse-{tag}", "r", 3, 2) as proc:
        first = proc.login("r0", "pw")
        assert put(first, "kept.bin", b"k").startswith("226")
        second = proc.login("r1", "pw")
        assert used(second) == (0, 0)
        assert refused(proc, "r2", "pw").startswith("421")
        second.quit()
        wait_until(lambda: logs_in(proc, "r2", "pw"), what="r1's row free for r2")
        # r1's home was freed: what another tool wrote meanwhile is found by a new scan.
        cos.put_object(Bucket=ALPHA, Key=f"hookreuse-{tag}/1/by-another-tool.bin", Body=b"o")
        wait_until(lambda: logs_in(proc, "r1", "pw"), what="r2's row free for r1")
        again = proc.login("r1", "pw")
        assert used(again) == (1, 1)
        again.quit()
        assert used(first) == (1, 1)  # r0's row, held all along, kept its usage
        first.quit()


def crowd_logs_in(server: ServerProcess, users: list[str]) -> dict[str, object]:
    """Log ``users`` in at once (password ``pw``); each user's session, or the reply that
    refused it (its connection closed)."""
    def attempt(user: str) -> object:
        ftp = ftplib.FTP(encoding="utf-8")
        ftp.connect(server.host, server.port, timeout=30)
        try:
            ftp.login(user, "pw")
            return ftp
        except ftplib.Error as exc:
            ftp.close()
            return str(exc)

    with ThreadPoolExecutor(len(users)) as pool:
        return dict(zip(users, pool.map(attempt, users)))


def test_a_hook_homes_row_held_by_a_killed_workers_session_is_free_again(emulator, tmp_path,
                                                                         service):
    """auth_hook_quota_homes = 1, one worker: a session of the one home is logged in, so a
    second home gets 421; the worker is SIGKILLed (its session never leaves): the master
    gives back its session count when it reaps it, and the second home gets in."""
    tag = uuid.uuid4().hex[:8]
    with few_hook_homes(emulator, tmp_path, service, f"hookkill-{tag}", "k", 2, 1) as proc:
        first = proc.login("k0", "pw")
        assert refused(proc, "k1", "pw").startswith("421")
        kill_the_worker(proc.proc.pid)
        first.close()
        proc.login("k1", "pw").quit()


@contextlib.contextmanager
def hook_node(emulator, tmp_path, service, name: str, user: str, redis_port: int = 0,
              workers: int = 1) -> Iterator[tuple[LoneNode, Optional[Daemon], str]]:
    """A node of a cluster with ``workers``, started on its own Redis (or ``redis_port``'s),
    an auth hook's answer giving ``user`` (password ``<user>-pw``) a home with a 3 MiB
    quota; the node, its Redis (None with ``redis_port``) and the home's prefix."""
    home = f"{name}-{uuid.uuid4().hex[:8]}/"
    service.users[user] = (f"{user}-pw", quoted(emulator, home, quota_size="3M"))
    redis = None if redis_port else start_redis(tmp_path)
    node = hooked_server(emulator, tmp_path / "node", service.url, LoneNode,
                         auth_cache_ttl="0", quota_scan_interval="0",
                         worker_processes=str(workers))
    node.redis_port, node.name = redis_port or redis.port, name
    try:
        yield node.start(), redis, home
    finally:
        node.stop()
        if redis is not None:
            redis.stop()


def test_a_killed_workers_reservation_in_a_hook_home_is_given_back_on_a_cluster_node(
        emulator, tmp_path, service, cos):
    """A node of a cluster ([CLUSTER]), an auth hook's answer giving the home its 3 MiB
    quota: the worker is SIGKILLed while an upload holds 2 MiB there. The node's
    reservations in Redis lose them with the master's reap, as for a file account's home
    (test_quotas), though worker 1's second-by-second rewrite covers the file's homes only."""
    with hook_node(emulator, tmp_path, service, "hookkilled", "hk") as (node, _, home):
        kill_while_holding(node, "hk", cos, home, hook_home=f"{ALPHA}/{home}")


@contextlib.contextmanager
def hung(redis_server) -> Iterator[None]:
    """Redis hung (SIGSTOP: its data kept, every call times out), resumed on leaving."""
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)


def holding(server: ServerProcess, user: str) -> tuple[ftplib.FTP, socket.socket]:
    """A session of ``user`` (password ``<user>-pw``) whose upload holds 2 MiB of its home's
    quota (ALLO), its data connection open; and that data connection."""
    ftp = server.login(user, f"{user}-pw")
    ftp.sendcmd(f"ALLO {2 * MIB}")
    ftp.voidcmd("TYPE I")
    held = ftp.transfercmd("STOR held.bin")  # its 2 MiB are reserved before the 150
    held.sendall(b"h" * 1000)
    return ftp, held


def fits_again(ftp: ftplib.FTP) -> None:
    """Nothing is held in the session's 3 MiB home any more (SITE QUOTA, the figures every
    node reserves against): 2.5 MiB fit."""
    wait_until(lambda: reserved(ftp) == 0, what="the reservation gone from the cluster's "
               "figures")
    ftp.sendcmd(f"ALLO {5 * MIB // 2}")
    assert put(ftp, "fits.bin", b"f" * (5 * MIB // 2)).startswith("226")


def test_a_hook_homes_reservation_released_during_a_redis_outage_leaves_redis_after_it(
        emulator, tmp_path, service):
    """A node of a cluster, an auth hook's answer giving the home a 3 MiB quota: an upload
    holding 2 MiB there ends while the node finds Redis unreachable, so its release does not
    reach Redis. Once Redis answers again, the node's reservations in Redis are rewritten
    from its own table: nothing is reserved and the 1 MiB left fits; the file's 2 MiB, which
    the usage in Redis could not count then, are counted now. Found: Redis kept the 2 MiB
    for good (a day after the home's last reservation; worker 1's rewrite covers the
    file's homes only), and every upload needing that room got 552; the file was not
    counted until the home's next scan (never, with quota_scan_interval = 0)."""
    with hook_node(emulator, tmp_path, service, "hookoutage", "ho") as (node, redis, _):
        ftp, held = holding(node, "ho")
        assert reserved(node.login("ho", "ho-pw")) == 2 * MIB
        with hung(redis):
            # The heartbeat finds it out (the node then does not ask Redis for 5 s: the
            # release is not even sent, where a timed-out call would land at the resume).
            wait_until(lambda: "unreachable" in node.log_text(), what="the outage seen")
            held.sendall(b"h" * (2 * MIB - 1000))  # the rest of the size ALLO announced
            held.close()  # the end of the file: committed, its reservation given back
            ftp.voidresp()
        wait_until(lambda: "reachable again" in node.log_text(), what="Redis back")
        again = node.login("ho", "ho-pw")
        wait_until(lambda: used(again) == (2 * MIB, 1), what="the file written meanwhile "
                   "counted")
        wait_until(lambda: reserved(again) == 0, what="the reservation gone from the "
                   "cluster's figures")
        again.sendcmd(f"ALLO {MIB}")
        assert put(again, "fits.bin", b"f" * MIB).startswith("226")
        ftp.quit()


def test_a_hook_homes_reservation_is_written_back_soon_after_redis_lost_its_keys(
        emulator, tmp_path, service):
    """A node of a cluster, an auth hook's answer giving the home a 3 MiB quota, an upload
    holding 2 MiB there; Redis flushed (restarted empty, failed over to an empty replica):
    the node's reservations and its index of the homes it holds some in are gone. Found:
    worker 1's rewrite covers the file's homes and those the index names, so the other
    nodes did not count the 2 MiB until the upload ended. Now the node's heartbeat finds
    that Redis no longer knows the node, and the node rewrites all its reservations."""
    redis = RedisUnderTest(tmp_path)
    try:
        with hook_node(emulator, tmp_path, service, "hooklost", "hl", redis.proxy.port) as \
                (node, _, home):
            ftp, held = holding(node, "hl")
            holdings = f"cosftp:quota-held:{home_id(ALPHA, home).hex()}"
            field = f"node-{node.name}#b"
            assert redis.direct.hget(holdings, field) == str(2 * MIB)
            redis.direct.flushall()
            wait_until(lambda: redis.direct.hget(holdings, field) == str(2 * MIB),
                       timeout=30, what="the node's reservation written back")
            held.sendall(b"h" * (2 * MIB - 1000))  # the rest of the size ALLO announced
            held.close()
            ftp.voidresp()
            wait_until(lambda: redis.direct.hget(holdings, field) in (None, "0"),
                       what="the reservation given back")
            ftp.quit()
    finally:
        redis.stop()


def test_a_dead_workers_reservation_in_a_hook_home_leaves_redis_before_its_replacement(
        emulator, tmp_path, service):
    """Two workers on a node of a cluster, an auth hook's answer giving the home a 3 MiB
    quota: the worker whose upload holds 2 MiB there is SIGKILLed, and its replacement
    cannot start (Redis now says it is too old: the worker refuses to start, the master
    tries again later). The master gives the dead worker's holdings back in the node's
    table at the reap; the surviving worker rewrites the node's reservations in Redis from
    it, so a session there sees nothing reserved and 2.5 MiB fit. Found: Redis kept them
    until a replacement started (the master does not talk to Redis)."""
    redis = RedisUnderTest(tmp_path)
    try:
        with hook_node(emulator, tmp_path, service, "hookdead", "hd", redis.proxy.port,
                       workers=2) as (node, _, _):
            wait_until(lambda: len(workers_of(node.proc.pid)) == 2, what="both workers")
            ftp, held = holding(node, "hd")
            [holder] = sessions_by_pid(node)
            for _ in range(50):  # a session on the other worker
                observer = node.login("hd", "hd-pw")
                if sessions_by_pid(node)[holder] == 1:
                    break
                observer.close()
                wait_until(lambda: sessions_by_pid(node)[holder] == 1, what="closed")
            else:
                pytest.fail("50 logins in a row went to the worker holding the upload")
            assert reserved(observer) == 2 * MIB
            redis.proxy.version = "5.0.14"
            os.kill(holder, signal.SIGKILL)
            wait_until(lambda: "given back" in node.log_text(), what="the master's reap")
            wait_until(lambda: "cannot start" in node.log_text(),
                       what="the replacement refused")
            fits_again(observer)
            redis.proxy.version = "6.0.16"
            for session in (ftp, observer):
                session.close()
            held.close()
    finally:
        redis.stop()


def test_a_node_restarted_after_a_crash_drops_its_old_reservations_in_a_hook_home(
        emulator, tmp_path, service):
    """A node of a cluster killed whole (SIGKILL to its master and its workers) while
    an upload holds 2 MiB of a 3 MiB quota an auth hook's answer gave, then started again
    under its node_id before the other nodes stopped counting it (NODE_TTL): its new usage
    table holds nothing, and the first worker rewrites the node's reservations in Redis from
    it before it serves, so nothing is reserved and 2.5 MiB fit. Found: the 2 MiB stayed
    counted for good (the rewrite at start covered the homes the new table knew: none)."""
    with hook_node(emulator, tmp_path, service, "hookcrash", "hc") as (node, _, _):
        ftp, held = holding(node, "hc")
        workers = workers_of(node.proc.pid)
        node.proc.send_signal(signal.SIGSTOP)  # no reap, no drop: all die at once
        for worker in workers:
            worker.kill()
        psutil.wait_procs(workers, timeout=10)
        node.proc.kill()
        node.proc.wait()
        held.close()
        ftp.close()
        node.start()
        fits_again(node.login("hc", "hc-pw"))


def test_crowds_of_new_hook_homes_take_the_free_rows_and_the_rest_get_421(emulator, tmp_path,
                                                                        service, cos):
    """auth_hook_quota_homes = 2, two workers: eight hook users, a home each, log in all at
    once; two get in, the others get 421 and are closed. Each winner's row is its own
    home's (each home holds a file of its own size, written by another tool, and that is
    what its SITE QUOTA counts), and cosftpctl quota lists just those two. Once they leave,
    the next crowd (those refused) takes the freed rows the same way, until all got in."""
    from .test_master import state_of

    tag = uuid.uuid4().hex[:8]
    homes = {f"c{number}": f"hookcrowd-{tag}/{number}/" for number in range(8)}
    for number, (user, home) in enumerate(homes.items()):
        service.users[user] = ("pw", quoted(emulator, home, quota_files=9))
        cos.put_object(Bucket=ALPHA, Key=f"{home}by-another-tool.bin", Body=b"o" * (number + 1))
    with hooked_server(emulator, tmp_path, service.url, worker_processes="2",
                       auth_cache_ttl="0", quota_scan_interval="0",
                       auth_hook_quota_homes="2") as proc:
        waiting = list(homes)
        while waiting:
            outcome = crowd_logs_in(proc, waiting)
            winners = {user: ftp for user, ftp in outcome.items()
                       if isinstance(ftp, ftplib.FTP)}
            refusals = [reply for reply in outcome.values() if isinstance(reply, str)]
            assert len(winners) == min(2, len(waiting)), outcome
            assert all(reply.startswith("421 Too many homes with a quota") for reply in
                       refusals), refusals
            for user, ftp in winners.items():
                assert used(ftp) == (list(homes).index(user) + 1, 1), user
            shown = proc.ctl("quota").stdout
            listed = set(re.findall(rf"(?m)^{ALPHA}/(hookcrowd-{tag}/\d+/)$", shown))
            assert listed == {homes[user] for user in winners}, shown
            for ftp in winners.values():
                ftp.quit()
            waiting = [user for user in waiting if user not in winners]
            wait_until(lambda: not any(w.sessions for w in state_of(proc).workers()),
                       what="the sessions gone, their rows free")


def test_cosftpctl_quota_and_the_admin_api_list_the_homes_answers_gave_a_quota(
        emulator, tmp_path, service):
    """A home whose quota only an answer gives: its own rows in cosftpctl quota and in GET
    /api/v1/quotas (hook_homes), with bucket, prefix, limits, usage and the answer's time."""
    home = f"hooklisted-{uuid.uuid4().hex[:8]}/"
    service.users["listed"] = ("pw", quoted(emulator, home, quota_size="4M", quota_files=7))
    with admin_server(str(tmp_path), emulator.port, auth_hook_url=service.url,
                      auth_hook_timeout="1000", worker_processes="1") as proc:
        before = time.time()
        ftp = proc.login("listed", "pw")
        assert put(ftp, "a.bin", b"a" * 1000).startswith("226")
        ftp.quit()
        answer = AdminClient(admin_url(proc)).get("/quotas", token=RO_TOKEN)
        [listed] = [row for row in answer["hook_homes"] if row["prefix"] == home]
        assert before <= listed.pop("answered") <= time.time()
        assert before <= listed.pop("scanned") <= time.time()
        assert listed == {"bucket": ALPHA, "prefix": home, "reserved_bytes": 0,
                          "size": {"used": 1000, "limit": 4 * MIB},
                          "files": {"used": 1, "limit": 7}}
        assert answer["enabled"]
        shown = proc.ctl("quota")
        assert shown.returncode == 0, shown.stderr
        assert re.search(rf"(?m)^{ALPHA}/{home}\n +1000 +4 MiB +1 +7 +0 ", shown.stdout), \
            shown.stdout


def test_a_file_moved_from_a_hook_home_into_a_folder_with_a_quota_leaves_the_home(
        emulator, tmp_path, service):
    """A hook home with a quota, a virtual folder with the file's quota (quota_files): a
    file renamed from the home into the folder counts in the folder and no longer in the
    home at once (not at the home's next scan), and back again."""
    root = f"hookmove-{uuid.uuid4().hex[:8]}/"
    folder = f"\n[FOLDER_q]\ncos_prefix = {root}q\nauthority = RW\nquota_files = 5\n"
    boss = Account("boss", "boss-pw", ALPHA, extra=f"cos_prefix = {root}boss\n"
                   "virtual_folders = /q=q")
    service.users["mover"] = ("pw", quoted(emulator, f"{root}home/", quota_files=9,
                                           virtual_folders="/q=q"))
    settings = {"auth_hook_url": service.url, "auth_hook_timeout": "1000",
                "worker_processes": "1", "max_login_failures": "0"}
    with ServerProcess(str(tmp_path), emulator.port, [boss], optional=settings,
                       sections=folder) as proc:
        ftp = proc.login("mover", "pw")
        assert put(ftp, "moved.bin", b"m" * 10).startswith("226")
        assert used(ftp) == (10, 1)
        ftp.rename("moved.bin", "/q/moved.bin")
        assert used(ftp) == (0, 0)
        assert "files: 1 used of 5" in ftp.sendcmd("SITE QUOTA")  # the folder's
        ftp.rename("/q/moved.bin", "/back.bin")
        assert used(ftp) == (10, 1)
        assert "files: 0 used of 5" in ftp.sendcmd("SITE QUOTA")
        ftp.quit()
