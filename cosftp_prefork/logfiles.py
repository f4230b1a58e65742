"""What makes a log line and a log file safe to keep: control characters escaped, files
created readable by owner and group only.

Log lines quote what clients send (user names, paths, command arguments), in our lines and in
pyftpdlib's own. Rather than escaping at every call site, the formatter of every handler
escapes control characters in the formatted message, so a client can neither start a forged
line nor send escape sequences to whoever reads the log on a terminal.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re

LOG_FILE_MODE = 0o640  # the log names users and addresses of failed logins
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
