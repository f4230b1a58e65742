"""The commands of the control handler on files and directories other than transfers: the
changes a full spool or a pre-delete check refuses (MKD, RMD, DELE, RNTO), RNFR and MFMT of
the session's own upload, MLST and SIZE as COS knows them, SITE QUOTA."""

from __future__ import annotations

import contextlib
import datetime
from typing import Optional

from pyftpdlib.filesystems import FilesystemError
from pyftpdlib.utils import strerror

from ..cos.quota import describe
from ..errors import StorageError, StorageUnavailable
from . import compat


def _mfmt_time(timeval: str) -> bool:
    """True if ``timeval`` is a time MFMT takes: YYYYMMDDHHMMSS, a real date."""
    if len(timeval) != 14 or not timeval.isdigit():
        return False
    try:
        datetime.datetime.strptime(timeval, "%Y%m%d%H%M%S")
    except ValueError:
        return False
    return True


class FileCommands:
    """Mixin for the control handler: see the module docstring."""

    def ftp_MKD(self, path: str):
        return None if self._change_refused("mkdir", path) else super().ftp_MKD(path)

    def ftp_RMD(self, path: str):
        if path != "/" and self._change_refused("rmdir", path):
            return None
        return super().ftp_RMD(path)

    def ftp_DELE(self, path: str):
        return None if self._change_refused("delete", path) else super().ftp_DELE(path)

    def ftp_RNTO(self, path: str):
        source = compat.rename_source(self)
        if source is not None and self._change_refused("rename", path, source):
            compat.forget_rename(self)
            return None
        return super().ftp_RNTO(path)

    def _change_refused(self, kind: str, path: str, source: Optional[str] = None) -> bool:
        """Answer and return True if a full spool or the pre-delete check refuses the
        change (see ``SessionHooks.check_change``)."""
        refusal = self.hooks.check_change(kind, path, source)
        if refusal is not None:
            self.respond(refusal)
        return refusal is not None

    def ftp_RNFR(self, path: str):
        """RNFR of the file this session's last STOR made (rclone's and WinSCP's temporary
        uploads) asks COS nothing: RNTO's copy is pinned to what that STOR stored, and a
        file replaced or deleted since is renamed the general way, or 550."""
        self.fs.expect_own_upload(path)
        return super().ftp_RNFR(path)

    def ftp_MFMT(self, path: str, timeval: str):
        """MFMT right after the session's own STOR of ``path`` asks COS nothing before its
        copy, which is pinned to what that STOR stored (``CosFS.utime``); any other starts
        the listing of the file's markers beside pyftpdlib's look-up (``CosFS.begin_mfmt``).
        A time that is not YYYYMMDDHHMMSS is a syntax error (501), found before COS is
        asked anything (pyftpdlib answered 550, "file unavailable")."""
        if not _mfmt_time(timeval):
            self.respond("501 Invalid time: expected YYYYMMDDHHMMSS (UTC).")
            return None
        self.fs.begin_mfmt(path)
        return super().ftp_MFMT(path, timeval)

    def ftp_MLST(self, path: str):
        """MLST with the time MFMT set (``CosFS.look_up_for_mlst``: a HEAD for a file, one
        LIST for a directory); pyftpdlib's ``stat`` then answers from what it found."""
        with contextlib.suppress(OSError, FilesystemError):
            self.run_as_current_user(self.fs.look_up_for_mlst, path)
        return super().ftp_MLST(path)

    def ftp_SIZE(self, path: str) -> None:
        """Reply 213 with the stored size, or with the bytes a parked upload can resume from
        (see ``CosFS.resumable_size``), in ASCII mode too.

        pyftpdlib refuses SIZE in ASCII mode because the converted size differs; the classic
        ``ftp`` client sends SIZE in ASCII mode by default, and its users expect a number.
        """
        try:
            size = self.run_as_current_user(self.fs.resumable_size, path)
        except (OSError, FilesystemError) as exc:
            self.respond(f"550 {strerror(exc)}.")
            return
        self.respond(f"213 {size}")

    def ftp_SITE_QUOTA(self, line: str) -> None:
        """The usage and limits of the quotas this account's writes count against."""
        try:
            lines = describe(self.fs.quotas())
        except StorageError as exc:
            raise StorageUnavailable(exc) from exc
        self.respond("\r\n".join(["200-Quota:", *(f" {line}" for line in lines), "200 End."]))

