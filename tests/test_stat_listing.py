"""``STAT path`` is LIST over the control connection (RFC 959 4.1.3: "analogous to the list
command except that data shall be transferred over the control connection"): its lines give
each name as LIST does, for a client that parses them (lftp's ``ftp:use-stat-for-list``) to
send back. Only what the control connection itself forbids is changed: 0xFF doubled (Telnet,
``tests/test_telnet.py``); CR, LF and NUL never appear (such names are left out of every
listing, ``tests/test_reply_lines.py``)."""

from __future__ import annotations

import subprocess

from .conftest import ALPHA
from .test_clients import UTF8_LOCALE, lftp_command
from .test_reply_lines import CLEAN_LINE, RawSession, escaped

# Keys another tool stored: a tab, a bell, C1's CSI, a right-to-left override, a zero width
# space, a byte order mark, and a backslash that an escaped tab would be mistaken for.
NAMES = ["tab\there", "bel\x07", "csi\x9bx", "rlo\u202etxt", "zw\u200bsp", "bom\ufeff",
         "back\\tslash"]


def test_lftp_listing_with_stat_mirrors_every_name(server, area, cos, tmp_path):
    """lftp with ``ftp:use-stat-for-list`` reads directories with ``STAT path`` instead of
    LIST, then fetches what it read: every file comes down under its own name, with its own
    content. Before: STAT's lines had the names escaped (``tab\\there``), lftp asked for
    files that do not exist and mirror failed (550)."""
    for name in NAMES:
        cos.put_object(Bucket=ALPHA, Key=f"{area}/{name}", Body=name.encode())
    local = tmp_path / "mirrored"
    result = subprocess.run(
        lftp_command(server, "set ftp:use-mlsd false; set ftp:use-stat-for-list true; "
                     f"mirror /{area} {local}"),
        env=UTF8_LOCALE, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert {path.name: path.read_bytes() for path in local.iterdir()} == \
        {name: name.encode() for name in NAMES}


def test_stat_lines_give_names_as_list_does_the_header_stays_escaped(server, alice, area,
                                                                    cos):
    """``STAT path`` of a directory whose name holds a tab: each line as LIST gives it, the
    session in step after them; the ``213-`` line, quoting the path the client sent for a
    human (as a ``550`` does), keeps it escaped."""
    folder = f"/{area}/d\tir"
    for name in NAMES:
        cos.put_object(Bucket=ALPHA, Key=f"{folder[1:]}/{name}", Body=b"x")
    listed: list[str] = []
    alice.retrlines(f"LIST {folder}", listed.append)
    raw = RawSession(server.port, "alice", "alice-pw")
    try:
        raw.send(f"STAT {folder}".encode())
        lines = raw.reply()
        assert lines[0] == f'213-Status of "{escaped(folder)}":\r\n' and CLEAN_LINE.fullmatch(
            lines[0]) and lines[-1] == "213 End of status.\r\n", lines
        assert [line[:-2] for line in lines[1:-1]] == listed
        assert raw.one_line_reply(b"NOOP").startswith("200 ")
    finally:
        raw.close()
