"""A reload (HUP, or the admin API's request) as the master runs it: nginx-like.

The new file is validated first, and an invalid one leaves everything as it was. A valid one
starts a new generation of workers on the same sockets (new ones for an address that
changed); the old generation is told to drain only once every new worker serves, and if the
new generation cannot start the master rolls back to the old configuration, whose workers
never stopped serving. ``PendingReload`` is a reload between those steps; the master
(``Master._advance_reload``) moves it on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Optional

from ..config.model import Config
from ..config.settings import load_config
from .files import check_files, hand_over_files
from .listeners import Listeners, tls_summary
from .privileges import Identity, describe_workers

log = logging.getLogger(__name__)

RELOAD_READY_TIMEOUT = 30.0


@dataclass
class PendingReload:
    """A new generation that must prove itself before the old one drains."""

    old_config: Config
    old_generation: int
    old_listeners: Optional[Listeners]  # set if the new generation listens elsewhere
    deadline: float
    draining: Optional[list[int]] = None  # old pids told to drain, once the new ones serve


def read_new_config(running: Config, identity: Optional[Identity]) -> Config:
    """The configuration file of ``running`` as a reload uses it, its files ready for the
    workers (``identity``'s); raises ``ConfigError`` or ``OSError`` (nothing changed) if it
    cannot be used. What takes effect only at the next start keeps its running value."""
    new = load_config(running.path)
    if new.run_as != running.run_as:
        log.warning("reload: run_as_user, run_as_group and run_as_root take effect at the "
                    "next start; still: %s", describe_workers(identity))
    spool = running.hooks.spool_dir
    if new.hooks.spool_dir != spool:
        log.warning("reload: event_spool_dir takes effect at the next start; events still "
                    "go to %s", spool)
    # The pid and state files stay where cosftpctl found them at start, the workers'
    # user stays the one their files and metrics directory were given to, and the spool
    # stays where the events process reads it.
    new = replace(new, server=replace(new.server, pid_file=running.server.pid_file),
                  run_as=running.run_as, hooks=replace(new.hooks, spool_dir=spool))
    check_files(new, identity.gid if identity else None)  # a planted link:
    hand_over_files(new, identity.uid if identity else None)  # refused, nothing changed
    return new


def log_new_config(running: Config, new: Config) -> None:
    """Log what a reload to ``new`` says: its warnings, the helper ports it cannot move,
    and its TLS."""
    for warning in new.warnings:
        log.warning("config: %s", warning)
    if (new.operator.metrics_address, new.operator.metrics_port) != \
            (running.operator.metrics_address, running.operator.metrics_port):
        log.warning("reload: metrics_address and metrics_port take effect at the next "
                    "start; the metrics endpoint stays as it was")
    if (new.admin.address, new.admin.port) != (running.admin.address, running.admin.port):
        log.warning("reload: admin_address and admin_port take effect at the next start; "
                    "the admin API stays where it was")
    log.info("reload: %s", tls_summary(new))
