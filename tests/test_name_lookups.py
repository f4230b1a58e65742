"""A new file's look-ups sent and read by its session's own thread (cos/naming.py): what they
may hold while the bytes arrive."""

from __future__ import annotations

import io

import pytest

from .conftest import ALPHA, _close
from .emulator_proc import EmulatorProcess
from .server_proc import Account, ServerProcess, wait_until

SESSIONS = 12
LOOKUP_THREADS = 4  # copy_thread_num 4: the look-up pool's threads, and the slots


@pytest.fixture
def own_emulator():
    """An emulator for this test alone: the connections it counts are this server's."""
    emulator = EmulatorProcess(buckets=[ALPHA]).start()
    yield emulator
    emulator.stop()


def test_stalled_uploads_hold_no_more_cos_connections_than_the_lookup_threads(
        own_emulator, tmp_path, area):
    """Each session's look-ups keep a COS connection until its thread reads the answer, at
    the next bytes or the end of the file. Uploads that send nothing keep them: past as many
    look-ups as the worker's look-up threads, the others run on its pool, so a crowd of
    stalled uploads opens no more connections than the pool would (was one each)."""
    emulator, cos = own_emulator, own_emulator.client()
    with ServerProcess(str(tmp_path), emulator.port, [Account("alice", "alice-pw", ALPHA)],
                       optional={"worker_processes": "1",
                                 "copy_thread_num": str(LOOKUP_THREADS)}) as server:
        sessions = [server.login("alice", "alice-pw") for _ in range(SESSIONS)]
        try:
            for ftp in sessions:
                ftp.voidcmd("TYPE I")
            sessions[0].storbinary(f"STOR {area}/warm", io.BytesIO(b"w"))
            emulator.requests(reset=True)
            asked = 0  # the test's own questions to the emulator: a connection each

            def lookups_answered() -> bool:
                nonlocal asked
                asked += 1
                return emulator.requests(contains=area).get("LIST", 0) == 2 * SESSIONS
            before = emulator.connections()["accepted"]
            channels = [ftp.transfercmd(f"STOR {area}/f{number}")
                        for number, ftp in enumerate(sessions)]
            wait_until(lookups_answered, what="every look-up answered")
            opened = emulator.connections()["accepted"] - before - asked - 1
            # The slots' connections, and those of the pool's threads.
            assert opened <= 2 * LOOKUP_THREADS, opened
            for number, channel in enumerate(channels):
                channel.sendall(b"data %d" % number)
                channel.close()
            for ftp in sessions:
                assert ftp.voidresp().startswith("226")
        finally:
            for ftp in sessions:
                _close(ftp)
    for number in range(SESSIONS):
        body = cos.get_object(Bucket=ALPHA, Key=f"{area}/f{number}")["Body"]
        assert body.get_raw_stream().read() == b"data %d" % number

