"""A STOR the server refuses while its bytes still arrive, and the client's retry that
sends only the first of them.

lftp 4.9.2 writes a whole file into its data socket before it reads the reply, so a
refusal that reaches it after its last byte (the server read a part of the file, failed,
and drained the rest: ``ftp.drain``) takes it down the same wrong path as a 451 at the
commit (``ftp.retries``): its retry sends the file's first 192 KiB and closes. Found by
``bench/chaos.py --lftp-defaults``: ``STOR`` of a 1,048,593-byte file refused with ``451``
after 113,152 bytes (the look-up of the name failed: COS answered SlowDown four times),
935,441 bytes drained, then the session's next ``STOR`` of that name sent 196,608 bytes and
got ``226``: a 192 KiB object of a 1 MiB file.
"""

from __future__ import annotations

import ftplib
import os
import select
import subprocess

import psutil
import pytest

from .conftest import ALPHA
from .crowds import workers_of
from .server_proc import Account, ServerProcess, wait_until, within
from .test_clients import lftp_command
from .test_commands import get, put

MIB = 1024 * 1024  # the test servers' min_part_size

STEP = 4096  # what the client sends between looks at the control connection
RETRY = 192 * 1024  # what lftp's cut retry sends before it closes


def refused_while_sending(ftp: ftplib.FTP, emulator, path: str, data: bytes) -> str:
    """Send ``STOR path`` and ``data`` while COS refuses the name's look-ups, until the
    server's refusal is on the control connection; then the rest of ``data`` (what lftp has
    in its socket buffers by then), and close. Return the refusal."""
    ftp.voidcmd("TYPE I")
    emulator.set_faults(deny_prefix=path)
    try:
        conn = ftp.transfercmd(f"STOR {path}")
        sent = 0
        with conn:
            while not select.select([ftp.sock], [], [], 0.05)[0]:
                assert sent < len(data), "the server read the whole file without a refusal"
                conn.sendall(data[sent:sent + STEP])
                sent += STEP
            emulator.set_faults(deny_prefix="")
            assert sent < len(data) - RETRY, "the refusal came after the retry's bytes"
            conn.sendall(data[sent:])
    finally:
        emulator.set_faults(deny_prefix="")
    with pytest.raises(ftplib.Error) as refused:
        ftp.voidresp()
    return str(refused.value)


@pytest.mark.parametrize("first", [True, False], ids=["its-first-bytes", "other-bytes"])
def test_a_stor_sending_the_start_of_one_refused_while_it_was_sent_is_cut_short(
        alice, area, cos, emulator, first):
    """The STOR after one refused while its bytes arrived (all of them sent, the rest
    drained), to the same name, with only that file's first 192 KiB, is lftp's retry cut
    short: 426, nothing stored. Sent again, or another file of that size, it stores."""
    path = f"{area}/f.bin"
    data = os.urandom(1024 * 1024 + 17)
    again = data[:RETRY] if first else os.urandom(RETRY)
    assert refused_while_sending(alice, emulator, path, data).startswith(("4", "5"))
    if first:
        with pytest.raises(ftplib.error_temp,
                           match=rf"426 .* the first {RETRY} of the {len(data)} bytes"):
            put(alice, path, again)
        assert cos.object_exists(Bucket=ALPHA, Key=path) is False
    assert put(alice, path, again).startswith("226")
    assert get(alice, path) == again


@pytest.fixture
def one_part_at_a_time(emulator, tmp_path):
    """A server whose uploads have one part on its way to COS at a time: while it is, the
    server reads no further than the next part's buffer."""
    with ServerProcess(str(tmp_path), emulator.port, [Account("alice", "alice-pw", ALPHA)],
                       optional={"upload_thread_num": "1"}) as srv:
        yield srv


def client_closed_a_data_connection(server: ServerProcess, cos_port: int) -> bool:
    """Whether a data connection of ``server`` has the client's end of file (CLOSE_WAIT:
    lftp wrote its whole file and closed, and the server has not read it all)."""
    for worker in workers_of(server.proc.pid):
        try:
            connections = worker.net_connections("tcp")
        except psutil.Error:
            continue
        if any(c.status == psutil.CONN_CLOSE_WAIT and c.raddr and c.raddr.port != cos_port
               and c.laddr.port != server.port for c in connections):
            return True
    return False


def test_lftp_whose_upload_is_refused_after_its_last_byte_stores_the_whole_file(
        one_part_at_a_time, tmp_path, area, cos, emulator):
    """lftp (its defaults: no ``ALLO``) writes a 2 MiB + 50 KiB file whole while the server
    holds part 1 on its way to COS, part 2 in its buffer and the rest unread; COS then
    stores part 1 damaged, the server refuses the upload (451) and drains the rest. lftp
    reads the 451 after its last byte and retries by sending 192 KiB and closing: 426 (it
    got 226 and a 192 KiB object, and lftp waited for ever); lftp reconnects, sends the
    whole file, exit 0, and the object is whole."""
    server = one_part_at_a_time
    data = os.urandom(2 * MIB + 50 * 1024)
    (tmp_path / "f.bin").write_bytes(data)
    key = f"{area}/f.bin"
    ftp = server.login("alice", "alice-pw")
    ftp.mkd(area)
    ftp.quit()
    start = len(server.log_text())
    emulator.set_faults(corrupt_next_parts=1)
    emulator.rendezvous(contains=key, parties=2, timeout=120, part=1)
    command = lftp_command(server, "set ftp:use-allo no; set net:max-retries 3; "
                                   "set net:reconnect-interval-base 1; "
                                   f"put {tmp_path / 'f.bin'} -o {key}")
    client = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        wait_until(lambda: client_closed_a_data_connection(server, emulator.port),
                   what="lftp to have written its file and closed the data connection")
        # Part 1 goes on (damaged) once another request meets it at the rendezvous: an empty
        # part, which the emulator does not damage in its place.
        upload = cos.create_multipart_upload(Bucket=ALPHA, Key=f"{key}.release")
        cos.upload_part(Bucket=ALPHA, Key=f"{key}.release", Body=b"", PartNumber=1,
                        UploadId=upload["UploadId"])
        cos.abort_multipart_upload(Bucket=ALPHA, Key=f"{key}.release",
                                   UploadId=upload["UploadId"])
        _, errors = within(lambda seconds: client.communicate(timeout=seconds), 60)
    finally:
        emulator.set_faults(corrupt_next_parts=0)
        client.kill()
        client.wait()
    log = [line for line in server.log_text()[start:].splitlines() if key in line]
    assert any("-> 451" in line for line in log), log
    assert client.returncode == 0, errors
    with server.login("alice", "alice-pw") as ftp:
        assert get(ftp, key) == data
