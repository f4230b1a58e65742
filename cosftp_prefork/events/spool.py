"""The event spool: the directory where workers leave events and the events process takes them.

Layout of ``event_spool_dir`` (mode 0700, files 0600, every one opened without following a
link: ``safefiles``)::

    state                                  counters every process shares, under flock(2)
    <first>-<last>-<pid>.batch             one commit group of a worker: an event per line
    .<pid>-<n>.tmp                         a batch being written
    wake                                   datagram socket: "look again" to the events process
    dead-letter.jsonl                      events given up on (``deadletter``)

**One file per commit group** (not one per event, nor an append-only log). A worker's events
that arrive while its previous group is being synced go to disk together in the next group
(``commit``): one write, one ``fsync`` of the file, a rename to its ``.batch`` name and one
``fsync`` of the directory, however many uploads finished meanwhile. A batch is immutable once
it has its name: it appears whole or not at all (a writer killed before the rename leaves a
``.tmp`` file whose events were never acknowledged to a client, removed by the events
process), and it is deleted whole when every event in it reached every destination. So there
are no torn records to detect, no read offsets to keep, no compaction; dropping the oldest
events is deleting the oldest file. An append-only log would save the directory ``fsync`` but
needs all three.

**Order.** A batch's events get their numbers from the counter in ``state`` as the batch is
renamed to its final name, under the lock (the first and last number are in that name; an
event's is the first plus its line): an operation acknowledged to a client (its batch renamed
and synced) thus numbers below any operation started after it, in any worker. Names start
with the first number, so the directory sorts in event order. The counter lives in the page
cache between syncs: a master starting (after a crash or a reboot) moves it past every batch
left.

**Size.** ``state`` also counts the batches and the bytes they take on disk (allocated blocks,
what fills the disk): a writer adds its batch under the lock as it renames it, the events
process subtracts as it deletes, and recounts from the directory now and then (a writer
killed between its rename and its count leaves the count low until then).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import re
import socket
import stat
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Optional

from ..safefiles import UnsafeFileError, open_fd, refuse_link

SPOOL_MODE = 0o700
FILE_MODE = 0o600
STATE_NAME = "state"
WAKE_NAME = "wake"
DEAD_LETTER_NAME = "dead-letter.jsonl"
_BATCH_RE = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})-([0-9]+)\.batch$")
_TMP_RE = re.compile(r"^\.[0-9]+-[0-9]+\.tmp$")
_MAGIC = b"CFTPEVT1"
_STATE = struct.Struct("<8sQQQ")  # magic, next event number, bytes on disk, batches
MAX_UNIX_PATH = 107  # sun_path holds 108 bytes with the NUL


class SpoolError(Exception):
    """The spool cannot take an event (disk full, no permission…); the message says which
    directory and why. Not an ``OSError``: pyftpdlib would answer one with 550 as if the
    operation had failed, when it was done but could not be recorded."""


@dataclass(frozen=True, order=True)
class Batch:
    """A batch file, by the numbers of its first and last events and its writer's pid."""

    first: int
    last: int
    pid: int
    name: str


def batch_name(first: int, last: int, pid: int) -> str:
    return f"{first:016x}-{last:016x}-{pid}.batch"


def temp_name(pid: int, number: int) -> str:
    return f".{pid}-{number}.tmp"


@dataclass
class Usage:
    """What the spool holds: bytes on disk and batches."""

    bytes: int = 0
    batches: int = 0


def prepare_directory(directory: str, owner: Optional[int] = None) -> None:
    """Create the spool directory if absent and make it 0700 (events name users, files and
    addresses); raise ``UnsafeFileError`` if it is a link, no directory, or belongs to
    another user than this process's or ``owner`` (the workers' uid)."""
    if os.path.islink(directory):
        raise UnsafeFileError(directory, "is a symbolic link; the spool must be a directory "
                                         "of its own: remove the link")
    os.makedirs(directory, SPOOL_MODE, exist_ok=True)
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid not in {os.geteuid(), owner}:
        raise UnsafeFileError(directory, "is not a directory of the server's user: choose "
                                         "another event_spool_dir, or give it to that user")
    os.chmod(directory, SPOOL_MODE, follow_symlinks=False)
    for name in (STATE_NAME, DEAD_LETTER_NAME):
        refuse_link(os.path.join(directory, name))


def hand_over(directory: str, uid: int, gid: int) -> None:
    """Give the spool and everything in it to the workers' user (a master running as root,
    at start): they and the events process write, read and delete there."""
    os.chown(directory, uid, gid, follow_symlinks=False)
    for name in os.listdir(directory):
        with contextlib.suppress(FileNotFoundError):
            os.chown(os.path.join(directory, name), uid, gid, follow_symlinks=False)


class SpoolState:
    """The counters in ``state``, shared by the workers and the events process.

    flock(2) orders the processes; a thread lock the threads of one (flock is held per open
    file, so two threads of a process would both get it). The kernel drops a dead holder's
    lock: a killed worker wedges nobody.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._fd = open_fd(os.path.join(directory, STATE_NAME), os.O_RDWR | os.O_CREAT,
                           FILE_MODE)
        self._threads = threading.Lock()

    def close(self) -> None:
        os.close(self._fd)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[int]]:
        """The counters [next number, bytes, batches], written back when the block ends."""
        with self._threads:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                raw = os.pread(self._fd, _STATE.size, 0)
                magic, *values = _STATE.unpack(raw) if len(raw) == _STATE.size else \
                    (_MAGIC, 0, 0, 0)
                counters = values if magic == _MAGIC else [0, 0, 0]
                before = list(counters)
                yield counters
                if counters != before:
                    os.pwrite(self._fd, _STATE.pack(_MAGIC, *counters), 0)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def usage(self) -> Usage:
        with self._locked() as counters:
            return Usage(counters[1], counters[2])

    def publish(self, temp: str, count: int, nbytes: int) -> int:
        """Number the ``count`` events of a synced batch, rename it to its final name and
        count it, as one step; return its first number."""
        with self._locked() as counters:
            first = counters[0]
            final = batch_name(first, first + count - 1, os.getpid())
            os.rename(os.path.join(self.directory, temp), os.path.join(self.directory, final))
            counters[0] += count
            counters[1] += nbytes
            counters[2] += 1
        return first

    def remove(self, name: str) -> int:
        """Delete the batch ``name`` and uncount it; return the bytes it took (0: it was
        gone)."""
        path = os.path.join(self.directory, name)
        with self._locked() as counters:
            try:
                nbytes = disk_bytes(os.lstat(path))
                os.unlink(path)
            except FileNotFoundError:
                return 0
            counters[1] = max(0, counters[1] - nbytes)
            counters[2] = max(0, counters[2] - 1)
        return nbytes

    def recount(self) -> tuple[list[Batch], Usage]:
        """Count the batches on disk anew (and move the event counter past the last), under
        the lock; return them in order and what they hold."""
        with self._locked() as counters:
            batches, usage = scan(self.directory)
            counters[1], counters[2] = usage.bytes, usage.batches
            if batches:
                counters[0] = max(counters[0], max(b.last for b in batches) + 1)
        return batches, usage


def disk_bytes(info: os.stat_result) -> int:
    """What a file takes on disk: its allocated blocks (a small batch takes a whole one)."""
    return info.st_blocks * 512


def _batch(name: str) -> Optional[Batch]:
    match = _BATCH_RE.match(name)
    if match is None:
        return None
    return Batch(int(match.group(1), 16), int(match.group(2), 16), int(match.group(3)), name)


def list_batches(directory: str) -> list[Batch]:
    """The batches in ``directory`` in event order, from their names alone (no ``stat``
    per file: the events process lists a large spool often)."""
    return sorted(batch for batch in map(_batch, os.listdir(directory)) if batch)


def scan(directory: str) -> tuple[list[Batch], Usage]:
    """The batches in ``directory`` in event order, and what they take."""
    batches, usage = [], Usage()
    with os.scandir(directory) as entries:
        for entry in entries:
            batch = _batch(entry.name)
            if batch is None:
                continue
            with contextlib.suppress(FileNotFoundError):
                usage.bytes += disk_bytes(entry.stat(follow_symlinks=False))
                usage.batches += 1
                batches.append(batch)
    batches.sort()
    return batches, usage


def leftover_temps(directory: str) -> list[str]:
    """The names of the ``.tmp`` files in ``directory`` (their writer's pid is in the name,
    for an operator's look)."""
    return [name for name in os.listdir(directory) if _TMP_RE.match(name)]


class BatchWriter:
    """Writes one process's batches, durably, in as few system calls as it can (each one
    gives up the interpreter lock, which a busy worker's other threads may then hold for a
    while): open, write, fsync, close, the numbered rename under the lock, the directory's
    fsync, one datagram to wake the events process."""

    def __init__(self, state: SpoolState) -> None:
        self.state = state
        self._dir_fd = os.open(state.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._block = os.statvfs(state.directory).f_frsize or 4096
        self._names = itertools.count()
        self._wake = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._wake.setblocking(False)
        self._wake_path = wake_path(state.directory)

    def write(self, records: list[bytes]) -> None:
        """Write ``records`` (lines from ``encode_record``) as one batch, synced, renamed
        and numbered, the directory synced; raise ``SpoolError``."""
        temp = temp_name(os.getpid(), next(self._names))
        path = os.path.join(self.state.directory, temp)
        data = b"".join(records)
        try:
            fd = open_fd(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            try:
                written = 0
                while written < len(data):
                    written += os.write(fd, data[written:])
                os.fsync(fd)
            finally:
                os.close(fd)
            # What it takes on disk, in whole blocks (recount makes it exact now and then).
            self.state.publish(temp, len(records), -(-len(data) // self._block) * self._block)
            os.fsync(self._dir_fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise SpoolError(f"cannot write to the event spool {self.state.directory}: "
                             f"{exc.strerror or exc}") from exc
        if len(self._wake_path.encode()) <= MAX_UNIX_PATH:
            with contextlib.suppress(OSError):  # nobody listening, or busy: it polls too
                self._wake.sendto(b"!", self._wake_path)

    def close(self) -> None:
        os.close(self._dir_fd)
        self._wake.close()


def encode_record(record: dict[str, Any]) -> bytes:
    """One line of a batch file."""
    return json.dumps(record, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"


class SpoolCorrupt(ValueError):
    """A batch file that is not what a writer writes (edited, or the disk lied)."""


def read_batch(directory: str, batch: Batch) -> list[dict[str, Any]]:
    """The records of ``batch``, each with its number (``seq``); ``FileNotFoundError`` if it
    went, ``SpoolCorrupt`` if a line is not a record or the count is not the name's."""
    fd = open_fd(os.path.join(directory, batch.name), os.O_RDONLY)
    with os.fdopen(fd, "rb") as handle:
        lines = handle.read().splitlines()
    if len(lines) != batch.last - batch.first + 1:
        raise SpoolCorrupt(f"{batch.name} holds {len(lines)} events, not "
                           f"{batch.last - batch.first + 1}")
    records = []
    for number, line in enumerate(lines):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("body"), str) or \
                not isinstance(record.get("to"), list):
            raise SpoolCorrupt(f"{batch.name} line {number + 1} is not an event record")
        records.append({**record, "seq": batch.first + number})
    return records


def wake_path(directory: str) -> str:
    return os.path.join(directory, WAKE_NAME)


def bind_wake(directory: str) -> socket.socket:
    """The events process's end of ``wake`` (a socket left by a previous one is replaced;
    anything else at the name is refused)."""
    path = wake_path(directory)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    if len(path.encode()) > MAX_UNIX_PATH:
        return sock  # never readable: the process polls
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            sock.close()
            raise UnsafeFileError(path, "is not the events process's socket: remove it")
        os.unlink(path)
    sock.bind(path)
    os.chmod(path, FILE_MODE)
    return sock
