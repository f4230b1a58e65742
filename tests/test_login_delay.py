"""``delay_failed_login`` end to end: the wait before a failed login's 530, the same for a
wrong password and an unknown user, set at start and changed by a reload.

No clock is read: the delays are compared by the order of the replies. A reload leaves the
sessions of the old generation of workers on the old configuration, so one server holds
sessions with both delays; a failed login with the short one, sent after one with the long
one, is answered while the long one still waits.
"""

from __future__ import annotations

import select
import socket

from .conftest import CHEAP_HASH
from .server_proc import ServerProcess, wait_until
from .test_governance import OPS, connect, next_reply

# Long enough that nothing the test does after the first wrong password takes as long.
LONG = "30"


def delay_server(emulator, tmp_path, delay: str, log_level: str = "INFO") -> ServerProcess:
    """One worker with ``delay_failed_login = delay``; no bans (these tests fail logins on
    purpose). ``CHEAP_HASH`` makes each password check a 2 ms scrypt."""
    return ServerProcess(str(tmp_path), emulator.port, [*OPS, CHEAP_HASH],
                         optional={"worker_processes": "1", "max_login_failures": "0",
                                   "log_level": log_level, "delay_failed_login": delay})


def failed_logins(proc: ServerProcess) -> int:
    """How many failed logins the server logged (at the check, before the delay)."""
    return proc.log_text().count("failed login as ")


def test_a_reload_changes_the_delay_and_both_hold(emulator, tmp_path):
    """Delay 30 s at start, 0 after a reload. A session of the first generation sends a wrong
    password; once its failure is logged, a wrong password for a known user and one for an
    unknown user on the new generation are both answered 530 while the first still waits.
    Before: pyftpdlib's fixed 3 s for every session, so the first 530 came first."""
    with delay_server(emulator, tmp_path, LONG) as proc:
        waiting = connect(proc)
        assert waiting.sendcmd("USER ops").startswith("331")
        proc.optional["delay_failed_login"] = "0"
        proc.write_config()
        reloaded = proc.ctl("reload")
        assert reloaded.returncode == 0, reloaded.stderr
        waiting.putcmd("PASS a-wrong-guess")
        wait_until(lambda: failed_logins(proc) == 1, what="the first wrong password checked")
        for user in ("ops", "nobody-such"):
            with connect(proc) as ftp:
                assert ftp.sendcmd(f"USER {user}").startswith("331")
                ftp.putcmd("PASS a-wrong-guess")
                assert next_reply(ftp) == "530 Authentication failed."
        readable, _, _ = select.select([waiting.sock], [], [], 0)
        assert not readable, next_reply(waiting)
        waiting.close()


def test_a_quit_sent_ahead_of_the_530_closes_the_session_cleanly(emulator, tmp_path):
    """USER, a wrong PASS and QUIT in one packet: pyftpdlib reads on while the 530 waits, so
    the QUIT closes the session (221) first. The delayed 530 then finds it closed and must not
    register its socket again: that raised EBADF, an unhandled exception in the log (what
    test_reliability's fuzzing met once the tests' servers answered failed logins at once).
    The session's event loop ending (pyftpdlib's "closing IOLoop", DEBUG) says the delayed
    call ran: it is the loop's last task."""
    with delay_server(emulator, tmp_path, "0", log_level="DEBUG") as proc:
        ended_before = proc.log_text().count("closing IOLoop")
        with socket.create_connection(("127.0.0.1", proc.port), timeout=30) as sock:
            replies = sock.makefile("rb")
            assert replies.readline().startswith(b"220")
            sock.sendall(b"USER ops\r\nPASS a-wrong-guess\r\nQUIT\r\n")
            assert replies.read() == b"331 Username ok, send password.\r\n221 Goodbye.\r\n"
        wait_until(lambda: proc.log_text().count("closing IOLoop") > ended_before,
                   what="the session's event loop to end")
        assert "unhandled exception" not in proc.log_text()
