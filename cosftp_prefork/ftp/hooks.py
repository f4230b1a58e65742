"""A session's events and pre-checks: what its FTP commands become for ``cosftp_prefork.events``.

Every event of an operation the client is told succeeded is on the spool's disk before that
reply goes out (an upload's before its 226, a delete's before its 250): a crash after the
reply loses no event. The events of what failed or what the client already has (a failed
upload, a download) are written after the reply. A pre-check, or a full spool under
``event_spool_full = refuse``, refuses a command before it acts: an upload before its 150.

``SpoolError`` (the spool cannot be written) reaches the handler, which answers 451: the
operation may have happened, but the client is not told it did, so it tries again and that
attempt's event is kept.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

from ..config.hooks import HooksConfig, PreCheck
from ..config.model import AccountConfig, Config
from ..cos.bucket import ObjectInfo
from ..events.body import make_event
from ..events.precheck import PreChecker
from ..events.sink import EventSink
from ..events.spool import SpoolError
from ..paths import dir_prefix, object_key

SPOOL_FULL_REPLY = "451 The server cannot record this operation now (event spool full); try " \
                   "again later."


Who = Callable[[], tuple[Optional[str], str]]
# Where an FTP path of the session is: the account as it is there (a virtual folder's view,
# ``AccountConfig.mounted``: its bucket and cos_prefix) and the path as that place names it.
Where = Callable[[str], tuple[AccountConfig, str]]


class SessionHooks:
    """The events and pre-checks of one session. ``who`` returns the session's user (None
    before USER) and client address when an event is made; ``where`` places an FTP path
    (the session's filesystem answers: a virtual folder's paths are of its bucket).

    Paths are the session's FTP paths; the filesystem of a virtual folder reports its
    changes through :meth:`under`, with paths as the folder names them."""

    def __init__(self, sink: Optional[EventSink], checker: Optional[PreChecker],
                 hooks: HooksConfig, session: str, who: Who, where: Where) -> None:
        self._sink, self._checker, self._hooks = sink, checker, hooks
        self._session, self._who = session, who
        self._where = where
        self._mount = ""  # see ``under``
        self.account: Optional[AccountConfig] = None  # set at login

    def under(self, mount: str) -> SessionHooks:
        """These hooks as the filesystem of the virtual folder at ``mount`` reports to
        them: :meth:`changed` takes the folder's paths (``/a.txt`` is ``<mount>/a.txt``)."""
        view = copy.copy(self)
        view._mount = mount
        return view

    # --- before a command acts

    def check_upload(self, path: str, offset: int, append: bool,
                     size: Optional[int]) -> Optional[str]:
        """The reply refusing STOR/APPE of ``path`` (REST ``offset``, ALLO ``size``), or
        None to go on."""
        return self._check("upload", "upload", path, [path], offset=offset, append=append,
                           size=size)

    def check_change(self, kind: str, path: str, source: Optional[str] = None) -> Optional[str]:
        """The reply refusing a delete, rmdir, rename (from ``source``) or mkdir of ``path``,
        or None to go on. Every one but mkdir removes a name: the pre-delete check is
        asked about it (a rename's source)."""
        fields: dict[str, Any] = {"operation": kind}
        if source:
            fields["to"] = path
        return self._check(kind, "delete" if kind != "mkdir" else "", source or path,
                           [source, path] if source else [path],
                           directory=kind in ("rmdir", "mkdir"), **fields)

    def _check(self, kind: str, hook: str, path: str, paths: list[str],
               directory: bool = False, **fields: Any) -> Optional[str]:
        """The spool's refusal, then the pre-check's (``hook``: upload, delete or none)."""
        assert self.account is not None  # commands that change files need a login
        if self._sink is not None and self._sink.refuses(
                self._sink.route(kind, paths, self.account.hooks.targets)):
            return SPOOL_FULL_REPLY
        check = self._pre_check(hook)
        if check is None or self._checker is None:
            return None
        user, address = self._who()
        bucket, key = self._located(path, directory)
        question = make_event(f"pre_{hook}", user, address, path, session=self._session,
                              bucket=bucket, key=key, **fields)
        verdict = self._checker.ask(check, hook, question)
        if verdict.allowed:
            return None
        return f"{451 if verdict.failed else 550} {verdict.reason}."

    def _located(self, path: str, directory: bool = False,
                 key: Optional[str] = None) -> tuple[str, str]:
        """The bucket and the COS key of ``path`` (a directory's ends with ``/``): under the
        cos_prefix of the place it is in, where the receiver finds the object. ``key``: the
        key as the place's own tree has it, when known (a committed upload's)."""
        account, inner = self._where(path)
        if key is None:
            key = dir_prefix(inner) if directory else object_key(inner)
        return account.bucket, account.prefix + key

    def _pre_check(self, hook: str) -> Optional[PreCheck]:
        """The account's check of ``hook`` (upload, delete), else the server's."""
        if not hook:
            return None
        name = f"pre_{hook}"
        own = getattr(self.account.hooks, name) if self.account else None
        return own or getattr(self._hooks.server, name)

    # --- after it acted

    def uploaded(self, path: str, stored: ObjectInfo, resumed: bool, command: str,
                 seconds: float) -> None:
        """A STOR/APPE committed (before its 226)."""
        self._emit("upload", path, [self._located(path, key=stored.key)], True, self.account,
                   command=command, size=stored.size, etag=stored.etag,
                   crc64=None if stored.crc64 is None else str(stored.crc64),
                   duration=round(seconds, 3), resumed=resumed)

    def upload_failed(self, path: str, received: int, parked: bool, seconds: float) -> None:
        """A STOR/APPE ended without an object: parked for a resume, or discarded."""
        self._emit("upload_failed", path, [self._located(path)], False, self.account,
                   size=received, parked=parked, duration=round(seconds, 3))

    def downloaded(self, path: str, sent: int, seconds: float) -> None:
        self._emit("download", path, [self._located(path)], False, self.account, size=sent,
                   duration=round(seconds, 3))

    def changed(self, kind: str, path: str, source: Optional[str] = None,
                directory: bool = False) -> None:
        """A delete, mkdir, rmdir or rename (from ``source``) of ``path`` was done (before
        its reply)."""
        path = self._in_session(path)
        if source is None:
            self._emit(kind, path, [self._located(path, directory)], True, self.account)
            return
        source = self._in_session(source)
        places = [self._located(source, directory), self._located(path, directory)]
        from_bucket, from_key = places[0]
        self._emit(kind, path, places, True, self.account,
                   **{"from": source, "to": path, "from_bucket": from_bucket,
                      "from_key": from_key, "directory": directory})

    def _in_session(self, path: str) -> str:
        """``path`` of this view's folder (see ``under``) as the session names it."""
        if not self._mount:
            return path
        return self._mount if path == "/" else self._mount + path

    def logged_in(self, account: AccountConfig) -> None:
        self.account = account
        self._emit("login", None, [], False, account)

    def login_failed(self, account: Optional[AccountConfig]) -> None:
        """A failed login; ``account`` is the one the user name names, if any (its
        destinations hear of it too)."""
        self._emit("login_failed", None, [], False, account)

    def banned(self, seconds: int) -> None:
        """The client's address was banned for ``seconds`` (the server's destinations)."""
        self._emit("ban", None, [], False, None, ban_seconds=seconds)

    def _emit(self, kind: str, path: Optional[str], places: list[tuple[str, str]],
              admitted: bool, owner: Optional[AccountConfig], **fields: Any) -> None:
        """Write the event for the server's destinations and ``owner``'s; ``places`` are the
        (bucket, key) it is about (the last one is the body's ``bucket`` and ``key``)."""
        if self._sink is None:
            return
        paths = [p for p in (fields.get("from"), path) if p]
        targets = self._sink.route(kind, paths, owner.hooks.targets if owner else ())
        if not targets:
            return
        user, address = self._who()
        if places:
            bucket, key = places[-1]
            fields = {"bucket": bucket, "key": key, **fields}
        event = make_event(kind, user, address, path, session=self._session, **fields)
        ordered = [f"{bucket}/{key.rstrip('/')}" for bucket, key in places]
        if admitted:
            self._sink.emit(event, targets, ordered, admitted)
            return
        with contextlib.suppress(SpoolError):  # logged and counted; nothing to answer
            self._sink.emit(event, targets, ordered, admitted)


@dataclass
class WorkerHooks:
    """A worker's event spool writer and pre-check client, each None when not configured."""

    hooks: HooksConfig
    sink: Optional[EventSink] = None
    checker: Optional[PreChecker] = None

    @classmethod
    def start(cls, config: Config) -> WorkerHooks:
        """What ``config`` asks for, made in the worker (after fork)."""
        hooks = config.hooks
        sink = EventSink(hooks, config.cluster.node_id) if config.events_enabled else None
        checker = PreChecker(hooks.pre_hook_timeout, hooks.pre_hook_failure == "open") \
            if config.pre_checks_enabled else None
        return cls(hooks, sink, checker)

    def session(self, session: str, who: Who, where: Where) -> SessionHooks:
        """The hooks of a new session (``session``: its id in events)."""
        return SessionHooks(self.sink, self.checker, self.hooks, session, who, where)

    def close(self) -> None:
        """Write the events still queued (the sessions are closed by then)."""
        if self.sink is not None:
            self.sink.close()
        if self.checker is not None:
            self.checker.close()
