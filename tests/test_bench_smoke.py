"""The benchmark is a script run by hand; this only keeps it from rotting (tiny sizes)."""

from __future__ import annotations

import os
import subprocess
import sys

from cosftp_prefork.config.options import BY_SECTION

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
         "8", "worker", "peak", "lftp", "lftp", "lftp", "lftp", "STOR", "STOR", "STOR", "LIST",
         "LIST", "LIST", "4", "peak"]
    # Every row with a target has a verdict; the rows at 0 ms of issue 21 are reported.
    verdicts = [row.split("|")[6].strip() for row in rows]
    assert set(verdicts) <= {"PASS", "FAIL", "-"}
    assert [row for row in rows if row.split("|")[6].strip() == "-"] == \
        [row for row in rows if "at 0 ms" in row and "mirror" in row]
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
