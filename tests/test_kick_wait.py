"""A session kicked while its failed login's 530 waits (``delay_failed_login``) ends at once:
its socket, its place in the limits and its thread (``ftp.loginwait``).

No clock is read: a twin session that failed its login just before the kicked one marks the
end of the delay with its own 530. The kicked session's thread must be gone before that.
"""

from __future__ import annotations

import select
import socket

from .admin_client import AdminClient, admin_server, admin_url
from .crowds import workers_of
from .server_proc import wait_until
from .test_login_delay import LONG, failed_logins


def failed_session(port: int, failures_before: int, proc) -> socket.socket:
    """A control connection that sent USER alice and a wrong password, once the server
    logged that failure (its 530 then waits out the delay)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    replies = sock.makefile("rb")
    assert replies.readline().startswith(b"220")
    sock.sendall(b"USER alice\r\nPASS a-wrong-guess\r\n")
    assert replies.readline().startswith(b"331")
    wait_until(lambda: failed_logins(proc) == failures_before + 1,
               what="the wrong password checked")
    return sock


def test_a_kick_during_the_delay_frees_the_thread_at_once(emulator, tmp_path):
    """Two sessions fail their login, the twin first; the admin API kicks the other one. It
    gets the kick's 421 and its worker thread ends while the twin's 530 still waits (the
    twin's delay began first, so the kicked one's would end after it). Before: the kicked
    session's socket was closed, but its thread waited for its own delayed 530's timer."""
    with admin_server(str(tmp_path), emulator.port, worker_processes="1",
                      max_login_failures="0", delay_failed_login=LONG) as proc:
        [worker] = workers_of(proc.proc.pid)
        with failed_session(proc.port, 0, proc) as twin, \
                failed_session(proc.port, 1, proc) as kicked:
            threads = worker.num_threads()
            api = AdminClient(admin_url(proc))
            # listed by serial, the order they connected in: the kicked one came second
            _, session = api.get("/sessions")["sessions"]
            answer = api.call("DELETE", f"/sessions/{session['id']}")
            assert answer.status_code == 200, answer.text
            assert kicked.makefile("rb").read() == \
                b"421 Session closed by the server's administrator.\r\n"

            def thread_gone_or_delay_over() -> bool:
                return worker.num_threads() < threads or \
                    bool(select.select([twin], [], [], 0)[0])

            wait_until(thread_gone_or_delay_over, timeout=float(LONG) * 2,
                       what="the kicked session's thread to end, or the twin's 530")
            twin_answered = bool(select.select([twin], [], [], 0)[0])
            assert worker.num_threads() < threads and not twin_answered, \
                "the kicked session's thread outlived the delay"
