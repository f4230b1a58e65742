"""A worker's side of the uploads a killed worker leaves without a reply
(``scoreboard.uploads``): what one session's STOR from byte 0 has received, written to its
in-flight row as each chunk arrives, and the look-up of a kept upload that a new STOR
repeats the first bytes of (``ftp.retries`` decides what that means)."""

from __future__ import annotations

import time
from typing import Optional

from ..cos.checksum import PrefixCrcs
from .scoreboard import MARK_STEP, MARKS, InFlightRow, SharedState, upload_key


class UploadWatch:
    """The in-flight row of one session (``ftp.retries.UploadWatch``); used by that
    session's thread alone."""

    def __init__(self, state: SharedState, row: int) -> None:
        self._state = state
        self._row: InFlightRow = state.in_flight(row)
        self._length = 0  # bytes written to the row so far
        self._marks = 0  # marks written to the row so far

    def started(self, user: str, path: str) -> None:
        """``user``'s STOR from byte 0 to ``path`` receives its first bytes."""
        self._row.start(upload_key(user, path))
        self._length = self._marks = 0

    def received(self, prefix: PrefixCrcs) -> None:
        """The upload's bytes so far are those of ``prefix``: write what is new (its marks
        first, then the count; ``PrefixCrcs`` keeps a mark at every 4 KiB of its first
        8 MiB, so at every ``MARK_STEP`` of the first ``MARKS``)."""
        length = prefix.length
        if length == self._length:
            return
        while self._marks < MARKS and (self._marks + 1) * MARK_STEP <= length:
            self._row.mark(self._marks, prefix.at((self._marks + 1) * MARK_STEP))
            self._marks += 1
        self._row.received(length)
        self._length = length

    def ended(self) -> None:
        """The upload's final reply went out."""
        self._row.end()

    def lost_upload(self, user: str, path: str, prefix: PrefixCrcs) -> Optional[int]:
        """The bytes a dead worker's upload of ``path`` by ``user`` had received, if it
        received more than ``prefix`` holds and began with them (its record is then taken:
        once); else None."""
        length = prefix.length
        crc = prefix.at(length)
        if crc is None:
            return None
        return self._state.take_kept(upload_key(user, path), length, crc, time.monotonic())
