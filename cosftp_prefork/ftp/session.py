"""What a session's commands and its data channel reach through the control handler: the
context its filesystem is made with (bucket, quotas, hooks), its events' hooks, its log
label, its in-flight row, its refused upload's drain, its transfer logs, and whether its
client is gone."""

from __future__ import annotations

import functools
import select
import socket
import time
from typing import Optional

from pyftpdlib.handlers import FTPHandler

from .. import metrics
from ..config.model import AccountConfig
from ..cos.quota import AccountQuota
from . import compat
from .admission import raw_socket
from .drain import Drain, DrainEnd
from .hooks import SessionHooks
from .oplog import Transfer
from .retries import UploadWatch
from .tree import FsContext


class SessionLabel:
    """``session=… user=… ip=…`` of a session, read when a line is written: the user is
    known from USER on, the client's address from its PROXY header."""

    __slots__ = ("_handler",)

    def __init__(self, handler: FTPHandler) -> None:
        self._handler = handler

    def __str__(self) -> str:
        handler = self._handler
        return f"session={id(handler):x} user={handler.username or '-'} ip={handler.remote_ip}"


class SessionServices:
    """Mixin for the control handler: see the module docstring."""

    _drain: Optional[Drain] = None  # the data connection of the last refused upload

    def upload_watch(self) -> Optional[UploadWatch]:
        """This session's in-flight row, for a STOR from byte 0 (``ftp.retries``); None
        once the session is no longer counted."""
        ticket = self._ticket
        return None if ticket is None else self.stats.upload_watch(ticket)

    def drain_refused_upload(self, drain: Drain) -> None:
        """Keep ``drain`` (see ``ftp.drain``) until it ends, or until the session ends or
        has another refused upload drained: one per session."""
        if self._drain is not None:
            self._drain.close(DrainEnd.REPLACED)
        self._drain = drain
        if compat.is_closed(self):
            drain.close(DrainEnd.SESSION)

    def log_transfer(self, cmd: str, filename: str, receive: bool, completed: bool,
                     elapsed: float, bytes: int) -> None:
        """pyftpdlib's hook for every file transfer that ended: also count it and write it to
        the transfer logs."""
        super().log_transfer(cmd, filename, receive, completed, elapsed, bytes)
        metrics.transfer_done(receive, completed, bytes)
        now = time.time()
        anonymous = self.authorizer.has_user(self.username) and \
            self.authorizer.account(self.username).anonymous_enable
        self.oplogs.transfer(Transfer(
            started=now - elapsed, ended=now, client_ip=self.remote_ip, nbytes=bytes,
            path=filename, upload=receive, ascii=compat.transfer_type(self) == "a",
            user=self.username, anonymous=anonymous, ok=completed))

    def fs_context(self, account: Optional[AccountConfig] = None,
                   mount: str = "") -> FsContext:
        """Return what this session's ``CosFS`` needs (called once, at login), or the one
        of a virtual folder (``account`` as it is in the folder at ``mount``:
        ``ftp.mounts``), whose bucket is then made, on its first use in this worker."""
        account = account or self.authorizer.account(self.username)
        return FsContext(
            account=account,
            bucket=self.buckets.home(account),
            transfer=self.config.transfer,
            engine=self.engine,
            max_list_file=self.config.server.max_list_file,
            hooks=self.hooks.under(mount) if mount else self.hooks,
            retrier=self.retrier,
            quota=self.quota_for(account, mount),
        )

    def quota_for(self, account: AccountConfig, mount: str = "") -> Optional[AccountQuota]:
        """The quotas that ``account``'s writes count in (as it is in the virtual folder at
        ``mount``, if given); None if none reaches it."""
        if self.stats.quotas is None:
            return None
        owner = self.authorizer.account(self.username) if mount else None
        return self.stats.quotas.for_account(account, mount, owner)

    # The filesystem the session had when it closed: after a QUIT during a transfer,
    # pyftpdlib closes the session (and drops ``fs``) inside the data channel's close,
    # before the channel reports the transfer's event, whose path it places.
    _last_fs = None

    @property
    def placing_fs(self):
        """The filesystem that places this session's paths in COS: its own, or once the
        session closed, the one it had (None if it never logged in)."""
        return self.fs or self._last_fs

    @functools.cached_property
    def hooks(self) -> SessionHooks:
        """This session's events and pre-checks; its filesystem places their paths (a
        virtual folder's are of the folder's bucket)."""
        return self.worker_hooks.session(f"{id(self):x}",
                                         lambda: (self.username or None, self.remote_ip),
                                         lambda path: self.placing_fs.place_of(path))

    @functools.cached_property
    def log_label(self) -> SessionLabel:
        """What the lines this session writes are stamped with (see ``logcontext``)."""
        return SessionLabel(self)

    def peer_gone(self, wait: float = 0.0) -> bool:
        """True if the client closes or resets the control connection within ``wait``
        seconds (nothing is read from it).

        A client that is killed closes its data connection too, which in FTP's stream mode
        looks exactly like the end of the file; its control connection closing at the same
        moment is the only sign that the upload was cut short.
        """
        poller = select.poll()
        poller.register(self.socket.fileno(), select.POLLIN | select.POLLRDHUP)
        if not poller.poll(wait * 1000):
            return False
        with raw_socket(self.socket) as raw:
            try:
                return raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
            except BlockingIOError:
                return False
            except OSError:
                return True

