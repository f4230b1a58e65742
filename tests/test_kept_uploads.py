"""The uploads a dead worker had in flight, as the master keeps them in the state file
(``server.scoreboard.uploads``), written the way a worker's session writes them
(``server.inflight``): taken once by a STOR that repeats their first bytes and sent fewer,
bounded, expired."""

from __future__ import annotations

import os
import time

from cosftp_prefork.cos.checksum import PrefixCrcs
from cosftp_prefork.server.inflight import UploadWatch
from cosftp_prefork.server.scoreboard import KEEP_LOST_SECONDS, Limits, SharedState
from cosftp_prefork.server.scoreboard.layout import KEPT_ROWS

DEAD, ALIVE = 4242, 4343
RETRY = 192 * 1024


def crcs(data: bytes, chunk: int = 100_000) -> PrefixCrcs:
    """The prefix CRCs of ``data``, fed in chunks of ``chunk`` bytes as a data channel does."""
    prefix = PrefixCrcs()
    for at in range(0, len(data), chunk):
        prefix.update(data[at:at + chunk])
    return prefix


def in_flight(state: SharedState, pid: int, user: str, path: str, data: bytes,
              end: bool = False) -> None:
    """A session of worker ``pid`` whose STOR of ``data`` to ``path`` received it all (and
    whose final reply went out, with ``end``)."""
    row, _ = state.admit(pid, "127.0.0.1", Limits())
    watch = UploadWatch(state, row)
    watch.started(user, path)
    prefix = PrefixCrcs()
    for at in range(0, len(data), 100_000):
        prefix.update(data[at:at + 100_000])
        watch.received(prefix)
    if end:
        watch.ended()


def retried(state: SharedState, user: str, path: str, data: bytes):
    """What a new session's STOR of ``data`` finds kept (the bytes received, or None)."""
    row, _ = state.admit(ALIVE, "127.0.0.1", Limits())
    return UploadWatch(state, row).lost_upload(user, path, crcs(data))


def test_a_dead_workers_upload_is_taken_once_by_a_shorter_stor_of_its_first_bytes(tmp_path):
    state = SharedState.create(str(tmp_path / "state"))
    data = os.urandom(3 * 1024 * 1024 + 5)
    in_flight(state, DEAD, "alice", "/f.bin", data)
    in_flight(state, DEAD, "alice", "/answered.bin", data, end=True)
    in_flight(state, ALIVE, "alice", "/alive.bin", data)
    kept = state.keep_uploads(DEAD, time.monotonic())
    assert [upload.nbytes for upload in kept] == [len(data)]
    assert retried(state, "alice", "/answered.bin", data[:RETRY]) is None
    assert retried(state, "alice", "/alive.bin", data[:RETRY]) is None
    assert retried(state, "bob", "/f.bin", data[:RETRY]) is None  # another account
    assert retried(state, "alice", "/g.bin", data[:RETRY]) is None  # another name
    assert retried(state, "alice", "/f.bin", os.urandom(RETRY)) is None  # other bytes
    assert retried(state, "alice", "/f.bin", data[:RETRY - 1]) is None  # no mark there
    assert retried(state, "alice", "/f.bin", data[:2 * 1024 * 1024]) is None  # past the marks
    assert retried(state, "alice", "/f.bin", data[:RETRY]) == len(data)
    assert retried(state, "alice", "/f.bin", data[:RETRY]) is None  # taken: once


def test_a_stor_as_long_as_the_dead_upload_is_no_retry_cut_short(tmp_path):
    """The whole file again (or more of it than the dead worker had read) is stored."""
    state = SharedState.create(str(tmp_path / "state"))
    data = os.urandom(RETRY)
    in_flight(state, DEAD, "alice", "/f.bin", data)
    state.keep_uploads(DEAD, time.monotonic())
    assert retried(state, "alice", "/f.bin", data) is None
    assert retried(state, "alice", "/f.bin", data[:RETRY // 3]) == RETRY


def test_kept_uploads_expire_and_a_full_table_drops_its_oldest(tmp_path):
    state = SharedState.create(str(tmp_path / "state"))
    data = os.urandom(RETRY + 1)
    now = time.monotonic()  # the look-ups read the clock: these rows stay within their time
    in_flight(state, DEAD, "alice", "/oldest", data)
    state.keep_uploads(DEAD, now - 1)
    for n in range(KEPT_ROWS):
        in_flight(state, DEAD + 1 + n, "alice", f"/f{n}", data)
        state.keep_uploads(DEAD + 1 + n, now + n / KEPT_ROWS)
    assert retried(state, "alice", "/oldest", data[:RETRY]) is None
    assert retried(state, "alice", "/f0", data[:RETRY]) == len(data)
    assert state.expire_kept(now + KEEP_LOST_SECONDS - 1) == 0
    assert state.expire_kept(now + KEEP_LOST_SECONDS + 1.5) == KEPT_ROWS - 1
    assert state.expire_kept(now + KEEP_LOST_SECONDS + 1.5) == 0
