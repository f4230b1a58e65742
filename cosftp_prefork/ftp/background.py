"""Work a command leaves running after its reply, and the session's next commands that wait
for it.

A rename right after the session's own STOR (``x.partial`` -> ``x``, as rclone and WinSCP
upload) answers once the copy is made; deleting the source follows on the worker's look-up
pool. The session's own next command must still see the namespace as if the delete were
done: a command that could show the source (a listing, or a command naming the source or
one of its directories) waits for it first; others (the next upload, MLST of the new name,
PASV...) do not. Other sessions could always see both names for a moment (COS has no
rename: copy, then delete), as before.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from typing import Any, Callable

from ..errors import StorageError

log = logging.getLogger(__name__)

# Commands that touch no name (connection, transfer parameters, session state).
NAMELESS = frozenset({
    "ABOR", "ALLO", "AUTH", "CCC", "EPRT", "EPSV", "FEAT", "HELP", "MODE", "NOOP", "OPTS",
    "PASS", "PASV", "PBSZ", "PORT", "PROT", "PWD", "QUIT", "REIN", "REST", "STRU", "SYST",
    "TYPE", "USER", "XPWD"})
# Commands on one name, their argument (after MFMT's time): they wait only for work on that
# name or under it.
ONE_NAME = frozenset({
    "APPE", "CWD", "DELE", "HASH", "MDTM", "MFMT", "MKD", "MLST", "RETR", "RMD", "RNFR",
    "RNTO", "SIZE", "STOR", "XCRC", "XCWD", "XMD5", "XMKD", "XRMD", "XSHA1", "XSHA256",
    "XSHA512"})


class AfterReply:
    """The work one session's commands left running (at most ``LIMIT``: the next command
    then waits for it all), each with the path it changes."""

    LIMIT = 8

    def __init__(self, submit: Callable[..., Future]) -> None:
        self._submit = submit
        self._running: list[tuple[str, Future]] = []

    def start(self, path: str, work: Callable[..., Any], *args: Any) -> None:
        """Run ``work(*args)``, which changes ``path``, while the reply goes out."""
        self._running.append((path, self._submit(work, *args)))

    def before(self, command: str, path: Callable[[], str]) -> None:
        """Wait for the work ``command`` could see: all of it, unless the command names no
        file, or names one (``path()``, normalised) that no work changes or lies under."""
        self._running = [(changed, work) for changed, work in self._running if not work.done()]
        if not self._running or command in NAMELESS:
            return
        if command in ONE_NAME and len(self._running) < self.LIMIT:
            named = path().rstrip("/") + "/"
            if not any(changed == named[:-1] or changed.startswith(named)
                       for changed, _ in self._running):
                return
        self.settle()

    def settle(self) -> None:
        """Wait for all of it; a failure is logged (the old name stays: nothing is lost)."""
        running, self._running = self._running, []
        for changed, work in running:
            try:
                work.result()
            except StorageError as exc:
                log.warning("path=%s: renamed, but the old name could not be removed (%s): "
                            "it stays, with the same bytes as the new one", changed, exc)
