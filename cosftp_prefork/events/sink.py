"""A worker's side of events: route an event, put it in the spool, wait until it is on disk.

What a full spool does (``event_spool_full``):

* ``refuse``: a command whose event some destination takes is refused with 451 before it
  acts (``refuses``), so every operation a client was told succeeded has its event kept; the
  events of operations let in before the spool filled are still written (a few blocks over
  the bound: one per session at most). Events of what cannot be refused beforehand (logins,
  failed logins, bans, downloads, failed uploads) are dropped while the spool is full,
  counted and logged.
* ``drop_oldest``: every event is written; the events process deletes the oldest batches to
  bring the spool back under its bound, counted and logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

from .. import metrics
from ..config.hooks import HTTP, HooksConfig, HookTarget
from .body import encode, sign
from .commit import GroupCommit
from .route import select
from .spool import BatchWriter, SpoolError, SpoolState, encode_record, prepare_directory

log = logging.getLogger(__name__)

REFUSE = "refuse"


def destination(target: HookTarget, body: str) -> dict[str, Any]:
    """How the events process reaches ``target`` with ``body``: all it needs, signature
    included, so that it reads no configuration (and a reload cannot reroute an event)."""
    spec: dict[str, Any] = {"id": target.ident, "kind": target.kind, "scope": target.scope,
                            "timeout": target.timeout}
    if target.kind == HTTP:
        spec.update(url=target.target, signature=sign(target.secret, body.encode()))
    else:
        spec["argv"] = list(target.argv)
    return spec


class EventSink:
    """The events of one worker, from any of its session threads."""

    def __init__(self, hooks: HooksConfig, node: str) -> None:
        prepare_directory(hooks.spool_dir)
        self._hooks, self._node = hooks, node
        self._state = SpoolState(hooks.spool_dir)
        self._writer = BatchWriter(self._state)
        self._commit = GroupCommit(self._writer)

    def route(self, kind: str, paths: Iterable[str],
              account: Sequence[HookTarget]) -> list[HookTarget]:
        """The destinations (the server's, then ``account``'s) that take ``kind`` on
        ``paths``."""
        return select(kind, paths, self._hooks.server.targets, account)

    def full(self) -> bool:
        return self._state.usage().bytes >= self._hooks.spool_max

    def refuses(self, targets: Sequence[HookTarget]) -> bool:
        """True if a command whose event goes to ``targets`` must be refused now: the spool
        is full and ``event_spool_full = refuse``."""
        refused = bool(targets) and self._hooks.spool_full == REFUSE and self.full()
        if refused:
            metrics.EVENT_REFUSALS.inc()
        return refused

    def emit(self, event: dict[str, Any], targets: Sequence[HookTarget], keys: Sequence[str],
             admitted: bool = False) -> None:
        """Write ``event`` for ``targets`` and return once it is on disk. ``keys`` name the
        objects it is about (its place in the per-file order); ``admitted``: its command was
        let in by ``refuses``, so it is written even over the bound. Raises ``SpoolError``
        (logged here) if it cannot be written."""
        if not targets:
            return
        kind = event["event"]
        if not admitted and self._hooks.spool_full == REFUSE and self.full():
            metrics.EVENTS_DROPPED.labels("spool_full").inc()
            log.error("event %s (%s) dropped: the event spool %s is full "
                      "(event_spool_max_mib)", event["event_id"], kind, self._hooks.spool_dir)
            return
        started = time.monotonic()
        body = encode({**event, "node": self._node})
        record = {"event": kind, "event_id": event["event_id"], "at": time.time(),
                  "body": body, "keys": list(keys), "to": [destination(t, body) for t in targets]}
        try:
            self._commit.append(encode_record(record))
        except SpoolError:
            metrics.EVENTS_DROPPED.labels("write_failed").inc()
            log.error("event %s (%s) lost: it could not be written to the spool",
                      event["event_id"], kind)
            raise
        metrics.EVENT_SPOOL_WAIT.observe(time.monotonic() - started)
        metrics.EVENTS_QUEUED.labels(kind).inc()

    def close(self) -> None:
        self._commit.close()
        self._writer.close()
        self._state.close()
