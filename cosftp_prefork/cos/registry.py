"""Each process's COS clients and each account's home, made on first use.

A configuration may hold thousands of accounts; a worker makes nothing for one until a session
of it logs in (or the janitor sweeps its home). Accounts with the same credentials, endpoint
and bucket share one :class:`Bucket` (and its client); an account with a ``cos_prefix`` gets
the :class:`Area` of that prefix, one per bucket and prefix.
Everything of the file's accounts is kept for the life of the process: what a bucket learned
(its versioning status, ``cos.naming``) is learned once; of the auth hook's accounts, the
``MAX_HOOK_BUCKETS`` used last.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from typing import Callable, Optional

import requests

from ..config.model import AccountConfig
from .area import Area
from .bucket import Bucket, make_bucket, new_session


def _bucket_identity(account: AccountConfig) -> tuple:
    """What makes two accounts' buckets the same: credentials, endpoint, bucket."""
    return (account.secret_id, account.secret_key, account.protocol, account.region,
            account.endpoint, account.cos_ip, account.cos_port, account.bucket)


def _home_location(account: AccountConfig) -> tuple:
    """Where ``account``'s home is, whatever the credentials that reach it."""
    return (account.protocol, account.region, account.endpoint, account.cos_ip,
            account.cos_port, account.bucket, account.prefix)


class BucketRegistry:
    """The buckets and homes of one process (its own ``requests`` session and pool)."""

    MAX_HOOK_BUCKETS = 64

    def __init__(self, pool_size: int = 32, timeout: float = 60) -> None:
        self._pool_size = pool_size
        self._timeout = timeout
        self._session: Optional[requests.Session] = None
        self._buckets: dict[tuple, Bucket] = {}
        self._hook_buckets: OrderedDict[tuple, Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def bucket(self, account: AccountConfig) -> Bucket:
        """The whole bucket of ``account``, with its credentials."""
        return self._kept(_bucket_identity(account), lambda: make_bucket(
            account, self._client_session(), self._timeout), account.from_hook)

    def home(self, account: AccountConfig) -> Bucket:
        """What ``account`` sees as its bucket: the whole bucket, or the :class:`Area` of
        its ``cos_prefix``."""
        bucket = self.bucket(account)
        if not account.prefix:
            return bucket
        return self._kept((*_bucket_identity(account), account.prefix),
                          lambda: Area(bucket, account.prefix), account.from_hook)

    def homes(self, accounts: Iterable[AccountConfig]) -> Iterable[Bucket]:
        """The homes of ``accounts``, each once (with the credentials of one of the accounts
        sharing it), each made only when an iteration gets to it; iterable again and
        again."""
        return _EachHome(self, list({_home_location(a): a for a in accounts}.values()))

    def _kept(self, identity: tuple, make: Callable[[], Bucket],
              from_hook: bool = False) -> Bucket:
        """The bucket or home of ``identity``, made on first use; those of the auth hook's
        accounts only the ``MAX_HOOK_BUCKETS`` used last (users cycling through the hook
        must not grow a worker without bound; a session keeps its own)."""
        with self._lock:
            kept = self._hook_buckets if from_hook else self._buckets
            found = kept.get(identity)
            if found is None:
                found = kept[identity] = make()
            if from_hook:
                self._hook_buckets.move_to_end(identity)
                while len(self._hook_buckets) > self.MAX_HOOK_BUCKETS:
                    self._hook_buckets.popitem(last=False)
            return found

    def _client_session(self) -> requests.Session:
        """The session every client of this registry uses (called with the lock held)."""
        if self._session is None:
            self._session = new_session(self._pool_size)
        return self._session

    def close(self) -> None:
        """Release pooled connections."""
        if self._session is not None:
            self._session.close()


class _EachHome:
    """What :meth:`BucketRegistry.homes` returns."""

    def __init__(self, registry: BucketRegistry, accounts: Sequence[AccountConfig]) -> None:
        self._registry, self._accounts = registry, accounts

    def __iter__(self) -> Iterator[Bucket]:
        return (self._registry.home(account) for account in self._accounts)
