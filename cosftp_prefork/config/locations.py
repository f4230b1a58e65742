"""Where the files a configuration file names are: relative paths follow the file.

A relative path in the file (``log_dir``, ``pid_file``, ``xferlog_file``, ``vsftpd_log_file``,
``tls_certfile``, ``tls_keyfile``) is resolved against the file's *base directory*, never
against the working directory, so ``cosftpctl -c FILE status`` finds the server whichever
directory it is run from. The base directory is the one holding the file, except for a file in
a directory named ``conf``: then it is the directory above (nginx's prefix does the same). That
is the layout of a source checkout, of cos-ftp-server-V5 and of the shipped systemd unit
(``WorkingDirectory=/opt/cosftp-prefork``, ``-c conf/vsftpd.conf``), where relative paths were
taken from the working directory, i.e. that same parent: ``log_dir = log`` stays
``/opt/cosftp-prefork/log`` for installations made before paths followed the file.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import re
from typing import Optional

from ..errors import ConfigError

DEFAULT_LOG_DIR = "log"  # the settings table's defaults
DEFAULT_LISTEN_PORT = 2121
PID_FILE_NAME = "cosftp.pid"
CONF_DIR_NAME = "conf"


def base_dir(config_path: str) -> str:
    """The directory relative paths in the file at ``config_path`` are resolved against."""
    directory = os.path.dirname(os.path.abspath(config_path))
    if os.path.basename(directory) == CONF_DIR_NAME:
        return os.path.dirname(directory)
    return directory


def resolve(path: str, base: str) -> str:
    """``path`` made absolute: an absolute one as it is, a relative one under ``base``."""
    return os.path.normpath(os.path.join(base, path))


def parse_path(raw: str) -> str:
    """The settings table's parser of a file or directory name; the reader resolves it."""
    if "\0" in raw:
        raise ValueError("must be a path, got a NUL character")
    return raw


def default_pid_file(log_dir: str) -> str:
    return os.path.join(log_dir, PID_FILE_NAME)


# The sections ``locate.locate_server`` reads: where the pid file, the log directory, the
# listening address and port and the stop's timeouts are written, and configparser's DEFAULT
# section, whose options every section inherits.
LOCATING_SECTIONS = ("OPTIONAL", "NETWORK", configparser.DEFAULTSECT)
# And ``locate.locate_bans``'s: those, and how to reach the cluster's Redis.
BANS_SECTIONS = (*LOCATING_SECTIONS, "CLUSTER")
# A line whose first character that is not white space is "[": a section header, unless
# configparser takes it for the continuation of a value (then it is indented).
_BRACKET_LINE = re.compile(r"^[^\S\n]*\[.*$", re.M)
_COMMENT_PREFIXES = ("#", ";")  # configparser's full-line comments


def read_config_file(path: str) -> tuple[str, str]:
    """The absolute path and the text of the configuration file at ``path``. Raises
    ``ConfigError`` if it cannot be read (or is not UTF-8)."""
    absolute = os.path.abspath(path)
    try:
        with open(absolute, encoding="utf-8") as handle:
            return absolute, handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read configuration file: {exc}", absolute) from None


def locating_parser(text: str, config_path: str,
                    sections: tuple[str, ...] = LOCATING_SECTIONS
                    ) -> configparser.RawConfigParser:
    """What configparser reads of ``sections`` (they include ``DEFAULTSECT``) in ``text``,
    the file at ``config_path``, as it reads a file that may not validate: its defaults
    for what it does not find, an invalid section, option or line elsewhere skipped as it
    skips it (``locate.locate_server`` judges the options it takes from it)."""
    parser = configparser.RawConfigParser(inline_comment_prefixes=("#",), strict=False)
    wanted = _locating_sections(text, sections)
    with contextlib.suppress(configparser.Error):
        parser.read_string(text if wanted is None else wanted, source=config_path)
    return parser


def _locating_sections(text: str, sections: tuple[str, ...]) -> Optional[str]:
    """The parts of ``text`` configparser would read as ``sections``, in their order:
    what it reads there is what it reads in the whole text, found without its per-line
    work over thousands of account sections (0.4-0.55 s for 5,000). None when only
    configparser can tell: a bracket line that is indented may be the continuation of a
    value rather than a header."""
    headers = []  # (offset, section) of each line configparser takes for a header
    for line in _BRACKET_LINE.finditer(text):
        if not line.group().startswith("["):
            return None
        found = configparser.RawConfigParser.SECTCRE.match(_without_comment(line.group()))
        if found:
            headers.append((line.start(), found.group("header")))
    if not headers or _has_value(text[:headers[0][0]]):
        return ""  # configparser stops at a line before any header: it reads nothing
    ends = [offset for offset, _ in headers[1:]] + [len(text)]
    return "".join(text[start:end] for (start, name), end in zip(headers, ends)
                   if name in sections)


def _without_comment(line: str) -> str:
    """``line`` as configparser matches it against a header: cut at its first inline
    comment (a "#" at the start or after white space), stripped."""
    for index, char in enumerate(line):
        if char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index].strip()
    return line.strip()


def _has_value(text: str) -> bool:
    """Whether ``text`` has a line that is neither blank nor a comment."""
    return any(line.strip() and not line.strip().startswith(_COMMENT_PREFIXES)
               for line in text.split("\n"))
