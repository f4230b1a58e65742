"""``cosftpctl bans`` and ``cosftpctl unban``: the bans of a running server (its shared state
file), those a stopped one saved (``<pid_file>.bans``) and, with ``[CLUSTER] redis_url``,
the cluster's (Redis).

An unban forgets the address's ban and its failed logins (``--all``: every address's):

* in the running server's ban table, under its lock, moving the ban epoch: every worker
  reads its copy of the table again at its next accept, so the address gets in at once on
  every worker. The master saves the bans file at its next turn (within a second), and the
  command waits for that save: a stop right after cannot bring the ban back. If the master
  exits before it saved, the command edits the file itself;
* in a stopped server's bans file;
* in Redis: the ban and failure keys, and a note of the unban that every node's workers read
  at their next heartbeat, to forget the address in their own tables too.

Like ``fail2ban-client set <jail> unbanip``, an address that is not banned is not an error:
the command says so and exits 0. An argument that is not one IP address is refused (exit
2) before anything changes, and shown escaped. Every call writes one line to the server's
log (``cosftp.log``): who ran it (uid, and the sudo caller), what, and what came of it; if
that line cannot be written, nothing is changed.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import pwd
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Callable, Optional

from ..config.model import BanScope
from ..logfiles import escape_controls
from .logs import LOG_FILE_NAME, setup_logging
from .pidfile import EXIT_NOT_RUNNING
from .scoreboard import (
    BanRow,
    SavedBans,
    SharedState,
    address_group,
    bans_path,
    group_label,
    load_bans,
    save_bans,
    state_path,
)

log = logging.getLogger(__name__)

SAVE_TIMEOUT = 10.0  # the master saves the bans file within a second of a change
EXIT_USAGE = 2

# Asks whether the server of the config runs: its master's pid, or None.
MasterPid = Callable[[], Optional[int]]


def parse_address(text: str, prefix: int) -> str:
    """What the address ``text`` is banned as, as the ban table writes it (IPv4-mapped IPv6
    as IPv4; an IPv6 address as its network of ``ipv6_prefix_length`` = ``prefix`` bits, which
    ``text`` may also name: ``2001:db8::/64``); ``ValueError`` saying what is wrong, the
    text shown escaped and cut short."""
    shown = f"'{escape_controls(text[:64])}'" + ("..." if len(text) > 64 else "")
    address, slash, length = text.partition("/")
    try:
        group = address_group(str(ipaddress.ip_address(address)), prefix)
    except ValueError:
        raise ValueError(f"{shown} is not an IP address (like 192.0.2.7 or "
                         f"2001:db8::7)") from None
    if slash and group_label(group, prefix) != f"{group}/{length}":
        raise ValueError(f"{shown} is a network; unban takes one address (or --all), or "
                         f"the network of ipv6_prefix_length = {prefix} of an IPv6 one")
    return group


def as_running(config: BanScope, master_pid: MasterPid) -> BanScope:
    """``config`` with the ``ipv6_prefix_length`` its running server counts and bans by:
    a reload keeps the one the server started with (``reload.read_new_config``), so the
    file may say another until the next start. ``config`` itself if none runs."""
    state = SharedState.open(state_path(config.server.pid_file)) if master_pid() else None
    if state is None:
        return config
    try:
        prefix = state.master().ipv6_prefix_length
    finally:
        state.close()
    if not prefix or prefix == config.server.ipv6_prefix_length:
        return config
    return replace(config, server=replace(config.server, ipv6_prefix_length=prefix))


def shown_as(group: str, config: BanScope) -> str:
    """A group of the ban table as the operator reads it: ``2001:db8::/64``, ``192.0.2.7``."""
    return group_label(group, config.server.ipv6_prefix_length)


def allowlisted(group: str, config: BanScope) -> bool:
    """True if every address of ``group`` is in ``ban_allowlist`` (its ban is not enforced)."""
    network = ipaddress.ip_network(shown_as(group, config), strict=False)
    return any(network.version == allowed.version and network.subnet_of(allowed)
               for allowed in config.server.ban_allowlist)


# --- bans


# Whose a ban this node holds is (``bans`` prints it): one it earned or made itself, or a
# copy of one made on another node of the cluster (it gives way first in a full table);
# NOBODY's where the node holds no ban of the address (the cluster's only, or failed
# logins only).
OWN, COPY, NOBODY = "own", "copy", "-"


@dataclass
class Listed:
    """One address as ``bans`` shows it: what this node and the cluster hold."""

    failures: int = 0
    until: float = 0.0
    where: set[str] = field(default_factory=set)
    whose: str = NOBODY

    def add(self, failures: int, until: float, where: str, whose: str = NOBODY) -> None:
        self.failures, self.until = max(self.failures, failures), max(self.until, until)
        self.where.add(where)
        # (the saved bans of one IPv6 network: its own if any is, as the start restores it)
        if whose == OWN or self.whose == NOBODY:
            self.whose = whose


def cmd_bans(config: BanScope, master_pid: MasterPid) -> int:
    """Print every address banned, or with failed logins in the window, on this node (the
    running server's table, else the bans a stopped one saved) and in the cluster; return
    0, 3 if the server is not running, 1 if Redis could not be asked."""
    config = as_running(config, master_pid)
    now, server = time.time(), config.server
    listed: dict[str, Listed] = {}
    state = SharedState.open(state_path(server.pid_file)) if master_pid() else None
    status = 0
    if state is not None:
        try:
            rows = state.ban_rows()
        finally:
            state.close()
        for row in rows:
            failures = row.failures if now - row.since <= server.login_failure_window else 0
            whose = NOBODY if row.until <= now else COPY if row.copy else OWN
            if failures or row.until > now:
                listed.setdefault(row.address, Listed()).add(failures, row.until, "node",
                                                             whose)
    else:
        status = EXIT_NOT_RUNNING
        path = bans_path(server.pid_file)
        print(f"cosftpctl: not running; the bans saved in {path} (restored at start):")
        try:
            saved = load_bans(path)
        except (OSError, ValueError) as exc:
            print(f"cosftpctl: cannot read {path}: {exc}", file=sys.stderr)
            saved = SavedBans([], [])
        for address, until in saved.bans:
            if until > now:
                listed.setdefault(_spelt(address, config), Listed()).add(
                    0, until, "saved", COPY if address in saved.copies else OWN)
    if config.cluster.redis_url and not _add_cluster(config, listed):
        status = status or 1
    print(format_bans(listed, now, config))
    return status


def _spelt(address: str, config: BanScope) -> str:
    return address_group(address, config.server.ipv6_prefix_length)


def _add_cluster(config: BanScope, listed: dict[str, Listed]) -> bool:
    """Add what Redis holds to ``listed``; False (said on stderr) if it could not be asked."""
    from .cluster import ClusterAdmin, ClusterTrouble  # redis-py only when it is used

    admin = ClusterAdmin(config.cluster)
    try:
        entries, cut = admin.entries()
    except ClusterTrouble as exc:
        # (Redis's answer may quote what others wrote there: a key's name)
        print(f"cosftpctl: the cluster's bans are not listed (only this node's): "
              f"{escape_controls(str(exc))}", file=sys.stderr)
        return False
    finally:
        admin.close()
    for entry in entries:
        listed.setdefault(entry.address, Listed()).add(entry.failures, entry.until, "cluster")
    if cut:
        print(f"cosftpctl: the cluster holds more than {ClusterAdmin.MAX_LISTED} addresses; "
              f"only those are listed", file=sys.stderr)
    return True


def format_bans(listed: dict[str, Listed], now: float, config: BanScope) -> str:
    server = config.server
    lines = [f"{'ADDRESS':<39} {'FAILURES':>8} {'BANNED UNTIL':<19} {'LEFT':>8}  "
             f"{'WHOSE':<5}  WHERE"]
    for address in sorted(listed, key=lambda a: ipaddress.ip_address(a).packed):
        entry = listed[address]
        banned = entry.until > now
        until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.until)) \
            if banned else "-"
        left = str(timedelta(seconds=int(entry.until - now))) if banned else "-"
        where = ",".join(sorted(entry.where))
        if banned and allowlisted(address, config):
            where += " (in ban_allowlist: not enforced)"
        whose = entry.whose if banned else NOBODY
        lines.append(f"{shown_as(address, config):<39} {entry.failures:>8} {until:<19} "
                     f"{left:>8}  {whose:<5}  {where}")
    banned = sum(1 for entry in listed.values() if entry.until > now)
    lines.append(f"{banned} banned, {len(listed) - banned} with failed logins in the last "
                 f"{server.login_failure_window}s (max_login_failures = "
                 f"{server.max_login_failures} make a ban of {server.ban_time}s)")
    return "\n".join(lines)


# --- unban


@dataclass
class Outcome:
    """What one ``unban`` did, and what it could not do."""

    node: list[BanRow] = field(default_factory=list)  # forgotten by the running server
    saved: list[tuple[str, int]] = field(default_factory=list)  # dropped from the bans file
    cluster: Optional[tuple[int, int]] = None  # bans and failed logins deleted in Redis
    problems: list[str] = field(default_factory=list)
    # Whether the nodes were told to drop their own copies: a ban deleted in Redis without
    # that is lifted "in Redis", not "in the cluster" (the nodes holding it still enforce it).
    noted: bool = True

    def lifted(self, now: float) -> dict[str, int]:
        """Bans lifted per place (``on this node``, ``from the saved bans``, ``in the
        cluster``, or ``in Redis`` if the nodes were not told), the places that had some."""
        counts = {"on this node": sum(1 for row in self.node if row.until > now),
                  "from the saved bans": sum(1 for _, until in self.saved if until > now),
                  self.redis_place(): self.cluster[0] if self.cluster else 0}
        return {where: count for where, count in counts.items() if count}

    def redis_place(self) -> str:
        return "in the cluster" if self.noted else "in Redis"

    def failures(self) -> int:
        return sum(row.failures for row in self.node) + (self.cluster[1] if self.cluster
                                                          else 0)


def cmd_unban(config: BanScope, address: Optional[str], master_pid: MasterPid) -> int:
    """Lift the ban of ``address`` (every address: None) everywhere it is held; return 0,
    2 for an argument that is not an address, 1 if some place could not be changed."""
    config = as_running(config, master_pid)
    if address is not None:
        try:
            address = parse_address(address, config.server.ipv6_prefix_length)
        except ValueError as exc:
            print(f"cosftpctl: unban: {exc}", file=sys.stderr)
            return EXIT_USAGE
    try:
        setup_logging("INFO", config.server.log_dir, "cosftpctl", to_stderr=False)
    except OSError as exc:
        print(f"cosftpctl: cannot write the audit line to "
              f"{os.path.join(config.server.log_dir, LOG_FILE_NAME)} ({exc}); nothing "
              f"changed", file=sys.stderr)
        return 1
    now = time.time()
    outcome = Outcome()
    lift_everywhere(config, address, now, outcome,
                    lambda: _lift_here(config, address, master_pid, outcome))
    report = describe(address, outcome, now, bool(config.cluster.redis_url))
    named = address and shown_as(address, config)
    log.info("unban %s by %s: %s", named or "--all", _who(), report)
    # (the log's formatter escapes the line; the terminal needs it as much: the problems
    # quote what Redis answered)
    print(f"cosftpctl: {named or 'every address'}: {escape_controls(report)}",
          file=sys.stderr if outcome.problems else sys.stdout)
    return 1 if outcome.problems else 0


def lift_everywhere(config: BanScope, address: Optional[str], now: float, outcome: Outcome,
                    lift_here: Callable[[], object]) -> None:
    """Lift the ban of ``address`` (every address: None) in the cluster's Redis, if there is
    one, then on this node (``lift_here``, which adds to ``outcome`` as the Redis lift does).
    Redis first: a worker's heartbeat brings every ban Redis holds to its node's table, and
    one that ran between a lift here and the lift in Redis put the ban back here until the
    next heartbeat brought the unban. For every address, this node lifts between Redis's
    deletes and the unban's note (``ClusterAdmin.unban``), or after, if Redis failed
    before that."""
    lifted: list[bool] = []

    def here_before_note() -> None:
        lifted.append(True)
        lift_here()
    if config.cluster.redis_url:
        lift_in_cluster(config, address, int(now), outcome,
                        here_before_note if address is None else None)
    if not lifted:
        lift_here()


def _lift_here(config: BanScope, address: Optional[str], master_pid: MasterPid,
               outcome: Outcome) -> None:
    """Forget ``address`` in the running server's table (and wait until its master saved
    the bans file), else in the bans file."""
    pid_file = config.server.pid_file
    pid = master_pid()
    if pid is not None:
        try:
            state = SharedState.open(state_path(pid_file), writable=True)
        except PermissionError as exc:
            outcome.problems.append(f"cannot change the running server's ban table ({exc}): "
                                    f"run cosftpctl as the user the server runs as")
            return
        if state is None:
            outcome.problems.append(f"the server runs (pid {pid}) but its state file "
                                    f"{state_path(pid_file)} is missing or not its own")
            return
        try:
            if lift_running(state, address, master_pid, outcome, pid_file):
                return
        finally:
            state.close()
        if master_pid():
            return
    try:
        outcome.saved = _lift_saved(bans_path(pid_file), address, config)
    except (OSError, ValueError) as exc:
        outcome.problems.append(f"cannot change {bans_path(pid_file)}: {exc}")


def lift_running(state: SharedState, address: Optional[str], master_pid: MasterPid,
                 outcome: Outcome, pid_file: str) -> bool:
    """Forget ``address`` (every one: None) in the running server's table ``state``, and
    wait until its master saved the bans file; True if it did. A problem, if the master
    runs but did not save in time, goes to ``outcome``."""
    outcome.node = state.lift(lambda row: address in (None, row.address))
    if wait_saved(state, master_pid):
        return True
    if master_pid():
        outcome.problems.append(f"the server did not save {bans_path(pid_file)} within "
                                f"{SAVE_TIMEOUT:.0f}s (see its log): a stop now could bring "
                                f"the ban back")
    return False


def wait_saved(state: SharedState, master_pid: MasterPid) -> bool:
    """Wait until the master saved the table as it is now; False if it exited first, or
    did not within ``SAVE_TIMEOUT``."""
    epoch = state.ban_epoch()
    deadline = time.monotonic() + SAVE_TIMEOUT
    while time.monotonic() < deadline:
        if state.saved_ban_epoch() >= epoch:
            return True
        if master_pid() is None:
            return False
        time.sleep(0.05)
    return False


def _lift_saved(path: str, address: Optional[str],
                config: BanScope) -> list[tuple[str, int]]:
    """Drop ``address`` (every one: None) from the bans file; return the entries dropped.
    The file keeps its owner: root editing it must not lock out a server that runs as
    another user."""
    saved = load_bans(path)
    dropped = [(a, u) for a, u in saved.bans if address in (None, _spelt(a, config))]
    if dropped:
        owner = os.lstat(path)
        save_bans(path, [entry for entry in saved.bans if entry not in dropped],
                  saved.copies, saved.unbans_applied, saved.unbans_epoch)
        if (owner.st_uid, owner.st_gid) != (os.geteuid(), os.getegid()):
            os.chown(path, owner.st_uid, owner.st_gid, follow_symlinks=False)
    return dropped


def lift_in_cluster(config: BanScope, address: Optional[str], now: int,
                    outcome: Outcome,
                    before_note: Optional[Callable[[], object]] = None) -> None:
    """Forget ``address`` (every one: None) in the cluster's Redis, calling
    ``before_note`` before an ``unban --all`` notes it (``ClusterAdmin.unban``); a
    failure goes to ``outcome``."""
    from .cluster import ClusterAdmin, ClusterTrouble  # redis-py only when it is used

    admin = ClusterAdmin(config.cluster)
    try:
        outcome.cluster = admin.unban(address, now, before_note)
    except ClusterTrouble as exc:
        outcome.cluster = exc.done
        again = "unban --all" if address is None else "unban"
        if exc.at_note:  # (what Redis held is gone; the nodes' copies are not)
            outcome.noted = False
            outcome.problems.append(f"the other nodes NOT told to drop their own copies: "
                                    f"{exc}: each holds its copy until it ends or {again} "
                                    f"is run again")
        elif exc.unsure:  # (Redis may have run it, or not: say how to tell)
            outcome.problems.append(f"the cluster's ban(s) perhaps NOT lifted: {exc}: the "
                                    f"{again} was sent, its answer did not come within "
                                    f"redis_timeout: cosftpctl bans says whether Redis still "
                                    f"holds the ban; if it does, run {again} again")
        elif exc.done is None:
            outcome.problems.append(f"the cluster's ban(s) NOT lifted: {exc}: the other "
                                    f"nodes still hold them until they expire or unban is "
                                    f"run again")
        else:  # (--all, cut among its pages: the counts of what was deleted are reported)
            outcome.problems.append(f"the cluster's ban(s) NOT ALL lifted: {exc}: the other "
                                    f"nodes were not told to drop their own copies, which "
                                    f"hold until they expire or unban --all is run again")
    finally:
        admin.close()


def ban_in_cluster(config: BanScope, address: str, until: int,
                   seconds: int) -> Optional[str]:
    """Ban ``address`` in the cluster's Redis (a ban just made on this node, through the
    admin API), in its place after the unbans so far: an unban made before it cannot lift
    it on any node. None if done, else what went wrong (the node's workers publish the
    ban when Redis answers)."""
    from .cluster import ClusterAdmin, ClusterTrouble  # redis-py only when it is used

    admin = ClusterAdmin(config.cluster)
    try:
        admin.ban(address, until, seconds)
    except ClusterTrouble as exc:
        return str(exc)
    finally:
        admin.close()
    return None


def describe(address: Optional[str], outcome: Outcome, now: float, cluster: bool) -> str:
    """What an unban did, in one line: where bans were lifted (``cluster``: Redis was
    asked), then ``outcome``'s problems (what could not be done, and why)."""
    lifted, failures = outcome.lifted(now), outcome.failures()
    if address is None:
        what = "lifted " + (", ".join(f"{count} ban(s) {where}" for where, count in
                                      lifted.items()) or "no ban")
    elif lifted:
        what = f"ban lifted {' and '.join(lifted)}"
    else:
        # (the cluster is named only if Redis answered: a refusal says nothing of a ban)
        asked = cluster and outcome.cluster is not None
        what = "was not banned" + (f" on this node or {outcome.redis_place()}" if asked else
                                   " on this node" if cluster else "")
    if failures:
        what += f"; {failures} failed login(s) forgotten"
    return "; ".join([what, *outcome.problems])


def _who() -> str:
    """The user running cosftpctl: uid and name, and the one sudo ran it for."""
    who = _user(os.getuid())
    caller = os.environ.get("SUDO_UID", "")
    if caller.isdigit() and int(caller) != os.getuid():
        who += f" (sudo from {_user(int(caller))})"
    return who


def _user(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"
