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
from typing import Optional

from .safefiles import open_append

_log = logging.getLogger(__name__)
# Format characters (Unicode category Cf, all of them as of Unicode 16): invisible, and some
# change how what is around them shows: the bidirectional controls (the embeddings,
# overrides and isolates, ALM, LRM, RLM) reorder it ("Trojan Source"); zero width space,
# joiners, the byte order mark and soft hyphen make two names that look the same; the tag
# characters (U+E0020-E007F) hide ASCII text. U+2065, unassigned, is in a range of them.
# tests/test_invisible_text.py checks this against the running Python's Unicode database.
_FORMAT = ("\xad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b-\u200f"
           "\u202a-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb\U000110bd\U000110cd"
           "\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001"
           "\U000e0020-\U000e007f")
# With the C0 and C1 controls, DEL, the line and paragraph separators: nothing a line of the
# log or a reply needs raw. The log escapes lone surrogates (undecodable bytes) too.
_CONTROLS = "\x00-\x1f\x7f-\x9f\u2028\u2029" + _FORMAT
_UNSAFE = re.compile(f"[{_CONTROLS}\ud800-\udfff]")
_CONTROL = re.compile(f"[{_CONTROLS}]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str, surrogates: bool = True) -> str:
    """``text`` with every unsafe character written as ``\\n``, ``\\x1b``, ``\\u202e``,
    ``\\U000e0041``, as Python's ``unicode_escape`` writes them (lone surrogates too unless
    not ``surrogates``)."""
    return (_UNSAFE if surrogates else _CONTROL).sub(_escape_one, text)


def _escape_one(match: re.Match) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


class EscapingFormatter(logging.Formatter):
    """Escapes control characters in the message; a traceback keeps its lines, each
    continuation indented by a tab so it cannot pass for a log line of its own.

    A record goes through every handler of the root logger (``cosftp.log``, and stderr under
    ``cosftpctl run``, which is how systemd runs the server); when they share this formatter,
    the line is formatted once and the other handlers write the same text.
    """

    def format(self, record: logging.LogRecord) -> str:
        """The escaped line of ``record`` (made once per record and formatter)."""
        made = record.__dict__.get("_escaped_line")
        if made is not None and made[0] is self:
            return made[1]
        line = super().format(record)
        record._escaped_line = (self, line)
        return line

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
    only, never through a link planted at its name (``safefiles``); an existing file keeps
    the mode it has. With ``owner`` (the master running as root), the file it opens or
    creates is given to that uid: the workers, running as it, open it by name too.

    If the file cannot be opened again after a rotation (a link planted at the name), the
    handler goes on writing to the file it had and says so once in the server's log; the
    stdlib's handler would drop its file and raise into whatever code was logging.
    """

    def __init__(self, filename: str, encoding: str = "utf-8",
                 owner: Optional[int] = None) -> None:
        self._refused: Optional[tuple] = None  # (the (dev, ino) at the name,) last refused
        self._owner = owner  # see safefiles.open_append
        super().__init__(filename, encoding=encoding)

    def _open(self):
        return open(open_append(self.baseFilename, owner=self._owner), self.mode,
                    encoding=self.encoding, errors=self.errors)

    def reopenIfNeeded(self) -> None:
        try:
            info = os.lstat(self.baseFilename)  # a link at the name is a change too
            found = (info.st_dev, info.st_ino)
        except FileNotFoundError:
            found = None
        if self.stream is None or found == (self.dev, self.ino):
            return
        try:
            stream = self._open()
        except OSError as exc:
            if (found,) != self._refused:
                self._refused = (found,)
                _log.error("cannot open %s again (%s); still writing to the file it was",
                           self.baseFilename, exc)
            return
        self.stream.flush()
        self.stream.close()
        self.stream, self._refused = stream, None
        self._statstream()
