"""What the control connection may carry: lines, with no raw control character in them.

Replies quote what clients sent (pyftpdlib's ``500 Command "..." not understood``, a path in a
``550``) and names other tools gave keys (``MLST``, ``STAT path``). A bare LF or CR there
would split one reply into two lines (the client then reads the second as the reply to its
next command), and ESC or a bidirectional override would reach the user's terminal. Every
such character is written escaped, as the log writes it (``\\n``, ``\\x1b``, ``\\u202e``),
so the reply keeps its meaning for a human and one line for a client.

RFC 959's ``257`` (PWD, MKD) is the one reply whose text a client reads a pathname from, to
send it back (Appendix II): it gives the name as it is, and only what would end its line
(CR, LF, NUL, which no name the server shows holds) is escaped. An escaped ``\\t`` there
named another directory, or none, when the client sent it back in a ``CWD``.
"""

from __future__ import annotations

import re

from ..logfiles import escape_controls

# The reply's own line end; anything else that ends or changes a line is escaped.
LINE_END = "\r\n"
# The lines of a 257 reply, and what they escape.
_PATHNAME_REPLY = ("257 ", "257-")
_LINE_BREAKS = re.compile("[\r\n\x00]")


def reply_lines(text: str) -> str:
    """Return ``text`` (one or more reply lines, each ended by CRLF, the last one perhaps
    not ended yet) with every control character inside a line written escaped, as the log
    writes it, but in a ``257`` line only CR, LF and NUL; the CRLFs that end lines are
    kept. Lone surrogates are left: the session's encoding turns an undecodable byte of a
    legacy name into ``?`` (``dialect.push``). Raises nothing."""
    return LINE_END.join(_escaped(line) for line in text.split(LINE_END))


def _escaped(line: str) -> str:
    if line.startswith(_PATHNAME_REPLY):
        return _LINE_BREAKS.sub(lambda match: escape_controls(match.group()), line)
    return escape_controls(line, surrogates=False)
