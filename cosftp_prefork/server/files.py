"""The files a server writes, checked before it starts and before a reload.

Every one is opened so that a link planted at its name is refused (``safefiles``); checking
them all first turns such a link, or a directory every user may write, into a start error
naming the path, before anything is written and before any worker is forked (a worker that
met it would fail to boot with the reason in a log the operator may not read first).
"""

from __future__ import annotations

import os
from typing import Optional

from ..config.model import Config
from ..safefiles import check_directory, open_append, refuse_link
from .logs import LOG_FILE_NAME, OUT_FILE_NAME
from .scoreboard import bans_path, state_path
from .usage import usage_path


def worker_files(config: Config) -> list[str]:
    """The files the workers (and the exporter) append to, opening them by name: the log,
    and the operator's logs."""
    operator = config.operator
    return [os.path.join(config.server.log_dir, LOG_FILE_NAME),
            *(path for path in (operator.xferlog_file, operator.vsftpd_log_file) if path)]


def written_files(config: Config) -> list[str]:
    """Every file the server of ``config`` writes (the metrics directory aside: it is
    checked, and kept private, by ``metrics_dir``)."""
    server = config.server
    return [*worker_files(config), os.path.join(server.log_dir, OUT_FILE_NAME),
            server.pid_file, state_path(server.pid_file), bans_path(server.pid_file),
            usage_path(state_path(server.pid_file))]


def check_files(config: Config, group: Optional[int] = None) -> None:
    """Create the directories of ``config``'s files (with ``group``, the workers' group, as
    the group of those it creates); raise ``UnsafeFileError`` (an ``OSError``) naming the
    first that anyone may write or the first file that is a link."""
    files = written_files(config)
    for directory in dict.fromkeys(os.path.dirname(path) for path in files):
        check_directory(directory, group)
    for path in files:
        refuse_link(path)


def hand_over_files(config: Config, owner: Optional[int]) -> None:
    """Create the files the workers append to, or find them, and give them to ``owner``
    (the workers' uid; None: the master's own user, nothing to do).

    The master, as root, does this at start, at a reload and on USR1 (after logrotate
    moved them): the workers open them by name and may not create files in a directory the
    master keeps its pid, state and bans files in. Raises ``OSError``.
    """
    if owner is not None:
        for path in worker_files(config):
            os.close(open_append(path, owner=owner))
