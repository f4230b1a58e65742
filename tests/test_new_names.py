"""A new file's name decided while its bytes arrive, stored beside its look-ups, and renames
right after the session's own STOR (issue 21): every rule of issue 13 under these paths,
with the emulator's rendezvous forcing the interleavings (cos/naming.py)."""

from __future__ import annotations

import contextlib
import ftplib
import os
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import ALPHA, _close
from .server_proc import Account, ServerProcess
from .test_commands import get, put
from .test_transfers import PART, pending_uploads

STAMP = "20200102030405"


def exists(cos, key: str, bucket: str = ALPHA) -> bool:
    return cos.object_exists(Bucket=bucket, Key=key)


def content(cos, key: str, bucket: str = ALPHA) -> bytes:
    return cos.get_object(Bucket=bucket, Key=key)["Body"].get_raw_stream().read()


def together(emulator, contains: str, parties: int) -> None:
    """Hold the first ``parties`` requests naming ``contains`` until all are in flight."""
    emulator.rendezvous(contains=contains, parties=parties, timeout=20)


def met(emulator, parties: int) -> None:
    state = emulator.rendezvous()
    assert (state["passed"], state["broken"]) == (parties, 0), state


def outcome(ftp: ftplib.FTP, path: str, data: bytes) -> str:
    """The final reply of ``STOR path`` (226 or the refusal)."""
    try:
        return put(ftp, path, data)
    except ftplib.Error as exc:
        return str(exc)


@pytest.fixture
def other(server):
    ftp = server.login("alice", "alice-pw")
    yield ftp
    _close(ftp)


# --- a name the look-ups refuse, found after the speculative PUT


@pytest.mark.parametrize("where, stored, why", [
    ("directory", "d", "550 Is a directory"),
    ("file in the path", "f/x", "550 Not a directory"),
])
def test_a_refused_name_undoes_what_was_stored_beside_its_look_ups(alice, area, cos, emulator,
                                                                  where, stored, why):
    """Its PUT was in flight with the look-ups (the rendezvous holds them until it came), so
    COS stored it; the refusal deletes it again before the 550: nothing stays, and the
    directory or file that made the name unstorable is untouched."""
    cos.put_object(Bucket=ALPHA, Key=f"{area}/d/inner", Body=b"inner")
    cos.put_object(Bucket=ALPHA, Key=f"{area}/f", Body=b"a file")
    emulator.requests(reset=True)
    together(emulator, f"{area}/{stored}", 2)
    with pytest.raises(ftplib.error_perm, match=why):
        put(alice, f"{area}/{stored}", b"refused")
    met(emulator, 2)
    assert emulator.requests(contains=f"{area}/{stored}")["DELETE"] == 1  # the undo
    assert not exists(cos, f"{area}/{stored}")
    assert content(cos, f"{area}/d/inner") == b"inner" and content(cos, f"{area}/f") == b"a file"
    assert sorted(alice.nlst(area)) == ["d", "f"]


def test_a_look_up_that_fails_undoes_the_speculative_put(alice, area, cos, emulator):
    """COS refuses the listing of ``name/`` (credentials limited to some prefixes): the
    name cannot be checked, so what was stored beside the look-ups goes again; 451."""
    alice.mkd(area)
    emulator.set_faults(deny_prefix=f"{area}/new/")
    try:
        together(emulator, f"{area}/new", 2)
        with pytest.raises(ftplib.error_temp, match="451"):
            put(alice, f"{area}/new", b"unchecked")
        met(emulator, 2)
    finally:
        emulator.set_faults(deny_prefix="")
    assert not exists(cos, f"{area}/new")


def test_a_large_upload_onto_a_directory_stops_at_the_refusal(alice, area, cos):
    """A multipart upload's look-ups answer long before its end: the refusal stops the
    transfer (the server may close the data connection while the client still sends), the
    upload is aborted, nothing is parked."""
    alice.mkd(area)
    alice.mkd(f"{area}/dir")
    alice.voidcmd("TYPE I")
    conn = alice.transfercmd(f"STOR {area}/dir")
    with contextlib.suppress(OSError):
        for _ in range(6):
            conn.sendall(os.urandom(PART))
    conn.close()
    with pytest.raises(ftplib.error_perm, match="550 Is a directory"):
        alice.voidresp()
    assert not exists(cos, f"{area}/dir") and not pending_uploads(cos, f"{area}/dir")
    assert alice.nlst(area) == ["dir"]


# --- hostile interleavings


def test_two_sessions_storing_one_new_name_at_once_both_store(alice, other, area, cos,
                                                             emulator):
    """Both PUTs in flight at once: COS takes one (its key was free) and refuses the other
    (409), which is then an overwrite, once its look-ups allowed the name: both 226, the
    file holds one of the two, whole."""
    alice.mkd(area)
    emulator.requests(reset=True)
    together(emulator, f"{area}/same", 4)  # the name's look-up and the PUT of each
    with ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(outcome, [alice, other], [f"{area}/same"] * 2,
                                [b"alice's", b"the other's"]))
    met(emulator, 4)
    assert [reply[:3] for reply in replies] == ["226", "226"], replies
    assert content(cos, f"{area}/same") in (b"alice's", b"the other's")
    assert emulator.requests(contains=f"{area}/same")["PUT"] == 3


def test_two_sessions_storing_one_name_of_a_directory_leave_nothing(alice, other, area, cos,
                                                                   emulator):
    """Same, onto a directory: one speculative PUT is taken and undone, the other is
    refused (409) and, its look-ups refusing the name too, never sent again: both 550."""
    cos.put_object(Bucket=ALPHA, Key=f"{area}/same/inner", Body=b"inner")
    emulator.requests(reset=True)
    together(emulator, f"{area}/same", 4)
    with ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(outcome, [alice, other], [f"{area}/same"] * 2,
                                [b"alice's", b"the other's"]))
    met(emulator, 4)
    assert all("550 Is a directory" in reply for reply in replies), replies
    assert not exists(cos, f"{area}/same")
    counts = emulator.requests(contains=f"{area}/same")
    # Both PUTs at once: one is taken, the other refused (409) unless the first one's undo
    # came first, which the second then undoes too.
    assert counts["PUT"] == 2 and counts["DELETE"] in (1, 2), counts


@pytest.mark.parametrize("made", ["name/", "a file at the parent"])
def test_what_another_writer_makes_during_the_look_ups_and_the_put(alice, area, cos,
                                                                   emulator, made):
    """Another tool creates ``name/x`` (or a file where the parent directory would be)
    while the STOR's look-ups and PUT are in flight: all of them released at once, in any
    order. Whichever way it goes, the reply says what is stored: 226 and the file, or 550
    and nothing (a speculative object undone). Never 550 with the file left, or 226
    without it."""
    parent = f"{area}/p"
    alice.mkd(area)
    name = f"{parent}/name"
    theirs = f"{name}/x" if made == "name/" else parent
    for attempt in range(3):
        cos.delete_object(Bucket=ALPHA, Key=theirs)
        together(emulator, parent, 4)  # the two look-ups, the PUT and the other writer's
        with ThreadPoolExecutor(2) as pool:
            stored = pool.submit(outcome, alice, name, b"mine %d" % attempt)
            pool.submit(cos.put_object, Bucket=ALPHA, Key=theirs, Body=b"theirs").result()
            reply = stored.result()
        assert emulator.rendezvous()["broken"] == 0
        if reply.startswith("226"):
            assert content(cos, name) == b"mine %d" % attempt
        else:
            assert reply.startswith("550"), reply
            assert not exists(cos, name)
        assert content(cos, theirs) == b"theirs"
        cos.delete_object(Bucket=ALPHA, Key=name)


# --- buckets that keep versions, and accounts that need existing directories


def refused_before_any_put(ftp: ftplib.FTP, emulator, path: str) -> None:
    """STOR onto the directory ``path`` is refused, its look-ups waited for: no PUT."""
    emulator.requests(reset=True)
    with pytest.raises(ftplib.error_perm, match="550 Is a directory"):
        put(ftp, path, b"would have replaced the old file")
    assert "PUT" not in emulator.requests(contains=path)


@pytest.fixture(scope="module")
def versioned(emulator, cos, tmp_path_factory):
    """A server on a bucket whose versioning is enabled (COS then ignores
    x-cos-forbid-overwrite): it never stores before the look-ups."""
    bucket = f"versioned{uuid.uuid4().hex[:6]}-1250000000"
    cos.create_bucket(Bucket=bucket)
    cos.put_bucket_versioning(Bucket=bucket, Status="Enabled")
    proc = ServerProcess(str(tmp_path_factory.mktemp("versioned")), emulator.port,
                         [Account("v", "v-pw", bucket)],
                         optional={"max_login_failures": "0", "worker_processes": "1"})
    proc.start()
    yield proc, bucket
    proc.stop()


def test_a_bucket_that_keeps_versions_gets_no_store_before_the_look_ups(versioned, area, cos,
                                                                       emulator):
    server, bucket = versioned
    cos.put_object(Bucket=bucket, Key=f"{area}/f", Body=b"old")
    cos.put_object(Bucket=bucket, Key=f"{area}/f/x", Body=b"under it")
    ftp = server.login("v", "v-pw")
    try:
        put(ftp, f"{area}/new", b"new")  # the first STOR asks the bucket's versioning status
        refused_before_any_put(ftp, emulator, f"{area}/f")
    finally:
        _close(ftp)
    assert content(cos, f"{area}/f", bucket) == b"old"


def test_versioning_enabled_while_serving_is_undone_by_version(emulator, cos, tmp_path, area):
    """The worker read "never enabled"; versioning is enabled afterwards, so COS stores the
    speculative PUT over the old file (it ignores x-cos-forbid-overwrite now). The PUT's
    answer names a version: the undo deletes that version only, and the old file is back."""
    bucket = f"later{uuid.uuid4().hex[:6]}-1250000000"
    cos.create_bucket(Bucket=bucket)
    with ServerProcess(str(tmp_path), emulator.port, [Account("v", "v-pw", bucket)],
                       optional={"worker_processes": "1"}) as server:
        ftp = server.login("v", "v-pw")
        try:
            # Its look-up held until its speculative PUT is in flight, so that this STOR
            # reads the status (never enabled): look-ups that answer before the last byte
            # store without speculating, and without reading it.
            together(emulator, f"{area}/first", 2)
            put(ftp, f"{area}/first", b"1")
            met(emulator, 2)
            cos.put_bucket_versioning(Bucket=bucket, Status="Enabled")
            cos.put_object(Bucket=bucket, Key=f"{area}/f", Body=b"old")
            cos.put_object(Bucket=bucket, Key=f"{area}/f/x", Body=b"under it")
            together(emulator, f"{area}/f", 2)
            with pytest.raises(ftplib.error_perm, match="550 Is a directory"):
                put(ftp, f"{area}/f", b"speculative")
            met(emulator, 2)
            assert content(cos, f"{area}/f", bucket) == b"old"
            refused_before_any_put(ftp, emulator, f"{area}/f")
        finally:
            _close(ftp)
    assert content(cos, f"{area}/f", bucket) == b"old"


@pytest.fixture(scope="module")
def strict(emulator, tmp_path_factory):
    proc = ServerProcess(str(tmp_path_factory.mktemp("strict")), emulator.port,
                         [Account("strict", "strict-pw", ALPHA, "RW",
                                  extra="require_existing_dir = true")],
                         optional={"max_login_failures": "0", "worker_processes": "1"})
    proc.start()
    yield proc
    proc.stop()


def test_require_existing_dir_never_stores_before_the_look_ups(strict, area, cos, emulator):
    """A speculative object would make a missing directory exist for everyone meanwhile."""
    ftp = strict.login("strict", "strict-pw")
    try:
        emulator.requests(reset=True)
        with pytest.raises(ftplib.error_perm, match="550 No such directory"):
            put(ftp, f"{area}/missing/x", b"x")
        assert "PUT" not in emulator.requests(contains=area)
    finally:
        _close(ftp)
    assert not exists(cos, f"{area}/missing/x")


# --- renames right after the session's own STOR (rclone, WinSCP)


def stor_and_rename(ftp: ftplib.FTP, temporary: str, final: str, data: bytes,
                    mfmt: bool = False) -> None:
    put(ftp, temporary, data)
    if mfmt:
        ftp.sendcmd(f"MFMT {STAMP} {temporary}")
    ftp.sendcmd(f"RNFR {temporary}")
    ftp.sendcmd(f"RNTO {final}")


@pytest.mark.parametrize("mfmt", [False, True])
def test_a_temporary_upload_renamed_into_place(alice, area, cos, mfmt):
    alice.mkd(area)
    put(alice, f"{area}/x", b"the old version")
    stor_and_rename(alice, f"{area}/x.1a2b.partial", f"{area}/x", b"the new version", mfmt)
    assert alice.nlst(area) == ["x"]
    assert get(alice, f"{area}/x") == b"the new version"
    assert not exists(cos, f"{area}/x.1a2b.partial")
    if mfmt:
        assert alice.sendcmd(f"MDTM {area}/x") == f"213 {STAMP}"
        assert {name: facts["modify"] for name, facts in alice.mlsd(area, ["modify"])} == \
            {"x": STAMP}
        markers = cos.list_objects(Bucket=ALPHA, Prefix=f".cosftp/mtime/{area}/")
        assert [m["Key"].split("#")[0] for m in markers["Contents"]] == \
            [f".cosftp/mtime/{area}/x"]


def test_the_sessions_next_listing_waits_for_the_old_name_to_go(alice, area, emulator):
    """The source is deleted after the reply; the rendezvous holds that DELETE (in vain,
    for a few seconds): the NLST sent right after RNTO must still not show the old name."""
    alice.mkd(area)
    put(alice, f"{area}/x.filepart", b"data")
    alice.sendcmd(f"RNFR {area}/x.filepart")
    emulator.rendezvous(contains=f"{area}/x.filepart", kind="DELETE", parties=2, timeout=3)
    alice.sendcmd(f"RNTO {area}/x")
    assert alice.nlst(area) == ["x"]
    assert emulator.rendezvous()["broken"] == 1  # the DELETE was held while NLST waited


@pytest.mark.parametrize("size, expected", [
    # Its bytes kept: stored under the new name beside the HEAD that finds the source
    # changed, then undone; one copy, the general way's.
    (4, {"PUT": 1, "COPY": 1}),
    # Stored in parts (its bytes are not kept): the copy pinned to the STOR's ETag fails
    # (412).
    (PART + 1, {"COPY": 2}),
])
def test_a_source_replaced_before_the_rename_is_renamed_as_it_is_now(alice, other, area, cos,
                                                                    emulator, size, expected):
    """Another session's version of the source: the rename goes the general way, with what
    is there now."""
    alice.mkd(area)
    put(alice, f"{area}/x.partial", b"m" * size)
    put(other, f"{area}/x.partial", b"the other session's")
    alice.sendcmd(f"RNFR {area}/x.partial")
    emulator.requests(reset=True)
    alice.sendcmd(f"RNTO {area}/x")
    counts = emulator.requests(contains=f"{area}/x")
    assert {kind: counts.get(kind, 0) for kind in expected} == expected, counts
    assert content(cos, f"{area}/x") == b"the other session's"
    # The source goes after the reply; the session's next listing waits for it (as in
    # test_a_temporary_upload_renamed_into_place), COS read at once did not.
    assert alice.nlst(area) == ["x"]
    assert not exists(cos, f"{area}/x.partial")


def test_a_source_deleted_before_the_rename_gets_550(alice, other, area, cos):
    """RNFR of the session's own upload asks COS nothing (350); RNTO's pinned copy finds
    nothing, and the general way says so."""
    alice.mkd(area)
    put(alice, f"{area}/x.partial", b"mine")
    other.delete(f"{area}/x.partial")
    alice.sendcmd(f"RNFR {area}/x.partial")
    with pytest.raises(ftplib.error_perm, match="550"):
        alice.sendcmd(f"RNTO {area}/x")
    assert not exists(cos, f"{area}/x")


def test_a_rename_into_another_directory_keeps_the_one_it_left(alice, area, cos):
    """The upload made its directory exist (no marker); once the file moved away, the
    directory it left still lists, as on a disk."""
    put(alice, f"{area}/incoming/x.partial", b"data")
    alice.sendcmd(f"RNFR {area}/incoming/x.partial")
    alice.sendcmd(f"RNTO {area}/x")
    assert alice.nlst(area) == ["incoming", "x"]
    alice.cwd(f"{area}/incoming")
    assert alice.nlst() == []


def test_a_rename_of_the_own_upload_onto_a_directory_is_refused(alice, area, cos, emulator):
    """Its bytes were stored under the new name beside the look-ups (the rendezvous holds
    them until all four are in flight); the refusal undoes that object before the 550.
    (Onto a file without delete permission: test_names' rename that must not overwrite,
    which renames the session's own upload too.)"""
    alice.mkd(area)
    alice.mkd(f"{area}/dir")
    put(alice, f"{area}/x.partial", b"data")
    alice.sendcmd(f"RNFR {area}/x.partial")
    emulator.requests(reset=True)
    together(emulator, area, 4)
    with pytest.raises(ftplib.error_perm, match="550 Target is a directory"):
        alice.sendcmd(f"RNTO {area}/dir")
    met(emulator, 4)
    assert emulator.requests(contains=f"{area}/dir") == {"PUT": 1, "LIST": 1, "DELETE": 1}
    assert not exists(cos, f"{area}/dir")
    assert content(cos, f"{area}/x.partial") == b"data"
    assert alice.nlst(area) == ["dir", "x.partial"]


def test_a_source_given_another_time_before_the_rename_keeps_that_time(alice, other, area):
    """Another session's MFMT of the source after this session's: the same bytes, another
    time. The HEAD beside the new name's PUT sees it; that object is undone and the rename
    goes the general way, which carries the other session's time."""
    alice.mkd(area)
    put(alice, f"{area}/x.partial", b"mine")
    alice.sendcmd(f"MFMT {STAMP} {area}/x.partial")
    other.sendcmd(f"MFMT 20210102030405 {area}/x.partial")
    alice.sendcmd(f"RNFR {area}/x.partial")
    alice.sendcmd(f"RNTO {area}/x")
    assert alice.sendcmd(f"MDTM {area}/x") == "213 20210102030405"
    assert {name: facts["modify"] for name, facts in alice.mlsd(area, ["modify"])} == \
        {"x": "20210102030405"}


def test_another_writer_of_the_new_name_during_the_rename(alice, area, cos, emulator):
    """Another tool stores the new name while the rename's PUT and look-ups are in flight,
    all released at once, in any order: its object comes first (the rename's PUT is
    refused, a copy replaces it) or last (it replaces the renamed one). Either way the
    rename answers 250, the old name is gone and the new one holds one of the two: nothing
    of the rename is undone, and no write is lost but by a later one."""
    alice.mkd(area)
    for attempt in range(3):
        mine = b"mine %d" % attempt
        put(alice, f"{area}/x.partial", mine)
        alice.sendcmd(f"RNFR {area}/x.partial")
        together(emulator, area, 5)  # the PUT, its look-ups and the other writer's PUT
        with ThreadPoolExecutor(2) as pool:
            renamed = pool.submit(alice.sendcmd, f"RNTO {area}/x")
            pool.submit(cos.put_object, Bucket=ALPHA, Key=f"{area}/x", Body=b"theirs").result()
            assert renamed.result().startswith("250")
        assert emulator.rendezvous()["broken"] == 0
        assert content(cos, f"{area}/x") in (mine, b"theirs")
        assert alice.nlst(area) == ["x"]
        cos.delete_object(Bucket=ALPHA, Key=f"{area}/x")


def test_no_rename_stores_before_its_look_ups_where_cos_would_not_refuse_it(
        versioned, strict, area, cos, emulator):
    """A bucket that keeps versions (COS ignores x-cos-forbid-overwrite there: the PUT
    could replace a file) and an account that needs existing directories rename their own
    upload the copy way: look-ups first."""
    for server, user in ((versioned[0], "v"), (strict, "strict")):
        ftp = server.login(user, f"{user}-pw")
        try:
            ftp.mkd(area)
            put(ftp, f"{area}/x.partial", b"data")
            ftp.sendcmd(f"RNFR {area}/x.partial")
            emulator.requests(reset=True)
            ftp.sendcmd(f"RNTO {area}/x")
            counts = emulator.requests(contains=area)
            assert counts.get("COPY") == 1 and "PUT" not in counts, counts
            assert ftp.nlst(area) == ["x"]
        finally:
            _close(ftp)



def test_a_rename_whose_new_object_fails_its_crc64_check(alice, area, cos, emulator):
    """The bytes stored again under the new name are checked as the STOR's were: COS
    reporting another CRC64 for them answers 451, and neither the new object nor anything
    of the old name is lost."""
    alice.mkd(area)
    put(alice, f"{area}/x.partial", b"data")
    alice.sendcmd(f"RNFR {area}/x.partial")
    emulator.set_faults(corrupt_crc=True)
    try:
        with pytest.raises(ftplib.error_temp, match="451"):
            alice.sendcmd(f"RNTO {area}/x")
    finally:
        emulator.set_faults(corrupt_crc=False)
    assert not exists(cos, f"{area}/x")
    assert content(cos, f"{area}/x.partial") == b"data"
