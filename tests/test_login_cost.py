"""What logins cost a worker, end to end: password checks (scrypt, 16 MiB each) run at most
``max_password_checks`` at once per worker, whoever sends them and however many at once, and
a logged-in session that logs in again is a new login (limits, bans, ``login_timeout``).

The bound is read from the kernel, not sampled: each worker's RSS high-water mark (VmHWM),
reset before the crowd sends its passwords. Every check holds its 16 MiB at once while it
runs, so a worker that never grew by more than ``max_password_checks`` checks plus less than
one check never ran more than ``max_password_checks`` at once.
"""

from __future__ import annotations

import ftplib
import os
from collections import Counter

from .conftest import ALPHA
from .crowds import Crowd, legitimate_login, peak_rss, reset_peak_rss, sources, workers_of
from .server_proc import FREE_PORT, Account, ServerProcess, wait_until
from .test_auth import heavy_value, scrypt_value
from .test_governance import connect, log_in, next_reply, server
from .test_master import no_sessions_left
from .test_operating import scrape, value

MIB = 2 ** 20
CHECK = 128 * 8 * 2 ** 14  # bytes one check of cosftpctl hash-password's hashes holds (128rN)
HEAVY_CHECK = 128 * 8 * 2 ** 15  # heavy_value()'s
# What else a worker may grow by while it answers a crowd (measured: ~2 MiB), less than a
# check: a peak under ``n * CHECK + SLACK`` means at most n checks ran at once.
SLACK = 12 * MIB
CHECKS = 2  # max_password_checks of these servers


def logins_server(emulator, tmp_path, password_hash: str = "", **optional: str) -> ServerProcess:
    """A server whose accounts' passwords are scrypt hashes (built here, not by the server),
    with metrics on, whose RSS holds the checks running and no check that ended: its
    glibc maps every block of 1 MiB or more (a check's 16 MiB) and unmaps it when freed.
    By default glibc raises that threshold past 16 MiB once one such block is freed, and
    then keeps the checks' blocks in its arenas: RSS then depends on which checks ran
    before and where, not on how many run at once. A crowd that logged in first (its
    checks' blocks kept) showed 0-16 MiB of growth for two checks at once, and passed
    with three at once (max_password_checks = 3: 49 MiB with this setting)."""
    value_of = password_hash or scrypt_value("victim-pw", 2 ** 14, 8, 1)
    accounts = [Account("victim", value_of, ALPHA),
                Account("legit", scrypt_value("legit-pw", 2 ** 14, 8, 1, salt=b"t" * 16),
                        ALPHA)]
    proc = ServerProcess(str(tmp_path), emulator.port, accounts,
                         network={"metrics_port": FREE_PORT},
                         optional={"log_level": "INFO", "max_password_checks": str(CHECKS),
                                   **optional},
                         env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MIB)})
    return proc


class Peaks:
    """The workers' RSS now, and then the most each held since."""

    def __init__(self, proc: ServerProcess) -> None:
        self.workers = workers_of(proc.proc.pid)
        self.before = {w.pid: w.memory_info().rss for w in self.workers}
        for worker in self.workers:
            reset_peak_rss(worker.pid)

    def growth(self) -> dict[int, int]:
        """How far above its RSS of then each worker went, in bytes."""
        return {pid: peak_rss(pid) - rss for pid, rss in self.before.items()}


def attack(proc: ServerProcess, crowd: Crowd, lines: list[str]) -> tuple[Counter, str, dict]:
    """``crowd`` sends ``lines`` at the same moment while ``legit`` logs in from 127.0.0.1:
    the crowd's replies, the legitimate login's, and how far each worker's RSS went above
    what it was just before. The crowd is closed."""
    try:
        peaks = Peaks(proc)
        replies, legit = crowd.send_all(
            lines, lambda: legitimate_login(proc.port, "legit", "legit-pw"))
    finally:
        crowd.close()
    return replies, legit, peaks.growth()


def assert_at_most_checks_at_once(growth: dict[int, int], checks: int, each: int) -> None:
    assert max(growth.values()) < checks * each + SLACK, \
        {pid: grown // MIB for pid, grown in growth.items()}


def checks_settled(proc: ServerProcess) -> bool:
    samples = scrape(proc)
    return value(samples, "cosftp_password_checks_running") == 0 and \
        value(samples, "cosftp_password_checks_waiting") == 0


def test_wrong_passwords_sent_at_once_are_checked_a_few_at_a_time(emulator, tmp_path):
    """8 addresses x 15 connections (inside the default pre-login limits) send a wrong
    password at the same moment. Before: each of the 2 workers ran its ~60 checks at once and
    peaked ~800 MiB above its RSS."""
    with logins_server(emulator, tmp_path) as proc:
        no_sessions_left(proc)
        replies, legit, growth = attack(proc, Crowd(proc.port, sources(8), 15),
                                        ["USER victim", "PASS a-wrong-guess"])
        assert legit.startswith("230"), legit  # while the crowd's checks were queued
        assert replies["331"] == 120 and replies["530"] + replies["421"] == 120, replies
        assert_at_most_checks_at_once(growth, CHECKS, CHECK)
        assert value(scrape(proc), "cosftp_password_checks_total", turn="waited") > 0
        wait_until(lambda: checks_settled(proc), what="no check running or waiting")


def test_logged_in_sessions_logging_in_again_are_checked_a_few_at_a_time(emulator, tmp_path):
    """6 addresses x 24 logged-in sessions send USER and PASS again at the same moment (no
    pre-login limit counted them before). Before: ~70 checks at once per worker; now they
    are connections not logged in again: those over max_prelogin_connections_per_ip (16)
    get 421, the others wait their turn."""
    with logins_server(emulator, tmp_path) as proc:
        no_sessions_left(proc)
        crowd = Crowd(proc.port, sources(6), 24, login=("victim", "victim-pw"))
        replies, legit, growth = attack(proc, crowd, ["USER victim", "PASS victim-pw"])
        assert legit.startswith("230"), legit
        assert set(replies) <= {"331", "230", "421"}, replies
        assert replies["421"] > 0, replies
        assert_at_most_checks_at_once(growth, CHECKS, CHECK)
        assert "new login refused: Too many connections from your address waiting to log " \
            "in." in proc.log_text()


def test_a_login_whose_turn_comes_after_its_deadline_gets_421(emulator, tmp_path):
    """24 wrong passwords at once on one worker checking one at a time, each check about a
    second of one core (the costliest hash accepted), login_timeout 3 s: the logins whose
    turn did not come in time are closed as timed out, and nothing they waited with is left
    behind (threads, checks queued)."""
    with logins_server(emulator, tmp_path, heavy_value(), worker_processes="1",
                       max_password_checks="1", login_timeout="3") as proc:
        no_sessions_left(proc)
        [worker] = workers_of(proc.proc.pid)
        threads = worker.num_threads()
        crowd = Crowd(proc.port, sources(2), 12)
        try:
            peaks = Peaks(proc)
            replies, _ = crowd.send_all(["USER victim", "PASS a-wrong-guess"])
        finally:
            crowd.close()
        assert replies["331"] == 24 and replies["530"] + replies["421"] == 24, replies
        assert replies["421"] > 0, replies
        assert "(its password waited for its turn to be checked)" in proc.log_text()
        assert_at_most_checks_at_once(peaks.growth(), 1, HEAVY_CHECK)
        wait_until(lambda: worker.num_threads() == threads, what="the sessions' threads gone")
        wait_until(lambda: checks_settled(proc), what="no check running or waiting")
        assert value(scrape(proc), "cosftp_password_checks_total", turn="timed_out") > 0


def test_a_new_login_in_a_logged_in_session_has_login_timeout(emulator, tmp_path):
    with server(emulator, tmp_path, login_timeout="2") as proc:
        ftp = log_in(proc)
        assert ftp.sendcmd("USER ops").startswith("331")
        assert next_reply(ftp) == "421 Login timed out."
        ftp.close()


def test_new_logins_in_logged_in_sessions_count_against_the_prelogin_limits(emulator,
                                                                             tmp_path):
    with server(emulator, tmp_path, max_prelogin_connections_per_ip="2") as proc:
        sessions = [log_in(proc, "127.0.0.30") for _ in range(4)]
        assert sessions[0].sendcmd("USER ops").startswith("331")
        assert sessions[1].sendcmd("REIN").startswith("220")  # "Ready for a new user"
        for ftp, command in zip(sessions[2:], ("USER ops", "REIN")):
            try:
                reply = ftp.sendcmd(command)
            except ftplib.error_temp as exc:
                reply = str(exc)
            assert reply == "421 Too many connections from your address waiting to log in."
            assert next_reply(ftp) == ""  # closed
        assert sessions[0].sendcmd("PASS ops-pw").startswith("230")
        sessions.append(log_in(proc, "127.0.0.30"))  # a pending place is free again
        for ftp in sessions:
            ftp.close()


def test_a_ban_reaches_new_logins_in_logged_in_sessions(emulator, tmp_path):
    """Failed re-logins count towards the ban like any; then a session of the address that
    started a new login is closed like any connection not logged in, and one that starts
    one is refused like a new connection. Sessions that stay logged in go on."""
    with server(emulator, tmp_path, max_login_failures="3") as proc:
        guesser, waiting, staying = (log_in(proc, "127.0.0.31") for _ in range(3))
        assert waiting.sendcmd("USER ops").startswith("331")
        for attempt in range(3):
            try:
                guesser.sendcmd("USER ops")
                guesser.sendcmd(f"PASS wrong-{attempt}")
            except ftplib.error_perm as exc:
                assert str(exc).startswith("530"), exc
        assert next_reply(waiting).startswith("421 Too many failed logins")
        assert staying.sendcmd("NOOP").startswith("200")
        try:
            reply = staying.sendcmd("USER ops")
        except ftplib.error_temp as exc:
            reply = str(exc)
        assert reply.startswith("421 Too many failed logins"), reply
        for ftp in (guesser, waiting, staying):
            ftp.close()
        with connect(proc) as ftp:  # from 127.0.0.1
            assert ftp.login("ops", "ops-pw").startswith("230")


def test_passwords_queued_when_their_address_gets_banned_are_not_answered(emulator, tmp_path):
    """16 connections from one address (its pre-login cap) send a wrong password at the same
    moment to a worker that checks one at a time, with a ban after 3 failures. Before: every
    queued password was checked and answered 530 (16 of 16), so an address got as many
    guesses answered as it could queue, not ``max_login_failures`` (bench/load.py --hostile
    on 4 workers: 8 guesses answered from an address banned after 5). Now a failure is
    counted before the next check starts, and a password whose address was banned before
    its turn, or while it was checked, gets the ban's 421 without an answer (nor a check)."""
    with logins_server(emulator, tmp_path, worker_processes="1", max_password_checks="1",
                       max_login_failures="3") as proc:
        no_sessions_left(proc)
        crowd = Crowd(proc.port, sources(1), 16)
        try:
            replies, _ = crowd.send_all(["USER victim", "PASS a-wrong-guess"])
        finally:
            crowd.close()
        assert replies["530"] == 3 and replies["421"] == 13, replies
        wait_until(lambda: checks_settled(proc), what="no check running or waiting")
