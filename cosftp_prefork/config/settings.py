"""The configuration file (``conf/vsftpd.conf``): parse, validate, freeze.

The format is the old cos-ftp-server-V5's INI file, unchanged: ``[COS_ACCOUNT_*]`` sections,
``[NETWORK]``, ``[FILE_OPTION]`` and ``[OPTIONAL]``. Every setting is declared once in
``config.options.SETTINGS``; ``load_config`` and ``parse_config`` read a whole file by that
table into the dataclasses of ``config.model``: each section through ``config.reader``,
built by ``config.accounts`` and ``config.serverwide``, and checked here across sections
(unknown sections, at least one account, unique users and homes, folders no account mounts,
the password hashes' costs). An empty value or the word ``default`` means the default.
``${NAME}`` is replaced from the environment so secrets need not live in the file; relative
paths are resolved against the file's base directory (``config.locations``). Nothing else in
the package reads the whole file: ``config.locate`` reads the few options cosftpctl needs,
``config.hookanswer`` an auth hook's answer.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from typing import Optional

from ..errors import ConfigError
from .accounts import read_account, read_credentials, read_folder
from .eventhooks import read_hooks
from .locations import read_config_file
from .model import ACCOUNT_PREFIX, FOLDER_PREFIX, HOOKS_SECTION, AccountConfig, Config
from .options import BY_SECTION
from .passwords import scrypt_parameters
from .reader import Reader
from .serverwide import (
    read_admin,
    read_auth_hook,
    read_cluster,
    read_network,
    read_operator,
    read_run_as,
    read_server,
    read_transfer,
)
from .values import ACCOUNT_SECTION_RE, FOLDER_SECTION_RE, section_kind


def _check_unique(reader: Reader, accounts: list[AccountConfig], attr: str, option: str) -> None:
    """Raise ``ConfigError`` when two accounts have the same ``attr`` (``option`` in the
    file), naming the section that had it first."""
    seen: dict[str, str] = {}
    for account in accounts:
        value = getattr(account, attr)
        if value in seen:
            raise reader.error(f"{value!r} is already used in [{seen[value]}]",
                               account.section, option)
        seen[value] = account.section


def _check_hash_parameters(reader: Reader, accounts: list[AccountConfig]) -> None:
    """Warn when hashes differ in cost: a failed login is as slow as the costliest, so a
    wrong password for a cheaper one is faster and tells that the user exists."""
    kinds = {scrypt_parameters(a.password) for a in accounts} - {None}
    if len(kinds) > 1:
        listed = ", ".join(f"N={n} r={r} p={p}" for n, r, p in sorted(kinds))
        reader.warnings.append(f"{reader.path}: the password hashes use different scrypt "
                               f"parameters ({listed}); failed logins then take different "
                               "times: hash them all with cosftpctl hash-password")


def _build(reader: Reader) -> Config:
    """Return the ``Config`` of the file ``reader`` reads, with the warnings the read
    collected. Raises ``ConfigError``."""
    sections = reader.parser.sections()
    for section in sections:
        if section_kind(section) not in BY_SECTION:
            reader.warnings.append(f"{reader.path} [{section}]: unknown section, ignored")
    optional = reader.section("OPTIONAL", "OPTIONAL")
    credentials = read_credentials(reader, sections)
    folders = {folder.name: folder for folder in (read_folder(reader, s, credentials)
                                                  for s in sections if FOLDER_SECTION_RE.match(s))}
    hooks = reader.section(HOOKS_SECTION, HOOKS_SECTION)
    accounts = [read_account(reader, s, optional["ftp_encoding"], credentials, folders, hooks)
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
    auth_hook = read_auth_hook(reader, optional)
    network = read_network(reader, net, accounts)
    admin = read_admin(reader, net, reader.section("ADMIN", "ADMIN"), network.tls)  # may warn
    server_hooks = read_hooks(reader, hooks, optional["log_dir"])  # before the warnings are taken
    return Config(
        path=reader.path,
        accounts=tuple(accounts),
        network=network,
        transfer=read_transfer(reader, files, optional),
        server=read_server(reader, optional),
        warnings=tuple(reader.warnings),
        operator=read_operator(reader, net, optional),
        cluster=read_cluster(reader.section("CLUSTER", "CLUSTER"), net["listen_port"]),
        run_as=read_run_as(reader, optional),
        auth_hook=auth_hook,
        credentials=credentials,
        folders=folders,
        admin=admin,
        hooks=server_hooks,
    )


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
    return _build(Reader(parser, path, os.environ if environ is None else environ))


def load_config(path: str, environ: Optional[Mapping[str, str]] = None) -> Config:
    """Read and validate the file at ``path``. Raises ``ConfigError``."""
    absolute, text = read_config_file(path)
    return parse_config(text, absolute, environ)
