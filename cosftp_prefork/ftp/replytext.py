"""What the control connection may carry: lines, with no raw control character in them.

Replies quote what clients sent (pyftpdlib's ``500 Command "..." not understood``, a path in a
``550``) and names other tools gave keys (``MLST``, ``STAT path``). A bare LF or CR there
would split one reply into two lines (the client then reads the second as the reply to its
next command), and ESC or a bidirectional override would reach the user's terminal. Every
such character is written escaped, as the log writes it (``\\n``, ``\\x1b``, ``\\u202e``),
so the reply keeps its meaning for a human and one line for a client.

Three replies carry a pathname a client reads to send it back: RFC 959's ``257`` (PWD,
MKD; Appendix II), the entry line of RFC 3659's ``MLST`` (7.2: a space, the facts, a space
and the pathname, up to the line's end), and the lines of a ``STAT path`` listing (RFC 959
4.1.3: "analogous to the list command except that data shall be transferred over the control
connection"; lftp's ``ftp:use-stat-for-list`` parses them as it parses LIST, and vsftpd and
proftpd send them as their LIST lines). They give the name as it is, and only what would end
their line (CR, LF, NUL, which no name the server shows holds) is escaped. An escaped
``\\t`` there named another file, or none, when the client sent it back.
"""

from __future__ import annotations

import re

from ..logfiles import escape_controls

# The reply's own line end; anything else that ends or changes a line is escaped.
LINE_END = "\r\n"
# The lines that carry a pathname (a 257 reply's; MLST's entry, its facts ``name=value;``
# before the pathname, which is absolute), and what they escape. No other line starts with a
# space and a fact: a STAT listing line starts with the permissions, FEAT's with a command.
_PATHNAME_REPLY = ("257 ", "257-")
_MLST_ENTRY = re.compile(r" (?:[^=; ]+=[^;]*;)* /")
_LINE_BREAKS = re.compile("[\r\n\x00]")


def reply_lines(text: str) -> str:
    """Return ``text`` (one or more reply lines, each ended by CRLF, the last one perhaps
    not ended yet) with every control character inside a line written escaped, as the log
    writes it, but in a ``257`` line and in MLST's entry line (pathnames a client sends
    back) only CR, LF and NUL; the CRLFs that end lines are kept. Lone surrogates are left:
    the session's encoding turns an undecodable byte of a legacy name into ``?``
    (``dialect.push``). Raises nothing."""
    return LINE_END.join(_escaped(line) for line in text.split(LINE_END))


def listing_lines(text: str) -> str:
    """Return ``text``, lines of a ``STAT path`` listing each ended by CRLF (``ls -l`` lines,
    never a reply code at their start), with only CR, LF and NUL inside a line escaped:
    the names as LIST gives them. Raises nothing."""
    return LINE_END.join(_ends_escaped(line) for line in text.split(LINE_END))


def _ends_escaped(line: str) -> str:
    return _LINE_BREAKS.sub(lambda match: escape_controls(match.group()), line)


def _escaped(line: str) -> str:
    if line.startswith(_PATHNAME_REPLY) or _MLST_ENTRY.match(line):
        return _ends_escaped(line)
    return escape_controls(line, surrogates=False)
