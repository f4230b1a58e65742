"""``cosftpctl reload``: have the running master reload its configuration file (HUP) and
report its verdict.

The command does not validate the file: the master reads it (as the user it runs as),
validates it before anything changes (``server.reload``) and writes its verdict and, if
it refused the file or the reload failed, why (the message its log has: file, section,
option, problem) in the shared state, which this reads; for a reload it applied, the
warnings it logged (a setting kept until the next start, an unknown option), printed
with the verdict. So a file of 5,000 accounts is
parsed once, by the process that uses it, and what the operator reads is what the master
decided, not a second opinion.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Optional

from ..logfiles import escape_controls
from .logs import LOG_FILE_NAME
from .pidfile import (
    EXIT_NOT_RUNNING,
    Target,
    find_master,
    poll,
    port_holders,
    whereabouts,
)
from .scoreboard import (
    RELOAD_FAILED,
    RELOAD_OK,
    RELOAD_REFUSED,
    MasterStatus,
    SharedState,
    state_path,
)

RELOAD_TIMEOUT = 60.0  # the master rolls back a new generation not serving after 30 s
RELOAD_VERDICTS = (RELOAD_OK, RELOAD_FAILED, RELOAD_REFUSED)
EXIT_REFUSED = 2  # as for any invalid file (check, start, run)


def cmd_reload(target: Target, timeout: float = RELOAD_TIMEOUT) -> int:
    """Send HUP to the master of ``target`` (found by ``locate.locate_server``, which
    read where the server is but did not validate the file) and report its verdict.
    Return 0 once the new generation serves (the master's warnings printed too), 2 if the
    master refused the file, 1 if the reload failed, rolled back or gave no verdict within
    ``timeout`` seconds, 3 if no master runs."""
    pid = find_master(target)
    state = SharedState.open(state_path(target.pid_file)) if pid else None
    if pid is None or state is None:
        print(f"cosftpctl: not running ({whereabouts(target, port_holders(target))})",
              file=sys.stderr)
        return EXIT_NOT_RUNNING
    try:
        before = state.master().reloads
        os.kill(pid, signal.SIGHUP)

        def reloaded() -> Optional[MasterStatus]:
            master = state.master()
            done = master.reloads > before and master.reload_result in RELOAD_VERDICTS
            return master if done else None
        master = poll(reloaded, timeout)
        # Why, as the master wrote it before its result (a port in use, a rollback's cause),
        # and the warnings it logged.
        why = state.reload_error() if master is not None else ""
        warnings, count = state.reload_warnings()
    finally:
        state.close()
    if master is None:
        print(f"cosftpctl: no reload verdict within {timeout:g}s; it may still be running "
              f"(cosftpctl status shows the generation, the server's {LOG_FILE_NAME} the "
              f"outcome)", file=sys.stderr)
        return 1
    if master.reload_result == RELOAD_OK:
        print(f"cosftpctl: reloaded, generation {master.generation}", flush=True)
        print_warnings(warnings, count)
        return 0
    if master.reload_result == RELOAD_REFUSED:
        print(f"cosftpctl: configuration error: {why}; the server still serves the "
              f"previous configuration", file=sys.stderr)
        return EXIT_REFUSED
    print(f"cosftpctl: reload failed{f' ({why})' if why else ''}, still serving the previous "
          f"configuration; see the server's {LOG_FILE_NAME}", file=sys.stderr)
    return 1


def print_warnings(warnings: list[str], count: int) -> None:
    """Print, on stderr, the ``warnings`` the master logged for the reload it applied, and
    how many of its ``count`` the shared state had no room for. They come escaped from
    the master (``SharedState.write_reload_warnings``); escaped again here, since they
    quote the file (section and option names) and go to a terminal."""
    for warning in warnings:
        print(f"warning: {escape_controls(warning)}", file=sys.stderr)
    if count > len(warnings):
        print(f"warning: {count - len(warnings)} more in the server's {LOG_FILE_NAME}",
              file=sys.stderr)
