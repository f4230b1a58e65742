"""Per-process logging set-up: one file in ``log_dir`` shared by master and workers, each
line stamped with the process role, the FTP session it belongs to (``logcontext``) and
escaped (``logfiles.EscapingFormatter``)."""

from __future__ import annotations

import logging
import os
import sys

from ..logcontext import SessionFilter
from ..logfiles import EscapingFormatter, PrivateFileHandler

LOG_FILE_NAME = "cosftp.log"
_FORMAT = "%(asctime)s %(levelname)s [%(process)d %(role)s%(session)s] %(name)s: %(message)s"


class _RoleFilter(logging.Filter):
    """Stamp each record with the process role (``master``, ``worker 2``)."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def filter(self, record: logging.LogRecord) -> bool:
        record.role = self.role
        return True


def setup_logging(level: str, log_dir: str, process_name: str, to_stderr: bool) -> None:
    """Send this process's log records to ``log_dir/cosftp.log`` (and stderr if asked).

    ``WatchedFileHandler`` reopens the file when logrotate moves it away, so no process has to
    be signalled after a rotation.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    formatter = EscapingFormatter(_FORMAT)
    os.makedirs(log_dir, exist_ok=True)
    handlers: list[logging.Handler] = [
        PrivateFileHandler(os.path.join(log_dir, LOG_FILE_NAME), encoding="utf-8")
    ]
    if to_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(_RoleFilter(process_name))
        handler.addFilter(SessionFilter())
        root.addHandler(handler)
    root.setLevel(level)
    # The SDK logs every request URL and header set at INFO, a 404 HEAD at WARNING and every
    # failed request (retried ones too) as raw XML at ERROR, without the session. The storage
    # layer logs each retry and failure with its context, so the SDK's own lines are only
    # kept for debugging.
    sdk_level = logging.WARNING if root.level <= logging.DEBUG else logging.CRITICAL
    logging.getLogger("qcloud_cos").setLevel(sdk_level)
    logging.getLogger("urllib3").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("charset_normalizer").setLevel(logging.WARNING)  # per response, at DEBUG


def log_block(logger: logging.Logger, level: int, block: str, msg: str, *args) -> None:
    """Log ``msg % args`` followed by ``block`` (say, a stack dump), each of its lines
    escaped and indented like a traceback's."""
    if logger.isEnabledFor(level):
        logger.handle(logger.makeRecord(logger.name, level, "(unknown file)", 0, msg, args,
                                        None, sinfo=block))
