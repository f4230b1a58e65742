"""The bans kept across stop/start in ``<pid file>.bans``: put back when the master starts,
saved by it whenever the table changes and when it stops. With a cluster, the file also
says which bans are copies of other nodes' (they give way first in a full table, as they
did before the stop), and the last of the cluster's unbans the node judged its bans by,
with its counter's epoch (saved when they move too): its workers, starting, bring only the
unbans after it (one made before a ban must not lift it, even a ban Redis never held: made
while it could not be asked)."""

from __future__ import annotations

import logging
import os
import time

from .scoreboard import SharedState, address_group, bans_path, load_bans, save_bans
from .scoreboard.layout import BAN_ROWS

log = logging.getLogger(__name__)

MAX_LOGGED_REJECTS = 10  # bad entries of a bans file logged one by one; then a count
DROPS_LOGGED_EVERY = 60.0  # seconds: running bans dropped by a full table, a line at most


class BansFile:
    """The saved bans of the master's shared state."""

    def __init__(self, state: SharedState, pid_file: str, ipv6_prefix_length: int) -> None:
        self.state = state
        self.prefix = ipv6_prefix_length
        self.path = bans_path(pid_file)
        self._saved_epoch = 0
        self._saved_unbans = state.unbans_mark()
        self._drops_seen = state.dropped_bans()  # 0 (a new table), or a reload's master
        self._drops_logged_at = -DROPS_LOGGED_EVERY  # time.monotonic(): the first goes at once

    def restore(self) -> None:
        """Put back the bans saved at the last stop: every valid entry, each bad one logged
        (a file that is no bans file at all is kept aside as ``.invalid``, for a look)."""
        path = self.path
        try:
            saved = load_bans(path)
        except ValueError as exc:
            try:
                os.replace(path, f"{path}.invalid")
                kept = f"moved it to {path}.invalid"
            except OSError as move:
                kept = f"could not move it aside: {move}"
            log.error("ignoring the saved bans in %s: %s; %s", path, exc, kept)
            return
        for problem in saved.rejected[:MAX_LOGGED_REJECTS]:
            log.error("bans file %s: ignored %s", path, problem)
        if len(saved.rejected) > MAX_LOGGED_REJECTS:
            log.error("bans file %s: ignored %d more bad entries", path,
                      len(saved.rejected) - MAX_LOGGED_REJECTS)
        bans, copies = self._grouped(saved.bans, saved.copies)
        restored = self.state.restore_bans(bans, time.time(), copies)
        self.state.note_unbans_applied(saved.unbans_applied, saved.unbans_epoch,
                                       restarted=True)
        self._saved_epoch = self.state.ban_epoch()
        self._saved_unbans = self.state.unbans_mark()
        self.state.note_bans_saved(self._saved_epoch)
        if restored:
            log.info("restored %d bans from %s", restored, path)

    def _grouped(self, bans: list[tuple[str, int]],
                 copies: set[str]) -> tuple[list[tuple[str, int]], set[str]]:
        """The saved bans as what their addresses are banned as now (``ipv6_prefix_length``
        may have changed since they were saved): the longest ban of each network; and the
        networks of which every ban saved was a copy of another node's."""
        until: dict[str, int] = {}
        own: set[str] = set()
        for address, ends in bans:
            group = address_group(address, self.prefix)
            until[group] = max(ends, until.get(group, 0))
            if address not in copies:
                own.add(group)
        return list(until.items()), set(until) - own

    def save(self, force: bool = False) -> None:
        """Save the running bans when the table changed (a worker started a ban, ``cosftpctl
        unban`` lifted one), when the number of the last of the cluster's unbans the table
        was judged by moved, or at exit (``force``), and say which change is saved:
        ``unban`` waits for it, so that a stop right after cannot bring a lifted ban back.
        Say in the log when running bans were dropped from a full table since the last line
        (at once, then at most a line a minute with how many).

        The number is saved as it moves, not only with a change of the table (found: unbans
        that lifted nothing here left the file's number behind, and a node killed with
        ``kill -9`` brought them again at its start); a kill still loses the last second's."""
        self._note_drops()
        # (read before the table: a change after them saves again)
        epoch, unbans = self.state.ban_epoch(), self.state.unbans_mark()
        if not force and epoch == self._saved_epoch and unbans == self._saved_unbans:
            return
        self._saved_epoch, self._saved_unbans = epoch, unbans
        number, unbans_epoch = self.state.unbans_applied()
        try:
            save_bans(self.path, *self.state.saved_bans(time.time()),
                      unbans_applied=number, unbans_epoch=unbans_epoch)
        except OSError as exc:
            log.error("could not save the bans to %s: %s", self.path, exc)
            return
        self.state.note_bans_saved(epoch)

    def _note_drops(self) -> None:
        dropped, now = self.state.dropped_bans(), time.monotonic()
        if dropped == self._drops_seen or now - self._drops_logged_at < DROPS_LOGGED_EVERY:
            return
        log.warning("the ban table (%d rows) was full of running bans: %d of them were "
                    "dropped for new ones (a crowd of banned addresses?), those ending "
                    "soonest among the copies of other nodes' bans first, this node's own "
                    "only when every row held one; they no longer hold on this node (a "
                    "cluster's Redis still holds those it had)", BAN_ROWS,
                    dropped - self._drops_seen)
        self._drops_seen, self._drops_logged_at = dropped, now
