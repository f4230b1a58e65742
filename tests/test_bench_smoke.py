"""The benchmark is a script run by hand; this only keeps it from rotting (tiny sizes)."""

from __future__ import annotations

import ftplib
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from cosftp_prefork.config.options import BY_SECTION

from .server_proc import TEST_PASSIVE_PORTS, passive_ports

# Nine tests, but each runs a bench script end to end: first to a worker (conftest.py).
pytestmark = pytest.mark.long_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_runs_every_row_on_tiny_sizes():
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "run.py"), "--size-mib", "2",
         "--part-mib", "1", "--runs", "1", "--files", "8", "--keys", "120",
         "--latency-files", "4", "--latency-ms", "5", "--many-files", "16", "--engine-mib",
         "2", "--budget-mib", "4", "--budget-latency-ms", "5", "--cos-latency-ms", "5",
         "--trip-files", "2"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-8000:]
    # The servers log at the product's default level: what a user's gateway pays per file.
    default = BY_SECTION["OPTIONAL"]["log_level"].default
    assert f"The gateway's servers log at {default} (the product's default)" in done.stdout
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")][1:]
    assert [row.split("|")[1].split()[0] for row in rows] == \
        ["lftp", "lftp", "lftp", "lftp", "rclone", "16", "COS", "STOR", "STOR", "RETR", "RETR",
         "8", "worker", "peak", "lftp", "lftp", "lftp", "lftp", "STOR", "STOR", "STOR", "STOR",
         "STOR", "RETR", "RETR", "LIST", "LIST", "LIST", "4", "peak"]
    # Every row with a target has a verdict; the rows at 0 ms of issue 21 and the TLS rows
    # are reported.
    verdicts = [row.split("|")[6].strip() for row in rows]
    assert set(verdicts) <= {"PASS", "FAIL", "-"}
    assert [row for row in rows if row.split("|")[6].strip() == "-"] == \
        [row for row in rows if ("at 0 ms" in row and "mirror" in row) or "over TLS" in row]
    # Each small-file row says what every process spent per file, gateway and baseline;
    # each mirror row, gateway, rclone serve ftp (its process too) and the SDK.
    cpu = [line for line in done.stdout.splitlines() if "CPU ms per file" in line]
    assert [line.split(" of ")[0].split(" files")[0] for line in cpu] == \
        ["lftp mirror -R", "lftp mirror (download)", "16", "8", "lftp mirror -R",
         "lftp mirror (download)", "4"]
    for line in cpu:
        sides = ("gateway", "rclone", "SDK") if line.startswith("lftp") else \
            ("gateway", "baseline")
        for side in sides:
            assert f"{side}: emulator" in line and "workers" in line and "client" in line


def test_the_hops_script_times_every_hop_of_a_few_files():
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "hops.py"), "--files", "8",
         "--latency-ms", "5"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-8000:]
    rows = [line.split("|")[1].strip() for line in done.stdout.splitlines()
            if line.startswith("| ")][1:]
    assert rows[0] == "PASV to 227" and rows[-1] == "a file (PASV to the next PASV)"
    assert len(rows) == 10


def test_the_hops_script_times_a_few_downloads():
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "hops.py"), "--files", "8",
         "--latency-ms", "5", "--download"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-8000:]
    rows = [line.split("|")[1].strip() for line in done.stdout.splitlines()
            if line.startswith("| ")][1:]
    assert rows[0] == "MLSD to 226 (its requests: LIST, LIST)", rows
    assert rows[-1] == "a file (PASV to the next PASV)"
    assert "RETR to its GET at the emulator" in rows


def test_the_splice_relay_script_prints_the_relays_cpu_per_gib():
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "splice_relay.py"), "--gib", "0.01",
         "--rounds", "1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-8000:]
    assert done.stdout.startswith("round 1 host default: user ") and "s/GiB" in done.stdout


def test_the_rates_bench_measures_every_row():
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "rates.py"), "--rate-kib", "64",
         "--size-kib", "96", "--runs", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-8000:]
    rows = [line.split("|") for line in done.stdout.splitlines() if line.startswith("| ")][1:]
    assert [row[1].split(",")[0].split(" (")[0].strip() for row in rows] == \
        ["RETR", "STOR", "RETR over TLS", "STOR over TLS", "RETR in ASCII mode", "RETR"]
    assert {row[3].strip() for row in rows} == {"64.00 KiB/s"}
    assert {row[6].strip() for row in rows} <= {"PASS", "FAIL"}


def test_the_emulator_cpu_script_measures_every_request_kind():
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "emulator_cpu.py"), "--count", "5",
         "--rounds", "1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-8000:]
    summary = done.stdout.split("emulator CPU per request", 1)[1].splitlines()[1:]
    assert [line.split()[0] for line in summary] == \
        ["LIST", "PUT", "COPY", "MARKER", "HEAD", "GET", "DELETE", "DELETEMANY"]


def test_the_ctl_cost_script_times_stop_status_sessions_and_bans_against_another_tree():
    """Compared with a tree of this very checkout: both versions run each command. Found:
    bans and unban were not measured."""
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "ctl_cost.py"), "--accounts", "2",
         "--runs", "1", "--before", ROOT], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-8000:]
    results = json.loads(done.stdout)["results"]
    assert {label: {name: found["exits"] for name, found in by.items()}
            for label, by in results.items()} == \
        {"stop, none running": {"this": [3], "before": [3]},
         "status": {"this": [0], "before": [0]}, "sessions": {"this": [0], "before": [0]},
         "bans": {"this": [0], "before": [0]},
         "unban, not banned": {"this": [0], "before": [0]}}


def _ephemeral_ports() -> range:
    """The ports the kernel gives to connect() and bind(0) (ip_local_port_range)."""
    with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as handle:
        low, high = map(int, handle.read().split())
    return range(low, high + 1)


def by_hand(monkeypatch) -> None:
    """This process as a bench script run by hand: no pytest in its environment (called
    in the test's body: pytest sets PYTEST_CURRENT_TEST again as each phase begins)."""
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_CURRENT_TEST"):
        monkeypatch.delenv(name, raising=False)


def test_a_bench_run_by_hand_takes_passive_ports_of_neither_the_kernel_nor_the_tests(
        monkeypatch):
    """The bench's servers (ServerProcess's default) took the whole of the tests' area
    outside pytest: a bench run beside the suite picked the ports of its servers."""
    by_hand(monkeypatch)
    low, high = passive_ports()
    ephemeral = _ephemeral_ports()
    assert high < ephemeral.start, (low, high)
    assert not set(range(low, high + 1)) & set(TEST_PASSIVE_PORTS), (low, high)


def test_rclone_of_the_bench_answers_pasv_below_the_kernels_ports_and_beside_ours(
        emulator, monkeypatch):
    """``rclone serve ftp`` took ``30000 + port % 20000`` and 200 more: in the kernel's
    ephemeral range (a client's connect() could take one) or in the tests' area. Now the
    second half of the bench's range; the gateway's server has the first."""
    by_hand(monkeypatch)
    spec = importlib.util.spec_from_file_location("bench_run",
                                                  os.path.join(ROOT, "bench", "run.py"))
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_run", bench)  # (its dataclasses look it up)
    spec.loader.exec_module(bench)
    with bench.RcloneFtp(emulator.port, emulator.buckets[0]) as rclone:
        ftp = ftplib.FTP()
        ftp.connect("127.0.0.1", rclone.port, timeout=30)
        try:
            ftp.login("u", "p")
            port = ftp.makepasv()[1]
        finally:
            ftp.close()
    assert port < _ephemeral_ports().start and port not in TEST_PASSIVE_PORTS, port
    low, high = bench.passive_range(0)
    assert not low <= port <= high, (port, low, high)
