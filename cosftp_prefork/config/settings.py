"""The configuration file (``conf/vsftpd.conf``): parse, validate, freeze.

The format is the old cos-ftp-server-V5's INI file, unchanged: ``[COS_ACCOUNT_*]`` sections,
``[NETWORK]``, ``[FILE_OPTION]`` and ``[OPTIONAL]``. Every setting is declared once in
``SETTINGS`` (section, name, parser, default, help); parsing, defaults, validation and the
unknown-option warnings are all driven from that table. An empty value or the word
``default`` means the default. ``${NAME}`` is replaced from the environment so secrets need
not live in the file; relative paths are resolved against the file's base directory
(``config.locations``). Nothing else in the package reads the file.
"""

from __future__ import annotations

import codecs
import configparser
import contextlib
import dataclasses
import ipaddress
import os
import re
import shlex
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, TypeVar

from ..errors import ConfigError
from ..paths import MAX_KEY_BYTES, NAME_ROOM, home_prefix
from .hooks import (
    COMMAND,
    HTTP,
    PRE_HOOK_FAILURE_CHOICES,
    SPOOL_FULL_CHOICES,
    HooksConfig,
    HookTarget,
    PreCheck,
    ScopeHooks,
    parse_command,
    parse_event_names,
    parse_globs,
    parse_url,
)
from .locations import (
    DEFAULT_LISTEN_PORT,
    DEFAULT_LOG_DIR,
    base_dir,
    default_pid_file,
    parse_path,
    resolve,
)
from .passwords import PREFIX, HashFormatError, check_stored_form, parse_hash, scrypt_parameters
from .sizes import SIZE_WORDS, parse_size
from .tls import ServerTLS, TLSFileError, load_server_tls

MIB, GIB = 1024 ** 2, 1024 ** 3
MIN_PART_SIZE = 1 * MIB
MAX_PART_SIZE = 5 * GIB
MAX_PARTS = 10000
ACCOUNT_PREFIX = "COS_ACCOUNT"
CREDENTIALS_PREFIX = "COS_CREDENTIALS"
RATE_OPTIONS = ("max_upload_rate", "max_download_rate", "local_max_rate")
MIN_RATE = 1024  # bytes/s: below it a transfer would be paced a few bytes at a time
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


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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
        :class:`FolderConfig`). No folders of its own: folders do not nest; no quota of its
        own either (the quotas of homes the folder's keys are in count them: ``cos.quota``)."""
        place = {}
        if folder.bucket is not None:
            place = {"bucket": folder.bucket, "region": folder.region,
                     "endpoint": folder.endpoint}
        overrides = {"secret_id": folder.secret_id, "secret_key": folder.secret_key,
                     "protocol": folder.protocol, "cos_ip": folder.cos_ip,
                     "cos_port": folder.cos_port}
        return dataclasses.replace(
            self, section=folder.section, prefix=folder.prefix, authority=folder.authority,
            delete_enable=folder.delete_enable, folders=(), quota_size=0, quota_files=0,
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


# The oldest Redis the cluster state supports (server/cluster.py): what Debian 11 and Ubuntu
# 22.04 ship, and what tests/redis6.py answers as.
REDIS_MINIMUM = (6, 0)


@dataclass(frozen=True)
class ClusterConfig:
    """``[CLUSTER]``: state shared by every node of a cluster, in Redis (or Valkey)."""

    redis_url: Optional[str] = None  # None: this node keeps its state to itself
    redis_down: str = "open"  # Redis unreachable: "open" serves on local state, "closed" refuses
    redis_timeout: float = 0.5  # seconds one Redis call may take
    node_id: str = ""  # this node's name in Redis; default host name and listen port


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
    max_login_failures: int = 5
    login_failure_window: int = 60
    ban_time: int = 300
    # Client addresses never banned: their failed logins are not counted (connection limits
    # and login_timeout still hold).
    ban_allowlist: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    graceful_timeout: int = 600
    worker_timeout: int = 60
    worker_boot_timeout: int = 60
    worker_max_rss: int = 2048
    health_check_interval: int = 5
    login_timeout: int = 30
    max_prelogin_connections: int = 128
    max_prelogin_connections_per_ip: int = 16
    ftp_encoding: str = "utf-8"
    data_connection_timeout: int = 300
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
    @property
    def enabled(self) -> bool:
        return bool(self.url or self.command)


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


# --- value parsers: each takes the raw string and returns a value or raises ValueError,
# and says in words what it accepts (docs/configuration.md is generated from that).

_Parser = TypeVar("_Parser", bound=Callable[[str], Any])
_ACCEPTS: dict[Callable[[str], Any], str] = {}


def _accepts(words: str) -> Callable[[_Parser], _Parser]:
    """Record what a value parser accepts, as the generated reference shows it."""
    def record(parse: _Parser) -> _Parser:
        _ACCEPTS[parse] = words
        return parse
    return record


def size_in_words(nbytes: int) -> str:
    """``nbytes`` in the largest binary unit that divides it: 2097152 is ``2 MiB``."""
    for unit, size in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if nbytes % size == 0:
            return f"{nbytes // size} {unit}"
    return f"{nbytes} byte{'' if nbytes == 1 else 's'}"


def _integer(low: int, high: Optional[int] = None, unit: str = "") -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"must be an integer{unit}, got {raw!r}") from None
        if value < low or (high is not None and value > high):
            upper = f" and {high}" if high is not None else ""
            raise ValueError(f"must be between {low}{upper}, got {value}" if upper
                             else f"must be at least {low}, got {value}")
        return value
    if unit == _BYTES and high is not None:
        words = f"bytes, {size_in_words(low)} to {size_in_words(high)}"
    else:
        words = f"integer, {low} or more" if high is None else f"integer, {low} to {high}"
    return _accepts(words)(parse)


for _parse, _words in ((parse_url, "an http:// or https:// URL"),
                       (parse_command, "a program's absolute path, then its arguments (run "
                                       "without a shell)"),
                       (parse_event_names, "event names, comma-separated, or all"),
                       (parse_globs, "patterns of FTP paths, comma-separated")):
    _accepts(_words)(_parse)


@_accepts("text")
def _text(raw: str) -> str:
    return raw


@_accepts("true or false (also yes/no, on/off, 1/0)")
def _boolean(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("true", "yes", "on", "1"):
        return True
    if lowered in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"must be true or false, got {raw!r}")


def _choice(*choices: str, fold: Callable[[str], str] = str.upper) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = fold(raw)
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {raw!r}")
        return value
    return _accepts(f"one of {', '.join(choices)}")(parse)


@_accepts("http or https")
def _protocol(raw: str) -> str:
    value = raw.lower()
    if value not in ("http", "https"):
        raise ValueError(f"must be http or https, got {raw!r}")
    return value


_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9-]*-[0-9]+$")
_ACCOUNT_RE = re.compile(r"^COS_ACCOUNT(_.*)?$")
_CREDENTIALS_RE = re.compile(r"^COS_CREDENTIALS_([A-Za-z0-9_.-]{1,64})$")
# A folder's name is what virtual_folders writes after "=": no comma, "=" or space in it.
_FOLDER_RE = re.compile(r"^FOLDER_[^\s,=]+$")


def section_kind(section: str) -> str:
    """The settings table's section for a section of a file (``COS_ACCOUNT_0`` ->
    ``COS_ACCOUNT``, ``COS_CREDENTIALS_shared`` -> ``COS_CREDENTIALS``, ``FOLDER_team`` ->
    ``FOLDER``)."""
    if _ACCOUNT_RE.match(section):
        return ACCOUNT_PREFIX
    if _FOLDER_RE.match(section):
        return FOLDER_PREFIX
    return CREDENTIALS_PREFIX if _CREDENTIALS_RE.match(section) else section


_HOST_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
                      r"(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$")


@_accepts("<name>-<appid>, as the COS console shows it")
def _bucket(raw: str) -> str:
    if not _BUCKET_RE.match(raw):
        raise ValueError(f"must be <name>-<appid> such as examplebucket-1250000000, got {raw!r}")
    return raw


@_accepts("an IPv4 or IPv6 address")
def _ip_address(raw: str) -> str:
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        raise ValueError(f"must be an IP address, got {raw!r}") from None


@_accepts("IP addresses, comma-separated")
def _ip_addresses(raw: str) -> tuple[str, ...]:
    """One address or several, comma-separated (``0.0.0.0, ::`` for dual stack). A wildcard
    already covers every address of its family, so it cannot be listed with one of them;
    ``::`` alone also serves IPv4, listed with IPv4 addresses it serves IPv6 only."""
    addresses = tuple(_ip_address(part.strip()) for part in raw.split(","))
    for address in addresses:
        if addresses.count(address) > 1:
            raise ValueError(f"lists {address} twice")
        family = ipaddress.ip_address(address).version
        wildcard = "0.0.0.0" if family == 4 else "::"
        if address != wildcard and wildcard in addresses:
            raise ValueError(f"{wildcard} already covers {address}; list one of them")
    return addresses


@_accepts("addresses or CIDR blocks, comma-separated")
def _networks(raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """A comma-separated list of CIDR blocks or single addresses."""
    networks = []
    for part in (p.strip() for p in raw.split(",")):
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"must be a comma-separated list of addresses or CIDR blocks "
                             f"(like 10.0.0.0/8), got {part!r}") from None
    return tuple(networks)


@_accepts("one line of printable text, at most 200 characters")
def _message(raw: str) -> str:
    """Text the server sends in a reply: one line (a CR or LF would end the reply and
    start another), no control characters, short enough for every client's buffer."""
    if len(raw) > 200 or not raw.isprintable():
        raise ValueError("must be one line of printable text of at most 200 characters")
    return raw


@_accepts("a redis://, rediss:// or unix:// URL")
def _redis_url(raw: str) -> str:
    if not re.match(r"^(redis|rediss|unix)://", raw):
        raise ValueError(f"must be a redis://, rediss:// or unix:// URL, got {raw!r}")
    return raw


@_accepts("an IP address or a host name")
def _host(raw: str) -> str:
    with contextlib.suppress(ValueError):
        return _ip_address(raw)
    if _HOST_RE.match(raw) and not raw.replace(".", "").isdigit():
        return raw
    raise ValueError(f"must be an IP address or host name, got {raw!r}")


@_accepts("a text encoding that extends ASCII (utf-8, gbk, gb18030, latin-1...)")
def _encoding(raw: str) -> str:
    """A text encoding that keeps ASCII as it is (FTP commands are ASCII): utf-16 or an
    EBCDIC code page would turn every command into garbage."""
    try:
        name = codecs.lookup(raw).name
        ascii_safe = "USER a\r\n".encode(name) == b"USER a\r\n"
    except LookupError:
        ascii_safe, name = False, ""
    if not name or not ascii_safe:
        raise ValueError("must be a text encoding that extends ASCII, such as utf-8, gbk, "
                         f"gb18030 or latin-1, got {raw!r}")
    return name


@_accepts("a password, or its scrypt$... hash")
def _password(raw: str) -> str:
    check_stored_form(raw)
    return raw


_SYSTEM_NAME_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_.-]{0,31}\$?|[0-9]+)$")


@_accepts("a user or group name of this system, or a number")
def _system_name(raw: str) -> str:
    """A user or group name of this system (or a numeric id); whether it exists is checked
    when the server starts as root (``server.privileges``)."""
    if not _SYSTEM_NAME_RE.match(raw):
        raise ValueError(f"must be a user or group name such as cosftp (or a number), "
                         f"got {raw!r}")
    return raw


MAX_ADMIN_TOKENS = 16  # each failed token costs one scrypt per configured token
_TOKEN_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
_TOKEN_MODES = {"rw": True, "ro": False}


@_accepts("name:hash:rw or name:hash:ro, comma-separated; the hash from cosftpctl "
          "hash-password")
def _admin_tokens(raw: str) -> tuple[AdminToken, ...]:
    """``name:hash:rw, name:hash:ro``: the admin API's tokens, each stored as the scrypt
    hash ``cosftpctl hash-password`` prints. No message quotes a hash."""
    tokens: list[AdminToken] = []
    for number, entry in enumerate((part.strip() for part in raw.split(",")), 1):
        fields = entry.split(":")
        if len(fields) != 3:
            raise ValueError(f"entry {number} is not name:hash:rw or name:hash:ro")
        name, stored, mode = (field.strip() for field in fields)
        if not _TOKEN_NAME_RE.match(name):
            raise ValueError(f"entry {number}: the name must be 1-32 letters, digits, '_', "
                             "'.' or '-'")
        if mode not in _TOKEN_MODES:
            raise ValueError(f"token {name}: the mode must be rw or ro")
        if not stored.startswith(PREFIX):
            raise ValueError(f"token {name}: store the token's hash (cosftpctl "
                             "hash-password), never the token itself")
        try:
            parse_hash(stored)
        except HashFormatError as exc:
            raise ValueError(f"token {name}: the hash {exc}") from None
        if any(token.name == name for token in tokens):
            raise ValueError(f"token {name} is listed twice")
        tokens.append(AdminToken(name, stored, _TOKEN_MODES[mode]))
    if len(tokens) > MAX_ADMIN_TOKENS:
        raise ValueError(f"lists {len(tokens)} tokens; at most {MAX_ADMIN_TOKENS}")
    return tuple(tokens)


@_accepts("a path such as /home/user0 (only a name: nothing is written there)")
def _home_dir(raw: str) -> str:
    return "/" + raw.strip("/")


@_accepts("/path=name pairs, comma-separated: each mounts [FOLDER_name] at /path")
def _mount_list(raw: str) -> tuple[tuple[str, str], ...]:
    """``/in=incoming, /shared/docs=docs``: where each named folder appears in the
    account's tree. A path is absolute and names a directory below ``/`` (no empty, ``.``,
    ``..`` or ``.cosftp`` component); no two paths are the same or one under the other
    (a folder's tree is the folder's alone)."""
    mounts: list[tuple[str, str]] = []
    for part in (p.strip() for p in raw.split(",")):
        path, equals, name = (side.strip() for side in part.partition("="))
        if not equals or not path or not name:
            raise ValueError(f"must be /path=name pairs such as /shared=docs, got {part!r}")
        if not path.startswith("/"):
            raise ValueError(f"{path!r} is outside /: a mount path starts with /")
        try:
            key = home_prefix(path)
        except ValueError as exc:
            raise ValueError(f"{path!r} {exc}") from None
        if not key:
            raise ValueError(f"{part!r}: / is the account's own; mount a folder below it")
        path = "/" + key[:-1]
        for other, _ in mounts:
            if other == path:
                raise ValueError(f"mounts two folders at {path}")
            if path.startswith(other + "/") or other.startswith(path + "/"):
                raise ValueError(f"{path} and {other} overlap: mount a folder beside another, "
                                 "not under it")
        mounts.append((path, name))
    return tuple(mounts)


@_accepts("low,high")
def _port_range(raw: str) -> tuple[int, int]:
    parts = [p.strip() for p in raw.split(",")]
    if len(parts) > 2 or not all(re.fullmatch(r"[0-9]+", p) for p in parts):
        raise ValueError(f"must be low,high such as 60000,65535, got {raw!r}")
    low = int(parts[0])
    high = int(parts[1]) if len(parts) == 2 else 65535
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"must satisfy 1 <= low <= high <= 65535, got {raw!r}")
    return low, high


_BYTES = " number of bytes"
_CPUS = os.cpu_count() or 1
# Relative paths are resolved against the file's base directory (config.locations).
_accepts("a path; relative: to the config file's directory (its parent for conf/)")(parse_path)
_accepts("a key prefix such as tenants/alice (a leading / dropped, a trailing / added); no "
         f"empty, . or .. component, no .cosftp, at most {MAX_KEY_BYTES - NAME_ROOM} "
         "bytes")(home_prefix)
_accepts(SIZE_WORDS)(parse_size)


@dataclass(frozen=True)
class Setting:
    """One option: where it lives, how to parse it, its default (``REQUIRED`` = none).

    ``shown_default`` says the default in words where its value depends on the machine or
    on other options, so the generated reference is the same on every machine."""

    section: str
    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    shown_default: Optional[str] = None

    @property
    def accepts(self) -> str:
        """What the option accepts, in words ('' if its parser does not say)."""
        return _ACCEPTS.get(self.parse, "")


REQUIRED = object()


def _scoped(name: str, parse: Callable[[str], Any], default: Any, help: str,
            shown_default: Optional[str] = None,
            inherited: bool = False) -> tuple[Setting, Setting]:
    """A hook option of ``[HOOKS]`` and of each account: an account's receiver and command
    get its events besides the server's; its secret, timeout and pre-checks replace the
    server's (``inherited``: the server's when the account sets none)."""
    return (Setting(HOOKS_SECTION, name, parse, default, help, shown_default),
            Setting(ACCOUNT_PREFIX, name, parse, None, f"this account's {help}",
                    f"[HOOKS] {name}" if inherited else shown_default))


SETTINGS: tuple[Setting, ...] = (
    Setting(ACCOUNT_PREFIX, "cos_secretid", _text, None, "API SecretId",
            "none: required unless cos_credentials is set"),
    Setting(ACCOUNT_PREFIX, "cos_secretkey", _text, None, "API SecretKey",
            "none: required unless cos_credentials is set"),
    Setting(ACCOUNT_PREFIX, "cos_credentials", _text, None,
            "the name of a [COS_CREDENTIALS_<name>] section whose keys this account uses "
            "instead of cos_secretid and cos_secretkey", "none"),
    Setting(ACCOUNT_PREFIX, "cos_bucket", _bucket, REQUIRED, "bucket as <name>-<appid>"),
    Setting(ACCOUNT_PREFIX, "cos_region", _text, None, "region, e.g. ap-guangzhou",
            "none: required unless cos_endpoint is set"),
    Setting(ACCOUNT_PREFIX, "cos_protocol", _protocol, "https",
            "how to reach COS: http or https"),
    Setting(ACCOUNT_PREFIX, "cos_endpoint", _host, None,
            "endpoint, e.g. cos.ap-guangzhou.myqcloud.com; wins over cos_region"),
    Setting(ACCOUNT_PREFIX, "cos_ip", _ip_address, None,
            "send COS requests to this IP (private line, VPC, the emulator); Host still "
            "names the bucket"),
    Setting(ACCOUNT_PREFIX, "cos_port", _integer(1, 65535), None, "port for cos_ip (needs it)"),
    Setting(ACCOUNT_PREFIX, "home_dir", _home_dir, REQUIRED,
            "identifies the account (unique); nothing is written locally"),
    Setting(ACCOUNT_PREFIX, "ftp_login_user_name", _text, REQUIRED, "FTP login name"),
    Setting(ACCOUNT_PREFIX, "ftp_login_user_password", _password, REQUIRED,
            "FTP password, plain or scrypt$... from cosftpctl hash-password"),
    Setting(ACCOUNT_PREFIX, "authority", _choice("R", "W", "RW"), REQUIRED,
            "R = download only, W = upload only, RW = both"),
    Setting(ACCOUNT_PREFIX, "delete_enable", _boolean, True,
            "allow DELE, RMD and overwriting by rename"),
    Setting(ACCOUNT_PREFIX, "anonymous_enable", _boolean, False,
            "let user 'anonymous' in with any password, read-only"),
    Setting(ACCOUNT_PREFIX, "tls_required", _boolean, False,
            "refuse this login unless control and data connections use TLS"),
    Setting(ACCOUNT_PREFIX, "require_existing_dir", _boolean, False,
            "refuse (550) STOR, APPE and RNTO into a directory that does not exist"),
    Setting(ACCOUNT_PREFIX, "cos_prefix", home_prefix, "",
            "the account's / is this key prefix of its bucket: nothing outside it can be "
            "reached, and the server's data of the account (.cosftp/) lives under it",
            "none: the bucket's root"),
    Setting(ACCOUNT_PREFIX, "quota_size", parse_size, 0,
            "most bytes the account's home may hold (its files, the server's data not "
            "counted); an upload that would pass it is refused or stopped with 552", "none"),
    Setting(ACCOUNT_PREFIX, "quota_files", _integer(0), 0,
            "most files the account's home may hold; 0 = none"),
    # Bandwidth and sessions (docs/configuration.md, "Per-account limits").
    Setting(ACCOUNT_PREFIX, "max_upload_rate", parse_size, 0,
            "bytes per second all the account's uploads on this node may take together "
            "(a burst of one second's worth at most); 0 = no limit", "none"),
    Setting(ACCOUNT_PREFIX, "max_download_rate", parse_size, 0,
            "bytes per second all the account's downloads on this node may take together; "
            "0 = no limit", "none"),
    Setting(ACCOUNT_PREFIX, "local_max_rate", parse_size, 0,
            "bytes per second each session of the account may transfer (vsftpd's name); "
            "0 = no limit", "none"),
    Setting(ACCOUNT_PREFIX, "max_sessions", _integer(0), 0,
            "logged-in sessions of the account at once, every worker (and every node with "
            "[CLUSTER] redis_url); 0 = unlimited"),
    Setting(ACCOUNT_PREFIX, "allowed_ips", _networks, (),
            "client addresses/CIDR blocks this account may log in from (IPv4 and IPv6); "
            "others get the reply of a wrong password", "none: every address"),
    Setting(ACCOUNT_PREFIX, "denied_ips", _networks, (),
            "client addresses/CIDR blocks this account may not log in from (wins over "
            "allowed_ips)"),
    Setting(ACCOUNT_PREFIX, "login_message", _message, "",
            "text of the 230 reply to this account's login", "none: Login successful."),
    Setting("OPTIONAL", "ftpd_banner", _message, "cosftp-prefork ready.",
            "text of the 220 greeting (vsftpd's name)"),
    Setting(ACCOUNT_PREFIX, "virtual_folders", _mount_list, (),
            "virtual folders in this account's tree: /path=name mounts [FOLDER_name] at "
            "/path", "none"),
    # Virtual folders (see docs/configuration.md, "Virtual folders"): storage options left
    # out are the mounting account's.
    Setting(FOLDER_PREFIX, "cos_bucket", _bucket, None, "bucket as <name>-<appid>",
            "the mounting account's bucket (and its region or endpoint)"),
    Setting(FOLDER_PREFIX, "cos_region", _text, None, "region of cos_bucket",
            "none: required with cos_bucket unless cos_endpoint is set"),
    Setting(FOLDER_PREFIX, "cos_endpoint", _host, None, "endpoint of cos_bucket; wins over "
            "cos_region", "none"),
    Setting(FOLDER_PREFIX, "cos_secretid", _text, None, "API SecretId for this folder",
            "the mounting account's"),
    Setting(FOLDER_PREFIX, "cos_secretkey", _text, None, "API SecretKey for this folder",
            "the mounting account's"),
    Setting(FOLDER_PREFIX, "cos_protocol", _protocol, None, "http or https",
            "the mounting account's"),
    Setting(FOLDER_PREFIX, "cos_ip", _ip_address, None, "send this folder's COS requests to "
            "this IP", "the mounting account's"),
    Setting(FOLDER_PREFIX, "cos_port", _integer(1, 65535), None, "port for cos_ip",
            "the mounting account's"),
    Setting(FOLDER_PREFIX, "cos_prefix", home_prefix, "",
            "the folder is this key prefix of its bucket (its .cosftp/ lives there too)",
            "none: the bucket's root"),
    Setting(FOLDER_PREFIX, "authority", _choice("R", "W", "RW"), REQUIRED,
            "in the folder: R = download only, W = upload only, RW = both"),
    Setting(FOLDER_PREFIX, "delete_enable", _boolean, True,
            "in the folder: allow DELE, RMD and overwriting by rename"),
    Setting("NETWORK", "masquerade_address", _host, None,
            "address announced in PASV replies (behind NAT); a name is resolved when a "
            "worker starts"),
    Setting("NETWORK", "listen_address", _ip_addresses, ("0.0.0.0",),
            "address(es) to listen on, comma-separated; :: = IPv6 and IPv4"),
    Setting("NETWORK", "listen_port", _integer(0, 65535), DEFAULT_LISTEN_PORT,
            "FTP control port"),
    Setting("NETWORK", "passive_port", _port_range, (60000, 65535),
            "passive data port range, low,high"),
    Setting("NETWORK", "tls_certfile", parse_path, None,
            "PEM certificate chain (and key, unless tls_keyfile); enables FTPS"),
    Setting("NETWORK", "tls_keyfile", parse_path, None, "PEM private key",
            "read from tls_certfile"),
    Setting("NETWORK", "implicit_tls_port", _integer(0, 65535), 0,
            "implicit FTPS port (TLS from the first byte); 0 = none"),
    Setting("NETWORK", "require_ssl_reuse", _boolean, False,
            "TLS data connections must resume the control connection's TLS session"),
    # Behind a load balancer (see docs/cluster.md).
    Setting("NETWORK", "proxy_protocol",
            _choice("off", "optional", "required", fold=str.lower), "off",
            "PROXY protocol v1/v2 header from proxy_allowed: off, optional, required"),
    Setting("NETWORK", "proxy_allowed", _networks, (),
            "addresses/CIDR blocks of the balancers allowed to send a PROXY header"),
    Setting("CLUSTER", "redis_url", _redis_url, None,
            "Redis/Valkey shared by every node for bans and connection counts"),
    Setting("CLUSTER", "redis_down", _choice("open", "closed", fold=str.lower), "open",
            "Redis unreachable: open = serve on this node's own state, closed = refuse"),
    Setting("CLUSTER", "redis_timeout", _integer(1, 10000), 500,
            "milliseconds one Redis call may take"),
    Setting("CLUSTER", "node_id", _text, "", "this node's name in Redis",
            "<host name>:<listen_port>"),
    Setting("FILE_OPTION", "single_file_max_size",
            _integer(1, MAX_PARTS * MAX_PART_SIZE, _BYTES),
            200 * GIB, "largest file accepted, in bytes"),
    Setting("OPTIONAL", "min_part_size", _integer(MIN_PART_SIZE, MAX_PART_SIZE, _BYTES),
            2 * MIB, "first part size of multipart uploads, in bytes; later parts grow so that "
            "single_file_max_size fits in 10,000 parts"),
    Setting("OPTIONAL", "upload_thread_num", _integer(1, 256), min(32, _CPUS * 4),
            "parallel part uploads per upload", "4 x CPUs, at most 32"),
    Setting("OPTIONAL", "max_connection_num", _integer(0), 512,
            "logged-in sessions, server-wide; 0 = unlimited"),
    Setting("OPTIONAL", "max_connections_per_ip", _integer(0), 64,
            "connections from one client address, logged in or not; 0 = unlimited"),
    Setting("OPTIONAL", "max_list_file", _integer(1), 10000,
            "most entries one LIST, NLST or MLSD returns"),
    Setting("OPTIONAL", "log_level", _choice("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
            "INFO", "level of cosftp.log"),
    # Paths (parse_path) are resolved against the file's base directory (config.locations).
    Setting("OPTIONAL", "log_dir", parse_path, DEFAULT_LOG_DIR,
            "log directory; relative: to the config file's directory (its parent for conf/)"),
    Setting("OPTIONAL", "worker_processes", _integer(1, 256), _CPUS,
            "worker processes (forked by the master; each serves many sessions)",
            "the number of CPUs"),
    Setting("OPTIONAL", "pid_file", parse_path, None,
            "pid file of the master (the state and bans files go beside it)",
            "<log_dir>/cosftp.pid"),
    Setting("OPTIONAL", "multipart_copy_threshold", _integer(MIN_PART_SIZE, 5 * GIB, _BYTES),
            5 * GIB, "objects larger than this are copied (renamed) in parts"),
    Setting("OPTIONAL", "resume_ttl", _integer(0), 86400,
            "seconds an interrupted upload stays resumable; 0 = never park"),
    Setting("OPTIONAL", "max_login_failures", _integer(0), 5,
            "failed logins from one IP before it is banned; 0 = never"),
    Setting("OPTIONAL", "login_failure_window", _integer(1), 60,
            "seconds over which failed logins are counted"),
    Setting("OPTIONAL", "ban_time", _integer(1), 300, "seconds a banned IP is refused"),
    Setting("OPTIONAL", "ban_allowlist", _networks, (),
            "client addresses/CIDR blocks never banned (their failed logins are not "
            "counted); connection limits still apply"),
    Setting("OPTIONAL", "graceful_timeout", _integer(0), 600,
            "seconds a stopping worker waits for sessions"),
    Setting("OPTIONAL", "worker_timeout", _integer(0), 60,
            "seconds without heartbeat before a worker is killed; 0 = never"),
    Setting("OPTIONAL", "worker_boot_timeout", _integer(0), 60,
            "seconds a new worker may take to serve before it is killed; 0 = never"),
    Setting("OPTIONAL", "worker_max_rss", _integer(0), 2048,
            "MiB of RSS that triggers a graceful worker recycle; 0 = never"),
    Setting("OPTIONAL", "health_check_interval", _integer(1, 3600), 5,
            "seconds between worker health checks"),
    # Connection governance before login (see docs/security.md).
    Setting("OPTIONAL", "login_timeout", _integer(1, 3600), 30,
            "seconds from connect to a successful login; no command resets it"),
    Setting("OPTIONAL", "max_prelogin_connections", _integer(0), 128,
            "connections not logged in yet, server-wide; 0 = unlimited"),
    Setting("OPTIONAL", "max_prelogin_connections_per_ip", _integer(0), 16,
            "connections not logged in yet from one client address; 0 = unlimited"),
    # External authentication (see docs/security.md, "External authentication").
    Setting("OPTIONAL", "auth_hook_url", parse_url, None,
            "service asked (POST of JSON) about logins of users not in the file: it answers "
            "deny or an account definition", "none: only the file's accounts"),
    Setting("OPTIONAL", "auth_hook_command", parse_command, None,
            "program asked instead of a URL (JSON on stdin, answer on stdout), run without a "
            "shell", "none"),
    Setting("OPTIONAL", "auth_hook_timeout", _integer(100, 60000), 5000,
            "milliseconds a hook answer may take (then 421, try later); every failed login "
            "with a hook is answered this long after PASS, whatever failed"),
    Setting("OPTIONAL", "auth_cache_ttl", _integer(0, 86400), 60,
            "seconds a hook's yes is reused for the same user, password, address and TLS; "
            "a no is never kept; 0 = ask every time"),
    Setting("OPTIONAL", "auth_hook_order", _choice("file_first", "hook_first", fold=str.lower),
            "file_first", "file_first: the file's accounts are never sent to the hook; "
            "hook_first: the hook is asked first, the file's account when it says no"),
    Setting("OPTIONAL", "auth_hook_parallel", _integer(1, 256), 8,
            "hook calls one worker makes at once; the others wait their turn within "
            "auth_hook_timeout"),
    Setting(CREDENTIALS_PREFIX, "cos_secretid", _text, REQUIRED, "API SecretId"),
    Setting(CREDENTIALS_PREFIX, "cos_secretkey", _text, REQUIRED, "API SecretKey"),
    Setting("OPTIONAL", "max_password_checks", _integer(1, 256), None,
            "password checks (scrypt, 16 MiB each) one worker runs at once, the others wait "
            "their turn within login_timeout", "CPUs / worker_processes, at least 1"),
    # Data connections: how long one may stall before it is cut off (421).
    Setting("OPTIONAL", "data_connection_timeout", _integer(1, 86400), 300,
            "seconds a transfer may go without moving a byte before it is cut off (421)"),
    # Quotas (quota_size, quota_files): what the server keeps as it writes is caught up with
    # what other tools wrote by scanning the home again.
    Setting("OPTIONAL", "quota_scan_interval", _integer(0, 30 * 86400), 3600,
            "seconds between scans of a home with a quota (files written by other tools "
            "counted); 0 = only at first use and on cosftpctl quota-scan"),
    # For operators: Prometheus metrics and the log files of vsftpd's format.
    Setting("NETWORK", "metrics_address", _ip_address, "127.0.0.1",
            "address of the Prometheus endpoint"),
    Setting("NETWORK", "metrics_port", _integer(0, 65535), 0,
            "port of the Prometheus endpoint (GET /metrics); 0 = off"),
    # The admin API and web console (docs/operations.md), off by default.
    Setting("NETWORK", "admin_address", _ip_address, "127.0.0.1",
            "address of the admin API and web console (keep it private or firewalled)"),
    Setting("NETWORK", "admin_port", _integer(0, 65535), 0,
            "port of the admin API (/api/v1/) and web console (/); HTTPS with tls_certfile; "
            "0 = off"),
    Setting("ADMIN", "tokens", _admin_tokens, (),
            "bearer tokens of the admin API: name:hash:rw, name:hash:ro (hash from cosftpctl "
            "hash-password; ro tokens read, rw tokens also kick, ban, unban and reload)"),
    Setting("OPTIONAL", "xferlog_enable", _boolean, False,
            "write one xferlog line per finished or failed transfer"),
    Setting("OPTIONAL", "xferlog_file", parse_path, None, "transfer log (xferlog_enable)",
            "<log_dir>/xferlog"),
    Setting("OPTIONAL", "vsftpd_log_file", parse_path, None,
            "vsftpd-format log of logins and transfers (for fail2ban's vsftpd filter)",
            "none: not written"),
    # How clients' names are decoded and listings encoded; keys stay UTF-8 in COS.
    Setting("OPTIONAL", "ftp_encoding", _encoding, "utf-8",
            "encoding of file names on the wire: utf-8, gbk, gb18030, latin-1..."),
    Setting(ACCOUNT_PREFIX, "ftp_encoding", _encoding, None,
            "this account's encoding of file names", "[OPTIONAL] ftp_encoding"),
    # The transfer engine of each worker (see docs/operations.md, "Memory and scheduling").
    Setting("OPTIONAL", "upload_memory_limit", _integer(4, 1024 * 1024), None,
            "MiB of part buffers per worker, for all its uploads together",
            "RAM / 4 / worker_processes, 64 to 1024, at least two of the largest parts"),
    Setting("OPTIONAL", "copy_thread_num", _integer(1, 256), min(16, _CPUS * 4),
            "threads per worker for server-side copies (renames, MFMT, APPE)",
            "4 x CPUs, at most 16"),
    # Who parses what clients send, when started as root (see docs/security.md).
    Setting("OPTIONAL", "run_as_user", _system_name, None,
            "user the workers and the metrics exporter run as when the server starts as "
            "root (better than nobody: a user of its own, such as cosftp)", "nobody"),
    Setting("OPTIONAL", "run_as_group", _system_name, None, "their group",
            "run_as_user's primary group"),
    Setting("OPTIONAL", "run_as_root", _boolean, False,
            "let the workers and the exporter run as root (not recommended)"),
    # Events and pre-checks (docs/events.md).
    *_scoped("event_hook_url", parse_url, None,
             "HTTP(S) receiver of events: a signed JSON POST per event"),
    *_scoped("event_hook_secret", _text, None,
             "HMAC-SHA256 key of the X-Cosftp-Signature header (needed with a URL)",
             inherited=True),
    *_scoped("event_hook_command", parse_command, None,
             "program run per event, without a shell: the event on stdin and in COSFTP_* "
             "environment variables"),
    *_scoped("event_hook_events", parse_event_names, None,
             "events sent: upload, upload_failed, download, delete, rename, mkdir, rmdir, "
             "login, login_failed, ban", "all"),
    *_scoped("event_hook_paths", parse_globs, None,
             "FTP paths whose events are sent (events without a path always are)",
             "every path"),
    *_scoped("event_hook_timeout", _integer(1, 300), 10,
             "seconds a receiver or command has per event", inherited=True),
    *_scoped("pre_upload_hook_url", parse_url, None,
             "HTTP(S) service asked to allow each STOR and APPE before its 150",
             inherited=True),
    *_scoped("pre_delete_hook_url", parse_url, None,
             "HTTP(S) service asked to allow each DELE, RMD and rename before it runs",
             inherited=True),
    Setting(HOOKS_SECTION, "event_spool_dir", parse_path, None,
            "directory (made 0700) where events wait until delivered", "<log_dir>/events"),
    Setting(HOOKS_SECTION, "event_spool_max_mib", _integer(1, 1024 * 1024), 256,
            "MiB of disk the event spool may take"),
    Setting(HOOKS_SECTION, "event_spool_full",
            _choice(*SPOOL_FULL_CHOICES, fold=str.lower), "refuse",
            "a full spool: refuse (451) the commands whose event it cannot keep, or "
            "drop_oldest (counted and logged)"),
    Setting(HOOKS_SECTION, "hook_retry_max_age", _integer(1), 86400,
            "seconds an event is retried before it goes to the dead-letter file"),
    Setting(HOOKS_SECTION, "pre_hook_timeout", _integer(1, 300), 5,
            "seconds a pre-check may take"),
    Setting(HOOKS_SECTION, "pre_hook_failure",
            _choice(*PRE_HOOK_FAILURE_CHOICES, fold=str.lower), "closed",
            "a pre-check that fails or times out: closed = refuse (451), open = allow"),
)

_BY_SECTION: dict[str, dict[str, Setting]] = {}
for _setting in SETTINGS:
    _BY_SECTION.setdefault(_setting.section, {})[_setting.name] = _setting

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class _Reader:
    """Reads the settings of one file, collecting warnings; raises ``ConfigError``."""

    def __init__(self, parser: configparser.RawConfigParser, path: str,
                 environ: Mapping[str, str]) -> None:
        self.parser, self.path, self.environ = parser, path, environ
        self.base = base_dir(path)
        self.warnings: list[str] = []

    def error(self, problem: str, section: str, option: Optional[str] = None) -> ConfigError:
        return ConfigError(problem, self.path, section, option)

    def section(self, section: str, kind: str) -> dict[str, Any]:
        """Return ``{option: value}`` for every setting of ``kind`` in ``section``."""
        known = _BY_SECTION[kind]
        present = self.parser.has_section(section)
        if present:
            for option in self.parser.options(section):
                if option not in known:
                    self.warnings.append(f"{self.path} [{section}] {option}: unknown option, "
                                         "ignored")
        return {name: self._value(section, setting, present) for name, setting in known.items()}

    def _value(self, section: str, setting: Setting, present: bool) -> Any:
        value = self._parsed(section, setting, present)
        if setting.parse is parse_path and value is not None:
            return resolve(value, self.base)  # never the working directory's
        return value

    def _parsed(self, section: str, setting: Setting, present: bool) -> Any:
        raw = self.parser.get(section, setting.name, fallback="") if present else ""
        raw = self._substitute(raw.strip(), section, setting.name)
        if raw == "" or raw.lower() == "default":
            if setting.default is REQUIRED:
                raise self.error("is required", section, setting.name)
            return setting.default
        try:
            return setting.parse(raw)
        except ValueError as exc:
            problem = str(exc)
            if setting.name in SECRET_OPTIONS and not isinstance(exc, HashFormatError):
                problem = "has an invalid value"
            raise self.error(problem, section, setting.name) from None

    def _substitute(self, raw: str, section: str, option: str) -> str:
        def replace(match: re.Match) -> str:
            name = match.group(1)
            if name not in self.environ:
                raise self.error(f"environment variable {name} is not set", section, option)
            return self.environ[name]
        return _ENV_RE.sub(replace, raw)


def _folder(reader: _Reader, section: str) -> FolderConfig:
    values = reader.section(section, FOLDER_PREFIX)
    if values["cos_bucket"] is None:
        for option in ("cos_region", "cos_endpoint"):
            if values[option]:
                raise reader.error("needs cos_bucket (without it the folder is in the "
                                   "mounting account's bucket)", section, option)
    elif not values["cos_region"] and not values["cos_endpoint"]:
        raise reader.error("is required with cos_bucket (or set cos_endpoint)", section,
                           "cos_region")
    if (values["cos_secretid"] is None) != (values["cos_secretkey"] is None):
        missing = "cos_secretkey" if values["cos_secretkey"] is None else "cos_secretid"
        raise reader.error("is required when the other key is set", section, missing)
    return FolderConfig(
        name=section[len(FOLDER_PREFIX) + 1:], section=section,
        authority=values["authority"], delete_enable=values["delete_enable"],
        prefix=values["cos_prefix"], secret_id=values["cos_secretid"],
        secret_key=values["cos_secretkey"], bucket=values["cos_bucket"],
        region=values["cos_region"], endpoint=values["cos_endpoint"],
        protocol=values["cos_protocol"], cos_ip=values["cos_ip"], cos_port=values["cos_port"])


def _mounts(reader: _Reader, section: str, listed: tuple[tuple[str, str], ...],
            folders: Mapping[str, FolderConfig]) -> tuple[tuple[str, FolderConfig], ...]:
    """The account's ``virtual_folders`` with each name resolved to its section."""
    for _, name in listed:
        if name not in folders:
            known = ", ".join(sorted(folders)) or "none"
            raise reader.error(f"{name!r} names no [{FOLDER_PREFIX}_{name}] section (folders: "
                               f"{known})", section, "virtual_folders")
    return tuple((path, folders[name]) for path, name in listed)


def _account(reader: _Reader, section: str, default_encoding: str,
             credentials: Mapping[str, tuple[str, str]],
             folders: Mapping[str, FolderConfig],
             server_hooks: Mapping[str, Any]) -> AccountConfig:
    values = reader.section(section, ACCOUNT_PREFIX)
    secret_id, secret_key = _keys(reader, section, values, credentials)
    if not values["cos_region"] and not values["cos_endpoint"]:
        raise reader.error("is required (or set cos_endpoint)", section, "cos_region")
    if values["cos_port"] is not None and values["cos_ip"] is None:
        raise reader.error("needs cos_ip", section, "cos_port")
    if values["anonymous_enable"] and values["ftp_login_user_name"] != "anonymous":
        raise reader.error("needs ftp_login_user_name = anonymous", section, "anonymous_enable")
    if values["anonymous_enable"] and values["authority"] != "R":
        raise reader.error("anonymous access is read-only: set authority = R", section,
                           "authority")
    for option in RATE_OPTIONS:
        if 0 < values[option] < MIN_RATE:
            raise reader.error(f"{values[option]} bytes/s is too low to pace a transfer: "
                               f"set at least 1K (or 0: no limit)", section, option)
    mounts = _mounts(reader, section, values["virtual_folders"], folders)
    for path, folder in mounts if values["anonymous_enable"] else ():
        if folder.authority != "R":
            raise reader.error(f"anonymous access is read-only: [{folder.section}] at {path} "
                               f"has authority = {folder.authority}; mount only folders with "
                               "authority = R", section, "virtual_folders")
    return AccountConfig(
        section=section, secret_id=secret_id, secret_key=secret_key,
        bucket=values["cos_bucket"], region=values["cos_region"],
        protocol=values["cos_protocol"], endpoint=values["cos_endpoint"],
        cos_ip=values["cos_ip"], cos_port=values["cos_port"], home_dir=values["home_dir"],
        user=values["ftp_login_user_name"], password=values["ftp_login_user_password"],
        authority=values["authority"], delete_enable=values["delete_enable"],
        anonymous_enable=values["anonymous_enable"], tls_required=values["tls_required"],
        require_existing_dir=values["require_existing_dir"],
        ftp_encoding=values["ftp_encoding"] or default_encoding, prefix=values["cos_prefix"],
        quota_size=values["quota_size"], quota_files=values["quota_files"],
        limits=AccountLimits(
            values["max_upload_rate"], values["max_download_rate"], values["local_max_rate"],
            values["max_sessions"], values["allowed_ips"], values["denied_ips"],
            values["login_message"]),
        folders=mounts,
        hooks=_scope_hooks(reader, values, section, server_hooks),
    )


def _keys(reader: _Reader, section: str, values: dict[str, Any],
          credentials: Mapping[str, tuple[str, str]]) -> tuple[str, str]:
    """An account's SecretId and SecretKey: its own, or those of the
    ``[COS_CREDENTIALS_<name>]`` section its ``cos_credentials`` names."""
    named = values["cos_credentials"]
    if named is None:
        for option in ("cos_secretid", "cos_secretkey"):
            if values[option] is None:
                raise reader.error("is required (or set cos_credentials)", section, option)
        return values["cos_secretid"], values["cos_secretkey"]
    if values["cos_secretid"] is not None or values["cos_secretkey"] is not None:
        raise reader.error("cannot come with cos_secretid or cos_secretkey", section,
                           "cos_credentials")
    if named not in credentials:
        raise reader.error(f"names no [{CREDENTIALS_PREFIX}_<name>] section: {named!r}",
                           section, "cos_credentials")
    return credentials[named]


def _credentials(reader: _Reader, sections: list[str]) -> dict[str, tuple[str, str]]:
    """The ``[COS_CREDENTIALS_<name>]`` sections, by name."""
    found = {}
    for section in sections:
        match = _CREDENTIALS_RE.match(section)
        if match:
            values = reader.section(section, CREDENTIALS_PREFIX)
            found[match.group(1)] = (values["cos_secretid"], values["cos_secretkey"])
    return found


def _scope_hooks(reader: _Reader, values: dict[str, Any], section: str,
                 server: Optional[Mapping[str, Any]] = None) -> ScopeHooks:
    """The hooks ``values`` of one section configure; an account's (``server`` given) take
    the server's secret and timeout unless they set their own."""
    inherited = server or {}
    secret = values["event_hook_secret"] or inherited.get("event_hook_secret") or ""
    timeout = values["event_hook_timeout"] or inherited.get("event_hook_timeout") or 10
    urls = [name for name in ("event_hook_url", "pre_upload_hook_url", "pre_delete_hook_url")
            if values[name]]
    if urls and not secret:
        raise reader.error(f"is required with {urls[0]}: receivers verify the "
                           "X-Cosftp-Signature header it makes", section, "event_hook_secret")
    chosen = {"events": values["event_hook_events"] or HookTarget.events,
              "paths": values["event_hook_paths"] or (), "timeout": timeout, "scope": section}
    targets = []
    if values["event_hook_url"]:
        targets.append(HookTarget(HTTP, values["event_hook_url"], secret, **chosen))
    if values["event_hook_command"]:
        argv = values["event_hook_command"]
        targets.append(HookTarget(COMMAND, shlex.join(argv), "", argv=argv, **chosen))
    if not targets and (values["event_hook_events"] or values["event_hook_paths"]):
        reader.warnings.append(f"{reader.path} [{section}] event_hook_events/event_hook_paths: "
                               "no event_hook_url or event_hook_command to send to, ignored")

    def check(name: str) -> Optional[PreCheck]:
        return PreCheck(values[name], secret) if values[name] else None
    return ScopeHooks(tuple(targets), check("pre_upload_hook_url"), check("pre_delete_hook_url"))


def _hooks(reader: _Reader, values: dict[str, Any], log_dir: str) -> HooksConfig:
    return HooksConfig(
        server=_scope_hooks(reader, values, HOOKS_SECTION),
        spool_dir=values["event_spool_dir"] or os.path.join(log_dir, "events"),
        spool_max=values["event_spool_max_mib"] * MIB, spool_full=values["event_spool_full"],
        retry_max_age=values["hook_retry_max_age"], pre_hook_timeout=values["pre_hook_timeout"],
        pre_hook_failure=values["pre_hook_failure"])


def _check_unique(reader: _Reader, accounts: list[AccountConfig], attr: str, option: str) -> None:
    seen: dict[str, str] = {}
    for account in accounts:
        value = getattr(account, attr)
        if value in seen:
            raise reader.error(f"{value!r} is already used in [{seen[value]}]",
                               account.section, option)
        seen[value] = account.section


def _check_hash_parameters(reader: _Reader, accounts: list[AccountConfig]) -> None:
    """Warn when hashes differ in cost: a failed login is as slow as the costliest, so a
    wrong password for a cheaper one is faster and tells that the user exists."""
    kinds = {scrypt_parameters(a.password) for a in accounts} - {None}
    if len(kinds) > 1:
        listed = ", ".join(f"N={n} r={r} p={p}" for n, r, p in sorted(kinds))
        reader.warnings.append(f"{reader.path}: the password hashes use different scrypt "
                               f"parameters ({listed}); failed logins then take different "
                               "times: hash them all with cosftpctl hash-password")


def _server(reader: _Reader, optional: dict[str, Any]) -> ServerConfig:
    log_dir = optional["log_dir"]
    return ServerConfig(
        max_connection_num=optional["max_connection_num"],
        max_connections_per_ip=optional["max_connections_per_ip"],
        max_list_file=optional["max_list_file"], log_level=optional["log_level"],
        log_dir=log_dir, pid_file=optional["pid_file"] or default_pid_file(log_dir),
        worker_processes=optional["worker_processes"],
        max_login_failures=optional["max_login_failures"],
        login_failure_window=optional["login_failure_window"],
        ban_time=optional["ban_time"],
        ban_allowlist=_allowlist(reader, optional["ban_allowlist"]),
        graceful_timeout=optional["graceful_timeout"],
        worker_timeout=optional["worker_timeout"],
        worker_boot_timeout=optional["worker_boot_timeout"],
        worker_max_rss=optional["worker_max_rss"],
        health_check_interval=optional["health_check_interval"],
        login_timeout=optional["login_timeout"],
        max_prelogin_connections=optional["max_prelogin_connections"],
        max_prelogin_connections_per_ip=optional["max_prelogin_connections_per_ip"],
        ftp_encoding=optional["ftp_encoding"],
        data_connection_timeout=optional["data_connection_timeout"],
        max_password_checks=optional["max_password_checks"] or
        default_password_checks(optional["worker_processes"]),
        quota_scan_interval=optional["quota_scan_interval"],
        ftpd_banner=optional["ftpd_banner"],
    )


def _allowlist(reader: _Reader, networks: tuple) -> tuple:
    """``ban_allowlist``, with a warning for a block that holds every address of its family
    (the office's ``/24`` written ``/0``): nobody of that family would ever be banned."""
    for network in networks:
        if network.prefixlen == 0:
            reader.warnings.append(f"{reader.path} [OPTIONAL] ban_allowlist: {network} is every "
                                   f"IPv{network.version} address: no such client is ever "
                                   "banned")
    return networks


def _network(reader: _Reader, net: dict[str, Any], accounts: list[AccountConfig]) -> NetworkConfig:
    """Build ``[NETWORK]``, loading the TLS certificate and key when they are configured;
    TLS options that need a certificate raise ``ConfigError`` without one."""
    tls = _server_tls(reader, net["tls_certfile"], net["tls_keyfile"],
                      net["require_ssl_reuse"])
    implicit_port = net["implicit_tls_port"]
    if tls is None:
        if net["require_ssl_reuse"]:
            raise reader.error("needs tls_certfile", "NETWORK", "require_ssl_reuse")
        needing = next((a.section for a in accounts if a.tls_required), None)
        if needing is not None:
            raise reader.error("needs [NETWORK] tls_certfile", needing, "tls_required")
        if implicit_port:
            raise reader.error("needs tls_certfile", "NETWORK", "implicit_tls_port")
    elif implicit_port and implicit_port == net["listen_port"]:
        raise reader.error(f"{implicit_port} is already listen_port", "NETWORK",
                           "implicit_tls_port")
    if net["proxy_protocol"] != "off" and not net["proxy_allowed"]:
        raise reader.error("needs proxy_allowed (the balancers' addresses)", "NETWORK",
                           "proxy_protocol")
    proxy = ProxyConfig(net["proxy_protocol"], net["proxy_allowed"])
    return NetworkConfig(net["listen_address"], net["listen_port"], net["masquerade_address"],
                         net["passive_port"], implicit_port, tls, proxy)


def _admin(reader: _Reader, net: dict[str, Any], values: dict[str, Any],
           tls: Optional[ServerTLS]) -> AdminConfig:
    """Build the admin API's settings: a port of its own, and tokens when it is on."""
    address, port, tokens = net["admin_address"], net["admin_port"], values["tokens"]
    if not port:
        return AdminConfig(address, 0, tokens)
    taken = {net["listen_port"]: "listen_port", net["implicit_tls_port"]: "implicit_tls_port",
             net["metrics_port"]: "metrics_port"}
    if port in taken:
        raise reader.error(f"{port} is already {taken[port]}", "NETWORK", "admin_port")
    if not tokens:
        raise reader.error("needs at least one token in [ADMIN] tokens (name:hash:rw, hash "
                           "from cosftpctl hash-password)", "NETWORK", "admin_port")
    if tls is None and not ipaddress.ip_address(address).is_loopback:
        reader.warnings.append(f"{reader.path} [NETWORK] admin_address: {address} is not "
                               "loopback and there is no tls_certfile: the admin API's tokens "
                               "would cross the network in clear text")
    return AdminConfig(address, port, tokens)


def _cluster(values: dict[str, Any], port: int) -> ClusterConfig:
    node = values["node_id"] or f"{socket.gethostname()}:{port}"
    return ClusterConfig(values["redis_url"], values["redis_down"],
                         values["redis_timeout"] / 1000, node)


def _operator(reader: _Reader, net: dict[str, Any], optional: dict[str, Any]) -> OperatorConfig:
    port = net["metrics_port"]
    if port and port in (net["listen_port"], net["implicit_tls_port"]):
        raise reader.error(f"{port} is already an FTP port", "NETWORK", "metrics_port")
    xferlog = None
    if optional["xferlog_enable"]:
        xferlog = optional["xferlog_file"] or os.path.join(optional["log_dir"], "xferlog")
    return OperatorConfig(net["metrics_address"], port, xferlog, optional["vsftpd_log_file"])


_ROOT_NAMES = ("root", "0")


def _run_as(reader: _Reader, optional: dict[str, Any]) -> RunAsConfig:
    """Build the run_as_* settings: root only with run_as_root, and run_as_root with no
    other user or group (it would be ignored: the file would not say what runs)."""
    user, group, as_root = (optional["run_as_user"], optional["run_as_group"],
                            optional["run_as_root"])
    if as_root:
        for option, value in (("run_as_user", user), ("run_as_group", group)):
            if value is not None and value not in _ROOT_NAMES:
                raise reader.error(f"{value!r} contradicts run_as_root = true (the workers "
                                   "stay root): remove one of them", "OPTIONAL", option)
        return RunAsConfig("root", "root", True)
    for option, value in (("run_as_user", user), ("run_as_group", group)):
        if value in _ROOT_NAMES:
            raise reader.error("root would let the workers, which parse what clients send, "
                               "run as root: choose an unprivileged user (one of its own, "
                               "such as cosftp) or set run_as_root = true", "OPTIONAL", option)
    return RunAsConfig(user or RunAsConfig.user, group)


def _server_tls(reader: _Reader, certfile: Optional[str], keyfile: Optional[str],
                require_reuse: bool) -> Optional[ServerTLS]:
    """Return the loaded certificate and key (None: TLS off); raises ``ConfigError``."""
    if certfile is None:
        if keyfile is not None:
            raise reader.error("needs tls_certfile", "NETWORK", "tls_keyfile")
        return None
    try:
        tls = load_server_tls(certfile, keyfile, require_reuse)
    except TLSFileError as exc:
        raise reader.error(exc.problem, "NETWORK", exc.option) from None
    warning = tls.validity_warning()
    if warning:
        reader.warnings.append(f"{reader.path} [NETWORK] tls_certfile: {warning}")
    return tls


def _transfer(reader: _Reader, files: dict[str, Any], optional: dict[str, Any]) -> TransferConfig:
    """Build the transfer settings; the memory budget must hold two parts of the size that
    lets ``single_file_max_size`` fit in 10,000 parts."""
    needed = 2 * max(optional["min_part_size"], part_size_for(MIN_PART_SIZE,
                                                             files["single_file_max_size"]))
    limit_mib = optional["upload_memory_limit"]
    if limit_mib is None:  # existing files with huge parts keep working
        limit_mib = max(default_memory_limit(optional["worker_processes"]), -(-needed // MIB))
    transfer = TransferConfig(files["single_file_max_size"], optional["min_part_size"],
                              optional["upload_thread_num"],
                              optional["multipart_copy_threshold"], optional["resume_ttl"],
                              limit_mib * MIB, optional["copy_thread_num"])
    if transfer.memory_limit < needed:
        raise reader.error(f"{limit_mib} MiB cannot hold two parts of {needed // 2} bytes "
                           f"(min_part_size, and what single_file_max_size needs); set at "
                           f"least {-(-needed // MIB)}", "OPTIONAL", "upload_memory_limit")
    return transfer


def _build(reader: _Reader) -> Config:
    sections = reader.parser.sections()
    for section in sections:
        if section_kind(section) not in _BY_SECTION:
            reader.warnings.append(f"{reader.path} [{section}]: unknown section, ignored")
    optional = reader.section("OPTIONAL", "OPTIONAL")
    credentials = _credentials(reader, sections)
    folders = {folder.name: folder for folder in
               (_folder(reader, s) for s in sections if _FOLDER_RE.match(s))}
    hooks = reader.section(HOOKS_SECTION, HOOKS_SECTION)
    accounts = [_account(reader, s, optional["ftp_encoding"], credentials, folders, hooks)
                for s in sections if _ACCOUNT_RE.match(s)]
    mounted = {folder.name for account in accounts for _, folder in account.folders}
    for name in sorted(set(folders) - mounted):
        reader.warnings.append(f"{reader.path} [{FOLDER_PREFIX}_{name}]: no account mounts "
                               "this folder (virtual_folders)")
    if not accounts:
        raise ConfigError(f"no [{ACCOUNT_PREFIX}_N] section: at least one account is needed",
                          reader.path)
    _check_unique(reader, accounts, "user", "ftp_login_user_name")
    _check_unique(reader, accounts, "home_dir", "home_dir")
    _check_hash_parameters(reader, accounts)
    net = reader.section("NETWORK", "NETWORK")
    files = reader.section("FILE_OPTION", "FILE_OPTION")
    auth_hook = _auth_hook(reader, optional)
    network = _network(reader, net, accounts)
    admin = _admin(reader, net, reader.section("ADMIN", "ADMIN"), network.tls)  # may warn
    server_hooks = _hooks(reader, hooks, optional["log_dir"])  # before the warnings are taken
    return Config(
        path=reader.path,
        accounts=tuple(accounts),
        network=network,
        transfer=_transfer(reader, files, optional),
        server=_server(reader, optional),
        warnings=tuple(reader.warnings),
        operator=_operator(reader, net, optional),
        cluster=_cluster(reader.section("CLUSTER", "CLUSTER"), net["listen_port"]),
        run_as=_run_as(reader, optional),
        auth_hook=auth_hook,
        credentials=credentials,
        folders=folders,
        admin=admin,
        hooks=server_hooks,
    )


def _auth_hook(reader: _Reader, optional: dict[str, Any]) -> AuthHookConfig:
    url, command = optional["auth_hook_url"], optional["auth_hook_command"] or ()
    if url and command:
        raise reader.error("cannot be set with auth_hook_url: choose one", "OPTIONAL",
                           "auth_hook_command")
    return AuthHookConfig(url, command, optional["auth_hook_timeout"] / 1000,
                          optional["auth_cache_ttl"], optional["auth_hook_order"],
                          optional["auth_hook_parallel"])


# Account options an auth hook's answer may not give: the server sets them (the user is the
# one that logged in, the hook checked the password, anonymous logins are the file's).
HOOK_RESERVED = ("ftp_login_user_name", "ftp_login_user_password", "anonymous_enable")
# Quotas are the file's: every worker counts a home's usage from the configuration's homes
# (config.quotas.QuotaRules); a quota of the file covers the hook's accounts under it.
HOOK_FILE_ONLY = ("quota_size", "quota_files")
# So are an account's event destinations and pre-checks: whether workers spool events and
# an events process delivers them is decided from the file, before any login.
HOOK_FILE_EVENTS = tuple(name for name in _BY_SECTION[ACCOUNT_PREFIX]
                         if name in _BY_SECTION[HOOKS_SECTION])
HOOK_ANSWER = "auth hook answer"
_HOOK_SECTION = "account"


def hook_account(definition: Mapping[str, Any], user: str, config: Config) -> AccountConfig:
    """Return the account an auth hook's answer defines for ``user``: the options of a
    ``[COS_ACCOUNT_N]`` section, read by the same table and checks as the file. Raises
    ``ConfigError`` saying what is wrong (never quoting a secret)."""
    values = dict(definition)
    values.setdefault("home_dir", f"/auth-hook/{user}")
    known = _BY_SECTION[ACCOUNT_PREFIX]
    parser = configparser.RawConfigParser()
    parser.add_section(_HOOK_SECTION)
    for option, value in values.items():
        if option in HOOK_RESERVED:
            raise _hook_error("is set by the server, not by the hook", option)
        if option in HOOK_FILE_ONLY:
            raise _hook_error("is set in the file only: give the home its quota in a "
                              "[COS_ACCOUNT_N] section of the same bucket and cos_prefix "
                              "(it counts the hook's accounts there too)", option)
        if option in HOOK_FILE_EVENTS:
            raise _hook_error("is set in the file only: the [HOOKS] destinations get the "
                              "events of the hook's accounts too", option)
        if option not in known:
            shown = option if re.fullmatch(r"[A-Za-z0-9_]{1,64}", option) else \
                repr(option[:64])  # as the log may show it
            raise _hook_error("is not an account option", shown)
        parser.set(_HOOK_SECTION, option, _ini_text(option, value))
    parser.set(_HOOK_SECTION, "ftp_login_user_name", user)
    # Never compared: the hook checked the password (AccountConfig requires one).
    parser.set(_HOOK_SECTION, "ftp_login_user_password", os.urandom(16).hex())
    # No ${NAME}: the server's environment is not the hook's to read.
    reader = _Reader(parser, HOOK_ANSWER, environ={})
    account = _account(reader, _HOOK_SECTION, config.server.ftp_encoding, config.credentials,
                       config.folders, {})
    return dataclasses.replace(account, section=HOOK_ANSWER, from_hook=True)


def _hook_error(problem: str, option: str) -> ConfigError:
    return ConfigError(problem, HOOK_ANSWER, _HOOK_SECTION, option)


def _ini_text(option: str, value: Any) -> str:
    """An answer's JSON value as the file would spell it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int)):
        return str(value)
    if value is None:
        return ""
    raise _hook_error("must be text, a whole number or true/false", option)


def parse_config(text: str, path: str = "<string>",
                 environ: Optional[Mapping[str, str]] = None) -> Config:
    """Parse config ``text``; ``path`` names it in messages. Raises ``ConfigError``."""
    parser = configparser.RawConfigParser(inline_comment_prefixes=("#",), strict=True)
    try:
        parser.read_string(text, source=path)
    except configparser.Error as exc:
        # configparser's message quotes the offending line, which may hold a secret.
        line = getattr(exc, "lineno", None)
        where = f" at line {line}" if line else ""
        raise ConfigError(f"not a valid INI file{where} ({type(exc).__name__})", path) from None
    return _build(_Reader(parser, path, os.environ if environ is None else environ))


def load_config(path: str, environ: Optional[Mapping[str, str]] = None) -> Config:
    """Read and validate the file at ``path``. Raises ``ConfigError``."""
    absolute = os.path.abspath(path)
    try:
        with open(absolute, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read configuration file: {exc}", absolute) from None
    return parse_config(text, absolute, environ)


def resolve_masquerade(config: Config) -> Optional[str]:
    """Return the PASV address as an IP (None if unset). Raises ``ConfigError``.

    Called by each worker as it starts and by ``cosftpctl check``, never while parsing:
    a reload must not make the master wait on DNS.
    """
    name = config.network.masquerade_address
    if name is None:
        return None
    try:
        return socket.gethostbyname(name)
    except OSError as exc:
        raise ConfigError(f"{name!r} does not resolve: {exc}", config.path, "NETWORK",
                          "masquerade_address") from exc
