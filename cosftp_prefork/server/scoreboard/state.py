"""The state file as a whole: the master's header, one slot per worker, the admin API's
reload requests, the session and ban tables (``sessions``, ``bans``) and the in-flight
uploads with those kept of dead workers (``uploads``)."""

from __future__ import annotations

import errno
import mmap
import os
import struct
from typing import Optional

from ...logfiles import escape_controls
from ...safefiles import PRIVATE_MODE, map_existing, open_fd
from ..filelayout import check_layout
from ..usage import UsageTable, usage_path
from .bans import BanTable
from .layout import (
    CLUSTER_NONE,
    CONTROL,
    CONTROL_AT,
    FILE_SIZE,
    HEADER,
    HEADER_SIZE,
    LAYOUT_VERSION,
    MAGIC,
    MASTER_STARTING,
    MASTER_STATES,
    MAX_WORKER_SLOTS,
    PATH_SIZE,
    PORTS,
    RELOAD_ERROR_SIZE,
    RELOAD_WARNING_CHARS,
    RELOAD_WARNINGS_AT,
    RELOAD_WARNINGS_HEAD,
    RELOAD_WARNINGS_SIZE,
    RUNNING,
    SESSIONS_COUNT_AT,
    SLOT,
    SLOT_SIZE,
    SLOTS_AT,
    STATE_AT,
    STATES,
)
from .mapped import clip, unclip
from .records import MasterStatus, WorkerStatus
from .sessions import SessionTable
from .uploads import UploadTable


class SharedState(SessionTable, BanTable, UploadTable):
    """The mapped state file. Create it with :meth:`create`, read it with :meth:`open`.

    ``usage``: the quotas' usage (``server.usage``), a second mapped file made with this one
    (None in a state opened by ``cosftpctl``, which opens it itself when it needs it)."""

    usage: Optional[UsageTable] = None

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
        None if it is absent or not ours. Raises ``OtherLayoutError`` if another version
        laid it out, and (``writable``) ``PermissionError`` if this user may not write it."""
        check_layout(path, MAGIC, LAYOUT_VERSION, "state file")
        found = map_existing(path, FILE_SIZE, MAGIC, writable)
        return None if found is None else cls(path, *found)

    # --- header (master)

    def write_header(self, status: MasterStatus) -> None:
        self._map[:HEADER.size] = HEADER.pack(
            MAGIC, LAYOUT_VERSION, status.pid, status.generation, status.started,
            status.worker_count, status.reloads, status.reload_result)
        PORTS.pack_into(self._map, HEADER.size, status.ftp_port, status.implicit_tls_port,
                         status.auth_tls, MASTER_STATES.index(status.state),
                         status.ipv6_prefix_length)
        path = status.config_path.encode("utf-8")[: PATH_SIZE - 1]
        self._map[HEADER_SIZE:SLOTS_AT] = path.ljust(PATH_SIZE, b"\0")

    def master(self) -> MasterStatus:
        _, _, pid, generation, started, workers, reloads, result = HEADER.unpack_from(
            self._map, 0)
        path = bytes(self._map[HEADER_SIZE:SLOTS_AT]).split(b"\0", 1)[0].decode("utf-8")
        ftp_port, implicit_port, auth_tls, state, prefix = PORTS.unpack_from(self._map,
                                                                             HEADER.size)
        shown = MASTER_STATES[state] if state < len(MASTER_STATES) else "?"
        if shown == MASTER_STARTING and any(w.generation == generation and w.state == "serving"
                                            for w in self.workers()):
            # The master notices at its next tick (up to a second later); clients are
            # served from the moment a worker is.
            shown = RUNNING
        return MasterStatus(pid, generation, started, workers, path, reloads, result, ftp_port,
                            implicit_port, bool(auth_tls), shown, prefix)

    # --- worker slots

    def free_slot(self) -> int:
        """Return the number of an unused worker slot (master only). Raises ``OSError``
        (ENOSPC) if every slot is taken: old generations' workers still draining their
        transfers hold theirs, and the master tries again later, as after a failed fork."""
        for slot in range(MAX_WORKER_SLOTS):
            if SLOT.unpack_from(self._map, self._slot_at(slot))[0] == 0:
                return slot
        raise OSError(errno.ENOSPC, f"all {MAX_WORKER_SLOTS} worker slots of the state file "
                      "are taken (workers of older generations still draining)")

    def write_slot(self, slot: int, pid: int, index: int, generation: int, state: int,
                   started: float, heartbeat: float, counters: tuple[int, ...],
                   cluster: int = CLUSTER_NONE) -> None:
        """Write a whole slot; ``counters`` = sessions, uploads, downloads, bytes up, down."""
        sessions, uploads, downloads, up, down = counters
        SLOT.pack_into(self._map, self._slot_at(slot), pid, index, generation, state, started,
                        heartbeat, sessions, uploads, downloads, cluster, up, down)

    def set_state(self, slot: int, state: int) -> None:
        """Change a slot's state only: the master marks a hung worker it is aborting."""
        struct.pack_into("<I", self._map, self._slot_at(slot) + STATE_AT, state)

    def set_sessions(self, slot: int, sessions: int) -> None:
        """Change a slot's session count only: its worker, as each session starts or ends,
        so that the workers balancing their load read it fresh and at no scan's cost."""
        struct.pack_into("<I", self._map, self._slot_at(slot) + SESSIONS_COUNT_AT, sessions)

    def clear_slot(self, slot: int) -> None:
        at = self._slot_at(slot)
        self._map[at:at + SLOT_SIZE] = bytes(SLOT_SIZE)

    def workers(self) -> list[WorkerStatus]:
        """Snapshots of every slot in use."""
        found = []
        for slot in range(MAX_WORKER_SLOTS):
            values = SLOT.unpack_from(self._map, self._slot_at(slot))
            if values[0]:
                pid, index, gen, state, started, beat, sess, up_n, down_n, cluster, up, \
                    down = values
                found.append(WorkerStatus(slot, pid, index, gen, STATES.get(state, "?"),
                                          started, beat, sess, up_n, down_n, up, down,
                                          cluster))
        return found

    @staticmethod
    def _slot_at(slot: int) -> int:
        return SLOTS_AT + slot * SLOT_SIZE

    # --- requests of the admin API to the master

    def request_reload(self) -> int:
        """Ask the master for a reload (the admin API, one request at a time): return the
        request's number, which :meth:`reload_taken` reaches once the master ran it."""
        asked, taken = CONTROL.unpack_from(self._map, CONTROL_AT)
        CONTROL.pack_into(self._map, CONTROL_AT, asked + 1, taken)
        return asked + 1

    def reload_asked(self) -> int:
        return CONTROL.unpack_from(self._map, CONTROL_AT)[0]

    def reload_taken(self) -> int:
        return CONTROL.unpack_from(self._map, CONTROL_AT)[1]

    def note_reload_taken(self, number: int) -> None:
        """The master ran the reload request ``number`` (it alone writes this word)."""
        struct.pack_into("<I", self._map, CONTROL_AT + 4, number)

    def write_reload_error(self, text: str) -> None:
        """Why the last reload failed ("": it did not), for ``status`` (the master)."""
        at = CONTROL_AT + CONTROL.size
        self._map[at:at + RELOAD_ERROR_SIZE] = clip(text, RELOAD_ERROR_SIZE - 1).ljust(
            RELOAD_ERROR_SIZE, b"\0")

    def reload_error(self) -> str:
        at = CONTROL_AT + CONTROL.size
        return unclip(bytes(self._map[at:at + RELOAD_ERROR_SIZE]))

    def write_reload_warnings(self, warnings: list[str]) -> None:
        """The warnings the master logged for the last reload ([]: none, or none yet), for
        ``cosftpctl reload`` (the master). Each is escaped as the log escapes it and cut at
        ``RELOAD_WARNING_CHARS``; those that do not fit are counted, not kept."""
        kept, room = [], RELOAD_WARNINGS_SIZE - RELOAD_WARNINGS_HEAD.size
        for warning in warnings:
            line = escape_controls(warning)
            if len(line) > RELOAD_WARNING_CHARS:
                line = line[:RELOAD_WARNING_CHARS - 3] + "..."
            encoded = line.encode("utf-8")
            if len(encoded) + 1 > room:
                break
            kept.append(encoded)
            room -= len(encoded) + 1
        at = RELOAD_WARNINGS_AT
        RELOAD_WARNINGS_HEAD.pack_into(self._map, at, len(warnings))
        text = b"\n".join(kept).ljust(RELOAD_WARNINGS_SIZE - RELOAD_WARNINGS_HEAD.size, b"\0")
        self._map[at + RELOAD_WARNINGS_HEAD.size:at + RELOAD_WARNINGS_SIZE] = text

    def reload_warnings(self) -> tuple[list[str], int]:
        """The warnings of the last reload as kept (``write_reload_warnings``), and how
        many there were in all."""
        at = RELOAD_WARNINGS_AT
        (count,) = RELOAD_WARNINGS_HEAD.unpack_from(self._map, at)
        text = unclip(bytes(self._map[at + RELOAD_WARNINGS_HEAD.size:at + RELOAD_WARNINGS_SIZE]))
        return (text.split("\n") if text else []), count

