"""A real ``redis-server`` put in each state where it answers every write (or every
command) with an error until its operator acts, and taken out of it again: what a
cluster node must take for an outage. Each ``Trouble`` proves its state by the error
the test's own client gets before the test goes on."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil
import redis

from .server_proc import closed_port, wait_until

PROBE = "cosftp:trouble-probe"  # what the test's own client reads and writes


@dataclass
class Trouble:
    """How ``make`` puts the server of a ``RedisUnderTest`` in the state where a write is
    answered ``code`` and ``undo`` takes it out; ``link`` is how ``cosftpctl status`` then
    words the cluster's Redis (``Redis <link>``: BUSY and LOADING by name, not UNREACHABLE,
    which says nothing of why)."""

    name: str
    code: str
    link: str
    make: Callable[..., None]
    undo: Callable[..., None]
    # What ``make`` started that ``undo`` ends (the client running a script forever).
    held: list = field(default_factory=list)

    def __repr__(self) -> str:  # the test's id
        return self.name


def refused(client: redis.Redis, code: str) -> bool:
    """Whether ``client`` is answered with the error ``code`` now, to a read (a replica
    whose master is gone refuses it with MASTERDOWN; it would refuse a write with READONLY
    first) or a write."""
    try:
        client.get(PROBE)
        client.set(PROBE, "1", px=1000)
    except redis.ResponseError as exc:  # (redis-py takes the code off the messages of some)
        return getattr(exc, "status_code", None) == code or str(exc).startswith(code)
    except redis.BusyLoadingError:
        return code == "LOADING"
    return False


def _misconf(server) -> None:
    """A save failed with ``stop-writes-on-bgsave-error yes`` (the default): its child killed
    (SIGKILL, as the kernel's OOM killer does) while it writes the dump slowly
    (``rdb-key-save-delay``; the nodes' keys are there to be written). Without a save point
    (``--save ''``) Redis takes writes whatever its last save did: one is set."""
    direct = server.direct
    direct.config_set("rdb-key-save-delay", 10_000_000)  # microseconds per key
    direct.config_set("save", "3600 1")
    direct.bgsave()
    parent = psutil.Process(server.server.proc.pid)
    wait_until(parent.children, what="the BGSAVE child")
    for child in parent.children():
        child.kill()
    wait_until(lambda: direct.info("persistence")["rdb_last_bgsave_status"] == "err" and
               not direct.info("persistence")["rdb_bgsave_in_progress"],
               what="the save to fail")


def _misconf_undo(server) -> None:
    server.direct.config_set("save", "")
    server.direct.config_set("rdb-key-save-delay", 0)


def _masterdown(server) -> None:
    """A replica of a master that is gone (a port that refuses connections), set not to
    serve stale data: every command but a few (INFO, REPLICAOF...) is refused."""
    server.direct.config_set("replica-serve-stale-data", "no")
    server.direct.replicaof("127.0.0.1", closed_port())


def _masterdown_undo(server) -> None:
    server.direct.replicaof("no", "one")
    server.direct.config_set("replica-serve-stale-data", "yes")


def _oom(server) -> None:
    """``maxmemory`` reached with ``noeviction``: every write that may add memory is
    refused, reads and deletes are served."""
    server.direct.config_set("maxmemory-policy", "noeviction")
    server.direct.config_set("maxmemory", "1")


def _oom_undo(server) -> None:
    server.direct.config_set("maxmemory", "0")


def _busy(server, trouble: Trouble) -> None:
    """A script that never ends, past ``busy-reply-threshold`` (200 ms here; 5 s by
    default): Redis answers every other command BUSY until ``SCRIPT KILL``. (At 10 ms, a
    node's script slowed by a loaded machine made the test's own calls BUSY now and then
    after the kill.)"""
    server.direct.config_set("busy-reply-threshold", 200)
    looping = redis.Redis(port=server.port)  # no timeout: it waits for its script

    def loop() -> None:
        with contextlib.suppress(redis.ResponseError):  # killed
            looping.eval("while true do end", 0)
        looping.close()
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    trouble.held.append(thread)


def _busy_undo(server, trouble: Trouble) -> None:
    def ended() -> bool:
        with contextlib.suppress(redis.ResponseError):  # NOTBUSY: no script runs
            server.direct.script_kill()
        return not any(thread.is_alive() for thread in trouble.held)
    wait_until(ended, what="the script to end")
    trouble.held.clear()

    def restored() -> bool:
        try:
            return server.direct.config_set("busy-reply-threshold", 5000)
        except redis.ResponseError as exc:
            if not str(exc).startswith("BUSY"):  # a node's script, slow for a moment
                raise
            return False
    wait_until(restored, what="busy-reply-threshold restored")


def _loading(server) -> None:
    """Redis restarted from a dump it loads slowly (``key-load-delay``, 50 ms a key: minutes
    for its 4,000 keys; ``undo`` ends the delay): LOADING to every command but a few
    (INFO, CONFIG...) meanwhile. The keys are random bytes (LZF leaves them 2 KB each),
    so that Redis turns to its clients between every two (every 1 KiB read)."""
    pipe = server.direct.pipeline(transaction=False)
    for number in range(4000):
        pipe.set(f"trouble:load:{number}", os.urandom(2000))
    pipe.execute()
    server.direct.save()
    server.restart("--dir", str(server.run_dir), "--key-load-delay", "50000",
                   "--loading-process-events-interval-bytes", "1024")


def _loading_undo(server) -> None:
    server.direct.config_set("key-load-delay", 0)  # (CONFIG is served while loading)
    wait_until(lambda: not int(server.direct.info("persistence")["loading"]),
               what="Redis to finish loading")


def troubles() -> list[Trouble]:
    """One of each state, new for each test (``busy`` holds its thread)."""
    busy = Trouble("busy", "BUSY", "BUSY", lambda s: None, lambda s: None)
    busy.make, busy.undo = (lambda s: _busy(s, busy)), (lambda s: _busy_undo(s, busy))
    return [
        Trouble("misconf", "MISCONF", "REFUSING WRITES", _misconf, _misconf_undo),
        Trouble("masterdown", "MASTERDOWN", "REFUSING WRITES", _masterdown,
                _masterdown_undo),
        Trouble("oom", "OOM", "REFUSING WRITES", _oom, _oom_undo),
        busy,
        Trouble("loading", "LOADING", "LOADING", _loading, _loading_undo),
    ]
