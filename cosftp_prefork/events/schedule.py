"""The events process's plan: which deliveries to start now, and what a result changes.

**Order per file.** Each event names the objects it is about (``keys``: ``bucket/key``; a
rename names both). A delivery to a destination waits while an earlier event not yet
delivered *to that destination* is about the same object, or one inside or around it (a
directory and its files): an upload reaches a receiver before the rename of its file, and
that before the delete of the new name, whatever the retries. Events about other objects,
and events about none (logins), go on meanwhile: one file its receiver keeps refusing
holds up only that file.

**Back-off.** A receiver that is unwell (``attempt.UNAVAILABLE``: down, slow, 5xx) backs
off as a whole, 0.5 s doubling to 10 s (a receiver down for an hour gets a probe every 10 s,
and its events flow within 10 s of its return), then gets one delivery as a probe; the first
success lets it take ``PER_RECEIVER`` at once again. An event a receiver refuses otherwise (4xx, a
command's non-zero exit) backs off alone, with the same steps. An event still not delivered
``hook_retry_max_age`` seconds after it was spooled is given up (dead-lettered) at its next
failure, or at once while its receiver is backing off.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .attempt import DELIVERED, UNAVAILABLE, Outcome

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 10.0
PER_RECEIVER = 4  # deliveries under way at once to one healthy receiver
SENT, RETRY, GIVEN_UP = "sent", "retry", "given_up"


def backoff(failures: int) -> float:
    return min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(0, failures - 1))


def _ancestors(key: str) -> Iterator[str]:
    """``b/x/y`` -> ``b/x``, ``b``."""
    while "/" in key:
        key = key.rsplit("/", 1)[0]
        yield key


class _Keys:
    """The objects earlier undelivered events are about, for one destination."""

    def __init__(self) -> None:
        self._exact: set[str] = set()
        self._inside: set[str] = set()  # every directory holding one of them

    def conflicts(self, key: str) -> bool:
        return key in self._exact or key in self._inside or \
            any(up in self._exact for up in _ancestors(key))

    def add(self, key: str) -> None:
        self._exact.add(key)
        self._inside.update(_ancestors(key))


@dataclass
class Delivery:
    """One event to one destination."""

    spec: dict[str, Any]
    attempts: int = 0
    next_at: float = 0.0
    done: bool = False  # delivered, given up, or dropped
    running: bool = False
    last_error: str = ""

    @property
    def receiver(self) -> str:
        return self.spec["id"]


@dataclass
class Event:
    record: dict[str, Any]
    batch: str
    deliveries: list[Delivery] = field(default_factory=list)

    @property
    def seq(self) -> int:
        return self.record["seq"]

    @property
    def keys(self) -> list[str]:
        return self.record.get("keys", [])

    @property
    def spooled(self) -> float:
        return float(self.record.get("at", 0.0))

    @property
    def done(self) -> bool:
        return all(delivery.done for delivery in self.deliveries)


COMPACT_AFTER = 64  # done deliveries a receiver's queue keeps before it is rebuilt


@dataclass
class Receiver:
    """One destination: its back-off, and its deliveries not done yet, in event order."""

    failures: int = 0  # unavailable in a row
    resume_at: float = 0.0
    running: int = 0
    queue: list[tuple[Event, Delivery]] = field(default_factory=list)
    finished: int = 0  # done deliveries still in ``queue``

    def room(self, now: float) -> int:
        if not self.failures:
            return PER_RECEIVER - self.running
        return 1 - self.running if now >= self.resume_at else 0

    def backing_off(self, now: float) -> bool:
        return bool(self.failures) and now < self.resume_at

    def enqueue(self, event: Event, delivery: Delivery) -> None:
        """Add a delivery; batches are loaded in number order (see ``deliver``)."""
        self.queue.append((event, delivery))

    def one_done(self) -> None:
        self.finished += 1
        if self.finished > COMPACT_AFTER and self.finished * 2 > len(self.queue):
            self.queue = [item for item in self.queue if not item[1].done]
            self.finished = 0

    def due(self, now: float, starting: list[tuple[Event, Delivery]]) -> float:
        """Append the deliveries to start now (marked running) to ``starting``; return
        when a delivery that waits for its own back-off may start (``inf``: none)."""
        room, soon = self.room(now), float("inf")
        earlier = _Keys()
        for event, delivery in self.queue:
            if room <= 0:
                break
            if delivery.done:
                continue
            free = not any(earlier.conflicts(key) for key in event.keys)
            for key in event.keys:
                earlier.add(key)
            if not free or delivery.running:
                continue
            if delivery.next_at > now:
                soon = min(soon, delivery.next_at)
                continue
            delivery.running = True
            self.running += 1
            room -= 1
            starting.append((event, delivery))
        return soon


class Schedule:
    """The events loaded from the spool and the state of their deliveries, per receiver."""

    def __init__(self, max_age: float) -> None:
        self.max_age = max_age
        self.batches: dict[str, list[Event]] = {}
        self.receivers: dict[str, Receiver] = defaultdict(Receiver)
        self.loaded = 0  # events in memory
        self._left: dict[str, int] = {}  # events not done, per batch
        self._completed: list[str] = []

    def add(self, batch: str, records: list[dict[str, Any]]) -> None:
        events = [Event(record, batch, [Delivery(spec) for spec in record["to"]])
                  for record in records]
        self.batches[batch] = events
        self.loaded += len(events)
        self._left[batch] = len(events)
        for event in events:
            for delivery in event.deliveries:
                self.receivers[delivery.receiver].enqueue(event, delivery)
            if not event.deliveries:
                self._event_done(event)

    def due(self, now: float) -> tuple[list[tuple[Event, Delivery]], float]:
        """The deliveries to start now (marked running), and when one may next become due
        without a delivery ending meanwhile (``now`` + 1 at the latest)."""
        starting: list[tuple[Event, Delivery]] = []
        soon = now + 1.0
        for receiver in self.receivers.values():
            if receiver.backing_off(now):
                soon = min(soon, receiver.resume_at)
            elif receiver.queue:
                soon = min(soon, receiver.due(now, starting))
        return starting, soon

    def finished(self, event: Event, delivery: Delivery, outcome: Outcome,
                 now: float) -> str:
        """Record how an attempt ended; return SENT, RETRY or GIVEN_UP (too old: to be
        dead-lettered, then ``settle``)."""
        delivery.running = False
        receiver = self.receivers[delivery.receiver]
        receiver.running -= 1
        if outcome.result == DELIVERED:
            receiver.failures = 0
            self._delivery_done(event, delivery)
            return SENT
        delivery.attempts += 1
        delivery.last_error = outcome.detail
        if outcome.result == UNAVAILABLE and now >= receiver.resume_at:
            # The deliveries under way when it failed fail too: one outage, one step.
            receiver.failures += 1
            receiver.resume_at = now + backoff(receiver.failures)
        else:
            delivery.next_at = now + backoff(delivery.attempts)
        return GIVEN_UP if now - event.spooled > self.max_age else RETRY

    def expired(self, now: float) -> list[tuple[Event, Delivery]]:
        """Deliveries too old to wait for a receiver that is backing off."""
        given_up = []
        for receiver in self.receivers.values():
            if not receiver.failures:
                continue
            for event, delivery in receiver.queue:
                if now - event.spooled <= self.max_age:
                    break  # the later ones are younger
                if not delivery.done and not delivery.running and delivery.next_at <= now:
                    given_up.append((event, delivery))
        return given_up

    def settle(self, event: Event, delivery: Delivery) -> None:
        """A delivery given up on (GIVEN_UP, ``expired``) is in the dead-letter file now."""
        if not delivery.done:
            self._delivery_done(event, delivery)

    def completed(self) -> list[str]:
        """Batches whose every event is done: forgotten here, to be deleted."""
        names, self._completed = self._completed, []
        for name in names:
            self.loaded -= len(self.batches.pop(name))
            del self._left[name]
        return names

    def forget(self, batch: str) -> int:
        """Drop a batch (deleted to make room); return its events not done yet."""
        events = self.batches.pop(batch, [])
        self.loaded -= len(events)
        self._left.pop(batch, None)
        if batch in self._completed:
            self._completed.remove(batch)
        undone = 0
        for event in events:
            undone += not event.done
            for delivery in event.deliveries:
                if not delivery.done:
                    delivery.done = True
                    self.receivers[delivery.receiver].one_done()
        return undone

    def _delivery_done(self, event: Event, delivery: Delivery) -> None:
        delivery.done = True
        self.receivers[delivery.receiver].one_done()
        if event.done:
            self._event_done(event)

    def _event_done(self, event: Event) -> None:
        if event.batch in self._left:
            self._left[event.batch] -= 1
            if not self._left[event.batch]:
                self._completed.append(event.batch)
