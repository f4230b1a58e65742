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

DEFAULT_LOG_DIR = "log"  # the settings table's defaults, shared with locate_server
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


def locate_server(config_path: str) -> tuple[str, int]:
    """Best-effort pid file and listen port (0: unknown) of a file that may not validate, so
    that ``stop`` and ``status`` still find the server while the file is being edited."""
    parser = configparser.RawConfigParser(inline_comment_prefixes=("#",), strict=False)
    with contextlib.suppress(configparser.Error, OSError, UnicodeDecodeError):
        parser.read(config_path, encoding="utf-8")

    def option(section: str, name: str) -> str:
        value = parser.get(section, name, fallback="").strip()
        return "" if value.lower() == "default" else value

    base = base_dir(config_path)
    log_dir = resolve(option("OPTIONAL", "log_dir") or DEFAULT_LOG_DIR, base)
    pid_file = option("OPTIONAL", "pid_file")
    port = option("NETWORK", "listen_port") or str(DEFAULT_LISTEN_PORT)
    return (resolve(pid_file, base) if pid_file else default_pid_file(log_dir),
            int(port) if port.isdigit() and int(port) <= 65535 else 0)
