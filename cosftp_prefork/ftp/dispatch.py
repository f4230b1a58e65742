"""How the control handler runs a command: commands still buffered after the session closed
or was kicked are dropped, names COS cannot store are refused before anything runs, a
transfer command needs its data connection, and COS failures become replies (not a dropped
connection); the last command is noted for ``cosftpctl sessions``."""

from __future__ import annotations

import logging
import time
from typing import Optional

from ..errors import Conflict, InvalidPath, QuotaExceeded, StorageUnavailable
from ..events.spool import SpoolError
from ..paths import new_name_key
from .datachannel import NOT_RECORDED
from .progress import TransferMeter
from .tree import Unstorable

log = logging.getLogger(__name__)

NAMING_COMMANDS = ("STOR", "APPE", "MKD", "XMKD", "RNTO")
TRANSFER_COMMANDS = ("RETR", "STOR", "APPE", "LIST", "NLST", "MLSD")
# Those of them a graceful stop waits for (``ftp.lifecycle``): not the listings.
FILE_TRANSFER_COMMANDS = ("RETR", "STOR", "APPE")
# Commands ``cosftpctl sessions`` shows with their argument (a path).
SHOWN_ARGUMENTS = ("RETR", "STOR", "APPE", "DELE", "CWD", "MKD", "RMD", "RNFR", "RNTO", "LIST",
                   "NLST", "MLSD", "MLST", "SIZE", "MDTM")


class CommandDispatch:
    """Mixin for the control handler: see the module docstring."""

    def pre_process_command(self, line: str, cmd: str, arg: str) -> None:
        """Ignore commands still buffered after the session closed, or was kicked (its 421
        goes out instead).

        asynchat keeps handing over pipelined lines that arrived with the one that closed
        the session; pyftpdlib would run them against a filesystem it already dropped, and
        those after a QUIT that waits for a transfer to end. A kick that came while an
        earlier line ran was seen only once they all had.
        """
        if self._quitting() or self.obey_kick() or self.refused_proxy_header(line, cmd):
            return
        self._note_command(cmd, arg)
        if self.fs is not None:
            self.fs.begin_command(cmd, arg)
        super().pre_process_command(line, cmd, arg)

    _last_command = ""
    _last_active = 0.0
    meter: Optional[TransferMeter] = None  # of the transfer in flight, or of the last one

    def _note_command(self, cmd: str, arg: str) -> None:
        """Remember the command for ``cosftpctl sessions``: the verb if pyftpdlib knows it,
        with the path for the commands on a file (never a password)."""
        self._last_active = time.time()
        if cmd not in self.proto_cmds:
            self._last_command = "?"
        else:
            self._last_command = f"{cmd} {arg}" if cmd in SHOWN_ARGUMENTS else cmd

    def session_detail(self) -> tuple[str, str, Optional[TransferMeter], float]:
        """User (once logged in), last command, the meter of the transfer in flight (or of
        the last one), time of the last command: what ``cosftpctl sessions`` shows."""
        return (self.username if self.authenticated else "", self._last_command, self.meter,
                self._last_active)

    def process_command(self, cmd: str, *args, **kwargs) -> None:
        """Run one command; a COS failure becomes a 451 reply, not a dropped connection.

        A name COS cannot store (too long, control characters) gets 553 before anything runs.
        """
        refusal = self._naming_refusal(cmd, args) or self._transfer_refusal_of(cmd)
        if refusal is not None:
            self.respond(refusal)
            return
        file_transfer = cmd in FILE_TRANSFER_COMMANDS
        if file_transfer:
            self.transfer_command_begins()
        try:
            super().process_command(cmd, *args, **kwargs)
            if cmd in TRANSFER_COMMANDS:
                self.transfer_command_ran()
        except (Unstorable, Conflict, QuotaExceeded, SpoolError, StorageUnavailable) as exc:
            self.respond(_failure_reply(exc, cmd, args[0] if args else "-"))
        finally:
            if file_transfer:
                self.transfer_command_ends()

    def _naming_refusal(self, cmd: str, args: tuple) -> Optional[str]:
        """The 553 of a command naming a new file or directory with a name COS cannot
        store, or None."""
        if cmd not in NAMING_COMMANDS or not args:
            return None
        try:
            place = self.fs.room_for(args[0])
            new_name_key(place.path, directory=cmd in ("MKD", "XMKD"), room=place.room,
                         at_bucket_root=place.at_bucket_root)
        except InvalidPath as exc:
            return f"553 {exc.strerror}."
        return None

    def _transfer_refusal_of(self, cmd: str) -> Optional[str]:
        """``transfer_refusal`` for a transfer command, None for any other."""
        return self.transfer_refusal() if cmd in TRANSFER_COMMANDS else None


def _failure_reply(exc: Exception, cmd: str, path: str) -> str:
    """The reply to ``cmd`` on ``path`` that raised ``exc`` (one ``process_command``
    catches); refusals by quota and COS failures are logged."""
    if isinstance(exc, Unstorable):
        return f"553 {exc}."
    if isinstance(exc, Conflict):
        return f"450 {exc}."
    if isinstance(exc, QuotaExceeded):
        log.warning("path=%s: %s refused: %s", path, cmd, exc)
        return f"552 {exc}; nothing stored."
    if isinstance(exc, SpoolError):
        return NOT_RECORDED
    log.error("path=%s: %s failed: %s", path, cmd, exc.cause)
    return f"451 Requested action aborted: {exc.cause}; try again."
