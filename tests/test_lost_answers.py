"""COS carries out an upload's last request and its answer is lost on the way (a connection
reset in mid-answer, a proxy timing out): the gateway cannot tell from the error whether the
object exists, and a retried CompleteMultipartUpload finds NoSuchUpload, because the first
one completed it. The client must hear what COS holds: ``226`` when the name holds exactly
the bytes sent (size and CRC64 read back), else ``451``, and never "nothing stored" for an
object that was stored. The emulator loses the answers (``lose_ops``, ``lose_rate``) or
refuses the requests with COS's 5xx codes (``fail_ops``, ``fail_rate``), with real sessions
of the standard server."""

from __future__ import annotations

import ftplib
import os
from collections.abc import Iterator

import pytest

from cosftp_prefork.cos.calls import RETRY_ATTEMPTS
from cosftp_prefork.cos.naming import UNDO_READ_BACK_ROUNDS

from .conftest import ALPHA
from .emulator_proc import request_log
from .server_proc import Account, ServerProcess, wait_until
from .test_commands import put
from .test_transfers import MIB, PART, pending_uploads


@pytest.fixture
def faults(emulator):
    """Set emulator faults for one test; always switched off afterwards."""
    yield emulator.set_faults
    emulator.set_faults(fail_ops="", fail_rate=0, fail_next=0, lose_ops="", lose_rate=0,
                        lose_next=0, stall_ms=0, drop_ops="", drop_rate=0, drop_next=0)


def stored(cos, key: str) -> bytes:
    """The bytes of ``key`` in COS."""
    return cos.get_object(Bucket=ALPHA, Key=key)["Body"].get_raw_stream().read()


def stored_whole_through(alice: ftplib.FTP, cos, area: str, faults, **fault) -> None:
    """STOR three parts and five bytes to ``area`` with the emulator's ``fault`` set, and
    assert ``226``; with the fault off again, the object holds every byte and no multipart
    upload of it is left."""
    data = os.urandom(3 * PART + 5)
    faults(**fault)
    assert put(alice, area, data).startswith("226")
    faults(**{name: "" if isinstance(value, str) else 0 for name, value in fault.items()})
    assert stored(cos, area) == data
    assert not pending_uploads(cos, area)


def renamed_though_answers_lost(ftp: ftplib.FTP, cos, faults, area: str, operation: str,
                                size: int) -> None:
    """RNFR ``area``-src (``size`` random bytes) and RNTO ``area``-dst while every answer to
    COS's ``operation`` is lost once carried out: the rename is finished (``250``), the new
    name holds the bytes, and the source is gone (the session's SIZE waits for the delete
    after the reply)."""
    data = os.urandom(size)
    cos.put_object(Bucket=ALPHA, Key=f"{area}-src", Body=data)
    faults(lose_ops=operation, lose_rate=1.0)
    assert ftp.sendcmd(f"RNFR {area}-src").startswith("350")
    assert ftp.sendcmd(f"RNTO {area}-dst").startswith("250")
    faults(lose_ops="", lose_rate=0)
    assert stored(cos, f"{area}-dst") == data
    with pytest.raises(ftplib.error_perm, match="550"):
        ftp.size(f"{area}-src")
    assert cos.object_exists(Bucket=ALPHA, Key=f"{area}-src") is False


def test_an_upload_whose_completion_answer_is_lost_gets_226_for_the_object_cos_stored(
        server, alice, area, cos, faults):
    """The answer to CompleteMultipartUpload cut off once COS completed the upload; its
    retries find NoSuchUpload: the object holds every byte sent, so the client gets ``226``
    (it got ``451 … NoSuchUpload …; transfer aborted, nothing stored``), and the log says
    why."""
    stored_whole_through(alice, cos, area, faults, lose_ops="CompleteMultipartUpload",
                         lose_rate=1.0)
    assert f"path=/{area}: COS completed the upload though its answer was lost" in \
        server.log_text()


def test_a_lost_completion_answer_is_no_226_when_cos_cannot_tell_what_it_holds(
        alice, area, faults):
    """The completion's answer lost and the upload gone, and the read-back of the name
    refused too (HEAD answered 500 or 503 at every try): nothing confirms the object, so
    no ``226``; the ``451`` says that it may have been stored (not "nothing stored")."""
    faults(lose_ops="CompleteMultipartUpload", lose_rate=1.0, fail_ops="HeadObject",
           fail_rate=1.0)
    with pytest.raises(ftplib.error_temp,
                       match=r"451 .*NoSuchUpload.*the file may have been stored"):
        put(alice, area, os.urandom(3 * PART + 5))


@pytest.mark.parametrize(("operation", "size"), [
    ("CompleteMultipartUpload", 3 * PART + 5), ("PutObject", 4096)])
def test_an_upload_cos_refuses_to_the_end_gets_451_and_no_object(
        alice, area, cos, faults, operation, size):
    """COS answers every try of the upload's last request with 500 InternalError or 503
    ServiceUnavailable, without carrying it out: ``451``, and the name holds nothing, the
    multipart upload aborted (no read-back may turn a refusal into a ``226``)."""
    faults(fail_ops=operation, fail_rate=1.0)
    with pytest.raises(ftplib.error_temp, match=r"451 .*(InternalError|ServiceUnavailable)"):
        put(alice, area, os.urandom(size))
    faults(fail_ops="", fail_rate=0)
    assert cos.object_exists(Bucket=ALPHA, Key=area) is False
    assert not pending_uploads(cos, area)


def test_a_download_cos_fails_in_mid_stream_is_not_told_nothing_stored(
        alice, area, cos, faults):
    """Every GET's answer cut off half-way (the stream reopened from the byte reached, cut
    again, until the retries are spent): the RETR ends with ``451 …; transfer aborted.``
    (it said "transfer aborted, nothing stored.", the words of a failed upload), fewer
    bytes than the file, and the file stays as it was."""
    data = os.urandom(3 * PART)
    put(alice, area, data)
    faults(lose_ops="GetObject", lose_rate=1.0)
    received = bytearray()
    with pytest.raises(ftplib.error_temp) as failed:
        alice.retrbinary(f"RETR {area}", received.extend)
    faults(lose_ops="", lose_rate=0)
    assert str(failed.value).startswith("451 ") and \
        str(failed.value).endswith("; transfer aborted."), failed.value
    assert len(received) < len(data)
    assert stored(cos, area) == data


def test_a_small_upload_whose_put_answers_are_lost_gets_226_for_the_object_cos_stored(
        server, alice, area, cos, faults):
    """Every answer to the small file's PutObject lost once COS stored it (the speculative
    one, then each try of the plain one after its retry found the object): the name holds
    every byte sent, so the client gets ``226`` (it got ``451 …; transfer aborted, nothing
    stored``), and the log says why."""
    data = os.urandom(4096)
    faults(lose_ops="PutObject", lose_rate=1.0)
    assert put(alice, area, data).startswith("226")
    faults(lose_ops="", lose_rate=0)
    assert stored(cos, area) == data
    assert f"path=/{area}: COS stored the object though its answer was lost" in \
        server.log_text()


def test_a_lost_put_answer_that_cannot_be_read_back_is_not_told_nothing_stored(
        alice, area, faults):
    """The PutObject's answers lost and the read-back refused too (HEAD answered 500 or 503
    at every try): whether COS holds the file is not known, and the ``451`` says so (it said
    "nothing stored", while the object was there, whole)."""
    faults(lose_ops="PutObject", lose_rate=1.0, fail_ops="HeadObject", fail_rate=1.0)
    with pytest.raises(ftplib.error_temp) as failed:
        put(alice, area, os.urandom(4096))
    assert str(failed.value).startswith("451 ") and "nothing stored" not in \
        str(failed.value) and "may have been stored" in str(failed.value), failed.value


def test_a_refused_name_whose_speculative_put_answer_was_lost_leaves_nothing_behind(
        alice, area, cos, emulator, faults):
    """A small STOR onto the name of a directory: its speculative PutObject (sent beside
    the look-ups, ``x-cos-forbid-overwrite``: the rendezvous holds the directory's LIST
    until the PUT is in flight too) stored the object, its answer lost, and the retry found
    that object (409). The look-ups refuse the name: ``550``, and the object the lost PUT
    made is undone like any speculative one (it stayed)."""
    cos.put_object(Bucket=ALPHA, Key=f"{area}/d/inner", Body=b"x")
    faults(lose_ops="PutObject", lose_rate=1.0)
    emulator.rendezvous(contains=f"{area}/d", parties=2, timeout=20)
    with pytest.raises(ftplib.error_perm, match=r"550 Is a directory"):
        put(alice, f"{area}/d", os.urandom(4096))
    faults(lose_ops="", lose_rate=0)
    state = emulator.rendezvous()
    assert (state["passed"], state["broken"]) == (2, 0), state
    assert cos.object_exists(Bucket=ALPHA, Key=f"{area}/d") is False
    assert stored(cos, f"{area}/d/inner") == b"x"


def test_a_refused_names_object_is_undone_once_cos_answers_its_read_back_again(
        alice, area, cos, emulator, faults):
    """As above, and the read-back of the name refused at every try of its HEAD (COS
    failing for a moment), then answered: the read-back is tried again within bounds, finds
    the bytes sent and undoes the object, ``550`` (it got ``226``: the upload's own
    read-back, after the undo's had failed, took the object for the file stored, under a
    directory's name)."""
    cos.put_object(Bucket=ALPHA, Key=f"{area}/d/inner", Body=b"x")
    faults(lose_ops="PutObject", lose_rate=1.0, fail_ops="HeadObject",
           fail_next=RETRY_ATTEMPTS)
    emulator.rendezvous(contains=f"{area}/d", parties=2, timeout=20)
    with pytest.raises(ftplib.error_perm, match=r"550 Is a directory"):
        put(alice, f"{area}/d", os.urandom(4096))
    faults(lose_ops="", lose_rate=0, fail_ops="", fail_next=0)
    assert cos.object_exists(Bucket=ALPHA, Key=f"{area}/d") is False


def test_a_refused_names_object_whose_read_back_fails_to_the_end_is_no_226(
        server, alice, area, cos, emulator, faults):
    """As above, the speculative PutObject's answer lost once COS stored it, and its retries
    lost on their way (``drop_next``: their last error a reset, not the 409 a retry that
    reached COS gets); the undo's read-back refused at every try of every round, then
    answered: whether the refused name holds the bytes is not known, and the ``451`` says
    so (it got ``226``: the upload read back once more what the undo's read-back could not
    tell, found the bytes, and took them for the file stored under a directory's name)."""
    cos.put_object(Bucket=ALPHA, Key=f"{area}/d/inner", Body=b"x")
    data = os.urandom(4096)
    faults(lose_ops="PutObject", lose_next=1, drop_ops="PutObject", drop_next=RETRY_ATTEMPTS,
           fail_ops="HeadObject", fail_next=UNDO_READ_BACK_ROUNDS * RETRY_ATTEMPTS)
    emulator.rendezvous(contains=f"{area}/d", parties=2, timeout=20)
    try:
        reply = put(alice, f"{area}/d", data)
    except ftplib.error_temp as failed:
        reply = str(failed)
    faults(lose_ops="", lose_next=0, drop_ops="", drop_next=0, fail_ops="", fail_next=0)
    assert reply.startswith("451 ") and "may have been stored" in reply, reply
    assert stored(cos, f"{area}/d") == data  # left for the operator, as the log says
    assert f"{area}/d: maybe stored before its name was refused, and the read-back failed" \
        in server.log_text()
    assert stored(cos, f"{area}/d/inner") == b"x"


def test_a_completion_lost_on_its_way_over_the_same_bytes_aborts_the_upload_it_left(
        alice, area, cos, faults):
    """The file is stored again with the bytes it holds, and every try of the completion
    is lost on its way (``drop_ops``: COS completed nothing, the connection reset): the
    read-back finds the bytes sent and answers ``226``, and the multipart upload, which
    still holds its parts, is aborted (it stayed, its parts billed)."""
    data = os.urandom(3 * PART + 5)
    assert put(alice, area, data).startswith("226")
    faults(drop_ops="CompleteMultipartUpload", drop_rate=1.0)
    assert put(alice, area, data).startswith("226")
    faults(drop_ops="", drop_rate=0)
    assert stored(cos, area) == data
    assert not pending_uploads(cos, area)


def test_a_rename_whose_copy_answers_are_lost_is_finished(alice, area, cos, faults):
    """Every answer to the rename's CopyObject lost once COS made the copy: the new name
    holds the source's bytes (its CRC64 read back), so the rename is finished, ``250``, and
    the source is deleted (it got ``451 … storage error (ClientError)`` and left the copy
    beside the source)."""
    renamed_though_answers_lost(alice, cos, faults, area, "CopyObject", 4096)


def test_a_directory_rename_whose_copy_answers_are_lost_is_finished(alice, area, cos,
                                                                    faults):
    """A directory of two small files, every answer to their CopyObjects lost once COS
    made the copies: each new name read back holds its source's bytes, so the directory is
    moved, ``250``, both files under the new name only (it got ``451 … (ClientError); try
    again.``, the copies removed and the directory left where it was)."""
    first, second = os.urandom(4096), b"second"
    cos.put_object(Bucket=ALPHA, Key=f"{area}/d/first", Body=first)
    cos.put_object(Bucket=ALPHA, Key=f"{area}/d/second", Body=second)
    faults(lose_ops="CopyObject", lose_rate=1.0)
    alice.sendcmd(f"RNFR {area}/d")
    assert alice.sendcmd(f"RNTO {area}/e").startswith("250")
    faults(lose_ops="", lose_rate=0)
    assert (stored(cos, f"{area}/e/first"), stored(cos, f"{area}/e/second")) == \
        (first, second)
    assert not cos.list_objects(Bucket=ALPHA, Prefix=f"{area}/d/").get("Contents")


def test_a_rename_cos_refuses_to_the_end_says_what_cos_answered(alice, area, cos, faults):
    """Every try of the rename's copy answered 500 or 503 and not carried out: ``451`` with
    COS's message, as a STOR's says it (it said only ``storage error (InternalError)``), and
    the file stays where it was."""
    data = os.urandom(4096)
    cos.put_object(Bucket=ALPHA, Key=f"{area}-src", Body=data)
    faults(fail_ops="CopyObject", fail_rate=1.0)
    alice.sendcmd(f"RNFR {area}-src")
    with pytest.raises(ftplib.error_temp,
                       match=r"451 .*COS COPY .*failed.*(InternalError|ServiceUnavailable)"):
        alice.sendcmd(f"RNTO {area}-dst")
    faults(fail_ops="", fail_rate=0)
    assert stored(cos, f"{area}-src") == data
    assert cos.object_exists(Bucket=ALPHA, Key=f"{area}-dst") is False


def test_multipart_uploads_started_by_lost_initiate_answers_are_aborted(
        alice, area, cos, faults):
    """Every answer to InitiateMultipartUpload lost once COS started the upload: the STOR
    fails (``451``: its parts had nowhere to go), and the uploads COS started for the name
    at those tries, which the gateway never learned of, are found and aborted (they stayed:
    the janitor takes them for another tool's)."""
    faults(lose_ops="InitiateMultipartUpload", lose_rate=1.0)
    with pytest.raises(ftplib.error_temp, match=r"451 .*InitiateMultipartUpload"):
        put(alice, area, os.urandom(3 * PART + 5))
    faults(lose_ops="", lose_rate=0)
    assert not pending_uploads(cos, area)
    assert cos.object_exists(Bucket=ALPHA, Key=area) is False


def test_an_upload_started_by_a_lost_initiate_answer_is_aborted_once_a_retry_is_answered(
        alice, area, cos, faults):
    """The first InitiateMultipartUpload's answer lost once COS started the upload, the
    retry answered: the file is stored, ``226``, and the upload the first try started,
    which the gateway never heard of, is aborted (it stayed, without parts, the janitor
    taking it for another tool's: 4 in one run of ``bench/chaos.py --cos-faults``)."""
    stored_whole_through(alice, cos, area, faults, lose_ops="InitiateMultipartUpload",
                         lose_next=1)


@pytest.fixture(scope="module")
def copying_server(emulator, tmp_path_factory) -> Iterator[ServerProcess]:
    """A server that renames files over 1 MiB with a multipart copy (Initiate, UploadPartCopy
    per part, Complete), shared by the file's tests (each on keys of its own: ``area``)."""
    with ServerProcess(str(tmp_path_factory.mktemp("copier")), emulator.port,
                       [Account("alice", "alice-pw", ALPHA)],
                       optional={"multipart_copy_threshold": str(MIB)}) as srv:
        yield srv


@pytest.fixture
def copier(copying_server):
    """``copying_server`` and a session of alice's on it, for one test."""
    ftp = copying_server.login("alice", "alice-pw")
    yield copying_server, ftp
    ftp.quit()


def test_a_big_rename_whose_completion_answers_are_lost_is_finished(copier, area, cos,
                                                                    faults):
    """Every answer to the multipart copy's CompleteMultipartUpload lost once COS completed
    it (the retries find NoSuchUpload): the new name holds the source's bytes (size and
    CRC64 read back), so the rename is finished, ``250``, the source deleted and no upload
    left (it got ``550 No such file or directory.``, the retry and then the abort finding
    NoSuchUpload, and left the copy beside the source)."""
    srv, ftp = copier
    renamed_though_answers_lost(ftp, cos, faults, area, "CompleteMultipartUpload",
                                2 * MIB + 5)
    assert not pending_uploads(cos, f"{area}-dst")
    assert f"{area}-src: COS completed its copy to {area}-dst though the answer was lost" in \
        srv.log_text()


def test_a_big_rename_over_the_same_bytes_whose_completion_is_dropped_aborts_its_upload(
        copier, area, cos, faults):
    """The new name holds the source's bytes already, and every try of the multipart copy's
    completion is lost on its way (COS completed nothing): the read-back finds the bytes,
    ``250`` (it got ``451 … (ClientError); try again.``), and the multipart copy, which still
    holds its parts, is aborted."""
    _, ftp = copier
    data = os.urandom(2 * MIB + 5)
    cos.put_object(Bucket=ALPHA, Key=f"{area}-src", Body=data)
    cos.put_object(Bucket=ALPHA, Key=f"{area}-dst", Body=data)
    faults(drop_ops="CompleteMultipartUpload", drop_rate=1.0)
    ftp.sendcmd(f"RNFR {area}-src")
    assert ftp.sendcmd(f"RNTO {area}-dst").startswith("250")
    faults(drop_ops="", drop_rate=0)
    assert stored(cos, f"{area}-dst") == data
    assert cos.object_exists(Bucket=ALPHA, Key=f"{area}-src") is False
    assert not pending_uploads(cos, f"{area}-dst")


def test_a_big_rename_whose_initiate_answers_are_lost_leaves_no_upload(copier, area, cos,
                                                                      faults):
    """Every answer to the multipart copy's InitiateMultipartUpload lost once COS started
    it: the rename fails (``451``) and the file stays where it was, and the uploads COS
    started for the new name at those tries are found and aborted (they stayed)."""
    _, ftp = copier
    data = os.urandom(2 * MIB + 5)
    cos.put_object(Bucket=ALPHA, Key=f"{area}-src", Body=data)
    faults(lose_ops="InitiateMultipartUpload", lose_rate=1.0)
    ftp.sendcmd(f"RNFR {area}-src")
    with pytest.raises(ftplib.error_temp, match=r"451 .*InitiateMultipartUpload"):
        ftp.sendcmd(f"RNTO {area}-dst")
    faults(lose_ops="", lose_rate=0)
    assert stored(cos, f"{area}-src") == data
    assert cos.object_exists(Bucket=ALPHA, Key=f"{area}-dst") is False
    assert not pending_uploads(cos, f"{area}-dst")


def test_a_directory_rename_whose_big_files_completion_answers_are_lost_is_finished(
        copier, area, cos, faults):
    """A directory holding a file over the threshold and a small one, every answer to the
    big file's CompleteMultipartUpload lost once COS completed it: the directory is moved,
    ``250``, both files under the new name only and no upload left."""
    _, ftp = copier
    big, small = os.urandom(2 * MIB + 5), b"small"
    cos.put_object(Bucket=ALPHA, Key=f"{area}/d/big", Body=big)
    cos.put_object(Bucket=ALPHA, Key=f"{area}/d/small", Body=small)
    faults(lose_ops="CompleteMultipartUpload", lose_rate=1.0)
    ftp.sendcmd(f"RNFR {area}/d")
    assert ftp.sendcmd(f"RNTO {area}/e").startswith("250")
    faults(lose_ops="", lose_rate=0)
    assert (stored(cos, f"{area}/e/big"), stored(cos, f"{area}/e/small")) == (big, small)
    assert not cos.list_objects(Bucket=ALPHA, Prefix=f"{area}/d/").get("Contents")
    assert not pending_uploads(cos, f"{area}/e/big")


def test_a_big_rename_whose_target_lacks_the_copy_after_a_lost_completion_says_so(
        copier, area, cos, emulator, faults):
    """Every answer to the multipart copy's completion lost once COS completed it (the
    retries find NoSuchUpload), and another writer stores the new name before the
    read-back (its HEAD held by the rendezvous until then): the new name does not hold the
    source's bytes, so the rename is not done: ``451`` saying so, the source kept and the
    other writer's file left as it is (it got ``550 No such file or directory.``)."""
    _, ftp = copier
    data, other = os.urandom(2 * MIB + 5), b"another writer's"
    cos.put_object(Bucket=ALPHA, Key=f"{area}-src", Body=data)
    faults(lose_ops="CompleteMultipartUpload", lose_rate=1.0)
    emulator.rendezvous(contains=f"{area}-dst", exact=True, kind="HEAD", parties=2, timeout=60)
    ftp.sendcmd(f"RNFR {area}-src")
    ftp.putcmd(f"RNTO {area}-dst")
    wait_until(lambda: any(entry["kind"] == "HEAD" for entry in
                           request_log(emulator.port, contains=f"{area}-dst")),
               what="the read-back's HEAD of the new name")
    cos.put_object(Bucket=ALPHA, Key=f"{area}-dst", Body=other)
    assert cos.object_exists(Bucket=ALPHA, Key=f"{area}-dst")  # the rendezvous' other party
    with pytest.raises(ftplib.error_temp,
                       match=r"451 .*CompleteMultipartUpload.*not renamed.*kept "
                             r"\(NoSuchUpload"):
        ftp.getresp()
    faults(lose_ops="", lose_rate=0)
    assert stored(cos, f"{area}-src") == data
    assert stored(cos, f"{area}-dst") == other
    assert not pending_uploads(cos, f"{area}-dst")


def test_an_mfmt_of_a_big_file_whose_completion_answers_are_lost_gets_213(
        copier, area, cos, faults):
    """MFMT of a file over the threshold (a multipart copy onto itself), every answer to
    its completion lost once COS completed it (the retries find NoSuchUpload): the file's
    bytes prove nothing (they were there before), its metadata read back holds the time
    asked, so ``213``, MDTM gives that time and no upload is left (it got ``550 No such
    file or directory.``)."""
    _, ftp = copier
    data = os.urandom(2 * MIB + 5)
    cos.put_object(Bucket=ALPHA, Key=area, Body=data)
    faults(lose_ops="CompleteMultipartUpload", lose_rate=1.0)
    assert ftp.sendcmd(f"MFMT 20200102030405 {area}").startswith("213")
    faults(lose_ops="", lose_rate=0)
    assert ftp.sendcmd(f"MDTM {area}") == "213 20200102030405"
    assert stored(cos, area) == data
    assert not pending_uploads(cos, area)


def test_an_mfmt_of_a_small_file_whose_copy_answers_are_lost_gets_213(alice, area, cos,
                                                                      faults):
    """The same for a file copied onto itself in one request: every answer to its
    CopyObject lost once COS made the copy; the metadata read back holds the time asked,
    ``213`` (it got ``451 … (ClientError); try again.``)."""
    data = os.urandom(4096)
    cos.put_object(Bucket=ALPHA, Key=area, Body=data)
    faults(lose_ops="CopyObject", lose_rate=1.0)
    assert alice.sendcmd(f"MFMT 20200102030405 {area}").startswith("213")
    faults(lose_ops="", lose_rate=0)
    assert alice.sendcmd(f"MDTM {area}") == "213 20200102030405"
    assert stored(cos, area) == data


def test_an_mfmt_of_a_big_file_whose_completion_is_dropped_says_the_time_was_not_set(
        copier, area, cos, faults):
    """Every try of the MFMT's completion lost on its way (COS completed nothing): the
    metadata read back lacks the time asked, so ``451`` saying the time was not set, and
    the multipart copy, which still holds its parts, is aborted."""
    _, ftp = copier
    data = os.urandom(2 * MIB + 5)
    cos.put_object(Bucket=ALPHA, Key=area, Body=data)
    faults(drop_ops="CompleteMultipartUpload", drop_rate=1.0)
    with pytest.raises(ftplib.error_temp,
                       match=r"451 .*CompleteMultipartUpload.*time was not set"):
        ftp.sendcmd(f"MFMT 20200102030405 {area}")
    faults(drop_ops="", drop_rate=0)
    assert ftp.sendcmd(f"MDTM {area}") != "213 20200102030405"
    assert stored(cos, area) == data
    assert not pending_uploads(cos, area)
