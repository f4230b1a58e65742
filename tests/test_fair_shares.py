"""One account's crowd of uploads does not take a worker's part threads or its memory budget
from another account's one upload: real server, real FTP sessions of two accounts, and the
emulator's rendezvous holding the first part PUT while the test sets the scene.

With one part thread and one part in flight per upload, every upload queues one part behind
the held one and stops reading; the metrics say when every part (or buffer claim) is
queued, then the test lets the held PUT go and reads who was served next: the emulator's
log of requests for the part thread, the server's log of grants for the budget."""

from __future__ import annotations

import contextlib
import ftplib
import io
import os
import re
import threading
from collections.abc import Iterator

from qcloud_cos.cos_exception import CosServiceError

from .conftest import ALPHA, BETA
from .emulator_proc import request_log
from .server_proc import FREE_PORT, Account, ServerProcess, wait_until
from .test_operating import scrape, value

MIB = 1024 * 1024
ACCOUNTS = [Account("alice", "alice-pw", ALPHA), Account("bob", "bob-pw", BETA)]
DATA = os.urandom(3 * MIB)  # three parts of 1 MiB


class Upload:
    """A STOR of ``DATA`` by ``user`` in a thread of its own; ``reply`` once it ends."""

    def __init__(self, server: ServerProcess, user: str, path: str) -> None:
        self.path, self.reply = path, ""
        self._ftp = server.login(user, f"{user}-pw", timeout=300)
        self.thread = threading.Thread(target=self._store)
        self.thread.start()

    def _store(self) -> None:
        try:
            self.reply = self._ftp.storbinary(f"STOR {self.path}", io.BytesIO(DATA))
        except ftplib.Error as exc:
            self.reply = str(exc)
        finally:
            self._ftp.close()

    def finish(self) -> str:
        self.thread.join(timeout=300)
        return self.reply


@contextlib.contextmanager
def one_part_thread(emulator, tmp_path, area: str, memory_mib: int) -> Iterator[ServerProcess]:
    """One worker with one part thread (so one part in flight per upload) and a budget of
    ``memory_mib``, metrics on, and the emulator holding the first part 1 of alice's uploads
    until :func:`release` (at the latest when the block ends)."""
    optional = {"worker_processes": "1", "upload_thread_num": "1",
                "upload_memory_limit": str(memory_mib), "log_level": "DEBUG"}
    emulator.rendezvous(contains=f"{area}/alice", part=1, parties=2, timeout=600)
    with ServerProcess(str(tmp_path), emulator.port, ACCOUNTS, optional=optional,
                       network={"metrics_port": FREE_PORT}) as server:
        try:
            yield server
        finally:
            release(emulator, area)


def release(emulator, area: str) -> None:
    """Let the held part PUT go: the test's own UploadPart is the rendezvous' second party
    (of no upload: COS answers 404)."""
    if emulator.rendezvous()["armed"]:
        with contextlib.suppress(CosServiceError):  # NoSuchUpload, as expected
            emulator.client().upload_part(Bucket=ALPHA, Key=f"{area}/alice-release", Body=b"x",
                                          PartNumber=1, UploadId="none")


def gauge(server: ServerProcess, name: str) -> float:
    return value(scrape(server), name)


def held(emulator, path: str) -> bool:
    """Whether the emulator has the first part PUT of ``path`` (held by the rendezvous)."""
    return any(entry["kind"] == "PUT" for entry in request_log(emulator.port, contains=path))


def start_blocker(server: ServerProcess, emulator, area: str) -> Upload:
    blocker = Upload(server, "alice", f"{area}/alice-0")
    wait_until(lambda: held(emulator, blocker.path), timeout=60, what="the first part held")
    return blocker


def part_order(emulator, uploads: list[Upload]) -> list[str]:
    """The names of the uploads' part PUTs in the order the part thread sent them."""
    paths = {upload.path for upload in uploads}
    return [os.path.basename(entry["target"]) for entry in request_log(emulator.port)
            if entry["kind"] == "PUT" and entry["target"] in paths]


def test_one_upload_of_another_account_is_next_after_a_crowd(emulator, tmp_path, area):
    """Five more of alice's uploads queue a part each, then bob's: bob's part is sent right
    after one of alice's, not after all five (turns per account, then per upload)."""
    with one_part_thread(emulator, tmp_path, area, memory_mib=64) as server:
        uploads = [start_blocker(server, emulator, area)]
        uploads += [Upload(server, "alice", f"{area}/alice-{n}") for n in range(1, 6)]
        wait_until(lambda: gauge(server, "cosftp_upload_parts_waiting") == 5, timeout=60,
                   what="alice's five parts queued")
        bob = Upload(server, "bob", f"{area}/bob")
        uploads.append(bob)
        wait_until(lambda: gauge(server, "cosftp_upload_parts_waiting") == 6, timeout=60,
                   what="bob's part queued")
        release(emulator, area)
        assert [upload.finish()[:3] for upload in uploads] == ["226"] * 7
    order = part_order(emulator, uploads)
    assert order[0] == "alice-0"
    assert order.index("bob") == 1, order  # was 6: after all of alice's


def test_a_buffer_given_back_goes_to_the_account_holding_least(emulator, tmp_path, area):
    """With the 4 MiB budget held by alice's two first uploads and two more of hers waiting,
    bob's upload asks last, and is granted the first MiB given back."""
    with one_part_thread(emulator, tmp_path, area, memory_mib=4) as server:
        start = len(server.log_text())
        uploads = [start_blocker(server, emulator, area)]
        uploads.append(Upload(server, "alice", f"{area}/alice-1"))
        wait_until(lambda: gauge(server, "cosftp_upload_buffer_bytes") == 4 * MIB,
                   timeout=60, what="the budget taken by alice's first two uploads")
        for waiting, (user, name) in enumerate(
                [("alice", "alice-2"), ("alice", "alice-3"), ("bob", "bob")], start=1):
            uploads.append(Upload(server, user, f"{area}/{name}"))
            wait_until(lambda n=waiting: gauge(server, "cosftp_upload_buffer_waits") == n,
                       timeout=60, what=f"{name} waiting for a buffer")
        release(emulator, area)
        assert [upload.finish()[:3] for upload in uploads] == ["226"] * 5
        grants = re.findall(r"user=(\w+) [^\n]*granted after waiting",
                            server.log_text()[start:])
    assert grants[:1] == ["bob"], grants
