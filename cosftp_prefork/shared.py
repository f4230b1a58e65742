"""State shared by the master, its workers and ``cosftpctl status``: one small mapped file.

The master creates the file (beside the pid file) before forking; workers inherit the
mapping. It holds:

* a header: master pid, generation, start time, config path, listening ports;
* one slot per worker, written only by that worker (heartbeat, sessions, transfers, bytes)
  and cleared by the master when it reaps the worker;
* a session table, so ``max_connection_num`` and ``max_connections_per_ip`` hold for the
  whole server rather than per worker, and a table of failed logins and bans per client IP.
  Both are changed under POSIX record locks on the file, which the kernel releases if the
  holder dies, so a killed worker cannot wedge admissions; the master frees a dead worker's
  session rows when it reaps it.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import threading
import time
import zlib
from array import array
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

MAGIC = b"CFTP"
# magic, version, master pid, generation, started, workers, reload count, last reload result
_HEADER = struct.Struct("<4sIiIdIII")
# after it: FTP port, implicit FTPS port (0: none), AUTH TLS offered (0/1)
_PORTS = struct.Struct("<HHB")
_HEADER_SIZE = 64
_PATH_SIZE = 512
_SLOT = struct.Struct("<iiIIddIIIIQQ")
_SLOT_SIZE = 64
MAX_WORKER_SLOTS = 512
SESSION_ROWS = 8192
_ROW_SIZE = 8  # pid (int32), hash of the client IP (uint32, never 0)

BAN_ROWS = 1024
_BAN_FIELDS = 4  # hash of the client IP, failures, window start, banned until (seconds)

_SLOTS_AT = _HEADER_SIZE + _PATH_SIZE
_SESSIONS_AT = _SLOTS_AT + MAX_WORKER_SLOTS * _SLOT_SIZE
_BANS_AT = _SESSIONS_AT + SESSION_ROWS * _ROW_SIZE
FILE_SIZE = _BANS_AT + BAN_ROWS * _BAN_FIELDS * 4

STATES = {0: "free", 1: "starting", 2: "serving", 3: "draining"}
STARTING, SERVING, DRAINING = 1, 2, 3
RELOAD_NONE, RELOAD_RUNNING, RELOAD_OK, RELOAD_FAILED = 0, 1, 2, 3


@dataclass(frozen=True)
class WorkerStatus:
    """A snapshot of one worker slot."""

    slot: int
    pid: int
    index: int
    generation: int
    state: str
    started: float
    heartbeat: float
    sessions: int
    uploads: int
    downloads: int
    bytes_up: int
    bytes_down: int


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


def state_path(pid_file: str) -> str:
    """The state file lives beside the pid file, so whoever finds one finds the other."""
    return pid_file + ".state"


def ip_hash(ip: str) -> int:
    """A non-zero 32-bit hash of a client address (0 marks a free row)."""
    return zlib.crc32(ip.encode()) | 1


class SharedState:
    """The mapped state file. Create it with :meth:`create`, read it with :meth:`open`."""

    def __init__(self, path: str, fd: int, mapping: mmap.mmap) -> None:
        self.path = path
        self._fd = fd
        self._map = mapping
        self._thread_lock = threading.Lock()

    @classmethod
    def create(cls, path: str) -> SharedState:
        """Create (or reset) the state file at ``path`` and map it shared."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.ftruncate(fd, FILE_SIZE)
        return cls(path, fd, mmap.mmap(fd, FILE_SIZE, mmap.MAP_SHARED))

    @classmethod
    def open(cls, path: str) -> Optional[SharedState]:
        """Map an existing state file read-only; None if it is absent or not ours."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            if os.fstat(fd).st_size < FILE_SIZE:
                os.close(fd)
                return None
            mapping = mmap.mmap(fd, FILE_SIZE, mmap.MAP_SHARED, prot=mmap.PROT_READ)
        except OSError:
            os.close(fd)
            return None
        state = cls(path, fd, mapping)
        return state if mapping[:4] == MAGIC else None

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)

    # --- header (master)

    def write_header(self, status: MasterStatus) -> None:
        self._map[:_HEADER.size] = _HEADER.pack(
            MAGIC, 1, status.pid, status.generation, status.started, status.worker_count,
            status.reloads, status.reload_result)
        _PORTS.pack_into(self._map, _HEADER.size, status.ftp_port, status.implicit_tls_port,
                         status.auth_tls)
        path = status.config_path.encode("utf-8")[: _PATH_SIZE - 1]
        self._map[_HEADER_SIZE:_SLOTS_AT] = path.ljust(_PATH_SIZE, b"\0")

    def master(self) -> MasterStatus:
        _, _, pid, generation, started, workers, reloads, result = _HEADER.unpack_from(
            self._map, 0)
        path = bytes(self._map[_HEADER_SIZE:_SLOTS_AT]).split(b"\0", 1)[0].decode("utf-8")
        ftp_port, implicit_port, auth_tls = _PORTS.unpack_from(self._map, _HEADER.size)
        return MasterStatus(pid, generation, started, workers, path, reloads, result, ftp_port,
                            implicit_port, bool(auth_tls))

    # --- worker slots

    def free_slot(self) -> int:
        """Return the number of an unused worker slot (master only)."""
        for slot in range(MAX_WORKER_SLOTS):
            if _SLOT.unpack_from(self._map, self._slot_at(slot))[0] == 0:
                return slot
        raise RuntimeError("no free worker slot")

    def write_slot(self, slot: int, pid: int, index: int, generation: int, state: int,
                   started: float, heartbeat: float, counters: tuple[int, ...]) -> None:
        """Write a whole slot; ``counters`` = sessions, uploads, downloads, bytes up, down."""
        sessions, uploads, downloads, up, down = counters
        _SLOT.pack_into(self._map, self._slot_at(slot), pid, index, generation, state, started,
                        heartbeat, sessions, uploads, downloads, 0, up, down)

    def clear_slot(self, slot: int) -> None:
        at = self._slot_at(slot)
        self._map[at:at + _SLOT_SIZE] = bytes(_SLOT_SIZE)

    def workers(self) -> list[WorkerStatus]:
        """Snapshots of every slot in use."""
        found = []
        for slot in range(MAX_WORKER_SLOTS):
            values = _SLOT.unpack_from(self._map, self._slot_at(slot))
            if values[0]:
                pid, index, gen, state, started, beat, sess, up_n, down_n, _, up, down = values
                found.append(WorkerStatus(slot, pid, index, gen, STATES.get(state, "?"),
                                          started, beat, sess, up_n, down_n, up, down))
        return found

    @staticmethod
    def _slot_at(slot: int) -> int:
        return _SLOTS_AT + slot * _SLOT_SIZE

    # --- session table

    @contextmanager
    def _locked(self, start: int, end: int):
        """Lock bytes ``start:end`` of the file (threads and processes); yield them as uint32s."""
        with self._thread_lock:
            fcntl.lockf(self._fd, fcntl.LOCK_EX, end - start, start)
            whole = memoryview(self._map)
            rows = whole[start:end].cast("I")
            try:
                yield rows
            finally:
                rows.release()
                whole.release()
                fcntl.lockf(self._fd, fcntl.LOCK_UN, end - start, start)

    def _sessions_locked(self):
        return self._locked(_SESSIONS_AT, _BANS_AT)

    # --- failed logins and bans

    def is_banned(self, ip: str, now: float) -> bool:
        """True while ``ip`` is serving a ban."""
        wanted = ip_hash(ip)
        with self._locked(_BANS_AT, FILE_SIZE) as rows:
            flat = rows.tolist()
            return any(flat[i] == wanted and flat[i + 3] > now
                       for i in range(0, len(flat), _BAN_FIELDS))

    def record_failure(self, ip: str, now: float, limit: int, window: int, ban: int) -> bool:
        """Count a failed login from ``ip``; return True if that earns it a ban."""
        wanted, stamp = ip_hash(ip), int(now)
        with self._locked(_BANS_AT, FILE_SIZE) as rows:
            flat = rows.tolist()
            row = self._ban_row(flat, wanted, stamp)
            at = row * _BAN_FIELDS
            failures, started = flat[at + 1], flat[at + 2]
            if flat[at] != wanted or stamp - started > window:
                failures, started = 0, stamp
            failures += 1
            previous_ban = flat[at + 3] if flat[at] == wanted else 0
            banned_until = stamp + ban if failures >= limit else previous_ban
            rows[at:at + _BAN_FIELDS] = array("I", [wanted, failures, started, banned_until])
            return failures >= limit

    @staticmethod
    def _ban_row(flat: list[int], wanted: int, now: int) -> int:
        """The row of ``wanted``, else a free or expired row, else the oldest one."""
        rows = range(len(flat) // _BAN_FIELDS)
        for row in rows:
            if flat[row * _BAN_FIELDS] == wanted:
                return row
        return min(rows, key=lambda r: max(flat[r * _BAN_FIELDS + 2],
                                           flat[r * _BAN_FIELDS + 3]))

    def admit(self, pid: int, ip: str, max_total: int, max_per_ip: int) -> Optional[str]:
        """Record a session from ``ip``; return None, or why it must be refused."""
        wanted = ip_hash(ip)
        with self._sessions_locked() as rows:
            pids, hashes = rows[0::2].tolist(), rows[1::2].tolist()
            if max_total and SESSION_ROWS - pids.count(0) >= max_total:
                return "Too many connections. Service temporarily unavailable."
            if max_per_ip and hashes.count(wanted) >= max_per_ip:
                return "Too many connections from the same IP address."
            if 0 in pids:
                row = pids.index(0)
                rows[2 * row], rows[2 * row + 1] = pid, wanted
            return None

    def release(self, pid: int, ip: str) -> None:
        """Forget one session of ``pid`` from ``ip``."""
        wanted = ip_hash(ip)
        with self._sessions_locked() as rows:
            flat = rows.tolist()
            for row in range(SESSION_ROWS):
                if flat[2 * row] == pid and flat[2 * row + 1] == wanted:
                    rows[2 * row] = rows[2 * row + 1] = 0
                    return

    def release_all(self, pid: int) -> int:
        """Forget every session of a dead worker; return how many there were."""
        with self._sessions_locked() as rows:
            pids = rows[0::2].tolist()
            freed = 0
            for row, owner in enumerate(pids):
                if owner == pid:
                    rows[2 * row] = rows[2 * row + 1] = 0
                    freed += 1
            return freed

    def sessions_by_pid(self) -> Counter:
        """Sessions per worker pid, read without the lock (a snapshot is enough)."""
        with memoryview(self._map) as whole, whole[_SESSIONS_AT:FILE_SIZE].cast("I") as rows:
            pids = rows[0::2].tolist()
        counts = Counter(pids)
        del counts[0]
        return counts


def heartbeat_age(status: WorkerStatus, now: Optional[float] = None) -> Optional[float]:
    """Seconds since the worker's last heartbeat, None before its first one."""
    if not status.heartbeat:
        return None
    return (now or time.time()) - status.heartbeat
