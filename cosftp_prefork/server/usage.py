"""The usage of every home with a quota, shared by the master's workers: a mapped file.

The master creates it beside the state file (``<pid file>.usage``) with the scoreboard, and
the workers inherit the mapping as they inherit the scoreboard's (``SharedState.usage``);
``cosftpctl quota`` and the admin API read it, ``cosftpctl quota-scan`` asks for scans in it.
It outlives reloads (the usage of a home does not change with the configuration) and not the
master: a new master scans each home again at its first use.
Its header names its layout (``filelayout``: a fingerprint of this module's sizes, offsets and
record formats): ``cosftpctl`` of another version neither reads nor writes it.

One row per home (``cos.quota.home_id``: 16 bytes naming bucket and prefix), in an
open-addressing table: used bytes and files, reserved bytes and files (uploads under way),
the time of the last scan, the pid scanning it now and since when, the time a scan was asked
for, and for a home whose quota an auth hook's answer gave, the limits of the latest answer
and when it came (every worker then holds the same limits), and that home's bucket and prefix
in a region of its own after the rows (``cosftpctl quota`` and the admin API list them; only
such rows write theirs, so the rest of the region stays a hole of the file). Every change
happens under a POSIX record lock on the file (``fcntl.lockf``, released by the kernel if
its holder dies) and this process's thread lock, so that a reservation is one atomic
check-and-add across every worker: two sessions cannot both take the last bytes.
The file's homes' rows are never freed (they come back after a reload); the table holds
:data:`ROWS` of them. The answers' homes take at most ``auth_hook_quota_homes`` rows (at most
:data:`HOOK_ROWS`, so that the file's homes always have room), counted in the header; once
they are taken, a login whose answer gives another home a quota frees the row of the home
answered longest ago whose latest answer is older than ``Quotas.hook_home_age`` and that has
no logged-in session, no reservation and no live scan (all checked under the lock that
adopts, so two logins cannot both take one row), else it is refused (421).

What each worker holds (bytes and files reserved, sessions of an answered home) is counted in
the homes' rows, and also in that worker's region of the file (one per state-file worker
slot, :meth:`UsageTable.attach`; at most :data:`SLOT_HOLDINGS` homes, one entry each), so
that a worker that dies without settling (SIGKILL, the OOM killer, the master's abort of a
hung worker) leaves nothing held: the master takes its region's holdings out of the rows
when it reaps it (:meth:`UsageTable.drop_holdings`; if a worker holds the lock then, it
tries again on its next turn rather than wait, and the slot's next worker does it anyway
when it attaches). A worker whose region is full (a holding in :data:`SLOT_HOLDINGS` other
homes at once) still counts the change in the row, untracked, with one warning in its log:
such an amount stays counted until the master restarts if the worker dies. The lock is the
kernel's and goes with a dead holder, so a process killed between the two writes of one
change (row, holding) leaves that change half done; an increase is therefore written to the
row first and a decrease (a settle, a leave, a dead worker's drop: the holding emptied first)
to the holding first, so that a row never counts less than its holdings say: what can stay
counted until the restart is at most that one change (one slice of an upload, an ``ALLO``'s
size, a rename's bytes, one session; for a drop, one home's holding), refused early, never
a quota passed.

With ``[CLUSTER]`` the node's reservations are published in Redis (``server.quotashare``)
from the rows; a flag in the header says when all of them are to be rewritten there (a new
file, a dead worker's holdings dropped, a change that did not reach Redis), and
:meth:`UsageTable.publish` hands them over under the lock. A change of them there is two
steps (the rows, then Redis, or the other way round), and a rewrite reading the rows between
the two would write the change back: each change holds a gate (two more bytes of the file,
``server.usagegate``), shared, across both steps (:meth:`UsageTable.changing`: the changes of
every worker go on side by side), and a rewrite holds it exclusive: it waits for the changes
under way and holds off those that start meanwhile, so that it gets its turn under a steady
crowd of them (it used to skip its turn while any change was under way).
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import mmap
import os
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Optional

from ..config.model import MAX_HOOK_QUOTA_HOMES, MAX_WORKER_PROCESSES
from ..config.quotas import Home, QuotaHomesFull, Reservation, Reserving, Usage
from ..safefiles import PRIVATE_MODE, map_existing, open_fd
from .filelayout import check_layout, fingerprint
from .pidfile import is_alive
from .usagegate import ChangeGate, lock_record

log = logging.getLogger(__name__)

# The magic stays: a new layout changes the layout word (LAYOUT_VERSION), no longer this.
MAGIC = b"CFQ4"
# magic, layout (LAYOUT_VERSION; the versions before it kept the rows in use there, a count
# that never has the high bit set), rows in use, rows of the answers' homes
_HEADER = struct.Struct("<4sIII")
_COUNTS = struct.Struct("<II")  # the header's two counts
_COUNTS_AT = _HEADER.size - _COUNTS.size
# Then whether the node's reservations are to be rewritten wherever they are published
# (Redis, ``server.quotashare``) from the rows: 1 from the file's creation (what a previous
# master of the node left there), after a dead worker's holdings were dropped and after a
# change that did not reach Redis; 0 once a process rewrote them.
_WANTED = struct.Struct("<I")
_WANTED_AT = _HEADER.size
_HEADER_SIZE = 64
# The table's record lock (length, start): every change of the file (the next two bytes
# are ``server.usagegate``'s).
_TABLE_LOCK = (1, 0)
ROWS = 16384
HOOK_ROWS = MAX_HOOK_QUOTA_HOMES  # half of ROWS: the file's homes keep the other half
# home id, scanner pid (0: none), used bytes, used files, reserved bytes, reserved files,
# last scan, scan started, scan asked for; an answer's size and files limits, its time, and
# the sessions of this master logged in with such an answer (its row is kept while any is)
_ROW = struct.Struct("<16siqqqqdddqqdq")
NAME_SIZE = 1024  # bytes of an answered home's "bucket NUL prefix" (prefixes: < 850)
_NAMES = _HEADER_SIZE + ROWS * _ROW.size  # where the answered homes' names start
# What one worker holds in one home: reserved bytes and files, sessions kept (``adopt``).
_HOLDING = struct.Struct("<16sqqq")
SLOT_HOLDINGS = 1024  # homes one worker's holdings name at once (a full region: untracked)
_SLOT_HEADER = struct.Struct("<qq")  # the worker's pid, holdings in use (the region's top)
SLOTS = 2 * MAX_WORKER_PROCESSES  # the state file's worker slots (a reload runs two)
_SLOT_SIZE = _SLOT_HEADER.size + SLOT_HOLDINGS * _HOLDING.size
_HOLDINGS = _NAMES + ROWS * NAME_SIZE  # where the worker slots' holdings start
FILE_SIZE = _HOLDINGS + SLOTS * _SLOT_SIZE
SCAN_STALE = 3600.0  # seconds after which a scan whose process still lives is taken over
_EMPTY = bytes(16)
# What the header says of the file's layout: ``cosftpctl quota`` and ``quota-scan`` of another
# version (an upgrade while the master runs) must neither read nor write the file with their
# own offsets.
LAYOUT_VERSION = fingerprint(globals())


def usage_path(state_file: str) -> str:
    return state_file + ".usage"


@dataclasses.dataclass(frozen=True)
class Dropped:
    """What a dead worker's holdings gave back: reserved bytes and files, sessions, in how
    many homes."""

    nbytes: int = 0
    files: int = 0
    sessions: int = 0
    homes: int = 0


@dataclasses.dataclass(frozen=True)
class AnsweredHome:
    """A home whose quota an auth hook's answer gave (``home``: the latest answer's limits),
    when that answer came, and its usage as this table holds it."""

    home: Home
    answered_at: float
    usage: Usage


def _name_of(home: Home) -> bytes:
    """What the names region keeps of ``home``; raises ``QuotaHomesFull`` if it cannot."""
    name = f"{home.bucket}\0{home.prefix}".encode()
    if len(name) > NAME_SIZE:
        raise QuotaHomesFull(f"the bucket and prefix take {len(name)} bytes; the usage "
                             f"table keeps {NAME_SIZE}")
    return name.ljust(NAME_SIZE, b"\0")


class UsageTable(Reserving):
    """The mapped usage file (see the module doc); a ``cos.quota.Ledger``."""

    def __init__(self, fd: int, mapping: mmap.mmap, writable: bool = True) -> None:
        self._fd, self._map = fd, mapping
        self._thread_lock = threading.Lock()
        self._gate = ChangeGate(fd, self._thread_lock)
        self._slot: Optional[int] = None  # this worker's slot (:meth:`attach`)
        self._untracked = False  # whether a full holdings region was logged
        # A read-only file takes a shared lock (a write lock needs a writable descriptor).
        self._lock_kind = fcntl.LOCK_EX if writable else fcntl.LOCK_SH

    @classmethod
    def create(cls, path: str) -> UsageTable:
        """Create (or reset) the file, owner and group only, mapped shared."""
        fd = open_fd(path, os.O_RDWR | os.O_CREAT, PRIVATE_MODE)
        try:
            os.fchmod(fd, PRIVATE_MODE)
            os.ftruncate(fd, 0)
            os.ftruncate(fd, FILE_SIZE)
            mapping = mmap.mmap(fd, FILE_SIZE, mmap.MAP_SHARED)
            _HEADER.pack_into(mapping, 0, MAGIC, LAYOUT_VERSION, 0, 0)
            _WANTED.pack_into(mapping, _WANTED_AT, 1)
            return cls(fd, mapping)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def open(cls, path: str, master: int, writable: bool = False) -> Optional[UsageTable]:
        """Map an existing file made by the master ``master`` (None if absent or not ours);
        ``writable`` for ``cosftpctl quota-scan`` (raises ``PermissionError`` if this user
        may not). Raises ``OtherLayoutError``, naming ``master``, if another version laid
        it out."""
        check_layout(path, MAGIC, LAYOUT_VERSION, "quota usage table", master)
        found = map_existing(path, FILE_SIZE, MAGIC, writable)
        return None if found is None else cls(*found, writable)

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)

    @contextmanager
    def _locked(self, wait: bool = True) -> Iterator[bool]:
        """Hold this process's thread lock and the file's record lock (True). Without
        ``wait``, hold nothing (False) if either is taken now: the master never waits on a
        worker."""
        if not self._thread_lock.acquire(blocking=wait):
            yield False
            return
        try:
            with self._record_lock(self._lock_kind, _TABLE_LOCK, wait) as locked:
                yield locked
        finally:
            self._thread_lock.release()

    @contextmanager
    def _record_lock(self, kind: int, region: tuple[int, int], wait: bool) -> Iterator[bool]:
        """Hold the file's record lock ``kind`` over ``region`` (True); without ``wait``,
        nothing (False) if another process holds it now."""
        if not lock_record(self._fd, kind, region, wait):
            yield False
            return
        try:
            yield True
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, *region)

    @contextmanager
    def changing(self) -> Iterator[None]:
        """Hold the gate, shared, across a change of the node's reservations in the rows
        and where they are published (a cluster's Redis): no :meth:`publish` reads the rows
        between the two steps. Waits while a rewrite runs or waits for its turn (at most
        the changes under way then and the rewrite's Redis call)."""
        with self._gate.changing():
            yield

    # --- rows

    def _find(self, ident: bytes, make: bool) -> Optional[int]:
        """The offset of ``ident``'s row (made if ``make`` and the table has room); None if
        it has none."""
        start = int.from_bytes(ident[:4], "little") % ROWS
        for step in range(ROWS):
            at = _HEADER_SIZE + ((start + step) % ROWS) * _ROW.size
            found = bytes(self._map[at:at + 16])
            if found == ident:
                return at
            if found == _EMPTY:
                if not make:
                    return None
                _ROW.pack_into(self._map, at, ident, 0, 0, 0, 0, 0, 0.0, 0.0, 0.0, 0, 0, 0.0, 0)
                used, answers = _COUNTS.unpack_from(self._map, _COUNTS_AT)
                _COUNTS.pack_into(self._map, _COUNTS_AT, used + 1, answers)
                return at
        return None

    def _row(self, at: int) -> list:
        return list(_ROW.unpack_from(self._map, at))

    def _write(self, at: int, row: list) -> None:
        _ROW.pack_into(self._map, at, *row)

    def _rows(self, homes: Sequence[Home]) -> list[int]:
        found = [self._find(home.ident, make=True) for home in homes]
        if None in found:
            raise RuntimeError(f"the quota usage table is full ({ROWS} homes)")
        return found  # type: ignore[return-value]

    # --- cos.quota.Ledger

    def _reserve(self, homes: Sequence[Home], nbytes: int, files: int, ahead: int,
                 scanned_only: bool) -> Reservation:
        with self._locked():
            rows = self._rows(homes)
            found = [self._row(at) for at in rows]
            if scanned_only:
                for home, row in zip(homes, found):
                    if not row[6]:
                        return Reservation(unscanned=home)

            def short(extra: int) -> Optional[Home]:
                """The first home without room for ``extra`` bytes beyond those needed."""
                for home, row in zip(homes, found):
                    if (home.size and row[2] + row[4] + nbytes + extra > home.size) or \
                            (home.files and files and row[3] + row[5] + files > home.files):
                        return home
                return None
            if not ahead or short(ahead) is not None:
                ahead = 0
                refused = short(0)
                if refused is not None:
                    return Reservation(refused=refused)
            for home, at, row in zip(homes, rows, found):
                row[4] += nbytes + ahead
                row[5] += files
                self._write(at, row)
                self._hold(home.ident, nbytes + ahead, files, 0)  # an increase: after the row's
        return Reservation(ahead=ahead)

    def release(self, homes: Sequence[Home], nbytes: int, files: int) -> None:
        self.settle(homes, nbytes, files, 0, 0)

    def settle(self, homes: Sequence[Home], reserved: int, reserved_files: int,
               nbytes: int, files: int) -> None:
        with self._locked():
            for home, at in zip(homes, self._rows(homes)):
                self._hold(home.ident, -reserved, -reserved_files, 0)  # a decrease: before
                row = self._row(at)
                row[4], row[5] = max(0, row[4] - reserved), max(0, row[5] - reserved_files)
                row[2], row[3] = max(0, row[2] + nbytes), max(0, row[3] + files)
                self._write(at, row)

    def _name_at(self, at: int) -> int:
        return _NAMES + (at - _HEADER_SIZE) // _ROW.size * NAME_SIZE

    def answered(self) -> list[AnsweredHome]:
        """The homes whose quota an answer gave, in the table's order."""
        found = []
        with self._locked():
            for index in range(ROWS):
                at = _HEADER_SIZE + index * _ROW.size
                row = self._row(at)
                if row[0] == _EMPTY or not row[11]:
                    continue
                named = self._name_at(at)
                bucket, _, prefix = bytes(self._map[named:named + NAME_SIZE]).rstrip(
                    b"\0").decode().partition("\0")
                found.append(AnsweredHome(Home(row[0], bucket, prefix, row[9], row[10]),
                                          row[11], _usage(row)))
        return found

    def read(self, home: Home) -> Optional[Usage]:
        return self.read_id(home.ident)

    def read_id(self, ident: bytes) -> Optional[Usage]:
        with self._locked():
            at = self._find(ident, make=False)
            if at is None:
                return None
            row = self._row(at)
        return _usage(row)

    def claim_scan(self, home: Home, interval: float, now: float, known_only: bool) -> bool:
        with self._locked():
            at = self._find(home.ident, make=not known_only)
            if at is None:
                return False
            row = self._row(at)
            scanner, scanned, started, asked = row[1], row[6], row[7], row[8]
            due = not scanned or asked > scanned or (interval and now - scanned >= interval)
            if not due or (scanner and is_alive(scanner) and now - started < SCAN_STALE):
                return False
            row[1], row[7] = os.getpid(), now
            self._write(at, row)
            return True

    def forgotten(self, home: Home, now: float) -> bool:
        """Where the usage is published (a cluster's Redis), ``home``'s is not known though
        this table scanned it (Redis restarted empty, flushed, failed over to an empty
        replica, or the key expired): ask for a scan (as :meth:`request_scan`) unless one was
        asked for since the last. Whether this call asked: the waiters of a scan under way
        ask nothing more."""
        with self._locked():
            at = self._find(home.ident, make=False)
            if at is None:
                return False
            row = self._row(at)
            if not row[6] or row[8] > row[6]:
                return False
            row[8] = max(now, row[6] + 1e-6)
            self._write(at, row)
            return True

    def end_scan(self, home: Home, found: Optional[tuple[int, int]], now: float) -> None:
        with self._locked():
            [at] = self._rows([home])
            row = self._row(at)
            row[1] = 0
            if found is not None:
                row[2], row[3], row[6] = found[0], found[1], now
            self._write(at, row)

    def tick(self, homes: Iterable[Home]) -> None:
        """Nothing to publish: this table is the whole server's."""

    def catch_up(self) -> bool:
        """Nothing to publish: this table is the whole server's."""
        return False

    # --- what a cluster's ledger publishes of the rows (``server.quotashare``)

    def want_publish(self) -> None:
        """The node's reservations elsewhere (Redis) may differ from the rows now (a change
        did not reach it): have the next :meth:`publish` with ``everything`` rewrite them."""
        with self._locked():
            _WANTED.pack_into(self._map, _WANTED_AT, 1)

    def publish_wanted(self) -> bool:
        """Whether :meth:`want_publish` (or a dead worker's drop) asked for a rewrite; read
        without the lock: a hint, :meth:`publish` checks again."""
        return bool(_WANTED.unpack_from(self._map, _WANTED_AT)[0])

    def publish(self, idents: Iterable[bytes], everything: bool,
                write: Callable[[list[tuple[bytes, int, int]], bool], bool]) -> bool:
        """Hand ``write`` the reservations (home id, bytes, files) of the homes ``idents``
        (0 for a home without a row) and, with ``everything``, of every row that holds some,
        if a rewrite is wanted (else do nothing, False). Waits for the changes of every
        process between their two steps (:meth:`changing`) to end, and holds off those that
        start meanwhile: the rewrite would write them back or count them twice. ``write``
        runs under the gate and the table's lock: no change of this node lands in the rows
        or in Redis while it publishes them, so that what it writes is what the node holds
        (see ``server.quotashare``). If it returns True (written), an ``everything``
        rewrite is no longer wanted. Returns whether ``write`` ran."""
        # The gate first, then the table's lock (``server.usagegate``: the order that
        # keeps the kernel from finding a cycle of processes, EDEADLK).
        with self._gate.rewriting(), self._record_lock(self._lock_kind, _TABLE_LOCK, True):
            if everything and not self.publish_wanted():
                return False
            held: dict[bytes, tuple[int, int]] = dict.fromkeys(idents, (0, 0))
            if everything:
                for row in _ROW.iter_unpack(self._map[_HEADER_SIZE:_NAMES]):
                    if row[4] or row[5]:
                        held[row[0]] = (row[4], row[5])
            else:
                for ident in held:
                    at = self._find(ident, make=False)
                    if at is not None:
                        held[ident] = tuple(self._row(at)[4:6])
            if write([(ident, *amounts) for ident, amounts in held.items()],
                     everything) and everything:
                _WANTED.pack_into(self._map, _WANTED_AT, 0)
        return True

    def request_scan(self, home: Home, now: float) -> None:
        self.request_id(home.ident, now)

    def request_id(self, ident: bytes, now: float) -> None:
        with self._locked():
            at = self._find(ident, make=True)
            if at is None:
                raise RuntimeError(f"the quota usage table is full ({ROWS} homes)")
            row = self._row(at)
            row[8] = max(now, row[6] + 1e-6)  # after the last scan, even within its second
            self._write(at, row)

    def adopt(self, home: Home, answered_at: float, most: int, stale_before: float) -> Home:
        with self._locked():
            name = _name_of(home)
            at = self._find(home.ident, make=False)
            if at is None:
                _, answers = _COUNTS.unpack_from(self._map, _COUNTS_AT)
                if answers >= min(most, HOOK_ROWS) and self._free_stale(stale_before):
                    answers -= 1
                if answers >= min(most, HOOK_ROWS):
                    raise QuotaHomesFull(f"{answers} homes already have a quota from the auth "
                                         "hook's answers (auth_hook_quota_homes)")
                at = self._find(home.ident, make=True)
                if at is None:
                    raise QuotaHomesFull(f"the quota usage table is full ({ROWS} homes)")
                used, _ = _COUNTS.unpack_from(self._map, _COUNTS_AT)
                _COUNTS.pack_into(self._map, _COUNTS_AT, used, answers + 1)
            row = self._row(at)
            row[12] += 1
            if answered_at >= row[11]:
                row[9], row[10], row[11] = home.size, home.files, answered_at
                named = self._name_at(at)
                self._map[named:named + NAME_SIZE] = name
            self._write(at, row)
            self._hold(home.ident, 0, 0, 1)
            return dataclasses.replace(home, size=row[9], files=row[10])

    def leave(self, home: Home) -> None:
        with self._locked():
            at = self._find(home.ident, make=False)
            if at is not None:
                self._hold(home.ident, 0, 0, -1)
                row = self._row(at)
                row[12] = max(0, row[12] - 1)
                self._write(at, row)

    def _free_stale(self, stale_before: float) -> bool:
        """Free the row of the home answered longest ago, if its latest answer came before
        ``stale_before`` and it holds no session, reservation or live scan (a home whose
        rows are gone is scanned again at its next first use); whether one was freed."""
        oldest = None
        for index in range(ROWS):
            at = _HEADER_SIZE + index * _ROW.size
            row = self._row(at)
            if row[0] == _EMPTY or not row[11] or row[11] > stale_before or row[12] or \
                    row[4] or row[5] or (row[1] and is_alive(row[1])):
                continue
            if oldest is None or row[11] < oldest[1]:
                oldest = (at, row[11])
        if oldest is None:
            return False
        self._remove(oldest[0])
        used, answers = _COUNTS.unpack_from(self._map, _COUNTS_AT)
        _COUNTS.pack_into(self._map, _COUNTS_AT, used - 1, answers - 1)
        return True

    def _remove(self, at: int) -> None:
        """Empty the row at ``at`` the way linear probing needs (no tombstones): each later
        row of its run that may sit in the hole moves into it (its name with it), until the
        run ends; then the last hole is emptied."""
        hole = (at - _HEADER_SIZE) // _ROW.size
        index = hole
        while True:
            index = (index + 1) % ROWS
            found_at = _HEADER_SIZE + index * _ROW.size
            ident = bytes(self._map[found_at:found_at + 16])
            if ident == _EMPTY:
                break
            wanted = int.from_bytes(ident[:4], "little") % ROWS
            if (index - wanted) % ROWS >= (index - hole) % ROWS:  # the hole is on its way
                hole_at = _HEADER_SIZE + hole * _ROW.size
                self._map[hole_at:hole_at + _ROW.size] = self._map[found_at:found_at + _ROW.size]
                self._map[self._name_at(hole_at):self._name_at(hole_at) + NAME_SIZE] = \
                    self._map[self._name_at(found_at):self._name_at(found_at) + NAME_SIZE]
                hole = index
        hole_at = _HEADER_SIZE + hole * _ROW.size
        self._map[hole_at:hole_at + _ROW.size] = bytes(_ROW.size)
        named = self._name_at(hole_at)
        self._map[named:named + NAME_SIZE] = bytes(NAME_SIZE)

    # --- each worker's holdings

    def attach(self, slot: int) -> Dropped:
        """This process is the worker of state-file slot ``slot``: from now on it records
        what it holds in the homes (reservations, sessions) in that slot's region, so that
        they can be dropped once it is dead. What a previous worker of the slot left there
        (its master could not take the lock when it reaped it) is dropped first and
        returned."""
        with self._locked():
            dropped = self._drop(slot, None)
            _SLOT_HEADER.pack_into(self._map, self._slot_at(slot), os.getpid(), 0)
        self._slot = slot
        return dropped

    def drop_holdings(self, slot: int, pid: int) -> Optional[Dropped]:
        """The master reaped ``pid``, the worker of ``slot``: take what it still held out of
        the homes' usage (nothing if another process is now the slot's). None if the lock
        is busy now: the master must not wait on a worker; it tries again later, and the
        slot's next worker drops them anyway (:meth:`attach`)."""
        with self._locked(wait=False) as locked:
            return self._drop(slot, pid) if locked else None

    @staticmethod
    def _slot_at(slot: int) -> int:
        return _HOLDINGS + slot * _SLOT_SIZE

    def _hold(self, ident: bytes, nbytes: int, files: int, sessions: int) -> None:
        """Add to what this worker holds in home ``ident`` (under the lock; nothing outside
        a worker). Callers write an increase after the home's row and a decrease before it:
        see the module doc."""
        if self._slot is None or not (nbytes or files or sessions):
            return
        at = self._holding(self._slot, ident, make=nbytes > 0 or files > 0 or sessions > 0)
        if at is not None:
            _, held_bytes, held_files, held = _HOLDING.unpack_from(self._map, at)
            _HOLDING.pack_into(self._map, at, ident, max(0, held_bytes + nbytes),
                               max(0, held_files + files), max(0, held + sessions))

    def _holding(self, slot: int, ident: bytes, make: bool) -> Optional[int]:
        """Where the holding in home ``ident`` of ``slot``'s worker is (made if ``make``: at
        the top of the region, else in place of one that holds nothing); None if it has
        none, or the region is full (that change then goes untracked)."""
        base = self._slot_at(slot)
        pid, top = _SLOT_HEADER.unpack_from(self._map, base)
        first = base + _SLOT_HEADER.size
        end = first + top * _HOLDING.size
        at = self._map.find(ident, first, end)
        while at >= 0:
            if (at - first) % _HOLDING.size == 0:
                return at
            at = self._map.find(ident, at + 1, end)
        if not make:
            return None
        if top < SLOT_HOLDINGS:
            _HOLDING.pack_into(self._map, end, ident, 0, 0, 0)
            _SLOT_HEADER.pack_into(self._map, base, pid, top + 1)
            return end
        for at in range(first, end, _HOLDING.size):
            if not any(_HOLDING.unpack_from(self._map, at)[1:]):
                _HOLDING.pack_into(self._map, at, ident, 0, 0, 0)
                return at
        if not self._untracked:
            self._untracked = True
            log.warning("quota: this worker holds something in %d homes at once; what it "
                        "takes in more is counted but would stay counted if it died",
                        SLOT_HOLDINGS)
        return None

    def _drop(self, slot: int, pid: Optional[int]) -> Dropped:
        """Take the holdings of ``slot`` (if its worker is ``pid``; any if None) out of the
        homes' rows, and empty the region (under the lock). Each holding is emptied before
        its row is lowered: killed in between, the row stays higher, never lower."""
        base = self._slot_at(slot)
        owner, top = _SLOT_HEADER.unpack_from(self._map, base)
        if pid is not None and owner != pid:
            return Dropped()
        total = [0, 0, 0, 0]
        first = base + _SLOT_HEADER.size
        for at in range(first, first + top * _HOLDING.size, _HOLDING.size):
            ident, nbytes, files, sessions = _HOLDING.unpack_from(self._map, at)
            if not (nbytes or files or sessions):
                continue
            _HOLDING.pack_into(self._map, at, ident, 0, 0, 0)
            row_at = self._find(ident, make=False)
            if row_at is not None:
                row = self._row(row_at)
                row[4], row[5] = max(0, row[4] - nbytes), max(0, row[5] - files)
                row[12] = max(0, row[12] - sessions)
                self._write(row_at, row)
            total = [total[0] + nbytes, total[1] + files, total[2] + sessions, total[3] + 1]
        _SLOT_HEADER.pack_into(self._map, base, 0, 0)
        if total[3]:
            _WANTED.pack_into(self._map, _WANTED_AT, 1)  # what it held is still published
        return Dropped(*total)

    def limits(self, home: Home) -> Home:
        with self._locked():
            at = self._find(home.ident, make=False)
            row = self._row(at) if at is not None else None
        if row is None or not row[11]:
            return home
        return dataclasses.replace(home, size=row[9], files=row[10])


def _usage(row: list) -> Usage:
    return Usage(row[2], row[3], row[4], row[5], row[6], row[8])
