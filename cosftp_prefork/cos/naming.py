"""A new file's name, decided while its bytes arrive (issue 21).

STOR of a new name must be refused where a directory has the name, under a file, and (with
``require_existing_dir``) in a directory that does not exist. Those look-ups used to run
before the ``150``, one after the other, and the PUT after them: three COS round trips in
sequence per small file. Now the FTP layer starts them when STOR arrives
(:class:`NameChecks` holds them: :func:`start_checks` sends their first requests from the
session's thread, which reads the answers as they arrive), they run while the client sends
the bytes, and the upload asks for their verdict only when it would make the object
visible.

For a small file the client's last byte usually comes before the look-ups' answers. The
PUT is then sent at once, beside them, *speculatively*, with ``x-cos-forbid-overwrite``
(:meth:`NameChecks.put`): one round trip after the last byte instead of two. What keeps
every rule:

- **An existing file is never replaced by a speculative PUT.** COS refuses it (409): a file
  has the name, and once the look-ups allow the name (they count no file at the name
  itself), the PUT is sent again without the header, as any overwrite. The look-ups are
  waited for even then: the file may be another session's speculative one, about to be
  undone with whatever replaced it.
- **The undo removes only what the PUT created.** If COS took the speculative PUT, the key
  was free; if the look-ups then refuse the name, that object is deleted before the reply
  (``550``), so a refused STOR leaves nothing behind. COS has no conditional DELETE (DELETE
  Object takes only the common request headers), so the one write the undo could take away
  is another writer's PUT of the same key landing between this PUT and its undo (a round
  trip or so) onto a name that the look-ups found unstorable: a directory's, or one under
  a file. Another session of this server stores there only if its own look-ups, a moment
  later, found the name storable, i.e. if that directory or file went away in between.
- **No speculation where COS would not honour the header.** COS ignores
  ``x-cos-forbid-overwrite`` in a bucket whose versioning was ever enabled: its status is
  read once per worker (:func:`may_speculate`), and a PUT that answers with a version id
  turns speculation off for good and is undone by that version only (which restores
  whatever version it covered).
- **Look-ups blind to the upload's own object**: every look-up ignores the key being
  stored, which the speculative PUT may have made before a look-up ran
  (``listing.name_kind``).
- A speculative object is visible for that round trip like any stored one. Where it is then
  undone, a look-up of another session in that moment may take it for what it seemed: a
  file (its STOR of that name is an overwrite, its MKD refused), or the evidence that its
  directory exists (a STOR into the same missing directory under a file, at the same
  moment, is then accepted). Accounts with ``require_existing_dir`` never speculate: a
  missing directory is their refusal, and a speculative object would make it exist.

A rename right after the session's own STOR of a small file (rclone's ``x.partial``,
WinSCP's ``.filepart``, within one directory) is the same race: a copy cannot go beside the
look-ups of the new name (COS documents no ``x-cos-forbid-overwrite`` for PUT Object - Copy,
and a copy onto a name found refused could not be undone without losing the file it
replaced), but the file's bytes, kept since the STOR, can be PUT with the header
(:func:`rename_checks`, :meth:`NameChecks.put_first`). A file at the new name refuses it
(409: the rename then copies over that file, as before); an object it created is undone
when the new name turns out to be a directory, or the source is not what the session
stored any more (a HEAD beside: other bytes, another MFMT time, or gone), with the same
one write at stake as above.
"""

from __future__ import annotations

import errno
import functools
import logging
import threading
import weakref
from collections.abc import Hashable, Sequence
from typing import Any, Callable, Optional

from ..errors import AlreadyExists, NotStorable, PermissionDenied, StorageError
from ..paths import fits_as_key
from .bucket import Bucket, StartedPage
from .checksum import crc64
from .engine import Engine
from .listing import (
    DIRECTORY,
    FILE,
    directory_exists,
    name_kind,
    start_directory_exists,
    start_name_kind,
)
from .objects import Completed, ObjectInfo
from .readback import holding, unheard

log = logging.getLogger(__name__)

# Rounds of a refused name's read-back (each a HEAD with its own retries, the pause before
# the next up to calls.RETRY_CAP_SECONDS): what a COS failing for a few seconds costs the
# reply, rather than an object left under a directory's name.
UNDO_READ_BACK_ROUNDS = 3

_UNVERSIONED: weakref.WeakKeyDictionary[Bucket, bool] = weakref.WeakKeyDictionary()
_UNVERSIONED_LOCK = threading.Lock()


def may_speculate(bucket: Bucket) -> bool:
    """Whether COS honours ``x-cos-forbid-overwrite`` in ``bucket``: its versioning was
    never enabled. Asked once per bucket and worker (a status never goes back to "never
    enabled"); not known: no (asked again next time, unless the credentials may not ask)."""
    with _UNVERSIONED_LOCK:
        known = _UNVERSIONED.get(bucket)
    if known is not None:
        return known
    try:
        status = bucket.versioning()
    except StorageError as exc:
        log.info("bucket %s: versioning status unknown (%s): new files wait for their "
                 "look-ups before they are stored", bucket.name, exc)
        if isinstance(exc, PermissionDenied):  # the credentials may not ask: not again
            _keeps_versions(bucket, True)
        return False
    _keeps_versions(bucket, status != "")
    return status == ""


def _keeps_versions(bucket: Bucket, versions: bool) -> None:
    with _UNVERSIONED_LOCK:
        _UNVERSIONED[bucket] = not versions


class NameChecks:
    """The look-ups that decide whether a new file may take its name, running while its
    bytes arrive; each (a pool's future or an :class:`_InThread`) ends with None or with
    ``NotStorable`` (or ``StorageError``).

    ``speculate``: whether :meth:`put` may store before the verdict is in."""

    def __init__(self, futures: Sequence[Any], speculate: bool = True) -> None:
        self._futures = list(futures)
        self._speculate = speculate
        self._allowed = False

    def settled(self) -> bool:
        """Whether every look-up has answered (one run by this thread reads what has
        arrived and sends its next request)."""
        answered = [future.done() for future in self._futures]  # each asked: each advances
        return all(answered)

    def cancel(self) -> None:
        """The upload ended without a commit: look-ups not started yet are not needed."""
        for future in self._futures:
            future.cancel()

    def allow(self) -> None:
        """Wait for the look-ups; raise ``NotStorable`` if they refuse the name,
        ``StorageError`` if one failed."""
        if not self._allowed:
            self._verdict()
            self._allowed = True

    def put(self, bucket: Bucket, key: str, body: bytes,
            like: Optional[ObjectInfo] = None) -> Completed:
        """Store ``body`` as ``key`` if the name may take it (see the module doc); raises
        ``NotStorable`` (nothing stored) or ``StorageError``."""
        if self._allowed or self.settled() or not self.may_store_first(bucket):
            self.allow()
            return bucket.put(key, body, like)
        try:
            return self.put_first(bucket, key, body, like)
        except AlreadyExists:  # a file has the name: an overwrite, if the look-ups allow it
            self.allow()
            return bucket.put(key, body, like)

    def may_store_first(self, bucket: Bucket) -> bool:
        """Whether :meth:`put_first` may be used: COS honours ``x-cos-forbid-overwrite``
        in ``bucket``, and a speculative object cannot make a refusal wrong."""
        return self._speculate and may_speculate(bucket)

    def put_first(self, bucket: Bucket, key: str, body: bytes,
                  like: Optional[ObjectInfo] = None) -> Completed:
        """Store ``body`` as ``key`` now, beside the look-ups, unless an object has the name
        (``AlreadyExists``: nothing stored); then wait for them, and undo the object if they
        refuse the name (``NotStorable``) or fail (``StorageError``). Only where
        :meth:`may_store_first`."""
        try:
            created = bucket.put(key, body, like, if_absent=True)
        except StorageError as exc:
            if unheard(exc):  # a try may have stored it: not before the verdict is in
                self._heard_of(bucket, key, body, exc)
            raise
        if created.version_id:
            log.warning("bucket %s keeps versions now: no more stores before the look-ups",
                        bucket.name)
            _keeps_versions(bucket, True)
        try:
            self._verdict()
        except BaseException:
            _undo(bucket, key, created)
            raise
        self._allowed = True
        return created

    def _heard_of(self, bucket: Bucket, key: str, body: bytes, error: StorageError) -> None:
        """A speculative PUT of ``body`` failed with ``error`` after a try that went
        unanswered, and may have stored it: wait for the verdict, and if the look-ups
        refuse the name (or fail), undo the object if it holds ``body`` (the header kept any
        other file from being replaced, so those bytes are this PUT's), then raise what
        they did. The undo needs that read-back (COS has no conditional DELETE, and the
        409 a retry found may have been a file's that had the name before): a HEAD that
        fails is asked again, ``UNDO_READ_BACK_ROUNDS`` rounds in all; failing still, it
        raises ``OutcomeUnknown`` and the key is logged for the operator. If they allow
        the name, return (the caller raises ``error``: the name is then read back, or
        stored again as an overwrite)."""
        try:
            self._verdict()
        except BaseException:
            try:
                found = holding(bucket, key, len(body), crc64(body), error,
                                rounds=UNDO_READ_BACK_ROUNDS)
            except StorageError as exc:
                log.error("%s: maybe stored before its name was refused, and the read-back "
                          "failed (%s): delete it by hand if it holds the %d bytes sent",
                          key, exc, len(body))
                raise
            if found is not None:
                _undo(bucket, key, Completed(found.etag, found.crc64))
            raise
        self._allowed = True

    def _verdict(self) -> None:
        """Wait for every look-up; a refusal wins over a failure."""
        errors = [future.exception() for future in self._futures if not future.cancelled()]
        refusals = [error for error in errors if isinstance(error, NotStorable)]
        failures = [error for error in errors if error is not None]
        if refusals or failures:
            raise (refusals or failures)[0]


def _undo(bucket: Bucket, key: str, created: Completed) -> None:
    """Delete the object a speculative PUT created, as its name was refused (or could not be
    checked); only its version where the bucket keeps versions. Raises ``StorageError`` if
    it stays (the operator is told which key)."""
    try:
        bucket.delete(key, created.version_id)
    except StorageError as exc:
        log.error("%s: stored before its name was refused, and the delete failed (%s): "
                  "delete it by hand if its ETag is still %s", key, exc, created.etag)
        raise
    log.info("%s: stored before its name was refused; deleted again", key)


def start_checks(engine: Engine, owner: Hashable, bucket: Bucket, key: str,
                 require_existing_dir: bool) -> NameChecks:
    """Start the look-ups of a new file ``key``: is ``key`` a directory; is its parent one,
    or, walking up past missing ones, is a file in the way (or, with
    ``require_existing_dir``, is the parent missing). One LIST each in the common cases,
    both at once.

    Each look-up's first LIST is sent now by the calling thread (the session's), and its
    answer read by that thread when the upload asks (:meth:`NameChecks.settled` at each
    write, the verdict at the commit): handing them to the engine's look-up pool and back
    cost a tenth of a new small file's worker CPU (docs/performance.md, issue 21). At most
    ``engine.lookup_slots`` are in flight that way in a worker (each holds a COS connection
    until read); beyond, they run on the look-up pool, as ``owner``."""
    lookups = (functools.partial(_NotADirectory, bucket, key),
               functools.partial(_ParentsAllow, bucket, key, require_existing_dir))
    futures: list[Any] = []
    for lookup in lookups:
        if engine.lookup_slots.acquire(blocking=False):
            futures.append(lookup(engine.lookup_slots.release))
        else:
            futures.append(engine.lookups.submit(owner, _run, lookup))
    return NameChecks(futures, speculate=not require_existing_dir)


def parents_allow(bucket: Bucket, key: str, require_existing_dir: bool) -> None:
    """Return if the parents of ``key`` let it be a new name, as :func:`start_checks` asks
    (no file has the name of a directory on the way up to the first one that exists; with
    ``require_existing_dir``, its parent exists); raise ``NotStorable`` if not, or
    ``StorageError``. Run to its verdict by the calling thread: a rename's look-up of its
    new name's parents, on the look-up pool beside its other look-ups."""
    _run(functools.partial(_ParentsAllow, bucket, key, require_existing_dir))


def _run(lookup: Callable[[Callable[[], Any]], _InThread]) -> None:
    """A look-up run to its verdict by a thread of the pool."""
    error = lookup(lambda: None).exception()
    if error is not None:
        raise error


def rename_checks(engine: Engine, owner: Hashable, bucket: Bucket, source: ObjectInfo,
                  target: str) -> NameChecks:
    """Start the look-ups of a rename of ``source`` onto ``target`` in the same directory
    (whose parent the source proves), where ``source`` is what this session's own STOR
    (and MFMT) stored: is ``target`` a directory (blind to ``target`` itself), and is the
    source still that object (a HEAD: ``StorageError`` ``ObjectChanged``, or ``NotFound``,
    when another writer replaced, re-timed or deleted it since). Both at once; a PUT of the
    source's bytes under the new name goes beside them (:meth:`NameChecks.put_first`),
    where a copy would have to wait for them: see ``ftp.renames.Renames._rename_by_put``."""
    return NameChecks([engine.lookups.submit(owner, _run,
                                             functools.partial(_NotADirectory, bucket, target)),
                       engine.lookups.submit(owner, _unchanged, bucket, source)])


def _unchanged(bucket: Bucket, source: ObjectInfo) -> None:
    """Raise unless ``source.key`` still holds the bytes and MFMT time ``source`` says."""
    now = bucket.head(source.key)
    if (now.etag, now.client_mtime) != (source.etag, source.client_mtime):
        raise StorageError(f"{source.key} was written since this session stored it",
                           code="ObjectChanged")


class _InThread:
    """A look-up whose LISTs are sent and read by the thread that asks about it, one after
    the other: what :class:`NameChecks` asks of a future (``done``, ``exception``,
    ``cancel``, ``cancelled``). ``done()`` reads an answer that has arrived and sends the
    next LIST at once, so the look-up advances while the bytes arrive. ``release`` is
    called once no request of it is in flight any more."""

    def __init__(self, first: Optional[StartedPage], release: Callable[[], Any]) -> None:
        self._started = first  # the LIST in flight; None once the verdict is in
        self._release = release
        self._failure: Optional[BaseException] = None
        self._cancelled = False
        self._lock = threading.Lock()  # the session's thread, or its end from another
        if first is None:
            release()

    def done(self) -> bool:
        with self._lock:
            while self._started is not None and self._started.arrived():
                self._advance()
            return self._started is None

    def exception(self) -> Optional[BaseException]:
        """Wait for the verdict: None (the name may be stored) or the refusal or failure."""
        with self._lock:
            while self._started is not None:
                self._advance()
            return self._failure

    def cancel(self) -> bool:
        with self._lock:
            if self._started is not None:
                self._started.drop()
                self._started = None
                self._cancelled = True
                self._release()
            return self._cancelled

    def cancelled(self) -> bool:
        return self._cancelled

    def _advance(self) -> None:
        started, self._started = self._started, None
        try:
            self._started = self._next(started)
        except Exception as exc:  # the verdict, for whoever asks (as a pool's future keeps it)
            self._failure = exc
        finally:
            if self._started is None:
                self._release()

    def _next(self, started: StartedPage) -> Optional[StartedPage]:
        """Read ``started``; return the next LIST to send, None if the name may be stored;
        raise ``NotStorable`` if not."""
        raise NotImplementedError


class _NotADirectory(_InThread):
    """``NotStorable`` if keys live under ``key/`` (blind to ``key`` itself)."""

    def __init__(self, bucket: Bucket, key: str, release: Callable[[], Any]) -> None:
        self._bucket, self._prefix = bucket, key + "/"
        super().__init__(start_directory_exists(bucket, self._prefix)
                         if fits_as_key(self._prefix) else None, release)

    def _next(self, started: StartedPage) -> Optional[StartedPage]:
        if directory_exists(self._bucket, self._prefix, started=started):
            raise NotStorable(errno.EISDIR, "Is a directory")
        return None


class _ParentsAllow(_InThread):
    """``NotStorable`` if a file has the name of a directory on the way up to the first one
    that exists (what ``key``'s own object shows counts for nothing), or, with
    ``require_existing_dir``, if the parent does not exist."""

    def __init__(self, bucket: Bucket, key: str, require_existing_dir: bool,
                 release: Callable[[], Any]) -> None:
        self._bucket, self._key = bucket, key
        self._require_existing_dir = require_existing_dir
        self._parent = key.rpartition("/")[0]
        super().__init__(start_name_kind(bucket, self._parent) if self._parent else None,
                         release)

    def _next(self, started: StartedPage) -> Optional[StartedPage]:
        kind = name_kind(self._bucket, self._parent, ignore=self._key, started=started)
        if kind == FILE:
            raise NotStorable(errno.ENOTDIR, "Not a directory: a file has the name of a "
                                             "directory in that path")
        if kind == DIRECTORY:
            return None
        if self._require_existing_dir:
            raise NotStorable(errno.ENOENT, "No such directory")
        self._parent = self._parent.rpartition("/")[0]
        return start_name_kind(self._bucket, self._parent) if self._parent else None
