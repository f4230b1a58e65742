"""The pyftpdlib control-connection handler of COS-backed sessions, made of one mixin per
concern, and its binding to a worker (``configure_handler``).

The mixins: logins (``ftp.logincommands``, ``ftp.loginfailures``; who may log in:
``ftp.authorizer``), running a command and its replies (``ftp.dispatch``), transfers
(``ftp.transfers``), their data connection (``ftp.dataconnect``), other file commands
(``ftp.filecommands``), checksums (``ftp.hashcommands``), what the session gives its
filesystem and data channel (``ftp.session``), the transfer in hand (``ftp.lifecycle``),
admission, back pressure, held commands, the client's dialect and the idle timer. The data
channel: ``ftp.datachannel``."""

from __future__ import annotations

from typing import Optional

from pyftpdlib.handlers import FTPHandler

from ..config.model import Config
from ..cos.engine import Engine
from ..cos.registry import BucketRegistry
from . import compat
from .active import CosActiveDTP
from .admission import Admission
from .authorizer import CosAuthorizer
from .backpressure import ReplyBackPressure
from .datachannel import CosDTPHandler
from .dataconnect import DataConnectionSetup
from .dialect import ClientDialect
from .dispatch import CommandDispatch
from .drain import DrainEnd
from .filecommands import FileCommands
from .hashcommands import HASH_COMMANDS, HashCommands
from .hooks import WorkerHooks
from .idletimer import SessionIdleTimer
from .lifecycle import TransferLifecycle
from .logincommands import LoginCommands
from .loginfailures import LoginFailures
from .loginwait import HeldCommands
from .mounts import session_fs
from .oplog import OperatorLogs
from .passive import CosPassiveDTP
from .replyqueue import ReplyQueue
from .retries import FailedUpload
from .session import SessionServices
from .throttle import SessionRates
from .transfers import TransferCommands


class CosFTPHandler(LoginCommands, LoginFailures, CommandDispatch, TransferCommands,
                    DataConnectionSetup, FileCommands, HashCommands, SessionServices,
                    TransferLifecycle, Admission, ReplyBackPressure, HeldCommands, ClientDialect,
                    ReplyQueue, SessionIdleTimer, FTPHandler):
    """Control channel: wires sessions to their bucket and turns COS errors into replies."""

    dtp_handler = CosDTPHandler
    passive_dtp = CosPassiveDTP
    active_dtp = CosActiveDTP
    abstracted_fs = staticmethod(session_fs)  # a CosFS, or a MountedFS with folders
    use_sendfile = False
    banner = "cosftp-prefork ready."  # [OPTIONAL] ftpd_banner, set by configure_handler
    permit_foreign_addresses = False
    proto_cmds = {
        **FTPHandler.proto_cmds,
        **HASH_COMMANDS,
        # Some clients send OPTS UTF8 ON before USER; ClientDialect refuses the rest then.
        "OPTS": {**FTPHandler.proto_cmds["OPTS"], "auth": False},
        # Before a login REIN asks for the state the session is in: 220, not 530.
        "REIN": {**FTPHandler.proto_cmds["REIN"], "auth": False},
        "SITE QUOTA": {"perm": None, "auth": True, "arg": False,
                       "help": "Syntax: SITE QUOTA (usage and limits of this account and its "
                                "folders)."},
    }
    rates: Optional[SessionRates] = None  # the account's rate limits, from login on
    # The last STOR whose data all arrived before it failed, until the next upload starts.
    failed_upload: Optional[FailedUpload] = None

    # Set per worker by ``configure_handler``.
    config: Config
    buckets: BucketRegistry
    engine: Engine  # the worker's transfer engine
    retrier = None  # the worker's AbortRetrier
    stats = None  # the worker's WorkerStats: admission and counters
    oplogs: OperatorLogs  # the worker's xferlog and vsftpd.log
    worker_hooks: WorkerHooks  # the worker's event spool and pre-check client

    def close(self) -> None:
        """End the session: its transfer first (``end_transfers``), and the bytes its
        filesystem keeps go back to the worker at once (``CosFS.end``)."""
        if not compat.is_closed(self):
            self.end_transfers(stopping=self.stats.stopping.is_set() and
                               not compat.is_closing(self))
            if self.fs is not None:
                self.fs.end()
                self._last_fs = self.fs
        super().close()
        if self._drain is not None:
            self._drain.close(DrainEnd.SESSION)  # nobody reads the reply any more


def configure_handler(config: Config, buckets: BucketRegistry, engine: Engine, retrier, stats,
                      masquerade_ip: Optional[str], worker_hooks: WorkerHooks,
                      base: type = CosFTPHandler) -> type:
    """Return a subclass of ``base`` bound to this worker's config, COS clients, engine,
    abort retrier, counters and hooks; ``masquerade_ip`` is the resolved
    ``masquerade_address``."""
    low, high = config.network.passive_ports
    dtp_handler = type(f"Bound{base.dtp_handler.__name__}", (base.dtp_handler,),
                       {"timeout": config.server.data_connection_timeout})
    passive_dtp = type(f"Bound{base.passive_dtp.__name__}", (base.passive_dtp,),
                       {"timeout": config.server.accept_timeout})
    active_dtp = type(f"Bound{base.active_dtp.__name__}", (base.active_dtp,),
                      {"connect_timeout": config.server.connect_timeout})
    attrs = {
        "dtp_handler": dtp_handler,
        "passive_dtp": passive_dtp,
        "active_dtp": active_dtp,
        "config": config,
        "buckets": buckets,
        "engine": engine,
        "retrier": retrier,
        "stats": stats,
        "authorizer": CosAuthorizer(config),
        "oplogs": OperatorLogs(config.operator),
        "worker_hooks": worker_hooks,
        "masquerade_address": masquerade_ip,
        "encoding": config.server.ftp_encoding,
        "passive_ports": range(low, high + 1),
        "banner": config.server.ftpd_banner,
        "timeout": config.server.idle_session_timeout,
    }
    return type(f"Bound{base.__name__}", (base,), attrs)
