"""The events process: delivers what the workers leave in the spool.

A child of the master like the metrics exporter: forked with signals held, restarted if it
dies, titled ``cosftp: events``; the master only supervises it and never loads an HTTP client.
It is the only reader of the spool and the only one that deletes from it.

Its loop: wait for a wake-up (a worker wrote a batch; a delivery ended; a retry is due; or a
second passed), look at the spool, load the oldest batches (``WINDOW`` events at most in
memory), start the deliveries ``schedule.Schedule`` says are due on a pool of threads,
record their results, write the given-up ones to the dead-letter file, delete the batches
that are done. A directory listing may miss a file renamed in while it runs, yet show one
renamed in after it, with a higher number (the upload of a file, then its rename): so the
batches are loaded in number order only up to the first one this look is the first to see.
Every batch numbered below one an earlier look saw was in place before this look started,
so none can turn up later below those loaded.

Nothing is lost when it dies: a batch is deleted only once every event in it reached every
destination (or was given up on), so a new events process sends again what was under way
(receivers deduplicate on ``event_id``).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import select
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from .. import metrics
from ..config.hooks import HooksConfig
from .attempt import UNAVAILABLE, Outcome, attempt
from .deadletter import bury, dead_letter_path
from .http import make_pool
from .schedule import GIVEN_UP, PER_RECEIVER, RETRY, SENT, Delivery, Event, Schedule
from .spool import (
    Batch,
    SpoolCorrupt,
    SpoolState,
    Usage,
    bind_wake,
    leftover_temps,
    list_batches,
    prepare_directory,
    read_batch,
)

log = logging.getLogger(__name__)

THREADS = 16  # deliveries under way at once, all receivers together
WINDOW = 1000  # events in memory at once
SCAN_EVERY = 1.0  # seconds between looks at the spool when nothing wakes the process
SCAN_SOON = 0.05  # after a wake-up, or to see new batches a second time, at the soonest
LISTING_SHARE = 4  # a look comes at least this many times the last listing's time later:
# a spool of 100,000 batches (a receiver down for an hour) is listed a few times a second
RECOUNT_EVERY = 30.0  # seconds between recounts of the spool's size under its lock
TEMP_GRACE = 60.0  # a .tmp file this old is removed (a batch is written in milliseconds)
BURY_RETRY = 30.0  # seconds before a dead-letter write that failed is tried again


class Deliverer:
    """The spool of ``hooks`` and the deliveries of its events."""

    def __init__(self, hooks: HooksConfig) -> None:
        self.hooks = hooks
        self.directory = hooks.spool_dir
        prepare_directory(self.directory)
        self.state = SpoolState(self.directory)
        self.wake = bind_wake(self.directory)
        self._ended_r, self._ended_w = socket.socketpair()
        for sock in (self._ended_r, self._ended_w):
            sock.setblocking(False)
        self._ended: queue.SimpleQueue[tuple[Event, Delivery, Outcome]] = queue.SimpleQueue()
        self.threads = ThreadPoolExecutor(THREADS, thread_name_prefix="deliver")
        self.http = make_pool(PER_RECEIVER)
        self.schedule = Schedule(hooks.retry_max_age)
        self._seen: set[str] = set()  # batches the last look found
        self._listed: list[Batch] = []
        self._next_scan = self._next_recount = 0.0
        self._soon = SCAN_SOON  # how soon a look may follow another (see LISTING_SHARE)

    @property
    def next_look(self) -> float:
        """When (``time.monotonic()``) the spool is listed next."""
        return self._next_scan

    def run(self, running: Callable[[], bool]) -> None:
        """Deliver until ``running()`` says no."""
        log.info("events process %d delivering from %s", os.getpid(), self.directory)
        wake_at = 0.0
        while running():
            self._wait(wake_at - time.time())
            self._collect(time.time())
            if time.monotonic() >= self._next_scan:
                self.look()
            now = time.time()
            starting, wake_at = self.schedule.due(now)
            for event, delivery in starting:
                self.threads.submit(self._attempt, event, delivery)
            done = self.schedule.completed()
            for name in done:
                self.state.remove(name)
            if done:  # room in the window: load what waits behind
                self._next_scan = min(self._next_scan, time.monotonic() + self._soon)
        self.threads.shutdown(wait=False, cancel_futures=True)

    def _wait(self, timeout: float) -> None:
        """Sleep until a wake-up, a delivery's end or ``timeout``; a worker's wake-up asks
        for a look at the spool soon."""
        timeout = min(timeout, self._next_scan - time.monotonic(), SCAN_EVERY)
        readable, _, _ = select.select([self.wake, self._ended_r], [], [], max(0.0, timeout))
        if self.wake in readable and self.schedule.loaded < WINDOW:
            self._next_scan = min(self._next_scan, time.monotonic() + self._soon)
        for sock in readable:
            with contextlib.suppress(BlockingIOError):
                while sock.recv(4096):
                    pass

    def _attempt(self, event: Event, delivery: Delivery) -> None:
        """On a pool thread: one try; the result goes back to the loop."""
        try:
            outcome = attempt(delivery.spec, event.record, self.http)
        except Exception as exc:  # a bug must not wedge the event: it is retried
            log.exception("delivery of event %s failed", event.record["event_id"])
            outcome = Outcome(UNAVAILABLE, f"internal error: {exc!r}")
        self._ended.put((event, delivery, outcome))
        with contextlib.suppress(BlockingIOError):
            self._ended_w.send(b"!")

    def _collect(self, now: float) -> None:
        while True:
            try:
                event, delivery, outcome = self._ended.get_nowait()
            except queue.Empty:
                return
            result = self.schedule.finished(event, delivery, outcome, now)
            if event.batch not in self.schedule.batches:
                continue  # dropped to make room meanwhile
            kind = delivery.spec["kind"]
            if result == SENT:
                metrics.EVENTS_SENT.labels(kind).inc()
            elif result == RETRY:
                metrics.EVENTS_RETRIED.labels(kind).inc()
                log.warning("event %s (%s) to %s: %s; trying again", event.record["event_id"],
                            event.record["event"], delivery.receiver, outcome.detail)
            elif result == GIVEN_UP:
                self._bury(event, delivery, now)

    def _bury(self, event: Event, delivery: Delivery, now: float) -> None:
        """Write a given-up delivery to the dead-letter file (it stays in the spool, to be
        tried again, if that file cannot be written)."""
        record = event.record
        try:
            bury(self.directory, record, delivery.spec, delivery.attempts,
                 delivery.last_error, now)
        except OSError as exc:
            delivery.next_at = now + BURY_RETRY
            log.critical("event %s (%s) to %s: given up, but the dead-letter file cannot be "
                         "written (%s); kept in the spool", record["event_id"],
                         record["event"], delivery.receiver, exc)
            return
        self.schedule.settle(event, delivery)
        metrics.EVENTS_DEAD_LETTERED.labels(delivery.spec["kind"]).inc()
        log.error("event %s (%s) to %s: given up after %d attempts over %.0fs "
                  "(hook_retry_max_age=%d); last error: %s; kept in %s", record["event_id"],
                  record["event"], delivery.receiver, delivery.attempts, now - event.spooled,
                  self.hooks.retry_max_age, delivery.last_error or "none (never tried)",
                  dead_letter_path(self.directory))

    def look(self) -> None:
        """List the spool (recount it now and then), make room under ``drop_oldest``, load
        the batches in number order up to the first this look is the first to see, and
        give up the deliveries too old to wait."""
        started = time.monotonic()
        if started >= self._next_recount:
            self._next_recount = started + RECOUNT_EVERY
            self._remove_leftovers()
            listed, usage = self.state.recount()
        else:
            listed, usage = list_batches(self.directory), self.state.usage()
        self._soon = max(SCAN_SOON, LISTING_SHARE * (time.monotonic() - started))
        seen_before, self._seen = self._seen, {batch.name for batch in listed}
        if self.hooks.spool_full == "drop_oldest":
            listed = self._make_room(listed, usage)
        metrics.EVENT_SPOOL_BYTES.set(usage.bytes)
        metrics.EVENT_SPOOL_EVENTS.set(sum(b.last - b.first + 1 for b in listed))
        settled = list(itertools.takewhile(lambda b: b.name in seen_before, listed))
        room = self._load(settled)
        # New batches are loaded at the next look, if the window has room for them then.
        soon = room and len(settled) < len(listed)
        self._next_scan = time.monotonic() + (self._soon if soon else SCAN_EVERY)
        now = time.time()
        for event, delivery in self.schedule.expired(now):
            self._bury(event, delivery, now)

    def _load(self, batches: list[Batch]) -> bool:
        """Load ``batches`` until ``WINDOW`` events are in memory; False if it filled."""
        for batch in batches:
            if self.schedule.loaded >= WINDOW:
                return False
            if batch.name in self.schedule.batches:
                continue
            try:
                records = read_batch(self.directory, batch)
            except FileNotFoundError:
                continue
            except (SpoolCorrupt, OSError) as exc:
                self._set_aside(batch, exc)
                continue
            self.schedule.add(batch.name, records)
        return self.schedule.loaded < WINDOW

    def _set_aside(self, batch: Batch, problem: Exception) -> None:
        """Move a batch that cannot be read out of the way (``.corrupt``), for a look."""
        path = os.path.join(self.directory, batch.name)
        with contextlib.suppress(OSError):
            os.rename(path, path + ".corrupt")
        self.state.recount()
        metrics.EVENTS_DROPPED.labels("corrupt").inc(batch.last - batch.first + 1)
        log.critical("event spool: %s cannot be read (%s); moved to %s.corrupt", batch.name,
                     problem, batch.name)

    def _make_room(self, listed: list[Batch], usage: Usage) -> list[Batch]:
        """Delete the oldest batches until the spool fits in ``event_spool_max_mib``; return
        those left."""
        dropped, first = 0, None
        while listed and usage.bytes > self.hooks.spool_max:
            oldest = listed.pop(0)
            first = oldest.first if first is None else first
            count = self.schedule.forget(oldest.name) if oldest.name in self.schedule.batches \
                else oldest.last - oldest.first + 1
            usage.bytes -= self.state.remove(oldest.name)
            dropped += count
        if dropped:
            metrics.EVENTS_DROPPED.labels("spool_full").inc(dropped)
            log.error("event spool full (event_spool_max_mib=%d): dropped the %d oldest "
                      "events not yet delivered (from number %d on); event_spool_full = "
                      "drop_oldest", self.hooks.spool_max >> 20, dropped, first)
        return listed

    def _remove_leftovers(self) -> None:
        """Remove ``.tmp`` files older than ``TEMP_GRACE``: left by a writer that died
        before its rename, their events never acknowledged to a client. A writer still
        alive but stuck that long finds its file gone at the rename and answers 451: its
        client is not told either."""
        for name in leftover_temps(self.directory):
            path = os.path.join(self.directory, name)
            with contextlib.suppress(FileNotFoundError):
                if time.time() - os.lstat(path).st_mtime > TEMP_GRACE:
                    os.unlink(path)
                    log.warning("event spool: removed %s, left by a writer that died or "
                                "stalled", name)

    def close(self) -> None:
        self.wake.close()
        self._ended_r.close()
        self._ended_w.close()
        self.state.close()
