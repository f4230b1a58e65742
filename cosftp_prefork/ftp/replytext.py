"""What the control connection may carry: lines, with no raw control character in them.

Replies quote what clients sent (pyftpdlib's ``500 Command "..." not understood``, a path in a
``550``) and names other tools gave keys (``257``, ``MLST``, ``STAT path``). A bare LF or CR
there would split one reply into two lines (the client then reads the second as the reply to
its next command), and ESC or a bidirectional override would reach the user's terminal.
Every such character is written escaped, as the log writes it (``\\n``, ``\\x1b``,
``\\u202e``), so the reply keeps its meaning for a human and one line for a client.
"""

from __future__ import annotations

from ..logfiles import escape_controls

# The reply's own line end; anything else that ends or changes a line is escaped.
LINE_END = "\r\n"


def reply_lines(text: str) -> str:
    """Return ``text`` (one or more reply lines, each ended by CRLF, the last one perhaps
    not ended yet) with every control character inside a line written escaped, as the log
    writes it; the CRLFs that end lines are kept. Lone surrogates are left: the session's
    encoding turns an undecodable byte of a legacy name into ``?`` (``dialect.push``).
    Raises nothing."""
    return LINE_END.join(escape_controls(line, surrogates=False)
                         for line in text.split(LINE_END))
