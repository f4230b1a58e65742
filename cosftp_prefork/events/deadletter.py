"""The dead-letter file: events given up on, kept for an operator to replay.

``<event_spool_dir>/dead-letter.jsonl``, one JSON object per line: the destination (its
``id``: ``http:<url>`` or ``command:<command line>``), when the event was spooled and given
up, the attempts, the last error, and the body exactly as it would have been sent with its
signature (for a receiver). Appended and synced by the
events process alone; never rotated or trimmed by the server (its size is the operator's:
``cosftp_events_dead_lettered_total`` says when it grows).
"""

from __future__ import annotations

import json
import os
from typing import Any

from ..safefiles import open_append
from .body import iso_time
from .spool import DEAD_LETTER_NAME, FILE_MODE


def dead_letter_path(directory: str) -> str:
    return os.path.join(directory, DEAD_LETTER_NAME)


def bury(directory: str, record: dict[str, Any], destination: dict[str, Any], attempts: int,
         last_error: str, now: float) -> None:
    """Append one given-up delivery; raises ``OSError``."""
    line = json.dumps({
        "event_id": record["event_id"], "event": record["event"],
        "destination": destination["id"], "scope": destination.get("scope"),
        "spooled": iso_time(float(record.get("at", 0.0))), "given_up": iso_time(now),
        "attempts": attempts, "last_error": last_error, "body": record["body"],
        "signature": destination.get("signature"),
    }, ensure_ascii=True) + "\n"
    fd = open_append(dead_letter_path(directory), FILE_MODE)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
