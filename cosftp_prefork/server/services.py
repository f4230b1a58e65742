"""What a worker runs beside its sessions: the transfer engine, the COS clients, the abort
retrier, the event hooks and the threads of its own (the stale-upload janitor and the quota
scans on worker 1, the cluster's sharing); started before it serves, stopped by its exit."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Union

from ..config.model import Config, mounted_folders
from ..config.quotas import QuotaRules
from ..cos.aborts import AbortRetrier
from ..cos.engine import Engine
from ..cos.periodic import Periodic
from ..cos.quota import Quotas
from ..cos.registry import BucketRegistry
from ..cos.resume import Janitor
from ..ftp.hooks import WorkerHooks
from .quotashare import SharedUsage
from .scoreboard import SharedState
from .workerstats import WorkerStats

log = logging.getLogger(__name__)

# How often the cluster thread shares the node's counts: the worker's tick.
SHARE_SECONDS = 1.0


@dataclass
class WorkerServices:
    """The services of one worker (see the module docstring)."""

    engine: Engine
    buckets: BucketRegistry
    retrier: AbortRetrier
    hooks: WorkerHooks
    threads: list[Union[Janitor, Periodic]]  # those of its own this worker runs

    @classmethod
    def start(cls, config: Config, index: int, slot: int, state: SharedState,
              stats: WorkerStats) -> WorkerServices:
        """Start the services of worker ``index`` in ``slot``; the quotas go to ``stats``."""
        transfer = config.transfer
        engine = Engine(transfer.memory_limit, transfer.upload_thread_num,
                        transfer.copy_thread_num)
        buckets = BucketRegistry(pool_size=transfer.upload_thread_num +
                                 transfer.copy_thread_num + engine.lookup_threads + 16)
        retrier = AbortRetrier()
        retrier.start()
        threads = [_start_janitor(config, index, buckets),
                   _start_quotas(config, index, slot, state, stats, buckets),
                   _start_sharing(stats)]
        return cls(engine, buckets, retrier, WorkerHooks.start(config),
                   [thread for thread in threads if thread is not None])

    def stop(self, deadline: Optional[float]) -> None:
        """Stop them all, until ``deadline`` (``time.monotonic()``) at most, if given."""
        self.hooks.close()
        self.engine.shutdown(deadline)
        self.retrier.stop(deadline)
        for thread in self.threads:
            thread.stop(deadline)
        self.buckets.close()


def _start_janitor(config: Config, index: int, buckets: BucketRegistry) -> Optional[Janitor]:
    """Worker 1 sweeps stale multipart uploads out of every home (a bucket, or the keys
    under a cos_prefix), once per home; a home's client is made at the first sweep."""
    ttl = config.transfer.resume_ttl
    if index != 1 or not ttl:
        return None
    # Each folder too: parked uploads and live markers are in the folder's .cosftp/.
    janitor = Janitor(buckets.homes([*config.accounts, *mounted_folders(config.accounts)]),
                      ttl)
    janitor.start()
    return janitor


def _start_quotas(config: Config, index: int, slot: int, state: SharedState,
                  stats: WorkerStats, buckets: BucketRegistry) -> Optional[Periodic]:
    """Keep the quotas (of the file's accounts, and those an auth hook's answers give)
    in the usage table the master shares (and, with ``[CLUSTER]``, in Redis); worker 1
    scans the file's homes again when due (``quota_scan_interval``, ``cosftpctl
    quota-scan``)."""
    rules = QuotaRules(config.accounts)
    if (not rules.homes and not config.auth_hook.enabled) or state.usage is None:
        return None
    left = state.usage.attach(slot)
    if left.homes:
        log.warning("quota: gave back what the previous worker of slot %d held: %d bytes "
                    "and %d files reserved, %d sessions, in %d homes", slot,
                    left.nbytes, left.files, left.sessions, left.homes)
    cluster = stats.gate.cluster
    ledger = state.usage if cluster is None else SharedUsage(state.usage, cluster)
    stats.quotas = Quotas(rules, ledger, buckets.bucket, config.server.quota_scan_interval,
                          config.auth_hook.quota_homes,
                          max(config.auth_hook.cache_ttl, config.server.quota_scan_interval))
    # Before serving: the master gave back a dead predecessor's holdings in the table
    # when it reaped it, and the node's figures in Redis (what every node reserves
    # against) must not keep them (the other workers' cluster ticks may have done it
    # already; a Redis found unreachable is not asked again here).
    stats.quotas.catch_up()
    if index != 1:
        return None
    scans = Periodic("quota-scans", 1.0, stats.quotas.scan_due)
    scans.start()
    return scans


def _start_sharing(stats: WorkerStats) -> Optional[Periodic]:
    """With ``[CLUSTER]``, publish the node's counts and read the cluster's bans and
    unbans once a second on a thread of its own (``Gate.share``): a Redis slow to answer
    must not hold the accept loop, nor the heartbeat the master checks. The first time
    before serving: until then the other nodes do not count this one as alive (and so
    not its connections)."""
    if stats.gate.cluster is None:
        return None
    stats.share()
    sharing = Periodic("cluster", SHARE_SECONDS, stats.share)
    sharing.start()
    return sharing
