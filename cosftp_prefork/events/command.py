"""A command destination: the event on its standard input and in its environment.

The program runs without a shell (its arguments as configured), in ``/``, in a session of its
own, with an environment of only ``PATH`` and one ``COSFTP_<FIELD>`` variable per field of
the event (``COSFTP_EVENT``, ``COSFTP_EVENT_ID``, ``COSFTP_PATH``…; true/false for booleans,
empty for none): never the server's own environment, which may hold the secrets the
configuration file takes from it. Exit status 0 means delivered. A program still running at
the timeout is killed with its whole process group. What it writes to standard error is kept
up to ``MAX_STDERR`` bytes for the log; standard output is discarded.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import time
from typing import Optional

MAX_STDERR = 2048
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


def environment(body: str) -> dict[str, str]:
    """``PATH`` and ``COSFTP_<FIELD>`` for each field of the event ``body``."""
    env = {"PATH": SAFE_PATH}
    for name, value in json.loads(body).items():
        if isinstance(value, (dict, list)):
            continue
        text = "" if value is None else ("true" if value is True else
                                         "false" if value is False else str(value))
        env[f"COSFTP_{name.upper()}"] = text.replace("\0", "")
    return env


class CommandResult:
    """How a run ended: ``status`` (None: killed at the timeout) and the start of stderr."""

    def __init__(self, status: Optional[int], stderr: bytes) -> None:
        self.status, self.stderr = status, stderr


def run(argv: list[str], body: str, timeout: float) -> CommandResult:
    """Run ``argv`` with the event ``body``; raises ``OSError`` if it cannot be started."""
    deadline = time.monotonic() + timeout
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=environment(body), cwd="/",
                            close_fds=True, start_new_session=True)
    status: Optional[int] = None
    try:
        stderr = exchange(proc, body.encode(), proc.stderr, MAX_STDERR, deadline)
        status = proc.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        stderr = b""
    finally:
        reap(proc, killed=status is None)
    return CommandResult(status, stderr)


def exchange(proc: subprocess.Popen, data: bytes, stream, keep: int, deadline: float,
             stop: bool = False) -> bytes:
    """Write all of ``data`` to the program's stdin (unless it closes it) while reading
    ``stream`` (its stdout or stderr) until it closes that; return the first ``keep`` bytes
    read. The rest is
    read and dropped (a pipe nobody drains would stall the program), or, with ``stop``, not
    read at all: reading ends once ``keep`` bytes came. ``subprocess.TimeoutExpired`` at
    ``deadline``."""
    assert proc.stdin is not None
    kept, pending = bytearray(), memoryview(data)
    with selectors.DefaultSelector() as selector:
        os.set_blocking(proc.stdin.fileno(), False)
        selector.register(proc.stdin, selectors.EVENT_WRITE)
        selector.register(stream, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise subprocess.TimeoutExpired(proc.args, 0)
            for key, _ in selector.select(remaining):
                if key.fileobj is proc.stdin:
                    pending = feed(proc, selector, pending)
                    continue
                chunk = os.read(stream.fileno(), 65536)
                kept += chunk[:keep - len(kept)]
                if not chunk or (stop and len(kept) == keep):
                    selector.unregister(stream)
    return bytes(kept)


def feed(proc: subprocess.Popen, selector: selectors.BaseSelector,
         pending: memoryview) -> memoryview:
    """Write what the program's stdin takes now; close it once all is written, or once
    the program closed it (an event program that exits 0 without reading its event
    delivered it; an auth hook may answer without reading the question). Returns what
    is left to write."""
    assert proc.stdin is not None
    try:
        pending = pending[os.write(proc.stdin.fileno(), pending):]
    except BrokenPipeError:
        pending = pending[:0]
    if not pending:
        selector.unregister(proc.stdin)
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
    return pending


def reap(proc: subprocess.Popen, killed: bool) -> None:
    """Close the program's pipes and reap it; ``killed``: kill its process group (it runs
    in a session of its own) first."""
    if killed:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    proc.wait()


def describe(result: CommandResult, timeout: float) -> str:
    """Why a run failed, for the log (stderr's first line, escaped by the log)."""
    if result.status is None:
        return f"still running after {timeout:g}s: killed"
    first = result.stderr.decode("utf-8", "replace").strip().splitlines()[:1]
    how = f"killed by signal {-result.status}" if result.status < 0 else \
        f"exit status {result.status}"
    return f"{how}{': ' + first[0][:200] if first else ''}"

