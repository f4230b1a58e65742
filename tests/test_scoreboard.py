"""The session table's index (what admitting a connection reads instead of every row):
its counts always agree with the rows."""

from __future__ import annotations

import random
from collections import Counter

from cosftp_prefork.server.scoreboard import (
    PENDING,
    TOO_MANY_PER_IP,
    TOO_MANY_PRELOGIN_PER_IP,
    Limits,
    SharedState,
)

WORDS = 6  # per session row: pid, kind, address (4)


def rows_of(state: SharedState) -> list[int]:
    with state._sessions_locked() as words:
        return words.tolist()


def brute_counts(state: SharedState) -> tuple[Counter, Counter]:
    """Rows and pending rows per address, by scanning every row."""
    flat, total, pending = rows_of(state), Counter(), Counter()
    for at in range(0, len(flat), WORDS):
        if flat[at]:
            key = tuple(flat[at + 2:at + WORDS])
            total[key] += 1
            pending[key] += flat[at + 1] == PENDING
    return total, pending


def test_the_index_agrees_with_the_rows_through_random_traffic(tmp_path):
    state = SharedState.create(str(tmp_path / "state"))
    chooser = random.Random(7)
    # Few addresses, so their slots collide and deletions move neighbours back.
    addresses = [f"10.0.0.{i}" for i in range(40)] + [f"2001:db8::{i:x}" for i in range(40)]
    live: dict[int, int] = {}  # row -> pid
    for _ in range(6000):
        action = chooser.random()
        if action < 0.5 or not live:
            pid = 100 + chooser.randrange(3)
            row, reason = state.admit(pid, chooser.choice(addresses), Limits())
            assert reason is None and row not in live
            live[row] = pid
        elif action < 0.6:
            row = chooser.choice(list(live))
            assert state.log_in(row, live[row], 0) is None
        elif action < 0.7:  # a new login in a logged-in session (USER, REIN)
            row = chooser.choice(list(live))
            assert state.log_out(row, live[row], Limits()) is None
        elif action < 0.8:  # a balancer's connection, once its PROXY header came
            row = chooser.choice(list(live))
            assert state.move(row, live[row], chooser.choice(addresses), Limits()) is None
        else:
            row = chooser.choice(list(live))
            state.release(row, live.pop(row))
    total, pending = brute_counts(state)
    with state._sessions_and_index() as (_rows, index):
        for key in total:
            assert index.counts_of(key) == (total[key], pending[key])
        assert index.pending == sum(pending.values())
        assert index.logged_in == sum(total.values()) - sum(pending.values())
    assert sum(state.release_all(pid) for pid in (100, 101, 102)) == len(live)
    with state._sessions_and_index() as (_rows, index):
        assert (index.pending, index.logged_in, index.full) == (0, 0, False)
        assert all(index.counts_of(key) == (0, 0) for key in total)
    state.close()


def test_per_address_limits_count_only_that_address(tmp_path):
    state = SharedState.create(str(tmp_path / "state"))
    limits = Limits(per_ip=3, prelogin_per_ip=2)
    first, _ = state.admit(1, "192.0.2.1", limits)
    state.admit(1, "192.0.2.1", limits)
    assert state.admit(1, "192.0.2.1", limits) == (None, TOO_MANY_PRELOGIN_PER_IP)
    assert state.admit(1, "192.0.2.2", limits)[1] is None
    state.log_in(first, 1, 0)
    assert state.admit(1, "192.0.2.1", limits)[1] is None
    assert state.admit(1, "192.0.2.1", limits) == (None, TOO_MANY_PER_IP)
    # Logging in again needs one of the address's places not logged in, all taken now.
    assert state.log_out(first, 1, limits) == TOO_MANY_PRELOGIN_PER_IP
    state.close()


def test_a_moved_row_counts_under_its_new_address_only(tmp_path):
    """A balancer's connection, counted under the balancer's address until its PROXY header
    named the client, is then held to the client's per-address limits."""
    state = SharedState.create(str(tmp_path / "state"))
    limits = Limits(prelogin_per_ip=2)
    rows = [state.admit(1, "192.0.2.5", Limits())[0] for _ in range(3)]
    assert state.move(rows[0], 1, "198.51.100.1", limits) is None
    assert state.move(rows[1], 1, "198.51.100.1", limits) is None
    assert state.move(rows[2], 1, "198.51.100.1", limits) == TOO_MANY_PRELOGIN_PER_IP
    total, pending = brute_counts(state)
    with state._sessions_and_index() as (_rows, index):
        assert index.pending == 3
        for key in total:
            assert index.counts_of(key) == (total[key], pending[key])
    assert sorted(state.node_counts()[0].items()) == [("192.0.2.5", 1), ("198.51.100.1", 2)]
    state.close()
