"""One try at delivering one event to one destination, and what its result means.

=============  ==================================================  ===================
result         HTTP receiver                                       command
=============  ==================================================  ===================
delivered      2xx                                                 exit status 0
failed         any other status (this event is retried later)      another exit status
unavailable    no connection, no answer in time, 5xx, 408, 429     cannot start; timeout
               (the receiver is unwell: all its events wait)
=============  ==================================================  ===================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import urllib3

from ..config.hooks import HTTP
from . import command
from .http import PostError, post

DELIVERED, FAILED, UNAVAILABLE = "delivered", "failed", "unavailable"
_UNWELL = frozenset({408, 429})


@dataclass(frozen=True)
class Outcome:
    result: str
    detail: str = ""  # why it failed, for the log


def attempt(destination: dict[str, Any], record: dict[str, Any],
            pool: urllib3.PoolManager) -> Outcome:
    """Deliver ``record``'s body to ``destination`` (a spec from ``sink.destination``)."""
    body, timeout = record["body"], float(destination["timeout"])
    if destination["kind"] == HTTP:
        return _post(destination, record, pool, timeout)
    try:
        ran = command.run(destination["argv"], body, timeout)
    except OSError as exc:
        return Outcome(UNAVAILABLE, f"cannot run {destination['argv'][0]}: {exc}")
    if ran.status == 0:
        return Outcome(DELIVERED)
    return Outcome(UNAVAILABLE if ran.status is None else FAILED,
                   command.describe(ran, timeout))


def _post(destination: dict[str, Any], record: dict[str, Any], pool: urllib3.PoolManager,
          timeout: float) -> Outcome:
    try:
        answer = post(pool, destination["url"], record["body"].encode(),
                      destination["signature"], record["event"], record["event_id"], timeout)
    except PostError as exc:
        return Outcome(UNAVAILABLE, str(exc))
    if 200 <= answer.status < 300:
        return Outcome(DELIVERED)
    detail = f"answered {answer.status} {answer.reason[:80]}".rstrip()
    unwell = answer.status >= 500 or answer.status in _UNWELL
    return Outcome(UNAVAILABLE if unwell else FAILED, detail)
