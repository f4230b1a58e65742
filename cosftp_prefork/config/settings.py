"""The configuration file (``conf/vsftpd.conf``): parse, validate, freeze.

The format is the old cos-ftp-server-V5's INI file, unchanged: ``[COS_ACCOUNT_*]`` sections,
``[NETWORK]``, ``[FILE_OPTION]`` and ``[OPTIONAL]``. Every setting is declared once in
``config.options.SETTINGS``; this module reads a file (or an auth hook's answer) by that
table into the dataclasses of ``config.model``. An empty value or the word ``default`` means
the default. ``${NAME}`` is replaced from the environment so secrets need not live in the
file; relative paths are resolved against the file's base directory (``config.locations``).
Nothing else in the package reads the file.
"""

from __future__ import annotations

import configparser
import dataclasses
import ipaddress
import os
import re
import shlex
import socket
import time
from collections.abc import Mapping
from typing import Any, Optional

from ..errors import ConfigError
from .hooks import (
    COMMAND,
    HTTP,
    HooksConfig,
    HookTarget,
    PreCheck,
    ScopeHooks,
)
from .locations import (
    BANS_SECTIONS,
    LOCATING_SECTIONS,
    base_dir,
    default_pid_file,
    locating_parser,
    parse_path,
    read_config_file,
    resolve,
)
from .model import (
    ACCOUNT_PREFIX,
    CREDENTIALS_PREFIX,
    FOLDER_PREFIX,
    HOOKS_SECTION,
    MIB,
    MIN_PART_SIZE,
    MIN_RATE,
    RATE_OPTIONS,
    SECRET_OPTIONS,
    AccountConfig,
    AccountLimits,
    AdminConfig,
    AuthHookConfig,
    BanOptions,
    ClusterConfig,
    Config,
    FolderConfig,
    Located,
    LocatedBans,
    NetworkConfig,
    OperatorConfig,
    ProxyConfig,
    RunAsConfig,
    ServerConfig,
    TransferConfig,
    default_memory_limit,
    default_password_checks,
    part_size_for,
)
from .options import (
    BY_SECTION,
    REQUIRED,
    Setting,
)
from .passwords import HashFormatError, scrypt_parameters
from .tls import ServerTLS, TLSFileError, load_server_tls
from .values import (
    ACCOUNT_SECTION_RE,
    CREDENTIALS_SECTION_RE,
    FOLDER_SECTION_RE,
    section_kind,
)

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
        known = BY_SECTION[kind]
        # The section's text read once: a get() per setting cost 40 % of a 5,000-account
        # file's parse (a chain of the section and the defaults built for each of ~37).
        written = dict(self.parser.items(section, raw=True)) \
            if self.parser.has_section(section) else {}
        for option in written:
            if option not in known:
                self.warnings.append(f"{self.path} [{section}] {option}: unknown option, "
                                     "ignored")
        return {name: self._value(section, setting, written.get(name, ""))
                for name, setting in known.items()}

    def _value(self, section: str, setting: Setting, written: str) -> Any:
        value = self._parsed(section, setting, written)
        if setting.parse is parse_path and value is not None:
            return resolve(value, self.base)  # never the working directory's
        return value

    def _parsed(self, section: str, setting: Setting, written: str) -> Any:
        raw = self._substitute(written.strip(), section, setting.name)
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


def _folder(reader: _Reader, section: str,
            credentials: Mapping[str, tuple[str, str]]) -> FolderConfig:
    values = reader.section(section, FOLDER_PREFIX)
    named = _named_keys(reader, section, values, credentials)
    if named is not None:
        values["cos_secretid"], values["cos_secretkey"] = named
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
        protocol=values["cos_protocol"], cos_ip=values["cos_ip"], cos_port=values["cos_port"],
        quota_size=values["quota_size"], quota_files=values["quota_files"])


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
    named = _named_keys(reader, section, values, credentials)
    if named is not None:
        return named
    for option in ("cos_secretid", "cos_secretkey"):
        if values[option] is None:
            raise reader.error("is required (or set cos_credentials)", section, option)
    return values["cos_secretid"], values["cos_secretkey"]


def _named_keys(reader: _Reader, section: str, values: dict[str, Any],
                credentials: Mapping[str, tuple[str, str]]) -> Optional[tuple[str, str]]:
    """The keys of the ``[COS_CREDENTIALS_<name>]`` section an account's or a folder's
    ``cos_credentials`` names (None: it names none); never beside keys of its own."""
    named = values["cos_credentials"]
    if named is None:
        return None
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
        match = CREDENTIALS_SECTION_RE.match(section)
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
        max_worker_processes=_max_workers(reader, optional),
        max_login_failures=optional["max_login_failures"],
        login_failure_window=optional["login_failure_window"],
        ban_time=optional["ban_time"],
        delay_failed_login=_failed_login_delay(reader, optional),
        ban_allowlist=_allowlist(reader, optional["ban_allowlist"]),
        ipv6_prefix_length=optional["ipv6_prefix_length"],
        graceful_timeout=optional["graceful_timeout"],
        stop_timeout=optional["stop_timeout"],
        worker_timeout=optional["worker_timeout"],
        worker_boot_timeout=optional["worker_boot_timeout"],
        worker_max_rss=optional["worker_max_rss"],
        health_check_interval=optional["health_check_interval"],
        login_timeout=optional["login_timeout"],
        max_prelogin_connections=optional["max_prelogin_connections"],
        max_prelogin_connections_per_ip=optional["max_prelogin_connections_per_ip"],
        ftp_encoding=optional["ftp_encoding"],
        data_connection_timeout=optional["data_connection_timeout"],
        idle_session_timeout=optional["idle_session_timeout"],
        accept_timeout=optional["accept_timeout"],
        connect_timeout=optional["connect_timeout"],
        max_password_checks=optional["max_password_checks"] or
        default_password_checks(optional["worker_processes"]),
        quota_scan_interval=optional["quota_scan_interval"],
        ftpd_banner=optional["ftpd_banner"],
    )


def _max_workers(reader: _Reader, optional: dict[str, Any]) -> int:
    """``max_worker_processes``, refused below ``worker_processes`` (the start would
    already be past it)."""
    most, workers = optional["max_worker_processes"], optional["worker_processes"]
    if most < workers:
        raise reader.error(f"is {most}, below worker_processes ({workers}): raise it, or "
                           "lower worker_processes", "OPTIONAL", "max_worker_processes")
    return most


def _failed_login_delay(reader: _Reader, optional: dict[str, Any]) -> int:
    """``delay_failed_login``, with a warning when it is not below ``login_timeout``: the
    connection's login time is then over before its 530, so nobody who mistyped can try
    again on it (421 Login timed out right after the 530)."""
    delay, timeout = optional["delay_failed_login"], optional["login_timeout"]
    if delay >= timeout:
        reader.warnings.append(f"{reader.path} [OPTIONAL] delay_failed_login: {delay} s is not "
                               f"below login_timeout ({timeout} s): a client that fails a "
                               "login is closed (421 Login timed out) right after its 530, "
                               "with no second try on that connection")
    return delay


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
        for option in ("require_ssl_reuse", "force_local_logins_ssl", "force_local_data_ssl"):
            if net[option]:
                raise reader.error("needs tls_certfile", "NETWORK", option)
        needing = next((a.section for a in accounts if a.tls_required), None)
        if needing is not None:
            raise reader.error("needs [NETWORK] tls_certfile", needing, "tls_required")
        if implicit_port:
            raise reader.error("needs tls_certfile", "NETWORK", "implicit_tls_port")
    elif implicit_port and implicit_port == net["listen_port"]:
        raise reader.error(f"{implicit_port} is already listen_port", "NETWORK",
                           "implicit_tls_port")
    else:
        tls = dataclasses.replace(tls, force_logins=net["force_local_logins_ssl"],
                                  force_data=net["force_local_data_ssl"])
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
                         values["redis_timeout"] / 1000, node,
                         values["redis_check_interval"])


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
        if section_kind(section) not in BY_SECTION:
            reader.warnings.append(f"{reader.path} [{section}]: unknown section, ignored")
    optional = reader.section("OPTIONAL", "OPTIONAL")
    credentials = _credentials(reader, sections)
    folders = {folder.name: folder for folder in (_folder(reader, s, credentials)
                                                  for s in sections if FOLDER_SECTION_RE.match(s))}
    hooks = reader.section(HOOKS_SECTION, HOOKS_SECTION)
    accounts = [_account(reader, s, optional["ftp_encoding"], credentials, folders, hooks)
                for s in sections if ACCOUNT_SECTION_RE.match(s)]
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
                          optional["auth_hook_parallel"], optional["auth_hook_quota_homes"])


# Account options an auth hook's answer may not give: the server sets them (the user is the
# one that logged in, the hook checked the password, anonymous logins are the file's).
HOOK_RESERVED = ("ftp_login_user_name", "ftp_login_user_password", "anonymous_enable")
# An account's event destinations and pre-checks are the file's only: whether workers spool
# events and an events process delivers them is decided from the file, before any login.
# (Quotas an answer may give: cos.quota.Quotas.admit keeps them.)
HOOK_FILE_EVENTS = tuple(name for name in BY_SECTION[ACCOUNT_PREFIX]
                         if name in BY_SECTION[HOOKS_SECTION])
HOOK_ANSWER = "auth hook answer"
_HOOK_SECTION = "account"


def hook_account(definition: Mapping[str, Any], user: str, config: Config) -> AccountConfig:
    """Return the account an auth hook's answer defines for ``user``: the options of a
    ``[COS_ACCOUNT_N]`` section, read by the same table and checks as the file. Raises
    ``ConfigError`` saying what is wrong (never quoting a secret)."""
    values = dict(definition)
    values.setdefault("home_dir", f"/auth-hook/{user}")
    known = BY_SECTION[ACCOUNT_PREFIX]
    parser = configparser.RawConfigParser()
    parser.add_section(_HOOK_SECTION)
    for option, value in values.items():
        if option in HOOK_RESERVED:
            raise _hook_error("is set by the server, not by the hook", option)
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
    return dataclasses.replace(account, section=HOOK_ANSWER, from_hook=True,
                               answered_at=time.time())


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
    absolute, text = read_config_file(path)
    return parse_config(text, absolute, environ)


def locate_server(config_path: str, environ: Optional[Mapping[str, str]] = None) -> Located:
    """Where the server of the file at ``config_path`` is, read without validating the file
    (``Located``), so that ``stop``, ``status``, ``sessions`` and ``reload`` find the server
    while the file is being edited, and fast: only ``config.locations.LOCATING_SECTIONS``
    are parsed (5,000 accounts cost nothing here), and of them only the options it takes,
    each as ``load_config`` takes it (``${NAME}``, paths following the file); one whose
    value cannot be used gets its default and is named in ``problems``. Raises
    ``ConfigError``, worded as ``load_config``'s, if the file cannot be read."""
    absolute, text = read_config_file(config_path)
    return locate_in_text(text, absolute, environ)


def locate_in_text(text: str, config_path: str,
                   environ: Optional[Mapping[str, str]] = None) -> Located:
    """``locate_server`` of the file at ``config_path`` whose text is ``text``."""
    return _located(_Picker(text, config_path, LOCATING_SECTIONS, environ))


def locate_bans(config_path: str, environ: Optional[Mapping[str, str]] = None) -> LocatedBans:
    """What ``cosftpctl bans`` and ``unban`` need of the file at ``config_path``: where its
    server is, the options of the bans and ``[CLUSTER]`` (``LocatedBans``), read as
    ``locate_server`` reads (only ``config.locations.BANS_SECTIONS``, each option as
    ``load_config`` takes it), so that they neither wait for thousands of accounts to be
    parsed nor depend on them being valid. Every option whose value cannot be used is
    named in ``problems`` as ``load_config`` names it. Raises ``ConfigError``, worded as
    ``load_config``'s, if the file cannot be read."""
    absolute, text = read_config_file(config_path)
    picker = _Picker(text, absolute, BANS_SECTIONS, environ)
    located = _located(picker)
    bans = BanOptions(located.pid_file, located.log_dir,
                      **{name: picker.value("OPTIONAL", name) for name in _BAN_OPTIONS})
    cluster = {name: picker.value("CLUSTER", name) for name in BY_SECTION["CLUSTER"]}
    return LocatedBans(located, bans, _cluster(cluster, located.port), tuple(picker.problems))


# The options of [OPTIONAL] ``BanOptions`` holds besides where the server is.
_BAN_OPTIONS = ("max_login_failures", "login_failure_window", "ban_time", "ban_allowlist",
                "ipv6_prefix_length")


class _Picker:
    """Single options of a file read without validating the rest (``locate_server``,
    ``locate_bans``): of ``sections`` only, each as ``load_config`` reads it."""

    def __init__(self, text: str, config_path: str, sections: tuple[str, ...],
                 environ: Optional[Mapping[str, str]]) -> None:
        self.reader = _Reader(locating_parser(text, config_path, sections), config_path,
                              os.environ if environ is None else environ)
        self.problems: list[str] = []  # the options whose value could not be used

    def value(self, section: str, name: str, unusable: Any = None) -> Any:
        """The option's value, else (named in ``problems``) ``unusable``, or its default."""
        setting = BY_SECTION[section][name]
        reader = self.reader
        try:
            return reader._value(section, setting, reader.parser.get(section, name,
                                                                      fallback=""))
        except ConfigError as exc:
            self.problems.append(str(exc))
            return reader._value(section, setting, "") if unusable is None else unusable


def _located(picker: _Picker) -> Located:
    """Where the server is, as ``picker`` reads it; ``problems``: those it met so far."""
    log_dir = picker.value("OPTIONAL", "log_dir")
    return Located(picker.value("OPTIONAL", "pid_file") or default_pid_file(log_dir),
                   picker.value("NETWORK", "listen_port", unusable=0),
                   picker.value("NETWORK", "listen_address"), log_dir,
                   picker.value("OPTIONAL", "graceful_timeout"),
                   picker.value("OPTIONAL", "stop_timeout"), tuple(picker.problems))


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

