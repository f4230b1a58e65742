"""``cosftpctl quota [USER]`` and ``cosftpctl quota-scan [USER]``, and :func:`account_usage`,
what the admin API's ``quotas`` resource reads (this module loads no COS or FTP code).

The usage is the running server's (``server.usage``): a stopped server has none, and a home
nobody used since the master started is not known yet (its first session scans it). With
``[CLUSTER]`` it is the cluster's, read from Redis (``server.quotashare``): what every node
reserves against, the reservations of every live node included; this node's table only
while Redis cannot be read (said so).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Optional

from ..config.model import Config
from ..config.quotas import Home, QuotaRules, Usage, places
from ..config.values import size_in_words
from ..logfiles import escape_controls
from .pidfile import EXIT_NOT_RUNNING, Target, find_master
from .scoreboard import state_path
from .usage import UsageTable, usage_path

EXIT_USAGE = 2
SCAN_TIMEOUT = 300.0  # seconds quota-scan waits for worker 1 to scan what it asked for


@dataclass(frozen=True)
class AccountUsage:
    """One account's quota: the limits of its home (0: none) and what the server knows of
    its usage (None: no quota, or not known yet)."""

    user: str
    size_limit: int
    files_limit: int
    usage: Optional[Usage]


@dataclass(frozen=True)
class FolderUsage:
    """A virtual folder with a quota, as some accounts mount it: its ``[FOLDER_<name>]``
    name, bucket and prefix, the users sharing its usage there, its limits and usage."""

    folder: str
    bucket: str
    prefix: str
    users: tuple[str, ...]
    size_limit: int
    files_limit: int
    usage: Optional[Usage]


@dataclass(frozen=True)
class HookHomeUsage:
    """A home whose quota an auth hook's answer gave (this node's answers): its bucket and
    prefix, the latest answer's limits and time, and its usage."""

    bucket: str
    prefix: str
    size_limit: int
    files_limit: int
    answered_at: float
    usage: Optional[Usage]


CLUSTER, NODE = "cluster", "node"  # where a report's usage comes from


@dataclass(frozen=True)
class UsageReport:
    """:func:`account_usage`'s answer: the accounts' rows, the virtual folders' with a quota,
    the homes an auth hook's answers gave a quota, where their usage comes from
    (``CLUSTER``: Redis; ``NODE``: this node's table), and why not from Redis when it should
    ("": it is, or there is no cluster)."""

    rows: list[AccountUsage]
    folders: list[FolderUsage]
    hook_homes: list[HookHomeUsage]
    source: str
    trouble: str = ""


def account_usage(config: Config, table: Optional[UsageTable]) -> UsageReport:
    """Every account of ``config`` with its home's limits and usage, every virtual folder
    with a quota, and every home whose quota an auth hook's answer gave (``table``'s): the
    cluster's usage with ``[CLUSTER]``, else (or while Redis cannot be read) what ``table``
    holds."""
    rules = QuotaRules(config.accounts)
    answered = [found for found in (table.answered() if table is not None else [])
                if (found.home.bucket, found.home.prefix) not in rules.homes]
    homes = [*rules.homes.values(), *(found.home for found in answered)]
    usages, trouble = None, ""
    if config.cluster.redis_url and homes:
        usages, trouble = _cluster_usages(config, homes)
    source = NODE if usages is None else CLUSTER
    if usages is None:
        usages = {home.ident: table.read(home) if table is not None else None
                  for home in homes}
    hooked = [HookHomeUsage(found.home.bucket, found.home.prefix, found.home.size,
                            found.home.files, found.answered_at, usages.get(found.home.ident))
              for found in answered]
    found = []
    for account in config.accounts:
        home = rules.homes.get((account.bucket, account.prefix))
        found.append(AccountUsage(account.user, home.size if home else 0,
                                  home.files if home else 0,
                                  usages.get(home.ident) if home else None))
    return UsageReport(found, _folders(config, rules, usages), hooked, source, trouble)


def _cluster_usages(config: Config, homes: Iterable[Home]
                    ) -> tuple[Optional[Mapping[bytes, Optional[Usage]]], str]:
    """The usage of ``homes`` in the cluster's Redis, or None and why it cannot be read."""
    from .cluster import ClusterAdmin, ClusterTrouble  # redis-py only when it is used
    from .quotashare import cluster_usage

    admin = ClusterAdmin(config.cluster)
    try:
        return cluster_usage(admin, list(homes)), ""
    except ClusterTrouble as exc:
        return None, str(exc)
    finally:
        admin.close()


def _folders(config: Config, rules: QuotaRules,
             usages: Mapping[bytes, Optional[Usage]]) -> list[FolderUsage]:
    """Every virtual folder with a quota, once per bucket and prefix it is mounted at (a
    folder without ``cos_bucket`` is in each mounting account's bucket), in the order of
    the accounts mounting it."""
    mounted: dict[tuple[str, str, str], list[str]] = {}
    for account in config.accounts:
        for _, folder in account.folders:
            if folder.has_quota:
                place = account.mounted(folder)
                users = mounted.setdefault((folder.name, place.bucket, place.prefix), [])
                users.append(account.user)
    found = []
    for (name, bucket, prefix), users in mounted.items():
        home = rules.homes[(bucket, prefix)]
        found.append(FolderUsage(name, bucket, prefix, tuple(dict.fromkeys(users)), home.size,
                                 home.files, usages.get(home.ident)))
    return found


def _table(config: Config, writable: bool = False) -> Optional[UsageTable]:
    """The running server's usage table; None if no server of ``config`` runs. Raises
    ``OtherLayoutError`` if that server is of another version (``cosftpctl`` exits 4)."""
    server, network = config.server, config.network
    master = find_master(Target(config.path, server.pid_file, network.listen_port,
                                network.listen_addresses))
    if not master:
        return None
    return UsageTable.open(usage_path(state_path(server.pid_file)), master, writable)


def _users(config: Config, user: Optional[str]
           ) -> tuple[list[AccountUsage], list[FolderUsage], list[HookHomeUsage]]:
    """The accounts' rows (``user``'s only, if given), the rows of their folders and (no
    ``user`` given) the homes the auth hook's answers gave a quota; says on stderr if the
    cluster's usage could not be read (this node's is shown)."""
    table = _table(config)
    report = account_usage(config, table)
    if table is not None:
        table.close()
    if report.trouble:
        # (what Redis, or whatever answers at its address, said: escaped)
        print(f"cosftpctl: quota: the cluster's usage cannot be read "
              f"({escape_controls(report.trouble)}); "
              "this node's table is shown", file=sys.stderr)
    return ([row for row in report.rows if user is None or row.user == user],
            [row for row in report.folders if user is None or user in row.users],
            report.hook_homes if user is None else [])


def cmd_quota(config: Config, user: Optional[str] = None) -> int:
    """Print each account's usage and limits; 0, 2 for an unknown user, 3 if not running."""
    if _table(config) is None:
        print("cosftpctl: not running: the usage is the running server's", file=sys.stderr)
        return EXIT_NOT_RUNNING
    rows, folders, hooked = _users(config, user)
    if not rows and not hooked:
        print(f"cosftpctl: quota: no account {user!r}", file=sys.stderr)
        return EXIT_USAGE
    print(format_usage(rows, folders, hooked, time.time()))
    return 0


_COLUMNS = (f"{'BYTES':>14} {'SIZE LIMIT':>12} {'FILES':>9} {'FILE LIMIT':>10} "
            f"{'RESERVED':>10} {'SCANNED':>9}")


def format_usage(rows: list[AccountUsage], folders: list[FolderUsage],
                 hooked: list[HookHomeUsage], now: float) -> str:
    """The accounts' table, then (if any has a quota) the virtual folders' with the users
    mounting each, then (if any) the homes the auth hook's answers gave a quota: each named
    ``bucket/prefix`` on its own line (a prefix may be long), its figures on the next."""
    lines = [f"{'USER':<16} {_COLUMNS}"]
    for row in rows:
        if not row.size_limit and not row.files_limit:
            lines.append(f"{row.user:<16} no quota")
            continue
        lines.append(f"{row.user:<16} {_figures(row.size_limit, row.files_limit, row.usage, now)}")
    if folders:
        lines += ["", f"{'FOLDER':<16} {_COLUMNS} USERS"]
        lines += [f"{row.folder:<16} {_figures(row.size_limit, row.files_limit, row.usage, now)} "
                  f"{','.join(row.users)}" for row in folders]
    if hooked:
        lines += ["", f"{'HOOK HOME':<16} {_COLUMNS} ANSWERED"]
        for home in hooked:
            figures = _figures(home.size_limit, home.files_limit, home.usage, now)
            lines += [f"{home.bucket}/{home.prefix}",
                      f"{'':<16} {figures} {int(now - home.answered_at)}s ago"]
    return "\n".join(lines)


def _figures(size_limit: int, files_limit: int, usage: Optional[Usage], now: float) -> str:
    """A row's columns after its name."""
    size = size_in_words(size_limit) if size_limit else "-"
    files = str(files_limit) if files_limit else "-"
    if usage is None or not usage.scanned_at:
        return f"{'?':>14} {size:>12} {'?':>9} {files:>10} {'-':>10} {'not yet':>9}"
    ago = f"{int(now - usage.scanned_at)}s ago"
    return (f"{usage.used:>14} {size:>12} {usage.files:>9} {files:>10} {usage.reserved:>10} "
            f"{ago:>9}")


def cmd_quota_scan(config: Config, user: Optional[str] = None) -> int:
    """Ask worker 1 to scan the homes with a quota (of ``user``'s account and its virtual
    folders only, if given)
    and wait until it did; print the usage then. 0, 1 if not all were scanned in time, 2
    for an unknown user or one without a quota, 3 if not running."""
    rules = QuotaRules(config.accounts)
    homes = [rules.homes[(place.bucket, place.prefix)] for account in config.accounts
             if user is None or account.user == user for place in places(account)
             if (place.bucket, place.prefix) in rules.homes]
    if not homes:
        print(f"cosftpctl: quota-scan: no account {'with a quota' if user is None else user!r}"
              f"{'' if user is None else ' with a quota'}", file=sys.stderr)
        return EXIT_USAGE
    try:
        table = _table(config, writable=True)
    except PermissionError as exc:
        print(f"cosftpctl: quota-scan: cannot ask the running server ({exc}): run it as the "
              "user the server runs as", file=sys.stderr)
        return 1
    if table is None:
        print("cosftpctl: not running", file=sys.stderr)
        return EXIT_NOT_RUNNING
    asked = time.time()
    for home in set(homes):
        table.request_scan(home, asked)
    deadline = time.monotonic() + SCAN_TIMEOUT
    while not all(_scanned_since(table.read(home), asked) for home in homes):
        if time.monotonic() > deadline:
            print(f"cosftpctl: quota-scan: not all scanned within {SCAN_TIMEOUT:.0f}s (see "
                  "cosftp.log)", file=sys.stderr)
            table.close()
            return 1
        time.sleep(0.05)
    table.close()
    print(format_usage(*_users(config, user), now=time.time()))
    return 0


def _scanned_since(usage: Optional[Usage], asked: float) -> bool:
    return usage is not None and usage.scanned_at >= asked
