"""Quotas (``quota_size``, ``quota_files``): what a home may hold, kept as the server writes.

Which homes have a quota, and the ledger's interface, are ``config.quotas``. The usage lives
in a ``Ledger`` that every worker of the server shares (the master's mapped state file,
``server.usage``; with ``[CLUSTER]``, Redis: ``server.quotashare``), so that two sessions
racing for the last bytes of a quota cannot both win: an upload *reserves* its bytes before
it takes them, under the ledger's lock, and turns the reservation into usage when it commits
(or gives it back when it ends otherwise). The bytes are reserved a slice at a time, so a
ledger is asked about once per :data:`SLICE` bytes: each reservation asks for what the write
needs and the slice ahead in one call, granted only if there is room for both.

The usage starts from a scan of the home (every object under the prefix, the server's own
data in ``.cosftp/`` and directory markers not counted), made when a session first needs it
and again every ``quota_scan_interval`` seconds and on ``cosftpctl quota-scan``, so that what
other tools wrote is caught up. What the server itself does is counted as it does it, a
directory renamed between homes and a file renamed over another included. A write that lands
while a scan lists the home may be counted twice or not at all until the next scan.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from typing import Callable, Optional

from ..config.model import AccountConfig
from ..config.quotas import Home, Ledger, QuotaHomesFull, QuotaRules, Reservation, Usage, home_id
from ..config.values import size_in_words
from ..errors import NotFound, QuotaExceeded, StorageError
from ..paths import RESERVED_NAME
from .bucket import Bucket
from .pagination import paginate

log = logging.getLogger(__name__)

SLICE = 4 * 1024 * 1024  # bytes an upload reserves at a time, when the quota has room
SCAN_WAIT = 0.05  # seconds between looks while another process scans a home
SCAN_PATIENCE = 600.0  # seconds a session waits for another process's scan of its home
UNSCANNED_TRIES = 3  # scans an upload waits for before it gives up on a home's usage


def scan_home(bucket: Bucket, prefix: str) -> tuple[int, int]:
    """Bytes and files under ``prefix`` of ``bucket`` (a whole bucket: its own client),
    the server's data (``.cosftp/`` at any depth) and directory markers left out. One page
    of keys in memory at a time."""
    size = files = 0
    listed = paginate(lambda marker: bucket.list_page(prefix, marker=marker, delimiter=""),
                      lambda page: page.next_marker, "")
    for page in listed:
        for obj in page.objects:
            if counted_in(prefix, obj.key):
                size += obj.size
                files += 1
    return size, files


def counted_in(prefix: str, key: str) -> bool:
    """Whether the home ``prefix`` counts its ``key``: not a directory marker, nor the
    server's data (``.cosftp/`` at any depth)."""
    rest = key[len(prefix):]
    return bool(rest) and not rest.endswith("/") and RESERVED_NAME not in rest.split("/")


class Quotas:
    """The quotas of one worker: its configuration's rules, the shared ledger, and the
    scans (a session's first need of a home, and the periodic ones of :meth:`scan_due`).

    An auth hook's answer may give its account's home a quota too (``hook_homes``: how many
    such homes the ledger keeps at most). The file's quota of a home wins over an answer's;
    between answers, the latest one's limits hold for every session of the home (this node's
    latest, with ``[CLUSTER]``). Such a home is scanned at its first use and again at a
    login once ``quota_scan_interval`` passed. Its row in the ledger may be freed for
    another such home once no session of it is logged in and its latest answer is
    ``hook_home_age`` seconds old (``max(auth_cache_ttl, quota_scan_interval)``: a cached
    yes may still bring that answer back, and a home is not scanned more often than the
    interval would); answered again, it is scanned again at its first use."""

    def __init__(self, rules: QuotaRules, ledger: Ledger,
                 bucket_of: Callable[[AccountConfig], Bucket], interval: float,
                 hook_homes: int = 0, hook_home_age: float = 0.0) -> None:
        self.rules, self.ledger, self._bucket_of = rules, ledger, bucket_of
        self.interval, self.hook_homes, self.hook_home_age = interval, hook_homes, hook_home_age

    def admit(self, account: AccountConfig) -> tuple[Optional[Home], Optional[str]]:
        """A login of ``account``: keep the quota its auth hook's answer gives its home.
        Returns the home kept (give it back with :meth:`leave` when the session ends), or
        why the login is refused (421) when the ledger has no room for the home."""
        if not (account.from_hook and account.has_quota):
            return None, None
        if (account.bucket, account.prefix) in self.rules.homes:
            log.info("quota: the file's quota of this home holds; quota_size and quota_files "
                     "of the auth hook's answer are not used")
            return None, None
        home = _answered(account)
        try:
            self.ledger.adopt(home, account.answered_at, self.hook_homes,
                              time.time() - self.hook_home_age)
        except QuotaHomesFull as exc:
            log.warning("quota: login refused: no room for the quota the auth hook's answer "
                        "gives %s of bucket %s: %s", account.prefix or "/", account.bucket, exc)
            return None, "Too many homes with a quota now; try again later."
        return home, None

    def leave(self, home: Home) -> None:
        """A session :meth:`admit` kept ``home`` for has ended."""
        self.ledger.leave(home)

    def for_account(self, account: AccountConfig, mount: str = "",
                    owner: Optional[AccountConfig] = None) -> Optional[AccountQuota]:
        """What a session of ``account`` needs to keep the quotas (``account`` as it is in
        the virtual folder at ``mount``, if given, and ``owner`` the session's own account:
        a file the folder takes from the home whose quota ``owner``'s answer gave leaves
        that home, and the folder's side counts it); None if none reaches it."""
        answered = self._answered_home(owner or account)
        if not mount and answered is not None:
            if self.ledger.claim_scan(answered, self.interval, time.time(), known_only=True):
                self.scan(answered, account=account)
        elif not self.rules.reaches(account):
            return None
        return AccountQuota(self, account, answered, mount, owner)

    def _answered_home(self, account: AccountConfig) -> Optional[Home]:
        """The home whose quota ``account``'s auth hook answer gives (None: none, or the
        file's quota of that home holds)."""
        if account.from_hook and account.has_quota and \
                (account.bucket, account.prefix) not in self.rules.homes:
            return _answered(account)
        return None

    def ready(self, homes: Sequence[Home], account: Optional[AccountConfig] = None) -> None:
        """Make sure each of ``homes`` was scanned once: scan it here (a home of no file
        account with ``account``'s credentials), or wait for the process scanning it.
        Raises ``StorageError`` if the scan fails."""
        for home in homes:
            deadline = time.monotonic() + SCAN_PATIENCE
            scanned = False
            while True:
                usage = self.ledger.read(home)
                if usage is not None and usage.scanned_at:
                    break
                if self.ledger.claim_scan(home, 0, time.time(), known_only=False):
                    if scanned:  # the ledger did not keep this call's scan (a Redis error)
                        self.ledger.end_scan(home, None, time.time())
                        raise StorageError("the usage of a quota was scanned but could not "
                                           "be recorded; try again", code="QuotaScan")
                    self.scan(home, raising=True, account=account)
                    scanned = True
                elif time.monotonic() > deadline:
                    raise StorageError(f"the usage of a quota is not known yet (scanning "
                                       f"for {SCAN_PATIENCE:.0f}s); try again",
                                       code="QuotaScan")
                else:
                    time.sleep(SCAN_WAIT)

    def scan(self, home: Home, raising: bool = False,
             account: Optional[AccountConfig] = None) -> None:
        """Scan ``home`` (claimed) and put what it holds in the ledger (with the credentials
        of a file account of the home, else ``account``'s)."""
        found = None
        try:
            owner = self.rules.accounts.get((home.bucket, home.prefix)) or account
            found = scan_home(self._bucket_of(owner), home.prefix)
            log.info("quota: %s of bucket %s holds %d bytes in %d files", home.prefix or "/",
                     home.bucket, *found)
        except StorageError as exc:
            log.warning("quota: cannot scan %s of bucket %s: %s", home.prefix or "/",
                        home.bucket, exc)
            if raising:
                raise
        finally:
            self.ledger.end_scan(home, found, time.time())

    def publish(self) -> None:
        """Publish what this node holds (a cluster's ledger; nothing without one) in the
        file's homes and wherever it published holdings before (worker 1, every second)."""
        self.ledger.tick(self.rules.homes.values())

    def want_publish(self) -> None:
        """Where this node's reservations are published (a cluster's Redis) lost them:
        have the next :meth:`catch_up` publish all of them."""
        self.ledger.want_publish()

    def catch_up(self) -> None:
        """Publish everything this node holds if a change did not reach the cluster's
        ledger or a dead worker's holdings were dropped (every worker, every second, and
        before it serves)."""
        self.ledger.catch_up()

    def scan_due(self) -> None:
        """Scan the homes that are due again (worker 1, every second): those asked for by
        ``cosftpctl quota-scan`` and, every ``quota_scan_interval``, those in use."""
        self.publish()
        for home in self.rules.homes.values():
            if self.ledger.claim_scan(home, self.interval, time.time(), known_only=True):
                self.scan(home)


def _answered(account: AccountConfig) -> Home:
    """The home of a hook's ``account`` with the quota its answer gives."""
    return Home(home_id(account.bucket, account.prefix), account.bucket, account.prefix,
                account.quota_size, account.quota_files)


class AccountQuota:
    """The quotas one session's writes in its home, or in one of its virtual folders
    (``mount``: its mount point), count against (keys are the home's or folder's, the
    prefix added here)."""

    def __init__(self, quotas: Quotas, account: AccountConfig,
                 answered: Optional[Home] = None, mount: str = "",
                 owner: Optional[AccountConfig] = None) -> None:
        self._quotas, self._account = quotas, account
        self._answered = answered  # the home whose quota the account's hook answer gives
        # Whose credentials scan a home of no file account: the answered home is the
        # session's own, never the folder's bucket.
        self._scanner = owner or account
        self.prefix, self.mount = account.prefix, mount

    def _covering(self, bucket: str, whole_key: str) -> list[Home]:
        """The homes with a quota that ``whole_key`` of ``bucket`` is in: the file's, and
        the one the answer gave, with the latest answer's limits."""
        homes = self._quotas.rules.covering(bucket, whole_key)
        answered = self._answered
        if answered is not None and bucket == answered.bucket and \
                whole_key.startswith(answered.prefix):
            homes.append(self._quotas.ledger.limits(answered))
        return homes

    def counts(self, key: str) -> bool:
        """Whether a quota counts the session's ``key``."""
        return bool(self._covering(self._account.bucket, self._account.prefix + key))

    def homes(self, key: str) -> list[Home]:
        """The homes with a quota that the session's ``key`` is in, each scanned once."""
        homes = self._covering(self._account.bucket, self._account.prefix + key)
        self._quotas.ready(homes, self._scanner)
        return homes

    def own(self) -> list[Home]:
        """The homes with a quota that the account's own home (or the folder) is in (SITE
        QUOTA, ALLO)."""
        return self.homes("")

    def usage(self, home: Home) -> Optional[Usage]:
        return self._quotas.ledger.read(home)

    def upload(self, key: str, new_file: bool, base: int, announced: Optional[int],
               replaced: Callable[[], Optional[int]]) -> Optional[UploadQuota]:
        """The meter of an upload to ``key`` (None if no quota counts it), with its first
        bytes reserved: ``base`` (a parked upload's, already in COS but not counted) or the
        size ``ALLO`` announced, and one file if it makes a ``new_file``. ``replaced()``
        gives the size of the file it replaces (None: none). Raises ``QuotaExceeded``."""
        homes = self._covering(self._account.bucket, self._account.prefix + key)
        if not homes:
            return None
        # Each home is scanned when the ledger says its usage is not known yet, rather
        # than asked beforehand (:meth:`homes`): one call less per upload.
        meter = UploadQuota(self._quotas.ledger, homes, base, replaced, self.place,
                            lambda unscanned: self._quotas.ready(unscanned, self._scanner))
        meter.open(max(base, announced or 0), new_file)
        return meter

    def removed(self, key: str, size: int) -> None:
        """The file ``key`` of ``size`` bytes was deleted."""
        homes = self._covering(self._account.bucket, self._account.prefix + key)
        if homes:
            self._quotas.ledger.settle(homes, 0, 0, -size, -1)

    def moving(self, src: str, dst: str, size: int) -> Callable[[bool], None]:
        """A file of ``size`` bytes is renamed from ``src`` to ``dst``: reserve it in the
        homes it enters (``QuotaExceeded`` if one has no room). Returns what to call once the
        rename is done (True) or failed (False): it counts the file in the homes it entered
        and out of those it left."""
        return self.arriving(self._account.bucket, self._account.prefix + src, dst, size)

    def arriving(self, bucket: str, whole_key: str, dst: str,
                 size: int) -> Callable[[bool], None]:
        """:meth:`moving` of a file that is ``whole_key`` of ``bucket``: of this home, or of
        another one (a virtual folder's: ``ftp.mounts``)."""
        prefix = self._account.prefix
        before = self._covering(bucket, whole_key)
        after = self._covering(self._account.bucket, prefix + dst)
        entering = [home for home in after if home not in before]
        leaving = [home for home in before if home not in after]
        if not entering and not leaving:
            # Counted where it was and where it goes alike (an admin's home over two
            # folders): nothing to change, and nothing for the source's side to give back.
            return _unchanged
        self._quotas.ready(entering + leaving, self._scanner)
        ledger = self._quotas.ledger
        refused = ledger.reserve(entering, size, 1)
        if refused is not None:
            raise QuotaExceeded(_refusal(refused, self.place, ledger.read(refused)))

        def done(renamed: bool) -> None:
            if renamed:
                ledger.settle(entering, size, 1, size, 1)
                ledger.settle(leaving, 0, 0, -size, -1)
            else:
                ledger.release(entering, size, 1)
        return done

    def check_room(self, nbytes: int) -> None:
        """``ALLO nbytes``: raise ``QuotaExceeded`` if a quota over the account's home (or the
        folder) has no room for them now (nothing is reserved: the upload does that)."""
        homes = self.own()
        ledger = self._quotas.ledger
        refused = ledger.reserve(homes, nbytes, 0)
        if refused is not None:
            raise QuotaExceeded(_refusal(refused, self.place, ledger.read(refused)))
        ledger.release(homes, nbytes, 0)

    @property
    def place(self) -> tuple[str, str]:
        """The prefix and mount point refusals name homes from (:func:`_where`)."""
        return self.prefix, self.mount

    def moving_directory(self, objects: Iterable[tuple[str, str, int]]
                         ) -> Callable[[bool], None]:
        """A directory rename is about to move these objects (the session's key before and
        after, size): reserve what enters each home with a quota, before anything is copied
        (``QuotaExceeded``, nothing reserved, if one has no room; homes nested in the
        directory included, markers count nowhere). Returns what to call once the rename is
        done (True: each object counts where it went and no longer where it was) or failed
        (False: the reservations given back)."""
        entering: dict[Home, tuple[int, int]] = {}
        leaving: dict[Home, tuple[int, int]] = {}
        for source, target, size in objects:
            before, after = self._counting(source), self._counting(target)
            for change, homes in ((entering, after - before), (leaving, before - after)):
                for home in homes:
                    nbytes, files = change.get(home, (0, 0))
                    change[home] = (nbytes + size, files + 1)
        if not entering and not leaving:
            return _unchanged
        self._quotas.ready([*entering, *leaving], self._scanner)
        ledger = self._quotas.ledger
        reserved: list[Home] = []
        for home, (nbytes, files) in entering.items():
            if ledger.reserve([home], nbytes, files) is not None:
                for taken in reserved:
                    ledger.release([taken], *entering[taken])
                raise QuotaExceeded(_refusal(home, self.place, ledger.read(home)))
            reserved.append(home)

        def done(renamed: bool) -> None:
            for home, (nbytes, files) in entering.items():
                if renamed:
                    ledger.settle([home], nbytes, files, nbytes, files)
                else:
                    ledger.release([home], nbytes, files)
            if renamed:
                for home, (nbytes, files) in leaving.items():
                    ledger.settle([home], 0, 0, -nbytes, -files)
        return done

    def _counting(self, key: str) -> set[Home]:
        """The homes with a quota that count the session's ``key``."""
        whole = self._account.prefix + key
        return {home for home in self._covering(self._account.bucket, whole)
                if counted_in(home.prefix, whole)}


class UploadQuota:
    """The reservation of one upload: ``base`` bytes and what :meth:`take` was given, in
    every home the file is in; settled at the commit (:meth:`finish`), else given back
    (:meth:`cancel`). ``ready`` scans homes whose usage the ledger does not know yet. Used
    by the upload's session thread only.

    Each reservation asks for a slice ahead (:data:`SLICE`) in the same call, granted when
    every home has room for it too: a small upload asks the ledger twice, its reservation
    and its settlement."""

    def __init__(self, ledger: Ledger, homes: Sequence[Home], base: int,
                 replaced: Callable[[], Optional[int]], place: tuple[str, str],
                 ready: Callable[[list[Home]], None]) -> None:
        self._ledger, self._homes, self._replaced = ledger, homes, replaced
        self._place, self._ready = place, ready
        self._needed = base  # bytes the file will have counted
        self._reserved = self._files = 0
        self._open = True

    def open(self, nbytes: int, new_file: bool) -> None:
        files = 1 if new_file else 0
        taken = self._reserve(nbytes, files, SLICE)
        refused = taken.refused
        if refused is not None and files and refused.files and self._replaced() is not None:
            files = 0  # a file of that name is replaced: no file more
            taken = self._reserve(nbytes, files, SLICE)
            refused = taken.refused
        if refused is not None:
            self._open = False
            raise QuotaExceeded(_refusal(refused, self._place, self._ledger.read(refused)))
        self._reserved, self._files = nbytes + taken.ahead, files

    def take(self, nbytes: int) -> None:
        """``nbytes`` more arrive: reserve them (a slice ahead when there is room); raises
        ``QuotaExceeded`` if a home has no room for them."""
        self._needed += nbytes
        short = self._needed - self._reserved
        if short <= 0:
            return
        taken = self._reserve(short, 0, max(SLICE - short, 0))
        if taken.refused is not None:
            raise QuotaExceeded(_refusal(taken.refused, self._place,
                                         self._ledger.read(taken.refused)))
        self._reserved += short + taken.ahead

    def _reserve(self, nbytes: int, files: int, ahead: int) -> Reservation:
        """Reserve in every home, each scanned first if the ledger does not know its usage
        (the first upload into it, or its usage lost with a Redis restarted); raises
        ``StorageError`` if a scan fails or the usage stays unknown."""
        for _ in range(UNSCANNED_TRIES):
            taken = self._ledger.reserve_ahead(self._homes, nbytes, files, ahead)
            if taken.unscanned is None:
                return taken
            self._ready([taken.unscanned])
        raise StorageError(f"the usage of a quota is still not known after {UNSCANNED_TRIES} "
                           "scans; try again", code="QuotaScan")

    def before_commit(self) -> None:
        """The file is about to become visible: learn the size of the one it replaces now
        (the HEAD beside the bytes may not have run yet; afterwards it would find the new
        file)."""
        replaced = self._replaced()
        self._replaced = lambda: replaced

    def finish(self, size: int) -> None:
        """The upload committed a file of ``size`` bytes."""
        if not self._open:
            return
        self._open = False
        old = self._replaced()
        self._ledger.settle(self._homes, self._reserved, self._files,
                            size - (old or 0), 0 if old is not None else 1)

    def cancel(self) -> None:
        """The upload ended without a file (aborted, parked): give the reservation back."""
        if self._open:
            self._open = False
            self._ledger.release(self._homes, self._reserved, self._files)


def replaced_size(future: Future) -> Callable[[], Optional[int]]:
    """``replaced`` for :meth:`AccountQuota.upload` from a HEAD of the key started beside
    the upload (None: no file there, or the HEAD failed: the next scan corrects that)."""
    def size() -> Optional[int]:
        try:
            return future.result().size
        except NotFound:
            return None
        except StorageError as exc:
            log.warning("quota: cannot tell the size of the file an upload replaces: %s", exc)
            return None
    return size


def _unchanged(renamed: bool) -> None:
    """What :meth:`AccountQuota.arriving` and ``moving_directory`` return for a move no
    quota sees."""


def describe(quotas: Sequence[AccountQuota]) -> list[str]:
    """``SITE QUOTA``: the usage and limits of each quota over the account's home and over
    its virtual folders (``quotas``: the home's first, then each folder's), each once."""
    lines: list[str] = []
    shown: set[Home] = set()
    for quota in quotas:
        for home in quota.own():
            if home in shown:
                continue
            shown.add(home)
            usage = quota.usage(home) or Usage(0, 0, 0, 0, 0.0)
            size = f"{size_in_words(home.size)} = {home.size} bytes" if home.size else \
                "no limit"
            files = f"{home.files}" if home.files else "no limit"
            where = _where(home, quota.place)
            lines += [f"{where[0].upper()}{where[1:]}:",
                      f"size: {usage.used} bytes used of {size}; {usage.reserved} reserved by "
                      "uploads under way",
                      f"files: {usage.files} used of {files}"]
    if lines:
        return lines
    if quotas:
        return ["No quota on this account's home (directories of it have theirs)."]
    return ["No quota counts this account's files."]


def _where(home: Home, place: tuple[str, str]) -> str:
    """A home as the account whose home or folder (at mount point ``mount``) is ``prefix``
    may hear of it: never by its key."""
    prefix, mount = place
    here = f"the virtual folder {mount}" if mount else "this account's home"
    if home.prefix == prefix:
        return here
    if prefix.startswith(home.prefix):
        return f"a home that contains {here}" if mount else \
            "a home that contains this account's"
    return f"{mount}/{home.prefix[len(prefix):].rstrip('/')}"


def _refusal(home: Home, place: tuple[str, str], usage: Optional[Usage]) -> str:
    """Why an upload is refused, naming the home as :func:`_where` does."""
    where = _where(home, place)
    used = usage.used + usage.reserved if usage else 0
    files = usage.files + usage.reserved_files if usage else 0
    if home.files and files >= home.files:
        return f"Quota exceeded: {where} holds {files} of its {home.files} files (quota_files)"
    limit = size_in_words(home.size) if home.size else "no limit"
    return (f"Quota exceeded: {where} holds {used} bytes of its {limit} (quota_size), "
            "uploads under way included")
