"""The server-wide sections, read into ``config.model``'s dataclasses.

``[OPTIONAL]`` (``ServerConfig``, ``TransferConfig``, ``RunAsConfig``, ``AuthHookConfig``),
``[NETWORK]`` (``NetworkConfig`` with its TLS certificate loaded, ``OperatorConfig``),
``[ADMIN]`` with the admin ports of ``[NETWORK]`` (``AdminConfig``) and ``[CLUSTER]``
(``ClusterConfig``, which ``config.locate`` reads too). Each is checked against the options
it depends on; the accounts' own sections are ``config.accounts``'. Raises ``ConfigError``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
from typing import Any, Optional

from .locations import default_pid_file
from .model import (
    MIB,
    MIN_PART_SIZE,
    AccountConfig,
    AdminConfig,
    AuthHookConfig,
    ClusterConfig,
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
from .reader import Reader
from .tls import ServerTLS, TLSFileError, load_server_tls


def read_server(reader: Reader, optional: dict[str, Any]) -> ServerConfig:
    """Return ``[OPTIONAL]``'s ``ServerConfig`` (with the warnings its checks add). Raises
    ``ConfigError``."""
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


def _max_workers(reader: Reader, optional: dict[str, Any]) -> int:
    """``max_worker_processes``, refused below ``worker_processes`` (the start would
    already be past it)."""
    most, workers = optional["max_worker_processes"], optional["worker_processes"]
    if most < workers:
        raise reader.error(f"is {most}, below worker_processes ({workers}): raise it, or "
                           "lower worker_processes", "OPTIONAL", "max_worker_processes")
    return most


def _failed_login_delay(reader: Reader, optional: dict[str, Any]) -> int:
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


def _allowlist(reader: Reader, networks: tuple) -> tuple:
    """``ban_allowlist``, with a warning for a block that holds every address of its family
    (the office's ``/24`` written ``/0``): nobody of that family would ever be banned."""
    for network in networks:
        if network.prefixlen == 0:
            reader.warnings.append(f"{reader.path} [OPTIONAL] ban_allowlist: {network} is every "
                                   f"IPv{network.version} address: no such client is ever "
                                   "banned")
    return networks


def read_network(reader: Reader, net: dict[str, Any],
                 accounts: list[AccountConfig]) -> NetworkConfig:
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


def read_admin(reader: Reader, net: dict[str, Any], values: dict[str, Any],
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


def read_cluster(values: dict[str, Any], port: int) -> ClusterConfig:
    """Return ``[CLUSTER]``'s ``ClusterConfig``; the node is ``<hostname>:<port>`` unless
    ``node_id`` names it."""
    node = values["node_id"] or f"{socket.gethostname()}:{port}"
    return ClusterConfig(values["redis_url"], values["redis_down"],
                         values["redis_timeout"] / 1000, node,
                         values["redis_check_interval"])


def read_operator(reader: Reader, net: dict[str, Any], optional: dict[str, Any]) -> OperatorConfig:
    """Return the metrics endpoint and the operator's logs (``OperatorConfig``). Raises
    ``ConfigError`` when ``metrics_port`` is an FTP port."""
    port = net["metrics_port"]
    if port and port in (net["listen_port"], net["implicit_tls_port"]):
        raise reader.error(f"{port} is already an FTP port", "NETWORK", "metrics_port")
    xferlog = None
    if optional["xferlog_enable"]:
        xferlog = optional["xferlog_file"] or os.path.join(optional["log_dir"], "xferlog")
    return OperatorConfig(net["metrics_address"], port, xferlog, optional["vsftpd_log_file"])


_ROOT_NAMES = ("root", "0")


def read_run_as(reader: Reader, optional: dict[str, Any]) -> RunAsConfig:
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


def _server_tls(reader: Reader, certfile: Optional[str], keyfile: Optional[str],
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


def read_transfer(reader: Reader, files: dict[str, Any],
                  optional: dict[str, Any]) -> TransferConfig:
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


def read_auth_hook(reader: Reader, optional: dict[str, Any]) -> AuthHookConfig:
    """Return the auth hook's settings (``AuthHookConfig``). Raises ``ConfigError`` when both
    ``auth_hook_url`` and ``auth_hook_command`` are set."""
    url, command = optional["auth_hook_url"], optional["auth_hook_command"] or ()
    if url and command:
        raise reader.error("cannot be set with auth_hook_url: choose one", "OPTIONAL",
                           "auth_hook_command")
    return AuthHookConfig(url, command, optional["auth_hook_timeout"] / 1000,
                          optional["auth_cache_ttl"], optional["auth_hook_order"],
                          optional["auth_hook_parallel"], optional["auth_hook_quota_homes"])
