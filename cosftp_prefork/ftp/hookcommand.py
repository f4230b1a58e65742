"""The auth hook's program (``auth_hook_command``): asked on its standard input, answering
on its standard output, of which at most a limit is read.

The worker reads the answer as it comes and stops one byte past the limit: the program is
then killed with its process group (it runs in a session of its own) and reaped, and the
rest of what it would print is never read, so what a worker holds of an answer is bounded
whatever the program prints. Its standard error is not read at all (it goes to
``/dev/null``): nothing ever logged it, and a pipe nobody drains would stall the program.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from typing import Optional

from ..events.command import exchange, reap


@dataclass(frozen=True)
class Answer:
    """How a run ended: ``status`` is the exit status (negative: killed by that signal;
    None: stopped here because ``output`` passed the limit) and ``output`` what the
    program wrote to its standard output, at most the limit and one byte."""

    status: Optional[int]
    output: bytes

    @property
    def too_long(self) -> bool:
        """True if the program was stopped for writing more than the limit."""
        return self.status is None


def ask(argv: tuple[str, ...], question: bytes, limit: int, timeout: float) -> Answer:
    """Run ``argv`` with ``question`` on its standard input (an environment of ``PATH``
    only) and read its standard output until it closes it, exits, or has written more
    than ``limit`` bytes (then it is killed).

    Returns the ``Answer``. Raises ``OSError`` if the program cannot be started, and
    ``subprocess.TimeoutExpired`` if it has neither answered nor exited within
    ``timeout`` seconds (it is killed then); the program is reaped in every case."""
    deadline = time.monotonic() + timeout
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env={"PATH": os.defpath},
                            close_fds=True, start_new_session=True)
    status: Optional[int] = None
    try:
        output = exchange(proc, question, proc.stdout, limit + 1, deadline, stop=True)
        if len(output) <= limit:
            status = proc.wait(max(0.0, deadline - time.monotonic()))
    finally:
        reap(proc, killed=status is None)
    return Answer(status, output)
