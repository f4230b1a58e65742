"""Pre-upload and pre-delete checks: a service allows or denies an operation before it runs.

The worker POSTs the question (a JSON body like an event's, ``event`` = ``pre_upload`` or
``pre_delete``, signed the same way) and waits at most ``pre_hook_timeout``. The service
answers ``200`` with ``{"allow": true}`` or ``{"allow": false, "reason": "..."}``; the reason
becomes the FTP reply's text, made one short printable line. Anything else (no answer in
time, a refused connection, another status, another body) is a failure, which
``pre_hook_failure`` turns into a refusal (``closed``: 451, try later) or a permission
(``open``), logged and counted either way.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from .. import metrics
from ..config.hooks import PreCheck
from ..logfiles import escape_controls
from .body import encode, sign
from .http import PostError, make_pool, post

log = logging.getLogger(__name__)

MAX_REASON = 200
DEFAULT_REASON = "Refused by the server's policy"
CONNECTIONS = 16  # kept-alive connections per service and worker


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str = ""  # for the reply: one printable line, never empty when refused
    failed: bool = False  # the service did not answer as it should


def clean_reason(text: Any) -> str:
    """``text`` as one printable line of at most ``MAX_REASON`` characters, without a final
    period (the reply adds one); ``DEFAULT_REASON`` if nothing is left."""
    if not isinstance(text, str):
        return DEFAULT_REASON
    printable = "".join(ch if ch.isprintable() else " " for ch in text)
    line = " ".join(printable.split())[:MAX_REASON].rstrip(". ")
    return line or DEFAULT_REASON


class PreChecker:
    """A worker's client of the pre-check services (thread-safe)."""

    def __init__(self, timeout: int, fail_open: bool) -> None:
        self._timeout, self._fail_open = timeout, fail_open
        self._pool = make_pool(CONNECTIONS)

    def ask(self, check: PreCheck, hook: str, question: dict[str, Any]) -> Verdict:
        """Ask ``check`` about ``question`` (a body from ``body.make_event``); ``hook`` is
        ``upload`` or ``delete``."""
        body = encode(question).encode()
        try:
            answer = post(self._pool, check.url, body, sign(check.secret, body),
                          question["event"], question["event_id"], self._timeout)
        except PostError as exc:
            return self._failed(check, hook, f"no answer: {exc}")
        try:
            decided = json.loads(answer.data) if 200 <= answer.status < 300 else None
        except ValueError:
            decided = None
        if not isinstance(decided, dict) or not isinstance(decided.get("allow"), bool):
            return self._failed(check, hook, f"answered {answer.status} "
                                             f"{escape_controls(answer.reason[:80])} without "
                                             '{"allow": true|false}')
        if decided["allow"]:
            metrics.PRE_CHECKS.labels(hook, "allowed").inc()
            return Verdict(True)
        reason = clean_reason(decided.get("reason"))
        metrics.PRE_CHECKS.labels(hook, "denied").inc()
        log.info("pre-%s check %s denied path=%s: %s", hook, check.url, question.get("path"),
                 reason)
        return Verdict(False, reason)

    def _failed(self, check: PreCheck, hook: str, why: str) -> Verdict:
        outcome = "failed_open" if self._fail_open else "failed_closed"
        metrics.PRE_CHECKS.labels(hook, outcome).inc()
        log.warning("pre-%s check %s failed (%s); %s (pre_hook_failure)", hook, check.url, why,
                    "allowing" if self._fail_open else "refusing")
        if self._fail_open:
            return Verdict(True, failed=True)
        return Verdict(False, f"The {hook} check is unavailable; try again later", failed=True)

    def close(self) -> None:
        self._pool.clear()
