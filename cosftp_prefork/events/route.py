"""Which destinations take an event: the server's and its account's, each by its filters.

A destination takes an event if the event's name is in its ``event_hook_events`` and, when it
has ``event_hook_paths``, one of the event's paths (both names of a rename) matches one of the
patterns. Events without a path (logins, bans) pass every path filter: the patterns choose
files, not sessions. A receiver named by both scopes takes the event once, as the account
configured it (its secret signs).
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

from ..config.hooks import HookTarget


def takes(target: HookTarget, kind: str, paths: Iterable[str]) -> bool:
    if kind not in target.events:
        return False
    paths = list(paths)
    if not target.paths or not paths:
        return True
    return any(fnmatchcase(path, glob) for path in paths for glob in target.paths)


def select(kind: str, paths: Iterable[str], *scopes: Iterable[HookTarget]) -> list[HookTarget]:
    """The destinations of ``scopes`` (the server's first, then the account's) that take an
    event ``kind`` on ``paths``, each receiver once."""
    paths = list(paths)
    chosen: dict[str, HookTarget] = {}
    for scope in scopes:
        for target in scope:
            if takes(target, kind, paths):
                chosen[target.ident] = target
    return list(chosen.values())
