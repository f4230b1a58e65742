"""What real FTP clients send and expect, beyond RFC 959: a mixin for the control handler.

- Names in a legacy encoding (``ftp_encoding``: GBK cameras, latin-1 scanners) decoded
  strictly, so two different byte strings never become one key; ``OPTS UTF8 ON/OFF``.
- ls-style options before a path (``LIST -la /dir``), skipped as vsftpd and proftpd do.
- Wildcards in the last component of LIST/NLST/MLSD (tnftp's ``mget g*.txt`` sends
  ``NLST g*.txt``), over one directory listing.
- Pipelined input: an overlong line is one ``500`` and is discarded up to its end, and
  nothing sent after ``QUIT`` runs.
- Telnet on the control connection (``telnet``): ``IAC IAC`` in a command is one 0xFF,
  and a 0xFF of a reply is sent doubled.
"""

from __future__ import annotations

import glob
import logging
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Optional

from pyftpdlib.filesystems import FilesystemError
from pyftpdlib.utils import strerror

from . import compat, telnet
from .replytext import listing_lines, reply_lines

log = logging.getLogger(__name__)

UTF8 = "utf-8"
# pyftpdlib's limit on one command line (its collect_incoming_data).
MAX_LINE = 2048
# Commands whose argument is a path: an undecodable one is a bad file name (553).
PATH_COMMANDS = frozenset({
    "CWD", "XCWD", "LIST", "NLST", "MLSD", "MLST", "STAT", "RETR", "STOR", "APPE", "DELE",
    "RMD", "XRMD", "MKD", "XMKD", "RNFR", "RNTO", "SIZE", "MDTM", "MFMT", "SITE", "HASH",
    "XCRC", "XMD5", "XSHA1", "XSHA256", "XSHA512",
})
# Wildcards (``*``, ``?``, ``[``) one pattern may hold. Compiling a pattern costs ~50 us of
# CPU per wildcard, holding the worker's GIL (1,000 in one NLST: 52 ms, every session of
# the worker stalled); 32 cost 3 ms at most, and no client's mget pattern comes near.
MAX_WILDCARDS = 32
_LS_OPTIONS = re.compile(r"^(?:-[A-Za-z0-9]+(?:\s+|$))+")


def strip_ls_options(arg: str) -> str:
    """Return ``arg`` without leading ls-style options (``-la /dir`` -> ``/dir``)."""
    return _LS_OPTIONS.sub("", arg, count=1)


class NothingToList(Exception):
    """A listing command has nothing to show; the message is for the client."""


@dataclass(frozen=True)
class Listing:
    """What a listing command shows: ``names`` in ``directory``; ``expanded`` if a
    wildcard found them."""

    directory: str
    names: Iterable[str]  # a directory's names stream in key order (fs.StreamedListing)
    expanded: bool = False


def split_pattern(path: str) -> Optional[tuple[str, str]]:
    """Return ``(directory, pattern)`` when the last component of the normalised ``path``
    holds a wildcard (``*``, ``?``, ``[...]``), else None. Raises ``NothingToList`` for a
    wildcard in a directory component (only one directory level is expanded), and for a
    pattern of more than ``MAX_WILDCARDS`` wildcards."""
    directory, pattern = posixpath.split(path)
    if glob.has_magic(directory):
        raise NothingToList("Wildcards are only supported in the last path component")
    if not glob.has_magic(pattern):
        return None
    if sum(pattern.count(char) for char in "*?[") > MAX_WILDCARDS:
        raise NothingToList(f"Too many wildcards: at most {MAX_WILDCARDS} in a pattern")
    return directory, pattern


class ClientDialect:
    """Mixin for ``FTPHandler``: see the module docstring.

    The session's encoding is ``ftp_encoding`` of ``[OPTIONAL]`` until USER names an
    account, then that account's (set per account, else the server's); ``OPTS UTF8 ON``
    switches the session to UTF-8 whatever the account says, ``OFF`` back.
    """

    encoding = UTF8  # set per worker by configure_handler, per session by USER and OPTS
    _utf8_chosen: Optional[bool] = None  # what OPTS UTF8 said, None: nothing yet
    _overlong = False  # the current line passed MAX_LINE: discard it up to its end
    _raw_arg = ""  # the argument as the client wrote it (options stripped)

    # --- reading commands

    def collect_incoming_data(self, data: bytes) -> None:
        """Buffer a command line; past ``MAX_LINE`` reply 500 once and drop the rest of it.

        pyftpdlib replies and then takes the line's remainder for a new command; a long
        line could then smuggle a command in its tail.
        """
        if self._overlong:
            return
        if compat.buffered_input_len(self) + len(data) <= MAX_LINE:
            super().collect_incoming_data(data)
            return
        self._overlong = True
        compat.discard_input(self)
        if not self._quitting():
            self.respond_w_warning("500 Command too long.")

    def found_terminator(self) -> None:
        line = compat.buffered_input(self)
        if self._overlong:
            self._overlong = False
        elif self._decodable(line):
            super().found_terminator()
            return
        compat.discard_input(self)

    def decode(self, data: bytes) -> str:
        """The command line ``data`` as text, Telnet's sequences undone (``telnet``).
        Strict: ``errors="replace"`` would store two different names as one key. Raises
        ``UnicodeDecodeError``."""
        return telnet.command_bytes(data).decode(self.encoding)

    def _decodable(self, line: bytes) -> bool:
        """True if ``line`` is text in the session's encoding, else reply 553 (a name) or
        501 and log what was refused, without the bytes themselves."""
        try:
            self.decode(line)
        except UnicodeDecodeError:
            pass
        else:
            return True
        if self._quitting():
            return False
        cmd = line.split(b" ", 1)[0].decode("ascii", "replace").upper()
        log.warning("%s refused: its argument is not valid %s",
                    cmd if cmd.isalpha() else "a command", self.encoding)
        if self.authenticated and cmd in PATH_COMMANDS:
            self.respond(f"553 File name is not valid {self.encoding}; nothing done.")
        else:
            self.respond(f"501 Command is not valid {self.encoding}.")
        return False

    def _quitting(self) -> bool:
        """True once the session is closing: nothing more runs (``ftp.lifecycle`` adds a
        QUIT that waits for a transfer)."""
        return compat.is_closed(self) or compat.is_closing(self)

    def pre_process_command(self, line: str, cmd: str, arg: str) -> None:
        if cmd in ("LIST", "NLST") and arg.startswith("-"):
            arg = strip_ls_options(arg)
        self._raw_arg = arg
        super().pre_process_command(line, cmd, arg)

    def push(self, data: str) -> None:
        """Send reply lines ``data`` in the session's encoding, control characters escaped
        (``replytext``: what a client sent or another tool named a key cannot split a reply
        or reach a terminal), 0xFF doubled (``telnet``); a character the encoding lacks
        becomes ``?``."""
        encoded = reply_lines(data).encode(self.encoding, "replace")
        self.push_encoded(telnet.reply_bytes(encoded))  # ftp.replyqueue counts them

    def push_with_producer(self, producer) -> None:
        """Send the reply lines ``producer`` makes (pyftpdlib's ``STAT path`` listing) with
        the names as LIST gives them (``replytext.listing_lines``), Telnet-encoded as
        ``push`` does."""
        super().push_with_producer(_ListingLines(producer, self.encoding))

    # --- the session's encoding

    def ftp_USER(self, line: str) -> None:
        super().ftp_USER(line)
        self.encoding = self._session_encoding()

    def on_login(self, username: str) -> None:
        """An account the auth hook gave is known only now: its encoding applies from here."""
        self.encoding = self._session_encoding()
        super().on_login(username)

    def flush_account(self) -> None:
        """REIN and a new USER start over with the server's encoding."""
        super().flush_account()
        self._utf8_chosen = None
        self.encoding = type(self).encoding

    def _session_encoding(self) -> str:
        if self._utf8_chosen:
            return UTF8
        if self.authorizer.has_user(self.username):
            return self.authorizer.account(self.username).ftp_encoding
        return type(self).encoding

    def ftp_OPTS(self, line: str) -> None:
        """``OPTS UTF8 ON|OFF`` (FileZilla sends it after FEAT lists UTF8), also before
        login; other options need a login."""
        command, _, argument = line.strip().partition(" ")
        if command.upper() not in ("UTF8", "UTF-8"):
            if self.authenticated:
                super().ftp_OPTS(line)
            else:
                self.respond("530 Log in with USER and PASS first.")
            return
        choice = argument.strip().upper() or "ON"
        if choice not in ("ON", "OFF"):
            self.respond("501 Syntax: OPTS UTF8 ON|OFF.")
            return
        self._utf8_chosen = choice == "ON"
        self.encoding = self._session_encoding()
        self.respond(f"200 UTF8 mode {choice.lower()}; names are {self.encoding}.")

    def ftp_FEAT(self, line: str) -> None:
        """List UTF8 whatever the configured encoding: ``OPTS UTF8 ON`` selects it."""
        compat.set_feature(self, "UTF8")
        super().ftp_FEAT(line)

    # --- listings

    def ftp_LIST(self, path: str):
        listing = self._listing(path, "LIST")
        if listing is None:
            return None
        lines = self.fs.format_list(listing.directory, listing.names)
        self.push_dtp_data(compat.BufferedIteratorProducer(lines), isproducer=True, cmd="LIST")
        return path

    def ftp_NLST(self, path: str):
        """Names only; those a wildcard matched keep the directory the client wrote
        (``NLST sub/g*`` -> ``sub/g1.txt``), so that a RETR of each one works."""
        listing = self._listing(path, "NLST")
        if listing is None:
            return None
        written = posixpath.dirname(self._raw_arg) if listing.expanded else ""
        data = "".join(posixpath.join(written, name) + "\r\n" for name in listing.names)
        self.push_dtp_data(data.encode(self.encoding, "replace"), cmd="NLST")
        return path

    def ftp_MLSD(self, path: str):
        """A missing directory answers 550 as LIST and CWD do (pyftpdlib's 501 makes
        rclone retry a whole sync)."""
        listing = self._listing(path, "MLSD")
        if listing is None:
            return None
        perms = self.authorizer.get_perms(self.username)
        facts = self.fs.format_mlsx(listing.directory, listing.names, perms,
                                    compat.mlst_facts(self))
        self.push_dtp_data(compat.BufferedIteratorProducer(facts), isproducer=True, cmd="MLSD")
        return path

    def _listing(self, path: str, cmd: str) -> Optional[Listing]:
        """What listing command ``cmd`` shows for ``path``, or None after replying 550."""
        try:
            return self._find_listing(path, cmd)
        except (OSError, FilesystemError) as exc:
            self.respond(f"550 {strerror(exc)}.")
        except NothingToList as exc:
            self.respond(f"550 {exc}.")
        return None

    def _find_listing(self, path: str, cmd: str) -> Listing:
        """A directory's entries; a file by itself (not for MLSD), for LIST with the time
        MFMT set (one HEAD more, as for MLST); or, when no such name exists, the entries a
        wildcard in the last component matches. Raises ``NothingToList``, ``OSError`` or
        ``FilesystemError``."""
        # A name with a wildcard is looked up as written first, rarely a directory.
        likely = not glob.has_magic(posixpath.basename(path))
        streamed = self.run_as_current_user(self.fs.listdir_if_dir, path, likely)
        if streamed is not None:  # its first page told it is a directory: no look-up first
            return Listing(path, streamed)
        entry = self.fs.lookup(path)
        if entry is not None and entry.is_dir:  # made since the listing's first page
            return Listing(path, sorted(self.run_as_current_user(self.fs.listdir, path)))
        if entry is not None:
            if cmd == "MLSD":
                raise NothingToList("Not a directory")
            if cmd == "LIST":
                # The look-up listed the key, which does not tell the MFMT time: start
                # this command over with the HEAD that does.
                self.fs.begin_command()
                self.run_as_current_user(self.fs.getmtime, path)
            directory, name = posixpath.split(path)
            return Listing(directory, [name])
        pattern = split_pattern(path)
        if pattern is None:
            raise NothingToList("No such file or directory")
        directory, wildcard = pattern
        names = self.run_as_current_user(self.fs.listdir_matching, directory, wildcard)
        return Listing(directory, names, expanded=True)


class _ListingLines:
    """A producer of ``STAT path`` listing lines (bytes in ``encoding``, whole lines per
    chunk, as pyftpdlib's ``BufferedIteratorProducer`` gives them) with CR, LF and NUL
    inside a line escaped and 0xFF doubled."""

    def __init__(self, producer, encoding: str) -> None:
        self._producer = producer
        self._encoding = encoding

    def more(self) -> bytes:
        """The next chunk, as the control connection sends it; ``b""`` once the producer
        is done."""
        chunk = self._producer.more()
        if not chunk:
            return chunk
        text = chunk.decode(self._encoding, "surrogateescape")
        return telnet.reply_bytes(listing_lines(text).encode(self._encoding,
                                                             "surrogateescape"))
