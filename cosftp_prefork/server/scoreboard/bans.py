"""The table of failed logins and bans per client address, shared by every worker (and
``cosftpctl ban``/``unban``, the admin API), and the bans file that keeps the bans across a
stop and a start (``<pid file>.bans``, written by the master)."""

from __future__ import annotations

import json
import os
import struct
import time
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Optional

from ...safefiles import open_fd, replace_file
from .layout import BAN_HEADER_WORDS, BAN_WORDS, BANS_AT, DETAILS_AT
from .mapped import MappedFile
from .records import Address, BanRow, address_key, address_text

# What a row in use holds (its first word; 0: free): this node's own failed logins and
# bans (earned here, made through its admin API, restored from its bans file), or a copy of
# a ban made elsewhere in the cluster.
OWN, COPY = 1, 2


class BanTable(MappedFile):
    """The ban table of the state file: at most ``BAN_ROWS`` addresses, each with its failed
    logins in the current window and the end of its ban, and a counter of the table's
    changes that the workers and the master watch."""

    def _bans_locked(self):
        return self._locked(BANS_AT, DETAILS_AT)

    def ban_epoch(self) -> int:
        """How many times the ban table changed so far: bans started and lifted (read
        without the lock: a change is what counts)."""
        return struct.unpack_from("<I", self._map, BANS_AT)[0]

    def saved_ban_epoch(self) -> int:
        """The :meth:`ban_epoch` the master last saved to the bans file."""
        return struct.unpack_from("<I", self._map, BANS_AT + 4)[0]

    def dropped_bans(self) -> int:
        """How many running bans were dropped so far to make room for another address in a
        full table (read without the lock: a count)."""
        return struct.unpack_from("<I", self._map, BANS_AT + 8)[0]

    def note_bans_saved(self, epoch: int) -> None:
        """The master saved the bans of ``epoch`` (it alone writes this word)."""
        struct.pack_into("<I", self._map, BANS_AT + 4, epoch)

    def unbans_applied(self) -> tuple[int, str]:
        """The number of the last of the cluster's unbans (its Redis's counter) by which
        this table's rows were judged (0: none), and the epoch of that counter ('': none):
        a worker starting brings only those after it."""
        with self._bans_locked() as words:
            number, low, high = words[3:6]
        return number, _epoch_text(low | high << 32)

    def unbans_mark(self) -> tuple[int, int, int]:
        """The words of :meth:`unbans_applied` read without the lock: a change is what
        counts (the master saves the bans file when they move)."""
        return struct.unpack_from("<III", self._map, BANS_AT + 12)

    def note_unbans_applied(self, number: int, epoch: str, restarted: bool = False) -> None:
        """A worker judged the table's rows by the unbans up to ``number`` of the counter
        of ``epoch``: keep the highest so far (workers beat one after another, one may lag
        behind), or ``number`` itself if ``restarted`` or of another epoch (Redis's counter
        started again: lower numbers are newer unbans; the master restoring its bans file
        says so too)."""
        value = int(epoch, 16) if epoch else 0
        with self._bans_locked() as words:
            same = (words[4] | words[5] << 32) == value
            words[3] = max(words[3], number) if same and not restarted else number
            words[4], words[5] = value & 0xFFFFFFFF, value >> 32

    def ban_rows(self) -> list[BanRow]:
        """Every address the ban table holds (read without the lock: a display)."""
        with memoryview(self._map) as whole, \
                whole[BANS_AT:DETAILS_AT].cast("I") as words:
            flat = words[BAN_HEADER_WORDS:].tolist()
        return [_ban_row_of(flat, at) for at in range(0, len(flat), BAN_WORDS) if flat[at]]

    def lift(self, which: Callable[[BanRow], bool]) -> list[BanRow]:
        """Forget the ban and the failed logins of every address for which ``which`` is
        true; return what was forgotten. Moves the epoch, so each worker reads its copy of
        the table again (at its next accept) and the master saves the bans file."""
        lifted = []
        with self._bans_locked() as words:
            flat = words[BAN_HEADER_WORDS:].tolist()
            for at in range(0, len(flat), BAN_WORDS):
                row = _ban_row_of(flat, at) if flat[at] else None
                if row is not None and which(row):
                    start = BAN_HEADER_WORDS + at
                    words[start:start + BAN_WORDS] = array("I", bytes(BAN_WORDS * 4))
                    lifted.append(row)
            if lifted:
                words[0] += 1
        return lifted

    def is_banned(self, ip: str, now: float) -> bool:
        """True while ``ip`` is serving a ban."""
        wanted = address_key(ip)
        return any(key == wanted for key, _ in self._active_bans(now))

    def bans(self, now: float) -> list[tuple[str, int]]:
        """``(address, banned until)`` of every ban still running."""
        return [(address_text(key), until) for key, until in self._active_bans(now)]

    def banned_keys(self, now: float) -> set[Address]:
        return {key for key, _ in self._active_bans(now)}

    def banned(self, now: float) -> list[tuple[Address, int]]:
        """``(address key, banned until)`` of every ban still running."""
        return self._active_bans(now)

    def _active_bans(self, now: float) -> list[tuple[Address, int]]:
        return [(key, until) for key, until, _ in self._active_rows(now)]

    def _active_rows(self, now: float) -> list[tuple[Address, int, int]]:
        """``(address key, banned until, OWN or COPY)`` of every ban still running."""
        with self._bans_locked() as words:
            flat = words[BAN_HEADER_WORDS:].tolist()
        return [(tuple(flat[at + 1:at + 5]), flat[at + 7], flat[at])
                for at in range(0, len(flat), BAN_WORDS)
                if flat[at] and flat[at + 7] > now]

    def record_failure(self, ip: str, now: float, limit: int, window: int, ban: int) -> bool:
        """Count a failed login from ``ip``; return True if that earns it a ban."""
        wanted, stamp = address_key(ip), int(now)
        with self._bans_locked() as words:
            flat = words[BAN_HEADER_WORDS:].tolist()
            at = self._take_row(words, flat, wanted, now, OWN)
            ours = bool(flat[at]) and tuple(flat[at + 1:at + 5]) == wanted
            failures, started, previous_ban = flat[at + 5:at + 8] if ours else (0, stamp, 0)
            if stamp - started > window:
                failures, started = 0, stamp
            failures += 1
            banned = failures >= limit
            until = stamp + ban if banned else previous_ban
            kind = flat[at] if ours and not banned else OWN
            self._write_ban(words, at, wanted, failures, started, until, kind)
            if banned and previous_ban <= stamp:
                words[0] += 1
            return banned

    def ban(self, ip: str, until: int, started: int = 0, copy: bool = False) -> bool:
        """Ban ``ip`` until ``until`` (the admin API; ``copy``: a ban the cluster holds,
        made elsewhere), keeping the failed logins its row counts; moves the epoch as a ban
        earned by failed logins does. A row that counts none keeps ``started`` (when the
        admin API made the ban) where a window of failures starts. Return False if a full
        table had no room for a copy (``_ban_row``: every row holds a running ban of this
        node's own); it then holds on this node through Redis only."""
        key, now = address_key(ip), time.time()
        with self._bans_locked() as words:
            flat = words[BAN_HEADER_WORDS:].tolist()
            at = self._take_row(words, flat, key, now, COPY if copy else OWN)
            if at is None:
                return False
            same = bool(flat[at]) and tuple(flat[at + 1:at + 5]) == key
            ours = same and flat[at + 5] > 0
            failures, since = flat[at + 5:at + 7] if ours else (0, started)
            # a copy of a ban does not make this node's own running ban of it a copy
            own = not copy or (same and flat[at] == OWN and flat[at + 7] > now)
            self._write_ban(words, at, key, failures, since, until, OWN if own else COPY)
            words[0] += 1
        return True

    def saved_bans(self, now: float) -> tuple[list[tuple[str, int]], set[str]]:
        """What the bans file keeps: ``(address, banned until)`` of every ban still running,
        and the addresses among them whose row is a copy of another node's ban."""
        bans, copies = [], set()
        for key, until, kind in self._active_rows(now):
            bans.append((address_text(key), until))
            if kind == COPY:
                copies.add(address_text(key))
        return bans, copies

    def restore_bans(self, bans: Iterable[tuple[str, int]], now: float,
                     copies: Iterable[str] = ()) -> int:
        """Put saved bans back (master, at start), those of ``copies`` as copies of other
        nodes' bans, the others as this node's own; return how many still run. This
        node's own go first, and a copy takes only a row serving no running ban: one that
        finds none is not restored. They carry no failure window."""
        copied = {address_key(ip) for ip in copies}
        running = sorted(((ip, until) for ip, until in bans if until > now),
                         key=lambda ban: address_key(ban[0]) in copied)
        restored = 0
        with self._bans_locked() as words:
            for ip, until in running:
                flat = words[BAN_HEADER_WORDS:].tolist()
                key = address_key(ip)
                kind = COPY if key in copied else OWN
                if kind == COPY and self._full(flat, now):
                    continue
                at = self._take_row(words, flat, key, now, kind)
                self._write_ban(words, at, key, 0, 0, int(until), kind)
                restored += 1
            words[0] += 1 if restored else 0
        return restored

    @staticmethod
    def _full(flat: list[int], now: float) -> bool:
        """True if every row of ``flat`` serves a running ban."""
        return all(flat[at] and flat[at + 7] > now for at in range(0, len(flat), BAN_WORDS))

    @staticmethod
    def _write_ban(words, at: int, key: Address, failures: int, started: int,
                   until: int, kind: int) -> None:
        at += BAN_HEADER_WORDS
        words[at:at + BAN_WORDS] = array("I", [kind, *key, failures, started, until])

    def _take_row(self, words, flat: list[int], wanted: Address, now: float,
                  kind: int) -> Optional[int]:
        """Where in ``flat`` (the rows, caller holds the lock) the row of ``wanted`` is or
        goes (``_ban_row``), None if nowhere (a copy, in a table full of this node's own
        running bans). A running ban given up for it is counted (``dropped_bans``, for the
        master to log) and moves the epoch, so that no worker's copy of the table enforces
        it still."""
        row = self._ban_row(flat, wanted, now, kind)
        if row is None:
            return None
        at = row * BAN_WORDS
        if flat[at] and tuple(flat[at + 1:at + 5]) != wanted and flat[at + 7] > now:
            words[2] += 1
            words[0] += 1
        return at

    @staticmethod
    def _ban_row(flat: list[int], wanted: Address, now: float, kind: int) -> Optional[int]:
        """The row of ``wanted``, else a free row, else the one with the oldest news among
        those serving no ban, else the copy of another node's ban ending soonest, else (not
        for a copy: None) this node's own ban ending soonest. A ban this node earned, made
        through its admin API or restored from its bans file gives way only to another of
        its own: a crowd of bans made elsewhere in the cluster (each node holds them all)
        cannot push it out (found: 1,100 bans made on other nodes took the place of the
        ban a node had earned itself, ending soonest; Redis then lost its keys and the
        address got in everywhere)."""
        rows = range(len(flat) // BAN_WORDS)
        for row in rows:
            at = row * BAN_WORDS
            if flat[at] and tuple(flat[at + 1:at + 5]) == wanted:
                return row

        def rank(row: int) -> tuple[int, int]:
            at = row * BAN_WORDS
            if not flat[at] or flat[at + 7] <= now:
                return 0, flat[at] and max(flat[at + 6], flat[at + 7])
            return (2 if flat[at] == OWN else 1), flat[at + 7]
        chosen = min(rows, key=rank)
        return None if kind == COPY and rank(chosen)[0] == 2 else chosen


def _epoch_text(value: int) -> str:
    """An unban counter's epoch as Redis holds it (16 hex digits), '' for 0 (none)."""
    return f"{value:016x}" if value else ""


def _ban_row_of(flat: list[int], at: int) -> BanRow:
    return BanRow(address_text(tuple(flat[at + 1:at + 5])), *flat[at + 5:at + 8],
                  copy=flat[at] == COPY)


def save_bans(path: str, bans: list[tuple[str, int]], copies: Iterable[str] = (),
              unbans_applied: int = 0, unbans_epoch: str = "") -> None:
    """Write ``bans`` to ``path`` atomically, readable by the owner only: those of
    ``copies`` marked ``"copy": true`` (copies of other nodes' bans), and the number of the
    last of the cluster's unbans the node judged its bans by, and its counter's epoch,
    when there are."""
    copied = set(copies)
    entries = [{"address": ip, "until": until, **({"copy": True} if ip in copied else {})}
               for ip, until in bans]
    whole: dict = {"bans": entries}
    if unbans_applied:
        whole["unbans_applied"] = unbans_applied
    if unbans_epoch:
        whole["unbans_epoch"] = unbans_epoch
    replace_file(path, json.dumps(whole).encode("ascii"), 0o600)


@dataclass(frozen=True)
class SavedBans:
    """What a bans file held: the valid bans, and a description of each entry that was not
    one (its position and why, the value quoted and cut short); the addresses of those
    saved as copies of other nodes' bans, and the number of the last of the cluster's
    unbans the node had judged them by (0: not said; a file of a version before says
    neither: every ban is the node's own, and every unban Redis keeps is brought again),
    with its counter's epoch ('': not said; a file of the version before: the number is
    trusted alone)."""

    bans: list[tuple[str, int]]
    rejected: list[str]
    copies: set[str] = field(default_factory=set)
    unbans_applied: int = 0
    unbans_epoch: str = ""


def load_bans(path: str) -> SavedBans:
    """The bans saved at ``path`` (none if it is absent). A malformed entry is skipped and
    described, the others kept; raises ``ValueError`` if the file is not one ``save_bans``
    wrote at all, ``UnsafeFileError`` for a link at ``path``."""
    try:
        fd = open_fd(path, os.O_RDONLY)
    except FileNotFoundError:
        return SavedBans([], [])
    try:
        with open(fd, encoding="ascii") as handle:
            whole = json.load(handle)
        entries = whole["bans"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not a bans file ({type(exc).__name__})") from None
    if not isinstance(entries, list):
        raise ValueError("not a bans file (no list of bans)")
    applied = whole.get("unbans_applied", 0)
    # (one not a count is not kept: every unban Redis keeps is brought again, as before)
    valid = isinstance(applied, int) and not isinstance(applied, bool) and applied >= 0
    epoch = whole.get("unbans_epoch", "")
    # (one not an epoch is not kept: the number is trusted alone, as before there was one)
    if not (isinstance(epoch, str) and len(epoch) == 16 and
            all(c in "0123456789abcdef" for c in epoch)):
        epoch = ""
    saved = SavedBans([], [], unbans_applied=applied if valid else 0,
                      unbans_epoch=epoch if valid else "")
    for number, entry in enumerate(entries, 1):
        try:
            saved.bans.append(_saved_ban(entry))
        except ValueError as exc:
            saved.rejected.append(f"entry {number} {_quoted(entry)}: {exc}")
            continue
        if entry.get("copy") is True:
            saved.copies.add(entry["address"])
    return saved


def _saved_ban(entry: object) -> tuple[str, int]:
    """``(address, until)`` from one entry of a bans file (``copy``, if there, true or
    false); ``ValueError`` saying what is wrong with it."""
    if not isinstance(entry, dict):
        raise ValueError("not an object with an address and an expiry")
    address, until = entry.get("address"), entry.get("until")
    if not isinstance(address, str):
        raise ValueError("no address")
    try:
        address_key(address)
    except ValueError:
        raise ValueError("the address is not an IP address") from None
    if not isinstance(until, int) or isinstance(until, bool):
        raise ValueError("the expiry ('until') is not a whole number of seconds")
    if not isinstance(entry.get("copy", False), bool):
        raise ValueError("'copy' is neither true nor false")
    return address, until


def _quoted(value: object, limit: int = 80) -> str:
    """``value`` as JSON, ASCII only (every control character escaped), cut to ``limit``."""
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= limit else text[:limit] + "..."
