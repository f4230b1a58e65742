"""External authentication end to end: a real server asks a small HTTP service (or a
program) about users that are not in its file, and serves the accounts it answers with."""

from __future__ import annotations

import ftplib
import io
import stat
import sys
import threading
import uuid
from collections.abc import Iterator

import pytest

from cosftp_prefork.config.hookanswer import hook_account
from cosftp_prefork.config.options import SETTINGS
from cosftp_prefork.config.settings import parse_config
from cosftp_prefork.cos.registry import BucketRegistry
from cosftp_prefork.ftp.authhook import MAX_ANSWER_BYTES

from .auth_service import ERROR, FORBIDDEN, HELD, NORMAL, NOT_JSON, SLOW, AuthService
from .conftest import ALPHA, BETA
from .crowds import peak_rss, reset_peak_rss, workers_of
from .hooked import FILE_ACCOUNTS, definition, hooked_server, logs_in, refused
from .server_proc import ServerProcess, wait_until
from .test_login_delay import pipelined
from .tls_clients import client_context, write_certificate


@pytest.fixture(scope="module")
def troubled_hook() -> Iterator[AuthService]:
    """The hook of the tests that change its mode or stop it: they share it (``service``)
    and ``server``."""
    shared = AuthService().start()
    yield shared
    shared.stop()


@pytest.fixture
def service(troubled_hook) -> AuthService:
    """This file's tests' hook (conftest's starts one per test): ``troubled_hook``, put back
    as new for each test (``AuthService.reset``)."""
    return troubled_hook.reset()


@pytest.fixture(scope="module")
def server(emulator, tmp_path_factory, troubled_hook):
    """A server asking ``troubled_hook``, shared by the tests of its failures. A yes is
    cached (auth_cache_ttl): a test that logs a hook user in names one of its own
    (``patient``)."""
    with hooked_server(emulator, tmp_path_factory.mktemp("troubled"),
                       troubled_hook.url) as proc:
        yield proc


def patient() -> str:
    """A hook user no other test named: no yes of another test is cached for it."""
    return f"patient-{uuid.uuid4().hex[:8]}"


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


def test_commands_sent_ahead_of_a_refused_accounts_530_run_after_it(hooked, hook, emulator):
    """The 530 of an account the hook defines wrongly waits as a wrong password's does; the
    file account's login, PWD and QUIT sent ahead in the same packet run after it, in order.
    Before: they ran during the wait (331 230 257 221), and the 530 was never sent."""
    user = f"bad{uuid.uuid4().hex[:8]}"
    hook.users[user] = ("pw", {**definition(emulator), "quota": 5})
    codes = pipelined(hooked, f"USER {user}\r\nPASS pw\r\nUSER filer\r\nPASS filer-pw\r\n"
                              "PWD\r\nQUIT\r\n".encode())
    assert codes == [b"331", b"530", b"331", b"230", b"257", b"221"]


def test_a_hook_that_is_down_drops_the_commands_sent_ahead_of_its_421(server, service,
                                                                      emulator):
    """The hook's try-later 421 closes the session: the login sent ahead of it is not run.
    Before: it ran during the wait, and the 421 was never sent."""
    user = patient()
    service.users[user] = ("patient-pw", definition(emulator))
    service.stop()
    logged_before = len(server.log_text())
    codes = pipelined(server, f"USER {user}\r\nPASS patient-pw\r\nUSER filer\r\n"
                              "PASS filer-pw\r\nQUIT\r\n".encode())
    assert codes == [b"331", b"421"]
    assert "USER 'filer' logged in." not in server.log_text()[logged_before:]


def test_an_answer_that_is_not_json_is_refused(server, service):
    service.mode = NOT_JSON
    assert refused(server, "anyone", "pw").startswith("530")
    wait_until(lambda: "the answer is not JSON" in server.log_text())


@pytest.mark.parametrize("mode", [SLOW, ERROR])
def test_a_slow_or_failing_hook_says_try_later(server, service, emulator, mode):
    user = patient()
    service.users[user] = ("patient-pw", definition(emulator))
    service.mode = mode
    assert refused(server, user, "patient-pw").startswith("421")
    service.release.set()
    service.mode = NORMAL
    server.login(user, "patient-pw").quit()


def test_a_hook_that_is_down_says_try_later(server, service, emulator):
    user = patient()
    service.users[user] = ("patient-pw", definition(emulator))
    service.stop()
    assert refused(server, user, "patient-pw").startswith("421")
    service.start()
    server.login(user, "patient-pw").quit()


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


# What the hook program of the next test prints: far past MAX_ANSWER_BYTES.
FLOOD = 50 * 1024 * 1024


def test_a_hook_command_printing_too_much_is_stopped_at_the_limit(emulator, tmp_path):
    """Before: the worker read the program's whole output (and its stderr) into memory, and
    only then found it over MAX_ANSWER_BYTES: 50 MiB printed cost the worker 50 MiB and
    more. Now it reads one byte past the limit, refuses the answer, and kills and reaps
    the program, which never gets to write the rest."""
    finished = tmp_path / "finished"
    program = tmp_path / "flood.py"
    program.write_text(f"""#!{sys.executable}
import sys
sys.stdin.buffer.read()
chunk = b" " * 1024 * 1024
for _ in range({FLOOD} // len(chunk)):
    sys.stdout.buffer.write(chunk)
sys.stdout.buffer.flush()
open({str(finished)!r}, "w").close()
""")
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    # A refusal is answered auth_hook_timeout after PASS (handler.ask_hook): 5 s, not
    # more. The old worker could take longer than that to read 50 MiB on a loaded machine
    # (and then said 421): its peak RSS is asked first.
    settings = {"auth_hook_command": str(program), "auth_hook_timeout": "5000",
                "worker_processes": "1", "max_login_failures": "0"}
    with ServerProcess(str(tmp_path / "srv"), emulator.port, FILE_ACCOUNTS,
                       optional=settings) as server:
        [worker] = workers_of(server.proc.pid)
        reset_peak_rss(worker.pid)
        before = peak_rss(worker.pid)
        with pytest.raises(ftplib.Error) as refusal:
            server.login("flooder", "pw", timeout=60)
        grown = peak_rss(worker.pid) - before
        assert grown < MAX_ANSWER_BYTES + 8 * 1024 * 1024, f"{grown / 1024 ** 2:.1f} MiB"
        assert str(refusal.value).startswith("530")
        wait_until(lambda: not worker.children(), what="the hook program reaped")
        assert not finished.exists()
        assert f"the answer is over {MAX_ANSWER_BYTES} bytes" in server.log_text()
        server.login("filer", "filer-pw").quit()


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
