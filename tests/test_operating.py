"""What operators watch: the Prometheus endpoint, xferlog and the fail2ban-readable log."""

from __future__ import annotations

import contextlib
import ftplib
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import threading
import urllib.error
import urllib.request

import psutil
import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families

from cosftp_prefork.config.settings import parse_config
from cosftp_prefork.errors import ConfigError

from .conftest import ALPHA, STANDARD_ACCOUNTS, _close
from .server_proc import FREE_PORT, ROOT, Account, ServerProcess, wait_until
from .slow_client import SlowReader
from .test_clients import require
from .test_commands import get, put, rename_whose_copy_fails
from .test_master import serving, state_of, status_rows
from .test_sessions import SLOW_RATE, rows_of

MIB = 1024 * 1024
F2B_VSFTPD_FILTER = "/etc/fail2ban/filter.d/vsftpd.conf"


def _operated(workdir: str, cos_port: int, accounts: list[Account], **optional: str):
    proc = ServerProcess(workdir, cos_port, accounts,
                         network={"metrics_port": FREE_PORT},
                         optional={"xferlog_enable": "true",
                                   "vsftpd_log_file": os.path.join(workdir, "log", "vsftpd.log"),
                                   **optional})
    return proc


@pytest.fixture(scope="module")
def ops(emulator, tmp_path_factory):
    """Two workers: the metrics are every worker's counts folded together, a killed
    worker's too."""
    proc = _operated(str(tmp_path_factory.mktemp("ops")), emulator.port, STANDARD_ACCOUNTS,
                     max_login_failures="0", worker_processes="2")
    proc.start()
    yield proc
    proc.stop()


def scrape(proc: ServerProcess) -> dict[tuple[str, frozenset], float]:
    """GET /metrics over HTTP: ``{(sample name, labels): value}``."""
    url = f"http://127.0.0.1:{proc.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def metrics_files(proc: ServerProcess) -> list[str]:
    return sorted(os.listdir(os.path.join(proc.log_dir, "cosftp.pid.metrics")))


def log_lines(proc: ServerProcess, name: str) -> list[str]:
    with open(os.path.join(proc.log_dir, name), encoding="utf-8") as handle:
        return handle.read().splitlines()


# --- Prometheus


def test_metrics_move_during_a_transfer(ops, area):
    before = scrape(ops)
    ftp = ops.login("alice", "alice-pw")
    ftp.voidcmd("TYPE I")
    data = os.urandom(3 * MIB + 5)
    conn = ftp.transfercmd(f"STOR {area}")
    first = 2 * MIB + 64 * 1024  # the third part's buffer is claimed once 32 KiB of it are in
    conn.sendall(data[:first])
    parts = ("cosftp_cos_requests_total", {"operation": "UploadPart", "status": "ok"})
    wait_until(lambda: value(scrape(ops), parts[0], **parts[1]) > value(before, parts[0],
                                                                        **parts[1]),
               what="parts counted while the upload runs")
    during = scrape(ops)
    assert value(during, "cosftp_sessions") >= 1
    # Two parts went out; the third holds its buffer, taken from the worker's budget.
    assert value(during, "cosftp_upload_buffer_bytes") >= MIB
    assert value(during, "cosftp_upload_buffer_limit_bytes") >= value(
        during, "cosftp_upload_buffer_bytes")
    assert value(during, "cosftp_logins_total", result="ok") > value(
        before, "cosftp_logins_total", result="ok")
    latency = ("cosftp_cos_request_duration_seconds_count", {"operation": "UploadPart"})
    assert value(during, latency[0], **latency[1]) > value(before, latency[0], **latency[1])
    assert value(during, "cosftp_transfers_total", direction="upload", result="ok") == value(
        before, "cosftp_transfers_total", direction="upload", result="ok")
    conn.sendall(data[first:])
    conn.close()
    assert ftp.voidresp().startswith("226")
    assert get(ftp, area) == data
    after = scrape(ops)
    for direction in ("upload", "download"):
        assert value(after, "cosftp_transfers_total", direction=direction, result="ok") == \
            value(before, "cosftp_transfers_total", direction=direction, result="ok") + 1
        assert value(after, "cosftp_transfer_bytes_total", direction=direction, result="ok") \
            == value(before, "cosftp_transfer_bytes_total", direction=direction,
                     result="ok") + len(data)
    assert value(after, "cosftp_cos_requests_total", operation="CompleteMultipartUpload",
                 status="ok") > 0
    assert value(after, "cosftp_upload_buffer_bytes") == 0  # every buffer given back
    _close(ftp)


def test_kept_upload_bytes_go_back_with_the_next_rename_or_the_session(ops, area):
    """A file stored in one PUT keeps its bytes in its session for a rename right after it
    (rclone's ``.partial``): until that rename, the session's next upload, a new login, or
    its end."""
    kept = "cosftp_kept_upload_bytes"
    before = value(scrape(ops), kept)
    ftp = ops.login("alice", "alice-pw")
    put(ftp, f"{area}/a.partial", b"k" * 5000)
    assert value(scrape(ops), kept) == before + 5000
    ftp.rename(f"{area}/a.partial", f"{area}/a")
    assert value(scrape(ops), kept) == before
    for end in (lambda: ftp.sendcmd("REIN"), ftp.quit):
        put(ftp, f"{area}/b", b"k" * 3000)
        put(ftp, f"{area}/c", b"k" * 2000)  # the next upload takes the place of the last
        assert value(scrape(ops), kept) == before + 2000
        end()
        wait_until(lambda: value(scrape(ops), kept) == before, what="the kept bytes back")
        if end != ftp.quit:
            ftp.login("alice", "alice-pw")


def test_metrics_count_failures_retries_parks_and_resumes(ops, area, emulator):
    before = scrape(ops)
    with pytest.raises(ftplib.error_perm, match="530"):
        ops.login("alice", "wrong")
    ftp = ops.login("alice", "alice-pw")
    ftp.voidcmd("TYPE I")
    # Into another directory: a copy, also right after the session's own STOR of the file.
    rename_whose_copy_fails(ftp, emulator, f"{area}/doomed", f"{area}/doomed",
                            f"{area}/elsewhere/renamed")
    data = os.urandom(2 * MIB + 7)
    conn = ftp.transfercmd(f"STOR {area}/parked")
    conn.sendall(data[:MIB + MIB // 2])
    wait_until(lambda: value(scrape(ops), "cosftp_cos_requests_total", operation="UploadPart",
                             status="ok")
               > value(before, "cosftp_cos_requests_total", operation="UploadPart",
                       status="ok"), what="a part stored")
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
    conn.close()  # a reset: the upload is interrupted, and parked
    with pytest.raises(ftplib.error_temp, match="426"):
        ftp.voidresp()
    wait_until(lambda: value(scrape(ops), "cosftp_uploads_parked_total")
               > value(before, "cosftp_uploads_parked_total"), what="the upload parked")
    offset = ftp.size(f"{area}/parked")
    ftp.sendcmd(f"REST {offset}")
    conn = ftp.transfercmd(f"STOR {area}/parked")
    conn.sendall(data[offset:])
    conn.close()
    assert ftp.voidresp().startswith("226")
    after = scrape(ops)
    assert value(after, "cosftp_logins_total", result="failed") == value(
        before, "cosftp_logins_total", result="failed") + 1
    for name, labels, more in (("cosftp_cos_requests_total", {"status": "503"}, 4),
                               ("cosftp_cos_retries_total", {}, 3)):
        assert value(after, name, operation="COPY", **labels) == value(
            before, name, operation="COPY", **labels) + more
    assert value(after, "cosftp_transfers_total", direction="upload", result="failed") == \
        value(before, "cosftp_transfers_total", direction="upload", result="failed") + 1
    assert value(after, "cosftp_uploads_resumed_total") == value(
        before, "cosftp_uploads_resumed_total") + 1
    assert get(ftp, f"{area}/parked") == data
    _close(ftp)


def test_metrics_endpoint_answers_only_metrics(ops):
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(f"http://127.0.0.1:{ops.metrics_port}/other", timeout=10)
    assert raised.value.code == 404
    with socket.create_connection(("127.0.0.1", ops.metrics_port), timeout=10) as sock:
        sock.sendall(b"\x00\x01garbage\r\n\r\n")
        sock.recv(4096)
    assert value(scrape(ops), "cosftp_sessions") >= 0  # still serving


def _cut_off(sock: socket.socket) -> bool:
    """True once the server closed (or reset) ``sock``."""
    if not select.select([sock], [], [], 0)[0]:
        return False
    try:
        return sock.recv(4096) == b""
    except OSError:
        return True


def test_slow_clients_cannot_take_every_scrape_slot(ops):
    """Before: 8 connections dripping their request a byte at a time held every place of the
    exporter for as long as they dripped (the timeout was per recv), and every scrape was
    closed unanswered. Now each request head has one deadline from the accept, and one
    source holds at most a few places."""
    drippers = [socket.create_connection(("127.0.0.1", ops.metrics_port), timeout=10,
                                         source_address=(f"127.0.0.{2 + n % 4}", 0))
                for n in range(24)]
    stop = threading.Event()

    def drip() -> None:
        while not stop.wait(0.5):
            for sock in drippers:
                with contextlib.suppress(OSError):
                    sock.send(b"G")

    dripping = threading.Thread(target=drip, daemon=True)
    dripping.start()
    try:
        for _ in range(3):
            assert value(scrape(ops), "cosftp_sessions") >= 0
        wait_until(lambda: all(_cut_off(sock) for sock in drippers), timeout=30,
                   what="every dripping connection cut off")
    finally:
        stop.set()
        dripping.join()
        for sock in drippers:
            sock.close()
    log = ops.log_text()
    assert "metrics connection closed: request head not complete within 5s" in log
    assert re.search(r"127\.0\.0\.[2-5]: metrics connection refused: 4 connections from "
                     r"127\.0\.0\.[2-5] served at once", log)


def test_worker_restarts_keep_counters_and_fold_their_files(ops, area):
    ftp = ops.login("alice", "alice-pw")
    put(ftp, area, b"x" * 1000)
    before = scrape(ops)
    assert value(before, "cosftp_sessions") >= 1
    for index in (1, 2):  # the session held open dies with its worker
        wait_until(lambda: serving(ops, 1, 2), what="both workers serving")
        victim = next(w.pid for w in state_of(ops).workers() if w.index == index)
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda victim=victim: victim not in {w.pid for w in state_of(ops).workers()}
                   and serving(ops, 1, 2), timeout=30, what="the worker replaced")
    ftp.close()
    after = scrape(ops)
    assert value(after, "cosftp_sessions") == 0, "a dead worker's sessions are still counted"
    assert value(after, "cosftp_worker_restarts_total", reason="exited") == value(
        before, "cosftp_worker_restarts_total", reason="exited") + 2
    for key, number in before.items():
        if key[0].endswith("_total"):
            assert after.get(key, 0.0) >= number, f"{key} went down: {number} -> {after.get(key)}"
    live = {str(w.pid) for w in state_of(ops).workers()} | {str(ops.proc.pid)}
    files = metrics_files(ops)
    for name in files:
        owner = re.search(r"_(\d+)\.db$", name)
        assert owner is None or owner.group(1) in live, f"{name} of a dead process: {files}"
    assert "counter_archive.db" in files


def test_a_killed_exporter_is_started_again(ops):
    master = psutil.Process(ops.proc.pid)

    def exporters() -> list[int]:
        found = []
        for child in master.children():
            try:
                if "metrics exporter" in " ".join(child.cmdline()):
                    found.append(child.pid)
            except psutil.Error:  # a zombie, or gone
                pass
        return found

    wait_until(lambda: len(exporters()) == 1, what="one exporter")
    first = exporters()[0]
    os.kill(first, signal.SIGKILL)

    def replaced() -> bool:
        # One look at the children: the killed exporter can still be listed by one call
        # and be a zombie (not listed) by the next.
        found = exporters()
        return bool(found) and first not in found
    wait_until(replaced, timeout=30, what="a new exporter")
    wait_until(lambda: _scrapes(ops), timeout=30, what="the endpoint back")


def _scrapes(proc: ServerProcess) -> bool:
    try:
        return "cosftp_sessions" in {key[0] for key in scrape(proc)}
    except OSError:
        return False


# --- xferlog and vsftpd.log


def test_xferlog_lines_after_stor_retr_and_cut_off_transfers(ops, area):
    ftp = ops.login("alice", "alice-pw")
    name = f"/{area}/my report.txt"
    assert put(ftp, name, b"r" * 1000).startswith("226")
    assert get(ftp, name) == b"r" * 1000
    put(ftp, f"/{area}/big", os.urandom(8 * MIB))
    reader = SlowReader(ftp, f"/{area}/big", SLOW_RATE, burst=MIB)
    wait_until(lambda: reader.count >= MIB + SLOW_RATE, what="the slow client to read")
    got = reader.cut()  # the client cuts the download off
    with pytest.raises(ftplib.error_temp, match="426"):
        ftp.voidresp()
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd(f"STOR /{area}/aborted")
    conn.sendall(b"a" * 70_000)
    ftp.abort()
    conn.close()
    _close(ftp)
    wait_until(lambda: any(f"/{area}/aborted" in line for line in log_lines(ops, "xferlog")),
               what="the aborted upload in xferlog")
    mine = [line.split() for line in log_lines(ops, "xferlog") if f"/{area}/" in line]
    assert len(mine) == 5, mine
    for fields in mine:
        assert len(fields) == 18, fields  # a 5-word date, then 13 fields
        assert re.fullmatch(r"\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4}", " ".join(fields[:5]))
        assert int(fields[5]) >= 1 and fields[6] == "127.0.0.1"
        assert fields[9:11] == ["b", "_"] and fields[12:17] == ["r", "alice", "ftp", "0", "*"]
    # (path, direction) -> (bytes, completion)
    seen = {(fields[8], fields[11]): (int(fields[7]), fields[17]) for fields in mine}
    flat = name.replace(" ", "_")
    assert seen[(flat, "i")] == (1000, "c") and seen[(flat, "o")] == (1000, "c")
    assert seen[(f"/{area}/big", "i")] == (8 * MIB, "c")
    cut, status = seen[(f"/{area}/big", "o")]
    # What the client had, not what sat in the server's socket buffers (megabytes more).
    assert status == "i" and 0.9 * got <= cut <= 1.1 * got, (got, cut)
    got, status = seen[(f"/{area}/aborted", "i")]
    assert status == "i" and 0 < got <= 70_000
    vsftpd = [line for line in log_lines(ops, "vsftpd.log") if f"/{area}/" in line]
    assert re.search(rf'\[pid \d+\] \[alice\] OK UPLOAD: Client "127.0.0.1", "{name}", '
                     r"1000 bytes, [\d.]+Kbyte/sec$", vsftpd[0])
    assert ["OK DOWNLOAD" in vsftpd[1], "FAIL DOWNLOAD" in vsftpd[3],
            "FAIL UPLOAD" in vsftpd[4]] == [True] * 3
    assert f", {cut} bytes, " in vsftpd[3]


def test_status_counts_an_upload_while_it_runs_and_no_heartbeat_age_is_negative(ops, area):
    """BYTES_UP grows with an upload in flight, not only when it ends; BEAT, the age of each
    worker's last heartbeat, is never negative (``status`` reads the heartbeats after its
    0.2 s CPU sample: a beat written meanwhile must not come out from the future)."""
    bytes_up = {int(row[0]): int(row[7]) for row in status_rows(ops)}
    ftp = ops.login("alice", "alice-pw")
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd(f"STOR {area}")
    conn.sendall(os.urandom(2 * MIB))
    wait_until(lambda: rows_of(ops, f"STOR {area}", 2 * MIB),
               what="the upload's bytes in cosftpctl sessions")
    worker = int(rows_of(ops, f"STOR {area}")[0][0])
    beats = []
    for _ in range(8):  # a beat falls within the 0.2 s sample about once in five calls
        rows = status_rows(ops)
        beats += [float(row[12].rstrip("s")) for row in rows if row[12] != "-"]
        mine = next(row for row in rows if int(row[0]) == worker)
        assert int(mine[7]) >= bytes_up[worker] + 2 * MIB, mine  # BYTES_UP, mid-upload
    assert beats and min(beats) >= 0, beats
    conn.close()
    assert ftp.voidresp().startswith("226")
    _close(ftp)


def test_reloads_are_counted(ops):
    before = scrape(ops)
    with open(ops.config_path, encoding="utf-8") as handle:
        good = handle.read()
    try:
        with open(ops.config_path, "w", encoding="utf-8") as handle:
            handle.write(good.replace("worker_processes = 2", "worker_processes = many"))
        os.kill(ops.proc.pid, signal.SIGHUP)
        wait_until(lambda: value(scrape(ops), "cosftp_reloads_total", result="failed")
                   == value(before, "cosftp_reloads_total", result="failed") + 1,
                   what="the failed reload counted")
    finally:
        with open(ops.config_path, "w", encoding="utf-8") as handle:
            handle.write(good)
    assert ops.ctl("reload").returncode == 0
    wait_until(lambda: value(scrape(ops), "cosftp_reloads_total", result="ok")
               == value(before, "cosftp_reloads_total", result="ok") + 1, timeout=60,
               what="the reload counted")


def test_metrics_files_of_a_previous_run_are_wiped_at_start(emulator, tmp_path):
    proc = _operated(str(tmp_path), emulator.port, [Account("alice", "alice-pw", ALPHA)])
    stale_dir = os.path.join(proc.log_dir, "cosftp.pid.metrics")
    os.makedirs(stale_dir, mode=0o755)
    # pid 1 never dies: only the wipe at start can drop these values.
    stale = MmapedDict(os.path.join(stale_dir, "counter_1.db"))
    stale.write_value(mmap_key("cosftp_reloads", "cosftp_reloads_total", ["result"], ["ok"],
                               "stale"), 1000.0, 0.0)
    stale.close()
    with proc:
        counts = scrape(proc)
        assert value(counts, "cosftp_reloads_total", result="ok") == 0
        assert "counter_1.db" not in metrics_files(proc)
        assert os.stat(stale_dir).st_mode & 0o777 == 0o700


def test_a_metrics_port_in_use_stops_the_start(emulator, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = ServerProcess(str(tmp_path), emulator.port, [Account("alice", "alice-pw", ALPHA)],
                             network={"metrics_port": str(taken.getsockname()[1])})
        proc.write_config()
        done = proc.ctl("run")
    assert done.returncode == 1
    assert re.search(r"CRITICAL .*cannot listen for metrics on 127\.0\.0\.1 port \d+: .*in use",
                     proc.log_text())


def test_logs_and_metrics_off_by_default(server):
    assert not os.path.exists(os.path.join(server.log_dir, "cosftp.pid.metrics"))
    assert not os.path.exists(os.path.join(server.log_dir, "xferlog"))


def test_metrics_port_cannot_be_an_ftp_port():
    text = "".join(a.section(i, 9000) for i, a in enumerate(STANDARD_ACCOUNTS[:1]))
    with pytest.raises(ConfigError, match=r"\[NETWORK\] metrics_port.*already an FTP port"):
        parse_config(text + "[NETWORK]\nlisten_port = 2121\nmetrics_port = 2121\n")


# --- fail2ban


def test_stock_fail2ban_vsftpd_filter_matches_failed_logins_only(emulator, tmp_path):
    f2b = require("fail2ban-regex")
    proc = _operated(str(tmp_path), emulator.port, [Account("alice", "alice-pw", ALPHA)],
                     max_login_failures="3", ban_time="300")
    with proc:
        _close(proc.login("alice", "alice-pw"))
        forged = 'x] FAIL LOGIN: Client "10.9.9.9",'  # would ban someone else, if written raw
        for user in ("alice", "nobody", forged):
            with pytest.raises(ftplib.error_perm, match="530"):
                proc.login(user, "wrong")
        with pytest.raises(ftplib.error_temp, match="421"):
            proc.login("alice", "alice-pw")
        counts = scrape(proc)
        log = os.path.join(proc.log_dir, "vsftpd.log")
        done = subprocess.run([f2b, "--out", "ip", log, F2B_VSFTPD_FILTER],
                              capture_output=True, text=True, timeout=60)
    with open(log, encoding="utf-8") as handle:
        text = handle.read()
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["127.0.0.1"] * 3, (done.stdout, text)
    assert value(counts, "cosftp_logins_total", result="failed") == 3
    assert value(counts, "cosftp_logins_total", result="ok") == 1
    assert value(counts, "cosftp_logins_total", result="banned") >= 1
    assert text.count("OK LOGIN") == 1 and text.count("] FAIL LOGIN") == 3
    _check_shipped_jail(tmp_path, log)


def _check_shipped_jail(tmp_path, log: str) -> None:
    """fail2ban accepts conf/fail2ban's jail pointed at the log (Debian's default sshd jail,
    whose log this machine may lack, left out)."""
    etc = tmp_path / "fail2ban"
    shutil.copytree("/etc/fail2ban", etc)
    for name in os.listdir(etc / "jail.d"):
        os.unlink(etc / "jail.d" / name)
    with open(os.path.join(ROOT, "conf", "fail2ban", "jail.d", "cosftp-prefork.conf"),
              encoding="utf-8") as handle:
        jail = re.sub(r"(?m)^logpath\s*=.*$", f"logpath = {log}", handle.read())
    (etc / "jail.d" / "cosftp-prefork.conf").write_text(jail, encoding="utf-8")
    done = subprocess.run([require("fail2ban-client"), "-c", str(etc), "-t"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
