"""The log files operators' tools already read: xferlog and vsftpd's own log format.

* ``xferlog_file``: one line per finished or failed transfer in the xferlog(5) format that
  vsftpd (``xferlog_std_format``), proftpd and wu-ftpd write, for the transfer report tools
  and accounting scripts built on it.
* ``vsftpd_log_file``: logins and transfers as vsftpd writes them to ``vsftpd.log``
  (``[pid N] [user] OK LOGIN: Client "ip"``), which fail2ban's stock ``vsftpd`` filter reads.

Every client-supplied field (user name, path) is made safe the way vsftpd does it, and more:
characters that are not printable become ``?``, and so do those that delimit the fields
(``"``, ``[``, ``]``), so a user name cannot forge a line that bans someone else's address;
in xferlog, where fields are separated by spaces, a space in a path becomes ``_``.

Each process writes its own lines with one ``write()`` to a file opened for appending, so
lines of several workers never mix; the files are reopened when logrotate moves them.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Optional

from ..config.model import OperatorConfig
from ..logfiles import PrivateFileHandler
from ..safefiles import check_directory

MAX_FIELD = 512
_UNSAFE = '"[]'


def safe_field(text: str, space: str = " ") -> str:
    """``text`` with unprintable and delimiting characters as ``?``, spaces as ``space``,
    at most ``MAX_FIELD`` characters; ``?`` if empty."""
    cleaned = "".join("?" if not ch.isprintable() or ch in _UNSAFE else ch
                      for ch in text[:MAX_FIELD])
    return cleaned.replace(" ", space) or "?"


def log_date(when: float) -> str:
    """``Tue Dec  1 10:55:37 2026``: the local-time stamp of xferlog and vsftpd.log."""
    stamp = time.localtime(when)
    return (f"{time.strftime('%a %b', stamp)} {stamp.tm_mday:2d} "
            f"{time.strftime('%H:%M:%S %Y', stamp)}")


@dataclass(frozen=True)
class Transfer:
    """One transfer that ended, as the logs describe it."""

    started: float  # time.time() when the data started to flow
    ended: float
    client_ip: str
    nbytes: int
    path: str  # the FTP path, as the client named it
    upload: bool
    ascii: bool
    user: str
    anonymous: bool
    ok: bool


def xferlog_line(transfer: Transfer) -> str:
    """The xferlog(5) line of ``transfer`` (without the newline)."""
    seconds = max(1, round(transfer.ended - transfer.started))
    fields = [
        log_date(transfer.ended), str(seconds), transfer.client_ip, str(transfer.nbytes),
        safe_field(transfer.path, "_"), "a" if transfer.ascii else "b", "_",
        "i" if transfer.upload else "o", "a" if transfer.anonymous else "r",
        safe_field(transfer.user, "_"), "ftp", "0", "*", "c" if transfer.ok else "i",
    ]
    return " ".join(fields)


def vsftpd_line(when: float, user: str, what: str, ok: bool, client_ip: str,
                detail: str = "") -> str:
    """A vsftpd.log line: ``<date> [pid N] [user] OK|FAIL <what>: Client "ip"<detail>``."""
    return (f"{log_date(when)} [pid {os.getpid()}] [{safe_field(user)}] "
            f"{'OK' if ok else 'FAIL'} {what}: Client \"{client_ip}\"{detail}")


def vsftpd_transfer_line(transfer: Transfer) -> str:
    """vsftpd's line for a transfer: path, bytes and rate in KiB/s."""
    rate = transfer.nbytes / max(transfer.ended - transfer.started, 0.1) / 1024
    detail = f', "{safe_field(transfer.path)}", {transfer.nbytes} bytes, {rate:.2f}Kbyte/sec'
    return vsftpd_line(transfer.ended, transfer.user, "UPLOAD" if transfer.upload else "DOWNLOAD",
                       transfer.ok, transfer.client_ip, detail)


def _file_logger(name: str, path: Optional[str]) -> Optional[logging.Logger]:
    """A logger writing bare lines to ``path`` (None: no file), not to the main log."""
    if path is None:
        return None
    check_directory(os.path.dirname(path) or ".")
    handler = PrivateFileHandler(path)  # 0640: it names users and files
    logger = logging.getLogger(f"cosftp_prefork.ftp.oplog.{name}")
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


class OperatorLogs:
    """The xferlog and vsftpd.log of one worker process (files opened in that process)."""

    def __init__(self, config: OperatorConfig) -> None:
        self._xferlog = _file_logger("xferlog", config.xferlog_file)
        self._vsftpd = _file_logger("vsftpd", config.vsftpd_log_file)

    def transfer(self, transfer: Transfer) -> None:
        if self._xferlog is not None:
            self._xferlog.info("%s", xferlog_line(transfer))
        if self._vsftpd is not None:
            self._vsftpd.info("%s", vsftpd_transfer_line(transfer))

    def login(self, user: str, ok: bool, client_ip: str) -> None:
        if self._vsftpd is not None:
            self._vsftpd.info("%s", vsftpd_line(time.time(), user, "LOGIN", ok, client_ip))
