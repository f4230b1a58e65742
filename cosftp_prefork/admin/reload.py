"""``POST /api/v1/reload``: reload the configuration file, as ``cosftpctl reload`` (HUP) does.

The API runs as the workers' user and may not read the file; the master does. The call asks
the master through the shared state; the master's loop takes the request (within a second),
validates the file first, and either refuses it (nothing changes: 422 with its errors) or
starts a new generation of workers. The call then waits for the reload's end: 200 once the
new generation serves (with the warnings the master logged for it, as ``cosftpctl reload``
prints them), 500 if it was rolled back, 202 if it still runs after ``RELOAD_WAIT``;
503 at once once the master stops (the shared state says so: it takes no reload then).
A reload that succeeds replaces this process too (new tokens, new accounts): it finishes the
requests in flight first.
"""

from __future__ import annotations

import threading
from typing import Any

from ..server.scoreboard import (
    RELOAD_FAILED,
    RELOAD_OK,
    RELOAD_REFUSED,
    RELOAD_RUNNING,
    SharedState,
)
from .app import ApiError, Context, Response, wait_for

TAKE_WAIT = 10.0  # the master's loop turns every second
RELOAD_WAIT = 45.0  # the master rolls a reload back after 30 s
STOPPING = "the server is stopping; start it again to use the configuration file"
_one_at_a_time = threading.Lock()


def reload(context: Context) -> Response:
    if context.request.body:
        context.request.json()  # a body, if any, must be JSON: no form can post here
    if not _one_at_a_time.acquire(blocking=False):
        raise ApiError(409, "a reload is already running")
    try:
        return _reload(context)
    finally:
        _one_at_a_time.release()


def _reload(context: Context) -> Response:
    state = context.state
    master = state.master()
    if master.stopping:  # it would never take the request
        raise ApiError(503, STOPPING)
    if master.reload_result == RELOAD_RUNNING:
        raise ApiError(409, "a reload is already running")
    number = state.request_reload()
    if not wait_for(lambda: state.reload_taken() >= number or state.master().stopping,
                    TAKE_WAIT):
        raise ApiError(503, "the master did not take the reload within "
                       f"{TAKE_WAIT:.0f}s; see the server's log")
    if state.reload_taken() < number:  # it began to stop meanwhile
        raise ApiError(503, STOPPING)
    master = state.master()
    if master.reload_result in (RELOAD_REFUSED, RELOAD_FAILED):
        raise ApiError(422, "the configuration was refused; nothing changed",
                       errors=[state.reload_error()])
    wait_for(lambda: state.master().reload_result != RELOAD_RUNNING, RELOAD_WAIT)
    master = state.master()
    if master.reload_result == RELOAD_OK:
        return Response(200, {"result": "ok", "generation": master.generation,
                              **warnings_of(state)},
                        audit=f"reloaded: generation {master.generation}")
    if master.reload_result == RELOAD_FAILED:
        raise ApiError(500, "the reload was rolled back", errors=[state.reload_error()])
    return Response(202, {"result": "running", "generation": master.generation},
                    audit=f"reload of generation {master.generation} still running")


def warnings_of(state: SharedState) -> dict[str, Any]:
    """The warnings the master logged for its last reload, as far as the state file keeps
    them (its first 4 KiB), and how many more its log has."""
    kept, count = state.reload_warnings()
    return {"warnings": kept, "warnings_not_shown": count - len(kept)}
