"""Invisible and format characters (Unicode category Cf: zero width space, the byte order mark,
soft hyphen, bidirectional isolates, tag characters) a client sends are written escaped in
the log and in ``cosftpctl`` output, as control characters are: a name holding them would
otherwise look like another name to whoever reads it ("Trojan Source" spoofing)."""

from __future__ import annotations

import ftplib
import sys
import unicodedata

import pytest

from cosftp_prefork.logfiles import escape_controls

from .server_proc import wait_until

# Zero width space, byte order mark, soft hyphen, left-to-right isolate, word joiner, and the
# tag character "A" (outside the BMP: "ASCII smuggling" hides text in those).
INVISIBLE = "\u200b\ufeff\u00ad\u2066\u2060\U000e0041"
SHOWN = "\\u200b\\ufeff\\xad\\u2066\\u2060\\U000e0041"


def test_every_invisible_or_control_character_is_escaped():
    """Every character of categories Cc, Cf, Zl and Zp of this Python's Unicode database, and
    lone surrogates, are escaped, spelled as Python's ``unicode_escape`` spells them."""
    unsafe = [chr(code) for code in range(sys.maxunicode + 1)
              if unicodedata.category(chr(code)) in ("Cc", "Cf", "Zl", "Zp", "Cs")]
    raw = [f"U+{ord(char):04X}" for char in unsafe if escape_controls(char) == char]
    assert raw == [], f"left raw: {raw}"
    spelled = {char: char.encode("unicode_escape").decode("ascii") for char in unsafe
               if char not in "\t\n\r" and not 0xd800 <= ord(char) <= 0xdfff}
    assert {char: escape_controls(char) for char in spelled} == spelled


@pytest.mark.parametrize("text", ["plain.txt", "中文 名字.txt", "é", "a\u3000b"])
def test_visible_text_is_kept(text):
    assert escape_controls(text) == text


def test_names_a_client_sends_are_escaped_in_the_log_and_cosftpctl(server, area):
    """Through ftplib (UTF-8): a user name and a path holding invisible characters. The
    log (pyftpdlib's failed login line, ours) and ``cosftpctl sessions`` (the session's last
    command) show them escaped, and no line holds one raw. Found: every Cf character but the
    bidirectional controls was written raw."""
    stranger = ftplib.FTP(encoding="utf-8")
    stranger.connect(server.host, server.port, timeout=30)
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        stranger.login(f"{area}{INVISIBLE}", "wrong")
    stranger.close()
    wait_until(lambda: f"USER '{area}{SHOWN}' failed login." in server.log_text(),
               what="pyftpdlib's failed login line, escaped")  # (written after the 530)
    alice = server.login("alice", "alice-pw")
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        alice.sendcmd(f"SIZE /in{INVISIBLE}visible.txt")  # (the command column keeps 48 bytes)
    shown: list[str] = []

    def listed() -> bool:  # (the shared state is updated once a second)
        result = server.ctl("sessions")
        assert result.returncode == 0, result.stderr
        shown.append(result.stdout)
        return "SIZE /in" in result.stdout
    wait_until(listed, interval=0.5, what="the SIZE listed by cosftpctl sessions")
    assert f"SIZE /in{SHOWN}visible.txt" in shown[-1], shown[-1]
    written = server.log_text() + shown[-1]
    assert not set(INVISIBLE) & set(written), "an invisible character written raw"
    alice.quit()
