"""COS requests per FTP command, counted at the emulator: the budgets in
docs/performance.md. A change that adds a request to a command fails here, and so does one
that sends in sequence what is sent at the same time now: the emulator's rendezvous holds
those requests until all of them are in flight (one round trip), and breaks otherwise."""

from __future__ import annotations

import ftplib

import pytest

from .server_proc import wait_until
from .test_commands import get, put
from .test_resume import break_upload, rest_stor

STAMP = "20200102030405"
DATA = b"x" * 1000
MIB = 1024 * 1024


def count(emulator, area: str, action) -> dict:
    emulator.requests(reset=True)
    action()
    return emulator.requests(contains=area)


def at_once(emulator, area: str, parties: int, action) -> None:
    """Run ``action`` with the first ``parties`` requests of ``area`` held until they are all
    in flight at once: they make one round trip."""
    emulator.rendezvous(contains=area, parties=parties, timeout=20)
    action()
    state = emulator.rendezvous()
    assert (state["passed"], state["broken"]) == (parties, 0), state


def listed(ftp, command: str) -> list[str]:
    lines: list[str] = []
    ftp.retrlines(command, lines.append)
    return lines


def test_stor_of_a_new_small_file(alice, emulator, area):
    alice.mkd(area)
    # Is the name a directory? Is its parent a file? Both sent when STOR arrives, and the
    # PUT (x-cos-forbid-overwrite) sent at the last byte beside them: one round trip after
    # the last byte (was three in sequence).
    assert count(emulator, area, lambda: at_once(
        emulator, area, 3, lambda: put(alice, f"{area}/new", DATA))) == {"LIST": 2, "PUT": 1}


def test_stor_over_an_existing_small_file(alice, emulator, area):
    put(alice, f"{area}/old", DATA)
    # The same three at once; COS refuses the PUT (a file has the name: 409), which is sent
    # again without the condition: two round trips after the last byte (as before: the
    # look-up, then the PUT), two requests more.
    assert count(emulator, area, lambda: at_once(
        emulator, area, 3, lambda: put(alice, f"{area}/old", DATA))) == {"LIST": 2, "PUT": 2}


def test_stor_of_a_file_in_parts_asks_what_the_name_holds_beside_its_create(alice, emulator,
                                                                          area):
    """Parking is on: the HEAD of the name (what a park of the upload records it replaces)
    goes out beside CreateMultipartUpload, not before it (was a round trip more before the
    first part). The rendezvous holds the first two requests naming the file itself."""
    alice.mkd(area)
    emulator.requests(reset=True)
    emulator.rendezvous(contains=f"{area}/big", exact=True, parties=2, timeout=20)
    put(alice, f"{area}/big", b"b" * (2 * MIB + 5))
    assert emulator.rendezvous() == {"armed": False, "passed": 2, "broken": 0}
    # The look-ups, the HEAD and the create, the live marker, three parts, the completion,
    # and the marker deleted.
    assert emulator.requests(contains=area) == \
        {"LIST": 2, "HEAD": 1, "POST": 2, "PUT": 4, "DELETE": 1}


def test_a_resumed_stor_asks_what_the_name_holds_before_it_completes(server, emulator, cos,
                                                                    area):
    """REST + STOR onto a park: the look-up (LIST) and the parked uploads (their records
    listed, the record read, its parts listed: GET ?uploadId), the claim (live marker PUT,
    record DELETE), the rest in three parts, then a HEAD before the completion (does the
    name still hold what the upload began with), the completion (POST), and the marker
    deleted."""
    data = b"r" * (3 * MIB + 5)
    break_upload(server.login("alice", "alice-pw"), cos, area, data[:MIB + 5], 1)
    ftp = server.login("alice", "alice-pw")
    assert ftp.size(area) == MIB
    counts = count(emulator, area, lambda: rest_stor(ftp, area, MIB, data[MIB:]))
    assert counts == {"LIST": 2, "GET": 2, "PUT": 4, "DELETE": 2, "HEAD": 1, "POST": 1}
    assert get(ftp, area) == data
    ftp.quit()


def test_mfmt_right_after_stor_is_one_round_trip(alice, emulator, area):
    alice.mkd(area)
    put(alice, f"{area}/f", DATA)
    # The self-copy pinned to the STOR's ETag, and the new marker beside it (was one after
    # the other).
    assert count(emulator, area, lambda: at_once(
        emulator, area, 2, lambda: alice.sendcmd(f"MFMT {STAMP} {area}/f"))) == \
        {"COPY": 1, "PUT": 1}
    assert alice.sendcmd(f"MDTM {area}/f") == f"213 {STAMP}"


def test_mfmt_alone(server, alice, emulator, area):
    other = server.login("alice", "alice-pw")
    put(other, f"{area}/f", DATA)  # stored by another session: nothing to go by
    other.quit()
    # HEAD (is it a file, and what the self-copy keeps) and the listing of this file's older
    # markers at once; then the self-copy and the new marker at once (was four in sequence);
    # the 213 answers from the copy.
    counts = count(emulator, area, lambda: at_once(
        emulator, area, 2, lambda: alice.sendcmd(f"MFMT {STAMP} {area}/f")))
    assert counts == {"HEAD": 1, "COPY": 1, "LIST": 1, "PUT": 1}, counts
    assert alice.sendcmd(f"MDTM {area}/f") == f"213 {STAMP}"


@pytest.mark.parametrize("existing, expected", [
    # STOR: the two look-ups and the PUT; MFMT: the self-copy pinned to the PUT's ETag and
    # the new marker (no HEAD, no listing of older markers: see mtimes.set_client_mtime).
    (False, {"LIST": 2, "PUT": 2, "COPY": 1}),
    (True, {"LIST": 2, "PUT": 3, "COPY": 1}),  # over a file: the refused PUT, sent again
])
def test_stor_then_mfmt_as_lftp_mirror_sends_them(alice, emulator, area, existing, expected):
    alice.mkd(area)
    if existing:
        put(alice, f"{area}/f", b"old")
        alice.sendcmd(f"MFMT 20190101000000 {area}/f")

    def stor_and_mfmt() -> None:
        # The look-ups held until the PUT is sent beside them: answers that come before the
        # last byte make the PUT wait for them, and a refused PUT is not sent.
        at_once(emulator, area, 3, lambda: put(alice, f"{area}/f", DATA))
        alice.sendcmd(f"MFMT {STAMP} {area}/f")
    assert count(emulator, area, stor_and_mfmt) == expected
    assert alice.sendcmd(f"MDTM {area}/f") == f"213 {STAMP}"
    assert {name: facts["modify"] for name, facts in alice.mlsd(area, ["modify"])} == \
        {"f": STAMP}


@pytest.mark.parametrize("command, expected", [
    # A look-up LIST and the parked-uploads LIST (SIZE also answers what REST can resume).
    ("SIZE", {"LIST": 2}),
    # One HEAD, which carries the MFMT time too.
    ("MDTM", {"HEAD": 1}),
])
def test_size_and_mdtm(alice, emulator, area, command, expected):
    put(alice, f"{area}/f", DATA)
    assert count(emulator, area, lambda: alice.sendcmd(f"{command} {area}/f")) == expected


def test_retr(alice, emulator, area):
    put(alice, f"{area}/f", DATA)
    # One GET, whose answer carries the size and the ETag a reopened stream is pinned to
    # (was HEAD, then the GET).
    assert count(emulator, area, lambda: get(alice, f"{area}/f")) == {"GET": 1}
    assert count(emulator, area, lambda: get(alice, f"{area}/f", rest=10)) == {"GET": 1}


def test_retr_of_a_directory_or_of_nothing(alice, emulator, area):
    alice.mkd(area)
    alice.mkd(f"{area}/d")
    # The GET finds no object; one LIST tells a directory (550 Is a directory) from nothing.
    for name, why in (("d", "Is a directory"), ("none", "No such file")):
        with pytest.raises(ftplib.error_perm, match=f"550 {why}"):
            count(emulator, area, lambda n=name: get(alice, f"{area}/{n}"))
        assert emulator.requests(contains=area) == {"GET": 1, "LIST": 1}


def test_list_of_a_directory(alice, emulator, area):
    for i in range(20):
        put(alice, f"{area}/{i}", DATA)
    # Its listing (whose first page tells that it is a directory) beside the listing of its
    # MFMT markers: one round trip (was 3 requests, a look-up first; then 2 in sequence).
    for command in ("LIST", "MLSD", "NLST"):
        counts = count(emulator, area, lambda c=command: at_once(
            emulator, area, 2, lambda: listed(alice, f"{c} {area}")))
        assert counts == {"LIST": 2}, (command, counts)


def test_a_list_of_no_directory_answers_once_its_markers_listing_did(alice, emulator, area):
    """The markers' listing goes beside the directory's first page; when that page finds no
    directory, the 550 still waits for the markers' answer: no request of a command is in
    flight after its reply (the next command's requests are its own). The rendezvous holds
    the markers' LIST alone for 2 s."""
    emulator.rendezvous(contains=f".cosftp/mtime/{area}/nothing/", parties=2, timeout=2)
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        listed(alice, f"LIST {area}/nothing")
    assert emulator.rendezvous() == {"armed": False, "passed": 0, "broken": 1}


@pytest.mark.parametrize("marker, others, expected", [
    # A directory with its marker (MKD made it): the look-up beside the listing of the
    # directory (its first key: is it the marker), then the DELETE: two round trips, its
    # last file too (were three: the directory listed again after the DELETE, in case
    # another session deleted "b" at once, each seeing the other's file first).
    (True, ["b"], {"LIST": 2, "DELETE": 1}),
    (True, [], {"LIST": 2, "DELETE": 1}),
    # Without one (STOR into a missing directory made it): its marker, then the DELETE,
    # whether other files stay or not: three round trips, as before, once per directory
    # (the marker stays: the next DELE there is one of the above).
    (False, ["b"], {"LIST": 2, "PUT": 1, "DELETE": 1}),
    (False, [], {"LIST": 2, "PUT": 1, "DELETE": 1}),
])
def test_dele(alice, emulator, area, marker, others, expected):
    if marker:
        alice.mkd(area)
        alice.mkd(f"{area}/d")
    for name in ["a", *others]:
        put(alice, f"{area}/d/{name}", DATA)
    assert count(emulator, area, lambda: at_once(
        emulator, area, 2, lambda: alice.delete(f"{area}/d/a"))) == expected
    assert alice.nlst(f"{area}/d") == others  # the directory stays either way


@pytest.mark.parametrize("existing, mfmt, size, parties, expected", [
    # A new name: the bytes the STOR kept are stored under it (x-cos-forbid-overwrite)
    # beside the look-ups (is it a directory; is the source still what the STOR stored, a
    # HEAD; the listing of the source's MFMT markers, deleted with it after the reply): one
    # round trip (was two: the look-ups, then the copy).
    (False, False, len(DATA), 4, {"PUT": 1, "LIST": 2, "HEAD": 1}),
    (False, True, len(DATA), 5, {"PUT": 2, "LIST": 2, "HEAD": 1}),  # and its MFMT marker
    (False, False, 200_000, 4, {"PUT": 1, "LIST": 2, "HEAD": 1}),  # WinSCP's: over 100 KB
    # A file has the new name: COS refuses that PUT (409), and a copy pinned to the STOR's
    # ETag replaces the file: two round trips, as before.
    (True, False, len(DATA), 4, {"PUT": 1, "LIST": 2, "HEAD": 1, "COPY": 1}),
])
def test_rename_of_the_sessions_own_upload(alice, emulator, area, existing, mfmt, size,
                                           parties, expected):
    """rclone's and WinSCP's temporary uploads (``x.partial`` -> ``x``): RNFR asks COS
    nothing; RNTO as above; the source is deleted after the reply (was 4 LISTs, HEAD,
    COPY, DELETE in sequence)."""
    alice.mkd(area)
    if existing:
        put(alice, f"{area}/x", DATA)
    put(alice, f"{area}/x.1a2b.partial", b"r" * size)
    if mfmt:
        alice.sendcmd(f"MFMT {STAMP} {area}/x.1a2b.partial")
    assert count(emulator, area, lambda: alice.sendcmd(
        f"RNFR {area}/x.1a2b.partial")) == {}
    counts = count(emulator, area, lambda: at_once(
        emulator, area, parties, lambda: alice.sendcmd(f"RNTO {area}/x")))
    counts.pop("DELETE", None)  # the source's, after the reply: may have come already
    assert counts == expected
    assert alice.nlst(area) == ["x"]
    if mfmt:
        assert {name: facts["modify"] for name, facts in alice.mlsd(area, ["modify"])} == \
            {"x": STAMP}


def test_rnfr_rnto_of_a_file(alice, emulator, area):
    put(alice, f"{area}/a", DATA)
    put(alice, f"{area}/b", DATA)
    put(alice, f"{area}/other", DATA)  # the last STOR: RNFR of "a" looks it up
    # RNFR: the look-up of the source. RNTO: at once, the HEAD of the source (a file, and
    # what its copy keeps), the look-up of the new name and the listing of the source's
    # MFMT markers; then the copy, pinned to the HEAD's ETag; the source is deleted after
    # the reply. Two round trips for RNTO (was 4 LISTs, HEAD, COPY, DELETE in sequence).
    assert count(emulator, area, lambda: alice.sendcmd(f"RNFR {area}/a")) == {"LIST": 1}
    emulator.requests(reset=True)
    at_once(emulator, area, 3, lambda: alice.sendcmd(f"RNTO {area}/c"))
    wait_until(lambda: emulator.requests(contains=area).get("DELETE"),
               what="the source deleted after the reply")
    assert emulator.requests(contains=area) == {"LIST": 2, "HEAD": 1, "COPY": 1, "DELETE": 1}
    assert alice.nlst(area) == ["b", "c", "other"]


@pytest.mark.parametrize("marker, others, expected", [
    (True, ["b"], {"LIST": 4, "HEAD": 1, "COPY": 1, "DELETE": 1}),
    (False, ["b"], {"LIST": 4, "HEAD": 1, "COPY": 1, "PUT": 1, "DELETE": 1}),  # its marker
    (False, [], {"LIST": 4, "HEAD": 1, "COPY": 1, "PUT": 1, "DELETE": 1}),
])
def test_rnfr_rnto_of_a_file_to_another_directory(alice, emulator, area, marker, others,
                                                  expected):
    """RNTO: at once, the HEAD of the source, the look-up of the new name, the listing of
    the source's MFMT markers, the look-up of the new name's parent (was after the others,
    a round trip more) and the listing of the directory it leaves (has it its marker);
    then the copy: two round trips before the reply. After it, that directory's marker if
    it has none, then the DELETE (was the DELETE, then the directory's listing when the
    file was not its last entry)."""
    if marker:
        alice.mkd(area)
        alice.mkd(f"{area}/d")
    for name in ["a", *others]:
        put(alice, f"{area}/d/{name}", DATA)
    put(alice, f"{area}/other", DATA)  # the last STOR: RNFR of "a" looks it up
    alice.sendcmd(f"RNFR {area}/d/a")
    emulator.requests(reset=True)
    at_once(emulator, area, 5, lambda: alice.sendcmd(f"RNTO {area}/a"))
    wait_until(lambda: emulator.requests(contains=area).get("DELETE"),
               what="the source deleted after the reply")
    assert emulator.requests(contains=area) == expected
    assert alice.nlst(area) == ["a", "d", "other"]


def test_rename_of_the_sessions_own_upload_to_another_directory(alice, emulator, area):
    """rclone moving what it just stored: RNFR asks COS nothing; RNTO sends at once the
    look-up of the new name, the listing of the source's MFMT markers, the look-up of the
    new name's parent (was after them) and the listing of the directory it leaves; then
    the copy pinned to what the STOR stored: two round trips (were three). After the
    reply, the marker of the directory it leaves (it had none), then the DELETE."""
    put(alice, f"{area}/d/x.partial", DATA)
    assert count(emulator, area, lambda: alice.sendcmd(f"RNFR {area}/d/x.partial")) == {}
    emulator.requests(reset=True)
    at_once(emulator, area, 4, lambda: alice.sendcmd(f"RNTO {area}/x"))
    wait_until(lambda: emulator.requests(contains=area).get("DELETE"),
               what="the source deleted after the reply")
    assert emulator.requests(contains=area) == {"LIST": 4, "COPY": 1, "PUT": 1, "DELETE": 1}
    assert alice.nlst(area) == ["d", "x"]


def test_mlst_of_a_file_and_of_the_directory_rclone_asks_about(alice, emulator, area):
    """rclone asks MLST of a file's directory before each upload and each move, right after
    a command on a file in it: that name is listed first (one LIST, was a HEAD that found
    nothing, then the LIST); a file's MLST is one HEAD, which carries its MFMT time."""
    put(alice, f"{area}/sub/f", DATA)
    alice.sendcmd(f"MFMT {STAMP} {area}/sub/f")
    assert count(emulator, area, lambda: alice.sendcmd(f"MLST {area}/sub/f")) == {"HEAD": 1}
    reply = []
    assert count(emulator, area, lambda: reply.append(alice.sendcmd(f"MLST {area}/sub"))) \
        == {"LIST": 1}
    assert "type=dir;" in reply[0]
    # Only the order is guessed: a file where the guess said directory gets its HEAD too
    # (the MFMT time), a name that went away meanwhile 550.
    with pytest.raises(ftplib.error_perm, match="550"):
        alice.sendcmd(f"MLST {area}/sub/f/g")
    assert count(emulator, area, lambda: reply.append(alice.sendcmd(f"MLST {area}/sub/f"))) \
        == {"LIST": 1, "HEAD": 1}
    assert f"modify={STAMP};" in reply[1] and "type=file;" in reply[1]
