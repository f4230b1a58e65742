"""Checksums of stored files: HASH (draft-bryan-ftpext-hash, its algorithm chosen with OPTS
HASH and shown in FEAT) and the de-facto XCRC, XMD5, XSHA1, XSHA256 and XSHA512."""

from __future__ import annotations

from typing import Optional

from pyftpdlib.filesystems import FilesystemError
from pyftpdlib.utils import strerror

from ..cos.digests import ALGORITHMS
from . import compat

# The de-facto checksum commands and the algorithm each one answers with.
X_DIGEST_COMMANDS = {"XCRC": "CRC32", "XMD5": "MD5", "XSHA1": "SHA-1", "XSHA256": "SHA-256",
                     "XSHA512": "SHA-512"}


def _reading_command(syntax: str) -> dict:
    """A pyftpdlib command table entry for a command on a file that needs read permission."""
    return {"perm": "r", "auth": True, "arg": True, "help": f"Syntax: {syntax}."}


# The entries of pyftpdlib's command table for the commands here.
HASH_COMMANDS = {
    "HASH": _reading_command("HASH <SP> file-name (checksum; OPTS HASH picks the kind)"),
    **{name: _reading_command(f"{name} <SP> file-name ({algorithm} of the file)")
       for name, algorithm in X_DIGEST_COMMANDS.items()},
}


class HashCommands:
    """Mixin for the control handler: see the module docstring."""

    hash_algorithm = ALGORITHMS[0]  # per session, set by OPTS HASH

    def ftp_FEAT(self, line: str) -> None:
        """Add the HASH line (draft-bryan-ftpext-hash), marking this session's algorithm."""
        kinds = ";".join(name + ("*" if name == self.hash_algorithm else "")
                         for name in ALGORITHMS)
        compat.set_feature(self, f"HASH {kinds}", replacing="HASH ")
        super().ftp_FEAT(line)

    def ftp_OPTS(self, line: str) -> None:
        """``OPTS HASH [algorithm]``: show or choose what HASH answers with."""
        command, _, argument = line.strip().partition(" ")
        if command.upper() != "HASH":
            super().ftp_OPTS(line)
            return
        choice = argument.strip().upper() or self.hash_algorithm
        if choice not in ALGORITHMS:
            self.respond(f"504 Unknown algorithm; choose one of {', '.join(ALGORITHMS)}.")
            return
        self.hash_algorithm = choice
        self.respond(f"200 {choice}")

    def ftp_HASH(self, path: str) -> None:
        """Reply ``213 <algorithm> 0-<size> <hex digest> <path>`` for the whole file."""
        found = self._checksum(path, self.hash_algorithm)
        if found is not None:
            size, hexdigest = found
            self.respond(f"213 {self.hash_algorithm} 0-{size} {hexdigest} "
                         f"{self.fs.fs2ftp(path)}")

    def ftp_XCRC(self, path: str) -> None:
        self._x_digest(path, "XCRC")

    def ftp_XMD5(self, path: str) -> None:
        self._x_digest(path, "XMD5")

    def ftp_XSHA1(self, path: str) -> None:
        self._x_digest(path, "XSHA1")

    def ftp_XSHA256(self, path: str) -> None:
        self._x_digest(path, "XSHA256")

    def ftp_XSHA512(self, path: str) -> None:
        self._x_digest(path, "XSHA512")

    def _x_digest(self, path: str, command: str) -> None:
        found = self._checksum(path, X_DIGEST_COMMANDS[command])
        if found is not None:
            self.respond(f"250 {found[1]}")

    def _checksum(self, path: str, algorithm: str) -> Optional[tuple[int, str]]:
        try:
            return self.run_as_current_user(self.fs.checksum, path, algorithm)
        except (OSError, FilesystemError) as exc:
            self.respond(f"550 {strerror(exc)}.")
            return None
