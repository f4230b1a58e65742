"""Authentication end to end: failed logins cost the same, unusable hashes are refused."""

from __future__ import annotations

import base64
import contextlib
import ftplib
import hashlib

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
    # login_timeout: a check of the costly hash took past the default 30 s at load 20 on 2
    # cores (421 Login timed out); the test compares CPU, never time.
    proc = ServerProcess(str(tmp_path_factory.mktemp("timed")), emulator.port, accounts,
                         optional={"max_login_failures": "0", "login_timeout": "300"})
    proc.start()
    yield proc
    proc.stop()


def fail_login(server: ServerProcess, user: str) -> None:
    with ftplib.FTP() as ftp:
        ftp.connect("127.0.0.1", server.port, timeout=60)
        ftp.sendcmd(f"USER {user}")
        with pytest.raises(ftplib.error_perm, match=r"^530"):
            ftp.sendcmd("PASS a-wrong-guess")


def workers_cpu(server: ServerProcess) -> float:
    """CPU seconds (user and system) the server's workers have used so far."""
    total = 0.0
    for child in psutil.Process(server.proc.pid).children():
        with contextlib.suppress(psutil.NoSuchProcess):
            times = child.cpu_times()
            total += times.user + times.system
    return total


def test_failed_logins_cost_the_same_whoever_the_user(timed):
    """A wrong password costs the workers one check of the costliest hash whatever the user
    (a hashed account, a plain-text one, nobody): the CPU it takes, not the time the reply
    takes, is compared, so that a loaded machine cannot tell them apart or fail the test.
    Before the fix a plain-text account or an unknown user cost next to nothing."""
    cost: dict[str, float] = {}
    for kind in ("hashed", "plain", "nobody-such"):
        before = workers_cpu(timed)
        fail_login(timed, kind)
        cost[kind] = workers_cpu(timed) - before
    for kind in ("plain", "nobody-such"):
        assert cost[kind] > cost["hashed"] / 2, cost


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
