"""``GET /api/v1/events``: the event queue (the spool of upload hooks, issue 24).

Events are not in the server yet: the queue is empty and ``enabled`` is false. The
document's schema has the figures the spool fills in once it lands: events queued, the
spool's size and limit, dead letters, the age of the oldest event waiting.
"""

from __future__ import annotations

from .app import Context, Response


def events(context: Context) -> Response:
    return Response(200, {"enabled": False, "queued": 0, "spool_bytes": 0,
                          "spool_limit_bytes": None, "dead_letters": 0,
                          "oldest_queued_seconds": None})
