"""A reload (HUP, or the admin API's request) as the master runs it: nginx-like.

The new file is validated first, and an invalid one leaves everything as it was. A valid one
starts a new generation of workers on the same sockets (new ones for an address that
changed); the old generation is told to drain only once every new worker serves, and if the
new generation cannot start the master rolls back to the old configuration, whose workers
never stopped serving. ``PendingReload`` is a reload between those steps;
``ReloadSequence`` is the master's part: the steps it takes on a HUP (or the API's
request) and on each turn of its loop (``_advance_reload``), kept here, apart from the
loop, the signals and the workers' supervision (``master.Master`` inherits them).
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass, replace
from typing import Callable, Optional

from .. import metrics
from ..config.hooks import HooksConfig
from ..config.model import Config
from ..config.settings import load_config
from ..errors import ConfigError
from .files import check_files, hand_over_files
from .helpers import Helpers
from .listeners import Listeners, bind_listeners, tls_summary
from .privileges import Identity, describe_workers
from .scoreboard import RELOAD_FAILED, RELOAD_OK, RELOAD_REFUSED, RELOAD_RUNNING, SharedState
from .workers import Backoff, WorkerProc, signal_workers

log = logging.getLogger(__name__)

RELOAD_READY_TIMEOUT = 30.0


class NotNow(Exception):
    """A reload the master cannot start now, whatever the file says (it is stopping, or
    another reload runs)."""


@dataclass
class PendingReload:
    """A new generation that must prove itself before the old one drains."""

    old_config: Config
    old_generation: int
    old_listeners: Optional[Listeners]  # set if the new generation listens elsewhere
    deadline: float
    draining: Optional[list[int]] = None  # old pids told to drain, once the new ones serve


def read_new_config(running: Config, identity: Optional[Identity]
                    ) -> tuple[Config, list[str]]:
    """The configuration file of ``running`` as a reload uses it, its files ready for the
    workers (``identity``'s), and the reload's warnings (``reload_warnings``); raises
    ``ConfigError`` or ``OSError`` (nothing changed) if it cannot be used. What takes
    effect only at the next start keeps its running value."""
    new = load_config(running.path)
    warnings = reload_warnings(running, new, identity)
    spool, prefix = running.hooks.spool_dir, running.server.ipv6_prefix_length
    # The pid and state files stay where cosftpctl found them at start, the workers'
    # user stays the one their files and metrics directory were given to, and the spool
    # stays where the events process reads it. The prefix length stays the one the live
    # bans and per-address counts are keyed by: the old generation counts by it until its
    # last session ends, and two lengths at once would count a network twice.
    new = replace(new, server=replace(new.server, pid_file=running.server.pid_file,
                                      ipv6_prefix_length=prefix),
                  run_as=running.run_as, hooks=replace(new.hooks, spool_dir=spool))
    check_files(new, identity.gid if identity else None)  # a planted link:
    hand_over_files(new, identity.uid if identity else None)  # refused, nothing changed
    return new, warnings


def reload_warnings(running: Config, new: Config, identity: Optional[Identity]) -> list[str]:
    """What a reload from ``running`` to the file's ``new`` settings warns of, as the log
    says it: the file's own warnings, then each setting that keeps its running value until
    the next start."""
    warnings = [f"config: {warning}" for warning in new.warnings]
    if new.run_as != running.run_as:
        warnings.append("reload: run_as_user, run_as_group and run_as_root take effect at "
                        f"the next start; still: {describe_workers(identity)}")
    if new.hooks.spool_dir != running.hooks.spool_dir:
        warnings.append("reload: event_spool_dir takes effect at the next start; events "
                        f"still go to {running.hooks.spool_dir}")
    prefix = running.server.ipv6_prefix_length
    if new.server.ipv6_prefix_length != prefix:
        warnings.append("reload: [OPTIONAL] ipv6_prefix_length takes effect at the next "
                        "start (stop, start: the saved bans are regrouped then); IPv6 "
                        f"clients are still counted and banned by their /{prefix}")
    if (new.operator.metrics_address, new.operator.metrics_port) != \
            (running.operator.metrics_address, running.operator.metrics_port):
        warnings.append("reload: metrics_address and metrics_port take effect at the next "
                        "start; the metrics endpoint stays as it was")
    if (new.admin.address, new.admin.port) != (running.admin.address, running.admin.port):
        warnings.append("reload: admin_address and admin_port take effect at the next "
                        "start; the admin API stays where it was")
    return warnings


def log_new_config(new: Config, warnings: list[str]) -> None:
    """Log what a reload to ``new`` says: its ``warnings`` and its TLS."""
    for warning in warnings:
        log.warning("%s", warning)
    log.info("reload: %s", tls_summary(new))


class ReloadSequence:
    """The master's steps of a reload: start it (``handle_hup``), move it on each turn of
    the loop (``_advance_reload``), finish it or roll it back. What it uses of the master:"""

    config: Config
    identity: Optional[Identity]
    state: Optional[SharedState]
    helpers: Helpers
    listeners: Optional[Listeners]
    workers: dict[int, WorkerProc]
    backoff: dict[int, Backoff]
    generation: int
    num_workers: int
    reload: Optional[PendingReload]
    reloads: int
    reload_result: int
    stopping: bool
    _reload_taken: int
    _publish: Callable[[], None]
    _current: Callable[[], list[WorkerProc]]
    _drain: Callable[[list[WorkerProc]], None]
    _probe_workers: Callable[[Config], Optional[str]]
    _prepare_events: Callable[[Optional[Config]], bool]

    def handle_hup(self) -> None:
        """Reload the configuration file; keep the old one if the new one is unusable. The
        verdict goes to the shared state for ``cosftpctl reload`` and the admin API: the
        file refused (``RELOAD_REFUSED``: invalid, or its workers could not run it) or the
        reload failed (``RELOAD_FAILED``: not now, a port or the spool unusable), with
        why (``reload_error``), else running."""
        assert self.state is not None
        self.reloads += 1
        self.state.write_reload_warnings([])
        try:
            warnings = self._start_reload()
            self.state.write_reload_error("")
            # Before the verdict is published: cosftpctl reload prints them with it.
            self.state.write_reload_warnings(warnings)
        except (ConfigError, OSError, NotNow) as exc:
            log.error("reload failed, still serving the previous configuration: %s", exc)
            self.reload_result = RELOAD_REFUSED if isinstance(exc, ConfigError) else \
                RELOAD_FAILED
            self.state.write_reload_error(str(exc))
            metrics.RELOADS.labels("failed").inc()
        self._publish()

    def _take_reload_request(self) -> None:
        """Run the reload the admin API asked for, if any, as a HUP; then say it was taken
        (after ``_publish``: the API reads the outcome once it sees that)."""
        asked = self.state.reload_asked() if self.state is not None else 0
        if asked == self._reload_taken or self.stopping:
            return
        log.info("reload asked for by the admin API")
        self._reload_taken = asked
        self.handle_hup()
        self.state.note_reload_taken(asked)

    def _start_reload(self) -> list[str]:
        """Read the file and start the new generation beside the old one; return the
        warnings it logged. Raises ``ConfigError`` (the file) or ``OSError`` (what it
        names) if it cannot be used, ``NotNow`` if no reload can start now: nothing
        changed."""
        if self.stopping:  # its listeners are closed: a new generation has none
            raise NotNow("the server is stopping")
        if self.reload is not None:
            raise NotNow(f"{self.config.path}: a reload is already in progress")
        new, warnings = self._load_new_config()
        assert self.listeners is not None
        old_listeners = None
        listeners = bind_listeners(new.network, self.listeners)  # says where it cannot
        # Only once the sockets are there: a refused reload leaves no events process of
        # its own behind.
        if not self._prepare_events(new):
            listeners.close(keep=self.listeners)
            raise OSError(f"the event spool {new.hooks.spool_dir} cannot be used")
        if listeners != self.listeners:
            old_listeners, self.listeners = self.listeners, listeners
            log.info("reload: now listening on %s", listeners.describe())
        log_new_config(new, warnings)
        self.reload = PendingReload(self.config, self.generation, old_listeners,
                                    time.monotonic() + RELOAD_READY_TIMEOUT)
        self._follow_hooks(new.hooks)
        self.config = new
        self.generation += 1
        self.num_workers = new.server.worker_processes
        self.backoff = {}
        self.reload_result = RELOAD_RUNNING
        log.info("reload: starting generation %d with %d workers", self.generation,
                 self.num_workers)
        return warnings

    def _load_new_config(self) -> tuple[Config, list[str]]:
        """The configuration file as a reload uses it, and its warnings
        (``reload.read_new_config``), once its workers can run."""
        new, warnings = read_new_config(self.config, self.identity)
        problem = self._probe_workers(new)
        if problem:
            raise ConfigError(problem, new.path)
        return new, warnings

    def _follow_hooks(self, hooks: HooksConfig) -> None:
        """Replace the events process if what it does changes with ``hooks`` (retry age,
        spool bound, what a full spool does); routes are in the events themselves."""
        events = self.helpers.events
        if events is not None and replace(hooks, server=self.config.hooks.server) != \
                self.config.hooks:
            log.info("reload: [HOOKS] changed; replacing the events process")
            events.replace()

    def _advance_reload(self) -> None:
        """Drain the old generation once every new worker serves, and call the reload done
        once the old workers stopped accepting; roll back if the new ones never serve."""
        pending = self.reload
        if pending is None or self.stopping:
            return
        assert self.state is not None
        states = {s.pid: s.state for s in self.state.workers() if s.heartbeat}
        if pending.draining is not None:
            if all(states.get(pid, "draining") == "draining" for pid in pending.draining):
                self._finish_reload()
            return
        current = self._current()
        if len(current) >= self.num_workers and all(states.get(w.pid) == "serving"
                                                     for w in current):
            self._drain_old_generation(pending)
        elif time.monotonic() > pending.deadline:
            self._roll_back(f"generation {self.generation} not serving after "
                            f"{RELOAD_READY_TIMEOUT:.0f}s")

    def _drain_old_generation(self, pending: PendingReload) -> None:
        """The new generation serves: tell the old one to drain, close the old ports."""
        old = [w for w in self.workers.values()
               if w.generation != self.generation and not w.draining]
        log.info("reload: generation %d serving; draining %d old workers", self.generation,
                 len(old))
        self._drain(old)
        pending.draining = [w.pid for w in old]
        if pending.old_listeners is not None:
            pending.old_listeners.close(keep=self.listeners)
            pending.old_listeners = None

    def _finish_reload(self) -> None:
        """The old generation no longer accepts: the reload is done."""
        self.reload = None
        self.reload_result = RELOAD_OK
        log.info("reload: generation %d done", self.generation)
        metrics.RELOADS.labels("ok").inc()
        self._publish()
        if self.helpers.admin is not None:
            self.helpers.admin.retire()  # a new one, with the new tokens and accounts

    def _roll_back(self, why: str) -> None:
        """The new generation cannot serve: stop it and serve the old configuration again
        (its workers never stopped)."""
        pending = self.reload
        assert pending is not None and self.state is not None
        log.error("reload failed (%s); rolling back to generation %d", why,
                  pending.old_generation)
        failed = [w for w in self.workers.values() if w.generation == self.generation]
        signal_workers(signal.SIGTERM, failed)
        if pending.old_listeners is not None:
            assert self.listeners is not None
            self.listeners.close(keep=pending.old_listeners)
            self.listeners = pending.old_listeners
        self._follow_hooks(pending.old_config.hooks)
        self.config, self.generation = pending.old_config, pending.old_generation
        self.num_workers = self.config.server.worker_processes
        self.reload = None
        self.reload_result = RELOAD_FAILED
        self.state.write_reload_error(f"rolled back: {why}")
        metrics.RELOADS.labels("failed").inc()
        self._publish()
