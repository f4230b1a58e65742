"""The files a server writes, checked before it starts and before a reload.

Every one is opened so that a link planted at its name is refused (``safefiles``); checking
them all first turns such a link, or a directory every user may write, into a start error
naming the path, before anything is written and before any worker is forked (a worker that
met it would fail to boot with the reason in a log the operator may not read first).
"""

from __future__ import annotations

import os

from ..config.settings import Config
from ..safefiles import check_directory, refuse_link
from .logs import LOG_FILE_NAME, OUT_FILE_NAME
from .scoreboard import bans_path, state_path


def written_files(config: Config) -> list[str]:
    """Every file the server of ``config`` writes (the metrics directory aside: it is
    checked, and kept private, by ``metrics_dir``)."""
    server, operator = config.server, config.operator
    logs = [os.path.join(server.log_dir, LOG_FILE_NAME),
            os.path.join(server.log_dir, OUT_FILE_NAME)]
    operator_logs = [path for path in (operator.xferlog_file, operator.vsftpd_log_file) if path]
    return [*logs, *operator_logs, server.pid_file, state_path(server.pid_file),
            bans_path(server.pid_file)]


def check_files(config: Config) -> None:
    """Create the directories of ``config``'s files; raise ``UnsafeFileError`` (an
    ``OSError``) naming the first that anyone may write or the first file that is a link."""
    files = written_files(config)
    for directory in dict.fromkeys(os.path.dirname(path) for path in files):
        check_directory(directory)
    for path in files:
        refuse_link(path)
