"""The session table: one row per connection of the server (its worker, whether it logged
in, its client address, a serial naming it), what each session is doing (for ``cosftpctl
sessions`` and the admin API), and the index that keeps admitting a connection as cheap
with 8,000 rows as with one: counts, free rows, rows per address, and the accounts logged
in with their rate buckets (``max_sessions``, ``max_*_rate`` hold for the whole server)."""

from __future__ import annotations

import struct
import time
from array import array
from collections import Counter
from contextlib import contextmanager
from dataclasses import replace
from typing import Optional

from ... import rates
from .layout import (
    ACCOUNT_BASE,
    ACCOUNT_SLOTS,
    ACCOUNT_WORDS,
    ADDRESS_BASE,
    ADDRESS_SLOTS,
    ADDRESS_WORDS,
    BANS_AT,
    BUCKETS_UNUSED,
    CLIENT_SIZE,
    CLIENTS_AT,
    COMMAND_SIZE,
    CONTROL_AT,
    COUNT_WORDS,
    DETAIL,
    DETAILS_AT,
    DOWNLOAD,
    IN_FLIGHT,
    INDEX_AT,
    INT64,
    KEEP_BUCKETS,
    KEPT,
    KICKS_BASE,
    LOGGED_IN,
    NAME_SIZE,
    PENDING,
    ROW_ACCOUNT_BASE,
    SERIALS_BASE,
    SESSION_ROWS,
    SESSION_WORDS,
    SESSIONS_AT,
    UPLOAD,
    USER_SIZE,
)
from .mapped import MappedFile, clip, unclip
from .records import (
    TOO_MANY,
    TOO_MANY_LOGGED_IN,
    TOO_MANY_PER_IP,
    TOO_MANY_PRELOGIN,
    TOO_MANY_PRELOGIN_PER_IP,
    TOO_MANY_SESSIONS,
    AccountKey,
    Address,
    Limits,
    Seat,
    SessionDetail,
    TransferFigures,
    address_key,
    address_text,
)


class SessionTable(MappedFile):
    """The session rows of the state file and their index, changed under one record lock."""

    def _sessions_locked(self, wait: bool = True):
        return self._locked(SESSIONS_AT, BANS_AT, wait)

    @contextmanager
    def _sessions_and_index(self, wait: bool = True):
        """The session rows and their index, both under the session table's lock (without
        ``wait``: ``BlockingIOError`` if it is held)."""
        with self._sessions_locked(wait) as rows, memoryview(self._map) as whole, \
                whole[INDEX_AT:CONTROL_AT].cast("I") as index:
            yield rows, _SessionIndex(index)

    def admit(self, pid: int, ip: str, limits: Limits,
              client: str = "") -> tuple[Optional[int], Optional[str]]:
        """Record a connection from ``ip`` not logged in yet: return its row, or why it must
        be refused. Costs the same however many rows the table has. ``client``: its own
        address, shown for it where ``ip`` is the network it counts under."""
        wanted = address_key(ip)
        with self._sessions_and_index() as (rows, index):
            reason = _refusal(limits, index, index.counts_of(wanted))
            if reason is not None:
                return None, reason
            row = index.take_row()
            at = row * SESSION_WORDS
            rows[at:at + SESSION_WORDS] = array("I", [pid, PENDING, *wanted])
            self._show_client(row, client)
            index.add(wanted, PENDING)
            index.give_serial(row)
            return row, None

    def _show_client(self, row: int, client: str) -> None:
        at = CLIENTS_AT + row * CLIENT_SIZE
        self._map[at:at + CLIENT_SIZE] = array("I", address_key(client)).tobytes() if client \
            else bytes(CLIENT_SIZE)

    def move(self, row: int, pid: int, ip: str, limits: Limits,
             client: str = "") -> Optional[str]:
        """Count the pending connection of ``row`` under ``ip`` instead of its address now
        (a balancer's, until its PROXY header named the client), or check it again under
        its own (against the cluster's limits, once Redis answered); return why not if
        ``ip`` is over its per-address limits, or the logged-in limit is reached (the row
        stays as it was). The server-wide counts do not change: it is the same connection.
        A row no longer pending is left alone. ``client`` as for :meth:`admit`."""
        wanted = address_key(ip)
        with self._sessions_and_index() as (rows, index):
            at = row * SESSION_WORDS
            if rows[at] != pid or rows[at + 1] != PENDING:
                return None
            current = tuple(rows[at + 2:at + SESSION_WORDS])
            rows_of, pending_of = index.counts_of(wanted)
            if current == wanted:  # the row itself is not one more
                rows_of, pending_of = rows_of - 1, pending_of - 1
            if limits.logged_in and index.logged_in >= limits.logged_in:
                return TOO_MANY
            reason = _address_refusal(limits, (rows_of, pending_of))
            if reason is None and current != wanted:
                index.remove(current, PENDING)
                rows[at + 2:at + SESSION_WORDS] = array("I", wanted)
                index.add(wanted, PENDING)
            if reason is None:
                self._show_client(row, client)
            return reason

    def log_in(self, row: int, pid: int, max_logged_in: int,
               seat: Optional[Seat] = None) -> Optional[str]:
        """Mark the connection of ``row`` logged in (as ``seat``'s account); return why not
        if the server, or the account, is full."""
        with self._sessions_and_index() as (rows, index):
            if max_logged_in and index.logged_in >= max_logged_in:
                return TOO_MANY_LOGGED_IN
            if seat is not None and seat.limit and \
                    index.account_sessions(seat.account) >= seat.limit:
                return TOO_MANY_SESSIONS
            at = row * SESSION_WORDS
            if rows[at] == pid and rows[at + 1] == PENDING:
                rows[at + 1] = LOGGED_IN
                index.moved(tuple(rows[at + 2:at + SESSION_WORDS]), PENDING, LOGGED_IN)
                if seat is not None:
                    index.join(row, seat.account)
            return None

    def take(self, account: AccountKey, upload: bool, rate: int, nbytes: int) -> float:
        """Take ``nbytes`` from the node's upload or download bucket of ``account``, which
        fills at ``rate`` bytes/s; return the seconds to wait before they may go."""
        with self._sessions_and_index() as (_, index):
            return index.take(account, 0 if upload else 1, rate, nbytes)

    def sweep_accounts(self, idle: int = KEEP_BUCKETS) -> None:
        """Forget the buckets of accounts logged out here and unused for ``idle``
        nanoseconds (a worker's tick). Skipped when another thread or process holds the
        table: the tick that sends the heartbeat must never wait for it, or one worker stuck
        holding it would stop every worker's heartbeat (the next tick sweeps)."""
        try:
            with self._sessions_and_index(wait=False) as (_, index):
                index.sweep(idle)
        except BlockingIOError:
            return

    def account_counts(self, wait: bool = True) -> dict[AccountKey, int]:
        """Logged-in sessions per account on this server. Without ``wait``, raise
        ``BlockingIOError`` at once if another thread or process holds the table."""
        with self._sessions_and_index(wait) as (_, index):
            return index.accounts()

    def log_out(self, row: int, pid: int, limits: Limits) -> Optional[str]:
        """Mark the logged-in connection of ``row`` not logged in (it starts a new login),
        unless the limits on connections not logged in are reached: then return why."""
        with self._sessions_and_index() as (rows, index):
            at = row * SESSION_WORDS
            if rows[at] != pid or rows[at + 1] != LOGGED_IN:
                return None
            key = tuple(rows[at + 2:at + SESSION_WORDS])
            # Its row is counted already: only the limits on pending rows can refuse it.
            reason = _prelogin_refusal(replace(limits, per_ip=0), index, index.counts_of(key))
            if reason is None:
                rows[at + 1] = PENDING
                index.moved(key, LOGGED_IN, PENDING)
                index.leave(row)
            return reason

    def release(self, row: int, pid: int) -> None:
        """Forget the connection of ``row`` (if ``pid`` still owns it)."""
        with self._sessions_and_index() as (rows, index):
            if rows[row * SESSION_WORDS] == pid:
                _free_row(rows, index, row)

    def release_all(self, pid: int) -> int:
        """Forget every session of a dead worker; return how many there were."""
        with self._sessions_and_index() as (rows, index):
            pids = rows[0::SESSION_WORDS].tolist()
            freed = 0
            for row, owner in enumerate(pids):
                if owner == pid:
                    _free_row(rows, index, row)
                    freed += 1
            return freed

    def login_counts(self) -> dict[int, tuple[int, int]]:
        """Per worker pid: its sessions logged in and its connections waiting to log in
        (read without the lock: a display)."""
        with memoryview(self._map) as whole, whole[SESSIONS_AT:BANS_AT].cast("I") as rows:
            flat = rows.tolist()
        counts: dict[int, tuple[int, int]] = {}
        for pid, kind in zip(flat[0::SESSION_WORDS], flat[1::SESSION_WORDS]):
            if pid:
                logged_in, pending = counts.get(pid, (0, 0))
                counts[pid] = (logged_in + (kind == LOGGED_IN), pending + (kind == PENDING))
        return counts

    def node_counts(self) -> tuple[Counter, int]:
        """Connections per client address and logged-in sessions of this server, read
        without the lock (a snapshot is enough)."""
        with memoryview(self._map) as whole, whole[SESSIONS_AT:BANS_AT].cast("I") as rows:
            flat = rows.tolist()
        kinds = flat[1::SESSION_WORDS]
        addresses = zip(*(flat[i::SESSION_WORDS] for i in range(2, SESSION_WORDS)))
        per_ip = Counter(address_text(key) for kind, key in zip(kinds, addresses) if kind)
        return per_ip, kinds.count(LOGGED_IN)

    def write_detail(self, row: int, user: str, command: str, nbytes: int, rate: float,
                     last_active: float, connected: float = 0.0,
                     transfer: Optional[TransferFigures] = None) -> None:
        """Describe the session of ``row`` (its worker only)."""
        kind, expected, name = 0, -1, ""
        if transfer is not None:
            kind = (UPLOAD if transfer.upload else DOWNLOAD) | \
                (IN_FLIGHT if transfer.in_flight else 0)
            expected = -1 if transfer.expected is None else transfer.expected
            name = transfer.name
        DETAIL.pack_into(self._map, DETAILS_AT + row * DETAIL.size,
                          clip(user, USER_SIZE), clip(command, COMMAND_SIZE), nbytes, rate,
                          last_active, expected, connected, kind, clip(name, NAME_SIZE))

    def session_details(self) -> list[SessionDetail]:
        """Every live session of the server, in row order (read without the lock)."""
        with memoryview(self._map) as whole, whole[SESSIONS_AT:BANS_AT].cast("I") as rows:
            flat = rows.tolist()
        with memoryview(self._map) as whole, whole[INDEX_AT:CONTROL_AT].cast("I") as index:
            serials = index[SERIALS_BASE:SERIALS_BASE + SESSION_ROWS].tolist()
        with memoryview(self._map) as whole, \
                whole[CLIENTS_AT:CLIENTS_AT + SESSION_ROWS * CLIENT_SIZE].cast("I") as shown:
            clients = shown.tolist()
        found = []
        for row in range(SESSION_ROWS):
            at = row * SESSION_WORDS
            if not flat[at]:
                continue
            client = tuple(clients[row * 4:row * 4 + 4])
            if not any(client):
                client = tuple(flat[at + 2:at + 6])
            user, command, nbytes, rate, active, expected, connected, kind, name = \
                DETAIL.unpack_from(self._map, DETAILS_AT + row * DETAIL.size)
            transfer = TransferFigures(bool(kind & UPLOAD), bool(kind & IN_FLIGHT),
                                       unclip(name), None if expected < 0 else expected) \
                if kind else None
            found.append(SessionDetail(
                flat[at], flat[at + 1] == LOGGED_IN, address_text(client),
                unclip(user), unclip(command), nbytes, rate, active, serials[row], connected,
                transfer))
        return found

    # --- kicks asked for by the admin API

    def kick_epoch(self) -> int:
        """How many kicks were asked for so far (read without the lock: each worker's tick
        compares it with the one it last acted on)."""
        return struct.unpack_from("<I", self._map, INDEX_AT + 4 * _SessionIndex.KICKS)[0]

    def request_kick(self, serial: int) -> Optional[int]:
        """Ask the worker holding session ``serial`` to close it (421): return that worker's
        pid, None if no such session lives."""
        with self._sessions_and_index() as (rows, index):
            row = index.row_of(serial)
            if row is None:
                return None
            index.ask_kick(row)
            return rows[row * SESSION_WORDS]

    def kick_requested(self, row: int) -> bool:
        """True if the admin API asked to close the session of ``row`` (its worker's tick,
        once the kick epoch moved; read without the lock)."""
        with memoryview(self._map) as whole, whole[INDEX_AT:CONTROL_AT].cast("I") as index:
            serial = index[SERIALS_BASE + row]
            return bool(serial) and index[KICKS_BASE + row] == serial

    def has_session(self, serial: int) -> bool:
        """True while the session ``serial`` lives (read without the lock)."""
        with memoryview(self._map) as whole, whole[INDEX_AT:CONTROL_AT].cast("I") as index, \
                index[SERIALS_BASE:SERIALS_BASE + SESSION_ROWS] as serials:
            return bool(serial) and serial in serials.tolist()

    def serial_of(self, row: int) -> int:
        """The serial of the session of ``row`` (0: none)."""
        return struct.unpack_from("<I", self._map, INDEX_AT + 4 * (SERIALS_BASE + row))[0]


def _free_row(rows, index: _SessionIndex, row: int) -> None:
    at = row * SESSION_WORDS
    kind, key = rows[at + 1], tuple(rows[at + 2:at + SESSION_WORDS])
    rows[at:at + SESSION_WORDS] = array("I", bytes(SESSION_WORDS * 4))
    index.remove(key, kind)
    index.leave(row)
    index.give_row(row)
    index.forget_serial(row)


class _SessionIndex:
    """Counts, free rows and rows per address of the session table (see ``INDEX_AT``);
    used under the table's lock only."""

    _USED, _LOGGED_IN, _PENDING, _EVER, _FREE, _SERIAL, KICKS = range(COUNT_WORDS)

    def __init__(self, words) -> None:
        self._words = words
        self._addresses = _ProbeTable(words, ADDRESS_BASE, ADDRESS_SLOTS, ADDRESS_WORDS)
        self._accounts = _ProbeTable(words, ACCOUNT_BASE, ACCOUNT_SLOTS, ACCOUNT_WORDS)

    @property
    def full(self) -> bool:
        return self._words[self._USED] >= SESSION_ROWS

    @property
    def logged_in(self) -> int:
        return self._words[self._LOGGED_IN]

    @property
    def pending(self) -> int:
        return self._words[self._PENDING]

    def take_row(self) -> int:
        """A free row: the last freed, else one never used."""
        words = self._words
        if words[self._FREE]:
            words[self._FREE] -= 1
            return words[COUNT_WORDS + words[self._FREE]]
        words[self._EVER] += 1
        return words[self._EVER] - 1

    def give_row(self, row: int) -> None:
        self._words[COUNT_WORDS + self._words[self._FREE]] = row
        self._words[self._FREE] += 1

    def give_serial(self, row: int) -> None:
        """Name the new session of ``row``: the next serial (never 0, even after it wraps)."""
        words = self._words
        words[self._SERIAL] = words[self._SERIAL] % 0xFFFFFFFF + 1
        words[SERIALS_BASE + row] = words[self._SERIAL]
        words[KICKS_BASE + row] = 0

    def forget_serial(self, row: int) -> None:
        self._words[SERIALS_BASE + row] = self._words[KICKS_BASE + row] = 0

    def row_of(self, serial: int) -> Optional[int]:
        """The row of the live session ``serial``, None if there is none."""
        if not serial:
            return None
        with self._words[SERIALS_BASE:SERIALS_BASE + SESSION_ROWS] as serials:
            found = serials.tolist()
        return found.index(serial) if serial in found else None

    def ask_kick(self, row: int) -> None:
        self._words[KICKS_BASE + row] = self._words[SERIALS_BASE + row]
        self._words[self.KICKS] += 1

    def counts_of(self, key: Address) -> tuple[int, int]:
        """Rows, and pending rows, of the address ``key``."""
        at = self._addresses.find(key)
        return (self._words[at + 5], self._words[at + 6]) if self._words[at] else (0, 0)

    def add(self, key: Address, kind: int) -> None:
        at = self._addresses.find(key)
        words = self._words
        if not words[at]:
            words[at:at + ADDRESS_WORDS] = array("I", [1, *key, 0, 0])
        words[at + 5] += 1
        words[self._USED] += 1
        self._count(at, kind, 1)

    def moved(self, key: Address, was: int, now: int) -> None:
        """A row of ``key`` went from kind ``was`` to ``now`` (PENDING, LOGGED_IN)."""
        at = self._addresses.find(key)
        self._count(at, was, -1)
        self._count(at, now, 1)

    def remove(self, key: Address, kind: int) -> None:
        at = self._addresses.find(key)
        words = self._words
        if not words[at]:
            return
        words[self._USED] -= 1
        self._count(at, kind, -1)
        words[at + 5] -= 1
        if not words[at + 5]:
            self._addresses.delete(at)

    def _count(self, at: int, kind: int, step: int) -> None:
        if kind == PENDING:
            self._words[self._PENDING] += step
            self._words[at + 6] += step
        elif kind == LOGGED_IN:
            self._words[self._LOGGED_IN] += step

    # --- accounts: logged-in sessions and rate buckets, per account with a session here

    def account_sessions(self, account: AccountKey) -> int:
        at = self._accounts.find(account)
        return self._words[at + 5] if self._words[at] else 0

    def join(self, row: int, account: AccountKey) -> None:
        """The session of ``row`` logged in as ``account``."""
        words = self._words
        if words[KEPT] > ACCOUNT_SLOTS // 4:  # the table stays at most three quarters full
            self.sweep(0)
        at = self._accounts.find(account)
        if not words[at]:
            words[at:at + ACCOUNT_WORDS] = array("I", [1, *account, 0, *BUCKETS_UNUSED])
        elif not words[at + 5]:
            words[KEPT] -= 1
        words[at + 5] += 1
        mark = ROW_ACCOUNT_BASE + row * 4
        words[mark:mark + 4] = array("I", account)

    def leave(self, row: int) -> None:
        """The session of ``row`` is no longer logged in (if it was). The account's slot
        outlives its last session by ``KEEP_BUCKETS`` (``sweep``): logging out and in again
        must not bring a full bucket."""
        words, mark = self._words, ROW_ACCOUNT_BASE + row * 4
        account = tuple(words[mark:mark + 4])
        if not any(account):
            return
        words[mark:mark + 4] = array("I", bytes(16))
        at = self._accounts.find(account)
        if words[at]:
            words[at + 5] -= 1
            if not words[at + 5]:
                words[KEPT] += 1

    def sweep(self, idle: int) -> None:
        """Forget the slots of accounts with no session whose buckets were last used more
        than ``idle`` nanoseconds ago."""
        words = self._words
        if not words[KEPT]:
            return
        end = ACCOUNT_BASE + ACCOUNT_SLOTS * ACCOUNT_WORDS
        in_use = words[ACCOUNT_BASE:end:ACCOUNT_WORDS].tolist()
        sessions = words[ACCOUNT_BASE + 5:end:ACCOUNT_WORDS].tolist()
        before = time.monotonic_ns() - idle
        idle_keys = [tuple(words[at + 1:at + 5]) for at in
                     (ACCOUNT_BASE + slot * ACCOUNT_WORDS for slot, used in enumerate(in_use)
                      if used and not sessions[slot])]
        for key in idle_keys:  # by key: a deletion moves later slots back
            at = self._accounts.find(key)
            up, down = (INT64.unpack(words[b:b + 4].tobytes())[1] for b in (at + 6, at + 10))
            if words[at] and not words[at + 5] and max(up, down) < before:
                self._accounts.delete(at)
                words[KEPT] -= 1

    def take(self, account: AccountKey, bucket: int, rate: int, nbytes: int) -> float:
        """Take ``nbytes`` from the account's upload (0) or download (1) bucket; return the
        seconds to wait before they may go (see ``rates``). An account with no session here
        (a race with its last logout) waits for nothing."""
        at = self._accounts.find(account)
        if not self._words[at]:
            return 0.0
        at += 6 + 4 * bucket
        level, stamp = INT64.unpack(self._words[at:at + 4].tobytes())
        now = time.monotonic_ns()
        level, wait = rates.take(level, stamp, now, rate, nbytes)
        self._words[at:at + 4] = array("I", INT64.pack(level, now))
        return wait

    def accounts(self) -> dict[AccountKey, int]:
        """Logged-in sessions per account."""
        words, found = self._words, {}
        end = ACCOUNT_BASE + ACCOUNT_SLOTS * ACCOUNT_WORDS
        sessions = words[ACCOUNT_BASE + 5:end:ACCOUNT_WORDS].tolist()
        for slot in (s for s, count in enumerate(sessions) if count):
            at = ACCOUNT_BASE + slot * ACCOUNT_WORDS
            found[tuple(words[at + 1:at + 5])] = sessions[slot]
        return found


class _ProbeTable:
    """Open addressing with linear probing over ``slots`` slots of ``width`` words from word
    ``base`` of ``words``: a slot's first word says it is in use, the next four hold its
    key. Used under the session table's lock only."""

    def __init__(self, words, base: int, slots: int, width: int) -> None:
        self._words, self._base, self._slots, self._width = words, base, slots, width

    def _home(self, key: tuple[int, ...]) -> int:
        return hash(key) % self._slots  # ints hash alike in every process

    def find(self, key: tuple[int, ...]) -> int:
        """The word offset of ``key``'s slot, or of the empty slot where it would go."""
        words, slot = self._words, self._home(key)
        while True:
            at = self._base + slot * self._width
            if not words[at] or tuple(words[at + 1:at + 5]) == key:
                return at
            slot = (slot + 1) % self._slots

    def delete(self, at: int) -> None:
        """Empty the slot at word ``at``, moving later slots of its run back (linear
        probing keeps no tombstones this way)."""
        words, width = self._words, self._width
        hole = slot = (at - self._base) // width
        while True:
            slot = (slot + 1) % self._slots
            at = self._base + slot * width
            if not words[at]:
                break
            home = self._home(tuple(words[at + 1:at + 5]))
            if (hole < slot and hole < home <= slot) or (hole > slot and not
                                                         slot < home <= hole):
                continue  # it sits at or after its home, with no gap in between
            gap = self._base + hole * width
            words[gap:gap + width] = words[at:at + width]
            hole = slot
        gap = self._base + hole * width
        words[gap:gap + width] = array("I", bytes(width * 4))


def _refusal(limits: Limits, index: _SessionIndex, mine: tuple[int, int]) -> Optional[str]:
    """Why a new connection must be refused, given the table's counts and the rows (and
    pending rows) of its address, or None."""
    if index.full or (limits.logged_in and index.logged_in >= limits.logged_in):
        return TOO_MANY
    if limits.per_ip and mine[0] >= limits.per_ip:
        return TOO_MANY_PER_IP
    return _prelogin_refusal(limits, index, mine)


def _prelogin_refusal(limits: Limits, index: _SessionIndex,
                      mine: tuple[int, int]) -> Optional[str]:
    """Why one more connection not logged in must be refused, server-wide or for its
    address (with ``mine`` rows and pending rows), or None."""
    if limits.prelogin and index.pending >= limits.prelogin:
        return TOO_MANY_PRELOGIN
    return _address_refusal(limits, mine)


def _address_refusal(limits: Limits, mine: tuple[int, int]) -> Optional[str]:
    """Why one more connection of an address with ``mine`` rows (and pending rows) is over
    the per-address limits, or None."""
    if limits.per_ip and mine[0] >= limits.per_ip:
        return TOO_MANY_PER_IP
    if limits.prelogin_per_ip and mine[1] >= limits.prelogin_per_ip:
        return TOO_MANY_PRELOGIN_PER_IP
    return None
