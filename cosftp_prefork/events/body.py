"""What a receiver gets: the JSON body of an event, and its signature.

The body is made once, when the event happens, and sent as it is to every destination and on
every retry, so ``event_id`` names one event for good (receivers deduplicate on it) and the
signature, an HMAC-SHA256 of exactly these bytes, can be computed then: no secret is written
to the spool. It is ASCII JSON (``\\uXXXX`` escapes), whatever the names hold.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from typing import Any, Optional

SIGNATURE_HEADER = "X-Cosftp-Signature"
# Strings a client chose (a user name tried at login) are cut to this many characters.
MAX_CLIENT_TEXT = 256


def iso_time(when: float) -> str:
    """``2026-12-06T10:00:00.123Z``."""
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when))
    return f"{whole}.{int(when * 1000) % 1000:03d}Z"


def make_event(kind: str, user: Optional[str], client_address: str, path: Optional[str],
               **fields: Any) -> dict[str, Any]:
    """The body of a new event as a dict: its id, name and time, who, from where, on which
    path (None where the event has none: a login), then ``fields``."""
    return {"event_id": str(uuid.uuid4()), "event": kind, "time": iso_time(time.time()),
            "user": None if user is None else user[:MAX_CLIENT_TEXT],
            "client_address": client_address, "path": path, **fields}


def encode(event: dict[str, Any]) -> str:
    return json.dumps(event, ensure_ascii=True, separators=(",", ":"))


def sign(secret: str, body: bytes) -> str:
    """The value of ``X-Cosftp-Signature`` for ``body``: ``sha256=<hex HMAC>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
