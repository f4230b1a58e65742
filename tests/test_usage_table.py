"""The usage table's rows of the auth hook's homes (server/usage.py) freed and reused: rows
whose home ids collide, so that freeing one moves the rest of its probe run (linear probing
without tombstones); each home keeps its own usage, limits and name. The real mapped file
and locks, as the master creates them."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from cosftp_prefork.config.quotas import Home, QuotaHomesFull
from cosftp_prefork.server.usage import ROWS, SLOT_HOLDINGS, Dropped, UsageTable
from cosftp_prefork.server.usagegate import TURNSTILE

from .server_proc import wait_until


def home(slot: int, tag: int) -> Home:
    """A home whose row is wanted at ``slot`` (the id's first 4 bytes pick it)."""
    return Home(slot.to_bytes(4, "little") + tag.to_bytes(12, "little"), "b-1250000000",
                f"slot{slot}/tag{tag}/", 100 + tag, 10 + tag)


@pytest.fixture
def table(tmp_path):
    made = UsageTable.create(str(tmp_path / "usage"))
    yield made
    made.close()


def keep(table: UsageTable, homes: list[Home], most: int) -> None:
    """Each of ``homes`` answered in turn (time 1, 2...), half its size used, its
    session ended."""
    for answered, kept in enumerate(homes, 1):
        table.adopt(kept, float(answered), most, 0.0)
        table.end_scan(kept, (kept.size // 2, 1), 1.0)
        table.leave(kept)


@pytest.mark.parametrize("slot", [5, ROWS - 2])  # a run in the middle, one that wraps round
def test_a_freed_row_moves_its_run_and_every_home_keeps_its_own(table, slot):
    # rows at slot, +1, +2 (where the third wants it), +3; the newcomer's far away
    run = [home(slot, 1), home(slot, 2), home(slot + 2, 3), home(slot, 4)]
    keep(table, run, most=4)
    newcomer = home(slot + 40, 5)
    with pytest.raises(QuotaHomesFull):  # every answer is newer than 0.5: none is stale
        table.adopt(newcomer, 9.0, 4, 0.5)
    table.adopt(newcomer, 9.0, 4, 10.0)  # frees run[0], answered longest ago
    assert table.read(run[0]) is None
    for kept in [*run[1:], newcomer]:
        assert table.limits(kept) == kept
    for kept in run[1:]:
        assert (table.read(kept).used, table.read(kept).files) == (kept.size // 2, 1)
    assert {(found.home, found.answered_at) for found in table.answered()} == \
        {(run[1], 2.0), (run[2], 3.0), (run[3], 4.0), (newcomer, 9.0)}


def test_a_row_with_a_session_or_a_reservation_is_not_freed(table):
    first, second, third = home(7, 1), home(7, 2), home(8, 3)
    keep(table, [first, second], most=2)
    table.adopt(first, 3.0, 2, 0.0)  # a session of first logs in again
    assert table.reserve([second], 5, 1) is None  # an upload under way to second
    with pytest.raises(QuotaHomesFull):
        table.adopt(third, 4.0, 2, 10.0)
    table.release([second], 5, 1)
    table.adopt(third, 4.0, 2, 10.0)  # second holds nothing now
    assert table.read(second) is None and table.limits(first) == first


def killed_holding(table: UsageTable, slot: int, homes: list[Home]) -> int:
    """A forked worker of ``slot`` reserves 5 bytes and 1 file in each of ``homes``, keeps a
    session of each, and is SIGKILLed before it settles anything; its pid."""
    pid = os.fork()
    if pid == 0:
        table.attach(slot)
        for kept in homes:
            table.adopt(kept, 1.0, 8, 0.0)
            table.reserve([kept], 5, 1)
        os.kill(os.getpid(), signal.SIGKILL)
    assert os.waitpid(pid, 0)[1] == signal.SIGKILL
    return pid


def test_a_killed_workers_holdings_are_dropped_by_the_master_or_the_slots_next_worker(
        table, tmp_path):
    homes = [home(11, 1), home(12, 2)]
    pid = killed_holding(table, 3, homes)
    assert (table.read(homes[0]).reserved, table.read(homes[0]).reserved_files) == (5, 1)
    assert table.drop_holdings(3, pid + 1) == Dropped()  # not that slot's worker: nothing
    with open(tmp_path / "usage", "r+b") as other:  # another process holds the lock
        fcntl.lockf(other, fcntl.LOCK_EX)
        blocked = os.fork()
        if blocked == 0:
            os._exit(0 if table.drop_holdings(3, pid) is None else 1)
        assert os.waitpid(blocked, 0)[1] == 0  # busy: the master tries again later
    assert table.drop_holdings(3, pid) == Dropped(10, 2, 2, 2)
    for kept in homes:
        usage = table.read(kept)
        assert (usage.reserved, usage.reserved_files) == (0, 0)
    assert {found.home for found in table.answered()} == set(homes)
    table.adopt(home(13, 3), 2.0, 2, 10.0)  # no session left: a stale row can be freed
    assert table.drop_holdings(3, pid) == Dropped()  # once only

    again = killed_holding(table, 3, homes[:1])
    assert table.attach(3) == Dropped(5, 1, 1, 1)  # the slot's next worker drops them
    assert table.read(homes[0]).reserved == 0
    assert table.drop_holdings(3, again) == Dropped()


def test_a_worker_holding_in_more_homes_than_its_region_keeps_still_counts_them(table):
    table.attach(0)
    many = [home(100 + n, n) for n in range(SLOT_HOLDINGS + 1)]
    for kept in many:
        assert table.reserve([kept], 1, 0) is None
    assert table.read(many[-1]).reserved == 1  # counted, not tracked: it would stay
    table.release(many[:1], 1, 0)  # the first holds nothing now: its place is taken
    assert table.reserve([many[-1]], 1, 0) is None
    assert table.drop_holdings(0, os.getpid()) == Dropped(SLOT_HOLDINGS, 0, 0, SLOT_HOLDINGS)
    assert table.read(many[-1]).reserved == 1  # the untracked byte stays



def in_another_process(path: str, action) -> bool:
    """Whether ``action`` on the usage file mapped anew in a forked process (another
    worker) returned True."""
    child = os.fork()
    if child == 0:
        other = UsageTable.open(path, os.getppid(), writable=True)
        os._exit(0 if other is not None and action(other) else 1)
    return os.waitpid(child, 0)[1] == 0


def turnstile_taken(path: str) -> bool:
    """Whether a process other than a new one holds the gate's turnstile (a rewrite waits
    for its turn or runs)."""
    def refused(usage: UsageTable) -> bool:
        try:
            fcntl.lockf(usage._fd, fcntl.LOCK_SH | fcntl.LOCK_NB, *TURNSTILE)
        except OSError:
            return True
        return False
    return in_another_process(path, refused)


def changing_until_told(table: UsageTable, kept: Home) -> tuple[int, int, int]:
    """A forked process (another worker) whose change reserves 5 bytes and 1 file in
    ``kept`` and stays between its two steps until the test writes to it, then gives them
    back; its pid, where it says it is in, where it is told to go on."""
    said_in, in_end = os.pipe()
    go_end, told = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(said_in)
        os.close(told)  # told: the test's end alone, so that its close is an end of file
        with table.changing():
            table.reserve([kept], 5, 1)
            os.write(in_end, b"i")
            os.read(go_end, 1)
            table.release([kept], 5, 1)
        os._exit(0)
    os.close(in_end)
    os.close(go_end)
    return pid, said_in, told


def test_a_rewrite_waits_for_the_changes_under_way_and_writes_what_they_left(table, tmp_path):
    """A cluster's change of the node's reservations holds the gate between its two steps
    (``UsageTable.changing``): a rewrite (``publish``) waits for the changes of every
    process under way (it used to skip its turn), reads nothing between a change's steps,
    and holds off a change that starts meanwhile."""
    path, kept = str(tmp_path / "usage"), home(21, 1)
    written: list = []

    def rewrite(usage: UsageTable) -> bool:
        return usage.publish([kept.ident], False, lambda held, _: written.append(held) or True)

    pid, said_in, told = changing_until_told(table, kept)
    try:
        assert os.read(said_in, 1) == b"i"
        with ThreadPoolExecutor(1) as pool:
            rewriting = pool.submit(rewrite, table)
            wait_until(lambda: rewriting.done() or turnstile_taken(path),
                       what="the rewrite to wait for its turn")
            assert not rewriting.done() and not written
            os.write(told, b"g")  # the change ends: the reservation given back
            assert rewriting.result(timeout=60)
        assert written == [[(kept.ident, 0, 0)]]
    finally:
        os.close(told)
        os.close(said_in)
        os.waitpid(pid, 0)
    with table.changing():  # this process's changes go on side by side with another's
        assert in_another_process(path, enters)
    assert in_another_process(path, rewrite)


def enters(usage: UsageTable) -> bool:
    with usage.changing():
        return True


def crowd(table: UsageTable, kept: Home, started: int, stop: int) -> None:
    """A forked worker's sessions: two threads each changing the node's reservations in
    ``kept`` one change after another (always one of this process under way, nearly), until
    ``stop`` is readable; writes a byte to ``started`` after its first changes."""
    failed: list = []

    def sessions() -> None:
        try:
            while not select.select([stop], [], [], 0)[0]:
                with table.changing():
                    table.reserve([kept], 1, 0)
                    os.sched_yield()  # (the Redis call between the two steps)
                    table.release([kept], 1, 0)
        except Exception as exc:  # EDEADLK from the kernel, say: the test sees the exit
            failed.append(exc)
    threads = [threading.Thread(target=sessions) for _ in range(2)]
    for thread in threads:
        thread.start()
    os.write(started, b"s")
    for thread in threads:
        thread.join()
    os._exit(1 if failed else 0)


def test_a_rewrite_gets_its_turn_under_a_steady_crowd_of_changes(table, tmp_path):
    """Worker 1's rewrite of the node's reservations took the gate without waiting and
    skipped its turn while any change of any worker was between its two steps: under a
    steady crowd of uploads it ran 4 times in 12 s (bench/quota_cluster.py), so a
    reservation lost by a dead worker stayed counted in Redis until the crowd paused. Three
    forked workers, two sessions each, change the reservations without pause while this
    process (worker 1, with a crowd of its own) rewrites five times: every rewrite runs,
    and no change fails (the kernel finds no cycle of waits, EDEADLK)."""
    kept = home(31, 1)
    started, started_end = os.pipe()
    stop, stop_end = os.pipe()
    children = []
    for _ in range(3):
        child = os.fork()
        if child == 0:
            crowd(table, kept, started_end, stop)
        children.append(child)
    mine = threading.Thread(target=crowd_thread, args=(table, kept, stop))
    ran = []
    try:
        for _ in children:
            assert os.read(started, 1) == b"s"
        mine.start()
        for _ in range(5):
            ran.append(table.publish([kept.ident], False, lambda held, _: True))
    finally:
        os.write(stop_end, b"x")  # readable for every process from now on
        if mine.ident is not None:
            mine.join()
        codes = [os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) for child in children]
        for end in (started, started_end, stop, stop_end):
            os.close(end)
    assert ran == [True] * 5
    assert codes == [0, 0, 0]


def crowd_thread(table: UsageTable, kept: Home, stop: int) -> None:
    """This process's own session changing the reservations until ``stop`` is readable."""
    while not select.select([stop], [], [], 0)[0]:
        with table.changing():
            table.reserve([kept], 1, 0)
            table.release([kept], 1, 0)
