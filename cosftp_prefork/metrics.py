"""The Prometheus metrics every process of the server updates.

prometheus_client's multiprocess mode keeps each process's values in memory-mapped files in
``PROMETHEUS_MULTIPROC_DIR`` (see :mod:`cosftp_prefork.server.metrics_dir`); the metrics exporter
process adds them up when scraped. The variable is read when prometheus_client is first
imported, so ``cosftpctl run`` sets it before importing anything that imports this module;
without it (metrics off) the values stay in each process's memory and nobody reads them.

Without the variable nobody could read them, so prometheus_client is not even imported
(~25 ms of CPU in every master and ``cosftpctl`` command that imports this module): each
metric is then an ``Unread``, which takes every change and keeps nothing.

The metrics are not registered in prometheus_client's default registry: the exporter
collects them from the files, never from its own memory. Every label takes its values from
a small fixed set (no user names, paths or addresses), so the number of series is bounded.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any


class Unread:
    """A metric of a server without ``metrics_port``: the calls the code makes on a
    prometheus_client Counter, Gauge or Histogram (or a child of its ``labels``), doing
    nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def labels(self, *values: str) -> Unread:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, value: float) -> None:
        pass

    def track_inprogress(self) -> contextlib.nullcontext:
        return contextlib.nullcontext()


# Set by ``cosftpctl run`` (``server.metrics_dir.ENV``) when metrics_port is, before this
# module is imported; unset otherwise.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    from prometheus_client import Counter, Gauge, Histogram
else:
    Counter = Gauge = Histogram = Unread  # type: ignore[misc, assignment]

SESSIONS = Gauge("cosftp_sessions", "FTP sessions open now", registry=None,
                 multiprocess_mode="livesum")
SESSIONS_TOTAL = Counter("cosftp_sessions_accepted", "FTP sessions accepted", registry=None)
LOGINS = Counter("cosftp_logins", "Logins by result: ok, failed (bad user or password), "
                 "unavailable (the auth hook had no answer: 421), refused (the auth hook's "
                 "account unusable), "
                 "banned (address refused after repeated failures)", ["result"], registry=None)
TRANSFERS = Counter("cosftp_transfers", "Finished transfers by direction (upload, download) "
                    "and result (ok, failed)", ["direction", "result"], registry=None)
TRANSFER_BYTES = Counter("cosftp_transfer_bytes", "Bytes moved over data connections by "
                         "direction and result of the transfer", ["direction", "result"],
                         registry=None)
DOWNLOADS_RELAYED = Counter("cosftp_downloads_relayed", "Binary downloads over a clear data "
                            "connection by how their bytes went: splice (from the COS socket "
                            "to the data socket in the kernel: COS over plain HTTP), copy "
                            "(through the worker's memory: COS over HTTPS, or a proxy)",
                            ["how"], registry=None)
UPLOADS_PARKED = Counter("cosftp_uploads_parked", "Interrupted uploads kept for a resume",
                         registry=None)
UPLOADS_RESUMED = Counter("cosftp_uploads_resumed", "Parked uploads continued", registry=None)
COS_REQUESTS = Counter("cosftp_cos_requests", "COS requests (each attempt) by operation and "
                       "status (ok, an HTTP status, or error: no answer)",
                       ["operation", "status"], registry=None)
COS_LATENCY = Histogram("cosftp_cos_request_duration_seconds", "Duration of each COS request "
                        "attempt (to the response headers) by operation", ["operation"],
                        registry=None,
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
COS_RETRIES = Counter("cosftp_cos_retries", "COS requests sent again after a transient error",
                      ["operation"], registry=None)
WORKER_RESTARTS = Counter("cosftp_worker_restarts", "Workers replaced by the master, by reason "
                          "(exited: died or was killed unexpectedly; recycled: too much memory)",
                          ["reason"], registry=None)
UPLOAD_BUFFERS = Gauge("cosftp_upload_buffer_bytes", "Bytes of the upload memory budget "
                       "(upload_memory_limit) that part buffers hold now, summed over workers",
                       registry=None, multiprocess_mode="livesum")
UPLOAD_BUFFER_LIMIT = Gauge("cosftp_upload_buffer_limit_bytes", "The upload memory budget, "
                            "summed over workers", registry=None, multiprocess_mode="livesum")
UPLOAD_BUFFER_WAITS = Gauge("cosftp_upload_buffer_waits", "Uploads waiting for a part buffer "
                             "now (upload_memory_limit is taken), summed over workers",
                             registry=None, multiprocess_mode="livesum")
UPLOAD_PARTS_WAITING = Gauge("cosftp_upload_parts_waiting", "Parts whose buffers are full, "
                             "waiting for a part thread (upload_thread_num), summed over "
                             "workers", registry=None, multiprocess_mode="livesum")
KEPT_UPLOADS = Gauge("cosftp_kept_upload_bytes", "Bytes of new files stored in one PUT that "
                     "sessions keep for a rename right after the STOR (at most an eighth of "
                     "upload_memory_limit per worker), summed over workers", registry=None,
                     multiprocess_mode="livesum")
# How a password check got its turn (max_password_checks at once per worker).
CHECK_AT_ONCE, CHECK_WAITED, CHECK_TIMED_OUT = "at_once", "waited", "timed_out"
PASSWORD_CHECKS = Counter("cosftp_password_checks", "Password checks (scrypt) by how they got "
                          "their turn: at_once, waited (max_password_checks were running), "
                          "timed_out (the login deadline came first: 421)", ["turn"],
                          registry=None)
PASSWORD_CHECKS_RUNNING = Gauge("cosftp_password_checks_running", "Password checks running "
                                "now, summed over workers", registry=None,
                                multiprocess_mode="livesum")
PASSWORD_CHECKS_WAITING = Gauge("cosftp_password_checks_waiting", "Password checks waiting "
                                "for their turn now, summed over workers", registry=None,
                                multiprocess_mode="livesum")
AUTH_HOOK = Counter("cosftp_auth_hook", "Auth hook verdicts: allow, deny, invalid (an answer "
                    "or account refused, logged), unavailable (down, slow or busy: 421), "
                    "cached (a recent yes reused)", ["outcome"], registry=None)
# Events (cosftp_prefork.events): written by workers, delivered by the events process.
EVENTS_QUEUED = Counter("cosftp_events_queued", "Events written to the spool, by event",
                        ["event"], registry=None)
EVENTS_SENT = Counter("cosftp_events_sent", "Events delivered, by destination kind (http, "
                      "command)", ["kind"], registry=None)
EVENTS_RETRIED = Counter("cosftp_events_retried", "Deliveries that failed and will be tried "
                         "again, by destination kind", ["kind"], registry=None)
EVENTS_DEAD_LETTERED = Counter("cosftp_events_dead_lettered", "Events given up on after "
                               "hook_retry_max_age (in the dead-letter file), by destination "
                               "kind", ["kind"], registry=None)
EVENTS_DROPPED = Counter("cosftp_events_dropped", "Events not kept, by reason: spool_full "
                         "(event_spool_full), write_failed (the spool could not be written), "
                         "corrupt (a spool file that could not be read)", ["reason"],
                         registry=None)
EVENT_SPOOL_WAIT = Histogram("cosftp_event_spool_write_seconds", "Time a session waited for "
                             "its event to be on the spool's disk, before the reply that "
                             "acknowledges the operation", registry=None,
                             buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1,
                                      0.25, 0.5, 1, 2.5))
EVENT_REFUSALS = Counter("cosftp_event_refusals", "Commands refused (451) because the event "
                         "spool was full", registry=None)
EVENT_SPOOL_BYTES = Gauge("cosftp_event_spool_bytes", "Bytes on disk of the event spool",
                          registry=None, multiprocess_mode="livesum")
EVENT_SPOOL_EVENTS = Gauge("cosftp_event_spool_events", "Events in the spool, waiting for at "
                           "least one destination", registry=None, multiprocess_mode="livesum")
PRE_CHECKS = Counter("cosftp_pre_hook_checks", "Pre-upload and pre-delete checks by hook "
                     "(upload, delete) and result (allowed, denied, failed_open, failed_closed)",
                     ["hook", "result"], registry=None)
RELOADS = Counter("cosftp_reloads", "Configuration reloads by result (ok, failed)", ["result"],
                  registry=None)


def forked() -> None:
    """In a worker just forked: make prometheus_client notice its new pid now rather than
    at the first value it changes. It then closes the master's files, which the worker
    must not keep open, and opens the worker's own (as the worker's user)."""
    SESSIONS_TOTAL.inc(0)


def session_opened() -> None:
    SESSIONS.inc()
    SESSIONS_TOTAL.inc()


# The children of the metrics counted for every file and COS request, by metric and labels
# (a few dozen: the labels are literals and COS statuses): ``labels()`` costs a lock and
# its argument checks each time. Values notice a fork themselves (prometheus_client's
# multiprocess values check the pid at each change).
_CHILDREN: dict[tuple[Any, tuple[str, ...]], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    child = _CHILDREN.get((metric, labels))
    if child is None:
        child = _CHILDREN.setdefault((metric, labels), metric.labels(*labels))
    return child


def transfer_done(upload: bool, ok: bool, nbytes: int) -> None:
    """Count one finished (``ok``) or failed transfer of ``nbytes``."""
    labels = ("upload" if upload else "download", "ok" if ok else "failed")
    _child(TRANSFERS, *labels).inc()
    _child(TRANSFER_BYTES, *labels).inc(nbytes)


def download_relayed(how: str) -> None:
    DOWNLOADS_RELAYED.labels(how).inc()


def cos_request(operation: str, status: str, seconds: float) -> None:
    """Count one COS request attempt that ended with ``status`` after ``seconds``."""
    _child(COS_REQUESTS, operation, status).inc()
    _child(COS_LATENCY, operation).observe(seconds)
