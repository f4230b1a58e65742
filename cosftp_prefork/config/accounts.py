"""The sections of the accounts, read into ``config.model``'s dataclasses.

``[COS_CREDENTIALS_<name>]`` (keys named by accounts and folders), ``[COS_FOLDER_<name>]``
(a virtual folder: ``FolderConfig``) and ``[COS_ACCOUNT_N]`` (``AccountConfig``, with the
folders it mounts and its hooks), each checked on its own. The checks across accounts
(unique users and homes) are the whole file's (``config.settings``); an auth hook's answer
is read by ``read_account`` too (``config.hookanswer``). Raises ``ConfigError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from .eventhooks import scope_hooks
from .model import (
    ACCOUNT_PREFIX,
    CREDENTIALS_PREFIX,
    FOLDER_PREFIX,
    MIN_RATE,
    RATE_OPTIONS,
    AccountConfig,
    AccountLimits,
    FolderConfig,
)
from .reader import Reader
from .values import CREDENTIALS_SECTION_RE


def read_folder(reader: Reader, section: str,
                credentials: Mapping[str, tuple[str, str]]) -> FolderConfig:
    """Return the ``FolderConfig`` of the ``[COS_FOLDER_<name>]`` ``section``, with its own
    keys or those it names in ``credentials``. Raises ``ConfigError``."""
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


def _mounts(reader: Reader, section: str, listed: tuple[tuple[str, str], ...],
            folders: Mapping[str, FolderConfig]) -> tuple[tuple[str, FolderConfig], ...]:
    """The account's ``virtual_folders`` with each name resolved to its section."""
    for _, name in listed:
        if name not in folders:
            known = ", ".join(sorted(folders)) or "none"
            raise reader.error(f"{name!r} names no [{FOLDER_PREFIX}_{name}] section (folders: "
                               f"{known})", section, "virtual_folders")
    return tuple((path, folders[name]) for path, name in listed)


def read_account(reader: Reader, section: str, default_encoding: str,
                 credentials: Mapping[str, tuple[str, str]],
                 folders: Mapping[str, FolderConfig],
                 server_hooks: Mapping[str, Any]) -> AccountConfig:
    """Return the ``AccountConfig`` of ``section`` (a ``[COS_ACCOUNT_N]``, or an auth hook's
    answer): its keys (or those it names in ``credentials``), the ``folders`` it mounts, its
    hooks (taking ``server_hooks``' secret and timeout). Raises ``ConfigError``."""
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
        hooks=scope_hooks(reader, values, section, server_hooks),
    )


def _keys(reader: Reader, section: str, values: dict[str, Any],
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


def _named_keys(reader: Reader, section: str, values: dict[str, Any],
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


def read_credentials(reader: Reader, sections: list[str]) -> dict[str, tuple[str, str]]:
    """The ``[COS_CREDENTIALS_<name>]`` sections, by name."""
    found = {}
    for section in sections:
        match = CREDENTIALS_SECTION_RE.match(section)
        if match:
            values = reader.section(section, CREDENTIALS_PREFIX)
            found[match.group(1)] = (values["cos_secretid"], values["cos_secretkey"])
    return found
