"""An auth hook's answer read as an account: ``hook_account``.

The answer's JSON object holds the options of a ``[COS_ACCOUNT_N]`` section; they are read by
the same table and checks as the file's (``config.accounts``), except those the server sets
(``HOOK_RESERVED``) and the event options, which are the file's only (``HOOK_FILE_EVENTS``).
Raises ``ConfigError`` naming the option, never quoting a secret.
"""

from __future__ import annotations

import configparser
import dataclasses
import os
import re
import time
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from .accounts import read_account
from .model import ACCOUNT_PREFIX, HOOKS_SECTION, AccountConfig, Config
from .options import BY_SECTION
from .reader import Reader

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
    reader = Reader(parser, HOOK_ANSWER, environ={})
    account = read_account(reader, _HOOK_SECTION, config.server.ftp_encoding, config.credentials,
                           config.folders, {})
    return dataclasses.replace(account, section=HOOK_ANSWER, from_hook=True,
                               answered_at=time.time())


def _hook_error(problem: str, option: str) -> ConfigError:
    """The ``ConfigError`` of an answer's ``option``, returned for the caller to raise."""
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
