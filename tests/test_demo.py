"""README command 1: ``scripts/demo`` serves the demo account, with the network options of
the config, prints a banner that stands out, and stops everything on Ctrl-C."""

from __future__ import annotations

import contextlib
import ftplib
import io
import os
import queue
import signal
import subprocess
import threading

import psutil

from .conftest import _close
from .server_proc import ROOT, free_port, wait_until


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
    port, low = free_port(), 47100
    demo_dir = str(tmp_path / "demo")
    proc = subprocess.Popen(
        ["bash", os.path.join(ROOT, "scripts", "demo"), "--port", str(port),
         "--passive-ports", f"{low},{low + 20}", "--dir", demo_dir],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout],
                     daemon=True).start()
    out: list[str] = []
    try:
        wait_until(lambda: "Press Ctrl-C to stop." in _collect(lines, out)
                   or proc.poll() is not None, timeout=180, what="the demo banner")
        text = _collect(lines, out)
        assert "Press Ctrl-C to stop." in text, text
        rule = "=" * 76
        assert f"{rule}\n  cosftp-prefork demo: serving on 127.0.0.1 port {port}\n" in text
        assert f"passive:   ports {low}-{low + 20}\n" in text and "password:  demo\n" in text
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
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
        assert proc.wait(60) == 0
        wait_until(lambda: not _ours(demo_dir), what="the demo's server and emulator to exit")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for leftover in _ours(demo_dir):
            leftover.kill()
