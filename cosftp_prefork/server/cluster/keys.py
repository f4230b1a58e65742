"""The keys and hash fields this server keeps in the cluster's Redis (all under ``PREFIX``),
and the one spelling of an address or an account in them."""

from __future__ import annotations

from ..scoreboard import AccountKey, account_text, address_key, address_text

PREFIX = "cosftp:"
NODE_TTL = 10  # seconds a node's counts live without a rewrite
LOGGED_IN_FIELD = "@in"
ACCOUNT_FIELD = "@u:"  # then the account's digest (scoreboard.account_text)
SEQUENCE_FIELD = "@seq"  # counted changes to the node's hash so far (see scripts.HEARTBEAT)
# Heartbeats of one worker that may skip their rewrite in a row (a counted change landed
# during each) before one rewrites anyway: a busy node's hash would otherwise never drop the
# counts of a worker that died; that rewrite may miss a change for a second.
SKIPS_BEFORE_REWRITE = 5
KEEP_HASH = "-"  # a sequence the hash never holds: the heartbeat keeps the hash
UNBANS_KEPT = 1000  # the last unbans kept for the workers to read
UNBANS_SECONDS = 7 * 86400  # and for how long after the last one
UNBANS_PER_TICK = 100  # the most one heartbeat brings (the script's LIMIT)
# The bans made (and published again), by address, kept for every node's workers to hold
# them too (``scripts.HEARTBEAT``): as many as a node's ban table has rows, near enough.
BANS_MADE = PREFIX + "bans-made"
BANS_MADE_COUNT = PREFIX + "ban-count"
BANS_KEPT = 1000
BANS_SECONDS = 7 * 86400  # the log's life after the last ban noted (a ban's key ends its own)
UNBANS = PREFIX + "unbans"
UNBAN_COUNT = PREFIX + "unban-count"
# The counter's epoch: a token written when the counter is made (``scripts.LIBRARY``,
# ``new_epoch``); a node keeps it beside the number of the last unban it brought.
UNBAN_EPOCH = PREFIX + "unban-epoch"
# Set while an ``unban --all`` runs (its number; ``scripts.RESERVE``): no node publishes its
# bans again meanwhile. Each of its pages renews it; one cut short leaves it this long.
UNBANNING = PREFIX + "unbanning"
UNBANNING_SECONDS = 60
WRITE_PROBE = PREFIX + "write-probe"  # written and deleted at once: does Redis take writes?
SCAN_PAGE = 500  # keys per SCAN page, each page read or deleted by one script


def account_field(account: AccountKey) -> str:
    """An account's field in a node's hash (an address never starts with ``@``)."""
    return ACCOUNT_FIELD + account_text(account)


def client_key(ip: str) -> str:
    """One spelling per address (``::ffff:1.2.3.4`` is ``1.2.3.4``)."""
    return address_text(address_key(ip))


def ban_key(ip: str) -> str:
    """The key of the ban of ``ip``."""
    return PREFIX + "ban:" + client_key(ip)
