"""Where everything lives in the state file: sizes, offsets and record formats, shared by
the tables of ``state``, ``sessions`` and ``bans`` (see the package's docstring for what
each part holds)."""

from __future__ import annotations

import struct
from array import array

from ... import rates
from ...config.model import MAX_WORKER_PROCESSES
from ..filelayout import HEADER_START, fingerprint

# Exit status for "this worker cannot start with this config": not a crash to retry blindly.
EXIT_BOOT_FAILURE = 3
# Connections the kernel queues until a worker accepts them (capped by net.core.somaxconn);
# pyftpdlib listens again on the inherited socket, so the workers set it too. pyftpdlib's 100
# was too few for a burst: of 1,000 sockets one address opened at once, 635 were dropped by
# the kernel and never answered.
LISTEN_BACKLOG = 1024

MAGIC = b"CFTP"
# Every version of the file starts with its magic, its layout (LAYOUT_VERSION) and the
# master's pid (``filelayout.HEADER_START``): what ``cosftpctl`` reads of a file of another
# layout to name its master. Then the generation, the start, workers, reload count and the
# last reload's result.
HEADER = struct.Struct(HEADER_START.format + "IdIII")
# after it: FTP port, implicit FTPS port (0: none), AUTH TLS offered (0/1), the master's
# state (its index in MASTER_STATES; not running: it stops and takes no reload), the
# ipv6_prefix_length its bans and counts are keyed by (a reload keeps it; 0: not said)
PORTS = struct.Struct("<HHBBB")
RUNNING = "running"
MASTER_STARTING = "starting"  # no worker has served yet
MASTER_STOPPING = ("stopping", "stopping gracefully")
# What ``cosftpctl status`` and the admin API show: the names of the master's phases
# (``server.master.Phase``), "running" for serving. Indices are stored: add at the end.
MASTER_STATES = (RUNNING, *MASTER_STOPPING, MASTER_STARTING)
HEADER_SIZE = 64
PATH_SIZE = 512
SLOT = struct.Struct("<iiIIddIIIIQQ")
SLOT_SIZE = 64
MAX_WORKER_SLOTS = 2 * MAX_WORKER_PROCESSES  # a reload runs two generations
SESSION_ROWS = 8192
SESSION_WORDS = 6  # uint32s: pid (0: free row), PENDING or LOGGED_IN, client address (4)
PENDING, LOGGED_IN = 1, 2

BAN_ROWS = 1024
BAN_WORDS = 8  # kind (0 free, bans.OWN, bans.COPY), client address (4), failures, window
# start, banned until
# Changes of the table (bans started or lifted) so far, the change last saved to the bans file
# (the master), running bans dropped so far to make room for new rows (a full table), and the
# number of the last of the cluster's unbans this table's rows were judged by (the workers';
# saved in the bans file: a starting worker brings only the unbans after it), and the epoch
# of the counter that gave that number (64 bits, low word first; 0: none).
BAN_HEADER_WORDS = 6

SLOTS_AT = HEADER_SIZE + PATH_SIZE
SESSIONS_AT = SLOTS_AT + MAX_WORKER_SLOTS * SLOT_SIZE
BANS_AT = SESSIONS_AT + SESSION_ROWS * SESSION_WORDS * 4
DETAILS_AT = BANS_AT + (BAN_HEADER_WORDS + BAN_ROWS * BAN_WORDS) * 4
# Per session row, for ``cosftpctl sessions`` and the admin API: user, last command, bytes of
# the current (or last) transfer, its rate (bytes/s), time of the last command, time of the
# connection; the file transfer (0 none, else UPLOAD or DOWNLOAD, plus IN_FLIGHT while it
# runs), the bytes it should move (ALLO, the object's size; -1: not known) and its file name.
# Written by the session's worker (at admission and once a second), read without a lock: a
# display.
DETAIL = struct.Struct("<32s48sQddqdB128s")
USER_SIZE, COMMAND_SIZE, NAME_SIZE = 32, 48, 128
UPLOAD, DOWNLOAD, IN_FLIGHT = 1, 2, 4
INDEX_AT = DETAILS_AT + SESSION_ROWS * DETAIL.size
# The session table's index, so that admitting a connection costs the same whatever the
# table's size: counts (rows in use, logged in, pending; rows ever used; free rows on the
# stack; the last session serial given; kick requests so far), the stack of freed rows, an
# open-addressing table of the addresses that have rows (in use (1/0), address (4), its rows,
# its pending rows), at most half full.
COUNT_WORDS = 7
ADDRESS_SLOTS = 2 * SESSION_ROWS
ADDRESS_WORDS = 7
# Then, per session row, the account it logged in as (4 words, 0: none), the number of
# account slots kept with no session, and an open-addressing table of the accounts logged in
# here (in use, account (4), logged-in sessions, then the upload and the download rate
# buckets: level and stamp as int64 each).
ACCOUNT_SLOTS = 2 * SESSION_ROWS
ACCOUNT_WORDS = 14
# Last, per session row, its session's serial and the serial a kick request names (0:
# none).
INDEX_WORDS = COUNT_WORDS + SESSION_ROWS + ADDRESS_SLOTS * ADDRESS_WORDS + \
    SESSION_ROWS * 4 + 1 + ACCOUNT_SLOTS * ACCOUNT_WORDS + SESSION_ROWS * 2
KEEP_BUCKETS = 10 * rates.NS  # how long an account's buckets outlive its last session
CONTROL_AT = INDEX_AT + INDEX_WORDS * 4
# Reloads asked for by the admin API, and the last one the master took; then the errors of
# the last reload (UTF-8, NUL-padded), written by the master; then the warnings it logged
# for the last reload, for ``cosftpctl reload`` to print: how many there were, then as
# many as fit, escaped (no control character) and each cut at RELOAD_WARNING_CHARS, one a
# line (UTF-8, NUL-padded).
CONTROL = struct.Struct("<II")
RELOAD_ERROR_SIZE = 2048
RELOAD_WARNINGS_HEAD = struct.Struct("<I")
RELOAD_WARNINGS_SIZE = 4096
RELOAD_WARNING_CHARS = 600
# Per session row, the client's own address (4 words, as ``records.address_key``; 0: the
# row's), for display: the row holds what it is counted under (``ipv6_prefix_length``'s
# network of an IPv6 client).
CLIENT_SIZE = 4 * 4
RELOAD_WARNINGS_AT = CONTROL_AT + CONTROL.size + RELOAD_ERROR_SIZE
CLIENTS_AT = RELOAD_WARNINGS_AT + RELOAD_WARNINGS_SIZE
# Per session row, its upload from byte 0 (STOR) until its final reply went out, written by
# its worker as each chunk arrives and read by the master once that worker died
# (``uploads``): its state (``uploads.InFlight``), unused, the bytes received, the key of
# its account and path (``records.upload_key``), then the CRC64 of its first MARK_STEP,
# 2 * MARK_STEP... bytes, up to MARKS of them (those its bytes reached). 160 bytes a row.
MARK_STEP = 64 * 1024  # lftp reads its file 64 KiB at a time: its cut retries end there
MARKS = 16  # the first 1 MiB
IN_FLIGHT_ROW = struct.Struct(f"<IIQ16s{MARKS}Q")
IN_FLIGHT_AT = CLIENTS_AT + SESSION_ROWS * CLIENT_SIZE
# Then the uploads the master kept of dead workers' rows: a header (rows kept; unused), then
# KEPT_ROWS rows, each its state (``uploads.Kept``), unused, when it was kept
# (``time.monotonic()``), then the bytes, key and marks of its in-flight row. Kept for
# KEEP_LOST_SECONDS at most; a full table drops its oldest row.
KEPT_HEADER = struct.Struct("<II")
KEPT_ROW = struct.Struct(f"<IId{IN_FLIGHT_ROW.size - 8}s")
KEPT_ROWS = 1024
KEEP_LOST_SECONDS = 600.0
KEPT_AT = IN_FLIGHT_AT + SESSION_ROWS * IN_FLIGHT_ROW.size
KEPT_ROWS_AT = KEPT_AT + KEPT_HEADER.size
FILE_SIZE = KEPT_ROWS_AT + KEPT_ROWS * KEPT_ROW.size

STATES = {0: "free", 1: "starting", 2: "serving", 3: "draining", 4: "aborting"}
STARTING, SERVING, DRAINING, ABORTING = 1, 2, 3, 4
STATE_AT = struct.calcsize("<iiI")  # a slot's state follows its pid, index and generation
SESSIONS_COUNT_AT = struct.calcsize("<iiIIdd")  # then started and heartbeat, then sessions
# The last reload's outcome: none yet, running, done, failed (could not run now, could not
# bind or prepare what the file names, or rolled back), refused (the file is invalid, or
# its workers could not run it: ``reload_error`` says why, as ``check`` would).
RELOAD_NONE, RELOAD_RUNNING, RELOAD_OK, RELOAD_FAILED, RELOAD_REFUSED = 0, 1, 2, 3, 4
# A worker's view of [CLUSTER] redis_url: none configured (or not asked yet), reachable,
# unreachable and serving on the local scoreboard, unreachable and refusing new connections,
# reachable but answering errors lately, too old (or its version unreadable) and serving on
# the local scoreboard or refusing new connections, refusing writes (a read-only replica...)
# and serving on the local scoreboard or refusing new connections; serving no command now
# (as unreachable, but its cause known: a script past busy-reply-threshold, BUSY; loading
# its dataset, LOADING) and serving on the local scoreboard or refusing new connections.
CLUSTER_NONE, CLUSTER_UP, CLUSTER_DOWN_OPEN, CLUSTER_DOWN_CLOSED = 0, 1, 2, 3
CLUSTER_ERRORS, CLUSTER_UNSUPPORTED_OPEN, CLUSTER_UNSUPPORTED_CLOSED = 4, 5, 6
CLUSTER_READ_ONLY_OPEN, CLUSTER_READ_ONLY_CLOSED = 7, 8
CLUSTER_BUSY_OPEN, CLUSTER_BUSY_CLOSED, CLUSTER_LOADING_OPEN, CLUSTER_LOADING_CLOSED = \
    9, 10, 11, 12

# The session index's regions, in words from INDEX_AT (see above).
ADDRESS_BASE = COUNT_WORDS + SESSION_ROWS
ROW_ACCOUNT_BASE = ADDRESS_BASE + ADDRESS_SLOTS * ADDRESS_WORDS
KEPT = ROW_ACCOUNT_BASE + SESSION_ROWS * 4  # slots of accounts with no session
ACCOUNT_BASE = KEPT + 1
# An account slot's two buckets, upload then download: level, stamp (int64 each).
INT64 = struct.Struct("<qq")
BUCKETS_UNUSED = array("I", INT64.pack(rates.EMPTY, 0) * 2)
SERIALS_BASE = ACCOUNT_BASE + ACCOUNT_SLOTS * ACCOUNT_WORDS
KICKS_BASE = SERIALS_BASE + SESSION_ROWS

# What the header says of the file's layout: ``cosftpctl`` of another version (an upgrade
# while the master runs) must neither read nor write the file with its own offsets.
LAYOUT_VERSION = fingerprint(globals())
