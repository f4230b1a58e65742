"""The few options cosftpctl needs, read without reading (or validating) the whole file.

``locate_server`` (and ``locate_in_text``): where the server of a file is, for ``status``,
``sessions``, ``stop`` and ``reload``; ``locate_bans``: that, the options of the bans and
``[CLUSTER]``, for ``bans`` and ``unban``. Only the sections they need are parsed
(``config.locations``), each option as ``load_config`` takes it (``config.reader``); an
option whose value cannot be used gets its default and is named in ``problems``. Raises
``ConfigError`` only when the file cannot be read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Optional

from ..errors import ConfigError
from .locations import (
    BANS_SECTIONS,
    LOCATING_SECTIONS,
    default_pid_file,
    locating_parser,
    read_config_file,
)
from .model import BanOptions, Located, LocatedBans
from .options import BY_SECTION
from .reader import Reader
from .serverwide import read_cluster


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
    return LocatedBans(located, bans, read_cluster(cluster, located.port), tuple(picker.problems))


# The options of [OPTIONAL] ``BanOptions`` holds besides where the server is.
_BAN_OPTIONS = ("max_login_failures", "login_failure_window", "ban_time", "ban_allowlist",
                "ipv6_prefix_length")


class _Picker:
    """Single options of a file read without validating the rest (``locate_server``,
    ``locate_bans``): of ``sections`` only, each as ``load_config`` reads it."""

    def __init__(self, text: str, config_path: str, sections: tuple[str, ...],
                 environ: Optional[Mapping[str, str]]) -> None:
        self.reader = Reader(locating_parser(text, config_path, sections), config_path,
                             os.environ if environ is None else environ)
        self.problems: list[str] = []  # the options whose value could not be used

    def value(self, section: str, name: str, unusable: Any = None) -> Any:
        """The option's value, else (named in ``problems``) ``unusable``, or its default."""
        setting = BY_SECTION[section][name]
        reader = self.reader
        try:
            return reader.value(section, setting, reader.parser.get(section, name,
                                                                    fallback=""))
        except ConfigError as exc:
            self.problems.append(str(exc))
            return reader.value(section, setting, "") if unusable is None else unusable


def _located(picker: _Picker) -> Located:
    """Where the server is, as ``picker`` reads it; ``problems``: those it met so far."""
    log_dir = picker.value("OPTIONAL", "log_dir")
    return Located(picker.value("OPTIONAL", "pid_file") or default_pid_file(log_dir),
                   picker.value("NETWORK", "listen_port", unusable=0),
                   picker.value("NETWORK", "listen_address"), log_dir,
                   picker.value("OPTIONAL", "graceful_timeout"),
                   picker.value("OPTIONAL", "stop_timeout"), tuple(picker.problems))
