"""``idle_session_timeout`` end to end: it counts the time a session waits for a command, on
the session's own thread.

No clock is read: a command is held in COS by the emulator's rendezvous for as long as the
test wants, and connections opened after that command started, which send nothing, are the
witnesses that the idle timeout has passed since then (the second one's ``421`` comes after
the busy session's timeout would have).
"""

from __future__ import annotations

import socket
import uuid

from .conftest import ALPHA
from .server_proc import wait_until
from .test_governance import log_in, next_reply, server


def test_a_command_longer_than_the_idle_timeout_keeps_its_session(emulator, tmp_path):
    """SIZE of a file whose look-up (a LIST of its key) COS holds runs past
    idle_session_timeout. Two connections opened in turn once the LIST reached COS get their
    idle 421 while the SIZE still waits; then COS
    answers, the SIZE gets its 213, and the session goes on (NOOP: 200). Before: pyftpdlib
    started the idle timer at accept on the worker's main event loop, whose thread sent the
    421 and closed the session while the session's own thread was still running the SIZE."""
    key = f"idle-{uuid.uuid4().hex}.bin"
    cos = emulator.client()
    cos.put_object(Bucket=ALPHA, Key=key, Body=b"12345")
    with server(emulator, tmp_path, idle_session_timeout="3", worker_processes="1") as proc:
        busy = log_in(proc)
        lists = emulator.requests(contains=key).get("LIST", 0)
        emulator.rendezvous(contains=key, exact=True, kind="LIST", parties=2, timeout=120)
        busy.putcmd(f"SIZE {key}")
        wait_until(lambda: emulator.requests(contains=key).get("LIST", 0) > lists,
                   what="the SIZE's LIST held in COS")
        # Two in turn: pyftpdlib's scheduler fires a timer reset since it was scheduled one
        # turn of the loop late, so the first witness may go before the session would
        for _ in range(2):
            assert _idle_reply(proc.port) == b"421 Control connection timed out.\r\n"
        cos.list_objects(Bucket=ALPHA, Prefix=key)  # the rendezvous' second party: both go
        assert next_reply(busy) == "213 5"
        assert busy.sendcmd("NOOP").startswith("200")
        busy.quit()



def _idle_reply(port: int) -> bytes:
    """Open a control connection, read its greeting, send nothing and return the line the
    server sends next."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as idle:
        replies = idle.makefile("rb")
        assert replies.readline().startswith(b"220")
        return replies.readline()
