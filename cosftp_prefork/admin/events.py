"""``GET /api/v1/events``: the event queue (issue 24), read from the spool by
``events.queue`` without changing it: events queued, the spool's size and limit, dead
letters, the age of the oldest event waiting. ``enabled`` says whether the configuration
sends events; a spool left by an earlier configuration is shown while it drains.
"""

from __future__ import annotations

from typing import Optional

from ..events.queue import QueueReader
from .app import Context, Response

# The reader of this process (replaced at each reload, with its configuration): it keeps
# where it stopped counting the dead-letter file.
_reader: Optional[QueueReader] = None


def events(context: Context) -> Response:
    global _reader
    if _reader is None:
        _reader = QueueReader(context.config.hooks)
    status = _reader.status()
    enabled = context.config.events_enabled
    oldest = status.oldest_queued_seconds
    return Response(200, {"enabled": enabled, "queued": status.queued,
                          "spool_bytes": status.spool_bytes,
                          "spool_limit_bytes": status.spool_limit_bytes
                          if enabled or status.batches else None,
                          "dead_letters": status.dead_letters,
                          "oldest_queued_seconds": None if oldest is None else round(oldest, 3)})
