"""What ``cosftpctl`` asks of the cluster's Redis itself: the bans and failure counts of every
node (``bans``), lifting them (``unban``), other modules' reads, and the check of its
version and that it takes writes (``check``)."""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Optional, TypeVar

import redis

from ...config.model import ClusterConfig
from ...errors import ConfigError
from .keys import (
    BANS_KEPT,
    BANS_MADE,
    BANS_MADE_COUNT,
    BANS_SECONDS,
    PREFIX,
    SCAN_PAGE,
    UNBAN_COUNT,
    UNBAN_EPOCH,
    UNBANNING,
    UNBANNING_SECONDS,
    UNBANS,
    UNBANS_KEPT,
    UNBANS_SECONDS,
    ban_key,
    client_key,
)
from .link import (
    Busy,
    busy,
    connect,
    describe,
    error_code,
    public_url,
    refusal,
    refuses_writes,
    server_version,
)
from .scripts import BAN, LIBRARY, READ, RESERVE, UNBAN

T = TypeVar("T")


class ClusterTrouble(Exception):
    """Redis could not do what ``cosftpctl`` asked (unreachable, busy, loading, too old,
    refusing writes, or it answered with another error); the message says which.
    ``done``: what an unban did before it (bans and failed logins deleted in Redis; None
    if nothing); the nodes were not told to drop their own copies, which is its last
    write. ``at_note``: every delete landed, only that note was refused. ``unsure``: the
    call that failed was sent and its answer did not come in time: it may have run."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.done: Optional[tuple[int, int]] = None
        self.at_note = False
        self.unsure = False


@dataclass
class _Unbanning:
    """What an unban did so far, for the report of one Redis refused part way."""

    started: bool = False  # its first call was made
    bans: int = 0  # deleted by the calls that answered
    failures: int = 0  # the failed logins those counted
    at_note: bool = False  # every delete landed; Redis refused only the note to the nodes
    sent: bool = False  # a call sent, its answer not read yet (it may have run)


@dataclass(frozen=True)
class ClusterEntry:
    """One address the cluster's Redis holds a ban or failed logins for."""

    address: str
    failures: int  # failed logins counted in the window, cluster-wide
    until: float  # when its ban ends; 0: not banned


class ClusterAdmin:
    """What ``cosftpctl bans`` and ``unban`` ask of the cluster's Redis (not a worker's
    view: no link state, no fallback). Every method raises ``ClusterTrouble``."""

    MAX_LISTED = 10000  # addresses listed per kind (bans, failure counts)

    def __init__(self, config: ClusterConfig) -> None:
        self._url = config.redis_url
        self._redis = connect(config)
        self._scripts = {name: self._redis.register_script(LIBRARY + body)
                         for name, body in (("unban", UNBAN), ("read", READ),
                                            ("reserve", RESERVE), ("ban", BAN))}
        self._theirs: dict[str, Any] = {}  # another module's scripts, by body
        self._checked = False

    def close(self) -> None:
        self._redis.close()

    def entries(self) -> tuple[list[ClusterEntry], bool]:
        """Every address banned or with failed logins in the cluster, and whether the list
        was cut at ``MAX_LISTED``."""
        def read() -> tuple[list[ClusterEntry], bool]:
            bans, cut_bans = self._values(PREFIX + "ban:")
            failures, cut_failures = self._values(PREFIX + "fail:")
            now = time.time()
            found = []
            for address in sorted(set(bans) | set(failures)):
                left = bans.get(address, (None, 0))[1]
                count = _count(failures.get(address, ("0", 0))[0])
                found.append(ClusterEntry(address, count, now + left / 1000 if left > 0 else 0))
            return found, cut_bans or cut_failures
        return self._call("ban listing", read)

    def unban(self, ip: Optional[str], when: int,
              before_note: Optional[Callable[[], object]] = None) -> tuple[int, int]:
        """Delete the ban and failure count of ``ip`` (every address: None) and note the
        unban for the nodes' workers; return how many bans ran and the failed logins that
        were counted. For every address, ``before_note`` (if given) is called once the
        pages are deleted, before the note. Raises ``ClusterTrouble``, with what was
        deleted before (``done``) and whether only the note was refused (``at_note``)."""
        progress = _Unbanning()

        def lift() -> tuple[int, int]:
            progress.started = True
            if ip is not None:
                self._unban([ban_key(ip), PREFIX + "fail:" + client_key(ip)],
                            client_key(ip), when, progress)
                return progress.bans, progress.failures
            # Its number first: the bans made while the pages are deleted come after it,
            # and are kept (the page script compares), here and on the nodes.
            # Its epoch too: a ban of another (of a counter that expired since) is older.
            (number, epoch), _ = self._scripts["reserve"](
                [UNBAN_COUNT, UNBANNING, UNBAN_EPOCH],
                [UNBANS_SECONDS, UNBANNING_SECONDS, epoch_token()])
            reserved = (int(number), str(epoch))
            for prefix in (PREFIX + "ban:", PREFIX + "fail:"):
                for page in self._pages(prefix):
                    self._unban(page, "", when, progress, reserved)
            # The caller's node lifts its own table before the note, not after: a
            # heartbeat of its that brought the note keeps the bans made while the pages
            # were deleted (Redis holds them), and a lift after it dropped those for good
            # (found: a ban earned on node a meanwhile, kept by b's heartbeat, then lifted
            # by b's cosftpctl; nothing brought it to b again). One lifted before the note
            # comes back with it (its heartbeat brings every ban noted that Redis holds).
            if before_note is not None:
                before_note()
            self._unban([], "*", when, progress, reserved)  # the nodes drop their copies
            return progress.bans, progress.failures
        try:
            return self._call("unban", lift)
        except ClusterTrouble as exc:
            # (a page's script is one call; one refused before its deletes is not counted)
            exc.at_note = progress.at_note
            exc.unsure = progress.sent and isinstance(exc.__cause__, redis.TimeoutError)
            deleted = progress.bans or progress.failures or progress.at_note
            exc.done = (progress.bans, progress.failures) if progress.started and deleted \
                else None
            raise

    def evaluate_each(self, what: str, body: str, calls: Sequence[tuple[list, list]]
                      ) -> list[Any]:
        """Run the script ``body`` of another module (``server.quotashare``'s usage read),
        with this module's library, once for each ``(keys, args)`` of ``calls``,
        ``SCAN_PAGE`` calls to a round trip; the answers as Redis gives them."""
        if body not in self._theirs:
            self._theirs[body] = self._redis.register_script(LIBRARY + body)
        script = self._theirs[body]

        def run() -> list[Any]:
            answers: list[Any] = []
            for start in range(0, len(calls), SCAN_PAGE):
                pipe = self._redis.pipeline(transaction=False)
                for keys, args in calls[start:start + SCAN_PAGE]:
                    script(keys, args, client=pipe)
                answers += pipe.execute()
            return answers
        return self._call(what, run)

    def ban(self, ip: str, until: int, seconds: int) -> None:
        """Ban ``ip`` for ``seconds`` (until ``until``) in Redis, after every unban so far,
        and note it for every node (``scripts.BAN``); a longer ban Redis holds is kept."""
        self._call("ban", lambda: self._scripts["ban"](
            [ban_key(ip), BANS_MADE, BANS_MADE_COUNT, UNBAN_COUNT, UNBAN_EPOCH],
            [client_key(ip), until, seconds, BANS_KEPT, BANS_SECONDS]))

    def _unban(self, keys: list[str], what: str, when: int, progress: _Unbanning,
               reserved: Optional[tuple[int, str]] = None) -> None:
        """Run the unban script (``scripts.UNBAN``) once, adding the bans and failed logins
        it deleted to ``progress`` (``reserved``: the ``unban --all``'s number and the
        counter's epoch, which keep the bans made since it began); raise redis-py's
        ``ResponseError`` with what Redis answered its note, if it refused that after the
        deletes (``progress.at_note``). ``progress.sent`` is True while the call waits for
        its answer (one that never comes in time leaves it so: the script may have run)."""
        progress.sent = True
        answer, _ = self._scripts["unban"](
            [UNBANS, UNBAN_COUNT, UNBANNING, UNBAN_EPOCH, *keys],
            [when, what, UNBANS_KEPT, UNBANS_SECONDS, PREFIX + "ban:",
             "" if reserved is None else reserved[0], UNBANNING_SECONDS, epoch_token(),
             "" if reserved is None else reserved[1]])
        progress.sent = False
        progress.bans += int(answer[0])
        progress.failures += int(answer[1])
        if answer[2]:
            progress.at_note = True
            raise redis.ResponseError(str(answer[2]))

    def _values(self, prefix: str) -> tuple[dict[str, tuple[str, int]], bool]:
        """``{address: (value, milliseconds left)}`` of the string keys under ``prefix``
        (others, and names that are no address, skipped); True if cut at ``MAX_LISTED``."""
        found: dict[str, tuple[str, int]] = {}
        for page in self._pages(prefix):
            answer, _ = self._scripts["read"](page, [])
            for key, value in zip(page, answer):
                with contextlib.suppress(ValueError):
                    if value:
                        found[client_key(key[len(prefix):])] = (value[0], int(value[1]))
            if len(found) >= self.MAX_LISTED:
                return found, True
        return found, False

    def _pages(self, prefix: str) -> Iterator[list[str]]:
        """The keys under ``prefix``, a ``SCAN`` page at a time."""
        page: list[str] = []
        for key in self._redis.scan_iter(match=prefix + "*", count=SCAN_PAGE):
            page.append(key)
            if len(page) >= SCAN_PAGE:
                yield page
                page = []
        if page:
            yield page

    def _call(self, what: str, call: Callable[[], T]) -> T:
        where = f"Redis at {public_url(self._url)}"
        try:
            if not self._checked:
                server_version(self._redis, self._url)
                self._checked = True
            return call()
        except ConfigError as exc:
            raise ClusterTrouble(exc.problem) from exc
        except Busy as exc:
            raise ClusterTrouble(_busy_words(where, exc)) from exc
        except redis.exceptions.BusyLoadingError as exc:
            raise ClusterTrouble(f"{where} is LOADING its dataset ({str(exc)[:160]})") \
                from exc
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise ClusterTrouble(f"{where} unreachable ({describe(exc)})") from exc
        except redis.RedisError as exc:
            if (found := busy(exc)) is not None:  # BUSY answered to a script's call
                raise ClusterTrouble(_busy_words(where, found)) from exc
            if refuses_writes(exc):
                raise ClusterTrouble(f"{where} refuses writes ({refusal(exc)})") from exc
            raise ClusterTrouble(f"{where} answered the {what} with an error "
                                 f"({describe(exc)})") from exc


def epoch_token() -> str:
    """A new epoch for the unban counter, should the script find none (16 hex digits,
    ``scripts.LIBRARY``'s ``epoch_of``): drawn at random, so that no counter made anew
    after Redis lost its keys has the epoch of the one before."""
    return secrets.token_hex(8)


def _busy_words(where: str, exc: Busy) -> str:
    """What ``cosftpctl`` says of a Redis (``where``) that answered ``exc``, BUSY."""
    return f"{where} is BUSY running a script past busy-reply-threshold ({str(exc)[:160]})"


def _count(value: str) -> int:
    """A failure count as Redis holds it; 0 for what is not one."""
    return int(value) if value.isdigit() and len(value) < 16 else 0


def check_config(config: ClusterConfig) -> str:
    """For ``cosftpctl check``: what Redis says of itself, and whether it takes writes.
    Raises ``ConfigError`` if it answers but is too old; reports (does not raise) if it is
    unreachable or refuses writes, as the node then runs on (``redis_down``)."""
    where = public_url(config.redis_url)
    client = connect(config)
    try:
        version = server_version(client, config.redis_url)
        refusal = write_refusal(client)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        return (f"warning: [CLUSTER] Redis at {where} unreachable ({describe(exc)}): its "
                f"version is checked when it answers; until then the node runs as "
                f"redis_down = {config.redis_down} says")
    finally:
        client.close()
    if refusal is not None:
        return (f"warning: [CLUSTER] redis_url: Redis {version} at {where} refuses "
                f"writes: a probe key under {PREFIX} could not be written "
                f"({_shown(refusal)}): {_remedy(refusal)}; {_meanwhile(refusal, config)}")
    return f"cluster: Redis {version} at {where}, takes writes"


# How long the probe key of ``write_refusal`` lives if the check is cut short before it
# deletes it.
PROBE_MILLISECONDS = 10000


def write_refusal(client: redis.Redis) -> Optional[redis.ResponseError]:
    """Write a probe key under ``PREFIX`` (expiring after ``PROBE_MILLISECONDS``) and
    delete it: None if Redis took both, else the error it answered (a read-only replica,
    MISCONF, OOM at maxmemory with noeviction, an ACL...). Raises redis-py's
    ConnectionError or TimeoutError if it cannot be reached."""
    key = f"{PREFIX}check-probe:{secrets.token_hex(8)}"
    try:
        client.set(key, "cosftpctl check", px=PROBE_MILLISECONDS)
        client.delete(key)
    except redis.ResponseError as exc:  # not ConnectionError or TimeoutError: raised
        return exc
    return None


# What to do about each refusal, by Redis's error code.
_REMEDIES = {
    "READONLY": "it is a read-only replica: point redis_url at its master",
    "MASTERDOWN": "it is a replica that lost its master: point redis_url at the master",
    "NOREPLICAS": "it has fewer good replicas than its min-replicas-to-write: bring them "
                  "back, or lower min-replicas-to-write",
    "MISCONF": "its last save to disk failed and stop-writes-on-bgsave-error is yes: see "
               "Redis's log (its dir, disk space, permissions)",
    "OOM": "it is at maxmemory and evicts nothing (maxmemory-policy noeviction): raise "
           "maxmemory, or choose an eviction policy (every key this server writes "
           "expires: volatile-ttl will do)",
    "NOPERM": "its ACL user may not write there: grant +@write on ~cosftp:*",
}


def _shown(exc: redis.ResponseError) -> str:
    """Redis's error as it answered it, code first, cut for a line (``cosftpctl check``
    escapes the line it is in)."""
    return refusal(exc, 200)


def _remedy(exc: redis.ResponseError) -> str:
    return _REMEDIES.get(error_code(exc), "see Redis's log")


def _meanwhile(exc: redis.ResponseError, config: ClusterConfig) -> str:
    """What a node does while Redis refuses so."""
    if refuses_writes(exc):  # as the node takes it
        return (f"until it takes writes, the node takes it for down and runs as redis_down "
                f"= {config.redis_down} says")
    return ("until it takes writes, the node's calls that write are answered from its own "
            "figures: bans and counts are not shared")
