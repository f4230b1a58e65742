"""What a configuration's quotas are (``quota_size``, ``quota_files``), and the ledger that
keeps their usage; the quotas themselves are kept by ``cos.quota``.

A quota belongs to a *home*: a bucket, or a ``cos_prefix`` of one, where an account is rooted
or a virtual folder with a quota is mounted. Every account rooted or mounting a folder there
shares its usage, and the smallest limit of those accounts and folders holds. Homes may nest
(an admin rooted at ``tenants/`` above a tenant at ``tenants/a/``): a file written under both
counts in both, and each limit holds. Nothing here talks to COS: ``cosftpctl`` and the admin
API read the ledger with this alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Optional, Protocol

from .model import AccountConfig


def home_id(bucket: str, prefix: str) -> bytes:
    """The name of the home ``prefix`` of ``bucket`` in a ledger: 16 bytes of BLAKE2b, the
    same in every process and on every node."""
    return hashlib.blake2b(f"{bucket}\0{prefix}".encode(), digest_size=16).digest()


@dataclass(frozen=True)
class Home:
    """A home with a quota: its bucket and prefix, and the limits that hold (0: none)."""

    ident: bytes
    bucket: str
    prefix: str
    size: int
    files: int


@dataclass(frozen=True)
class Usage:
    """What a ledger holds of one home."""

    used: int
    files: int
    reserved: int
    reserved_files: int
    scanned_at: float  # time.time() of the last scan; 0: never scanned
    requested_at: float = 0.0  # a scan asked for (cosftpctl quota-scan) at this time


@dataclass(frozen=True)
class Reservation:
    """What :meth:`Ledger.reserve_ahead` did: nothing, ``refused`` naming the first home
    without room for the bytes and files needed, or ``unscanned`` the first home whose
    usage is not known yet (scan it, then ask again); else it reserved them and ``ahead``
    bytes more (0, or all that were asked for)."""

    refused: Optional[Home] = None
    unscanned: Optional[Home] = None
    ahead: int = 0


class Reserving:
    """:meth:`Ledger.reserve` and :meth:`Ledger.reserve_ahead` of a ledger, over its one
    ``_reserve``."""

    def reserve(self, homes: Sequence[Home], nbytes: int, files: int) -> Optional[Home]:
        return self._reserve(homes, nbytes, files, 0, scanned_only=False).refused

    def reserve_ahead(self, homes: Sequence[Home], nbytes: int, files: int,
                      ahead: int) -> Reservation:
        return self._reserve(homes, nbytes, files, ahead, scanned_only=True)

    def _reserve(self, homes: Sequence[Home], nbytes: int, files: int, ahead: int,
                 scanned_only: bool) -> Reservation:
        """Reserve ``nbytes`` and ``files`` in every home and ``ahead`` bytes more if each
        has room for them too; with ``scanned_only``, nothing in a home whose usage is not
        known yet."""
        raise NotImplementedError


class Ledger(Protocol):
    """The usage of every home with a quota, shared by the processes that write to them.
    Each method changes every home of ``homes`` at once, or none."""

    def reserve(self, homes: Sequence[Home], nbytes: int, files: int) -> Optional[Home]:
        """Reserve ``nbytes`` and ``files`` in each of ``homes``, or nothing and return the
        first one without room."""

    def reserve_ahead(self, homes: Sequence[Home], nbytes: int, files: int,
                      ahead: int) -> Reservation:
        """:meth:`reserve`, and ``ahead`` bytes more if every home has room for those too
        (an upload's next slice: one call where two were), in homes whose usage is known
        only."""

    def release(self, homes: Sequence[Home], nbytes: int, files: int) -> None:
        """Give back a reservation."""

    def settle(self, homes: Sequence[Home], reserved: int, reserved_files: int,
               nbytes: int, files: int) -> None:
        """Give back a reservation and add ``nbytes`` and ``files`` (maybe negative) to the
        usage."""

    def read(self, home: Home) -> Optional[Usage]:
        """The usage of ``home`` (None: not known here yet)."""

    def claim_scan(self, home: Home, interval: float, now: float, known_only: bool) -> bool:
        """Take on the scan of ``home`` if it is due (never scanned, asked for, or last
        scanned ``interval`` seconds ago; ``interval`` 0: never again) and no live process
        is scanning it; with ``known_only``, not if it was never scanned nor asked to be
        (a home nobody used yet is scanned at its first use)."""

    def end_scan(self, home: Home, found: Optional[tuple[int, int]], now: float) -> None:
        """The scan this process claimed ended: ``found`` (bytes, files), or None if it
        failed."""

    def request_scan(self, home: Home, now: float) -> None:
        """Ask for a scan of ``home`` (``cosftpctl quota-scan``)."""

    def tick(self, homes: Iterable[Home]) -> None:
        """Publish what this node holds in ``homes`` and wherever it published holdings
        before (a cluster's ledger; worker 1, once a second)."""

    def catch_up(self) -> bool:
        """Publish everything this node holds if what was published may be wrong (a
        change that did not reach it, a dead worker's holdings dropped); whether it did.
        Every worker, once a second and before it serves."""

    def want_publish(self) -> None:
        """What was published of this node's reservations may be wrong (lost where it was
        kept): have the next :meth:`catch_up` publish everything."""

    def adopt(self, home: Home, answered_at: float, most: int, stale_before: float) -> Home:
        """A session logs in with an auth hook's answer at ``answered_at`` that gives
        ``home`` its limits: keep them unless a later answer's are kept, and count the
        session (until :meth:`leave`); return ``home`` with the limits that hold. If ``home``
        is new and ``most`` answers' homes are kept already, free the row of one whose
        latest answer came before ``stale_before`` and that holds no session, reservation or
        scan, else raise ``QuotaHomesFull``."""

    def leave(self, home: Home) -> None:
        """A session :meth:`adopt` counted has ended (or was refused after all)."""

    def limits(self, home: Home) -> Home:
        """``home`` with the limits of the latest answer that gave it some (as it is if
        none did)."""


class QuotaHomesFull(Exception):
    """No room for one more home with a quota from an auth hook's answer: the login is
    refused (421) until a row is free again (``auth_hook_quota_homes``)."""


def places(account: AccountConfig) -> list[AccountConfig]:
    """Where ``account`` writes with a quota of its own: its home, and each of its virtual
    folders with a quota as the account is in there (``AccountConfig.mounted``: the
    folder's bucket, prefix and quota)."""
    return [account, *(account.mounted(folder) for _, folder in account.folders
                       if folder.has_quota)]


class QuotaRules:
    """The homes with a quota in a configuration, looked up by key: the accounts' homes and
    their virtual folders' (a folder's bucket and prefix, which every account mounting it
    shares; a folder of no ``cos_bucket`` is in each mounting account's bucket)."""

    def __init__(self, accounts: Iterable[AccountConfig]) -> None:
        limits: dict[tuple[str, str], tuple[int, int]] = {}
        # Whose credentials scan each home: an account rooted there, or one mounting it.
        self.accounts: dict[tuple[str, str], AccountConfig] = {}
        for account in (place for each in accounts for place in places(each)):
            if not account.has_quota:
                continue
            where = (account.bucket, account.prefix)
            size, files = limits.get(where, (0, 0))
            limits[where] = (_smaller(size, account.quota_size),
                             _smaller(files, account.quota_files))
            self.accounts.setdefault(where, account)
        self.homes = {where: Home(home_id(*where), *where, *limit)
                      for where, limit in limits.items()}
        self._buckets = {bucket for bucket, _ in self.homes}

    def covering(self, bucket: str, key: str) -> list[Home]:
        """The homes with a quota that ``key`` of ``bucket`` (a whole-bucket key) is in."""
        if bucket not in self._buckets:
            return []
        found = []
        for end in [0, *(i + 1 for i, char in enumerate(key) if char == "/")]:
            home = self.homes.get((bucket, key[:end]))
            if home is not None:
                found.append(home)
        return found

    def reaches(self, account: AccountConfig) -> bool:
        """Whether any quota counts what ``account`` writes (one of its home or above, or of
        a home nested in it)."""
        if account.bucket not in self._buckets:
            return False
        return bool(self.covering(account.bucket, account.prefix)) or any(
            prefix.startswith(account.prefix) for bucket, prefix in self.homes
            if bucket == account.bucket)


def _smaller(a: int, b: int) -> int:
    """The smaller of two limits, 0 meaning none."""
    return min(a, b) if a and b else a or b
