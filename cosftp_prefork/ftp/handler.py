"""The pyftpdlib control-connection handler of COS-backed sessions: login, commands,
their replies and logs (the data channel: ``ftp.datachannel``; who may log in:
``ftp.authorizer``)."""

from __future__ import annotations

import contextlib
import datetime
import functools
import ipaddress
import logging
import select
import socket
import time
from collections.abc import Callable
from typing import Optional

from pyftpdlib.filesystems import FilesystemError
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.utils import strerror

from .. import metrics
from ..config.model import AccountConfig, Config
from ..cos.digests import ALGORITHMS
from ..cos.engine import Engine
from ..cos.quota import AccountQuota, describe
from ..cos.registry import BucketRegistry
from ..errors import (
    Conflict,
    InvalidPath,
    QuotaExceeded,
    ResumeRefused,
    StorageError,
    StorageUnavailable,
)
from ..events.spool import SpoolError
from ..paths import new_name_key
from . import compat
from .active import CosActiveDTP
from .admission import Admission, raw_socket
from .authhook import DENY, AuthHook, HookRequest, Verdict
from .authorizer import CosAuthorizer, LoginRefused, LoginUnavailable
from .backpressure import ReplyBackPressure
from .datachannel import NOT_RECORDED, CosDTPHandler
from .dialect import ClientDialect
from .drain import Drain, DrainEnd
from .hooks import SessionHooks, WorkerHooks
from .idletimer import SessionIdleTimer
from .lifecycle import LOGIN_ANEW, TRANSFER_BUSY, TransferLifecycle
from .logins import AddressBanned, LoginExpired
from .loginwait import HeldCommands
from .mounts import session_fs
from .oplog import OperatorLogs, Transfer
from .passive import CosPassiveDTP, PassiveRangeExhausted
from .progress import TransferMeter
from .retries import FailedUpload, UploadWatch
from .throttle import SessionRates
from .tree import FsContext, Unstorable

log = logging.getLogger(__name__)

NAMING_COMMANDS = ("STOR", "APPE", "MKD", "XMKD", "RNTO")
TRANSFER_COMMANDS = ("RETR", "STOR", "APPE", "LIST", "NLST", "MLSD")
# Commands ``cosftpctl sessions`` shows with their argument (a path).
SHOWN_ARGUMENTS = ("RETR", "STOR", "APPE", "DELE", "CWD", "MKD", "RMD", "RNFR", "RNTO", "LIST",
                   "NLST", "MLSD", "MLST", "SIZE", "MDTM")
NO_DATA_CONNECTION = "425 Use PASV, EPSV, PORT or EPRT first."
# The de-facto checksum commands and the algorithm each one answers with.
X_DIGEST_COMMANDS = {"XCRC": "CRC32", "XMD5": "MD5", "XSHA1": "SHA-1", "XSHA256": "SHA-256",
                     "XSHA512": "SHA-512"}


def _reading_command(syntax: str) -> dict:
    """A pyftpdlib command table entry for a command on a file that needs read permission."""
    return {"perm": "r", "auth": True, "arg": True, "help": f"Syntax: {syntax}."}


def _mfmt_time(timeval: str) -> bool:
    """True if ``timeval`` is a time MFMT takes: YYYYMMDDHHMMSS, a real date."""
    if len(timeval) != 14 or not timeval.isdigit():
        return False
    try:
        datetime.datetime.strptime(timeval, "%Y%m%d%H%M%S")
    except ValueError:
        return False
    return True


class SessionLabel:
    """``session=… user=… ip=…`` of a session, read when a line is written: the user is
    known from USER on, the client's address from its PROXY header."""

    __slots__ = ("_handler",)

    def __init__(self, handler: FTPHandler) -> None:
        self._handler = handler

    def __str__(self) -> str:
        handler = self._handler
        return f"session={id(handler):x} user={handler.username or '-'} ip={handler.remote_ip}"


class CosFTPHandler(TransferLifecycle, Admission, ReplyBackPressure, HeldCommands, ClientDialect,
                    SessionIdleTimer, FTPHandler):
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
        "HASH": _reading_command("HASH <SP> file-name (checksum; OPTS HASH picks the kind)"),
        **{name: _reading_command(f"{name} <SP> file-name ({algorithm} of the file)")
           for name, algorithm in X_DIGEST_COMMANDS.items()},
        # Some clients send OPTS UTF8 ON before USER; ClientDialect refuses the rest then.
        "OPTS": {**FTPHandler.proto_cmds["OPTS"], "auth": False},
        # Before a login REIN asks for the state the session is in: 220, not 530.
        "REIN": {**FTPHandler.proto_cmds["REIN"], "auth": False},
        "SITE QUOTA": {"perm": None, "auth": True, "arg": False,
                       "help": "Syntax: SITE QUOTA (usage and limits of this account and its "
                                "folders)."},
    }
    hash_algorithm = ALGORITHMS[0]  # per session, set by OPTS HASH
    rates: Optional[SessionRates] = None  # the account's rate limits, from login on
    _drain: Optional[Drain] = None  # the data connection of the last refused upload
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

    def _refused_before_login(self) -> bool:
        """Close the session with 421 if its address is banned (checked at USER and PASS:
        connections opened before the ban must not go on guessing). True, and nothing
        answered, for one the gate refused (no ``gate_client``): it is closing after its
        421."""
        if self.gate_client is None:
            return True
        if self.authenticated or not self.stats.gate.is_banned(self.gate_client):
            return False
        self._refuse_banned()
        return True

    def _refuse_banned(self) -> None:
        self.stats.gate.refusals.note(self.remote_ip, "login refused: the address is banned")
        metrics.LOGINS.labels("banned").inc()
        self.respond(f"421 {self.stats.gate.BANNED}")
        self.close_when_done()

    def ftp_USER(self, line: str) -> None:
        if self._may_log_in_anew() and not self._refused_before_login():
            super().ftp_USER(line)

    def ftp_REIN(self, line: str) -> None:
        """RFC 959 5.4 lists 120, 220, 421, 500 and 502 for REIN: 220, the greeting's
        code, as the session is now as a new connection is (pyftpdlib answered 230, "user
        logged in", to the command that logs out).

        RFC 959 4.1.1: REIN also resets "all parameters ... to the default settings"; a new
        USER leaves them as they are (``flush_account``), so they are reset here alone
        (``reset_parameters``)."""
        if self._may_log_in_anew():
            self.flush_account()
            self.reset_parameters()
            self.respond("220 Ready for a new user: send USER.")

    def reset_parameters(self) -> None:
        """REIN: put back what a new connection starts with, which a new USER keeps: TYPE,
        the MLST facts and HASH algorithm of OPTS, EPSV ALL (and REST, which
        ``flush_account`` already dropped)."""
        compat.reset_transfer_parameters(self)
        self.hash_algorithm = type(self).hash_algorithm

    def _may_log_in_anew(self) -> bool:
        """A logged-in session that starts a new login (USER, REIN; RFC 959 allows both,
        vsftpd and proftpd refuse them) is a connection not logged in from here on, as a
        new connection would be (``Gate.log_out``): so it gains nothing over one. True if it
        may go on, else it is told why with 421 and closed."""
        if not self.authenticated:
            return True
        reason = self.stats.log_out(self._ticket)
        if reason is None:
            return True
        self.respond(f"421 {reason}")
        self.close_when_done()
        return False

    _pass_started = 0.0  # time.monotonic() of the last PASS

    def ftp_PASS(self, line: str) -> None:
        if self._refused_before_login():
            return
        self._pass_started = time.monotonic()
        try:
            super().ftp_PASS(line)
        except LoginExpired:
            self.stats.gate.expire(self._ticket)  # 421 from handle_read, as any kick
        except AddressBanned:
            self._refuse_banned()
        except LoginUnavailable as exc:
            log.warning("login as %r not decided: %s", self.username, exc)
            metrics.LOGINS.labels("unavailable").inc()
            self._answer_login_later("421 The login service is unavailable; try again later.",
                                     close=True)
        except LoginRefused as exc:
            log.warning("login as %r refused: %s", self.username, exc)
            metrics.LOGINS.labels("refused").inc()
            self._answer_login_later("530 This account cannot be served; ask the "
                                     "administrator.", close=False)

    def ask_hook(self, hook: AuthHook, request: HookRequest, final: bool) -> Verdict:
        """The auth hook's verdict on this PASS, given up ``auth_hook_timeout`` after it
        (within the login deadline). A no that is ``final`` (no file account to try) is
        counted at once as a wrong password is (``_checked``); ``AddressBanned`` if the
        address was banned while the hook was asked."""
        deadline = min(self._pass_started + self.config.auth_hook.timeout,
                       self._ticket.deadline)
        verdict = hook.ask(request, deadline)
        if self.stats.gate.is_banned(self.gate_client):
            raise AddressBanned
        if verdict.outcome == DENY and final:
            self._banned_now = self.stats.gate.login_failed(self.gate_client)
        return verdict

    def _failure_delay(self) -> float:
        """Seconds before a failed login is answered: ``delay_failed_login``, after the auth
        hook's timeout if there is a hook, so that no failure tells by its time whether the
        user is the file's or the hook's, or whether and how the hook failed."""
        delay = float(self.config.server.delay_failed_login)
        if self.config.auth_hook.enabled:
            delay += max(0.0, self._pass_started + self.config.auth_hook.timeout -
                         time.monotonic())
        return delay

    def _answer_login_later(self, reply: str, close: bool) -> None:
        """Answer a login that failed for another reason than its password as late as a
        wrong password is answered, reading nothing from the client meanwhile and running
        the commands it sent ahead after the answer (as pyftpdlib's delayed 530)."""
        def answer() -> None:
            self.add_channel()
            if not compat.is_closed(self):
                self.respond(reply)
                if close:
                    self.close_when_done()
            self.run_held_commands()

        self.del_channel()
        self.hold_commands(self.ioloop.call_later(self._failure_delay(), answer,
                                                  _errback=self.handle_error))
        self.username = ""

    def check_password(self, check: Callable[[], bool]) -> bool:
        """``check()`` on the worker's password-check threads, waited for until this
        session's login deadline at most (then ``LoginExpired``)."""
        return self.stats.password_checks.run(self.remote_ip, self._ticket.deadline,
                                              functools.partial(self._checked, check))

    _banned_now = False  # this session's failed login got its address banned

    def _checked(self, check: Callable[[], bool]) -> bool:
        """Run on a check thread: ``check()``, and a failure counted at once, before the
        thread takes the next check. ``AddressBanned`` (the ban's 421, no answer) if the
        address was banned before this password's turn (not checked then) or while it was
        checked, right or wrong. Answering every password queued when the ban came gave an
        address as many guesses as it could queue (16 of 16 answered 530, ban after 3) instead
        of ``max_login_failures``; counted by the session thread after the answer, the next
        check started before the failure was counted. Across threads and workers, the checks
        already running when a ban comes still get their answer."""
        gate = self.stats.gate
        if gate.is_banned(self.gate_client):
            raise AddressBanned
        matched = check()
        if gate.is_banned(self.gate_client):
            raise AddressBanned
        if not matched:
            self._banned_now = gate.login_failed(self.gate_client)
        return matched

    def handle_auth_success(self, home: str, password: str, msg_login: str) -> None:
        """Log in only if the gate agrees: not banned or timed out meanwhile, and a free
        place among the logged-in sessions. The login's event is written before the 230."""
        account = self.authorizer.account(self.username)
        reason = self.stats.log_in(self._ticket, account)
        if reason is not None:
            log.warning("login refused: %s", reason)
            self.respond(f"421 {reason}")
            self.close_when_done()
            return
        self.rates = SessionRates(functools.partial(self.stats.account_bucket, account),
                                  account.limits.local_max_rate)
        self.hooks.logged_in(account)
        super().handle_auth_success(home, password, msg_login)

    def handle_auth_failed(self, msg: str, password: str) -> None:
        """The failure was counted server-wide already (``_checked``), not after the delayed
        530: a client that reconnects as soon as it reads the 530 must already find its
        address banned."""
        log.warning("failed login as %r", self.username)
        self._report_login(ok=False)
        named = self.username if self.authorizer.has_user(self.username) else None
        self.hooks.login_failed(self.authorizer.account(named) if named else None)
        if self._banned_now:
            log.warning("banning %s after repeated failed logins", self.remote_ip)
            self.hooks.banned(self.config.server.ban_time)
        self.auth_failed_timeout = self._failure_delay()  # read by pyftpdlib's delayed 530
        [answer] = compat.timers_added(
            self.ioloop, functools.partial(super().handle_auth_failed, msg, password))
        self.hold_commands(answer)  # until on_login_failed

    def on_login(self, username: str) -> None:
        self._report_login(ok=True)
        super().on_login(username)

    def _report_login(self, ok: bool) -> None:
        metrics.LOGINS.labels("ok" if ok else "failed").inc()
        self.oplogs.login(self.username, ok, self.remote_ip)

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

    def closes_after_answer(self) -> bool:
        """See ``HeldCommands``: the failed login that got its address banned closes with
        the ban's 421 after its 530 (``on_login_failed``)."""
        return self._banned_now

    def on_login_failed(self, username: str, password: str) -> None:
        """Called after the delayed 530; a banned address is also disconnected. Then the
        commands sent ahead of the 530 run (``ftp.loginwait``). Nothing is sent to a session
        closed meanwhile (a kick during the delay)."""
        if self._banned_now and not compat.is_closed(self):
            self.respond("421 Too many failed logins; try again later.")
            self.close_when_done()
        self.run_held_commands()

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
        if cmd in NAMING_COMMANDS and args:
            try:
                place = self.fs.room_for(args[0])
                new_name_key(place.path, directory=cmd in ("MKD", "XMKD"), room=place.room,
                             at_bucket_root=place.at_bucket_root)
            except InvalidPath as exc:
                self.respond(f"553 {exc.strerror}.")
                return
        if cmd in TRANSFER_COMMANDS:
            refusal = self.transfer_refusal()
            if refusal is not None:
                self.respond(refusal)
                return
        try:
            super().process_command(cmd, *args, **kwargs)
            if cmd in TRANSFER_COMMANDS:
                self.transfer_command_ran()
        except Unstorable as exc:
            self.respond(f"553 {exc}.")
        except Conflict as exc:
            self.respond(f"450 {exc}.")
        except QuotaExceeded as exc:
            log.warning("path=%s: %s refused: %s", args[0] if args else "-", cmd, exc)
            self.respond(f"552 {exc}; nothing stored.")
        except SpoolError:
            self.respond(NOT_RECORDED)
        except StorageUnavailable as exc:
            log.error("path=%s: %s failed: %s", args[0] if args else "-", cmd, exc.cause)
            self.respond(f"451 Requested action aborted: {exc.cause}; try again.")

    def transfer_refusal(self) -> Optional[str]:
        """Return the reply refusing a transfer command before it opens a file or asks COS
        anything (450 while another transfer is under way, 425 without a trustworthy data
        connection), or None to run it; the data connection is then the command's."""
        if self._transfer_busy():
            return TRANSFER_BUSY
        return self._claim_data_connection()

    def release_data_connection(self) -> None:
        """Close the data connection a refused transfer command would have used, opened or
        coming (the passive listener and what it holds, PORT's connector, an idle data
        channel): the refusal leaves nothing behind, and the next transfer needs a new
        PASV, EPSV, PORT or EPRT."""
        compat.shut_down_connecting(self)
        if self.data_channel is not None:
            self.data_channel.close()

    def _claim_data_connection(self) -> Optional[str]:
        """Return the reply refusing a transfer command for want of a trustworthy data
        connection (see ``passive``), or None to go on."""
        listener = compat.passive_listener(self)
        if isinstance(listener, CosPassiveDTP):
            refusal = listener.claim()
            if refusal is not None:
                compat.forget_passive_listener(self)
            return refusal
        if self.data_channel is None and not compat.connecting_actively(self):
            return NO_DATA_CONNECTION
        return None

    def _make_epasv(self, extmode: bool = False) -> None:
        if not self.new_data_connection():
            return
        local_ip = self.socket.getsockname()[0]
        if not extmode and ":" in local_ip and not local_ip.startswith("::ffff:"):
            self.respond("425 PASV can only announce an IPv4 address; use EPSV.")
            return
        try:
            super()._make_epasv(extmode)
        except PassiveRangeExhausted:
            compat.forget_passive_listener(self)
            log.warning("all passive ports in use")
            self.respond("425 No free passive port; try again shortly.")

    def ftp_STOR(self, file: str, mode: str = "w"):
        """STOR and APPE; after ``REST n``, continue the parked upload or the stored file
        that ends at byte n (``CosFS.open_resume``), or refuse with 554. An upload still
        waiting for its data connection is given up first: pyftpdlib would drop it."""
        self._drop_queued_transfers()
        offset = compat.take_restart_position(self)
        refusal = self.hooks.check_upload(file, offset, "a" in mode, self.fs.announced)
        if refusal is not None:
            self.respond(refusal)
            return None
        if not offset or "a" in mode:
            return super().ftp_STOR(file, mode)
        upload = self._open_at(self.fs.open_resume, file, offset)
        if upload is None:
            return None
        # What pyftpdlib's ftp_STOR does once its file is open.
        if self.data_channel is not None:
            self.respond("125 Data connection already open. Transfer starting.")
            self.data_channel.file_obj = upload
            self.data_channel.enable_receiving(compat.transfer_type(self), "STOR")
        else:
            self.respond("150 File status okay. About to open data connection.")
            compat.queue_transfer(self, upload, "STOR")
        return file

    def ftp_APPE(self, file: str):
        """APPE after REST is refused, as pyftpdlib does, and uses the REST up as any
        transfer command does: pyftpdlib kept it, and the session's next STOR became a
        resume at that offset (554 for a new file)."""
        if compat.take_restart_position(self):
            self.respond("450 Can't APPE while REST request is pending.")
            return None
        return self.ftp_STOR(file, mode="a")

    def ftp_RETR(self, file: str):
        """RETR in one GET, from the offset REST set (``CosFS.open_download``): its answer
        carries what a HEAD would have told (size, ETag). 554 for an offset past the end, as
        pyftpdlib answers; 550 for a directory or nothing there."""
        self._drop_queued_transfers()
        reader = self._open_at(self.fs.open_download, file,
                               compat.take_restart_position(self))
        if reader is None:
            return None
        producer = compat.FileProducer(reader, compat.transfer_type(self))
        self.push_dtp_data(producer, isproducer=True, file=reader, cmd="RETR")
        return file

    def _open_at(self, open_file, file: str, offset: int):
        """``open_file(file, offset)``, or None once the refusal is answered: 554 for an
        offset REST cannot go to (in TYPE A too: REST is refused there, but a TYPE A after
        it resumed at a byte offset the client counted on converted line ends, as vsftpd
        refuses), 550 otherwise."""
        if offset and compat.transfer_type(self) == "a":
            self.respond("554 Cannot resume in ASCII mode (TYPE A); send TYPE I, then REST.")
            return None
        try:
            return self.run_as_current_user(open_file, file, offset)
        except ResumeRefused as exc:
            self.respond(f"554 {exc.strerror}.")
        except (OSError, FilesystemError) as exc:
            self.respond(f"550 {strerror(exc)}.")
        return None

    def ftp_EPSV(self, line: str) -> None:
        """RFC 2428: ``EPSV ALL`` is answered 200 (pyftpdlib answered 220, the greeting's
        code), and a network protocol this connection cannot use 522 with the ones it can."""
        protocol = line.strip().upper()
        if protocol == "ALL":
            compat.set_epsv_only(self)
            self.respond("200 EPSV ALL ok: data connections are set up with EPSV only.")
        elif not self._protocol_refused(protocol, extended_passive=True):
            super().ftp_EPSV(line)

    def ftp_EPRT(self, line: str) -> None:
        """A network protocol this connection cannot use: 522 with the ones it can."""
        fields = line.split(line[0]) if line else []
        if len(fields) == 5 and not compat.epsv_only(self) and \
                self._protocol_refused(fields[1], extended_passive=False):
            return
        super().ftp_EPRT(line)

    def _protocol_refused(self, protocol: str, extended_passive: bool) -> bool:
        """Answer 522 and return True if RFC 2428's network ``protocol`` (1: IPv4, 2:
        IPv6) is one data connections of this session cannot use; the reply lists those
        they can, in the RFC's form ("use (1)"), which clients parse. Anything else than
        a number is left to pyftpdlib (501)."""
        usable = ["2" if self.socket.family == socket.AF_INET6 else "1"]
        if not extended_passive and usable == ["2"] and socket.has_dualstack_ipv6():
            usable.insert(0, "1")  # EPRT to an IPv4 address over an IPv6 connection
        if not protocol.isdigit() or protocol in usable:
            return False
        self.respond(f"522 Network protocol not supported, use ({','.join(usable)}).")
        return True

    def _make_eport(self, ip: str, port: int) -> None:
        """EPRT may spell an IPv6 address in any of its forms: compare the canonical one."""
        if not self.new_data_connection():
            return
        with contextlib.suppress(ValueError):
            address = ipaddress.ip_address(ip)
            if address.version == 6 and address.ipv4_mapped is None:
                ip = str(address)
        super()._make_eport(ip, port)

    def flush_account(self) -> None:
        """REIN and a new USER: forget the login and what it had pending (pyftpdlib: the
        user, REST, RNFR, an idle data connection), and also give up a transfer still
        waiting for its data connection (its final reply, 425, before the new login's), an
        account the auth hook gave, its rates, and what the old login's filesystem keeps
        (``CosFS.end``; ALLO's size goes with it).

        TYPE is kept, which pyftpdlib reset: RFC 959 4.1.1 says of a new USER "All transfer
        parameters are unchanged"; REIN resets it (``reset_parameters``)."""
        self._drop_queued_transfers(answer=LOGIN_ANEW)
        vars(self).pop("authorizer", None)
        self.rates = None
        if self.fs is not None:
            self.fs.end()
        kept = compat.transfer_type(self)
        super().flush_account()
        compat.set_transfer_type(self, kept)

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

    def ftp_ALLO(self, line: str) -> None:
        """``ALLO size``: the next upload's parts are sized for ``size`` bytes; a size over
        ``single_file_max_size`` is refused at once (552) rather than after the transfer."""
        size = line.split()[0] if line.split() else ""
        if not size.isdigit():
            self.respond("501 Syntax: ALLO <SP> bytes.")
            return
        limit = self.config.transfer.single_file_max_size
        if int(size) > limit:
            self.respond(f"552 Files are limited to {limit} bytes (single_file_max_size).")
            return
        self.fs.announce(int(size))
        self.respond("200 ALLO accepted: uploads stream, no storage to allocate.")

    def ftp_SITE_QUOTA(self, line: str) -> None:
        """The usage and limits of the quotas this account's writes count against."""
        try:
            lines = describe(self.fs.quotas())
        except StorageError as exc:
            raise StorageUnavailable(exc) from exc
        self.respond("\r\n".join(["200-Quota:", *(f" {line}" for line in lines), "200 End."]))

    def ftp_STOU(self, line: str):
        self.respond("502 STOU is not supported by this server.")


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
