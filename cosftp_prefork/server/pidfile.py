"""Which process is the running server: the pid file, checked against the process itself.

A pid file alone does not prove a server runs. After ``kill -9`` the dead master stays a
zombie until its parent reaps it (never, under an init that does not reap), and
``kill(pid, 0)`` succeeds on a zombie; a pid may also be reused by another program. So a pid
is the master of a configuration only if that process is alive, not a zombie, and its
process title is ``cosftp: master [<that configuration file>]``. When the pid file leads
nowhere, the process listening on the configured port says what runs instead: a master of
this file whose pid file is elsewhere (started when relative paths followed the working
directory), another server, or a process of another user.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import time
from dataclasses import dataclass
from typing import Callable, Optional, TypeVar

import psutil

from ..config.model import Located
from ..logfiles import escape_controls
from ..safefiles import open_fd, replace_file

T = TypeVar("T")

# What every cosftpctl command that needs a running server exits with when none runs: the
# LSB status code for "program is not running".
EXIT_NOT_RUNNING = 3
TITLE_PREFIX = "cosftp: master ["
WILDCARDS = ("0.0.0.0", "::")


def write_pid_file(path: str, pid: int) -> None:
    """Write ``pid`` to ``path`` atomically (a new file renamed over it: a link there is
    replaced, not followed)."""
    replace_file(path, f"{pid}\n".encode("ascii"), 0o644)


def master_title(config_path: str) -> str:
    """The start of the master's process title; ``cosftpctl`` recognises its master by it."""
    return f"{TITLE_PREFIX}{config_path}]"


@dataclass(frozen=True)
class Target:
    """What ``cosftpctl`` looks for: the master of ``config_path``, named in ``pid_file``,
    listening on ``port`` (0: unknown) on ``addresses`` (empty: any)."""

    config_path: str
    pid_file: str
    port: int = 0
    addresses: tuple[str, ...] = ()

    @classmethod
    def located(cls, config_path: str, found: Located) -> Target:
        """The server ``found`` in the file at ``config_path`` (``locate.locate_server``)."""
        return cls(os.path.abspath(config_path), found.pid_file, found.port, found.addresses)


@dataclass(frozen=True)
class Holder:
    """A process listening on the configured port."""

    pid: Optional[int]  # None: a process this user may not inspect
    title: str
    ours: bool  # the master of the target's configuration file

    def describe(self) -> str:
        if self.pid is None:
            return "a process this user cannot inspect (another user's)"
        return f"pid {self.pid} ({self.title})"


def _title(pid: int) -> Optional[str]:
    """The process title (its command line, any user's: escaped for the terminal) of
    ``pid``; None for a zombie or a process gone."""
    try:
        process = psutil.Process(pid)
        if process.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return None
        return escape_controls(" ".join(process.cmdline()))
    except psutil.AccessDenied:
        return "?"
    except psutil.Error:  # gone, or became a zombie meanwhile
        return None


def _is_master_of(title: str, config_path: str) -> bool:
    """True if ``title`` is a master's and names ``config_path`` (or a link to it)."""
    if not title.startswith(TITLE_PREFIX) or "]" not in title:
        return False
    named = title[len(TITLE_PREFIX):title.rindex("]")]
    return os.path.realpath(named) == os.path.realpath(config_path)


def is_alive(pid: int) -> bool:
    """True if ``pid`` runs: exists and is not a zombie."""
    return _title(pid) is not None


def is_master(pid: int, config_path: str) -> bool:
    """True if ``pid`` is alive, not a zombie, and the master of ``config_path``."""
    title = _title(pid)
    return title is not None and _is_master_of(title, config_path)


def pid_in_file(pid_file: str) -> Optional[int]:
    try:
        with open(open_fd(pid_file, os.O_RDONLY), encoding="ascii") as handle:
            return int(handle.read().strip())  # through no link: stop signals that pid
    except (OSError, ValueError):
        return None


def find_master(target: Target) -> Optional[int]:
    """The pid in the target's pid file if that process is its master, else None."""
    pid = pid_in_file(target.pid_file)
    return pid if pid is not None and is_master(pid, target.config_path) else None


def describe_pid_file(target: Target) -> str:
    """What the pid file names, for a "not running" message."""
    pid = pid_in_file(target.pid_file)
    if pid is None:
        return f"no pid in {target.pid_file}"
    title = _title(pid)
    what = "a zombie or gone" if title is None else f"not its master but '{title}'"
    return f"{target.pid_file} names pid {pid}, {what}"


def whereabouts(target: Target, holders: list[Holder]) -> str:
    """Why no server was found, and what holds the configured port instead."""
    found = describe_pid_file(target)
    if not target.port:
        return found
    if not holders:
        return f"{found}; nothing listens on port {target.port}"
    return f"{found}; port {target.port} is held by " + \
        ", ".join(holder.describe() for holder in holders)


def _listens_on(local: str, addresses: tuple[str, ...]) -> bool:
    """True if a socket bound to ``local`` conflicts with one of ``addresses`` (any: empty)."""
    if not addresses or local in WILDCARDS or any(a in WILDCARDS for a in addresses):
        return True
    with contextlib.suppress(ValueError):
        mapped = ipaddress.ip_address(local.split("%", 1)[0])
        if isinstance(mapped, ipaddress.IPv6Address) and mapped.ipv4_mapped:
            local = str(mapped.ipv4_mapped)
    return local in addresses


def _holder(pid: Optional[int], config_path: str) -> Optional[Holder]:
    """Who holds a socket ``pid`` listens on: the master above it if it is one of our
    workers (they share the master's sockets), else the process itself."""
    if pid is None:
        return Holder(None, "?", False)
    with contextlib.suppress(psutil.Error):
        listener = psutil.Process(pid)
        for process in (listener, *listener.parents()):
            title = _title(process.pid)
            if title is not None and title.startswith(TITLE_PREFIX):
                return Holder(process.pid, title, _is_master_of(title, config_path))
    title = _title(pid)
    return None if title is None else Holder(pid, title, False)


def port_holders(target: Target) -> list[Holder]:
    """The processes listening on the target's port (none if it is unknown)."""
    if not target.port:
        return []
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.Error:  # not on Linux, where any user may list every socket
        return []
    pids = {conn.pid for conn in connections
            if conn.status == psutil.CONN_LISTEN and conn.laddr
            and conn.laddr.port == target.port and _listens_on(conn.laddr.ip, target.addresses)}
    holders = {_holder(pid, target.config_path) for pid in pids}
    return sorted((h for h in holders if h is not None), key=lambda h: (not h.ours, h.pid or 0))


def poll(check: Callable[[], T], timeout: float) -> Optional[T]:
    """The first true answer of ``check`` (what ``cosftpctl`` waits for of a server: it
    serves, it is gone, its reload's verdict), asked every 50 ms; None after ``timeout``
    seconds without one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    return None
