"""Per-process logging set-up: one file in ``log_dir`` shared by master and workers.

Log lines quote what clients send (user names, paths, command arguments), here and in
pyftpdlib's own lines. Rather than escaping at every call site, the formatter of every
handler escapes control characters in the formatted message, so a client can neither
start a forged line nor send escape sequences to whoever reads the log on a terminal.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys

LOG_FILE_NAME = "cosftp.log"
LOG_FILE_MODE = 0o640  # the log names users and addresses of failed logins
_FORMAT = "%(asctime)s %(levelname)s [%(process)d %(role)s] %(name)s: %(message)s"
# C0 and C1 controls, DEL, line/paragraph separators, bidirectional overrides and lone
# surrogates (undecodable bytes): nothing a log line needs raw.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
                     "\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str) -> str:
    """``text`` with every unsafe character written as ``\\n``, ``\\x1b``, ``\\u202e``..."""
    return _UNSAFE.sub(_escape_one, text)


def _escape_one(match: re.Match) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class EscapingFormatter(logging.Formatter):
    """Escapes control characters in the message; a traceback keeps its lines, each
    continuation indented by a tab so it cannot pass for a log line of its own."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def formatException(self, ei) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


def _indented(block: str) -> str:
    return "\n\t".join(escape_controls(line) for line in block.split("\n"))


class PrivateFileHandler(logging.handlers.WatchedFileHandler):
    """Creates the log file (again, after logrotate moved it) readable by owner and group
    only; an existing file keeps the mode it has."""

    def _open(self):
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, LOG_FILE_MODE)
        return open(fd, self.mode, encoding=self.encoding, errors=self.errors)


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
