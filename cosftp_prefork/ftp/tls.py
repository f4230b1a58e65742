"""FTPS: the TLS variants of the COS control and data handlers, explicit and implicit.

pyftpdlib's ``TLS_FTPHandler`` / ``TLS_DTPHandler`` bring AUTH, PBSZ, PROT and the TLS
plumbing, ours bring COS. Ours come first in the MRO, so their ``super()`` calls go through
pyftpdlib's TLS classes on their way to ``FTPHandler`` / ``DTPHandler``.

pyftpdlib's ``tls_control_required`` / ``tls_data_required`` hold for every user of a
handler class and are checked before anyone logged in; ``tls_required`` is per account, so
the policy is enforced here once the account is known: from USER on.
"""

from __future__ import annotations

import logging
import sys
from typing import Optional

from OpenSSL import SSL
from pyftpdlib.handlers import DTPHandler, FTPHandler, TLS_DTPHandler, TLS_FTPHandler

from ..config.model import Config
from ..config.tls import ServerTLS
from ..cos.engine import Engine
from ..cos.registry import BucketRegistry
from . import compat
from .datachannel import CosDTPHandler
from .handler import CosFTPHandler, configure_handler
from .heldtickets import TLS_1_3, HeldTicketsConnection
from .hooks import WorkerHooks

log = logging.getLogger(__name__)

REFUSE_PLAIN_LOGIN = "530 TLS is required: send AUTH TLS before USER."
REFUSE_CLEAR_DATA = "522 This account requires protected data connections: send PROT P first."
REFUSE_PROT_C = "534 This account may not use clear data connections."
# vsftpd's words for force_local_data_ssl, which operators and their clients know; lftp
# reads a 522 to a transfer command under PROT C as "send PROT P and try again".
REFUSE_CLEAR_TRANSFER = "522 Data connections must be encrypted: use FTPS (AUTH TLS) and PROT P."
HANDSHAKE_CUT_SHORT = ("426 The data connection closed before its TLS handshake was done; "
                       "transfer aborted.")
BROKEN_DATA_TLS = "426 The TLS data connection broke; transfer aborted."
# RFC 4217 10.2: a data connection that cannot negotiate TLS is answered 522.
FAILED_DATA_HANDSHAKE = "522 The TLS handshake of the data connection failed; transfer aborted."
# OpenSSL's reason when the ClientHello offers no version the context allows.
NO_SHARED_VERSION_REASON = "unsupported protocol"
# What pyftpdlib's AUTH takes (RFC 4217: TLS and SSL negotiate alike).
AUTH_MECHANISMS = ("TLS", "TLS-C", "SSL", "TLS-P")
# Those that protect the data connections too, as if PBSZ 0 and PROT P came: the drafts
# before RFC 4217 (TLS-P: "protected"; SSL, the oldest), and vsftpd and proftpd to this day.
PROTECTING_MECHANISMS = ("SSL", "TLS-P")
# CCC (RFC 2228, RFC 4217) would put every later command in clear text, open to forging by
# anything on the path; refused as policy, with proftpd's codes (533 on a clear connection,
# 534 under its TLSRequired). vsftpd answers 500, SFTPGo 502.
REFUSE_CCC_ON_CLEAR = "533 CCC needs a TLS control connection; this one is not encrypted."
REFUSE_CCC = ("534 CCC refused: the control connection stays encrypted (commands in clear "
              "text could be forged on the way).")
REFUSE_FRESH_SESSION = ("522 The data connection must resume the TLS session of the control "
                        "connection (require_ssl_reuse); transfer aborted.")


def broken_tls(error: Optional[BaseException]) -> Optional[str]:
    """What broke, if ``error`` is OpenSSL failing on what the peer sent (a record that does
    not decrypt, an alert): OpenSSL's own reasons, never the peer's bytes. None otherwise."""
    if not isinstance(error, SSL.Error):
        return None
    reasons = [entry[2] for entry in (error.args[0] if error.args else ())
               if isinstance(entry, tuple) and len(entry) == 3 and entry[2]]
    return ", ".join(reasons) or "TLS error"


class _TLSData(TLS_DTPHandler):
    """pyftpdlib's TLS data channel with two fixes for transfers that fail."""

    def handle_error(self) -> None:
        """Reply 426 and close through every ``close()`` of the class.

        pyftpdlib's TLS mixin logs the error and calls ``DTPHandler.close`` directly: no
        reply, and the subclasses' ``close()`` (our counters) never runs. A connection the
        client's side broke (bytes that are no TLS record) is no server fault: one warning
        line and a 426 that says so, where pyftpdlib logged an "unhandled exception" with
        its traceback and answered "426 Internal error". A broken upload is parked.
        """
        compat.skip_tls_shutdown(self)  # a connection that failed gets no TLS shutdown
        reason = broken_tls(sys.exc_info()[1])
        if reason is None:
            DTPHandler.handle_error(self)
            return
        log.warning("path=%s: the TLS data connection broke: %s; the transfer is not "
                    "complete", getattr(self.file_obj, "name", "-"), reason)
        compat.set_close_reply(self, BROKEN_DATA_TLS, log.debug)
        self.close()

    def handle_failed_ssl_handshake(self) -> None:
        """Reply 522 once, as the transfer's final reply, and log OpenSSL's reason.

        pyftpdlib sent its 522 on the control connection itself and then closed, and
        ``close()`` found the handshake pending with no reply set and sent a 426 as well:
        two final replies to one command, the second read as the next command's.
        """
        compat.skip_tls_shutdown(self)
        reason = broken_tls(sys.exc_info()[1]) or "TLS error"
        log.warning("path=%s: the TLS handshake of a data connection failed: %s",
                    getattr(self.file_obj, "name", "-"), reason)
        self.transfer_finished = False
        compat.set_close_reply(self, FAILED_DATA_HANDSHAKE, log.debug)
        self.close()

    def close(self) -> None:
        # A transfer that did not finish is closed at once, without a TLS shutdown that
        # could take more IO turns: during those, a hang-up would make pyftpdlib's
        # handle_close() declare the transfer finished and send a second reply.
        if not self.transfer_finished:
            compat.skip_tls_shutdown(self)
        super().close()


class CosTLSDTPHandler(CosDTPHandler, _TLSData):
    """Data channel of a TLS session: encrypted once the client sent PROT P, and committing
    uploads exactly as ``CosDTPHandler`` does."""

    _close_started = False

    def secure_connection(self, ssl_context: SSL.Context) -> None:
        """Use the data connections' context (``server_contexts``), through a connection
        that keeps TLS 1.3 session tickets off the wire until the server writes again
        (``HeldTicketsConnection``): an uploading client would close on them unread."""
        raw = self.socket
        super().secure_connection(self.cmd_channel.data_ssl_context)
        if compat.tls_handshake_pending(self):  # else closed: the client is already gone
            self.socket = HeldTicketsConnection(self.cmd_channel.data_ssl_context, raw)

    def send(self, data) -> int:
        """Write nothing before ``handle_ssl_established`` has seen the handshake: OpenSSL
        finishes a pending handshake inside SSL_write and sends the data right after, so a
        RETR could leave before the session was checked."""
        if compat.tls_handshake_pending(self):
            return 0
        return super().send(data)

    def handle_read_event(self) -> None:
        """Read on while the TLS layer holds input no readiness event announces.

        One read of the socket brings many records (``HeldTicketsConnection``), and one
        ``recv`` returns what the upload can take (``UploadPacing``): the rest, or the
        client's closing alert met after its last bytes, would wait in memory for an event
        that may never come (a client that waits for the server's closing alert sends
        nothing more)."""
        super().handle_read_event()
        while self._input_held():
            before = self.tot_bytes_received
            super().handle_read_event()
            if self.tot_bytes_received == before:
                break  # nothing read: the channel closes (a refusal, its TLS shutdown)

    def _resume_reading(self) -> None:
        """An upload held back (``UploadPacing``) reads again: at once if the TLS layer holds
        input, which no readiness event would announce."""
        super()._resume_reading()
        if self._input_held():
            self.handle_read_event()

    def _more_coming(self) -> bool:
        """Input the TLS layer holds counts as more, as the closing alert still in the
        socket does (``UploadPacing``): the socket alone may show only the client's end."""
        return self._tls_holds_input() or super()._more_coming()

    def _input_held(self) -> bool:
        """True if an upload that may read now has input in its TLS layer's memory."""
        return self.receive and not self._held_back and not compat.is_closed(self) and \
            self._tls_holds_input()

    def _tls_holds_input(self) -> bool:
        return isinstance(self.socket, HeldTicketsConnection) and self.socket.input_held()

    def modify_ioloop_events(self, events: int, logdebug: bool = False) -> None:
        """Watch for reading only while the TLS handshake waits for the client's bytes.

        pyftpdlib adds reading to the events the channel wants, and a download wants to
        write from the start: its socket, always writable, woke the session's IO loop at
        once, each turn a handshake attempt that wanted to read, until the client spoke (a
        core spinning for the client's round trip). The events it wants are asked for again
        once the handshake is done (pyftpdlib's ``_handle_ssl_want_rw``)."""
        if compat.tls_handshake_awaits_peer(self):
            events = self.ioloop.READ
        super().modify_ioloop_events(events, logdebug)

    def handle_ssl_established(self) -> None:
        """Under ``require_ssl_reuse``, end a data connection that did not resume the
        control connection's session: another program on the client's address (or a
        client that cannot reuse sessions) made it.

        The context is the control connection's own (``session_context``). In TLS 1.3 a
        resumed handshake (``tlsresume``) proves it: only that context decrypts the tickets
        it issued, and only connections that proved themselves received any (a refused
        one is closed with its tickets held back: ``HeldTicketsConnection``). In TLS 1.2 a
        refused full handshake has already left its session in the context's cache and a
        ticket with the client, so resuming is not enough there: a resumed TLS 1.2 session
        keeps its master secret, which must be the control connection's."""
        super().handle_ssl_established()
        if not self.cmd_channel.config.network.tls.require_reuse:
            return
        version = self.socket.get_protocol_version_name()
        if version == TLS_1_3:
            if self.socket.session_reused():
                return
        elif self.socket.master_key() == self.cmd_channel.socket.master_key():
            return
        log.warning("refused a TLS data connection that does not resume the control "
                    "connection's session (require_ssl_reuse, %s)", version)
        self.transfer_finished = False
        compat.set_close_reply(self, REFUSE_FRESH_SESSION, log.debug)
        self.close()

    def close(self) -> None:
        """Decide commit or abort and count the transfer once, at the first call.

        After a finished transfer the TLS shutdown may still be under way when close() is
        called again (the session ends, the client hangs up): just release the connection.
        """
        if self._close_started:
            DTPHandler.close(self)
            return
        self._close_started = True
        if compat.tls_handshake_pending(self) and self.cmd is not None and \
                not self.cmd_channel.abort_answers and not compat.close_reply(self) and \
                not compat.is_closed(self.cmd_channel):
            # Ended before its handshake was done (the client closed it), the transfer's
            # 125 already sent: pyftpdlib closes it without a reply, and the client would
            # wait for one. ABOR is answered by pyftpdlib itself.
            compat.set_close_reply(self, HANDSHAKE_CUT_SHORT, log.info)
        super().close()


class _TLSControl(TLS_FTPHandler):
    def handle_error(self) -> None:
        """Log and close through every ``close()`` of the class.

        pyftpdlib's TLS mixin calls ``FTPHandler.close`` directly, so the subclasses'
        ``close()`` (ours releases the session's place in the server-wide limits) never runs.
        A connection the client's side broke is logged in one line (see ``_TLSData``).
        """
        compat.skip_tls_shutdown(self)  # a connection that failed gets no TLS shutdown
        reason = broken_tls(sys.exc_info()[1])
        if reason is None:
            FTPHandler.handle_error(self)
            return
        log.warning("the TLS control connection broke: %s; closing the session", reason)
        self.close()

    def handle_failed_ssl_handshake(self) -> None:
        """Log OpenSSL's reason, and when the client offered no TLS version control
        connections take, which ones they take; then close (no reply can be sent: the
        client expects TLS). pyftpdlib logged only "SSL handshake failed."."""
        compat.skip_tls_shutdown(self)
        reason = broken_tls(sys.exc_info()[1]) or "TLS error"
        if NO_SHARED_VERSION_REASON in reason:
            reason = f"{reason}: the client offers no TLS version control connections take " \
                     "(TLS 1.2 and 1.3)"
        # INFO, as pyftpdlib's line: anyone can fail a handshake before logging in.
        log.info("the TLS handshake of a control connection failed: %s", reason)
        self.close()


class CosTLSFTPHandler(CosFTPHandler, _TLSControl):
    """Control channel accepting AUTH TLS, enforcing each account's ``tls_required`` and
    the server's ``force_local_logins_ssl`` and ``force_local_data_ssl``."""

    dtp_handler = CosTLSDTPHandler
    # Merged, not inherited: CosFTPHandler's own table (HASH, XCRC…) would hide AUTH,
    # PBSZ and PROT, which only pyftpdlib's TLS handler lists.
    proto_cmds = {**TLS_FTPHandler.proto_cmds, **CosFTPHandler.proto_cmds,
                  # Known, so HELP explains it, and refused (``ftp_CCC``); FEAT omits it.
                  "CCC": {"perm": None, "auth": False, "arg": False,
                          "help": "Syntax: CCC (refused: the control connection stays "
                                  "encrypted)."}}

    # Set per worker by ``configure_tls_handlers``: see ``server_contexts``.
    ssl_context: SSL.Context
    data_ssl_context: SSL.Context
    # (PBSZ came, PROT P) of a connection once encrypted, before any PBSZ or PROT: on the
    # FTP port, clear data until the client asks (RFC 4217); ``ImplicitTLS`` and AUTH SSL
    # or TLS-P (``ftp_AUTH``) change it.
    protection_at_start: tuple[bool, bool] = (False, False)

    @classmethod
    def get_ssl_context(cls) -> SSL.Context:
        """Return the control connections' context, built when the worker started."""
        return cls.ssl_context

    def secure_connection(self, ssl_context: SSL.Context) -> None:
        """Start TLS on the control connection (AUTH, or the implicit port's greeting).

        Under ``require_ssl_reuse`` with a context of its own, which its data connections
        take too (``session_context``), in place of the worker's ``ssl_context``."""
        tls = self.config.network.tls
        if tls.require_reuse:
            ssl_context = self.ssl_context = self.data_ssl_context = session_context(tls)
        super().secure_connection(ssl_context)

    def process_command(self, cmd: str, *args, **kwargs) -> None:
        """Refuse what the account's ``tls_required`` forbids, else run the command."""
        arg = args[0] if args else ""
        refusal = self._tls_refusal(cmd, arg)
        if refusal is not None:
            log.warning("%s %s refused: %s", cmd,
                        arg if cmd in ("USER", "PROT") else "", refusal[4:])
            self.respond(refusal)
            return
        super().process_command(cmd, *args, **kwargs)

    def transfer_refusal(self) -> Optional[str]:
        """Refuse a transfer or listing without PROT P with 522 at the transfer command, of
        a ``tls_required`` account, and under ``force_local_data_ssl`` of any login but an
        anonymous one, as vsftpd does: the data connection it already opened is closed
        unread, no file is opened and COS is not asked. Refused at PASV, lftp would not know
        to send PROT P (it does on a 522 to RETR, STOR or LIST), curl would report a bad
        PASV reply. A transfer under way is answered 450 first
        (``CosFTPHandler.transfer_refusal``): its connection is its own."""
        refusal = None
        if not self._transfer_busy() and not compat.data_protected(self):
            refusal = self._clear_data_refusal()
        if refusal is None:
            return super().transfer_refusal()
        self.release_data_connection()
        log.warning("transfer refused: %s", refusal[4:])
        return refusal

    def _clear_data_refusal(self) -> Optional[str]:
        """The 522 a clear data connection of this login gets, or None if it may have one."""
        account = self.authorizer.account(self.username)
        if account.tls_required:
            return REFUSE_CLEAR_DATA
        if self.config.network.tls.force_data and not account.anonymous_enable:
            return REFUSE_CLEAR_TRANSFER
        return None

    def flush_account(self) -> None:
        """A new USER keeps PBSZ and PROT, which pyftpdlib reset: they are the connection's
        security state, not the login's. RFC 2228 ties them the other way round (a new AUTH
        resets the security state, then USER must come again), and some clients send PBSZ
        and PROT before USER (IBM's z/OS client, PHP's, FlashFXP); the new login gets the
        protection its client asked for, where pyftpdlib went back to clear data connections
        the client did not expect. REIN resets them (``reset_parameters``)."""
        kept = compat.protection_state(self)
        super().flush_account()
        compat.restore_protection(self, kept)

    def reset_parameters(self) -> None:
        """REIN: PBSZ and PROT go back to what a new connection on this port has
        (``protection_at_start``); the control connection stays encrypted (going back to
        clear text would put the next USER and PASS on the wire), so the session is as right
        after AUTH TLS, or as right after the handshake on the implicit port."""
        super().reset_parameters()
        compat.restore_protection(self, self.protection_at_start)

    def ftp_AUTH(self, line: str) -> None:
        """RFC 2228: a security mechanism the server does not know is 504 (pyftpdlib
        answered 502, which says AUTH itself is not implemented).

        AUTH SSL and AUTH TLS-P also set PBSZ 0 and PROT P, for this connection's life
        (REIN goes back to them): a client of the older drafts sends no PROT after them and
        encrypts its data connections, which vsftpd and proftpd serve; clients that send
        PROT anyway (curl tries AUTH SSL first) get what they ask for.

        What the client sent in clear text after AUTH, in the same read, is dropped: anything
        on the path could have added it, and run inside the TLS session it would be taken
        for the client's (plain-text command injection, CVE-2011-0411)."""
        mechanism = line.strip().upper()
        if not compat.tls_established(self) and mechanism not in AUTH_MECHANISMS:
            self.respond("504 Unknown security mechanism: use AUTH TLS.")
            return
        super().ftp_AUTH(line)
        if compat.tls_handshake_pending(self):
            injected = compat.take_unread_input(self)
            if injected:
                log.warning("%d bytes sent in clear text with AUTH TLS, dropped: they may not "
                            "be the client's", len(injected))
        if mechanism in PROTECTING_MECHANISMS and compat.tls_handshake_pending(self):
            self.protection_at_start = (True, True)  # this session's, for REIN too
            compat.restore_protection(self, self.protection_at_start)

    def ftp_CCC(self, line: str) -> None:
        """Refuse to clear the control connection: 533 when it is not encrypted, else 534.

        Cleared, it would carry every later command in clear text, which anything on the path
        could then forge (a DELE, an RNTO) in the logged-in session; what CCC is for, letting
        a NAT helper read PASV replies, ``masquerade_address`` and ``passive_port`` do here.
        Clients asking for it (curl ``--ftp-ssl-ccc``, lftp ``ftp:ssl-use-ccc``) go on over
        TLS after the refusal."""
        if not compat.tls_established(self):
            self.respond(REFUSE_CCC_ON_CLEAR)
            return
        log.info("CCC refused: the control connection stays encrypted")
        self.respond(REFUSE_CCC)

    def ftp_PROT(self, line: str) -> None:
        """RFC 2228: a level the mechanism lacks (TLS has no S or E) is 536, an unknown
        level 504 (pyftpdlib answered 521 and 502, which RFC 2228 does not list for PROT)."""
        level = line.strip().upper()
        if level in ("C", "P") or not compat.protection_negotiated(self):
            super().ftp_PROT(line)
        elif level in ("S", "E"):
            self.respond(f"536 PROT {level} is not supported by TLS: use PROT P.")
        else:
            self.respond("504 Unknown protection level: use PROT P.")

    def _tls_refusal(self, cmd: str, arg: str) -> Optional[str]:
        """Return the reply refusing ``cmd`` under ``force_local_logins_ssl`` or the
        account's ``tls_required``, or None to run it.

        A USER without TLS is refused before the password can follow it in clear text. Under
        ``force_local_logins_ssl`` every name gets that one reply but an ``anonymous_enable``
        account's (its password is no secret: vsftpd's option spares anonymous too); a
        ``tls_required`` account alone gets it where other names (existing or not) get 331,
        which tells a scanner that the name exists (docs/security.md, "FTPS")."""
        if cmd == "USER":
            if compat.tls_established(self) or not (
                    self._needs_tls(arg) or self._forced_to_tls(arg)):
                return None
            return REFUSE_PLAIN_LOGIN
        if not self._needs_tls(self.username):
            return None
        if cmd == "PROT" and arg.upper() == "C":
            return REFUSE_PROT_C
        return None

    def _needs_tls(self, user: str) -> bool:
        """True if ``user`` is a file account with ``tls_required``."""
        return self.authorizer.has_user(user) and self.authorizer.account(user).tls_required

    def _forced_to_tls(self, user: str) -> bool:
        """True if ``force_local_logins_ssl`` holds for ``user``: anyone but an anonymous
        account."""
        if not self.config.network.tls.force_logins:
            return False
        return not (self.authorizer.has_user(user) and
                    self.authorizer.account(user).anonymous_enable)


class ImplicitTLS:
    """Implicit FTPS: the client starts TLS on connecting; there is no AUTH command.

    The connection is counted (``admission``) before its handshake starts, and its login
    deadline covers the handshake: a stalled ClientHello is cut at ``login_timeout``.

    Its data connections are encrypted from the start, as if the client had sent PBSZ 0
    and PROT P: MS-FTPS (3.2.5.1) tells the server to assume both and the client not to
    send them, and proftpd (``UseImplicitSSL``) and IIS do so. A client that wants clear
    data sends PROT C, which needs no PBSZ here (curl ``--ftp-ssl-control``, lftp
    ``ftp:ssl-protect-data no``). vsftpd (``implicit_ssl``) starts at PROT C: a client that
    counted on that and sends no PROT gets an encrypted data connection here
    (docs/security.md).
    """

    protection_at_start = (True, True)

    def greet(self) -> None:
        """Start the TLS handshake before the greeting, which is then sent encrypted (after
        the PROXY header, if one is expected)."""
        compat.restore_protection(self, self.protection_at_start)
        self.secure_connection(self.ssl_context)
        if not compat.is_closed(self):  # secure_connection() closes if the client is already gone
            super().greet()

    def refuse(self, reason: str) -> None:
        """Close at once: a 421 could only be sent after a TLS handshake, which the client
        could stall for as long as the idle timeout, and nothing may be said in clear text
        on this port (the gate logged the refusal, once per burst)."""
        self.close()

    def handle_ssl_established(self) -> None:
        """Send the greeting queued before the handshake.

        pyftpdlib only sends queued output when more is queued: the session thread watches
        the socket for reading alone once the handshake is done, so nothing else would.
        """
        self.initiate_send()


def configure_tls_handlers(config: Config, buckets: BucketRegistry,
                           engine: Engine, retrier, stats,
                           masquerade_ip: Optional[str],
                           worker_hooks: WorkerHooks) -> tuple[type, type]:
    """Return the handler classes for the FTP port (plain and AUTH TLS) and for the implicit
    FTPS port; the arguments are ``configure_handler``'s and ``config.network.tls`` is set."""
    explicit = configure_handler(config, buckets, engine, retrier, stats, masquerade_ip,
                                 worker_hooks, base=CosTLSFTPHandler)
    explicit.ssl_context, explicit.data_ssl_context = server_contexts(config.network.tls)
    implicit = type("BoundCosImplicitTLSFTPHandler", (ImplicitTLS, explicit), {})
    return explicit, implicit


def server_contexts(tls: ServerTLS) -> tuple[SSL.Context, SSL.Context]:
    """Return the OpenSSL contexts of control and data connections for ``tls`` (checked
    when the configuration was loaded); built in each worker, after fork. Both take TLS 1.2
    and up; a data connection's TLS 1.3 session tickets wait until the server writes on it
    (``HeldTicketsConnection``). Under ``require_reuse`` each control connection takes a
    ``session_context`` of its own instead."""
    return _context(tls), _context(tls)


# How long a session of a ``session_context`` may be resumed, in seconds. A control
# connection has no longest life (``idle_session_timeout`` counts from its last command, a
# transfer keeps it open, and nothing else closes it), and under ``require_reuse`` each of its
# data connections must resume its session: with OpenSSL's default of 7200 s, a client that
# resumes only the control connection's TLS 1.2 session had every data connection refused
# (522) from the control connection's third hour on. The context lives and dies with its
# control connection, so a session that does not expire in it outlives nothing. 2**31 - 1
# (68 years) fits every field OpenSSL puts it in: a TLS 1.2 ticket's 32-bit lifetime hint
# (TLS 1.3 caps its hint at 7 days) and its time in nanoseconds.
SESSION_LIFETIME = 2**31 - 1


def session_context(tls: ServerTLS) -> SSL.Context:
    """Return a new context for one control connection and its data connections, under
    ``require_reuse``.

    OpenSSL gives each context a session ticket key and a session cache of its own, so a
    data connection can resume no session but one of this control connection; in one
    shared by the worker's sessions, a TLS 1.3 ticket of any of them would resume
    (measured: another control connection's ticket was served). Built in 0.2 ms, measured,
    where a handshake takes several.

    Its sessions expire after ``SESSION_LIFETIME``, not OpenSSL's default of 7200 s: see
    there."""
    context = _context(tls)
    context.set_timeout(SESSION_LIFETIME)
    return context


def _context(tls: ServerTLS) -> SSL.Context:
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(SSL.OP_NO_COMPRESSION)
    context.use_certificate(tls.certificate)
    for intermediate in tls.chain[1:]:
        context.add_extra_chain_cert(intermediate)
    context.use_privatekey(tls.key)
    context.check_privatekey()
    return context
