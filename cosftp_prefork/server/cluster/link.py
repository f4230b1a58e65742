"""The connection of one process to the cluster's Redis: the client with its bounds, the
version check, and the states of a worker's link."""

from __future__ import annotations

import re
from enum import Enum
from typing import Optional

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ...config.model import REDIS_MINIMUM, ClusterConfig
from ...errors import ConfigError

ERROR_SECONDS = 60.0  # a reply error shows in status this long; repeats are logged this often
# Connections one process keeps to Redis at most. A call takes one for a round trip (well
# under a millisecond on a healthy Redis), so a few serve thousands of calls a second; more
# would only pile more waiting calls on a slow Redis, and hundreds of sessions each holding
# one (redis-py's pool grows with the threads that call at once) multiplied by workers and
# nodes would run into Redis's maxclients. A call that finds them all busy waits up to
# redis_timeout for one, then goes on without Redis (``NoConnectionFree``).
REDIS_CONNECTIONS = 8


class Link(Enum):
    """What this worker knows of Redis."""

    UNCHECKED = "not asked yet"  # until the version check at worker start
    UP = "reachable"
    DOWN = "unreachable"  # not asked again before the retry time
    UNSUPPORTED = "unsupported"  # answers, but too old (or will not say): as DOWN
    READ_ONLY = "refusing writes"  # answers, but keeps nothing (``refuses_writes``): as DOWN


MOVES = {
    Link.UNCHECKED: {Link.UP, Link.DOWN, Link.UNSUPPORTED, Link.READ_ONLY},
    Link.UP: {Link.DOWN, Link.READ_ONLY},
    Link.DOWN: {Link.UP, Link.DOWN, Link.UNSUPPORTED, Link.READ_ONLY},
    Link.UNSUPPORTED: {Link.UP, Link.DOWN, Link.UNSUPPORTED, Link.READ_ONLY},
    Link.READ_ONLY: {Link.UP, Link.DOWN, Link.UNSUPPORTED, Link.READ_ONLY},
}

# The errors of a Redis that refuses every write for now, whatever the command and key,
# until its operator acts or it recovers by itself: a replica (READONLY; MASTERDOWN, which
# refuses reads too, with replica-serve-stale-data no), a master with fewer good replicas
# than min-replicas-to-write (NOREPLICAS), one whose last save failed (MISCONF,
# stop-writes-on-bgsave-error), one out of memory (OOM: maxmemory reached and nothing
# evictable; what it refuses is what may add memory, which every call of a node but a read
# does, its heartbeat first). A node then shares nothing (no ban, count or reservation
# lands), so they are an outage. Redis 7 answers a script's as the command's own error; 6.0
# wraps it (``ERR Error running script (call to f_...): @user_script:9: @user_script: 9:
# -READONLY ...``). Not these: NOPERM (an ACL's choice of commands or keys), a script's
# own error: those are errors answered.
_REFUSES_WRITES = re.compile(r"(?:^|: -)(READONLY|MASTERDOWN|NOREPLICAS|MISCONF|OOM) ")
# And that of a Redis that serves no command now: one running a script past
# busy-reply-threshold (BUSY, until it ends or SCRIPT KILL). Unreachable, for the node: it
# is asked again after ``redis_check_interval``, as when it does not answer; so is one
# loading its data at start (LOADING), for which redis-py raises ``BusyLoadingError``, a
# ConnectionError.
_BUSY = re.compile(r"^BUSY ")


def public_url(url: str) -> str:
    """The URL without its password, for the log."""
    return url.split("@")[-1]


class NoConnectionFree(redis.TimeoutError):
    """Every connection of this process to Redis stayed busy for ``redis_timeout``: to the
    caller, Redis did not answer in time."""


def connect(config: ClusterConfig) -> redis.Redis:
    """A client whose every call gives up after ``redis_timeout``: one retry on a fresh
    connection if the one it had broke (Redis restarted under it), none after a timeout, no
    back-off. Said here rather than left to redis-py, whose defaults differ between its
    versions and constructors (``redis.Redis()`` of 6.x and later retries ten times with
    back-off: a slow Redis would hold each call ~5 s). Its pool holds ``REDIS_CONNECTIONS``
    at most, and a call waits ``redis_timeout`` at most for one of them (redis-py's own
    pool either grows without bound, 5.x, or fails the call at once past 100, 8.x: taken
    for an outage)."""
    pool = redis.BlockingConnectionPool.from_url(
        config.redis_url, max_connections=REDIS_CONNECTIONS, timeout=config.redis_timeout,
        socket_timeout=config.redis_timeout, socket_connect_timeout=config.redis_timeout,
        decode_responses=True,
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)))
    client = redis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True  # close() closes its connections
    return client


def server_version(client: redis.Redis, url: str) -> str:
    """Redis's version (``INFO server``). Raises ``ConfigError`` if it is older than
    ``REDIS_MINIMUM`` or Redis will not say; redis-py's ConnectionError or TimeoutError if
    it cannot be reached."""
    minimum = ".".join(map(str, REDIS_MINIMUM))
    where = f"Redis at {public_url(url)}"
    try:
        version = str(client.info("server").get("redis_version", ""))
    except (redis.ConnectionError, redis.TimeoutError):
        raise
    except redis.RedisError as exc:
        if (found := busy(exc)) is not None:  # BUSY refuses INFO too: not an answer
            raise found from exc
        raise ConfigError(f"{where} will not tell its version ({describe(exc)}); this "
                          f"server needs INFO to check it is {minimum} or newer",
                          section="CLUSTER", option="redis_url") from exc
    found = re.match(r"(\d+)\.(\d+)", version)
    if found is None or tuple(map(int, found.groups())) < REDIS_MINIMUM:
        raise ConfigError(f"{where} is version {version or 'unknown'}; this server needs "
                          f"Redis {minimum} or newer (bans and connection counts would not "
                          f"be shared)", section="CLUSTER", option="redis_url")
    return version


def refuses_writes(exc: redis.RedisError) -> bool:
    """Whether ``exc``, an error Redis answered, says it refuses every write for now (see
    ``_REFUSES_WRITES``)."""
    if isinstance(exc, (redis.exceptions.ReadOnlyError, redis.exceptions.MasterDownError,
                        redis.exceptions.OutOfMemoryError)):
        return True  # (redis-py takes the code off their message)
    return _REFUSES_WRITES.search(str(exc)) is not None


# The codes redis-py takes off the messages of the errors it has a class for.
_CODES = ((redis.exceptions.ReadOnlyError, "READONLY"),
          (redis.exceptions.MasterDownError, "MASTERDOWN"),
          (redis.exceptions.OutOfMemoryError, "OOM"),
          (redis.exceptions.NoPermissionError, "NOPERM"))


def error_code(exc: redis.RedisError) -> str:
    """Redis's error code of ``exc`` (READONLY, OOM, MISCONF...; "" if it gave none)."""
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code
    first = str(exc).split(" ", 1)[0]
    return first if first.isupper() and first.isalpha() else ""


def refusal(exc: redis.RedisError, width: int = 160) -> str:
    """What Redis answered in ``exc``, code first (``MISCONF Redis is configured to save RDB
    snapshots...``), cut to ``width`` characters for one line: a script's error of Redis 6
    that ``refuses_writes`` matches without its wrapping."""
    found = _REFUSES_WRITES.search(str(exc))
    if found:
        return str(exc)[found.start(1):][:width]
    code, text = error_code(exc), str(exc)
    return (text if not code or text.startswith(code) else f"{code} {text}")[:width]


class Busy(redis.ConnectionError):
    """Redis answered that it serves no command now (``_BUSY``): to the caller, as if it
    could not be reached."""


def busy(exc: redis.RedisError) -> Optional[Busy]:
    """``exc``, an error Redis answered, as ``Busy`` if it says Redis serves no command
    now (``_BUSY``), else None."""
    return Busy(str(exc)) if _BUSY.match(str(exc)) else None


class Silence(Enum):
    """Why a DOWN Redis serves nothing, as far as it said: ``cosftpctl status`` names it."""

    UNREACHABLE = "unreachable"  # no answer (refused, reset, timed out)
    BUSY = "busy"  # a script past busy-reply-threshold (``Busy``)
    LOADING = "loading"  # loading its dataset (redis-py's ``BusyLoadingError``)


def silence(exc: Exception) -> Silence:
    """Why ``exc``, raised by a call that found Redis down, says it serves nothing: BUSY
    and LOADING by their errors, else UNREACHABLE."""
    if isinstance(exc, Busy):
        return Silence.BUSY
    if isinstance(exc, redis.exceptions.BusyLoadingError):
        return Silence.LOADING
    return Silence.UNREACHABLE


def describe(exc: Exception) -> str:
    """An error for the log: its class and the start of its message."""
    return f"{type(exc).__name__}: {str(exc)[:160]}"
