"""The transfer engine in-process, in seconds: budget, part plans, fair pools and the upload
lifecycle, against the emulator served from a thread (a real COS-compatible endpoint)."""

from __future__ import annotations

import io
import os
import random
import threading
import time

import pytest

from cosftp_prefork.config.model import GIB, MAX_PARTS, MIB, TransferConfig
from cosftp_prefork.cos.bucket import Bucket, ChunkedBody
from cosftp_prefork.cos.engine import Engine, FairPool, PartPlan, TransferBudget
from cosftp_prefork.cos.parts import MAX_COPY_PART, copy_ranges
from cosftp_prefork.cos.resume import ResumeStore, find_parked
from cosftp_prefork.cos.uploads import SessionUploads, UploadSession, UploadState
from cosftp_prefork.emulator.app import Emulator
from cosftp_prefork.errors import StorageError

from .emulator_proc import sdk_client
from .server_proc import wait_until

BUCKET = "engine-1250000000"


@pytest.fixture(scope="module")
def emu():
    with Emulator(buckets=[BUCKET]) as running:
        yield running


@pytest.fixture(scope="module")
def bucket(emu) -> Bucket:
    return Bucket(sdk_client(emu), BUCKET, emu.region)


@pytest.fixture
def engine():
    running = Engine(memory_limit=4 * MIB, part_threads=4, copy_threads=4)
    yield running
    running.shutdown()


def transfer(**changes) -> TransferConfig:
    values = {"single_file_max_size": GIB, "min_part_size": MIB, "upload_thread_num": 4,
              "resume_ttl": 0, "memory_limit": 4 * MIB, **changes}
    return TransferConfig(**values)


def session(bucket, engine, key, ttl=0, **changes) -> UploadSession:
    config = transfer(resume_ttl=ttl, **changes)
    return SessionUploads(bucket, config, engine, ResumeStore(bucket, ttl, "u")).new(
        f"/{key}", key)


def pending(bucket, key) -> list:
    return [upload for upload in bucket.list_uploads(key) if upload.key == key]


# --- budget


def test_budget_grants_claims_in_arrival_order():
    budget = TransferBudget(3)
    first, second = budget.claim(2), budget.claim(2)
    third = budget.claim(1)  # would fit now, but waits behind the second
    assert first.granted and not second.granted and not third.granted
    budget.release(first)
    assert second.granted and third.granted and budget.in_use == 3


def test_budget_withdrawn_claim_lets_the_next_one_in():
    budget = TransferBudget(2)
    held, waiting, behind = budget.claim(2), budget.claim(2), budget.claim(1)
    budget.release(waiting)
    assert held.granted and not behind.granted
    budget.release(held)
    assert behind.granted and budget.in_use == 1


def test_budget_goes_to_the_account_holding_least_and_forgets_it():
    budget = TransferBudget(3)
    crowd = [budget.claim(1, "crowd") for _ in range(3)]
    waiting = [budget.claim(1, "crowd"), budget.claim(1, "crowd")]
    lone = budget.claim(1, "lone")  # asked last, holds nothing
    budget.release(crowd[0])
    assert lone.granted and not any(claim.granted for claim in waiting)
    budget.release(crowd[1])
    assert waiting[0].granted and not waiting[1].granted
    for claim in [lone, lone, *crowd, *waiting]:  # given back twice: changes nothing
        budget.release(claim)
    assert budget.in_use == 0 and not budget.contended


def test_budget_refuses_a_claim_it_can_never_grant():
    with pytest.raises(ValueError):
        TransferBudget(1).claim(2)


def test_chunked_body_reads_seeks_and_tells_like_a_file():
    chunks = [b"abc", b"", b"defgh", b"ij"]
    body = ChunkedBody(chunks)
    assert len(body) == 10 and body.read(4) == b"abcd" and body.tell() == 4
    assert body.read(100) == b"efghij" and body.read(5) == b""
    assert body.seek(2) == 2 and body.read() == b"cdefghij"
    assert body.seek(-3, io.SEEK_END) == 7 and body.read(2) == b"hi"


# --- part plans


@pytest.mark.parametrize("min_part,max_size,cap", [
    (2 * MIB, 200 * GIB, 128 * MIB), (MIB, GIB, 2 * MIB), (2 * MIB, 200 * GIB, 32 * MIB),
    (5 * MIB, 48 * 1024 * GIB, 5 * GIB), (MIB, 10 * MIB, 8 * MIB)])
def test_plan_starts_small_and_holds_the_largest_file(min_part, max_size, cap):
    plan = PartPlan.for_upload(min_part, max_size, cap)
    sizes = [plan.size(n) for n in range(1, MAX_PARTS + 1)]
    assert sizes[0] == min_part and max(sizes) <= cap
    assert sizes == sorted(sizes) and all(size >= min_part for size in sizes)
    assert sum(sizes) == plan.capacity() >= max_size


def test_plan_follows_the_size_allo_announced():
    plan = PartPlan.for_upload(2 * MIB, 200 * GIB, 128 * MIB, announced=100 * GIB)
    flat = [plan.size(n) for n in range(1, plan.flat + 1)]
    assert set(flat) == {12 * MIB} and sum(flat) >= 100 * GIB  # uniform, and few of them
    assert plan.capacity() >= 200 * GIB  # bytes beyond the announced size still fit


# --- fair pool


def test_pool_serves_owners_in_turn():
    pool = FairPool(1, "test")
    gate, order = threading.Event(), []
    pool.submit("hog", gate.wait)
    futures = [pool.submit("hog", order.append, f"hog{n}") for n in range(5)]
    futures.append(pool.submit("other", order.append, "other"))
    gate.set()
    for future in futures:
        future.result(timeout=10)
    pool.shutdown()
    assert order.index("other") <= 1


def test_pool_bounds_the_tasks_of_one_owner():
    pool = FairPool(4, "test", per_owner=2)
    running, peak, lock = [0], [0], threading.Lock()

    def task():
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1

    lone = pool.submit("other", time.sleep, 0)
    for future in [pool.submit("rename", task) for _ in range(12)]:
        future.result(timeout=10)
    lone.result(timeout=10)
    pool.shutdown()
    assert peak[0] == 2


# --- upload lifecycle


def test_upload_streams_parts_within_the_budget(bucket, engine):
    upload = session(bucket, engine, "budget.bin")
    data, peak = os.urandom(9 * MIB + 5), 0
    for offset in range(0, len(data), 256 * 1024):
        upload.write(data[offset:offset + 256 * 1024])
        peak = max(peak, engine.budget.in_use)
    upload.commit()
    upload.close()
    assert upload.state is UploadState.COMMITTED
    assert bucket.read_small("budget.bin", len(data)) == data
    assert peak <= engine.budget.limit and engine.budget.in_use == 0
    assert pending(bucket, "budget.bin") == []


def test_small_upload_is_one_put_and_gives_its_buffer_back(bucket, engine):
    upload = session(bucket, engine, "small.txt")
    upload.write(b"hello")
    assert upload.state is UploadState.STREAMING
    upload.commit()
    assert bucket.head("small.txt").etag.count("-") == 0
    assert engine.budget.in_use == 0


def test_room_is_zero_while_the_budget_is_taken(bucket, engine):
    hog = engine.budget.claim(engine.budget.limit)
    upload = session(bucket, engine, "waits.bin")
    assert upload.room() == 0
    engine.budget.release(hog)
    assert upload.room() == MIB
    upload.write(os.urandom(MIB))
    upload.commit()
    assert bucket.head("waits.bin").size == MIB


def test_write_waits_for_a_buffer_instead_of_failing(bucket, engine):
    hog = engine.budget.claim(engine.budget.limit)
    upload = session(bucket, engine, "blocked.bin")
    writer = threading.Thread(target=upload.write, args=(os.urandom(3 * MIB),))
    writer.start()
    time.sleep(0.2)  # not synchronisation: the claim is what the writer waits for
    assert writer.is_alive() and upload.size == 0
    engine.budget.release(hog)
    writer.join(timeout=30)
    upload.commit()
    assert bucket.head("blocked.bin").size == 3 * MIB


def test_close_without_commit_aborts_and_frees_everything(bucket, engine):
    upload = session(bucket, engine, "aborted.bin")
    upload.write(os.urandom(3 * MIB))
    upload.close()
    assert upload.state is UploadState.ABORTED
    assert pending(bucket, "aborted.bin") == [] and engine.budget.in_use == 0
    with pytest.raises(StorageError):
        bucket.head("aborted.bin")


def test_broken_upload_is_parked_and_cancelled_one_is_not(bucket, engine):
    broken = session(bucket, engine, "parked.bin", ttl=3600)
    broken.write(os.urandom(3 * MIB))
    wait_until(lambda: engine.budget.in_use <= MIB, what="two parts acknowledged")
    broken.close()
    assert broken.state is UploadState.PARKED
    parked = find_parked(bucket, "parked.bin", 3600, "u")
    assert parked is not None and parked.size == 2 * MIB
    cancelled = session(bucket, engine, "cancelled.bin", ttl=3600)
    cancelled.write(os.urandom(3 * MIB))
    cancelled.cancel()
    cancelled.close()
    assert cancelled.state is UploadState.ABORTED and pending(bucket, "cancelled.bin") == []


def test_resumed_upload_continues_the_parked_parts(bucket, engine):
    data = os.urandom(5 * MIB + 7)
    first = session(bucket, engine, "resumed.bin", ttl=3600)
    first.write(data[:3 * MIB])
    wait_until(lambda: engine.budget.in_use <= MIB, what="two parts acknowledged")
    first.close()
    uploads = SessionUploads(bucket, transfer(resume_ttl=3600), engine,
                             ResumeStore(bucket, 3600, "u"))
    parked = find_parked(bucket, "resumed.bin", 3600, "u")
    second = uploads.at_offset("/resumed.bin", "resumed.bin", None, parked.size)
    assert second.state is UploadState.RESUME
    second.write(data[parked.size:])
    second.commit()
    assert bucket.read_small("resumed.bin", len(data)) == data


def test_full_buffers_are_shipped_before_waiting_so_uploads_cannot_deadlock(bucket, engine):
    """Four uploads fill the four buffers of the budget; asked for room, each ships its full
    part before it claims the next buffer, so every one of them gets room again."""
    uploads = [session(bucket, engine, f"crowd-{n}.bin") for n in range(4)]
    for upload in uploads:
        assert upload.room() == MIB
        upload.write(os.urandom(MIB))
    assert engine.budget.in_use == engine.budget.limit
    # Every upload is asked each round (a list, not a generator): each claims in turn.
    wait_until(lambda: all([upload.room() > 0 for upload in uploads]), timeout=30,  # noqa: C419
               what="room for every upload")
    for upload in uploads:
        upload.write(os.urandom(MIB))
        upload.commit()
        assert upload.state is UploadState.COMMITTED
    assert engine.budget.in_use == 0


def test_commit_is_the_only_way_to_an_object_and_happens_once(bucket, engine):
    upload = session(bucket, engine, "once.bin")
    upload.write(b"x" * 10)
    upload.commit()
    with pytest.raises(ValueError):
        upload.commit()
    with pytest.raises(ValueError):
        upload.write(b"more")


def test_part_failure_aborts_and_frees_the_budget(emu, bucket, engine):
    upload = session(bucket, engine, "fails.bin")
    emu.app.faults.update({"error_rate": 1.0})
    try:
        with pytest.raises(StorageError):
            for _ in range(8):
                upload.write(os.urandom(MIB))
            upload.commit()
    finally:
        emu.app.faults.update({"error_rate": 0.0})
    upload.close()
    wait_until(lambda: engine.budget.in_use == 0, what="buffers given back")
    assert upload.state is UploadState.ABORTED


def test_parts_retried_after_503s_are_sent_whole(emu, bucket):
    """One part thread, so the seeded faults fall on the same requests every run."""
    serial = Engine(memory_limit=4 * MIB, part_threads=1, copy_threads=1)
    data = os.urandom(8 * MIB + 1)
    upload = session(bucket, serial, "retried.bin")
    emu.app.faults.random = random.Random(3)
    emu.app.faults.update({"error_rate": 0.3})
    try:
        upload.write(data)
        upload.commit()
    finally:
        emu.app.faults.update({"error_rate": 0.0})
        serial.shutdown()
    assert bucket.read_small("retried.bin", len(data)) == data


def test_kept_bodies_are_bounded_and_given_back_when_dropped():
    """The bytes kept for a rename right after a STOR: a file is kept only while it fits in
    the worker's limit, and counts until it is released or the last reference to it is
    gone, whichever comes first."""
    kept = Engine(memory_limit=8 * 1024, part_threads=1, copy_threads=1).kept
    assert kept.limit == 1024
    first = kept.keep(b"a" * 600)
    assert first is not None and first.body == b"a" * 600 and kept.in_use == 600
    assert kept.keep(b"b" * 600) is None  # would pass the limit: not kept
    second = kept.keep(b"c" * 424)
    assert second is not None and kept.in_use == 1024
    del first
    assert kept.in_use == 424
    assert kept.keep(b"d" * 600) is not None  # dropped at once: its room is free again
    second.release()  # given back while something still refers to it
    assert kept.in_use == 0 and second.body == b""
    second.release()
    del second
    assert kept.in_use == 0  # once only


@pytest.mark.parametrize("size", [MIB, 5 * GIB, 5 * GIB + 100, 10 * GIB + MIB - 1, 48 * GIB + 7])
def test_an_appes_copied_ranges_make_parts_cos_takes(size):
    """An APPE onto a file just over a multiple of 5 GiB copied it in ranges of 5 GiB: the
    tail became a part under COS's 1 MiB smallest, which no completion takes."""
    ranges = copy_ranges(size)
    assert ranges[0][0] == 0 and ranges[-1][1] == size - 1
    assert all(last + 1 == first for (_, last), (first, _) in zip(ranges, ranges[1:]))
    assert all(last - first + 1 <= MAX_COPY_PART for first, last in ranges)
    assert all(last - first + 1 >= MIB for first, last in ranges)
    assert len(ranges) == -(-size // MAX_COPY_PART)
