"""Listings of large directories: streamed page by page, times from MFMT markers, and
``max_list_file``."""

from __future__ import annotations

import email.utils
import ftplib
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest

from cosftp_prefork.cos.mtimes import MARKER_SLACK

from .conftest import ALPHA
from .server_proc import Account, ServerProcess
from .test_commands import put

STAMP = "20200102030405"


def fill(cos, keys: list[str]) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: cos.put_object(Bucket=ALPHA, Key=key, Body=b""), keys))


def test_list_sends_its_first_lines_before_the_last_page_is_fetched(alice, emulator, cos,
                                                                       area):
    keys = [f"{area}/k{i:05d}" for i in range(3100)]  # four pages of 1,000
    fill(cos, keys)
    alice.voidcmd("TYPE A")
    emulator.set_faults(latency_ms=300)
    try:
        emulator.requests(reset=True)
        with alice.transfercmd(f"LIST {area}") as data, data.makefile("rb") as lines:
            first = lines.readline()
            at_first_line = emulator.requests(contains=area).get("LIST", 0)
            rest = lines.readlines()
        alice.voidresp()
    finally:
        emulator.set_faults(latency_ms=0)
    assert first.rstrip().endswith(b"k00000")
    assert len(rest) == len(keys) - 1 and rest[-1].rstrip().endswith(b"k03099")
    # The look-up, the first page of files and of MFMT markers; then three pages more.
    assert at_first_line < emulator.requests(contains=area)["LIST"], at_first_line


def test_mfmt_times_list_across_marker_pages(alice, cos, area):
    names = [f"f{i:04d}" for i in range(1200)]
    fill(cos, [f"{area}/{name}" for name in names])
    # Markers written by another worker look the same: more than one page of them.
    fill(cos, [f".cosftp/mtime/{area}/{name}#1500000000#d41d8cd98f00b204e9800998ecf8427e"
               for name in names[:1100]])
    alice.sendcmd(f"MFMT {STAMP} {area}/{names[-1]}")
    facts = {name: facts["modify"] for name, facts in alice.mlsd(area, ["modify"])}
    assert len(facts) == len(names)
    wrong = {name: facts[name] for name in names[:1100] if facts[name] != "20170714024000"}
    assert not wrong, wrong
    assert facts[names[-1]] == STAMP
    assert not any(facts[name].startswith("2017") for name in names[1100:-1])


def test_max_list_file_cuts_long_listings(emulator, cos, tmp_path, area):
    fill(cos, [f"{area}/k{i:04d}" for i in range(1500)] + [f"{area}/sub/x"])
    with ServerProcess(str(tmp_path), emulator.port, [Account("alice", "alice-pw", ALPHA)],
                       optional={"max_list_file": "1200"}) as server:
        ftp = server.login("alice", "alice-pw")
        lines: list[str] = []
        ftp.retrlines(f"LIST {area}", lines.append)
        assert len(lines) == 1200, lines[:3]
        assert lines[-1].endswith("k1199"), lines[-1]
        assert len(list(ftp.mlsd(area))) == 1200
        ftp.quit()


def test_a_listing_that_cos_fails_half_way_ends_with_451(alice, emulator, cos, area):
    fill(cos, [f"{area}/k{i:05d}" for i in range(3100)])
    alice.voidcmd("TYPE A")
    emulator.set_faults(latency_ms=300)
    try:
        with alice.transfercmd(f"LIST {area}") as data, data.makefile("rb") as lines:
            assert lines.readline()
            emulator.set_faults(error_rate=1.0)
            received = 1 + len(lines.readlines())
        with pytest.raises(ftplib.error_temp, match=r"^451"):
            alice.voidresp()
    finally:
        emulator.set_faults(latency_ms=0, error_rate=0)
    assert received < 3100
    assert alice.pwd() == "/"  # the session goes on


def test_an_overwrite_with_the_same_bytes_drops_the_listed_mfmt_time(alice, cos, area):
    """Before: the marker named the same ETag, so LIST kept showing the old MFMT time
    while MDTM showed the new upload's. (A marker counts if written no more than
    MARKER_SLACK before the object: MFMT writes it beside the self-copy.)"""
    alice.mkd(area)
    put(alice, f"{area}/f", b"same bytes")
    alice.sendcmd(f"MFMT {STAMP} {area}/f")
    marker = cos.list_objects(Bucket=ALPHA, Prefix=f".cosftp/mtime/{area}/")["Contents"][0]
    deadline = time.monotonic() + 30
    written = datetime.fromisoformat(marker["LastModified"].replace("Z", "+00:00"))
    while True:  # COS times have whole seconds: overwrite until the upload is later
        put(alice, f"{area}/f", b"same bytes")
        head = cos.head_object(Bucket=ALPHA, Key=f"{area}/f")
        modified = {name.lower(): value for name, value in head.items()}["last-modified"]
        if email.utils.parsedate_to_datetime(modified) > \
                written + timedelta(seconds=MARKER_SLACK):
            break
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert not alice.sendcmd(f"MDTM {area}/f").endswith(STAMP)
    assert dict(alice.mlsd(area, ["modify"]))["f"]["modify"] != STAMP


def test_list_and_mlsd_of_a_file_an_empty_directory_and_nothing(alice, area):
    alice.mkd(area)
    alice.mkd(f"{area}/empty")
    put(alice, f"{area}/f.txt", b"12345")
    file_line = []
    alice.retrlines(f"LIST {area}/f.txt", file_line.append)
    assert len(file_line) == 1 and file_line[0].endswith(" f.txt") and " 5 " in file_line[0]
    empty: list[str] = []
    alice.retrlines(f"LIST {area}/empty", empty.append)
    assert empty == [] and list(alice.mlsd(f"{area}/empty")) == []
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        alice.retrlines(f"LIST {area}/missing", empty.append)
    with pytest.raises(ftplib.error_perm, match=r"^550"):  # as LIST and CWD (dialect.py)
        list(alice.mlsd(f"{area}/missing"))
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        list(alice.mlsd(f"{area}/f.txt"))
    assert sorted(alice.nlst(area)) == ["empty", "f.txt"]
