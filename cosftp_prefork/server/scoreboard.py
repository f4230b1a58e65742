"""State shared by the master, its workers and ``cosftpctl status``: one small mapped file.

The master creates the file (beside the pid file) before forking; workers inherit the
mapping. It holds:

* a header: master pid, generation, start time, config path, listening ports;
* one slot per worker, written only by that worker (heartbeat, sessions, transfers, bytes)
  and cleared by the master when it reaps the worker;
* a session table (worker pid, logged in or not, client address, a serial number that names
  the session), so every connection limit holds for the whole server rather than per
  worker, with a table of the accounts logged in (their sessions, for ``max_sessions``, and
  their upload and download rate buckets, for ``max_*_rate``: every worker takes from the
  same bucket), and a table of failed logins and bans per client address, with a counter of
  its changes (a ban started, or lifted by ``cosftpctl unban``) and the change last saved to
  the bans file. Both are changed under POSIX record locks on the file, which the kernel
  releases if the holder dies, so a killed worker cannot wedge admissions; the master frees
  a dead worker's session rows when it reaps it;
* requests to the master and the workers from the admin API (``cosftp_prefork.admin``), which
  runs as a child of the master and shares the mapping: a session to close (its worker's tick
  sees the kick epoch move, closes it with 421 and clears the request), a reload to run (the
  master's loop takes it as a HUP), and the errors of the last reload.

Client addresses are stored whole (16 bytes, IPv4 as IPv4-mapped IPv6): never a hash two
addresses could share.

Bans outlive the state file: the master saves them to ``<pid file>.bans`` whenever the ban
table changed (a ban started or was lifted) and at exit, and loads the ones not yet expired at
start.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import ipaddress
import json
import mmap
import os
import struct
import threading
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Optional

from .. import rates
from ..config.model import MAX_WORKER_PROCESSES
from ..safefiles import PRIVATE_MODE, map_existing, open_fd, replace_file
from .usage import UsageTable, usage_path

# Exit status for "this worker cannot start with this config": not a crash to retry blindly.
EXIT_BOOT_FAILURE = 3
# Connections the kernel queues until a worker accepts them (capped by net.core.somaxconn);
# pyftpdlib listens again on the inherited socket, so the workers set it too. pyftpdlib's 100
# was too few for a burst: of 1,000 sockets one address opened at once, 635 were dropped by
# the kernel and never answered.
LISTEN_BACKLOG = 1024

MAGIC = b"CFTP"
# magic, version, master pid, generation, started, workers, reload count, last reload result
_HEADER = struct.Struct("<4sIiIdIII")
# after it: FTP port, implicit FTPS port (0: none), AUTH TLS offered (0/1), the master's
# state (its index in MASTER_STATES; not running: it stops and takes no reload)
_PORTS = struct.Struct("<HHBB")
RUNNING = "running"
# What ``cosftpctl status`` and the admin API show; the names of the master's stopping phases.
MASTER_STATES = (RUNNING, "stopping", "stopping gracefully")
_HEADER_SIZE = 64
_PATH_SIZE = 512
_SLOT = struct.Struct("<iiIIddIIIIQQ")
_SLOT_SIZE = 64
MAX_WORKER_SLOTS = 2 * MAX_WORKER_PROCESSES  # a reload runs two generations
SESSION_ROWS = 8192
_SESSION_WORDS = 6  # uint32s: pid (0: free row), PENDING or LOGGED_IN, client address (4)
PENDING, LOGGED_IN = 1, 2

BAN_ROWS = 1024
_BAN_WORDS = 8  # in use (1/0), client address (4), failures, window start, banned until
# Changes of the table (bans started or lifted) so far, the change last saved to the bans file
# (the master), then unused.
_BAN_HEADER_WORDS = 4

_SLOTS_AT = _HEADER_SIZE + _PATH_SIZE
_SESSIONS_AT = _SLOTS_AT + MAX_WORKER_SLOTS * _SLOT_SIZE
_BANS_AT = _SESSIONS_AT + SESSION_ROWS * _SESSION_WORDS * 4
_DETAILS_AT = _BANS_AT + (_BAN_HEADER_WORDS + BAN_ROWS * _BAN_WORDS) * 4
# Per session row, for ``cosftpctl sessions`` and the admin API: user, last command, bytes of
# the current (or last) transfer, its rate (bytes/s), time of the last command, time of the
# connection; the file transfer (0 none, else UPLOAD or DOWNLOAD, plus IN_FLIGHT while it
# runs), the bytes it should move (ALLO, the object's size; -1: not known) and its file name.
# Written by the session's worker (at admission and once a second), read without a lock: a
# display.
_DETAIL = struct.Struct("<32s48sQddqdB128s")
_USER_SIZE, _COMMAND_SIZE, _NAME_SIZE = 32, 48, 128
UPLOAD, DOWNLOAD, IN_FLIGHT = 1, 2, 4
_INDEX_AT = _DETAILS_AT + SESSION_ROWS * _DETAIL.size
# The session table's index, so that admitting a connection costs the same whatever the
# table's size: counts (rows in use, logged in, pending; rows ever used; free rows on the
# stack; the last session serial given; kick requests so far), the stack of freed rows, an
# open-addressing table of the addresses that have rows (in use (1/0), address (4), its rows,
# its pending rows), at most half full.
_COUNT_WORDS = 7
_ADDRESS_SLOTS = 2 * SESSION_ROWS
_ADDRESS_WORDS = 7
# Then, per session row, the account it logged in as (4 words, 0: none), the number of
# account slots kept with no session, and an open-addressing table of the accounts logged in
# here (in use, account (4), logged-in sessions, then the upload and the download rate
# buckets: level and stamp as int64 each).
ACCOUNT_SLOTS = 2 * SESSION_ROWS
_ACCOUNT_WORDS = 14
# Last, per session row, its session's serial and the serial a kick request names (0:
# none).
_INDEX_WORDS = _COUNT_WORDS + SESSION_ROWS + _ADDRESS_SLOTS * _ADDRESS_WORDS + \
    SESSION_ROWS * 4 + 1 + ACCOUNT_SLOTS * _ACCOUNT_WORDS + SESSION_ROWS * 2
KEEP_BUCKETS = 10 * rates.NS  # how long an account's buckets outlive its last session
_CONTROL_AT = _INDEX_AT + _INDEX_WORDS * 4
# Reloads asked for by the admin API, and the last one the master took; then the errors of
# the last reload (UTF-8, NUL-padded), written by the master.
_CONTROL = struct.Struct("<II")
_RELOAD_ERROR_SIZE = 2048
FILE_SIZE = _CONTROL_AT + _CONTROL.size + _RELOAD_ERROR_SIZE

STATES = {0: "free", 1: "starting", 2: "serving", 3: "draining", 4: "aborting"}
STARTING, SERVING, DRAINING, ABORTING = 1, 2, 3, 4
_STATE_AT = struct.calcsize("<iiI")  # a slot's state follows its pid, index and generation
_SESSIONS_COUNT_AT = struct.calcsize("<iiIIdd")  # then started and heartbeat, then sessions
RELOAD_NONE, RELOAD_RUNNING, RELOAD_OK, RELOAD_FAILED = 0, 1, 2, 3
# A worker's view of [CLUSTER] redis_url: none configured (or not asked yet), reachable,
# unreachable and serving on the local scoreboard, unreachable and refusing new connections,
# reachable but answering errors lately, too old (or its version unreadable) and serving on
# the local scoreboard or refusing new connections.
CLUSTER_NONE, CLUSTER_UP, CLUSTER_DOWN_OPEN, CLUSTER_DOWN_CLOSED = 0, 1, 2, 3
CLUSTER_ERRORS, CLUSTER_UNSUPPORTED_OPEN, CLUSTER_UNSUPPORTED_CLOSED = 4, 5, 6


@dataclass(frozen=True)
class WorkerStatus:
    """A snapshot of one worker slot."""

    slot: int
    pid: int
    index: int
    generation: int
    state: str
    started: float
    heartbeat: float  # time.time() of the worker's last tick; 0.0 before the first
    sessions: int
    uploads: int
    downloads: int
    bytes_up: int
    bytes_down: int
    cluster: int = CLUSTER_NONE  # CLUSTER_*: how this worker reaches the shared Redis


@dataclass(frozen=True)
class TransferFigures:
    """The file transfer of a session, as its worker describes it: its direction, whether
    it still runs, its file's name (what the client sent) and the bytes it should move
    (``ALLO``'s size, what is left of the object from the ``REST`` offset; None: unknown)."""

    upload: bool
    in_flight: bool
    name: str
    expected: Optional[int]


@dataclass(frozen=True)
class SessionDetail:
    """One live session, as ``cosftpctl sessions`` shows it. ``user``, ``command`` and the
    transfer's name are what the client sent (truncated): escape them before printing.
    ``serial`` names the session for as long as it lives (the admin API's session id)."""

    pid: int
    logged_in: bool
    client: str
    user: str
    command: str
    nbytes: int
    rate: float
    last_active: float
    serial: int = 0
    connected: float = 0.0
    transfer: Optional[TransferFigures] = None


@dataclass(frozen=True)
class BanRow:
    """One address of the ban table: its failed logins in the window that began at ``since``,
    and the end of its ban (0: none yet; in the past: ran out). Times in whole seconds."""

    address: str
    failures: int
    since: int
    until: int


@dataclass(frozen=True)
class MasterStatus:
    pid: int
    generation: int
    started: float
    worker_count: int
    config_path: str
    reloads: int = 0
    reload_result: int = RELOAD_NONE
    ftp_port: int = 0
    implicit_tls_port: int = 0
    auth_tls: bool = False
    state: str = RUNNING  # one of MASTER_STATES

    @property
    def stopping(self) -> bool:
        return self.state != RUNNING


def state_path(pid_file: str) -> str:
    """The state file lives beside the pid file, so whoever finds one finds the other."""
    return pid_file + ".state"


def bans_path(pid_file: str) -> str:
    """Bans are saved beside the pid file, so ``stop``/``start`` keeps them."""
    return pid_file + ".bans"


Address = tuple[int, int, int, int]
AccountKey = tuple[int, int, int, int]


def account_key(user: str) -> AccountKey:
    """An account (its login name) as four uint32s: a 128-bit BLAKE2b digest, so that names
    of any length fit a slot and two names never share one in practice."""
    digest = hashlib.blake2b(user.encode("utf-8", "surrogateescape"), digest_size=16)
    return tuple(array("I", digest.digest()))  # type: ignore[return-value]


def account_text(key: AccountKey) -> str:
    """The digest as hex: how the nodes of a cluster name the account to each other."""
    return array("I", key).tobytes().hex()


def address_key(ip: str) -> Address:
    """The exact client address as four uint32s: IPv6 as is, IPv4 as IPv4-mapped IPv6 (so
    ``1.2.3.4`` and ``::ffff:1.2.3.4`` from a dual-stack socket are one client)."""
    address = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv4Address):
        address = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + address.packed)
    return tuple(array("I", address.packed))  # type: ignore[return-value]


def address_text(key: Address) -> str:
    """The address ``key`` stands for, IPv4 written as IPv4."""
    address = ipaddress.IPv6Address(array("I", key).tobytes())
    return str(address.ipv4_mapped or address)


@dataclass(frozen=True)
class Limits:
    """Connection limits, each 0 for none; all hold for the whole server."""

    logged_in: int = 0  # max_connection_num: sessions that logged in
    per_ip: int = 0  # max_connections_per_ip: every connection of one address
    prelogin: int = 0  # max_prelogin_connections: connections not logged in yet
    prelogin_per_ip: int = 0  # max_prelogin_connections_per_ip


TOO_MANY = "Too many connections. Service temporarily unavailable."
TOO_MANY_PER_IP = "Too many connections from the same IP address."
TOO_MANY_PRELOGIN = "Too many connections waiting to log in; try again later."
TOO_MANY_PRELOGIN_PER_IP = "Too many connections from your address waiting to log in."
TOO_MANY_LOGGED_IN = "Too many users logged in; try again later."
TOO_MANY_SESSIONS = "Too many sessions of this account; try again later."


@dataclass(frozen=True)
class Seat:
    """A login as ``account``, which may have ``limit`` logged-in sessions here (0: any)."""

    account: AccountKey
    limit: int = 0


class SharedState:
    """The mapped state file. Create it with :meth:`create`, read it with :meth:`open`.

    ``usage``: the quotas' usage (``server.usage``), a second mapped file made with this one
    (None in a state opened by ``cosftpctl``, which opens it itself when it needs it)."""

    usage: Optional[UsageTable] = None

    def __init__(self, path: str, fd: int, mapping: mmap.mmap) -> None:
        self.path = path
        self._fd = fd
        self._map = mapping
        self._thread_lock = threading.Lock()

    @classmethod
    def create(cls, path: str) -> SharedState:
        """Create (or reset) the state file at ``path``, owner and group only (it names users
        and client addresses), and map it shared. Raises ``UnsafeFileError`` for a link at
        ``path``."""
        fd = open_fd(path, os.O_RDWR | os.O_CREAT, PRIVATE_MODE)
        try:
            os.fchmod(fd, PRIVATE_MODE)  # a file left by an older version may be 0644
            os.ftruncate(fd, 0)
            os.ftruncate(fd, FILE_SIZE)
            state = cls(path, fd, mmap.mmap(fd, FILE_SIZE, mmap.MAP_SHARED))
            state.usage = UsageTable.create(usage_path(path))
            return state
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def open(cls, path: str, writable: bool = False) -> Optional[SharedState]:
        """Map an existing state file, read-only unless ``writable`` (``cosftpctl unban``);
        None if it is absent or not ours. ``writable`` raises ``PermissionError`` if this
        user may not write it."""
        found = map_existing(path, FILE_SIZE, MAGIC, writable)
        return None if found is None else cls(path, *found)

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)

    # --- header (master)

    def write_header(self, status: MasterStatus) -> None:
        self._map[:_HEADER.size] = _HEADER.pack(
            MAGIC, 1, status.pid, status.generation, status.started, status.worker_count,
            status.reloads, status.reload_result)
        _PORTS.pack_into(self._map, _HEADER.size, status.ftp_port, status.implicit_tls_port,
                         status.auth_tls, MASTER_STATES.index(status.state))
        path = status.config_path.encode("utf-8")[: _PATH_SIZE - 1]
        self._map[_HEADER_SIZE:_SLOTS_AT] = path.ljust(_PATH_SIZE, b"\0")

    def master(self) -> MasterStatus:
        _, _, pid, generation, started, workers, reloads, result = _HEADER.unpack_from(
            self._map, 0)
        path = bytes(self._map[_HEADER_SIZE:_SLOTS_AT]).split(b"\0", 1)[0].decode("utf-8")
        ftp_port, implicit_port, auth_tls, state = _PORTS.unpack_from(self._map, _HEADER.size)
        return MasterStatus(pid, generation, started, workers, path, reloads, result, ftp_port,
                            implicit_port, bool(auth_tls),
                            MASTER_STATES[state] if state < len(MASTER_STATES) else "?")

    # --- worker slots

    def free_slot(self) -> int:
        """Return the number of an unused worker slot (master only). Raises ``OSError``
        (ENOSPC) if every slot is taken: old generations' workers still draining their
        transfers hold theirs, and the master tries again later, as after a failed fork."""
        for slot in range(MAX_WORKER_SLOTS):
            if _SLOT.unpack_from(self._map, self._slot_at(slot))[0] == 0:
                return slot
        raise OSError(errno.ENOSPC, f"all {MAX_WORKER_SLOTS} worker slots of the state file "
                      "are taken (workers of older generations still draining)")

    def write_slot(self, slot: int, pid: int, index: int, generation: int, state: int,
                   started: float, heartbeat: float, counters: tuple[int, ...],
                   cluster: int = CLUSTER_NONE) -> None:
        """Write a whole slot; ``counters`` = sessions, uploads, downloads, bytes up, down."""
        sessions, uploads, downloads, up, down = counters
        _SLOT.pack_into(self._map, self._slot_at(slot), pid, index, generation, state, started,
                        heartbeat, sessions, uploads, downloads, cluster, up, down)

    def set_state(self, slot: int, state: int) -> None:
        """Change a slot's state only: the master marks a hung worker it is aborting."""
        struct.pack_into("<I", self._map, self._slot_at(slot) + _STATE_AT, state)

    def set_sessions(self, slot: int, sessions: int) -> None:
        """Change a slot's session count only: its worker, as each session starts or ends,
        so that the workers balancing their load read it fresh and at no scan's cost."""
        struct.pack_into("<I", self._map, self._slot_at(slot) + _SESSIONS_COUNT_AT, sessions)

    def clear_slot(self, slot: int) -> None:
        at = self._slot_at(slot)
        self._map[at:at + _SLOT_SIZE] = bytes(_SLOT_SIZE)

    def workers(self) -> list[WorkerStatus]:
        """Snapshots of every slot in use."""
        found = []
        for slot in range(MAX_WORKER_SLOTS):
            values = _SLOT.unpack_from(self._map, self._slot_at(slot))
            if values[0]:
                pid, index, gen, state, started, beat, sess, up_n, down_n, cluster, up, \
                    down = values
                found.append(WorkerStatus(slot, pid, index, gen, STATES.get(state, "?"),
                                          started, beat, sess, up_n, down_n, up, down,
                                          cluster))
        return found

    @staticmethod
    def _slot_at(slot: int) -> int:
        return _SLOTS_AT + slot * _SLOT_SIZE

    # --- session table

    @contextmanager
    def _locked(self, start: int, end: int, wait: bool = True):
        """Lock bytes ``start:end`` of the file (threads and processes); yield them as
        uint32s. Without ``wait``, raise ``BlockingIOError`` at once if they are held."""
        if not self._thread_lock.acquire(blocking=wait):
            raise BlockingIOError("the state file is held by another thread")
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB,
                        end - start, start)
        except OSError as exc:
            self._thread_lock.release()
            if not wait and exc.errno in (errno.EACCES, errno.EAGAIN):  # lockf(3) says either
                raise BlockingIOError("the state file is held by another process") from exc
            raise
        try:
            whole = memoryview(self._map)
            rows = whole[start:end].cast("I")
            try:
                yield rows
            finally:
                rows.release()
                whole.release()
                fcntl.lockf(self._fd, fcntl.LOCK_UN, end - start, start)
        finally:
            self._thread_lock.release()

    # --- failed logins and bans

    def _bans_locked(self):
        return self._locked(_BANS_AT, _DETAILS_AT)

    def ban_epoch(self) -> int:
        """How many times the ban table changed so far: bans started and lifted (read
        without the lock: a change is what counts)."""
        return struct.unpack_from("<I", self._map, _BANS_AT)[0]

    def saved_ban_epoch(self) -> int:
        """The :meth:`ban_epoch` the master last saved to the bans file."""
        return struct.unpack_from("<I", self._map, _BANS_AT + 4)[0]

    def note_bans_saved(self, epoch: int) -> None:
        """The master saved the bans of ``epoch`` (it alone writes this word)."""
        struct.pack_into("<I", self._map, _BANS_AT + 4, epoch)

    def ban_rows(self) -> list[BanRow]:
        """Every address the ban table holds (read without the lock: a display)."""
        with memoryview(self._map) as whole, \
                whole[_BANS_AT:_DETAILS_AT].cast("I") as words:
            flat = words[_BAN_HEADER_WORDS:].tolist()
        return [_ban_row_of(flat, at) for at in range(0, len(flat), _BAN_WORDS) if flat[at]]

    def lift(self, which: Callable[[BanRow], bool]) -> list[BanRow]:
        """Forget the ban and the failed logins of every address for which ``which`` is
        true; return what was forgotten. Moves the epoch, so each worker reads its copy of
        the table again (at its next accept) and the master saves the bans file."""
        lifted = []
        with self._bans_locked() as words:
            flat = words[_BAN_HEADER_WORDS:].tolist()
            for at in range(0, len(flat), _BAN_WORDS):
                row = _ban_row_of(flat, at) if flat[at] else None
                if row is not None and which(row):
                    start = _BAN_HEADER_WORDS + at
                    words[start:start + _BAN_WORDS] = array("I", bytes(_BAN_WORDS * 4))
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
        with self._bans_locked() as words:
            flat = words[_BAN_HEADER_WORDS:].tolist()
        return [(tuple(flat[at + 1:at + 5]), flat[at + 7])
                for at in range(0, len(flat), _BAN_WORDS)
                if flat[at] and flat[at + 7] > now]

    def record_failure(self, ip: str, now: float, limit: int, window: int, ban: int) -> bool:
        """Count a failed login from ``ip``; return True if that earns it a ban."""
        wanted, stamp = address_key(ip), int(now)
        with self._bans_locked() as words:
            flat = words[_BAN_HEADER_WORDS:].tolist()
            at = self._ban_row(flat, wanted) * _BAN_WORDS
            ours = bool(flat[at]) and tuple(flat[at + 1:at + 5]) == wanted
            failures, started, previous_ban = flat[at + 5:at + 8] if ours else (0, stamp, 0)
            if stamp - started > window:
                failures, started = 0, stamp
            failures += 1
            banned = failures >= limit
            until = stamp + ban if banned else previous_ban
            self._write_ban(words, at, wanted, failures, started, until)
            if banned and previous_ban <= stamp:
                words[0] += 1
            return banned

    def ban(self, ip: str, until: int) -> None:
        """Ban ``ip`` until ``until`` (the admin API), keeping the failed logins its row
        counts; moves the epoch as a ban earned by failed logins does."""
        key = address_key(ip)
        with self._bans_locked() as words:
            flat = words[_BAN_HEADER_WORDS:].tolist()
            at = self._ban_row(flat, key) * _BAN_WORDS
            ours = bool(flat[at]) and tuple(flat[at + 1:at + 5]) == key
            failures, since = flat[at + 5:at + 7] if ours else (0, 0)
            self._write_ban(words, at, key, failures, since, until)
            words[0] += 1

    def restore_bans(self, bans: Iterable[tuple[str, int]], now: float) -> int:
        """Put saved bans back (master, at start); return how many still run. They carry
        no failure window: what a row holds that is newer than an unban made elsewhere
        in the cluster meanwhile is its ban only (``Gate``)."""
        restored = 0
        with self._bans_locked() as words:
            for ip, until in bans:
                if until <= now:
                    continue
                flat = words[_BAN_HEADER_WORDS:].tolist()
                key = address_key(ip)
                self._write_ban(words, self._ban_row(flat, key) * _BAN_WORDS, key, 0, 0,
                                int(until))
                restored += 1
            words[0] += 1 if restored else 0
        return restored

    @staticmethod
    def _write_ban(words, at: int, key: Address, failures: int, started: int,
                   until: int) -> None:
        at += _BAN_HEADER_WORDS
        words[at:at + _BAN_WORDS] = array("I", [1, *key, failures, started, until])

    @staticmethod
    def _ban_row(flat: list[int], wanted: Address) -> int:
        """The row of ``wanted``, else a free row, else the one with the oldest news."""
        rows = range(len(flat) // _BAN_WORDS)
        for row in rows:
            at = row * _BAN_WORDS
            if flat[at] and tuple(flat[at + 1:at + 5]) == wanted:
                return row
        return min(rows, key=lambda r: flat[r * _BAN_WORDS] and
                   max(flat[r * _BAN_WORDS + 6], flat[r * _BAN_WORDS + 7]))

    # --- session table

    def _sessions_locked(self, wait: bool = True):
        return self._locked(_SESSIONS_AT, _BANS_AT, wait)

    @contextmanager
    def _sessions_and_index(self, wait: bool = True):
        """The session rows and their index, both under the session table's lock (without
        ``wait``: ``BlockingIOError`` if it is held)."""
        with self._sessions_locked(wait) as rows, memoryview(self._map) as whole, \
                whole[_INDEX_AT:_CONTROL_AT].cast("I") as index:
            yield rows, _SessionIndex(index)

    def admit(self, pid: int, ip: str, limits: Limits) -> tuple[Optional[int], Optional[str]]:
        """Record a connection from ``ip`` not logged in yet: return its row, or why it must
        be refused. Costs the same however many rows the table has."""
        wanted = address_key(ip)
        with self._sessions_and_index() as (rows, index):
            reason = _refusal(limits, index, index.counts_of(wanted))
            if reason is not None:
                return None, reason
            row = index.take_row()
            at = row * _SESSION_WORDS
            rows[at:at + _SESSION_WORDS] = array("I", [pid, PENDING, *wanted])
            index.add(wanted, PENDING)
            index.give_serial(row)
            return row, None

    def move(self, row: int, pid: int, ip: str, limits: Limits) -> Optional[str]:
        """Count the pending connection of ``row`` under ``ip`` instead of its address now
        (a balancer's, until its PROXY header named the client); return why not if ``ip`` is
        over its per-address limits (the row stays as it was). The server-wide counts do
        not change: it is the same connection. A row no longer pending is left alone."""
        wanted = address_key(ip)
        with self._sessions_and_index() as (rows, index):
            at = row * _SESSION_WORDS
            if rows[at] != pid or rows[at + 1] != PENDING:
                return None
            reason = _address_refusal(limits, index.counts_of(wanted))
            if reason is None:
                index.remove(tuple(rows[at + 2:at + _SESSION_WORDS]), PENDING)
                rows[at + 2:at + _SESSION_WORDS] = array("I", wanted)
                index.add(wanted, PENDING)
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
            at = row * _SESSION_WORDS
            if rows[at] == pid and rows[at + 1] == PENDING:
                rows[at + 1] = LOGGED_IN
                index.moved(tuple(rows[at + 2:at + _SESSION_WORDS]), PENDING, LOGGED_IN)
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
            at = row * _SESSION_WORDS
            if rows[at] != pid or rows[at + 1] != LOGGED_IN:
                return None
            key = tuple(rows[at + 2:at + _SESSION_WORDS])
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
            if rows[row * _SESSION_WORDS] == pid:
                _free_row(rows, index, row)

    def release_all(self, pid: int) -> int:
        """Forget every session of a dead worker; return how many there were."""
        with self._sessions_and_index() as (rows, index):
            pids = rows[0::_SESSION_WORDS].tolist()
            freed = 0
            for row, owner in enumerate(pids):
                if owner == pid:
                    _free_row(rows, index, row)
                    freed += 1
            return freed

    def login_counts(self) -> dict[int, tuple[int, int]]:
        """Per worker pid: its sessions logged in and its connections waiting to log in
        (read without the lock: a display)."""
        with memoryview(self._map) as whole, whole[_SESSIONS_AT:_BANS_AT].cast("I") as rows:
            flat = rows.tolist()
        counts: dict[int, tuple[int, int]] = {}
        for pid, kind in zip(flat[0::_SESSION_WORDS], flat[1::_SESSION_WORDS]):
            if pid:
                logged_in, pending = counts.get(pid, (0, 0))
                counts[pid] = (logged_in + (kind == LOGGED_IN), pending + (kind == PENDING))
        return counts

    def node_counts(self) -> tuple[Counter, int]:
        """Connections per client address and logged-in sessions of this server, read
        without the lock (a snapshot is enough)."""
        with memoryview(self._map) as whole, whole[_SESSIONS_AT:_BANS_AT].cast("I") as rows:
            flat = rows.tolist()
        kinds = flat[1::_SESSION_WORDS]
        addresses = zip(*(flat[i::_SESSION_WORDS] for i in range(2, _SESSION_WORDS)))
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
        _DETAIL.pack_into(self._map, _DETAILS_AT + row * _DETAIL.size,
                          _clip(user, _USER_SIZE), _clip(command, _COMMAND_SIZE), nbytes, rate,
                          last_active, expected, connected, kind, _clip(name, _NAME_SIZE))

    def session_details(self) -> list[SessionDetail]:
        """Every live session of the server, in row order (read without the lock)."""
        with memoryview(self._map) as whole, whole[_SESSIONS_AT:_BANS_AT].cast("I") as rows:
            flat = rows.tolist()
        with memoryview(self._map) as whole, whole[_INDEX_AT:_CONTROL_AT].cast("I") as index:
            serials = index[_SERIALS_BASE:_SERIALS_BASE + SESSION_ROWS].tolist()
        found = []
        for row in range(SESSION_ROWS):
            at = row * _SESSION_WORDS
            if not flat[at]:
                continue
            user, command, nbytes, rate, active, expected, connected, kind, name = \
                _DETAIL.unpack_from(self._map, _DETAILS_AT + row * _DETAIL.size)
            transfer = TransferFigures(bool(kind & UPLOAD), bool(kind & IN_FLIGHT),
                                       _unclip(name), None if expected < 0 else expected) \
                if kind else None
            found.append(SessionDetail(
                flat[at], flat[at + 1] == LOGGED_IN, address_text(tuple(flat[at + 2:at + 6])),
                _unclip(user), _unclip(command), nbytes, rate, active, serials[row], connected,
                transfer))
        return found

    # --- requests of the admin API

    def kick_epoch(self) -> int:
        """How many kicks were asked for so far (read without the lock: each worker's tick
        compares it with the one it last acted on)."""
        return struct.unpack_from("<I", self._map, _INDEX_AT + 4 * _SessionIndex.KICKS)[0]

    def request_kick(self, serial: int) -> Optional[int]:
        """Ask the worker holding session ``serial`` to close it (421): return that worker's
        pid, None if no such session lives."""
        with self._sessions_and_index() as (rows, index):
            row = index.row_of(serial)
            if row is None:
                return None
            index.ask_kick(row)
            return rows[row * _SESSION_WORDS]

    def kick_requested(self, row: int) -> bool:
        """True if the admin API asked to close the session of ``row`` (its worker's tick,
        once the kick epoch moved; read without the lock)."""
        with memoryview(self._map) as whole, whole[_INDEX_AT:_CONTROL_AT].cast("I") as index:
            serial = index[_SERIALS_BASE + row]
            return bool(serial) and index[_KICKS_BASE + row] == serial

    def has_session(self, serial: int) -> bool:
        """True while the session ``serial`` lives (read without the lock)."""
        with memoryview(self._map) as whole, whole[_INDEX_AT:_CONTROL_AT].cast("I") as index, \
                index[_SERIALS_BASE:_SERIALS_BASE + SESSION_ROWS] as serials:
            return bool(serial) and serial in serials.tolist()

    def serial_of(self, row: int) -> int:
        """The serial of the session of ``row`` (0: none)."""
        return struct.unpack_from("<I", self._map, _INDEX_AT + 4 * (_SERIALS_BASE + row))[0]

    def request_reload(self) -> int:
        """Ask the master for a reload (the admin API, one request at a time): return the
        request's number, which :meth:`reload_taken` reaches once the master ran it."""
        asked, taken = _CONTROL.unpack_from(self._map, _CONTROL_AT)
        _CONTROL.pack_into(self._map, _CONTROL_AT, asked + 1, taken)
        return asked + 1

    def reload_asked(self) -> int:
        return _CONTROL.unpack_from(self._map, _CONTROL_AT)[0]

    def reload_taken(self) -> int:
        return _CONTROL.unpack_from(self._map, _CONTROL_AT)[1]

    def note_reload_taken(self, number: int) -> None:
        """The master ran the reload request ``number`` (it alone writes this word)."""
        struct.pack_into("<I", self._map, _CONTROL_AT + 4, number)

    def write_reload_error(self, text: str) -> None:
        """Why the last reload failed ("": it did not), for ``status`` (the master)."""
        at = _CONTROL_AT + _CONTROL.size
        self._map[at:at + _RELOAD_ERROR_SIZE] = _clip(text, _RELOAD_ERROR_SIZE - 1).ljust(
            _RELOAD_ERROR_SIZE, b"\0")

    def reload_error(self) -> str:
        at = _CONTROL_AT + _CONTROL.size
        return _unclip(bytes(self._map[at:at + _RELOAD_ERROR_SIZE]))


def _ban_row_of(flat: list[int], at: int) -> BanRow:
    return BanRow(address_text(tuple(flat[at + 1:at + 5])), *flat[at + 5:at + 8])


def _free_row(rows, index: _SessionIndex, row: int) -> None:
    at = row * _SESSION_WORDS
    kind, key = rows[at + 1], tuple(rows[at + 2:at + _SESSION_WORDS])
    rows[at:at + _SESSION_WORDS] = array("I", bytes(_SESSION_WORDS * 4))
    index.remove(key, kind)
    index.leave(row)
    index.give_row(row)
    index.forget_serial(row)


class _SessionIndex:
    """Counts, free rows and rows per address of the session table (see ``_INDEX_AT``);
    used under the table's lock only."""

    _USED, _LOGGED_IN, _PENDING, _EVER, _FREE, _SERIAL, KICKS = range(_COUNT_WORDS)

    def __init__(self, words) -> None:
        self._words = words
        self._addresses = _ProbeTable(words, _ADDRESS_BASE, _ADDRESS_SLOTS, _ADDRESS_WORDS)
        self._accounts = _ProbeTable(words, _ACCOUNT_BASE, ACCOUNT_SLOTS, _ACCOUNT_WORDS)

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
            return words[_COUNT_WORDS + words[self._FREE]]
        words[self._EVER] += 1
        return words[self._EVER] - 1

    def give_row(self, row: int) -> None:
        self._words[_COUNT_WORDS + self._words[self._FREE]] = row
        self._words[self._FREE] += 1

    def give_serial(self, row: int) -> None:
        """Name the new session of ``row``: the next serial (never 0, even after it wraps)."""
        words = self._words
        words[self._SERIAL] = words[self._SERIAL] % 0xFFFFFFFF + 1
        words[_SERIALS_BASE + row] = words[self._SERIAL]
        words[_KICKS_BASE + row] = 0

    def forget_serial(self, row: int) -> None:
        self._words[_SERIALS_BASE + row] = self._words[_KICKS_BASE + row] = 0

    def row_of(self, serial: int) -> Optional[int]:
        """The row of the live session ``serial``, None if there is none."""
        if not serial:
            return None
        with self._words[_SERIALS_BASE:_SERIALS_BASE + SESSION_ROWS] as serials:
            found = serials.tolist()
        return found.index(serial) if serial in found else None

    def ask_kick(self, row: int) -> None:
        self._words[_KICKS_BASE + row] = self._words[_SERIALS_BASE + row]
        self._words[self.KICKS] += 1

    def counts_of(self, key: Address) -> tuple[int, int]:
        """Rows, and pending rows, of the address ``key``."""
        at = self._addresses.find(key)
        return (self._words[at + 5], self._words[at + 6]) if self._words[at] else (0, 0)

    def add(self, key: Address, kind: int) -> None:
        at = self._addresses.find(key)
        words = self._words
        if not words[at]:
            words[at:at + _ADDRESS_WORDS] = array("I", [1, *key, 0, 0])
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
        if words[_KEPT] > ACCOUNT_SLOTS // 4:  # the table stays at most three quarters full
            self.sweep(0)
        at = self._accounts.find(account)
        if not words[at]:
            words[at:at + _ACCOUNT_WORDS] = array("I", [1, *account, 0, *_BUCKETS_UNUSED])
        elif not words[at + 5]:
            words[_KEPT] -= 1
        words[at + 5] += 1
        mark = _ROW_ACCOUNT_BASE + row * 4
        words[mark:mark + 4] = array("I", account)

    def leave(self, row: int) -> None:
        """The session of ``row`` is no longer logged in (if it was). The account's slot
        outlives its last session by ``KEEP_BUCKETS`` (``sweep``): logging out and in again
        must not bring a full bucket."""
        words, mark = self._words, _ROW_ACCOUNT_BASE + row * 4
        account = tuple(words[mark:mark + 4])
        if not any(account):
            return
        words[mark:mark + 4] = array("I", bytes(16))
        at = self._accounts.find(account)
        if words[at]:
            words[at + 5] -= 1
            if not words[at + 5]:
                words[_KEPT] += 1

    def sweep(self, idle: int) -> None:
        """Forget the slots of accounts with no session whose buckets were last used more
        than ``idle`` nanoseconds ago."""
        words = self._words
        if not words[_KEPT]:
            return
        end = _ACCOUNT_BASE + ACCOUNT_SLOTS * _ACCOUNT_WORDS
        in_use = words[_ACCOUNT_BASE:end:_ACCOUNT_WORDS].tolist()
        sessions = words[_ACCOUNT_BASE + 5:end:_ACCOUNT_WORDS].tolist()
        before = time.monotonic_ns() - idle
        idle_keys = [tuple(words[at + 1:at + 5]) for at in
                     (_ACCOUNT_BASE + slot * _ACCOUNT_WORDS for slot, used in enumerate(in_use)
                      if used and not sessions[slot])]
        for key in idle_keys:  # by key: a deletion moves later slots back
            at = self._accounts.find(key)
            up, down = (_INT64.unpack(words[b:b + 4].tobytes())[1] for b in (at + 6, at + 10))
            if words[at] and not words[at + 5] and max(up, down) < before:
                self._accounts.delete(at)
                words[_KEPT] -= 1

    def take(self, account: AccountKey, bucket: int, rate: int, nbytes: int) -> float:
        """Take ``nbytes`` from the account's upload (0) or download (1) bucket; return the
        seconds to wait before they may go (see ``rates``). An account with no session here
        (a race with its last logout) waits for nothing."""
        at = self._accounts.find(account)
        if not self._words[at]:
            return 0.0
        at += 6 + 4 * bucket
        level, stamp = _INT64.unpack(self._words[at:at + 4].tobytes())
        now = time.monotonic_ns()
        level, wait = rates.take(level, stamp, now, rate, nbytes)
        self._words[at:at + 4] = array("I", _INT64.pack(level, now))
        return wait

    def accounts(self) -> dict[AccountKey, int]:
        """Logged-in sessions per account."""
        words, found = self._words, {}
        end = _ACCOUNT_BASE + ACCOUNT_SLOTS * _ACCOUNT_WORDS
        sessions = words[_ACCOUNT_BASE + 5:end:_ACCOUNT_WORDS].tolist()
        for slot in (s for s, count in enumerate(sessions) if count):
            at = _ACCOUNT_BASE + slot * _ACCOUNT_WORDS
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


_ADDRESS_BASE = _COUNT_WORDS + SESSION_ROWS
_ROW_ACCOUNT_BASE = _ADDRESS_BASE + _ADDRESS_SLOTS * _ADDRESS_WORDS
_KEPT = _ROW_ACCOUNT_BASE + SESSION_ROWS * 4  # slots of accounts with no session
_ACCOUNT_BASE = _KEPT + 1
# An account slot's two buckets, upload then download: level, stamp (int64 each).
_INT64 = struct.Struct("<qq")
_BUCKETS_UNUSED = array("I", _INT64.pack(rates.EMPTY, 0) * 2)
_SERIALS_BASE = _ACCOUNT_BASE + ACCOUNT_SLOTS * _ACCOUNT_WORDS
_KICKS_BASE = _SERIALS_BASE + SESSION_ROWS


def _clip(text: str, size: int) -> bytes:
    """``text`` as UTF-8 in at most ``size`` bytes, cut on a character boundary."""
    return text.encode("utf-8", "replace")[:size].decode("utf-8", "ignore").encode("utf-8")


def _unclip(raw: bytes) -> str:
    return raw.rstrip(b"\0").decode("utf-8", "replace")


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


def save_bans(path: str, bans: list[tuple[str, int]]) -> None:
    """Write ``bans`` to ``path`` atomically, readable by the owner only."""
    entries = [{"address": ip, "until": until} for ip, until in bans]
    replace_file(path, json.dumps({"bans": entries}).encode("ascii"), 0o600)


@dataclass(frozen=True)
class SavedBans:
    """What a bans file held: the valid bans, and a description of each entry that was not
    one (its position and why, the value quoted and cut short)."""

    bans: list[tuple[str, int]]
    rejected: list[str]


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
            entries = json.load(handle)["bans"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not a bans file ({type(exc).__name__})") from None
    if not isinstance(entries, list):
        raise ValueError("not a bans file (no list of bans)")
    saved = SavedBans([], [])
    for number, entry in enumerate(entries, 1):
        try:
            saved.bans.append(_saved_ban(entry))
        except ValueError as exc:
            saved.rejected.append(f"entry {number} {_quoted(entry)}: {exc}")
    return saved


def _saved_ban(entry: object) -> tuple[str, int]:
    """``(address, until)`` from one entry of a bans file; ``ValueError`` saying what is
    wrong with it."""
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
    return address, until


def _quoted(value: object, limit: int = 80) -> str:
    """``value`` as JSON, ASCII only (every control character escaped), cut to ``limit``."""
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= limit else text[:limit] + "..."


def heartbeat_age(status: WorkerStatus) -> Optional[float]:
    """Seconds since the worker's last heartbeat, None before its first one. The clock is
    read here, after the slot: one read before may be older than a beat written meanwhile
    (``status`` took its time 0.2 s before it read the slots, and showed beats from the
    future). Never negative, even across a step of the system time."""
    if not status.heartbeat:
        return None
    return max(0.0, time.time() - status.heartbeat)
