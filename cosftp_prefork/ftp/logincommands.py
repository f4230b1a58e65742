"""USER, PASS and REIN of the control handler: who is refused before a password is read, a
login that succeeds, and what a new login forgets (its failures: ``ftp.loginfailures``)."""

from __future__ import annotations

import functools
import logging
import time

from .. import metrics
from . import compat
from .authorizer import LoginRefused, LoginUnavailable
from .lifecycle import LOGIN_ANEW
from .logins import AddressBanned, LoginExpired
from .throttle import SessionRates

log = logging.getLogger(__name__)


class LoginCommands:
    """Mixin for the control handler, before ``ClientDialect`` (whose ``ftp_USER``,
    ``on_login`` and ``flush_account`` it calls through ``super()``): see the module
    docstring."""

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

    def on_login(self, username: str) -> None:
        self._report_login(ok=True)
        super().on_login(username)

    def _report_login(self, ok: bool) -> None:
        metrics.LOGINS.labels("ok" if ok else "failed").inc()
        self.oplogs.login(self.username, ok, self.remote_ip)

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
