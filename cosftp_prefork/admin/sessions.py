"""``GET /api/v1/sessions``: every live session with its transfer; ``DELETE
/api/v1/sessions/<id>``: close one (its client gets ``421``).

A session's id is the serial number the session table gave it at connect (never reused
while it lives). A kick is a request in the shared state, in force from the moment it is
written there: the session checks it before each command it runs and each read of its
connections (``WorkerStats.kick_due``), and its worker, woken at once (``server.wakeup``:
its main loop waits in ``poll``, up to a second), tells an idle session or one whose
transfer is in flight to go. The call then waits up to ``KICK_WAIT`` for the session to be
gone: ``200`` closed; ``202`` if it is not yet (its thread still finishing a command, such
as a COS call, or parking an upload), though from the answer on it runs no other command,
takes no more of an upload's bytes and sends nothing but the end of the reply being sent
and its ``421``.
"""

from __future__ import annotations

import time
from typing import Any

from ..server.scoreboard import SessionDetail
from ..server.wakeup import wake_worker
from .app import ApiError, Context, Response, wait_for

KICK_WAIT = 5.0


def sessions(context: Context) -> Response:
    now = time.time()
    details = sorted(context.state.session_details(), key=lambda detail: detail.serial)
    return Response(200, {"sessions": [_session(detail, now) for detail in details]})


def _session(detail: SessionDetail, now: float) -> dict[str, Any]:
    transfer = detail.transfer
    return {
        "id": str(detail.serial), "worker_pid": detail.pid, "client": detail.client,
        "user": detail.user or None, "logged_in": detail.logged_in,
        "command": detail.command or None, "connected": detail.connected or None,
        "idle_seconds": max(0.0, now - detail.last_active),
        "transfer": None if transfer is None else {
            "direction": "upload" if transfer.upload else "download",
            "in_flight": transfer.in_flight, "file": transfer.name,
            "bytes": detail.nbytes, "expected_bytes": transfer.expected,
            "rate": detail.rate},
    }


def kick(context: Context, session_id: str) -> Response:
    if not session_id.isdigit() or not 0 < int(session_id) < 2**32:
        raise ApiError(404, "no such session: ids are the numbers GET /api/v1/sessions lists")
    serial = int(session_id)
    worker = context.state.request_kick(serial)
    if worker is None:
        raise ApiError(404, f"no session {serial}: it ended, or never was")
    wake_worker(worker)  # else its tick finds the request, within a second
    closed = wait_for(lambda: not context.state.has_session(serial), KICK_WAIT)
    what = "closed" if closed else f"asked to close (not yet done after {KICK_WAIT:.0f}s)"
    return Response(200 if closed else 202, {"id": str(serial), "closed": closed},
                    audit=f"session {serial} (worker {worker}) {what}")
