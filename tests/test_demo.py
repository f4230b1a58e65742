"""README command 1: ``scripts/demo`` serves the demo account, with the network options of
the config and the emulator on the port asked for, prints a banner that stands out, says why
the server could not start, and stops everything on Ctrl-C. The command docs/operations.md
gives to run the emulator alone works."""

from __future__ import annotations

import contextlib
import ftplib
import io
import os
import queue
import shlex
import signal
import socket
import subprocess
import sys
import threading
import types
from typing import Optional

import psutil

from .conftest import _close
from .emulator_proc import sdk_client
from .server_proc import (
    ROOT,
    Account,
    ServerProcess,
    passive_ports,
    start_listening,
    wait_until,
)

DEMO = os.path.join(ROOT, "scripts", "demo")


def _collect(lines: queue.Queue, out: list[str]) -> str:
    with contextlib.suppress(queue.Empty):
        while True:
            out.append(lines.get_nowait())
    return "".join(out)


def _ours(tag: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if tag in " ".join(proc.info["cmdline"] or []) and \
                    proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
    return found


def test_demo_serves_on_the_given_ports_and_stops_on_ctrl_c(tmp_path):
    # The worker's passive ports (20 of them), clear of the ports other processes are given.
    (low, _), demo_dir = passive_ports(), str(tmp_path / "demo")
    outputs: list[queue.Queue] = []  # the lines of each demo started

    def launch(port: int, cos_port: int) -> subprocess.Popen:
        demo = subprocess.Popen(
            ["bash", DEMO, "--port", str(port), "--passive-ports", f"{low},{low + 20}",
             "--cos-port", str(cos_port), "--dir", demo_dir],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        outputs.append(queue.Queue())
        threading.Thread(target=lambda lines=outputs[-1]: [lines.put(line)
                                                           for line in demo.stdout],
                         daemon=True).start()
        return demo
    out: list[str] = []
    proc: Optional[subprocess.Popen] = None
    try:
        # Its server and emulator, not another test file's, on the ports: start_listening.
        proc, (port, cos_port) = start_listening(launch, "the demo", (0, 0), timeout=180)
        lines = outputs[-1]
        wait_until(lambda: "Press Ctrl-C to stop." in _collect(lines, out)
                   or proc.poll() is not None, timeout=180, what="the demo banner")
        text = _collect(lines, out)
        assert "Press Ctrl-C to stop." in text, text
        rule = "=" * 76
        assert f"{rule}\n  cosftp-prefork demo: serving on 127.0.0.1 port {port}\n" in text
        assert "password:  demo\n" in text
        # As --passive-ports and passive_port take them (it once said 47100-47120).
        assert f"passive:   {low},{low + 20} (passive_port, low,high)\n" in text
        assert f"on the embedded COS emulator (port {cos_port}, memory only)" in text
        assert " INFO [" not in text  # the server logs to its file, not over the banner
        ftp = ftplib.FTP()
        ftp.connect("127.0.0.1", port, timeout=30)
        ftp.login("demo", "demo")
        assert low <= ftp.makepasv()[1] <= low + 20
        ftp.storbinary("STOR hello.txt", io.BytesIO(b"hello from the demo"))
        got = bytearray()
        ftp.retrbinary("RETR hello.txt", got.extend)
        assert bytes(got) == b"hello from the demo"
        _close(ftp)
        cos = sdk_client(types.SimpleNamespace(region="ap-guangzhou", port=cos_port))
        stored = cos.get_object(Bucket="demo-1250000000", Key="hello.txt")
        assert stored["Body"].get_raw_stream().read() == b"hello from the demo"
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
        assert proc.wait(60) == 0
        wait_until(lambda: not _ours(demo_dir), what="the demo's server and emulator to exit")
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for leftover in _ours(demo_dir):
            leftover.kill()


def test_demo_says_why_the_server_could_not_start(tmp_path):
    demo_dir = tmp_path / "demo"
    demo_dir.mkdir()
    # An earlier run's failure, still in the appended log: not this run's reason.
    (demo_dir / "cosftp.log").write_text(
        "2026-01-01 00:00:00,000 CRITICAL [1 master] cosftp_prefork: an earlier failure\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(["bash", DEMO, "--port", str(port), "--dir", str(demo_dir)],
                              capture_output=True, text=True, timeout=180)
    assert done.returncode == 1
    assert "demo: the server exited with status 1:\n" in done.stderr
    reason = done.stderr.split("status 1:\n", 1)[1]
    assert f"cannot listen on 127.0.0.1 port {port}: [Errno 98] Address already in use" \
        in reason, done.stderr
    assert "an earlier failure" not in reason
    assert f"(whole log: {demo_dir / 'cosftp.log'})" in reason


def _documented_emulator_command() -> list[str]:
    with open(os.path.join(ROOT, "docs", "operations.md"), encoding="utf-8") as handle:
        lines = [line.strip() for line in handle]
    command, = (line for line in lines
                if line.startswith(".venv/bin/python -m cosftp_prefork.emulator.app "))
    return shlex.split(command)


def test_the_documented_command_runs_the_emulator_alone_for_a_server(tmp_path):
    args = _documented_emulator_command()
    args[0] = sys.executable  # the docs' .venv/bin/python
    bucket = args[args.index("--bucket") + 1]
    at = args.index("--port") + 1

    def launch(port: int) -> subprocess.Popen:
        args[at] = str(port)
        return subprocess.Popen(args, stdout=subprocess.DEVNULL)
    # This emulator, not another test file's, on the port: start_listening.
    emulator, (cos_port,) = start_listening(launch, "the emulator the docs start", timeout=60)
    try:
        with ServerProcess(str(tmp_path), cos_port, [Account("demo", "demo", bucket)]) as server:
            ftp = server.login("demo", "demo")
            ftp.storbinary("STOR kept.txt", io.BytesIO(b"in the emulator alone"))
            _close(ftp)
        cos = sdk_client(types.SimpleNamespace(region="ap-guangzhou", port=cos_port))
        stored = cos.get_object(Bucket=bucket, Key="kept.txt")
        assert stored["Body"].get_raw_stream().read() == b"in the emulator alone"
    finally:
        emulator.terminate()
        emulator.wait(30)
