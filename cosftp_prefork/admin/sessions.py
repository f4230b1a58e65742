"""``GET /api/v1/sessions``: every live session with its transfer; ``DELETE
/api/v1/sessions/<id>``: close one (its client gets ``421``).

A session's id is the serial number the session table gave it at connect (never reused
while it lives). A kick is a request in the shared state that the owning worker's tick
(once a second) carries out: the call waits up to ``KICK_WAIT`` for the session to be gone.
"""

from __future__ import annotations

import time
from typing import Any

from ..server.scoreboard import SessionDetail
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
    closed = wait_for(lambda: not context.state.has_session(serial), KICK_WAIT)
    what = "closed" if closed else f"asked to close (not yet done after {KICK_WAIT:.0f}s)"
    return Response(200 if closed else 202, {"id": str(serial), "closed": closed},
                    audit=f"session {serial} (worker {worker}) {what}")
