"""A login that fails: its password checked on the worker's check threads and the failure
counted at once, the auth hook asked within the login deadline, and the answer (530, or 421
for a ban or an unavailable login service) given as late as every failure is answered."""

from __future__ import annotations

import functools
import logging
import time
from typing import Callable

from .. import metrics
from . import compat
from .authhook import DENY, AuthHook, HookRequest, Verdict
from .logins import AddressBanned

log = logging.getLogger(__name__)


class LoginFailures:
    """Mixin for the control handler, before ``HeldCommands`` (which holds the commands
    sent ahead of a late answer): see the module docstring."""

    def _refuse_banned(self) -> None:
        self.stats.gate.refusals.note(self.remote_ip, "login refused: the address is banned")
        metrics.LOGINS.labels("banned").inc()
        self.respond(f"421 {self.stats.gate.BANNED}")
        self.close_when_done()

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
