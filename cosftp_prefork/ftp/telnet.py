"""The control connection is Telnet (RFC 959 4.1, RFC 854): the byte 0xFF is Telnet's IAC.

- In a command, ``IAC IAC`` is one 0xFF byte of the text (RFC 854: "IAC need be doubled to
  be sent as data"; lftp does so), and ``IAC IP`` and ``IAC DM`` are the Telnet
  interrupt and synch a client sends before ABOR, STAT or QUIT (RFC 959 4.1.3; tnftp
  does), not part of the line. An IAC followed by anything else is kept as data: a
  client that does not double 0xFF (ftplib, many others) sends a latin-1 ``ÿ`` or a
  cp1251 ``я`` followed by the next byte of the name, which must stay there.
- In a reply, every 0xFF byte is doubled.

Only a session in a single-byte legacy encoding has 0xFF in its text (``ÿ`` in latin-1,
``я`` in cp1251): UTF-8, GBK and GB18030 never use that byte. Data connections are not
Telnet: listings and files are sent as they are.
"""

from __future__ import annotations

import re

IAC = b"\xff"
# IAC, then IAC (a data byte), IP (interrupt process) or DM (data mark, the synch).
_SEQUENCE = re.compile(rb"\xff([\xff\xf4\xf2])")


def command_bytes(line: bytes) -> bytes:
    """Return the command ``line`` as received (without its CRLF) with Telnet's sequences
    undone: ``IAC IAC`` as one 0xFF, ``IAC IP`` and ``IAC DM`` removed. Raises nothing."""
    if IAC not in line:
        return line
    return _SEQUENCE.sub(lambda match: IAC if match.group(1) == IAC else b"", line)


def reply_bytes(data: bytes) -> bytes:
    """Return reply bytes ``data`` as the control connection sends them: each 0xFF
    doubled. Raises nothing."""
    return data.replace(IAC, IAC + IAC)
