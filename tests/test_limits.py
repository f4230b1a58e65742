"""Per-account limits end to end (issue 23, "Bandwidth and sessions"): transfer rates for an
account's sessions together and per session, logged-in sessions per account (every worker,
every node through Redis), client addresses per account, the 230 and 220 texts; all from the
config file, reloaded with SIGHUP.

The rates are asserted from above only: the bytes of transfers that last several seconds,
less the one-second burst the bucket starts with, over the time the client saw them take, are
at most the rate (15 % for the clocks). A token bucket never lets more than its burst plus the
rate times the time go, so a loaded machine (which only makes transfers slower) cannot fail
these, while a limit that is not applied (a 2 MiB file in a fraction of a second) does. That
the transfers keep up to the rate, a speed goal, is ``bench/rates.py``'s to measure.
"""

from __future__ import annotations

import ftplib
import io
import os
import re
import subprocess
import threading
import time

import pytest
import redis as redis_client

from cosftp_prefork.config.settings import parse_config
from cosftp_prefork.config.sizes import parse_size
from cosftp_prefork.errors import ConfigError
from cosftp_prefork.server.scoreboard import (
    ACCOUNT_SLOTS,
    Limits,
    Seat,
    SharedState,
    account_key,
)

from .conftest import ALPHA
from .hooked import definition, hooked_server
from .server_proc import Account, ServerProcess, wait_until
from .test_cluster import LoneNode, start_redis
from .tls_clients import client_context, write_certificate

KIB, MIB = 1024, 1024 * 1024
RATE = 512 * KIB
WRONG_PASSWORD = "530 Authentication failed."

ACCOUNTS = [
    Account("alice", "alice-pw", ALPHA),  # no limits: keeps the worker busy
    # Each rate test has an account of its own: its bucket starts full, as the test assumes.
    *(Account(user, f"{user}-pw", ALPHA,
              extra=f"max_download_rate = 512K\nmax_upload_rate = {RATE}")
      for user in ("paced", "pacedup", "tlsdown", "tlsup", "asciidown", "again")),
    Account("capped", "capped-pw", ALPHA, extra="local_max_rate = 256K"),
    Account("trickle", "trickle-pw", ALPHA, extra="max_upload_rate = 16K"),
    Account("few", "few-pw", ALPHA,
            extra="max_sessions = 2\nlogin_message = Welcome, few: two sessions at most."),
    Account("fenced", "fenced-pw", ALPHA, extra="allowed_ips = 10.0.0.0/8, 2001:db8::/32"),
    Account("denied", "denied-pw", ALPHA, extra="denied_ips = 192.0.2.1, 127.0.0.0/8"),
    Account("sixonly", "sixonly-pw", ALPHA, extra="allowed_ips = ::1"),
]


@pytest.fixture(scope="module")
def limited(emulator, tmp_path_factory):
    """One worker, so that the paced sessions share it with a busy unlimited one."""
    cert, key = write_certificate(tmp_path_factory.mktemp("certs"))
    proc = ServerProcess(str(tmp_path_factory.mktemp("limits")), emulator.port, ACCOUNTS,
                         optional={"worker_processes": "1", "max_login_failures": "0",
                                   "ftpd_banner": "Tenant gateway: authorised use only."},
                         network={"listen_address": "127.0.0.1, ::1", "tls_certfile": cert,
                                  "tls_keyfile": key})
    proc.start()
    yield proc
    proc.stop()


def _quit(ftp: ftplib.FTP) -> None:
    try:
        ftp.quit()
    except (OSError, EOFError, ftplib.Error):
        ftp.close()


def _login_reply(server: ServerProcess, user: str, password: str, host: str = "127.0.0.1") -> str:
    ftp = ftplib.FTP()
    ftp.connect(host, server.port, timeout=30)
    try:
        return ftp.login(user, password)
    except (ftplib.error_perm, ftplib.error_temp) as exc:
        return str(exc)
    finally:
        _quit(ftp)


def test_sizes_are_1024_based():
    assert [parse_size(v) for v in ("0", "512", "512K", "2M", "1G", "1 KiB", "3mb", "1T")] == \
        [0, 512, 512 * KIB, 2 * MIB, 1024 * MIB, KIB, 3 * MIB, 1024 ** 4]
    for bad in ("-1", "1.5M", "M", "10X", "12B3"):
        with pytest.raises(ValueError, match="K, M, G or T"):
            parse_size(bad)


ACCOUNT_TEXT = """
[COS_ACCOUNT_7]
cos_secretid = a
cos_secretkey = b
cos_bucket = b-1250000000
cos_region = ap-guangzhou
home_dir = /h
ftp_login_user_name = u
ftp_login_user_password = p
authority = RW
"""


@pytest.mark.parametrize("line, problem", [
    ("max_upload_rate = 10X", "max_upload_rate: must be a number of bytes"),
    ("max_download_rate = 100", "max_download_rate: 100 bytes/s is too low"),
    ("local_max_rate = -1K", "local_max_rate: must be a number of bytes"),
    ("max_sessions = many", "max_sessions: must be an integer"),
    ("allowed_ips = 10.0.0.0/33", "allowed_ips: must be a comma-separated list"),
    ("denied_ips = fe80::/129", "denied_ips: must be a comma-separated list"),
    ("login_message = \x07bell", "login_message: must be one line of printable text"),
])
def test_check_names_the_section_and_option_of_a_bad_limit(line, problem):
    with pytest.raises(ConfigError) as caught:
        parse_config(ACCOUNT_TEXT + line + "\n", "limits.conf")
    assert "[COS_ACCOUNT_7]" in str(caught.value) and problem in str(caught.value)


def test_banner_and_login_message(limited):
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", limited.port, timeout=30)
    assert ftp.getwelcome() == "220 Tenant gateway: authorised use only."
    assert ftp.login("few", "few-pw") == "230 Welcome, few: two sessions at most."
    _quit(ftp)
    assert _login_reply(limited, "alice", "alice-pw") == "230 Login successful."
    # a real client shows both (curl -v prints the server's replies)
    done = subprocess.run(["curl", "-sv", "--max-time", "30", "-l",
                           f"ftp://few:few-pw@127.0.0.1:{limited.port}/"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "< 220 Tenant gateway: authorised use only." in done.stderr
    assert "< 230 Welcome, few: two sessions at most." in done.stderr


def test_addresses_not_allowed_get_the_reply_of_a_wrong_password(limited):
    assert _login_reply(limited, "alice", "wrong") == WRONG_PASSWORD
    for user in ("fenced", "denied", "sixonly"):
        assert _login_reply(limited, user, f"{user}-pw") == WRONG_PASSWORD, user
    assert _login_reply(limited, "sixonly", "sixonly-pw", host="::1").startswith("230")
    assert _login_reply(limited, "denied", "denied-pw", host="::1").startswith("230")
    fenced = [account.user for account in ACCOUNTS].index("fenced")
    assert f"login as [COS_ACCOUNT_{fenced}] refused: the address is not allowed" in \
        limited.log_text()
    # lftp too: its login fails as with a wrong password
    def lftp(user: str, password: str) -> str:
        done = subprocess.run(["lftp", "-c", f"set ftp:ssl-allow no; set net:max-retries 1; "
                               f"open -u {user},{password} ftp://127.0.0.1:{limited.port}; ls"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode != 0
        return done.stderr
    assert "Login failed: 530 Authentication failed." in lftp("fenced", "fenced-pw")
    assert lftp("fenced", "fenced-pw") == lftp("alice", "wrong")


def test_max_sessions_of_an_account(limited):
    first, second = limited.login("few", "few-pw"), limited.login("few", "few-pw")
    try:
        ftp = ftplib.FTP()
        ftp.connect("127.0.0.1", limited.port, timeout=30)
        with pytest.raises(ftplib.error_temp, match="421 Too many sessions of this account"):
            ftp.login("few", "few-pw")
        ftp.close()
        assert _login_reply(limited, "alice", "alice-pw").startswith("230")  # others go on
    finally:
        _quit(first)
    wait_until(lambda: _login_reply(limited, "few", "few-pw").startswith("230"),
               what="a place freed by the session that quit")
    _quit(second)


def _spread(server: ServerProcess, user: str, password: str, count: int) -> list:
    """``count`` sessions of ``user`` that are not all on one worker (the workers take
    connections as they come: log in again until they are spread)."""
    for _ in range(20):
        sessions = [server.login(user, password) for _ in range(count)]
        workers = {line.split()[0] for line in server.ctl("sessions").stdout.splitlines()
                   if "logged in" in line}
        if len(workers) > 1:
            return sessions
        for ftp in sessions:
            _quit(ftp)
        wait_until(lambda: "logged in" not in server.ctl("sessions").stdout,
                   what="the sessions closed")
    raise AssertionError("the sessions always landed on one worker")


def test_max_sessions_holds_across_workers_and_reload(emulator, tmp_path):
    account = Account("few", "few-pw", ALPHA, extra="max_sessions = 3")
    with ServerProcess(str(tmp_path), emulator.port, [account],
                       optional={"worker_processes": "2", "max_login_failures": "0"}) as server:
        sessions = _spread(server, "few", "few-pw", 3)
        assert _login_reply(server, "few", "few-pw").startswith("421 Too many sessions")
        account.extra = "max_sessions = 4\nlogin_message = reloaded"
        server.write_config()
        server.proc.send_signal(1)  # SIGHUP
        wait_until(lambda: _login_reply(server, "few", "few-pw") == "230 reloaded",
                   timeout=60, what="the reloaded limit and message")
        for ftp in sessions:
            _quit(ftp)


def test_max_sessions_holds_across_nodes(emulator, tmp_path):
    redis = start_redis(tmp_path)
    redis_port = redis.port
    account = Account("few", "few-pw", ALPHA, extra="max_sessions = 2")
    nodes = []
    try:
        for name in ("a", "b"):
            node = LoneNode(str(tmp_path / name), emulator.port, [account])
            node.redis_port, node.name = redis_port, name
            nodes.append(node.start())
        one, two = nodes[0].login("few", "few-pw"), nodes[1].login("few", "few-pw")
        # Once every node has rewritten its counts (its heartbeat) since, they still hold.
        logged_in = time.time()
        shared = redis_client.Redis(port=redis_port, decode_responses=True)
        wait_until(lambda: len([node for node, beat in shared.zrange(
            "cosftp:nodes", 0, -1, withscores=True) if beat > logged_in + 0.1]) == 2,
            what="both nodes' heartbeats")
        shared.close()
        assert _login_reply(nodes[0], "few", "few-pw").startswith("421 Too many sessions")
        assert _login_reply(nodes[1], "few", "few-pw").startswith("421 Too many sessions")
        _quit(one)
        wait_until(lambda: _login_reply(nodes[1], "few", "few-pw").startswith("230"),
                   what="the place freed on the other node")
        _quit(two)
    finally:
        for node in nodes:
            node.stop()
        redis.stop()


def test_accounts_from_the_auth_hook_carry_their_limits(emulator, tmp_path, service):
    service.users["roamer"] = ("roamer-pw", definition(emulator, allowed_ips="10.0.0.0/8"))
    service.users["greeted"] = ("greeted-pw", definition(
        emulator, max_sessions="1", login_message="Hello from the hook."))
    with hooked_server(emulator, tmp_path, service.url) as server:
        assert _login_reply(server, "roamer", "roamer-pw") == WRONG_PASSWORD
        first = server.login("greeted", "greeted-pw")
        assert first.lastresp == "230"
        assert _login_reply(server, "greeted", "greeted-pw").startswith(
            "421 Too many sessions")
        first.quit()
        wait_until(lambda: _login_reply(server, "greeted", "greeted-pw") ==
                   "230 Hello from the hook.", what="the hook account's place freed")


def _put(cos, key: str, size: int) -> None:
    cos.put_object(Bucket=ALPHA, Key=key, Body=os.urandom(size))


class Busy:
    """An unlimited session of another account downloading over and over on the same
    worker while the paced ones are measured."""

    def __init__(self, server: ServerProcess, path: str) -> None:
        self.stop = threading.Event()
        self.rounds = 0
        self.ftp = server.login("alice", "alice-pw")
        self.thread = threading.Thread(target=self._run, args=(path,), daemon=True)
        self.thread.start()

    def _run(self, path: str) -> None:
        while not self.stop.is_set():
            self.ftp.retrbinary(f"RETR {path}", lambda _data: None)
            self.rounds += 1

    def __enter__(self) -> Busy:
        wait_until(lambda: self.rounds > 0, what="the busy session's first download")
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(120)
        _quit(self.ftp)


def _measured_rate(spans: list[tuple[float, float]], total: int, burst: int) -> float:
    """Bytes per second the transfers moved together beyond the bucket's initial burst."""
    elapsed = max(end for _, end in spans) - min(start for start, _ in spans)
    return (total - burst) / elapsed


def _assert_within(rate: float, limit: int, who: str = "") -> None:
    """At most the limit (see the module's docstring: never a lower bound, which load
    fails)."""
    assert rate <= 1.15 * limit, f"{who} {rate / KIB:.0f} KiB/s over {limit / KIB:.0f} KiB/s"


def _concurrently(jobs) -> list[tuple[float, float]]:
    spans: list = [None] * len(jobs)
    errors: list = []

    def run(index, job):
        try:
            started = time.monotonic()
            job()
            spans[index] = (started, time.monotonic())
        except Exception as exc:  # reported below
            errors.append(exc)
    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not errors, errors
    return spans


def test_download_rate_of_an_account_across_sessions_with_a_busy_worker(limited, cos, area):
    size = MIB
    for n in range(3):
        _put(cos, f"{area}/f{n}", size)
    _put(cos, f"{area}/big", 16 * MIB)
    sessions = [limited.login("paced", "paced-pw") for _ in range(3)]
    got = [bytearray() for _ in sessions]
    with Busy(limited, f"{area}/big"):
        spans = _concurrently([
            (lambda ftp=ftp, into=into, n=n: ftp.retrbinary(f"RETR {area}/f{n}", into.extend))
            for n, (ftp, into) in enumerate(zip(sessions, got))])
    for ftp in sessions:
        _quit(ftp)
    assert [len(g) for g in got] == [size] * 3
    _assert_within(_measured_rate(spans, 3 * size, RATE), RATE)


def test_upload_rate_of_an_account_across_sessions(limited, cos, area):
    size = MIB + 256 * KIB  # two parts each (1 MiB parts): the second paid for on its own
    data = os.urandom(size)
    sessions = [limited.login("pacedup", "pacedup-pw") for _ in range(3)]
    _put(cos, f"{area}/big", 8 * MIB)
    with Busy(limited, f"{area}/big"):
        spans = _concurrently([
            (lambda ftp=ftp, n=n: ftp.storbinary(f"STOR {area}/u{n}", io.BytesIO(data)))
            for n, ftp in enumerate(sessions)])
    for ftp in sessions:
        _quit(ftp)
    for n in range(3):
        assert cos.get_object(Bucket=ALPHA, Key=f"{area}/u{n}")["Body"].get_raw_stream().read() \
            == data
    _assert_within(_measured_rate(spans, 3 * size, RATE), RATE)


def _tls_login(server: ServerProcess, user: str) -> ftplib.FTP_TLS:
    ftp = ftplib.FTP_TLS(context=client_context())
    ftp.connect("127.0.0.1", server.port, timeout=60)
    ftp.login(user, f"{user}-pw")
    ftp.prot_p()
    return ftp


def test_rates_over_tls_and_in_ascii_mode(limited, cos, area):
    """The transfers the IO loop sends (TLS, ASCII) and a TLS upload (paced a slice at a
    time: its socket cannot tell what the client has left) keep to the rate too."""
    size = 2 * MIB
    text = b"".join(b"%07d paced line\r\n" % n for n in range(size // 18 + 1))[:size]
    cos.put_object(Bucket=ALPHA, Key=f"{area}/text", Body=text)
    data = os.urandom(size)
    sessions = {user: _tls_login(limited, user) for user in ("tlsdown", "tlsup")}
    sessions["asciidown"] = limited.login("asciidown", "asciidown-pw")
    got, lines = bytearray(), []
    spans = dict(zip(sessions, _concurrently([
        lambda: sessions["tlsdown"].retrbinary(f"RETR {area}/text", got.extend),
        lambda: sessions["tlsup"].storbinary(f"STOR {area}/up", io.BytesIO(data)),
        lambda: sessions["asciidown"].retrlines(f"RETR {area}/text", lines.append)])))
    for ftp in sessions.values():
        _quit(ftp)
    assert bytes(got) == text
    assert cos.get_object(Bucket=ALPHA, Key=f"{area}/up")["Body"].get_raw_stream().read() \
        == data
    assert "\r\n".join(lines).encode() == text  # the last line has no line end
    for user, span in spans.items():
        _assert_within(_measured_rate([span], size, RATE), RATE, user)


def test_logging_in_again_brings_no_fresh_burst(limited, cos, area):
    """An account's buckets outlive its last session: a client that logs out and in again
    to get the one-second burst anew gets no more than the rate over the whole time."""
    rate, size = 512 * KIB, 2 * MIB
    _put(cos, f"{area}/a", size)
    _put(cos, f"{area}/b", size)
    with limited.login("again", "again-pw") as ftp:
        ftp.retrbinary(f"RETR {area}/a", lambda _data: None)
    first_ended = time.monotonic()  # the bucket is empty now
    got = bytearray()
    with limited.login("again", "again-pw") as ftp:
        ftp.retrbinary(f"RETR {area}/b", got.extend)
    measured = len(got) / (time.monotonic() - first_ended)
    assert len(got) == size
    _assert_within(measured, rate)


def test_the_account_table_keeps_buckets_for_a_while_and_never_fills(tmp_path):
    state = SharedState.create(str(tmp_path / "state"))
    try:
        def session(user: str) -> int:
            row, _ = state.admit(1, "192.0.2.1", Limits())
            assert state.log_in(row, 1, 0, Seat(account_key(user))) is None
            return row
        row = session("paced")
        assert state.take(account_key("paced"), True, 1024, 4096) > 2.5  # in debt
        state.release(row, 1)
        assert state.account_counts() == {}
        state.sweep_accounts()  # used just now: kept
        assert state.take(account_key("paced"), True, 1024, 0) > 2.5
        state.sweep_accounts(idle=0)
        assert state.take(account_key("paced"), True, 1024, 0) == 0.0  # forgotten
        # Many accounts logging in and out: kept slots are swept before the table fills.
        for n in range(ACCOUNT_SLOTS):
            state.release(session(f"user{n}"), 1)
        row = session("last")
        assert state.account_counts() == {account_key("last"): 1}
    finally:
        state.close()


def test_local_max_rate_caps_each_session(limited, cos, area, tmp_path):
    cap, size = 256 * KIB, MIB
    _put(cos, f"{area}/one", size)
    _put(cos, f"{area}/two", size)
    target = tmp_path / "one"
    url = f"ftp://capped:capped-pw@127.0.0.1:{limited.port}/{area}/"

    seconds: dict[str, float] = {}

    def curl(name: str) -> None:
        """Download ``name``; note how long the transfer took by curl's own clock (from
        the data connection to the end, the login not counted)."""
        done = subprocess.run(["curl", "-s", "--max-time", "120", "-o", str(tmp_path / name),
                               "-w", "%{time_pretransfer} %{time_total}", url + name],
                              capture_output=True, text=True, timeout=150)
        assert done.returncode == 0, done.stderr
        pretransfer, total = map(float, done.stdout.split())
        seconds[name] = total - pretransfer
    # Two sessions at once: each keeps to the cap on its own (that together they move twice
    # the cap is a speed goal: bench/rates.py).
    _concurrently([lambda: curl("one"), lambda: curl("two")])
    assert target.stat().st_size == size
    for name, elapsed in seconds.items():
        _assert_within((size - cap) / elapsed, cap, name)


def test_a_client_is_not_kept_waiting_for_a_whole_part_at_a_low_rate(limited, area):
    """At 16 KiB/s a 1 MiB part takes a minute to pay for; the upload saves up for 10 s at
    most (clients give up on a data connection that moves nothing for 20 s), then takes what
    it paid for and goes on at the rate."""
    ftp = limited.login("trickle", "trickle-pw")
    outcome: list = []

    def upload() -> None:
        try:
            outcome.append(ftp.storbinary(f"STOR {area}/slow", io.BytesIO(os.urandom(2 * MIB))))
        except (OSError, EOFError, ftplib.Error) as exc:
            outcome.append(exc)
    thread = threading.Thread(target=upload, daemon=True)
    thread.start()

    def received() -> int:
        found = re.search(r" trickle +\S+ +logged in +(\d+) ", limited.ctl("sessions").stdout)
        return int(found.group(1)) if found else 0
    try:
        wait_until(lambda: received() >= 64 * KIB, timeout=40,
                   what="the first bytes read before the part was paid for")
    finally:
        ftp.close()  # the upload ends with its session
        thread.join(60)


def test_paced_uploads_leave_the_memory_budget_to_the_others(emulator, cos, area, tmp_path):
    """Four slow paced uploads on a worker whose budget holds four part buffers: none holds
    a buffer while it waits for its rate (for its first 10 s: then it takes one, see the
    test above), so an unlimited upload goes through while they run, rather than once
    data_connection_timeout cut them off."""
    accounts = [Account("alice", "alice-pw", ALPHA),
                Account("slow", "slow-pw", ALPHA, extra="max_upload_rate = 64K")]
    optional = {"worker_processes": "1", "upload_memory_limit": "4",
                "data_connection_timeout": "60"}
    with ServerProcess(str(tmp_path), emulator.port, accounts, optional=optional) as server:
        sessions = [server.login("slow", "slow-pw") for _ in range(4)]
        # Logged in before the paced uploads start: the fast upload must go within
        # SAVE_UP_SECONDS of their start, and a login (scrypt) takes seconds under load.
        fast_session = server.login("alice", "alice-pw")
        replies: list = []

        def slow_upload(ftp: ftplib.FTP, n: int) -> None:
            try:
                replies.append(ftp.storbinary(f"STOR {area}/slow{n}",
                                              io.BytesIO(os.urandom(2 * MIB))))
            except (OSError, EOFError, ftplib.Error) as exc:
                replies.append(exc)
        slow = [threading.Thread(target=slow_upload, args=(ftp, n), daemon=True)
                for n, ftp in enumerate(sessions)]
        for thread in slow:
            thread.start()
        # Their 125s (or 150s) in the log, not `cosftpctl sessions`: a process started for
        # each look took more than SAVE_UP_SECONDS under load (the fast upload's client then
        # timed out behind four paced uploads holding the budget, at load 37).
        fast = os.urandom(3 * MIB)
        wait_until(lambda: len(re.findall(r"-\[slow\] -> 1(?:25|50) ", server.log_text())) == 4,
                   what="the paced uploads under way")
        with fast_session as ftp:
            assert ftp.storbinary(f"STOR {area}/fast", io.BytesIO(fast)).startswith("226")
        assert all(thread.is_alive() for thread in slow), replies  # none was cut off
        for ftp in sessions:
            ftp.close()  # their uploads end with the sessions
        for thread in slow:
            thread.join(60)
    assert cos.get_object(Bucket=ALPHA, Key=f"{area}/fast")["Body"].get_raw_stream().read() \
        == fast
