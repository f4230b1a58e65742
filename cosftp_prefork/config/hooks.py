"""Event hooks and pre-checks as the configuration file sets them (``[HOOKS]`` and the same
keys in a ``[COS_ACCOUNT_N]`` section): the values' parsers and the frozen result.

A *scope* is the server (``[HOOKS]``) or one account. Each scope may name an HTTP receiver
(``event_hook_url``) and a command (``event_hook_command``); each is a ``HookTarget`` with the
scope's event filter and path globs. An event goes to the server's targets and to those of
the account it happened in (see ``events.route``). The pre-checks (``pre_upload_hook_url``,
``pre_delete_hook_url``) of an account replace the server's.

Nothing here knows how events are made or delivered (``cosftp_prefork.events``): an auth hook
answering with an account will give these same keys, parsed by these same functions.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from typing import Optional
from urllib.parse import urlsplit

# The events, as operators' scripts name them (event_hook_events, the body's "event").
EVENT_NAMES = ("upload", "upload_failed", "download", "delete", "rename", "mkdir", "rmdir",
               "login", "login_failed", "ban")
SPOOL_FULL_CHOICES = ("refuse", "drop_oldest")
PRE_HOOK_FAILURE_CHOICES = ("closed", "open")
HTTP, COMMAND = "http", "command"


def parse_url(raw: str) -> str:
    """An ``http://`` or ``https://`` URL with a host (a receiver or a pre-check)."""
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname or any(
            ch.isspace() for ch in raw):
        raise ValueError(f"must be an http:// or https:// URL with a host, got {raw!r}")
    return raw


def parse_command(raw: str) -> tuple[str, ...]:
    """A program and its arguments, split as a shell would (quotes) but run without one: the
    program must be an absolute path to an executable file (no PATH look-up as root)."""
    try:
        argv = tuple(shlex.split(raw))
    except ValueError as exc:
        raise ValueError(f"cannot be split into arguments ({exc}), got {raw!r}") from None
    if not argv or not os.path.isabs(argv[0]):
        raise ValueError(f"must start with the absolute path of a program, got {raw!r}")
    if not (os.path.isfile(argv[0]) and os.access(argv[0], os.X_OK)):
        raise ValueError(f"{argv[0]} is not an executable file")
    return argv


def parse_event_names(raw: str) -> frozenset[str]:
    """A comma-separated list of event names (``all``: every one)."""
    names = {part.strip() for part in raw.split(",") if part.strip()}
    if names == {"all"}:
        return frozenset(EVENT_NAMES)
    unknown = sorted(names - set(EVENT_NAMES))
    if unknown or not names:
        raise ValueError(f"must be a comma-separated list of {', '.join(EVENT_NAMES)} (or "
                         f"all), got {', '.join(unknown) or repr(raw)}")
    return frozenset(names)


def parse_globs(raw: str) -> tuple[str, ...]:
    """A comma-separated list of shell patterns on the FTP path (``/incoming/*``, ``*.jpg``;
    ``*`` also matches ``/``)."""
    globs = tuple(part.strip() for part in raw.split(",") if part.strip())
    bad = [glob for glob in globs if not glob.startswith(("/", "*", "?", "["))]
    if bad or not globs:
        raise ValueError("must be comma-separated patterns of FTP paths, each starting with / "
                         f"or a wildcard (/incoming/*, *.jpg), got {bad[0] if bad else raw!r}")
    return globs


@dataclass(frozen=True)
class HookTarget:
    """One destination of events: an HTTP receiver (``target`` is the URL) or a command
    (``target`` is the command line as written, ``argv`` its words)."""

    kind: str  # HTTP or COMMAND
    target: str
    secret: str = field(repr=False)  # signs the body (HTTP); "" for a command
    events: frozenset[str] = frozenset(EVENT_NAMES)
    paths: tuple[str, ...] = ()  # () = every path
    timeout: int = 10
    argv: tuple[str, ...] = ()
    scope: str = "HOOKS"  # the section that configured it, for the logs

    @property
    def ident(self) -> str:
        """What names this receiver in the spool and the logs: two scopes naming the same
        receiver share it (an event goes there once, in order with the others)."""
        return f"{self.kind}:{self.target}"


@dataclass(frozen=True)
class PreCheck:
    """A synchronous check asked before an upload or a delete (``url``), signed with
    ``secret``."""

    url: str
    secret: str = field(repr=False)


@dataclass(frozen=True)
class ScopeHooks:
    """The hooks of one scope: the server's (``[HOOKS]``) or one account's."""

    targets: tuple[HookTarget, ...] = ()
    pre_upload: Optional[PreCheck] = None
    pre_delete: Optional[PreCheck] = None


@dataclass(frozen=True)
class HooksConfig:
    """``[HOOKS]``: the server's hooks, the spool the workers write events to and the events
    process delivers from, and what the pre-checks do when their service fails."""

    server: ScopeHooks = ScopeHooks()
    spool_dir: str = ""  # default <log_dir>/events, set by the settings reader
    spool_max: int = 256 * 2 ** 20  # bytes on disk (event_spool_max_mib)
    spool_full: str = "refuse"
    retry_max_age: int = 86400  # seconds an event is retried before it is dead-lettered
    pre_hook_timeout: int = 5
    pre_hook_failure: str = "closed"
