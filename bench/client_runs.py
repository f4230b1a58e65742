"""Real FTP clients run to their end by the bench scripts, and what a client that hangs was
doing: its command line, its last output, its state and CPU time when it was killed, and the
server's log lines of its sessions.

A client that never exits is a failure in its own right (the server may be holding it, or
the client may loop on its own): it is killed after its timeout and reported, never counted
as one more client that merely failed during the chaos.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import time
from dataclasses import dataclass
from typing import Optional

import psutil

from tests.server_proc import within

# The session part of a server log line: ``[pid worker n session=… user=… ip=…]``.
SESSION = re.compile(r"\[(\d+) worker \d+ session=(\w+) user=(\S+) ip=\S+\]")
LOG_TIME = "%Y-%m-%d %H:%M:%S"


@dataclass
class ClientRun:
    """One client run: what ran, under which FTP user, how it ended. ``hang`` describes a
    client killed after its timeout (None when it exited by itself)."""

    name: str
    user: str
    command: list[str]
    started: float  # wall-clock seconds
    ended: float
    returncode: int
    stdout: str
    stderr: str
    debug_log: Optional[str] = None  # the client's own debug output, if it wrote one
    hang: Optional[str] = None

    def tail(self, lines: int = 1) -> list[str]:
        """The last ``lines`` lines of the client's stderr, else of its stdout, else the
        errors of its debug log (rclone writes its errors only there once given one)."""
        said = (self.stderr.strip() or self.stdout.strip()).splitlines()
        if not said and self.debug_log:
            said = [line for line in _tail_of(self.debug_log, 2000)
                    if " ERROR : " in line or " NOTICE: " in line]
        return said[-lines:]


def run_client(name: str, user: str, command: list[str], timeout: float,
               env: Optional[dict] = None, debug_log: Optional[str] = None) -> ClientRun:
    """Run ``command`` (an FTP client logged in as ``user``) to its end and return the run.
    One still running after ``timeout`` seconds (stretched by the machine's load, as the
    tests' hang guards are) is killed; its run says how it looked then in ``hang``."""
    started = time.time()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env, errors="replace") as proc:
        hang = None
        try:
            out, err = within(lambda seconds: proc.communicate(timeout=seconds), timeout)
        except subprocess.TimeoutExpired:
            hang = _how_it_hangs(proc.pid, time.time() - started)
            proc.kill()
            out, err = proc.communicate()
    return ClientRun(name, user, command, started, time.time(), proc.returncode, out, err,
                     debug_log, hang)


def _how_it_hangs(pid: int, ran: float) -> str:
    """How the client ``pid`` looks after running ``ran`` seconds: its state, the CPU it
    used (a client spinning in a loop of its own uses all of it; one waiting for the server
    next to none) and its TCP connections."""
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            cpu = process.cpu_times()
            state = process.status()
            connections = [f"{c.laddr.port}->{c.raddr.port} {c.status}"
                           for c in process.net_connections("tcp") if c.raddr]
    except psutil.Error as exc:
        return f"no exit within {ran:.0f} s ({exc})"
    return (f"no exit within {ran:.0f} s: state {state}, {cpu.user + cpu.system:.1f} CPU s, "
            f"connections {', '.join(connections) or 'none'}")


def session_lines(log_path: str, run: ClientRun, slack: float = 2.0) -> list[str]:
    """The server log lines of ``run``'s sessions: every line of a session that logged in as
    its user while it ran (the line before the login included). Sessions are told apart by
    worker pid and session id, within the run's time (an id is reused once its session
    ended)."""
    first = time.strftime(LOG_TIME, time.localtime(run.started - slack))
    last = time.strftime(LOG_TIME, time.localtime(run.ended + slack))
    lines = []
    with contextlib.suppress(OSError), \
            open(log_path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if first <= line[:19] <= last:
                lines.append(line.rstrip("\n"))
    ours = set()
    for line in lines:
        found = SESSION.search(line)
        if found and found.group(3) == run.user:
            ours.add(found.group(1, 2))
    return [line for line in lines
            if (found := SESSION.search(line)) and found.group(1, 2) in ours]


def hang_report(run: ClientRun, log_path: str, keep: str, lines: int = 25) -> str:
    """What ``run``, a client that hung, was doing: its command line, its state when killed,
    its last output (its debug log's, if any), and the last ``lines`` server log lines of
    its sessions; all of them, and the whole debug log's tail, are written to ``keep``."""
    server = session_lines(log_path, run)
    debug = _tail_of(run.debug_log, 200) if run.debug_log else []
    output = run.tail(10)
    with open(keep, "w", encoding="utf-8") as handle:
        handle.write(f"{shlex.join(run.command)}\n{run.hang}\n\n--- output\n")
        handle.write("\n".join(output) + "\n\n--- debug log (tail)\n")
        handle.write("\n".join(debug) + "\n\n--- server log of its sessions\n")
        handle.write("\n".join(server) + "\n")
    return "\n".join([
        f"{run.name} hung: {run.hang}",
        f"    command: {shlex.join(run.command)}",
        *(f"    output: {line}" for line in output[-3:]),
        *(f"    debug: {line}" for line in debug[-12:]),
        f"    server log of its sessions ({len(server)} lines, last {lines}; all in {keep}):",
        *(f"    | {line}" for line in server[-lines:]),
    ])


# lftp's debug lines (``debug -t``): a command sent, a reply read, the connection lost.
LFTP_SENT = re.compile(r"^\S+ \S+ ---> (.*)$")
LFTP_REPLY = re.compile(r"^\S+ \S+ <--- ([2-5]\d\d) (.*)$")
LFTP_LOST = re.compile(r"^\S+ \S+ \*\*\*\* (Peer closed connection|.*[Rr]eset)")
MFMT_REPLY = re.compile(r"Modify=\d+; (.*)\.$")


def lftp_lost_mfmt(run: ClientRun) -> Optional[str]:
    """The ``MFMT`` line of lftp's debug log that explains ``run``'s hang as lftp's own bug,
    else None: lftp 4.9.2 waits for ever, asleep, once the connection is lost while it waits
    for a file's ``MFMT`` reply and it has no byte of that file left to send (docs/clients.md).

    Recognised only when the log leaves no doubt: the run hung asleep (not spinning), the
    last ``MFMT`` for some file is followed by a lost connection with no reply read in
    between (an ``MFMT`` reply naming another file, of lftp's other session, aside), and
    lftp never sent an ``MFMT`` for that file again. Any other hang returns None."""
    if run.hang is None or "state sleeping" not in run.hang or run.debug_log is None:
        return None
    lines = _tail_of(run.debug_log, 1_000_000)
    last_mfmt: dict[str, int] = {}
    for number, line in enumerate(lines):
        sent = LFTP_SENT.match(line)
        if sent and sent.group(1).startswith("MFMT "):
            last_mfmt[sent.group(1).split(" ", 2)[-1]] = number
    for name, number in last_mfmt.items():
        for line in lines[number + 1:]:
            reply = LFTP_REPLY.match(line)
            if reply:
                named = MFMT_REPLY.search(reply.group(2))
                if named and not named.group(1).endswith(f"/{name}") and \
                        named.group(1) != name:
                    continue  # the other session's MFMT answered
                break
            if LFTP_LOST.match(line):
                return lines[number]
    return None


def _tail_of(path: str, lines: int) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read().splitlines()[-lines:]
    except OSError as exc:
        return [f"({path}: {os.strerror(exc.errno or 0)})"]
