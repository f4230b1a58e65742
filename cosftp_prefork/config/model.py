"""What a configuration is: the frozen dataclasses the server reads (``Config`` and its
parts), the limits and defaults they are built with, and small helpers over them. Nothing
here reads a file: ``config.options`` declares the options, ``config.settings`` reads a file
into these."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Optional, Union

from .hooks import (
    HooksConfig,
    ScopeHooks,
)
from .tls import ServerTLS

MIB, GIB = 1024 ** 2, 1024 ** 3
MIN_PART_SIZE = 1 * MIB
MAX_PART_SIZE = 5 * GIB
MAX_PARTS = 10000
# Workers of one generation at most; the master's scoreboard holds two (a reload).
MAX_WORKER_PROCESSES = 256
# The fewest seconds stop_timeout allows: a stopping worker closes its sessions 5 s before
# the master's deadline and writes its uploads' parks in the last 5 s of that.
MIN_STOP_TIMEOUT = 10
# The longest delay_failed_login: each failed login holds its connection (a thread, a place
# in the pre-login limits) that long; past a minute the wait only costs users who mistyped,
# and the bans (max_login_failures) are what bound guessing.
MAX_FAILED_LOGIN_DELAY = 60
ACCOUNT_PREFIX = "COS_ACCOUNT"
CREDENTIALS_PREFIX = "COS_CREDENTIALS"
RATE_OPTIONS = ("max_upload_rate", "max_download_rate", "local_max_rate")
MIN_RATE = 1024  # bytes/s: below it a transfer would be paced a few bytes at a time
# Rows of the quota usage table (server.usage HOOK_ROWS) the answers' homes may take.
MAX_HOOK_QUOTA_HOMES = 8192
FOLDER_PREFIX = "FOLDER"  # [FOLDER_<name>]: a virtual folder accounts mount by name
SECRET_OPTIONS = {"cos_secretid", "cos_secretkey", "ftp_login_user_password",
                  "event_hook_secret"}
HOOKS_SECTION = "HOOKS"


def default_memory_limit(workers: int) -> int:
    """``upload_memory_limit`` when not set, in MiB: a quarter of the machine's memory
    shared by the workers, between 64 MiB and 1 GiB per worker."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        total = 4 * GIB
    return max(64, min(1024, total // 4 // max(1, workers) // MIB))


def default_password_checks(workers: int) -> int:
    """``max_password_checks`` when not set: the CPUs shared by the workers, at least one
    each. A check is CPU-bound (scrypt leaves the interpreter lock), so the workers together
    then keep every CPU busy when logins pile up; more at once would not finish them sooner,
    only hold 16 MiB more each."""
    return max(1, -(-(os.cpu_count() or 1) // max(1, workers)))


def part_size_for(min_part_size: int, max_file_size: int) -> int:
    """Return the part size: ``min_part_size``, raised to a whole MiB so that a file of
    ``max_file_size`` fits in ``MAX_PARTS`` parts, never above ``MAX_PART_SIZE``."""
    needed = -(-max_file_size // MAX_PARTS)
    if needed <= min_part_size:
        return min_part_size
    return min(MAX_PART_SIZE, -(-needed // MIB) * MIB)


Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def in_networks(ip: str, networks: tuple[Network, ...]) -> bool:
    """True if the client address ``ip`` (an IPv4-mapped IPv6 one taken as IPv4, a scope
    dropped) is in one of ``networks``."""
    address = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


@dataclass(frozen=True)
class AccountLimits:
    """What one account may use and from where (issue 23, "Bandwidth and sessions"); every
    figure 0 for none. The rates are bytes per second, for all the account's sessions on
    this node together (``local_max_rate``: each session's own cap, both ways)."""

    max_upload_rate: int = 0
    max_download_rate: int = 0
    local_max_rate: int = 0
    max_sessions: int = 0  # logged-in sessions of the account, every worker and node
    allowed_ips: tuple[Network, ...] = ()  # none: every address (but denied_ips)
    denied_ips: tuple[Network, ...] = ()
    login_message: str = ""  # the 230 reply's text; "": "Login successful."

    def admits(self, ip: str) -> bool:
        """True if a login from ``ip`` passes ``allowed_ips`` and ``denied_ips``."""
        if self.denied_ips and in_networks(ip, self.denied_ips):
            return False
        return not self.allowed_ips or in_networks(ip, self.allowed_ips)


@dataclass(frozen=True)
class FolderConfig:
    """One ``[FOLDER_<name>]`` section: a bucket or prefix that accounts mount into their
    tree (``virtual_folders``). Storage options left unset (None) are the mounting
    account's: a folder naming only ``cos_prefix`` is another prefix of the account's own
    bucket, reached with the account's credentials."""

    name: str
    section: str
    authority: str
    delete_enable: bool
    prefix: str = ""
    secret_id: Optional[str] = field(default=None, repr=False)
    secret_key: Optional[str] = field(default=None, repr=False)
    bucket: Optional[str] = None
    region: Optional[str] = None
    endpoint: Optional[str] = None
    protocol: Optional[str] = None
    cos_ip: Optional[str] = None
    cos_port: Optional[int] = None
    # quota_size (bytes) and quota_files of the folder's bucket and prefix; 0: no limit.
    quota_size: int = 0
    quota_files: int = 0

    @property
    def has_quota(self) -> bool:
        return bool(self.quota_size or self.quota_files)


@dataclass(frozen=True)
class AccountConfig:
    """One ``[COS_ACCOUNT_*]`` section: an FTP login bound to one bucket."""

    section: str
    secret_id: str = field(repr=False)
    secret_key: str = field(repr=False)
    bucket: str
    region: Optional[str]
    protocol: str
    endpoint: Optional[str]
    cos_ip: Optional[str]
    cos_port: Optional[int]
    home_dir: str
    user: str
    password: str = field(repr=False)
    authority: str
    delete_enable: bool
    anonymous_enable: bool = False
    tls_required: bool = False
    require_existing_dir: bool = False
    ftp_encoding: str = "utf-8"  # this account's, else [OPTIONAL] ftp_encoding
    # cos_prefix: the account's "/" is this key prefix of the bucket ("" = its root).
    prefix: str = ""
    # quota_size (bytes) and quota_files of the account's home; 0: no limit.
    quota_size: int = 0
    quota_files: int = 0
    hooks: ScopeHooks = field(default_factory=ScopeHooks)  # its event hooks and pre-checks

    # virtual_folders: (mount path, folder) pairs, in the order the option lists them.
    folders: tuple[tuple[str, FolderConfig], ...] = ()

    @property
    def has_quota(self) -> bool:
        return bool(self.quota_size or self.quota_files)
    from_hook: bool = False  # defined by the auth hook's answer, not by the file
    answered_at: float = 0.0  # time.time() of that answer (the latest one's quota holds)
    limits: AccountLimits = AccountLimits()

    @property
    def can_read(self) -> bool:
        return "R" in self.authority

    @property
    def can_write(self) -> bool:
        return "W" in self.authority

    def mounted(self, folder: FolderConfig) -> AccountConfig:
        """What this account is inside ``folder``: the folder's bucket, prefix, authority
        and ``delete_enable``; its own for what the folder leaves unset (see
        :class:`FolderConfig`). No folders of its own: folders do not nest. Its quota is the
        folder's (``config.quotas``: the folder's bucket and prefix are a home then)."""
        place = {}
        if folder.bucket is not None:
            place = {"bucket": folder.bucket, "region": folder.region,
                     "endpoint": folder.endpoint}
        overrides = {"secret_id": folder.secret_id, "secret_key": folder.secret_key,
                     "protocol": folder.protocol, "cos_ip": folder.cos_ip,
                     "cos_port": folder.cos_port}
        return dataclasses.replace(
            self, section=folder.section, prefix=folder.prefix, authority=folder.authority,
            delete_enable=folder.delete_enable, folders=(), quota_size=folder.quota_size,
            quota_files=folder.quota_files,
            **place,
            **{name: value for name, value in overrides.items() if value is not None})


def mounted_folders(accounts: Sequence[AccountConfig]) -> list[AccountConfig]:
    """Each folder as the accounts mounting it reach it (``AccountConfig.mounted``), once
    for each set of credentials and place: what the janitor sweeps and ``check --online``
    tries."""
    views: dict[tuple, AccountConfig] = {}
    for account in accounts:
        for _, folder in account.folders:
            view = account.mounted(folder)
            views.setdefault((view.section, view.secret_id, view.secret_key, view.bucket,
                              view.region, view.endpoint, view.cos_ip, view.cos_port), view)
    return list(views.values())


@dataclass(frozen=True)
class ProxyConfig:
    """PROXY protocol (HAProxy's header carrying the client's address) on the FTP ports.

    ``optional``: connections from ``allowed`` must start with a header, others are direct
    clients; ``required``: only connections from ``allowed`` (with a header) are served."""

    mode: str = "off"  # off | optional | required
    allowed: tuple[Network, ...] = ()

    def expects_header(self, peer_ip: str) -> bool:
        """True if a connection from ``peer_ip`` must begin with a PROXY header."""
        return self.mode != "off" and in_networks(peer_ip, self.allowed)

    def refuses_direct(self) -> bool:
        """True if a connection without a header (not from ``allowed``) is refused."""
        return self.mode == "required"


# The oldest Redis the cluster state supports (server/cluster/): what Debian 11 and Ubuntu
# 22.04 ship, and what tests/redis6.py answers as.
REDIS_MINIMUM = (6, 0)


@dataclass(frozen=True)
class ClusterConfig:
    """``[CLUSTER]``: state shared by every node of a cluster, in Redis (or Valkey)."""

    redis_url: Optional[str] = None  # None: this node keeps its state to itself
    redis_down: str = "open"  # Redis unreachable or refusing writes: "open" serves on local
    # state, "closed" refuses
    redis_timeout: float = 0.5  # seconds one Redis call may take
    node_id: str = ""  # this node's name in Redis; default host name and listen port
    # seconds between checks whether an unreachable (or write-refusing) Redis serves again
    redis_check_interval: int = 5


@dataclass(frozen=True)
class NetworkConfig:
    listen_addresses: tuple[str, ...] = ("0.0.0.0",)
    listen_port: int = 2121
    masquerade_address: Optional[str] = None
    passive_ports: tuple[int, int] = (60000, 65535)
    implicit_tls_port: int = 0  # 0: no implicit FTPS listener
    tls: Optional[ServerTLS] = None  # None: TLS off (no AUTH TLS, no implicit listener)
    proxy: ProxyConfig = ProxyConfig()


@dataclass(frozen=True)
class TransferConfig:
    single_file_max_size: int
    min_part_size: int
    upload_thread_num: int
    multipart_copy_threshold: int = 5 * GIB
    resume_ttl: int = 86400
    memory_limit: int = 256 * MIB  # upload_memory_limit, in bytes
    copy_thread_num: int = 8

    @property
    def max_part_size(self) -> int:
        """The largest part an upload may use: half the memory budget, so that the
        buffers of two uploads always fit at once."""
        return min(MAX_PART_SIZE, self.memory_limit // 2)


@dataclass(frozen=True)
class ServerConfig:
    max_connection_num: int
    max_connections_per_ip: int
    max_list_file: int
    log_level: str
    log_dir: str
    worker_processes: int
    pid_file: str
    max_worker_processes: int = MAX_WORKER_PROCESSES  # what SIGTTIN grows to
    max_login_failures: int = 5
    login_failure_window: int = 60
    ban_time: int = 300
    # Seconds before a failed login is answered (vsftpd's delay_failed_login). 3, not
    # vsftpd's 1: what cos-ftp-server-V5 (pyftpdlib) waited, so files without it keep it.
    delay_failed_login: int = 3
    # Client addresses never banned: their failed logins are not counted (connection limits
    # and login_timeout still hold).
    ban_allowlist: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # An IPv6 client is its network of this length for the per-address limits and the bans
    # (one client usually owns a whole /64); 128: each address. IPv4 is always exact.
    ipv6_prefix_length: int = 64
    graceful_timeout: int = 600
    stop_timeout: int = 30  # what a fast stop may take (the master then aborts a worker)
    worker_timeout: int = 60
    worker_boot_timeout: int = 60
    worker_max_rss: int = 2048
    health_check_interval: int = 5
    login_timeout: int = 30
    max_prelogin_connections: int = 128
    max_prelogin_connections_per_ip: int = 16
    ftp_encoding: str = "utf-8"
    data_connection_timeout: int = 300
    idle_session_timeout: int = 300  # seconds a logged-in session may send no command
    accept_timeout: int = 30  # seconds a passive port waits for its data connection
    connect_timeout: int = 60  # seconds an active (PORT/EPRT) data connection may take
    max_password_checks: int = 1
    quota_scan_interval: int = 3600  # seconds between scans of a home with a quota; 0: never
    ftpd_banner: str = "cosftp-prefork ready."  # the 220 greeting's text


@dataclass(frozen=True)
class OperatorConfig:
    """What operators watch: the Prometheus endpoint and the vsftpd-style log files."""

    metrics_address: str = "127.0.0.1"
    metrics_port: int = 0  # 0: no metrics endpoint
    xferlog_file: Optional[str] = None  # None: no transfer log
    vsftpd_log_file: Optional[str] = None  # None: no vsftpd-format login/transfer log


@dataclass(frozen=True)
class AdminToken:
    """One bearer token of the admin API: its name (what the audit log says), the scrypt
    hash of the token itself (never the token), and whether it may change anything."""

    name: str
    hash: str = field(repr=False)
    writable: bool = False


@dataclass(frozen=True)
class AdminConfig:
    """The admin API and web console (``cosftp_prefork.admin``), off while ``port`` is 0."""

    address: str = "127.0.0.1"
    port: int = 0
    tokens: tuple[AdminToken, ...] = ()


@dataclass(frozen=True)
class RunAsConfig:
    """Who the workers and the metrics exporter run as when the master starts as root
    (it binds the ports first); a master started as another user keeps its own."""

    user: str = "nobody"
    group: Optional[str] = None  # None: the user's primary group
    as_root: bool = False  # run_as_root: the workers stay root (run_as_user = root allowed)


@dataclass(frozen=True)
class AuthHookConfig:
    """External authentication (``[OPTIONAL] auth_hook_*``): a service or a command asked with
    the user, password, client address and TLS, answering deny or an account definition."""

    url: Optional[str] = None
    command: tuple[str, ...] = ()
    timeout: float = 5.0  # seconds; also when every failed login is answered (docs/security.md)
    cache_ttl: int = 60
    order: str = "file_first"  # or hook_first
    parallel: int = 8  # hook calls one worker makes at once
    quota_homes: int = 1024  # homes of the usage table the answers' quotas may take
    @property
    def enabled(self) -> bool:
        return bool(self.url or self.command)


@dataclass(frozen=True)
class Located:
    """Where the server of a configuration file is, and how long its stop may take: what
    ``cosftpctl`` status, sessions, stop and reload read of a file they do not validate
    (``locate.locate_server``). ``port`` 0: unknown. ``problems``: the options read whose
    value could not be used (their defaults taken instead; port 0), each worded as
    ``load_config`` words it."""

    pid_file: str
    port: int
    addresses: tuple[str, ...]
    log_dir: str
    graceful_timeout: int
    stop_timeout: int
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class BanOptions:
    """The options of the bans, as ``ServerConfig`` holds them too (the same names): what
    ``cosftpctl bans`` and ``unban`` read of ``[OPTIONAL]`` besides where the server is."""

    pid_file: str
    log_dir: str
    max_login_failures: int
    login_failure_window: int
    ban_time: int
    ban_allowlist: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    ipv6_prefix_length: int


@dataclass(frozen=True)
class LocatedBans:
    """What ``cosftpctl bans`` and ``unban`` read of a file they do not validate whole
    (``locate.locate_bans``): where its server is, its ban options and ``[CLUSTER]``,
    under the names ``Config`` gives them (``server``, ``cluster``), so that the code of
    the bans takes either (``BanScope``). ``problems``: the options read whose value could
    not be used, each worded as ``load_config`` words it; the commands refuse the file
    then, as ``load_config`` would."""

    located: Located
    server: BanOptions
    cluster: ClusterConfig
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    path: str
    accounts: tuple[AccountConfig, ...]
    network: NetworkConfig
    transfer: TransferConfig
    server: ServerConfig
    warnings: tuple[str, ...] = ()
    operator: OperatorConfig = OperatorConfig()
    cluster: ClusterConfig = ClusterConfig()
    run_as: RunAsConfig = RunAsConfig()
    auth_hook: AuthHookConfig = AuthHookConfig()
    # [COS_CREDENTIALS_<name>]: {name: (secret_id, secret_key)}, named by an account's
    # cos_credentials (of the file or of an auth hook's answer: keys need not cross the wire).
    credentials: Mapping[str, tuple[str, str]] = field(default_factory=dict, repr=False)
    # [FOLDER_<name>]: {name: folder}, named by an account's virtual_folders (of the file or
    # of an auth hook's answer).
    folders: Mapping[str, FolderConfig] = field(default_factory=dict)
    admin: AdminConfig = AdminConfig()
    hooks: HooksConfig = field(default_factory=HooksConfig)

    @property
    def events_enabled(self) -> bool:
        """True if any scope sends events somewhere: then workers spool them and the
        events process delivers them."""
        return bool(self.hooks.server.targets) or any(a.hooks.targets for a in self.accounts)

    @property
    def pre_checks_enabled(self) -> bool:
        """True if any scope asks a service before uploads or deletes."""
        scopes = [self.hooks.server, *(a.hooks for a in self.accounts)]
        return any(scope.pre_upload or scope.pre_delete for scope in scopes)


# What the code of the bans (``server.banctl``) reads a configuration as: the whole of it
# (the server, its admin API), or what ``cosftpctl bans`` and ``unban`` read of the file.
BanScope = Union[Config, LocatedBans]
