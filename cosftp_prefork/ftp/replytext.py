"""What the control connection may carry: lines, with no raw control character in them.

Replies quote what clients sent (pyftpdlib's ``500 Command "..." not understood``, a path in a
``550``) and names other tools gave keys (``257``, ``MLST``, ``STAT path``). A bare LF or CR
there would split one reply into two lines (the client then reads the second as the reply to
its next command), and ESC or a bidirectional override would reach the user's terminal.
Every such character is written escaped, as the log writes it (``\\n``, ``\\x1b``,
``\\u202e``), so the reply keeps its meaning for a human and one line for a client.
"""

from __future__ import annotations

import re

# The reply's own line end; anything else that ends or changes a line is escaped.
LINE_END = "\r\n"
# C0 and C1 controls, DEL, the line/paragraph separators and every Bidi_Control character
# (as ``logfiles``). Lone surrogates are not here: the session's encoding turns an
# undecodable byte of a legacy name into ``?`` already (``dialect.push``).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e"
                     "\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def reply_lines(text: str) -> str:
    """Return ``text`` (one or more reply lines, each ended by CRLF, the last one perhaps
    not ended yet) with every control character inside a line written escaped; the CRLFs
    that end lines are kept. Raises nothing."""
    return LINE_END.join(_UNSAFE.sub(_escape_one, line) for line in text.split(LINE_END))


def _escape_one(match: re.Match) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
