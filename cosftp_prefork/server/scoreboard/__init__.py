"""State shared by the master, its workers and ``cosftpctl status``: one small mapped file.

The master creates the file (beside the pid file) before forking; workers inherit the
mapping. It holds:

* a header: master pid, generation, start time, config path, listening ports;
* one slot per worker, written only by that worker (heartbeat, sessions, transfers, bytes)
  and cleared by the master when it reaps the worker;
* a session table (worker pid, logged in or not, client address, a serial number that names
  the session), so every connection limit holds for the whole server rather than per
  worker, with a table of the accounts logged in (their sessions, for ``max_sessions``, and
  their upload and download rate buckets, for ``max_*_rate``: every worker takes from the
  same bucket), and a table of failed logins and bans per client address, with a counter of
  its changes (a ban started, or lifted by ``cosftpctl unban``) and the change last saved to
  the bans file. Both are changed under POSIX record locks on the file, which the kernel
  releases if the holder dies, so a killed worker cannot wedge admissions; the master frees
  a dead worker's session rows when it reaps it;
* requests to the master and the workers from the admin API (``cosftp_prefork.admin``), which
  runs as a child of the master and shares the mapping: a session to close (its worker's tick
  sees the kick epoch move, closes it with 421 and clears the request), a reload to run (the
  master's loop takes it as a HUP), and the errors of the last reload;
* per session row, its upload from byte 0 while it has no final reply (bytes received,
  CRC64s of its first bytes), written by its worker as each chunk arrives, and the uploads
  the master kept of those rows when their worker died, for a few minutes: a client's retry
  of one, cut short, is refused (``uploads``).

Client addresses are stored whole (16 bytes, IPv4 as IPv4-mapped IPv6): never a hash two
addresses could share.

Bans outlive the state file: the master saves them to ``<pid file>.bans`` whenever the ban
table changed (a ban started or was lifted) and at exit, and loads the ones not yet expired at
start.

Where each part lives: ``layout`` (offsets and record formats), ``records`` (what readers
get back, the keys of clients and accounts), ``mapped`` (the mapping and its locks),
``sessions`` and ``bans`` (the two locked tables), ``uploads`` (the in-flight and kept
uploads), ``state`` (:class:`SharedState`: the
header, the worker slots and the reload requests, over both tables).
"""

from .bans import SavedBans, load_bans, save_bans
from .layout import (
    ABORTING,
    ACCOUNT_SLOTS,
    CLUSTER_BUSY_CLOSED,
    CLUSTER_BUSY_OPEN,
    CLUSTER_DOWN_CLOSED,
    CLUSTER_DOWN_OPEN,
    CLUSTER_ERRORS,
    CLUSTER_LOADING_CLOSED,
    CLUSTER_LOADING_OPEN,
    CLUSTER_NONE,
    CLUSTER_READ_ONLY_CLOSED,
    CLUSTER_READ_ONLY_OPEN,
    CLUSTER_UNSUPPORTED_CLOSED,
    CLUSTER_UNSUPPORTED_OPEN,
    CLUSTER_UP,
    DRAINING,
    EXIT_BOOT_FAILURE,
    FILE_SIZE,
    KEEP_LOST_SECONDS,
    LISTEN_BACKLOG,
    MARK_STEP,
    MARKS,
    MASTER_STARTING,
    MASTER_STATES,
    PENDING,
    RELOAD_FAILED,
    RELOAD_NONE,
    RELOAD_OK,
    RELOAD_REFUSED,
    RELOAD_RUNNING,
    RUNNING,
    SERVING,
    STARTING,
)
from .records import (
    TOO_MANY,
    TOO_MANY_LOGGED_IN,
    TOO_MANY_PER_IP,
    TOO_MANY_PRELOGIN,
    TOO_MANY_PRELOGIN_PER_IP,
    TOO_MANY_SESSIONS,
    AccountKey,
    Address,
    BanRow,
    Limits,
    MasterStatus,
    Seat,
    SessionDetail,
    TransferFigures,
    WorkerStatus,
    account_key,
    account_text,
    address_group,
    address_key,
    address_text,
    bans_path,
    group_label,
    heartbeat_age,
    state_path,
    upload_key,
)
from .state import SharedState
from .uploads import InFlightRow, KeptUpload

__all__ = [
    "ABORTING", "ACCOUNT_SLOTS", "CLUSTER_BUSY_CLOSED", "CLUSTER_BUSY_OPEN",
    "CLUSTER_DOWN_CLOSED", "CLUSTER_DOWN_OPEN", "CLUSTER_ERRORS", "CLUSTER_LOADING_CLOSED",
    "CLUSTER_LOADING_OPEN", "CLUSTER_NONE", "CLUSTER_READ_ONLY_CLOSED", "CLUSTER_READ_ONLY_OPEN",
    "CLUSTER_UNSUPPORTED_CLOSED", "CLUSTER_UNSUPPORTED_OPEN", "CLUSTER_UP", "DRAINING",
    "EXIT_BOOT_FAILURE", "FILE_SIZE", "KEEP_LOST_SECONDS", "LISTEN_BACKLOG", "MARKS",
    "MARK_STEP", "MASTER_STARTING", "MASTER_STATES", "PENDING", "RELOAD_FAILED", "RELOAD_NONE",
    "RELOAD_OK", "RELOAD_REFUSED", "RELOAD_RUNNING", "RUNNING", "SERVING", "STARTING",
    "TOO_MANY", "TOO_MANY_LOGGED_IN", "TOO_MANY_PER_IP", "TOO_MANY_PRELOGIN",
    "TOO_MANY_PRELOGIN_PER_IP", "TOO_MANY_SESSIONS", "AccountKey", "Address", "BanRow",
    "InFlightRow", "KeptUpload", "Limits", "MasterStatus", "SavedBans", "Seat",
    "SessionDetail", "SharedState", "TransferFigures", "WorkerStatus", "account_key",
    "account_text", "address_group", "address_key", "address_text", "bans_path", "group_label",
    "heartbeat_age", "load_bans", "save_bans", "state_path", "upload_key",
]
