"""Sessions changing the same files at once (issue 20's probes): a directory rename that
another one overlaps, seen through a real server, real FTP clients and the emulator."""

from __future__ import annotations

import ftplib
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import ALPHA, TWO_WORKERS
from .emulator_proc import EmulatorProcess, all_keys
from .server_proc import Account, ServerProcess, wait_until

ACCOUNTS = [Account("alice", "alice-pw", ALPHA), Account("carol", "carol-pw", ALPHA)]


@pytest.fixture
def slow_emulator():
    """An emulator of its own: latency applies to every request it serves."""
    emu = EmulatorProcess(buckets=[ALPHA])
    emu.start()
    yield emu
    emu.stop()


# What the second session renames while the first moves {a}/d to {a}/e.
RIVALS = {"the same directory": ("{a}/d", "{a}/x"),
          "a directory inside it": ("{a}/d/sub", "{a}/y"),
          "the directory around it": ("{a}", "{a}-2")}


@pytest.mark.parametrize("rival", RIVALS.values(), ids=RIVALS.keys())
def test_a_directory_rename_overlapping_a_running_one_gets_450(slow_emulator, tmp_path, area,
                                                               rival):
    """Two renames of one directory at once both answered 250 and left every key in both
    new places (found: 2,000 keys, two users); one inside or around a running rename would
    copy its half-moved keys. The later one is refused with 450 and nothing of it moves;
    a rename of another directory goes ahead meanwhile."""
    cos = slow_emulator.client()
    moved = [f"{area}/d/{n:03}" for n in range(150)] + [f"{area}/d/sub/{n:03}" for n in range(150)]
    free = [f"{area}/free/{n}" for n in range(3)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: cos.put_object(Bucket=ALPHA, Key=key, Body=b"k"),
                      moved + free))
    # Two workers: the rival renames may run in different processes, as two users' do.
    with ServerProcess(str(tmp_path), slow_emulator.port, ACCOUNTS,
                       optional=TWO_WORKERS) as server:
        first, second = (server.login(user, f"{user}-pw", timeout=300)
                         for user in ("alice", "carol"))
        slow_emulator.set_faults(latency_ms=50)
        replies: list[str] = []

        def rename() -> None:
            try:
                replies.append(first.rename(f"{area}/d", f"{area}/e"))
            except ftplib.Error as exc:
                replies.append(str(exc))

        renaming = threading.Thread(target=rename)
        renaming.start()
        wait_until(lambda: slow_emulator.requests(contains=f"{area}/").get("COPY", 0) > 5,
                   timeout=60, what="the first rename copying")
        source, target = (path.format(a=area) for path in rival)
        with pytest.raises(ftplib.error_temp, match=r"^450 .*being renamed"):
            second.rename(source, target)
        assert second.rename(f"{area}/free", f"{area}/freed").startswith("250")
        still_renaming = renaming.is_alive()
        renaming.join(timeout=300)
        slow_emulator.set_faults(latency_ms=0)
        first.quit()
        second.quit()
    assert still_renaming, "the first rename ended too soon: nothing overlapped"
    assert replies and replies[0].startswith("250")
    found = Counter(all_keys(cos, ALPHA, area))
    assert found == Counter([key.replace(f"{area}/d/", f"{area}/e/") for key in moved] +
                            [key.replace("/free/", "/freed/") for key in free])
