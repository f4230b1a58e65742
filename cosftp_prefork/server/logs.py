"""Per-process logging set-up: one file in ``log_dir`` shared by master and workers, each
line stamped with the process role, the FTP session it belongs to (``logcontext``) and
escaped (``logfiles.EscapingFormatter``)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Optional

from ..logcontext import SessionFilter
from ..logfiles import EscapingFormatter, PrivateFileHandler
from ..safefiles import check_directory

log = logging.getLogger(__name__)
LOG_FILE_NAME = "cosftp.log"
# What `cosftpctl start` sends the server's stdout and stderr to: what comes before logging
# is set up, and crashes.
OUT_FILE_NAME = "cosftp.out"
_FORMAT = "%(asctime)s %(levelname)s [%(process)d %(role)s%(session)s] %(name)s: %(message)s"


class _RoleFilter(logging.Filter):
    """Stamp each record with the process role (``master``, ``worker 2``)."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def filter(self, record: logging.LogRecord) -> bool:
        record.role = self.role
        return True


def setup_logging(level: str, log_dir: str, process_name: str, to_stderr: bool,
                  owner: Optional[int] = None) -> None:
    """Send this process's log records to ``log_dir/cosftp.log`` (and stderr if asked);
    ``owner``: the workers' uid, for a master running as root (``PrivateFileHandler``).

    ``WatchedFileHandler`` reopens the file when logrotate moves it away, so no process has to
    be signalled after a rotation. Raises ``OSError`` (``UnsafeFileError`` for a link at the
    file's name or a ``log_dir`` every user may write) before changing anything, so a
    failed reopen leaves the handlers as they were.
    """
    check_directory(log_dir)
    handlers: list[logging.Handler] = [
        PrivateFileHandler(os.path.join(log_dir, LOG_FILE_NAME), owner=owner)]
    if to_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    formatter = EscapingFormatter(_FORMAT)
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(_RoleFilter(process_name))
        handler.addFilter(SessionFilter())
        root.addHandler(handler)
    root.setLevel(level)
    # No line shows where it was logged from or by which thread: the record need not find its
    # caller (a walk up the stack per line) or its thread's name (the logging HOWTO's
    # "Optimization"). The process id stays: every line shows it. (A stack_info=True would
    # lose its stack: nothing asks for one; log_block hands its block to the record.)
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    # The SDK logs every request URL and header set at INFO, a 404 HEAD at WARNING and every
    # failed request (retried ones too) as raw XML at ERROR, without the session. The storage
    # layer logs each retry and failure with its context, so the SDK's own lines are only
    # kept for debugging.
    sdk_level = logging.WARNING if root.level <= logging.DEBUG else logging.CRITICAL
    logging.getLogger("qcloud_cos").setLevel(sdk_level)
    logging.getLogger("urllib3").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("charset_normalizer").setLevel(logging.WARNING)  # per response, at DEBUG


def reopen_logging(level: str, log_dir: str, process_name: str, to_stderr: bool,
                   owner: Optional[int] = None) -> None:
    """``setup_logging`` again (SIGUSR1, after logrotate); if the file cannot be opened, go on
    with the old one and say why."""
    try:
        setup_logging(level, log_dir, process_name, to_stderr, owner)
    except OSError as exc:
        log.error("could not reopen the log file, still writing to the old one: %s", exc)
    else:
        log.info("log files reopened")


def log_block(logger: logging.Logger, level: int, block: str, msg: str, *args) -> None:
    """Log ``msg % args`` followed by ``block`` (say, a stack dump), each of its lines
    escaped and indented like a traceback's."""
    if logger.isEnabledFor(level):
        logger.handle(logger.makeRecord(logger.name, level, "(unknown file)", 0, msg, args,
                                        None, sinfo=block))
