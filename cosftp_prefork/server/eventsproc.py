"""The events process as the master sees it: when to run one, and its life in the child.

It runs while events are configured, and also while the spool still holds events from before
(a configuration that stopped sending events still delivers what was promised). The master
prepares the spool before any worker starts: it creates the directory and moves the event
counter past every batch left, so that numbers keep growing after a crash or a reboot.

The HTTP client and the delivery code (``events.deliver``) are imported in the forked child
only: the master never loads them.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Callable, Optional

from ..config.hooks import HooksConfig
from ..config.model import Config
from ..events.spool import SpoolState, hand_over, prepare_directory, scan
from .children import SupervisedChild
from .privileges import Identity
from .signals import release_signals

log = logging.getLogger(__name__)


def prepare_spool(hooks: HooksConfig, owner: Optional[Identity]) -> bool:
    """Create the spool, set its counters right and give it to ``owner`` (the workers'
    user; None: the master's own); return True if it holds events. Raises ``OSError``
    (``UnsafeFileError`` for a link, or a directory of another user)."""
    prepare_directory(hooks.spool_dir, owner.uid if owner else None)
    state = SpoolState(hooks.spool_dir)
    try:
        batches, usage = state.recount()
    finally:
        state.close()
    if owner is not None:
        hand_over(hooks.spool_dir, owner.uid, owner.gid)
    if batches:
        log.info("event spool %s: %d batches (%d KiB) left to deliver", hooks.spool_dir,
                 usage.batches, usage.bytes >> 10)
    return bool(batches)


def spool_holds_events(directory: str) -> bool:
    return os.path.isdir(directory) and bool(scan(directory)[0])


class EventsProcess(SupervisedChild):
    """The master's view of its events process."""

    name = "events process"
    title = "cosftp: events"
    log_name = "events"

    def __init__(self, reopen_logs: Callable[[], None]) -> None:
        super().__init__()
        self._reopen_logs = reopen_logs

    def serve(self, config: Config, master_pid: int) -> int:
        """Deliver the spool's events until TERM or the master is gone."""
        from ..events.deliver import Deliverer  # in the child only: urllib3 stays out

        flags = {"stop": False, "reopen": False}
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(signum, lambda _n, _f: flags.update(stop=True))
        signal.signal(signal.SIGUSR1, lambda _n, _f: flags.update(reopen=True))
        for signum in (signal.SIGHUP, signal.SIGUSR2, signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(signum, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # commands are waited for
        release_signals()
        deliverer = Deliverer(config.hooks)

        def running() -> bool:
            if flags["reopen"]:
                flags["reopen"] = False
                self._reopen_logs()
            return not flags["stop"] and os.getppid() == master_pid

        try:
            deliverer.run(running)
        finally:
            deliverer.close()
        return 0
