"""Every option of the file, declared once: its section, name, parser, default and help
(``SETTINGS``). Reading, defaults, validation, the unknown-option warnings and the generated
reference (docs/configuration.md) are all driven from this table."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..paths import home_prefix
from .hooks import (
    PRE_HOOK_FAILURE_CHOICES,
    SPOOL_FULL_CHOICES,
    parse_command,
    parse_event_names,
    parse_globs,
    parse_url,
)
from .locations import (
    DEFAULT_LISTEN_PORT,
    DEFAULT_LOG_DIR,
    parse_path,
)
from .model import (
    ACCOUNT_PREFIX,
    CREDENTIALS_PREFIX,
    FOLDER_PREFIX,
    GIB,
    HOOKS_SECTION,
    MAX_FAILED_LOGIN_DELAY,
    MAX_HOOK_QUOTA_HOMES,
    MAX_PART_SIZE,
    MAX_PARTS,
    MAX_WORKER_PROCESSES,
    MIB,
    MIN_PART_SIZE,
    MIN_STOP_TIMEOUT,
)
from .sizes import parse_size
from .values import (
    BYTES,
    admin_tokens,
    boolean,
    bucket,
    choice,
    encoding,
    home_dir,
    host,
    integer,
    ip_address,
    ip_addresses,
    message,
    mount_list,
    networks,
    password,
    port_range,
    protocol,
    redis_url,
    system_name,
    text,
    words_for,
)

_CPUS = os.cpu_count() or 1


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
        return words_for(self.parse)


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


def _named_credentials(section: str, whose: str) -> Setting:
    """``cos_credentials`` of an account or a folder."""
    return Setting(section, "cos_credentials", text, None,
                   f"the name of a [COS_CREDENTIALS_<name>] section whose keys {whose} uses "
                   "instead of cos_secretid and cos_secretkey", "none")


SETTINGS: tuple[Setting, ...] = (
    Setting(ACCOUNT_PREFIX, "cos_secretid", text, None, "API SecretId",
            "none: required unless cos_credentials is set"),
    Setting(ACCOUNT_PREFIX, "cos_secretkey", text, None, "API SecretKey",
            "none: required unless cos_credentials is set"),
    _named_credentials(ACCOUNT_PREFIX, "this account"),
    Setting(ACCOUNT_PREFIX, "cos_bucket", bucket, REQUIRED, "bucket as <name>-<appid>"),
    Setting(ACCOUNT_PREFIX, "cos_region", text, None, "region, e.g. ap-guangzhou",
            "none: required unless cos_endpoint is set"),
    Setting(ACCOUNT_PREFIX, "cos_protocol", protocol, "https",
            "how to reach COS: http or https"),
    Setting(ACCOUNT_PREFIX, "cos_endpoint", host, None,
            "endpoint, e.g. cos.ap-guangzhou.myqcloud.com; wins over cos_region"),
    Setting(ACCOUNT_PREFIX, "cos_ip", ip_address, None,
            "send COS requests to this IP (private line, VPC, the emulator); Host still "
            "names the bucket"),
    Setting(ACCOUNT_PREFIX, "cos_port", integer(1, 65535), None, "port for cos_ip (needs it)"),
    Setting(ACCOUNT_PREFIX, "home_dir", home_dir, REQUIRED,
            "identifies the account (unique); nothing is written locally"),
    Setting(ACCOUNT_PREFIX, "ftp_login_user_name", text, REQUIRED, "FTP login name"),
    Setting(ACCOUNT_PREFIX, "ftp_login_user_password", password, REQUIRED,
            "FTP password, plain or scrypt$... from cosftpctl hash-password"),
    Setting(ACCOUNT_PREFIX, "authority", choice("R", "W", "RW"), REQUIRED,
            "R = download only, W = upload only, RW = both"),
    Setting(ACCOUNT_PREFIX, "delete_enable", boolean, True,
            "allow DELE, RMD and overwriting by rename"),
    Setting(ACCOUNT_PREFIX, "anonymous_enable", boolean, False,
            "let user 'anonymous' in with any password, read-only"),
    Setting(ACCOUNT_PREFIX, "tls_required", boolean, False,
            "refuse this login unless control and data connections use TLS"),
    Setting(ACCOUNT_PREFIX, "require_existing_dir", boolean, False,
            "refuse (550) STOR, APPE and RNTO into a directory that does not exist"),
    Setting(ACCOUNT_PREFIX, "cos_prefix", home_prefix, "",
            "the account's / is this key prefix of its bucket: nothing outside it can be "
            "reached, and the server's data of the account (.cosftp/) lives under it",
            "none: the bucket's root"),
    Setting(ACCOUNT_PREFIX, "quota_size", parse_size, 0,
            "most bytes the account's home may hold (its files, the server's data not "
            "counted); an upload that would pass it is refused or stopped with 552", "none"),
    Setting(ACCOUNT_PREFIX, "quota_files", integer(0), 0,
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
    Setting(ACCOUNT_PREFIX, "max_sessions", integer(0), 0,
            "logged-in sessions of the account at once, every worker (and every node with "
            "[CLUSTER] redis_url); 0 = unlimited"),
    Setting(ACCOUNT_PREFIX, "allowed_ips", networks, (),
            "client addresses/CIDR blocks this account may log in from (IPv4 and IPv6); "
            "others get the reply of a wrong password", "none: every address"),
    Setting(ACCOUNT_PREFIX, "denied_ips", networks, (),
            "client addresses/CIDR blocks this account may not log in from (wins over "
            "allowed_ips)"),
    Setting(ACCOUNT_PREFIX, "login_message", message, "",
            "text of the 230 reply to this account's login", "none: Login successful."),
    Setting("OPTIONAL", "ftpd_banner", message, "cosftp-prefork ready.",
            "text of the 220 greeting (vsftpd's name)"),
    Setting(ACCOUNT_PREFIX, "virtual_folders", mount_list, (),
            "virtual folders in this account's tree: /path=name mounts [FOLDER_name] at "
            "/path", "none"),
    # Virtual folders (see docs/configuration.md, "Virtual folders"): storage options left
    # out are the mounting account's.
    Setting(FOLDER_PREFIX, "cos_bucket", bucket, None, "bucket as <name>-<appid>",
            "the mounting account's bucket (and its region or endpoint)"),
    Setting(FOLDER_PREFIX, "cos_region", text, None, "region of cos_bucket",
            "none: required with cos_bucket unless cos_endpoint is set"),
    Setting(FOLDER_PREFIX, "cos_endpoint", host, None, "endpoint of cos_bucket; wins over "
            "cos_region", "none"),
    Setting(FOLDER_PREFIX, "cos_secretid", text, None, "API SecretId for this folder",
            "the mounting account's"),
    Setting(FOLDER_PREFIX, "cos_secretkey", text, None, "API SecretKey for this folder",
            "the mounting account's"),
    _named_credentials(FOLDER_PREFIX, "this folder"),
    Setting(FOLDER_PREFIX, "cos_protocol", protocol, None, "http or https",
            "the mounting account's"),
    Setting(FOLDER_PREFIX, "cos_ip", ip_address, None, "send this folder's COS requests to "
            "this IP", "the mounting account's"),
    Setting(FOLDER_PREFIX, "cos_port", integer(1, 65535), None, "port for cos_ip",
            "the mounting account's"),
    Setting(FOLDER_PREFIX, "cos_prefix", home_prefix, "",
            "the folder is this key prefix of its bucket (its .cosftp/ lives there too)",
            "none: the bucket's root"),
    Setting(FOLDER_PREFIX, "authority", choice("R", "W", "RW"), REQUIRED,
            "in the folder: R = download only, W = upload only, RW = both"),
    Setting(FOLDER_PREFIX, "delete_enable", boolean, True,
            "in the folder: allow DELE, RMD and overwriting by rename"),
    Setting(FOLDER_PREFIX, "quota_size", parse_size, 0,
            "most bytes the folder may hold, whichever accounts mount it (its files, the "
            "server's data not counted); an upload that would pass it is refused or stopped "
            "with 552", "none"),
    Setting(FOLDER_PREFIX, "quota_files", integer(0), 0,
            "most files the folder may hold, whichever accounts mount it; 0 = none"),
    Setting("NETWORK", "masquerade_address", host, None,
            "address announced in PASV replies (behind NAT); a name is resolved when a "
            "worker starts"),
    Setting("NETWORK", "listen_address", ip_addresses, ("0.0.0.0",),
            "address(es) to listen on, comma-separated; :: = IPv6 and IPv4"),
    Setting("NETWORK", "listen_port", integer(0, 65535), DEFAULT_LISTEN_PORT,
            "FTP control port"),
    Setting("NETWORK", "passive_port", port_range, (60000, 65535),
            "passive data port range, low,high"),
    Setting("NETWORK", "tls_certfile", parse_path, None,
            "PEM certificate chain (and key, unless tls_keyfile); enables FTPS"),
    Setting("NETWORK", "tls_keyfile", parse_path, None, "PEM private key",
            "read from tls_certfile"),
    Setting("NETWORK", "implicit_tls_port", integer(0, 65535), 0,
            "implicit FTPS port (TLS from the first byte, data connections encrypted until "
            "PROT C, as if PBSZ 0 and PROT P came first); 0 = none"),
    Setting("NETWORK", "require_ssl_reuse", boolean, False,
            "TLS data connections must resume the control connection's TLS session"),
    Setting("NETWORK", "force_local_logins_ssl", boolean, False,
            "every USER without TLS gets the same 530, whatever the name (but an "
            "anonymous_enable account's): no password in clear text, and no name told apart "
            "from another, where per-account tls_required tells its names"),
    Setting("NETWORK", "force_local_data_ssl", boolean, False,
            "every login but an anonymous_enable account's must encrypt its data connections "
            "(PROT P): a transfer or listing without it gets 522 before anything is opened, "
            "as vsftpd answers; per account: tls_required"),
    # Behind a load balancer (see docs/cluster.md).
    Setting("NETWORK", "proxy_protocol",
            choice("off", "optional", "required", fold=str.lower), "off",
            "PROXY protocol v1/v2 header from proxy_allowed: off, optional, required"),
    Setting("NETWORK", "proxy_allowed", networks, (),
            "addresses/CIDR blocks of the balancers allowed to send a PROXY header"),
    Setting("CLUSTER", "redis_url", redis_url, None,
            "Redis/Valkey shared by every node for bans and connection counts"),
    Setting("CLUSTER", "redis_down", choice("open", "closed", fold=str.lower), "open",
            "Redis unreachable or refusing writes (a read-only replica): open = serve on "
            "this node's own state, closed = refuse"),
    Setting("CLUSTER", "redis_timeout", integer(1, 10000), 500,
            "milliseconds one Redis call may take"),
    Setting("CLUSTER", "redis_check_interval", integer(1, 3600), 5,
            "seconds between checks whether Redis serves again, while it is unreachable or "
            "refusing writes (redis_down then holds)"),
    Setting("CLUSTER", "node_id", text, "", "this node's name in Redis",
            "<host name>:<listen_port>"),
    Setting("FILE_OPTION", "single_file_max_size",
            integer(1, MAX_PARTS * MAX_PART_SIZE, BYTES),
            200 * GIB, "largest file accepted, in bytes"),
    Setting("OPTIONAL", "min_part_size", integer(MIN_PART_SIZE, MAX_PART_SIZE, BYTES),
            2 * MIB, "first part size of multipart uploads, in bytes; later parts grow so that "
            "single_file_max_size fits in 10,000 parts"),
    Setting("OPTIONAL", "upload_thread_num", integer(1, 256), min(32, _CPUS * 4),
            "parallel part uploads per upload", "4 x CPUs, at most 32"),
    Setting("OPTIONAL", "max_connection_num", integer(0), 512,
            "logged-in sessions, server-wide; 0 = unlimited"),
    Setting("OPTIONAL", "max_connections_per_ip", integer(0), 64,
            "connections from one client address, logged in or not; 0 = unlimited"),
    Setting("OPTIONAL", "max_list_file", integer(1), 10000,
            "most entries one LIST, NLST or MLSD returns"),
    Setting("OPTIONAL", "log_level", choice("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
            "INFO", "level of cosftp.log"),
    # Paths (parse_path) are resolved against the file's base directory (config.locations).
    Setting("OPTIONAL", "log_dir", parse_path, DEFAULT_LOG_DIR,
            "log directory; relative: to the config file's directory (its parent for conf/)"),
    Setting("OPTIONAL", "worker_processes", integer(1, MAX_WORKER_PROCESSES), _CPUS,
            "worker processes (forked by the master; each serves many sessions)",
            "the number of CPUs"),
    Setting("OPTIONAL", "max_worker_processes", integer(1, MAX_WORKER_PROCESSES),
            MAX_WORKER_PROCESSES, "most worker processes SIGTTIN adds up to (one more is "
            "refused with a warning); at least worker_processes"),
    Setting("OPTIONAL", "pid_file", parse_path, None,
            "pid file of the master (the state and bans files go beside it)",
            "<log_dir>/cosftp.pid"),
    Setting("OPTIONAL", "multipart_copy_threshold", integer(MIN_PART_SIZE, 5 * GIB, BYTES),
            5 * GIB, "objects larger than this are copied (renamed) in parts"),
    Setting("OPTIONAL", "resume_ttl", integer(0), 86400,
            "seconds an interrupted upload stays resumable; 0 = never park"),
    Setting("OPTIONAL", "max_login_failures", integer(0), 5,
            "failed logins from one IP before it is banned; 0 = never"),
    Setting("OPTIONAL", "login_failure_window", integer(1), 60,
            "seconds over which failed logins are counted"),
    Setting("OPTIONAL", "ban_time", integer(1), 300, "seconds a banned IP is refused"),
    Setting("OPTIONAL", "delay_failed_login", integer(0, MAX_FAILED_LOGIN_DELAY), 3,
            "seconds before a failed login is answered (530), the same for every user, known "
            "or not (vsftpd's name; its default is 1, 3 is what cos-ftp-server-V5 waited); "
            "0 = at once"),
    Setting("OPTIONAL", "ipv6_prefix_length", integer(48, 128), 64,
            "an IPv6 client counts as its network of this length for max_connections_per_ip, "
            "max_prelogin_connections_per_ip and bans (one client owns a whole /64); 128 = "
            "each address; IPv4 is always exact; read at start (a reload keeps it)"),
    Setting("OPTIONAL", "ban_allowlist", networks, (),
            "client addresses/CIDR blocks never banned (their failed logins are not "
            "counted); connection limits still apply"),
    Setting("OPTIONAL", "graceful_timeout", integer(0), 600,
            "seconds a stopping worker waits for sessions"),
    Setting("OPTIONAL", "stop_timeout", integer(MIN_STOP_TIMEOUT, 3600), 30,
            "seconds a fast stop (TERM, INT; graceful_timeout's end) allows the workers to end "
            "their transfers (426, uploads parked) and exit; then SIGABRT, SIGKILL 5 s later"),
    Setting("OPTIONAL", "worker_timeout", integer(0), 60,
            "seconds without heartbeat before a worker is killed; 0 = never"),
    Setting("OPTIONAL", "worker_boot_timeout", integer(0), 60,
            "seconds a new worker may take to serve before it is killed; 0 = never"),
    Setting("OPTIONAL", "worker_max_rss", integer(0), 2048,
            "MiB of RSS that triggers a graceful worker recycle; 0 = never"),
    Setting("OPTIONAL", "health_check_interval", integer(1, 3600), 5,
            "seconds between worker health checks"),
    # Connection governance before login (see docs/security.md).
    Setting("OPTIONAL", "login_timeout", integer(1, 3600), 30,
            "seconds from connect to a successful login; no command resets it"),
    Setting("OPTIONAL", "max_prelogin_connections", integer(0), 128,
            "connections not logged in yet, server-wide; 0 = unlimited"),
    Setting("OPTIONAL", "max_prelogin_connections_per_ip", integer(0), 16,
            "connections not logged in yet from one client address; 0 = unlimited"),
    # External authentication (see docs/security.md, "External authentication").
    Setting("OPTIONAL", "auth_hook_url", parse_url, None,
            "service asked (POST of JSON) about logins of users not in the file: it answers "
            "deny or an account definition", "none: only the file's accounts"),
    Setting("OPTIONAL", "auth_hook_command", parse_command, None,
            "program asked instead of a URL (JSON on stdin, answer on stdout), run without a "
            "shell", "none"),
    Setting("OPTIONAL", "auth_hook_timeout", integer(100, 60000), 5000,
            "milliseconds a hook answer may take (then 421, try later); every failed login "
            "with a hook is answered this long after PASS, whatever failed"),
    Setting("OPTIONAL", "auth_cache_ttl", integer(0, 86400), 60,
            "seconds a hook's yes is reused for the same user, password, address and TLS; "
            "a no is never kept; 0 = ask every time"),
    Setting("OPTIONAL", "auth_hook_order", choice("file_first", "hook_first", fold=str.lower),
            "file_first", "file_first: the file's accounts are never sent to the hook; "
            "hook_first: the hook is asked first, the file's account when it says no"),
    Setting("OPTIONAL", "auth_hook_parallel", integer(1, 256), 8,
            "hook calls one worker makes at once; the others wait their turn within "
            "auth_hook_timeout"),
    Setting("OPTIONAL", "auth_hook_quota_homes", integer(1, MAX_HOOK_QUOTA_HOMES), 1024,
            "homes (bucket and cos_prefix) the hook's answers may give a quota; a login whose "
            "answer would add one more takes the row of a home with no session logged in "
            "whose answer is older than max(auth_cache_ttl, quota_scan_interval), else gets "
            "421"),
    Setting(CREDENTIALS_PREFIX, "cos_secretid", text, REQUIRED, "API SecretId"),
    Setting(CREDENTIALS_PREFIX, "cos_secretkey", text, REQUIRED, "API SecretKey"),
    Setting("OPTIONAL", "max_password_checks", integer(1, 256), None,
            "password checks (scrypt, 16 MiB each) one worker runs at once, the others wait "
            "their turn within login_timeout", "CPUs / worker_processes, at least 1"),
    # Data connections: how long one may stall before it is cut off (421).
    Setting("OPTIONAL", "data_connection_timeout", integer(1, 86400), 300,
            "seconds a transfer may go without moving a byte before it is cut off (421)"),
    Setting("OPTIONAL", "idle_session_timeout", integer(1, 86400), 300,
            "seconds a logged-in session may send no command before it is closed (421; "
            "vsftpd's name and default); a transfer under way keeps it open"),
    Setting("OPTIONAL", "accept_timeout", integer(1, 3600), 30,
            "seconds a PASV/EPSV port waits for the client's data connection; a transfer "
            "command waiting for it then gets 425, an unused port is closed quietly"),
    Setting("OPTIONAL", "connect_timeout", integer(1, 3600), 60,
            "seconds the data connection PORT/EPRT asked for may take to connect (vsftpd's "
            "name and default); a transfer command waiting for it then gets 425"),
    # Quotas (quota_size, quota_files): what the server keeps as it writes is caught up with
    # what other tools wrote by scanning the home again.
    Setting("OPTIONAL", "quota_scan_interval", integer(0, 30 * 86400), 3600,
            "seconds between scans of a home with a quota (files written by other tools "
            "counted); 0 = only at first use and on cosftpctl quota-scan"),
    # For operators: Prometheus metrics and the log files of vsftpd's format.
    Setting("NETWORK", "metrics_address", ip_address, "127.0.0.1",
            "address of the Prometheus endpoint"),
    Setting("NETWORK", "metrics_port", integer(0, 65535), 0,
            "port of the Prometheus endpoint (GET /metrics); 0 = off"),
    # The admin API and web console (docs/operations.md), off by default.
    Setting("NETWORK", "admin_address", ip_address, "127.0.0.1",
            "address of the admin API and web console (keep it private or firewalled)"),
    Setting("NETWORK", "admin_port", integer(0, 65535), 0,
            "port of the admin API (/api/v1/) and web console (/); HTTPS with tls_certfile; "
            "0 = off"),
    Setting("ADMIN", "tokens", admin_tokens, (),
            "bearer tokens of the admin API: name:hash:rw, name:hash:ro (hash from cosftpctl "
            "hash-password; ro tokens read, rw tokens also kick, ban, unban and reload)"),
    Setting("OPTIONAL", "xferlog_enable", boolean, False,
            "write one xferlog line per finished or failed transfer"),
    Setting("OPTIONAL", "xferlog_file", parse_path, None, "transfer log (xferlog_enable)",
            "<log_dir>/xferlog"),
    Setting("OPTIONAL", "vsftpd_log_file", parse_path, None,
            "vsftpd-format log of logins and transfers (for fail2ban's vsftpd filter)",
            "none: not written"),
    # How clients' names are decoded and listings encoded; keys stay UTF-8 in COS.
    Setting("OPTIONAL", "ftp_encoding", encoding, "utf-8",
            "encoding of file names on the wire: utf-8, gbk, gb18030, latin-1..."),
    Setting(ACCOUNT_PREFIX, "ftp_encoding", encoding, None,
            "this account's encoding of file names", "[OPTIONAL] ftp_encoding"),
    # The transfer engine of each worker (see docs/operations.md, "Memory and scheduling").
    Setting("OPTIONAL", "upload_memory_limit", integer(4, 1024 * 1024), None,
            "MiB of part buffers per worker, for all its uploads together",
            "RAM / 4 / worker_processes, 64 to 1024, at least two of the largest parts"),
    Setting("OPTIONAL", "copy_thread_num", integer(1, 256), min(16, _CPUS * 4),
            "threads per worker for server-side copies (renames, MFMT, APPE)",
            "4 x CPUs, at most 16"),
    # Who parses what clients send, when started as root (see docs/security.md).
    Setting("OPTIONAL", "run_as_user", system_name, None,
            "user the workers and the metrics exporter run as when the server starts as "
            "root (better than nobody: a user of its own, such as cosftp)", "nobody"),
    Setting("OPTIONAL", "run_as_group", system_name, None, "their group",
            "run_as_user's primary group"),
    Setting("OPTIONAL", "run_as_root", boolean, False,
            "let the workers and the exporter run as root (not recommended)"),
    # Events and pre-checks (docs/events.md).
    *_scoped("event_hook_url", parse_url, None,
             "HTTP(S) receiver of events: a signed JSON POST per event"),
    *_scoped("event_hook_secret", text, None,
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
    *_scoped("event_hook_timeout", integer(1, 300), 10,
             "seconds a receiver or command has per event", inherited=True),
    *_scoped("pre_upload_hook_url", parse_url, None,
             "HTTP(S) service asked to allow each STOR and APPE before its 150",
             inherited=True),
    *_scoped("pre_delete_hook_url", parse_url, None,
             "HTTP(S) service asked to allow each DELE, RMD and rename before it runs",
             inherited=True),
    Setting(HOOKS_SECTION, "event_spool_dir", parse_path, None,
            "directory (made 0700) where events wait until delivered", "<log_dir>/events"),
    Setting(HOOKS_SECTION, "event_spool_max_mib", integer(1, 1024 * 1024), 256,
            "MiB of disk the event spool may take"),
    Setting(HOOKS_SECTION, "event_spool_full",
            choice(*SPOOL_FULL_CHOICES, fold=str.lower), "refuse",
            "a full spool: refuse (451) the commands whose event it cannot keep, or "
            "drop_oldest (counted and logged)"),
    Setting(HOOKS_SECTION, "hook_retry_max_age", integer(1), 86400,
            "seconds an event is retried before it goes to the dead-letter file"),
    Setting(HOOKS_SECTION, "pre_hook_timeout", integer(1, 300), 5,
            "seconds a pre-check may take"),
    Setting(HOOKS_SECTION, "pre_hook_failure",
            choice(*PRE_HOOK_FAILURE_CHOICES, fold=str.lower), "closed",
            "a pre-check that fails or times out: closed = refuse (451), open = allow"),
)

BY_SECTION: dict[str, dict[str, Setting]] = {}
for _setting in SETTINGS:
    BY_SECTION.setdefault(_setting.section, {})[_setting.name] = _setting
