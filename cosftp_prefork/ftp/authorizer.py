"""The authorizer of COS-backed sessions: who may log in (the file's accounts, an auth
hook's answers), with which password check, and what each account may do."""

from __future__ import annotations

import copy
import functools
import logging
from collections import ChainMap
from collections.abc import Mapping
from typing import Optional

from pyftpdlib.exceptions import AuthenticationFailed

from ..config.model import AccountConfig, Config
from ..config.passwords import PasswordChecker
from . import compat
from .authhook import ALLOW, DENY, INVALID, AuthHook, HookRequest
from .mounts import mount_table, perms_for

log = logging.getLogger(__name__)


class LoginUnavailable(Exception):
    """The auth hook gave no answer in time (down, slow, busy): the client is told to try
    later (421); not a failed login, so not counted towards a ban."""


class LoginRefused(Exception):
    """The password may be right but the login cannot be served (the auth hook's account is
    unusable, or needs TLS): 530, logged with the reason, not counted towards a ban."""


class CosAuthorizer:
    """Authenticates the accounts of one config, and through the auth hook the users it
    knows; the pyftpdlib authorizer interface."""

    def __init__(self, config: Config) -> None:
        self._accounts: Mapping[str, AccountConfig] = {
            account.user: account for account in config.accounts}
        self._checker = PasswordChecker(account.password for account in config.accounts)
        self._hook_first = config.auth_hook.order == "hook_first"

    def bound_to(self, account: AccountConfig) -> CosAuthorizer:
        """This authorizer for one session logged in through the auth hook: ``account``
        under its user name, the file's accounts under the others."""
        bound = copy.copy(self)
        bound._accounts = ChainMap({account.user: account}, self._accounts)
        return bound

    def account(self, username: str) -> AccountConfig:
        return self._accounts[username]

    def validate_authentication(self, username: str, password: str, handler) -> None:
        """Raise ``AuthenticationFailed`` unless the pair matches (constant-time compare,
        the same cost for unknown users and plain-text accounts; an ``anonymous_enable``
        account takes any password).

        The check runs on the worker's password-check threads (``handler.check_password``);
        ``LoginExpired`` if the session's login deadline came before its turn. With an auth
        hook, users not in the file (all users first, with ``auth_hook_order = hook_first``)
        are the hook's to decide: ``LoginUnavailable`` or ``LoginRefused`` when it cannot.
        """
        account = self._accounts.get(username)
        if account is not None and account.anonymous_enable:
            self._from_allowed_address(account, handler)
            return
        hook = handler.stats.auth_hook
        if hook is not None and (account is None or self._hook_first) and \
                self._hook_lets_in(hook, username, password, handler, account is not None):
            self._from_allowed_address(handler.authorizer.account(username), handler)
            return
        if not handler.check_password(functools.partial(self._verify, account, password)):
            raise AuthenticationFailed("Authentication failed.")
        self._from_allowed_address(account, handler)

    @staticmethod
    def _from_allowed_address(account: AccountConfig, handler) -> None:
        """Raise ``AuthenticationFailed`` if the account's ``allowed_ips``/``denied_ips``
        refuse the client's address: the reply of a wrong password, after the same check,
        so that the client learns nothing of the account."""
        if not account.limits.admits(handler.remote_ip):
            log.warning("login as [%s] refused: the address is not allowed by its "
                        "allowed_ips/denied_ips", account.section)
            raise AuthenticationFailed("Authentication failed.")

    def _hook_lets_in(self, hook: AuthHook, username: str, password: str, handler,
                      in_file: bool) -> bool:
        """Ask the hook: True if it let the user in (the session is bound to its account),
        False if the file's account decides (``in_file``, the hook said anything else);
        otherwise raise why the login fails."""
        request = HookRequest(username, password, handler.remote_ip,
                              compat.tls_established(handler))
        verdict = handler.ask_hook(hook, request, final=not in_file)
        if verdict.outcome == ALLOW:
            if verdict.account.tls_required and not request.tls:
                raise LoginRefused("the auth hook's account requires TLS (tls_required)")
            handler.authorizer = self.bound_to(verdict.account)
            return True
        if in_file:
            if verdict.outcome != DENY:
                log.warning("auth hook: %s; the file's account decides", verdict.reason)
            return False
        if verdict.outcome == DENY:
            raise AuthenticationFailed("Authentication failed.")
        if verdict.outcome == INVALID:
            raise LoginRefused(f"auth hook: {verdict.reason}")
        raise LoginUnavailable(f"auth hook: {verdict.reason}")

    def _verify(self, account: Optional[AccountConfig], password: str) -> bool:
        """If scrypt fails (no memory), the login fails like a wrong password: it gets 530
        and counts towards the ban instead of dropping the session."""
        try:
            return self._checker.verify(account.password if account else None, password)
        except (ValueError, MemoryError) as exc:
            log.error("password check of [%s] failed: %s", account.section if account else "-", exc)
            return False

    def get_home_dir(self, username: str) -> str:
        return "/"

    def impersonate_user(self, username: str, password: str) -> None:
        pass

    def terminate_impersonation(self, username: str) -> None:
        pass

    def has_user(self, username: str) -> bool:
        return username in self._accounts

    def has_perm(self, username: str, perm: str, path: Optional[str] = None) -> bool:
        """Whether ``username`` may do what ``perm`` stands for at ``path``: in a virtual
        folder, by the folder's ``authority`` and ``delete_enable``."""
        account = self._accounts.get(username)
        if account is None:
            return False
        if path is not None and account.folders:
            account = mount_table(account).account_at(path)
        return perm in perms_for(account)

    def get_perms(self, username: str) -> str:
        account = self._accounts.get(username)
        return perms_for(account) if account else ""

    def get_msg_login(self, username: str) -> str:
        """The 230 reply's text: the account's ``login_message``."""
        account = self._accounts.get(username)
        return (account.limits.login_message if account else "") or "Login successful."

    def get_msg_quit(self, username: str) -> str:
        return "Goodbye."
