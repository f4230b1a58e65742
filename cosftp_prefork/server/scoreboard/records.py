"""What the state file's readers get back (snapshots of workers, sessions, bans and the
master), the keys it stores clients and accounts under, and where it lives."""

from __future__ import annotations

import hashlib
import ipaddress
import time
from array import array
from dataclasses import dataclass
from typing import Optional

from .layout import CLUSTER_NONE, MASTER_STOPPING, RELOAD_NONE, RUNNING


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
    and the end of its ban (0: none yet; in the past: ran out). Times in whole seconds.
    ``copy``: the row is a copy of a ban made on another node of the cluster, not this
    node's own (``bans.COPY``)."""

    address: str
    failures: int
    since: int
    until: int
    copy: bool = False


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
    ipv6_prefix_length: int = 0  # what its bans and per-address counts are keyed by

    @property
    def stopping(self) -> bool:
        return self.state in MASTER_STOPPING


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


def upload_key(user: str, path: str) -> bytes:
    """An upload's account (login name) and path as 16 bytes (BLAKE2b), as the in-flight
    uploads and those kept of dead workers name it: two never share one in practice."""
    named = f"{user}\0{path}".encode("utf-8", "surrogateescape")
    return hashlib.blake2b(named, digest_size=16).digest()


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


def address_group(ip: str, prefix: int) -> str:
    """The client ``ip`` counts as for the per-address limits and the bans: an IPv6 address
    as the first address of its network of ``prefix`` bits (one client usually owns a whole
    /64, and could hop across it to escape them), IPv4 and IPv4-mapped IPv6 as the IPv4
    address (masking ::ffff:a.b.c.d to a /64 would make every IPv4 client one)."""
    text = address_text(address_key(ip))
    address = ipaddress.ip_address(text)
    if address.version == 4 or prefix >= 128:
        return text
    return str(ipaddress.IPv6Network((address, prefix), strict=False).network_address)


def group_label(group: str, prefix: int) -> str:
    """How a group of :func:`address_group` is shown: ``2001:db8::/64`` for an IPv6
    network, the address itself when each address is its own group."""
    if prefix >= 128 or ipaddress.ip_address(group).version == 4:
        return group
    return f"{group}/{prefix}"


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


def heartbeat_age(status: WorkerStatus) -> Optional[float]:
    """Seconds since the worker's last heartbeat, None before its first one. The clock is
    read here, after the slot: one read before may be older than a beat written meanwhile
    (``status`` took its time 0.2 s before it read the slots, and showed beats from the
    future). Never negative, even across a step of the system time."""
    if not status.heartbeat:
        return None
    return max(0.0, time.time() - status.heartbeat)
