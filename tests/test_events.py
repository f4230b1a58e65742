"""Events end to end: every kind to an HTTP receiver and a command, at least once, in order
per file, through a receiver down, slow or failing, a kill -9 of the whole server, a reload,
a full spool; pre-upload and pre-delete checks.

The receiver (``hook_receiver``) is a process of its own that records what it accepted on
disk; "nothing lost" means every operation the client was told succeeded has its event there
(one event id per operation: duplicates of that id are allowed, other ids are not).
"""

from __future__ import annotations

import ftplib
import glob
import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import psutil
import pytest

from cosftp_prefork.config.hooks import HooksConfig
from cosftp_prefork.events.deadletter import bury
from cosftp_prefork.events.deliver import SCAN_EVERY, WINDOW, Deliverer
from cosftp_prefork.events.queue import QueueReader, QueueStatus
from cosftp_prefork.events.spool import (
    BatchWriter,
    SpoolState,
    batch_name,
    encode_record,
    prepare_directory,
    scan,
)

from .admin_client import AdminClient, admin_server, admin_url
from .conftest import ALPHA, BETA, TWO_WORKERS
from .hook_receiver import Receiver
from .server_proc import (
    FREE_PORT,
    ROOT,
    Account,
    ServerProcess,
    closed_port,
    start_listening,
    wait_until,
)
from .test_commands import get, put
from .test_operating import scrape, value
from .test_transfers import abort_transfer, start_upload

SECRET = "receiver-secret"
ALL_KINDS = {"upload", "upload_failed", "download", "delete", "rename", "mkdir", "rmdir",
             "login", "login_failed", "ban"}
PART = 1024 * 1024
COMMAND = """#!{python}
import json, os, sys
out, failing = sys.argv[1], sys.argv[2]
body = sys.stdin.read()
if os.path.exists(failing):
    sys.stderr.write("refusing this one\\n")
    sys.exit(3)
with open(out, "a") as handle:
    handle.write(json.dumps({{"body": json.loads(body), "env": dict(os.environ)}}) + "\\n")
"""


@pytest.fixture
def receiver(tmp_path):
    rec = Receiver(str(tmp_path / "received.jsonl"), SECRET)
    yield rec
    rec.kill()


@pytest.fixture
def command(tmp_path) -> dict:
    """A command destination: writes each event to ``out``; exits 3 while ``failing``
    exists."""
    script = tmp_path / "on-event.py"
    script.write_text(COMMAND.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    out, failing = tmp_path / "command.jsonl", tmp_path / "failing"
    return {"line": f"{script} {out} {failing}", "out": out, "failing": failing}


def lines_of(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().splitlines()
    except FileNotFoundError:
        return []


def command_events(command: dict) -> list[dict]:
    if not command["out"].exists():
        return []
    return [json.loads(line) for line in command["out"].read_text().splitlines()]


def hook_server(tmp_path, emulator, hooks: dict, accounts=None, **kwargs) -> ServerProcess:
    server = ServerProcess(str(tmp_path / "server"), emulator.port,
                           accounts or [Account("ev", "ev-pw", ALPHA)],
                           hooks={"event_hook_secret": SECRET, **hooks},
                           network={"metrics_port": FREE_PORT}, **kwargs)
    return server


def file_events_to(receiver, **more: str) -> dict[str, str]:
    """[HOOKS] options sending ``receiver`` the events of files (upload, rename, delete), and
    ``more``."""
    return {"event_hook_url": receiver.url, "event_hook_events": "upload, rename, delete",
            **more}


def spool_batches(server: ServerProcess) -> list[str]:
    return glob.glob(os.path.join(server.log_dir, "events", "*.batch"))


def first_index(events: list[dict], kind: str, path: str) -> int:
    return next(i for i, e in enumerate(events) if e["event"] == kind and e["path"] == path)


def ids_of(events: list[dict], kind: str, path: str) -> set[str]:
    return {e["event_id"] for e in events if e["event"] == kind and e["path"] == path}


def bad_login(server: ServerProcess, source: str) -> None:
    ftp = ftplib.FTP(source_address=(source, 0))
    try:
        ftp.connect(server.host, server.port, timeout=10)
        with pytest.raises(ftplib.error_perm, match="530"):
            ftp.login("ev", "wrong")
    finally:
        ftp.close()


def test_every_event_kind_reaches_the_receiver_and_the_command(emulator, cos, tmp_path,
                                                               receiver, command, area):
    receiver.start()
    server = hook_server(tmp_path, emulator,
                         {"event_hook_url": receiver.url, "event_hook_command": command["line"]},
                         optional={"max_login_failures": "2", "ban_time": "60"},
                         env={**os.environ, "SERVER_ONLY_SECRET": "not for commands"})
    with server:
        for _ in range(2):  # the second failure bans 127.0.0.2
            bad_login(server, "127.0.0.2")
        ftp = server.login("ev", "ev-pw")
        ftp.voidcmd("TYPE I")
        ftp.mkd(area)
        data = os.urandom(1000)
        assert put(ftp, f"{area}/a.bin", data).startswith("226")
        head = cos.head_object(Bucket=ALPHA, Key=f"{area}/a.bin")
        ftp.rename(f"{area}/a.bin", f"{area}/b.bin")
        assert get(ftp, f"{area}/b.bin") == data
        ftp.delete(f"{area}/b.bin")
        abort_transfer(ftp, start_upload(ftp, cos, f"{area}/aborted.bin", 2 * PART))
        ftp.rmd(area)
        ftp.quit()
        wait_until(lambda: {e["event"] for e in receiver.accepted()} >= ALL_KINDS,
                   timeout=30, what="every kind at the receiver")
        wait_until(lambda: {e["body"]["event"] for e in command_events(command)} >= ALL_KINDS,
                   timeout=30, what="every kind at the command")
        wait_until(lambda: not spool_batches(server), what="the spool emptied")
        samples = scrape(server)
    assert all(entry["verified"] for entry in receiver.entries())
    events = receiver.accepted()
    upload = next(e for e in events if e["event"] == "upload")
    assert upload["path"] == f"/{area}/a.bin" and upload["key"] == f"{area}/a.bin"
    assert (upload["bucket"], upload["size"], upload["user"]) == (ALPHA, 1000, "ev")
    assert upload["etag"] == head["ETag"].strip('"')
    assert upload["crc64"] == head["x-cos-hash-crc64ecma"]
    assert upload["resumed"] is False and upload["client_address"] == "127.0.0.1"
    rename = next(e for e in events if e["event"] == "rename")
    assert (rename["from"], rename["to"]) == (f"/{area}/a.bin", f"/{area}/b.bin")
    failed = next(e for e in events if e["event"] == "upload_failed")
    assert failed["path"] == f"/{area}/aborted.bin" and failed["parked"] is False
    ban = next(e for e in events if e["event"] == "ban")
    assert ban["client_address"] == "127.0.0.2" and ban["ban_seconds"] == 60
    assert [e["user"] for e in events if e["event"] == "login_failed"] == ["ev", "ev"]
    # In order per file: the directory, its file's upload, rename, download, delete, rmdir.
    order = [first_index(events, "mkdir", f"/{area}"),
             first_index(events, "upload", f"/{area}/a.bin"),
             first_index(events, "rename", f"/{area}/b.bin"),
             first_index(events, "download", f"/{area}/b.bin"),
             first_index(events, "delete", f"/{area}/b.bin"),
             first_index(events, "rmdir", f"/{area}")]
    assert order == sorted(order)
    ran = {entry["body"]["event_id"]: entry for entry in command_events(command)}
    by_command = ran[upload["event_id"]]
    assert by_command["body"] == upload
    env = by_command["env"]
    assert env["COSFTP_EVENT"] == "upload" and env["COSFTP_PATH"] == f"/{area}/a.bin"
    assert env["COSFTP_SIZE"] == "1000" and env["COSFTP_RESUMED"] == "false"
    assert "SERVER_ONLY_SECRET" not in env
    assert value(samples, "cosftp_events_queued_total", event="upload") == 1
    assert value(samples, "cosftp_events_sent_total", kind="http") >= len(ALL_KINDS)
    assert value(samples, "cosftp_events_sent_total", kind="command") >= len(ALL_KINDS)


def test_an_accounts_destination_takes_its_events_and_paths_only(emulator, tmp_path,
                                                                 receiver, area):
    own = Receiver(str(tmp_path / "own.jsonl"), "account-secret").start()
    try:
        account = Account("ev", "ev-pw", ALPHA, extra=f"event_hook_url = {own.url}\n"
                          "event_hook_secret = account-secret\n"
                          "event_hook_events = upload, delete\n"
                          f"event_hook_paths = /{area}/in/*")
        receiver.start()
        with hook_server(tmp_path, emulator, {"event_hook_url": receiver.url},
                         accounts=[account]) as server:
            ftp = server.login("ev", "ev-pw")
            for path in (f"{area}/in/a", f"{area}/out/b"):
                put(ftp, path, b"x")
                ftp.delete(path)
            ftp.mkd(f"{area}/in/sub")
            ftp.quit()
            wait_until(lambda: len({e["event_id"] for e in receiver.accepted()}) >= 6,
                       what="the server's events")
            wait_until(lambda: not spool_batches(server), what="the spool emptied")
        assert sorted((e["event"], e["path"]) for e in own.accepted()) == \
            [("delete", f"/{area}/in/a"), ("upload", f"/{area}/in/a")]
        assert all(entry["verified"] for entry in own.entries())
        assert {e["event"] for e in receiver.accepted()} == {"login", "upload", "delete",
                                                             "mkdir"}
    finally:
        own.kill()


def uploads_in_a_stream(server: ServerProcess, area: str, stop: threading.Event,
                        done: list, sessions: int = 2) -> list[threading.Thread]:
    """Sessions that upload, and now and then rename and delete, until ``stop``; each
    operation acknowledged by the server is appended to ``done`` as (event, path)."""
    def run(number: int) -> None:
        try:
            ftp = server.login("ev", "ev-pw", timeout=10)
            for i in range(10 ** 6):
                if stop.is_set():
                    break
                path = f"/{area}/s{number}-{i}"
                put(ftp, path, b"%d" % i)
                done.append(("upload", path))
                if i % 3 == 0:
                    ftp.rename(path, path + ".r")
                    done.append(("rename", path + ".r"))
                    ftp.delete(path + ".r")
                    done.append(("delete", path + ".r"))
        except (OSError, EOFError, ftplib.Error):
            pass  # the server was killed under it
    threads = [threading.Thread(target=run, args=(n,)) for n in range(sessions)]
    for thread in threads:
        thread.start()
    return threads


def end_stream(server: ServerProcess, stop: threading.Event,
               threads: list[threading.Thread]) -> str:
    """Stop the sessions of ``uploads_in_a_stream``, wait until the spool is delivered;
    return the server's log."""
    stop.set()
    for thread in threads:
        thread.join()
    wait_until(lambda: not spool_batches(server), timeout=60, what="the spool emptied")
    return server.log_text()


def assert_each_once_and_in_order(receiver: Receiver, done: list) -> None:
    """Every acknowledged operation has exactly one event id at the receiver, and a file's
    upload, rename and delete arrived in that order."""
    events = receiver.accepted()
    missing = [op for op in done if not ids_of(events, *op)]
    assert not missing, f"{len(missing)} of {len(done)} events lost, e.g. {missing[:3]}"
    doubled = [op for op in done if len(ids_of(events, *op)) != 1]
    assert not doubled, f"operations with several event ids: {doubled[:3]}"
    for kind, path in done:
        if kind == "delete":
            original = path[:-2]
            assert first_index(events, "upload", original) < \
                first_index(events, "rename", path) < first_index(events, "delete", path)


def kill_everything(server: ServerProcess) -> None:
    """kill -9 the master, its workers and its helper processes at once."""
    master = psutil.Process(server.proc.pid)
    processes = [master, *master.children()]
    for process in processes:
        process.send_signal(signal.SIGKILL)
    psutil.wait_procs(processes, timeout=10)
    server.proc.wait()


def test_receiver_down_failing_slow_and_killed_loses_nothing(emulator, tmp_path, receiver,
                                                             area):
    server = hook_server(tmp_path, emulator, file_events_to(receiver, event_hook_timeout="1"))
    done: list = []
    with server:
        stop = threading.Event()
        threads = uploads_in_a_stream(server, area, stop, done)
        wait_until(lambda: len(done) >= 10, what="uploads while the receiver is down")
        receiver.start()
        wait_until(lambda: receiver.accepted(), what="deliveries once it is up")
        receiver.control(status=503)
        wait_until(lambda: [e for e in receiver.entries() if e["status"] == 503], timeout=30,
                   what="a 503 answer")
        receiver.control(status=200, delay=2.0)  # slower than event_hook_timeout
        wait_until(lambda: "ReadTimeoutError" in server.log_text(), timeout=30,
                   what="an answer too slow")
        receiver.control(delay=0.0)
        count = len(receiver.accepted())
        wait_until(lambda: len(receiver.accepted()) > count + 1, timeout=30,
                   what="deliveries going on again")
        receiver.kill()
        count = len(done)
        wait_until(lambda: len(done) >= count + 10, what="uploads while it is dead")
        receiver.start()
        log = end_stream(server, stop, threads)
    assert_each_once_and_in_order(receiver, done)
    assert "answered 503" in log and "trying again" in log


def test_kill_9_of_the_server_mid_stream_loses_nothing(emulator, tmp_path, receiver, area):
    receiver.start(delay=0.2)  # slow enough that events are still queued at the kill
    # Two workers: the spool the restart delivers was written by both.
    server = hook_server(tmp_path, emulator, file_events_to(receiver), optional=TWO_WORKERS)
    done: list = []
    server.start()
    try:
        stop = threading.Event()
        threads = uploads_in_a_stream(server, area, stop, done, sessions=3)
        wait_until(lambda: len(done) >= 40, what="operations before the kill")
        kill_everything(server)
        stop.set()
        for thread in threads:
            thread.join()
        assert spool_batches(server), "the kill left nothing to deliver: no test"
        server.start()
        wait_until(lambda: not spool_batches(server), timeout=60, what="the spool emptied")
    finally:
        server.stop()
    assert_each_once_and_in_order(receiver, done)


def test_a_reload_and_a_killed_events_process_lose_nothing(emulator, tmp_path, receiver, area):
    receiver.start(delay=0.05)
    # Two workers: each generation's two write the spool together.
    server = hook_server(tmp_path, emulator, file_events_to(receiver), optional=TWO_WORKERS)
    done: list = []
    with server:
        stop = threading.Event()
        threads = uploads_in_a_stream(server, area, stop, done)
        wait_until(lambda: len(done) >= 15, what="operations before the kill")
        events_process = next(p for p in psutil.Process(server.proc.pid).children()
                              if "cosftp: events" in " ".join(p.cmdline()))
        events_process.send_signal(signal.SIGKILL)
        count = len(done)
        wait_until(lambda: len(done) >= count + 15, what="operations after the kill")
        server.hooks["hook_retry_max_age"] = "7200"
        server.write_config()
        assert server.ctl("reload").returncode == 0
        count = len(done)
        wait_until(lambda: len(done) >= count + 15, what="operations after the reload")
        log = end_stream(server, stop, threads)
    assert_each_once_and_in_order(receiver, done)
    assert "events process" in log and "killed by SIGKILL" in log
    assert "replacing the events process" in log


def test_a_full_spool_refuses_uploads_until_it_drains(emulator, cos, tmp_path, receiver, area):
    server = hook_server(tmp_path, emulator, {"event_hook_url": receiver.url,
                                              "event_spool_max_mib": "1",
                                              "event_spool_full": "refuse"})
    with server:
        ftp = server.login("ev", "ev-pw")
        stored = []
        for i in range(1000):
            try:
                put(ftp, f"{area}/f{i}", b"x")
            except ftplib.error_temp as exc:
                refusal = str(exc)
                break
            stored.append(f"/{area}/f{i}")
        else:
            pytest.fail("1000 uploads and the 1 MiB spool never filled")
        assert refusal.startswith("451") and "event spool full" in refusal
        assert not cos.object_exists(Bucket=ALPHA, Key=f"{area}/f{len(stored)}")
        with pytest.raises(ftplib.error_temp, match=r"451.*event spool full"):
            ftp.delete(stored[0][1:])
        assert get(ftp, stored[0][1:]) == b"x"  # a download is not refused
        receiver.start()
        wait_until(lambda: not spool_batches(server), timeout=90, what="the spool drained")
        assert put(ftp, f"{area}/after", b"y").startswith("226")
        ftp.quit()
        wait_until(lambda: ids_of(receiver.accepted(), "upload", f"/{area}/after"),
                   what="the upload after the drain")
        samples = scrape(server)
    events = receiver.accepted()
    assert all(ids_of(events, "upload", path) for path in stored)
    assert value(samples, "cosftp_event_refusals_total") == 2


def test_a_full_spool_drops_the_oldest_under_drop_oldest(emulator, tmp_path, receiver, area):
    server = hook_server(tmp_path, emulator, {"event_hook_url": receiver.url,
                                              "event_hook_events": "upload",
                                              "event_spool_max_mib": "1",
                                              "event_spool_full": "drop_oldest"})
    with server:
        ftp = server.login("ev", "ev-pw")
        paths = [f"/{area}/f{i}" for i in range(400)]
        for path in paths:
            assert put(ftp, path, b"x").startswith("226")
        ftp.quit()
        wait_until(lambda: "oldest events" in server.log_text(), what="the oldest dropped")
        receiver.start()
        wait_until(lambda: not spool_batches(server), timeout=60, what="the spool drained")
        dropped = sum(int(n) for n in re.findall(r"dropped the (\d+) oldest",
                                                 server.log_text()))
        samples = scrape(server)
    delivered = [path for path in paths if ids_of(receiver.accepted(), "upload", path)]
    assert dropped > 0 and len(delivered) + dropped == len(paths)
    assert delivered == paths[dropped:]  # the newest kept, the oldest dropped
    assert value(samples, "cosftp_events_dropped_total", reason="spool_full") == dropped


def test_an_event_never_accepted_goes_to_the_dead_letter_file(emulator, tmp_path, receiver,
                                                              command, area):
    command["failing"].write_text("")
    receiver.start(status=500)
    server = hook_server(tmp_path, emulator, {"event_hook_url": receiver.url,
                                              "event_hook_command": command["line"],
                                              "event_hook_events": "upload",
                                              "hook_retry_max_age": "2"})
    dead_letters = os.path.join(server.log_dir, "events", "dead-letter.jsonl")
    with server:
        ftp = server.login("ev", "ev-pw")
        put(ftp, f"{area}/doomed", b"x")
        ftp.quit()
        wait_until(lambda: len(lines_of(dead_letters)) == 2, timeout=30,
                   what="both deliveries given up")
        wait_until(lambda: not spool_batches(server), what="the spool emptied")
        samples = scrape(server)
        log = server.log_text()
    queue = QueueReader(HooksConfig(spool_dir=os.path.dirname(dead_letters))).status()
    assert (queue.queued, queue.oldest_queued_seconds, queue.dead_letters) == (0, None, 2)
    buried = [json.loads(line) for line in lines_of(dead_letters)]
    assert {entry["destination"] for entry in buried} == {f"http:{receiver.url}",
                                                          f"command:{command['line']}"}
    assert all(json.loads(entry["body"])["path"] == f"/{area}/doomed" for entry in buried)
    assert oct(os.stat(dead_letters).st_mode & 0o777) == "0o600"
    assert oct(os.stat(os.path.dirname(dead_letters)).st_mode & 0o777) == "0o700"
    for kind in ("http", "command"):
        assert value(samples, "cosftp_events_dead_lettered_total", kind=kind) == 1
        assert value(samples, "cosftp_events_retried_total", kind=kind) >= 1
    assert "answered 500" in log and "exit status 3: refusing this one" in log
    assert log.count("given up after") == 2
    assert not command_events(command) and not receiver.accepted()


def pre_check_server(tmp_path, emulator, receiver: Receiver, failure: str) -> ServerProcess:
    return ServerProcess(str(tmp_path / failure), emulator.port, [Account("ev", "ev-pw", ALPHA)],
                         hooks={"pre_upload_hook_url": receiver.pre_url,
                                "pre_delete_hook_url": receiver.pre_url,
                                "event_hook_secret": SECRET, "pre_hook_timeout": "1",
                                "pre_hook_failure": failure})


def test_pre_checks_allow_deny_and_fail_closed(emulator, cos, tmp_path, receiver, area):
    receiver.start(reason="No uploads here\r\n226 forged reply " + "x" * 400)
    with pre_check_server(tmp_path, emulator, receiver, "closed") as server:
        ftp = server.login("ev", "ev-pw")
        assert put(ftp, f"{area}/ok", b"fine").startswith("226")
        with pytest.raises(ftplib.error_perm) as denied:
            put(ftp, f"{area}/deny-me", b"never")
        for name in ("slow", "garbage"):
            with pytest.raises(ftplib.error_temp, match="451 The upload check is unavail"):
                put(ftp, f"{area}/{name}", b"never")
        put(ftp, f"{area}/keep", b"kept")
        with pytest.raises(ftplib.error_perm, match="550 No uploads here 226 forged"):
            ftp.delete(f"{area}/keep")
        with pytest.raises(ftplib.error_perm, match="550 No uploads here"):
            ftp.rename(f"{area}/keep", f"{area}/moved")
        ftp.mkd(f"{area}/keepdir")
        with pytest.raises(ftplib.error_perm, match="550 No uploads here"):
            ftp.rmd(f"{area}/keepdir")
        ftp.delete(f"{area}/ok")
        receiver.kill()
        with pytest.raises(ftplib.error_temp, match="451"):
            put(ftp, f"{area}/nobody-answers", b"never")
        ftp.quit()
    reply = str(denied.value)
    assert reply.startswith("550 No uploads here 226 forged reply xxx") and len(reply) < 220
    assert "\r" not in reply and "\n" not in reply
    for name in ("deny-me", "slow", "garbage", "nobody-answers", "ok"):
        assert not cos.object_exists(Bucket=ALPHA, Key=f"{area}/{name}")
    assert get_object(cos, f"{area}/keep") == b"kept"
    assert cos.object_exists(Bucket=ALPHA, Key=f"{area}/keepdir/")
    questions = receiver.entries("pre")
    assert all(q["verified"] for q in questions)
    upload = next(q["body"] for q in questions if q["body"]["path"] == f"/{area}/ok")
    assert (upload["event"], upload["bucket"], upload["key"], upload["user"]) == \
        ("pre_upload", ALPHA, f"{area}/ok", "ev")
    rename = next(q["body"] for q in questions if q["body"].get("operation") == "rename")
    assert (rename["event"], rename["path"], rename["to"]) == \
        ("pre_delete", f"/{area}/keep", f"/{area}/moved")


def test_pre_checks_that_fail_open_let_uploads_in(emulator, cos, tmp_path, receiver, area):
    receiver.start()
    with pre_check_server(tmp_path, emulator, receiver, "open") as server:
        ftp = server.login("ev", "ev-pw")
        for name in ("slow", "garbage"):
            assert put(ftp, f"{area}/{name}", b"in").startswith("226")
        with pytest.raises(ftplib.error_perm, match="550"):
            put(ftp, f"{area}/deny-me", b"never")
        receiver.kill()
        assert put(ftp, f"{area}/nobody-answers", b"in").startswith("226")
        ftp.quit()
        log = server.log_text()
    for name in ("slow", "garbage", "nobody-answers"):
        assert cos.object_exists(Bucket=ALPHA, Key=f"{area}/{name}")
    assert not cos.object_exists(Bucket=ALPHA, Key=f"{area}/deny-me")
    assert log.count("allowing (pre_hook_failure)") == 3


def get_object(cos, key: str) -> bytes:
    return cos.get_object(Bucket=ALPHA, Key=key)["Body"].get_raw_stream().read()


def test_the_queue_reader_counts_the_spool_for_the_admin_api(tmp_path):
    """What the admin API shows: events waiting, the oldest one's age, the spool's size and
    bound, and the dead letters, read without a lock and without creating anything."""
    spool = str(tmp_path / "events")
    hooks = HooksConfig(spool_dir=spool, spool_max=2 ** 20)
    reader = QueueReader(hooks)
    assert reader.status() == QueueStatus(0, 0, 0, 2 ** 20, None, 0)
    assert not os.path.exists(spool)
    prepare_directory(spool)
    state = SpoolState(spool)
    writer = BatchWriter(state)
    try:
        records = [encode_record({"event": "upload", "event_id": str(n), "at": 0.0,
                                  "body": "{}", "to": []}) for n in range(5)]
        writer.write(records[:3])
        writer.write(records[3:])
        status = reader.status(now=time.time() + 60)
        assert (status.queued, status.batches, status.dead_letters) == (5, 2, 0)
        assert status.spool_bytes > 0 and 60 <= status.oldest_queued_seconds < 3600
        record = {"event_id": "x", "event": "upload", "at": 0.0, "body": "{}"}
        for _ in range(2):
            bury(spool, record, {"id": "http:x"}, 3, "answered 500", time.time())
        assert reader.status().dead_letters == 2
        bury(spool, record, {"id": "http:x"}, 3, "answered 500", time.time())
        first = scan(spool)[0][0]
        state.remove(first.name)
        status = reader.status()
        assert (status.queued, status.batches, status.dead_letters) == (2, 1, 3)
        os.unlink(os.path.join(spool, "dead-letter.jsonl"))  # an operator took them away
        assert reader.status().dead_letters == 0
    finally:
        writer.close()
        state.close()


def test_a_batch_a_listing_missed_is_not_overtaken_by_a_later_one(tmp_path):
    """A directory listing may miss a batch renamed in while it runs yet show a later one
    (an upload's batch missed, its rename's seen): the later one must wait for the earlier
    one, or the rename would reach the receiver before the upload."""
    spool = str(tmp_path / "events")
    prepare_directory(spool)

    def batch(first: int) -> str:
        name = batch_name(first, first, os.getpid())
        with open(os.path.join(spool, name), "wb") as handle:
            handle.write(encode_record({"event": "rename", "event_id": str(first), "at": 0.0,
                                        "body": "{}", "to": []}))
        return name

    deliverer = Deliverer(HooksConfig(spool_dir=spool))
    try:
        later = batch(10)
        deliverer.look()  # sees only the later batch
        earlier = batch(5)  # the one that listing missed
        deliverer.look()
        assert later not in deliverer.schedule.batches or earlier in deliverer.schedule.batches
        deliverer.look()
        assert list(deliverer.schedule.batches) == [earlier, later]
    finally:
        deliverer.close()


def docs_receiver() -> str:
    """The example receiver of docs/events.md, as printed there."""
    with open(os.path.join(ROOT, "docs", "events.md"), encoding="utf-8") as handle:
        text = handle.read()
    start = text.index("```python\n", text.index("A receiver that verifies the signature"))
    return text[start + len("```python\n"):text.index("```", start + 3)]


def _forged(url: str) -> int:
    """POST an event with a wrong signature to ``url``; the HTTP status answered."""
    request = urllib.request.Request(url, data=b'{"event_id": "x"}', headers={
        "X-Cosftp-Signature": "sha256=" + "0" * 64}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _start_example(script, out) -> tuple[subprocess.Popen, str]:
    """The docs' example receiver listening on a port of its own (``start_listening``: on
    another port if one chosen was taken before it bound it), and its URL. Raises
    AssertionError, with what it wrote on stderr, if it does not listen."""
    errors = out.with_suffix(".err")

    def launch(port: int) -> subprocess.Popen:
        with open(out, "wb") as stdout, open(errors, "wb") as stderr:
            return subprocess.Popen([sys.executable, str(script)], stdout=stdout,
                                    stderr=stderr, env={**os.environ, "HOOK_SECRET": SECRET,
                                                        "PORT": str(port)})
    try:
        example, (port,) = start_listening(
            launch, "the example receiver",
            lost_port=lambda _: "Address already in use" in errors.read_text(errors="replace"))
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {errors.read_text(errors='replace')}") from None
    return example, f"http://127.0.0.1:{port}/"


def test_the_example_receiver_in_the_docs_verifies_and_takes_events(emulator, tmp_path, area):
    script, out = tmp_path / "receiver.py", tmp_path / "receiver.out"
    script.write_text(docs_receiver())
    example, url = _start_example(script, out)
    try:
        assert _forged(url) == 401
        with hook_server(tmp_path, emulator, {"event_hook_url": url,
                                              "event_hook_events": "upload"}) as server:
            ftp = server.login("ev", "ev-pw")
            put(ftp, f"{area}/seen-by-example", b"x")
            ftp.quit()
            wait_until(lambda: not spool_batches(server), what="the event delivered")
        assert out.read_text().splitlines() == [f"upload /{area}/seen-by-example"]
    finally:
        example.kill()
        example.wait()


def test_a_full_window_does_not_list_a_large_spool_again_and_again(tmp_path):
    """A receiver down for long leaves a spool of many batches; while the events in memory
    (``WINDOW``) all wait for it, listing the spool again soon would load nothing: the next
    look comes after ``SCAN_EVERY``, and batches done make it come soon again."""
    spool = str(tmp_path / "events")
    prepare_directory(spool)
    state = SpoolState(spool)
    writer = BatchWriter(state)
    unreachable = {"id": "http:x", "kind": "http", "scope": "HOOKS", "timeout": 1,
                   "url": "http://127.0.0.1:9/", "signature": "sha256=0"}
    try:
        for first in range(0, WINDOW + 100, 100):
            writer.write([encode_record({"event": "upload", "event_id": str(first + n),
                                         "at": time.time(), "body": "{}",
                                         "to": [unreachable]}) for n in range(100)])
    finally:
        writer.close()
        state.close()
    deliverer = Deliverer(HooksConfig(spool_dir=spool))
    try:
        for _ in range(2):  # a batch is loaded at its second look
            deliverer.look()
        assert deliverer.schedule.loaded == WINDOW
        looked = time.monotonic()
        deliverer.look()
        assert deliverer.next_look >= looked + SCAN_EVERY
    finally:
        deliverer.close()


def test_an_accounts_cos_prefix_is_in_the_keys_of_its_events(emulator, cos, tmp_path,
                                                              receiver, area):
    """The event names the object where COS has it (under the account's cos_prefix), the
    path as the user sees it."""
    receiver.start()
    account = Account("ev", "ev-pw", ALPHA, extra=f"cos_prefix = {area}/home/")
    with hook_server(tmp_path, emulator, {"event_hook_url": receiver.url,
                                          "event_hook_events": "upload, rename"},
                     accounts=[account]) as server:
        ftp = server.login("ev", "ev-pw")
        put(ftp, "in.bin", b"prefixed")
        ftp.rename("in.bin", "out.bin")
        ftp.quit()
        wait_until(lambda: not spool_batches(server), what="the events delivered")
    events = receiver.accepted()
    upload = next(e for e in events if e["event"] == "upload")
    rename = next(e for e in events if e["event"] == "rename")
    assert (upload["path"], upload["key"]) == ("/in.bin", f"{area}/home/in.bin")
    assert (rename["from_key"], rename["key"]) == (f"{area}/home/in.bin",
                                                   f"{area}/home/out.bin")
    assert get_object(cos, rename["key"]) == b"prefixed"


def test_events_in_a_virtual_folder_name_the_folders_bucket_and_keys(emulator, cos, tmp_path,
                                                                     receiver, area):
    """An operation inside a virtual folder has the event of the object where COS has it
    (the folder's bucket, under its cos_prefix), the path as the user sees it; a rename out
    of the folder names both buckets."""
    receiver.start()
    account = Account("ev", "ev-pw", ALPHA, extra=f"cos_prefix = {area}/home/\n"
                      "virtual_folders = /drop=drop")
    folder = f"\n[FOLDER_drop]\ncos_bucket = {BETA}\ncos_region = ap-guangzhou\n" \
             f"cos_prefix = {area}/drop\nauthority = RW\n"
    with hook_server(tmp_path, emulator, file_events_to(receiver), accounts=[account],
                     sections=folder) as server:
        ftp = server.login("ev", "ev-pw")
        put(ftp, "/drop/in.bin", b"in the folder")
        ftp.rename("/drop/in.bin", "/drop/kept.bin")
        ftp.rename("/drop/kept.bin", "/out.bin")
        ftp.delete("/out.bin")
        ftp.quit()
        wait_until(lambda: not spool_batches(server), what="the events delivered")
    events = {e["event"] + e["path"]: e for e in receiver.accepted()}
    upload, inside = events["upload/drop/in.bin"], events["rename/drop/kept.bin"]
    assert (upload["bucket"], upload["key"]) == (BETA, f"{area}/drop/in.bin")
    assert (inside["bucket"], inside["from_key"], inside["key"]) == (
        BETA, f"{area}/drop/in.bin", f"{area}/drop/kept.bin")
    across = events["rename/out.bin"]
    assert (across["from"], across["from_bucket"], across["from_key"]) == (
        "/drop/kept.bin", BETA, f"{area}/drop/kept.bin")
    assert (across["bucket"], across["key"]) == (ALPHA, f"{area}/home/out.bin")
    assert (events["delete/out.bin"]["bucket"], events["delete/out.bin"]["key"]) == (
        ALPHA, f"{area}/home/out.bin")


def test_the_admin_api_shows_the_event_queue(emulator, tmp_path, area):
    """GET /api/v1/events reads the spool (events.queue): the event of an upload waits
    there while its receiver is down."""
    proc = admin_server(str(tmp_path / "admin"), emulator.port)
    proc.hooks = {"event_hook_secret": SECRET, "event_hook_events": "upload",
                  "event_hook_url": f"http://127.0.0.1:{closed_port()}/down"}
    with proc:
        ftp = proc.login("alice", "alice-pw")
        put(ftp, f"{area}.bin", b"waiting")
        ftp.quit()
        status = AdminClient(admin_url(proc)).get("/events")
    assert status["enabled"] and (status["queued"], status["dead_letters"]) == (1, 0)
    assert status["spool_bytes"] > 0 and status["spool_limit_bytes"] == 256 * PART
    assert status["oldest_queued_seconds"] is not None
