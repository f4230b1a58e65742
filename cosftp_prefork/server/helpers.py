"""The master's helper processes that the configuration asks for: the metrics exporter
(``metrics_port``), the admin API (``admin_port``) and the events process ([HOOKS], or a
spool that still holds events).

The master binds their ports before its first fork (a port in use stops the start, and the
port outlives a restart of the child); it forks and supervises them as it does its workers
(``children.SupervisedChild``). The exporter's module is imported only when metrics are
served: it brings prometheus_client's exposition and http.server (~40 ms of CPU), which a
master without ``metrics_port`` would load for nothing.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Callable, Optional

from ..config.model import Config
from .adminproc import AdminProcess
from .children import SupervisedChild
from .eventsproc import EventsProcess, prepare_spool, spool_holds_events
from .listeners import bind_listener
from .metrics_dir import hand_over_own_files, metrics_dir
from .privileges import Identity
from .scoreboard import SharedState

if TYPE_CHECKING:
    from .exporter import ExporterProcess

log = logging.getLogger(__name__)


class Helpers:
    """The helper processes of one master, those configured."""

    def __init__(self, identity: Optional[Identity]) -> None:
        self.identity = identity  # who they become after their fork (None: the master's user)
        self.exporter: Optional[ExporterProcess] = None
        self.admin: Optional[AdminProcess] = None
        self.events: Optional[EventsProcess] = None

    def all(self) -> list[SupervisedChild]:
        return [child for child in (self.exporter, self.admin, self.events)
                if child is not None]

    def bind(self, config: Config, state: Callable[[], Optional[SharedState]]) -> bool:
        """Bind the ports of the metrics exporter and the admin API, those configured;
        False (logged, nothing left bound) if one cannot."""
        operator, admin = config.operator, config.admin
        bound: dict[str, socket.socket] = {}
        for what, address, port in (("metrics", operator.metrics_address,
                                     operator.metrics_port),
                                    ("the admin API", admin.address, admin.port)):
            if not port:
                continue
            try:
                bound[what] = bind_listener(address, port)
            except OSError as exc:
                log.critical("cannot listen for %s on %s port %d: %s", what, address, port, exc)
                for sock in bound.values():
                    sock.close()
                return False
        if "metrics" in bound:
            from .exporter import ExporterProcess  # see the module's docstring

            self.exporter = ExporterProcess(bound["metrics"], metrics_dir(config.server.pid_file))
            hand_over_own_files(self.exporter.path, self.identity)
        if "the admin API" in bound:
            self.admin = AdminProcess(bound["the admin API"], state)
        return True

    def prepare_events(self, config: Config, reopen_logs: Callable[[], None]) -> bool:
        """Run an events process if ``config`` sends events or the spool still holds some,
        with its spool prepared (``eventsproc``); False (logged) if the spool is unusable."""
        if self.events is not None or not (config.events_enabled or
                                           spool_holds_events(config.hooks.spool_dir)):
            return True
        try:
            prepare_spool(config.hooks, self.identity)
        except OSError as exc:
            log.critical("cannot use the event spool %s: %s", config.hooks.spool_dir, exc)
            return False
        self.events = EventsProcess(reopen_logs)
        return True

    def process_exited(self, pid: int) -> None:
        """Tell the exporter a process that wrote metrics (a worker, the events process)
        is gone."""
        if self.exporter is not None:
            self.exporter.worker_exited(pid)

    def reaped(self, pid: int, how: str) -> bool:
        """Note that ``pid`` exited; True if it was one of the helpers."""
        for child in self.all():
            if child.reaped(pid, how):
                if child is not self.exporter:
                    self.process_exited(pid)
                return True
        return False
