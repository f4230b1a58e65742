"""Uploads a killed worker left without a reply, kept so that a client's retry of one that
it cuts short is told apart (``ftp.retries``; docs/clients.md, lftp).

Each session row has an in-flight row (``layout.IN_FLIGHT_AT``): while its STOR from byte 0
has no final reply, its worker writes there, as each chunk arrives, the bytes received and
the CRC64s of its first bytes at every ``MARK_STEP`` of the first ``MARKS * MARK_STEP``
(plain stores into the mapping, no system call). When a worker dies (SIGKILL, the OOM
killer, the master's abort of a hung worker), the master copies its rows still in flight into
the kept table (:meth:`UploadTable.keep_uploads`), for ``KEEP_LOST_SECONDS`` at most, and
forgets the oldest when all ``KEPT_ROWS`` are taken. A STOR from byte 0 of the same account
and path, on any worker, whose data ends cleanly after ``n`` bytes, fewer than the kept
upload received, that are its first ``n`` bytes (``n`` a multiple of ``MARK_STEP`` within
the marks) takes the row (:meth:`UploadTable.take_kept`): it is refused, once.

The in-flight row is written by its session's thread alone (the bytes count after the marks
it covers, so that a count always has its marks) and read by the master only once the
writer is dead: no lock. The kept table is changed by the master (keep, expire) and the
workers (take) under a record lock on its bytes; its header's count of rows kept is read
without it, so that while nothing is kept (nearly always) an upload's end costs no lock.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Optional

from .layout import (
    DETAIL,
    DETAILS_AT,
    FILE_SIZE,
    IN_FLIGHT_AT,
    IN_FLIGHT_ROW,
    KEEP_LOST_SECONDS,
    KEPT_AT,
    KEPT_HEADER,
    KEPT_ROW,
    KEPT_ROWS,
    KEPT_ROWS_AT,
    MARK_STEP,
    MARKS,
    SESSION_ROWS,
    SESSION_WORDS,
    SESSIONS_AT,
)
from .mapped import MappedFile, unclip

_WORD = struct.Struct("<I")
_COUNT = struct.Struct("<Q")
_BYTES_AT = 8  # in an in-flight row: after its state and an unused word
_KEY_AT = 16
_MARKS_AT = 32
_FIGURES = IN_FLIGHT_ROW.size - _BYTES_AT  # bytes, key and marks: what a kept row keeps
_KEPT_FIGURES_AT = 16  # in a kept row: after its state, an unused word and when it was kept
_MARK = struct.Struct("<Q")
# The head of a kept row (state, unused, when it was kept) and of an in-flight row (state,
# unused, bytes received): what the scans read of each row.
_KEPT_HEAD = struct.Struct("<IId")
_IN_FLIGHT_HEAD = struct.Struct("<IIQ")
_FIGURES_OF = struct.Struct(f"<Q16s{MARKS}Q")


class InFlight(enum.IntEnum):
    """An in-flight row's state: IDLE -> RECEIVING (a STOR from byte 0 receives) -> IDLE
    (its final reply went out, or the master kept it when its worker died)."""

    IDLE = 0
    RECEIVING = 1


class Kept(enum.IntEnum):
    """A kept row's state: FREE -> KEPT (the master, as the worker died) -> FREE (a cut
    retry took it, it expired, or a full table dropped it as the oldest)."""

    FREE = 0
    KEPT = 1


@dataclass(frozen=True)
class KeptUpload:
    """An upload in flight on a worker that died, as the master kept it: the user its
    session showed (for the log: "" in its first second, before the worker's tick wrote it;
    the file name shown then may be an earlier transfer's, so it is not given), and the
    bytes it had received."""

    user: str
    nbytes: int


class InFlightRow:
    """The in-flight row of one session (its worker's session thread writes it alone)."""

    __slots__ = ("_at", "_map")

    def __init__(self, mapping, row: int) -> None:
        self._map = mapping
        self._at = IN_FLIGHT_AT + row * IN_FLIGHT_ROW.size

    def start(self, key: bytes) -> None:
        """A STOR from byte 0 of the upload named ``key`` (``records.upload_key``) starts
        receiving."""
        IN_FLIGHT_ROW.pack_into(self._map, self._at, InFlight.RECEIVING, 0, 0, key,
                                *([0] * MARKS))

    def mark(self, index: int, crc: int) -> None:
        """The CRC64 of the upload's first ``(index + 1) * MARK_STEP`` bytes."""
        _MARK.pack_into(self._map, self._at + _MARKS_AT + 8 * index, crc)

    def received(self, nbytes: int) -> None:
        """The upload has received ``nbytes`` (after the marks they cover were written)."""
        _COUNT.pack_into(self._map, self._at + _BYTES_AT, nbytes)

    def end(self) -> None:
        """The upload's final reply went out: nothing of it is to be kept."""
        _WORD.pack_into(self._map, self._at, InFlight.IDLE)


class UploadTable(MappedFile):
    """The in-flight rows of the state file and the uploads kept of dead workers."""

    def in_flight(self, row: int) -> InFlightRow:
        return InFlightRow(self._map, row)

    def _kept_locked(self):
        return self._locked(KEPT_AT, FILE_SIZE)

    def _kept_count(self) -> int:
        return KEPT_HEADER.unpack_from(self._map, KEPT_AT)[0]

    def _set_kept_count(self, count: int) -> None:
        KEPT_HEADER.pack_into(self._map, KEPT_AT, count, 0)

    def keep_uploads(self, pid: int, now: float) -> list[KeptUpload]:
        """Keep the uploads in flight on the session rows of ``pid``, a worker that died
        (the master, before it frees those rows); return them. The dead worker writes no
        more: its rows are read without a lock."""
        with memoryview(self._map) as whole, whole[SESSIONS_AT:SESSIONS_AT + SESSION_ROWS *
                                                   SESSION_WORDS * 4].cast("I") as rows:
            pids = rows[0::SESSION_WORDS].tolist()
        found = []
        for row in (r for r, owner in enumerate(pids) if owner == pid):
            at = IN_FLIGHT_AT + row * IN_FLIGHT_ROW.size
            state, _, nbytes = _IN_FLIGHT_HEAD.unpack_from(self._map, at)
            if state != InFlight.RECEIVING:
                continue
            _WORD.pack_into(self._map, at, InFlight.IDLE)
            if nbytes:
                found.append((row, bytes(self._map[at + _BYTES_AT:at + IN_FLIGHT_ROW.size])))
        if not found:
            return []
        kept = []
        with self._kept_locked():
            count = self._kept_count()
            for row, figures in found:
                slot, dropped = self._slot_for(now)
                KEPT_ROW.pack_into(self._map, KEPT_ROWS_AT + slot * KEPT_ROW.size, Kept.KEPT,
                                   0, now, figures)
                count += not dropped
                kept.append(KeptUpload(_shown_user(self._map, row),
                                       _COUNT.unpack_from(figures)[0]))
            self._set_kept_count(count)
        return kept

    def _slot_for(self, now: float) -> tuple[int, bool]:
        """A kept row to write (under the lock): a free one, else an expired one, else the
        oldest; and whether it held a row kept until now."""
        oldest, oldest_at = 0, float("inf")
        for slot in range(KEPT_ROWS):
            state, _, kept_at = _KEPT_HEAD.unpack_from(self._map,
                                                       KEPT_ROWS_AT + slot * KEPT_ROW.size)
            if state == Kept.FREE:
                return slot, False
            if now - kept_at > KEEP_LOST_SECONDS:
                return slot, True
            if kept_at < oldest_at:
                oldest, oldest_at = slot, kept_at
        return oldest, True

    def expire_kept(self, now: float) -> int:
        """Free the kept rows older than ``KEEP_LOST_SECONDS`` (the master's loop); return
        how many. Nothing kept (read without the lock): no lock taken."""
        if not self._kept_count():
            return 0
        expired = 0
        with self._kept_locked():
            for slot in range(KEPT_ROWS):
                at = KEPT_ROWS_AT + slot * KEPT_ROW.size
                state, _, kept_at = _KEPT_HEAD.unpack_from(self._map, at)
                if state == Kept.KEPT and now - kept_at > KEEP_LOST_SECONDS:
                    _WORD.pack_into(self._map, at, Kept.FREE)
                    expired += 1
            if expired:
                self._set_kept_count(self._kept_count() - expired)
        return expired

    def take_kept(self, key: bytes, length: int, crc: int, now: float) -> Optional[int]:
        """If an upload of ``key`` kept of a dead worker received more than ``length``
        bytes and its first ``length`` have the CRC64 ``crc`` (``length`` a multiple of
        ``MARK_STEP`` within the marks), free its row (the newest of several) and return the
        bytes it received; else None."""
        if not 0 < length <= MARKS * MARK_STEP or length % MARK_STEP or \
                not self._kept_count():
            return None
        mark = length // MARK_STEP - 1
        with self._kept_locked():
            best: Optional[tuple[float, int, int]] = None  # kept at, slot, bytes received
            at = KEPT_ROWS_AT
            while (at := self._map.find(key, at, FILE_SIZE)) >= 0:
                slot, offset = divmod(at - KEPT_ROWS_AT, KEPT_ROW.size)
                at += 1
                if offset != _KEPT_FIGURES_AT + _KEY_AT - _BYTES_AT:
                    continue
                row_at = KEPT_ROWS_AT + slot * KEPT_ROW.size
                state, _, kept_at = _KEPT_HEAD.unpack_from(self._map, row_at)
                nbytes, _, *marks = _FIGURES_OF.unpack_from(self._map,
                                                            row_at + _KEPT_FIGURES_AT)
                if state == Kept.KEPT and now - kept_at <= KEEP_LOST_SECONDS and \
                        nbytes > length and marks[mark] == crc and \
                        (best is None or kept_at > best[0]):
                    best = (kept_at, slot, nbytes)
            if best is None:
                return None
            _WORD.pack_into(self._map, KEPT_ROWS_AT + best[1] * KEPT_ROW.size, Kept.FREE)
            self._set_kept_count(self._kept_count() - 1)
            return best[2]


def _shown_user(mapping, row: int) -> str:
    """The user the session of ``row`` showed."""
    return unclip(DETAIL.unpack_from(mapping, DETAILS_AT + row * DETAIL.size)[0])
