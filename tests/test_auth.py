"""Authentication end to end: failed logins cost the same, unusable hashes are refused."""

from __future__ import annotations

import base64
import ftplib
import hashlib
import statistics
import threading
import time

import psutil
import pytest

from .conftest import ALPHA
from .server_proc import Account, ServerProcess, wait_until

MAXMEM = 64 * 1024 * 1024


def scrypt_value(password: str, n: int, r: int, p: int, salt: bytes = b"s" * 16,
                 dklen: int = 64) -> str:
    """A ``scrypt$`` value built independently of the server's code."""
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=MAXMEM,
                            dklen=dklen)
    return raw_value(n, r, p, salt, digest)


def raw_value(n: int, r: int, p: int, salt: bytes, digest: bytes) -> str:
    b64 = [base64.b64encode(part).decode() for part in (salt, digest)]
    return f"scrypt${n}${r}${p}${b64[0]}${b64[1]}"


def heavy_value() -> str:
    """Costly on purpose (about a second of one core here): before the fix, a wrong password
    on this account took that much longer than one on an unknown user or a plain-text one."""
    return scrypt_value("right-pw", 2 ** 15, 8, 16)


@pytest.fixture(scope="module")
def timed(emulator, tmp_path_factory):
    accounts = [Account("hashed", heavy_value(), ALPHA), Account("plain", "plain-pw", ALPHA)]
    # Three checks at once (max_password_checks), as the three failures of a round are sent.
    proc = ServerProcess(str(tmp_path_factory.mktemp("timed")), emulator.port, accounts,
                         optional={"max_login_failures": "0", "max_password_checks": "3"})
    proc.start()
    yield proc
    proc.stop()


def pass_seconds(server: ServerProcess, user: str, password: str) -> float:
    """Seconds from PASS to its reply (the connection and USER are not counted)."""
    with ftplib.FTP() as ftp:
        ftp.connect("127.0.0.1", server.port, timeout=60)
        ftp.sendcmd(f"USER {user}")
        started = time.monotonic()
        try:
            ftp.sendcmd(f"PASS {password}")
        except ftplib.error_perm as exc:
            assert str(exc).startswith("530"), exc
        return time.monotonic() - started


def test_failed_logins_take_the_same_time_whoever_the_user(timed):
    # What one verification of the hash costs now, on this machine, as it is loaded.
    cost = min(pass_seconds(timed, "hashed", "right-pw") for _ in range(2))
    kinds = ("hashed", "plain", "nobody-such")
    rounds: list[dict[str, float]] = []

    def measure(kind: str, into: dict[str, float]) -> None:
        into[kind] = pass_seconds(timed, kind, "a-wrong-guess")

    for turn in range(3):
        # The three failures of a round run at once, so that whatever else loads the
        # machine slows them alike; they are compared within their round. Each kind starts
        # first once: the one sent first tends to be served first.
        found: dict[str, float] = {}
        order = kinds[turn:] + kinds[:turn]
        threads = [threading.Thread(target=measure, args=(kind, found)) for kind in order]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(found) == 3, found
        rounds.append(found)
    for kind in ("plain", "nobody-such"):
        # Before: the hashed account's failures took about ``cost`` longer than the others.
        gap = statistics.median(r["hashed"] - r[kind] for r in rounds)
        # (Whether one kind was slower in all three rounds is chance: ~1 run in 10 per pair
        # even with equal costs, as measured; the gap is what the fix changed.)
        assert abs(gap) < cost / 2, (cost, rounds)


BAD_HASHES = {
    "n-not-power-of-two": raw_value(1000, 8, 1, b"s" * 16, b"d" * 64),
    "empty-digest": raw_value(2 ** 14, 8, 1, b"s" * 16, b""),
    "short-digest": raw_value(2 ** 14, 8, 1, b"s" * 16, b"d" * 8),
    "empty-salt": raw_value(2 ** 14, 8, 1, b"", b"d" * 64),
    "short-salt": raw_value(2 ** 14, 8, 1, b"s" * 4, b"d" * 64),
    "over-64-mib": raw_value(2 ** 16, 8, 1, b"s" * 16, b"d" * 64),  # OpenSSL refuses it
    "too-slow": raw_value(2 ** 17, 3, 16, b"s" * 16, b"d" * 64),
}


@pytest.mark.parametrize("value", BAD_HASHES.values(), ids=BAD_HASHES.keys())
def test_check_refuses_unusable_hashes(tmp_path, value):
    proc = ServerProcess(str(tmp_path), 9, [Account("u", value, ALPHA)])
    proc.write_config()
    checked = proc.ctl("check")
    assert checked.returncode != 0, checked.stdout
    assert "[COS_ACCOUNT_0] ftp_login_user_password: is not a" in checked.stderr
    assert "power of two from 2^10 to 2^20" in checked.stderr  # the bounds are stated
    salt_and_digest = [part for part in value.split("$")[4:] if part]
    assert not any(part in checked.stderr for part in salt_and_digest)


def test_check_accepts_hashes_inside_the_bounds(tmp_path):
    accounts = [Account("a", scrypt_value("pw", 2 ** 10, 1, 1, salt=b"s" * 8, dklen=16),
                        ALPHA),
                Account("b", heavy_value(), "beta-1250000000")]
    proc = ServerProcess(str(tmp_path), 9, accounts)
    proc.write_config()
    checked = proc.ctl("check")
    assert checked.returncode == 0, checked.stderr
    assert "different scrypt parameters" in checked.stdout + checked.stderr


def test_a_failure_inside_scrypt_is_a_530_that_counts(emulator, tmp_path):
    """scrypt cannot allocate its 16 MiB (the worker's address space is capped): the login
    still gets 530, is logged, and bans the address (max_login_failures = 1)."""
    value = scrypt_value("pw", 2 ** 14, 8, 1)
    proc = ServerProcess(str(tmp_path), emulator.port, [Account("capped", value, ALPHA)],
                         optional={"worker_processes": "1", "max_login_failures": "1"})
    with proc:
        master = psutil.Process(proc.proc.pid)
        wait_until(lambda: master.children(), what="worker started")
        worker = master.children()[0]
        ftp = ftplib.FTP()
        ftp.connect("127.0.0.1", proc.port, timeout=30)
        ftp.sendcmd("USER capped")
        limits = worker.rlimit(psutil.RLIMIT_DATA)
        # Room for a few MiB of ordinary allocations, not for scrypt's 16 MiB.
        worker.rlimit(psutil.RLIMIT_DATA, (worker.memory_info().data + 4 * 1024 * 1024,
                                           limits[1]))
        try:
            with pytest.raises(ftplib.error_perm, match="530"):
                ftp.sendcmd("PASS pw")
        finally:
            worker.rlimit(psutil.RLIMIT_DATA, limits)
            ftp.close()
        assert "password check of [COS_ACCOUNT_0] failed" in proc.log_text()
        with pytest.raises(ftplib.error_temp, match=r"421.*failed logins"):
            proc.login("capped", "pw")
