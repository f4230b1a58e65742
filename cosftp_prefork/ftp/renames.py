"""The renames of ``ftp.fs.CosFS`` (RNFR/RNTO): a file by a server-side copy pinned to what
the source is, then a delete (or, right after the session's own small STOR, one PUT of the
bytes it kept); a directory object by object, announced, its quota reserved first; and the
halves of a rename between virtual folders that ``ftp.mounts`` drives (``rename_source``,
``copy_in``, ``remove_renamed``). A mixin: it works on the state of the ``CosFS`` it is
part of."""

from __future__ import annotations

import errno
import logging
from concurrent.futures import Future
from typing import Callable, NamedTuple, Optional

from ..cos.bucket import Bucket, ForeignObject, ObjectInfo
from ..cos.copies import Moved, copy_object, delete_keys, rename_directory
from ..cos.engine import OwnerExecutor
from ..cos.intents import announced
from ..cos.listing import (
    DIRECTORY,
    FILE,
    lacks_marker,
    name_kind,
)
from ..cos.mtimes import (
    carry_markers,
    copy_beside_marker,
    markers_of,
)
from ..cos.naming import may_speculate, parents_allow, rename_checks
from ..errors import (
    AlreadyExists,
    InvalidPath,
    NotFound,
    NotStorable,
    StorageError,
)
from ..paths import (
    dir_prefix,
    object_key,
    parent_dir,
)
from .tree import OwnUpload, Refusal, Unstorable, transient_escapes

log = logging.getLogger(__name__)


class _LookUps(NamedTuple):
    """A rename's look-ups, sent at once on the look-up pool beside the HEAD of its source:
    what the new name is now (``listing.name_kind``), the source's MFMT markers, and, for a
    new name in another directory (None otherwise), whether the directory the source leaves
    lacks its marker (:meth:`Renames._start_unmarked`) and whether the new name's parents
    allow it (:meth:`Renames._start_parents`)."""

    kind: Future
    markers: Future
    unmarked: Optional[Future]
    parents: Optional[Future]


class Renames:
    """RNFR/RNTO for ``CosFS`` (see the module's docstring)."""

    @transient_escapes
    def rename(self, src: str, dst: str) -> None:
        """Server-side copy then delete of one object (see :meth:`_rename_file`), or of
        every object of a directory.

        Overwriting an existing file needs ``delete_enable``, and so does renaming a
        directory (its old keys are deleted). Raises ``Refusal`` or ``OSError``.
        """
        directory = self._rename(src, dst)
        self._ctx.hooks.changed("rename", dst, source=src, directory=directory)

    def _rename(self, src: str, dst: str) -> bool:
        """Rename ``src`` to ``dst``; return True if it was a directory."""
        own = self._own_upload
        if own is not None and own.path == src and self._rename_file(src, dst, own.info, own):
            return False
        side = self._ctx.engine.lookups.for_owner(self)
        src_key, dst_key = object_key(src), object_key(dst)
        moving = parent_dir(dst) != parent_dir(src)
        looked_up = _LookUps(side.submit(name_kind, self._bucket, dst_key, src_key),
                             side.submit(self._reserved, [], markers_of, self._bucket, src_key),
                             self._start_unmarked(side, src, dst),
                             self._start_parents(side, dst) if moving else None)
        try:  # a file, and what its copy keeps (storage class, MFMT time)
            source = self._bucket.head(src_key)
        except NotFound:
            if not self._require(src).is_dir:
                raise Refusal(errno.ENOENT, "No such file or directory") from None
            if src_key != dst_key:
                self._rename_directory(src, dst, looked_up.unmarked)
            return True
        self._rename_file(src, dst, source, looked_up=looked_up)
        return False

    def _rename_file(self, src: str, dst: str, source: ObjectInfo,
                     own: Optional[OwnUpload] = None,
                     looked_up: Optional[_LookUps] = None) -> bool:
        """Rename the file ``source`` (as a HEAD, or this session's own STOR, found it): the
        new name is looked up (blind to the source's key: ``x.partial`` lists right after
        ``x``) while the source's MFMT markers are listed, then the copy is made, pinned to
        the source's ETag, with the new name's markers written beside it; the reply goes
        out, and the source and its markers are deleted after it (:mod:`.background`). For
        a file moving to another directory, two more look-ups go beside those: do the new
        name's parents allow it, and does the directory the file leaves lack its marker
        (written then before the delete).

        With ``own`` (``source`` is what this session's last STOR stored: rclone's and
        WinSCP's temporary uploads), nothing asks about the source first; if anyone replaced
        or deleted it since, the pinned copy fails and False sends the rename the general
        way. One stored in one PUT, renamed within its directory, goes in one round trip
        (:meth:`_rename_by_put`) unless a file has the new name. Otherwise a source replaced
        between the HEAD and the copy fails it (451)."""
        dst_key = object_key(dst)
        if dst_key == source.key:
            return True  # as rename(2) does; a copy onto itself, then a delete, would lose it
        side = self._ctx.engine.lookups.for_owner(self)
        moving = parent_dir(dst) != parent_dir(src)
        if looked_up is None:  # this session's own upload: the new name's kind comes below
            listed = side.submit(self._reserved, [], markers_of, self._bucket, source.key)
            unmarked = self._start_unmarked(side, src, dst)
            parents = self._start_parents(side, dst) if moving else None
        else:
            listed, unmarked, parents = looked_up.markers, looked_up.unmarked, looked_up.parents
        if own is not None and not moving and self._may_put_renamed(own):
            try:
                return self._rename_by_put(src, dst, own, listed)
            except AlreadyExists:  # a file has the new name: a copy replaces it, as below
                kind: Optional[str] = FILE
        else:
            kind = (looked_up.kind if looked_up else
                    side.submit(name_kind, self._bucket, dst_key, source.key)).result()
        self._check_rename_target(dst, kind, parents)
        replaced = self._replaced_size(dst_key, kind)
        markers = listed.result()
        return self._renamed(src, dst, source, lambda: self._copy_pinned(
            source, dst_key, [stamp for stamp, etag, _ in markers if etag == source.etag]),
            lambda: markers, unmarked, own is not None, replaced)

    def _renamed(self, src: str, dst: str, source: ObjectInfo, write: Callable[[], object],
                 markers: Callable[[], list[tuple[float, str, str]]],
                 unmarked: Optional[Future], own: bool, replaced: Optional[int] = None) -> bool:
        """Make the new name's object with ``write()``; then forget both names, and delete
        the source and its ``markers()`` after the reply (first writing the marker of the
        directory it leaves, if ``unmarked``, :meth:`_start_unmarked`'s look-up, finds none).
        With ``own``, a source replaced or deleted since this session's STOR makes it False
        (the rename goes the general way); other failures raise. A quota over a home the
        file enters or leaves counts it once the write is done (``QuotaExceeded`` first if
        one has no room), and the file of ``replaced`` bytes it wrote over stops counting."""
        counted = None if self.quota is None else self.quota.moving(source.key,
                                                                     object_key(dst),
                                                                     source.size)
        try:
            write()
        except BaseException as exc:
            if counted is not None:
                counted(False)
            changed = isinstance(exc, NotFound) or (
                isinstance(exc, StorageError) and not isinstance(exc, AlreadyExists) and
                exc.code == "ObjectChanged")
            if not own or not changed:
                raise
            log.info("path=%s: changed since this session stored it (%s); renaming what is "
                     "there now", src, exc.code)
            self._forget(src)
            return False
        if counted is not None:
            counted(True)
        self._replaced(dst, replaced)
        self._forget(src, dst)
        self._after_reply.start(src, self._remove_renamed, src,
                                [source.key, *(key for _, _, key in markers())], unmarked)
        return True

    def _replaced_size(self, key: str, kind: Optional[str]) -> Optional[int]:
        """The size of the file ``key`` a rename is about to write over (``kind``: what the
        name is now), if a quota counts it; else None. A HEAD, only then."""
        if kind != FILE or self.quota is None or not self.quota.counts(key):
            return None
        try:
            return self._bucket.head(key).size
        except NotFound:
            return None  # gone meanwhile: nothing to stop counting

    def _replaced(self, path: str, size: Optional[int]) -> None:
        """A rename wrote over the file ``path`` of ``size`` bytes (None: over nothing a
        quota counts): the quotas stop counting it."""
        if size is not None and self.quota is not None:
            self.quota.removed(object_key(path), size)

    def _copy_pinned(self, source: ObjectInfo, dst_key: str, stamps: list[float]) -> None:
        """A rename's copy of ``source`` to ``dst_key``, pinned to its ETag, with the markers
        of the MFMT times ``stamps`` beside it."""
        copy_beside_marker(self._bucket, source, dst_key, stamps,
                           lambda: copy_object(self._bucket, source, dst_key,
                                               self._ctx.transfer,
                                               self._ctx.copier(), pinned=True))

    def _may_put_renamed(self, own: OwnUpload) -> bool:
        """Whether :meth:`_rename_by_put` may store before its look-ups answered: it has the
        bytes, COS honours ``x-cos-forbid-overwrite`` in this bucket, and the account does
        not need existing directories (see ``cos.naming``)."""
        return own.kept is not None and not self._ctx.account.require_existing_dir and \
            may_speculate(self._bucket)

    def _rename_by_put(self, src: str, dst: str, own: OwnUpload, listed: Future) -> bool:
        """Rename this session's own small upload onto a new name in its directory in one
        round trip (rclone's ``x.partial``, WinSCP's ``.filepart``): its bytes, kept since
        the STOR (``own.kept``), are stored under the new name with
        ``x-cos-forbid-overwrite`` (and its MFMT marker, if any) beside the look-ups
        (``cos.naming.rename_checks``: is the new name a directory; is the source still
        what the session stored), where a copy would have to wait for them. The same bytes
        (Content-MD5, and the CRC64 COS reports is the STOR's) and the same MFMT time make
        the same object.

        ``AlreadyExists`` (nothing stored) when a file has the new name. The new object is
        undone when the look-ups refuse the name (550) or fail (451), and when the source is
        not what the session stored any more: False then sends the rename the general way
        (what COS undoes is only what that PUT created, as for a STOR's: ``cos.naming``).
        Attributes another tool gave the source since the STOR without writing other bytes
        or another MFMT time are not carried, as a copy would."""
        source, body = own.info, own.kept.body if own.kept is not None else b""
        dst_key = object_key(dst)
        checks = rename_checks(self._ctx.engine, self, self._bucket, source, dst_key)

        def store() -> str:
            created = checks.put_first(self._bucket, dst_key, body, source)
            if None not in (created.crc64, source.crc64) and created.crc64 != source.crc64:
                self._bucket.delete(dst_key)
                raise StorageError(f"integrity check failed for {dst}: CRC64 differs from "
                                   f"{src}'s", code="CRC64Mismatch")
            return created.etag
        stamps = [source.client_mtime] if source.client_mtime is not None else []
        try:
            return self._renamed(src, dst, source, lambda: copy_beside_marker(
                self._bucket, source, dst_key, stamps, store), listed.result, None, True)
        except NotStorable:
            raise Refusal(errno.EISDIR, "Target is a directory") from None

    def _check_rename_target(self, dst: str, kind: Optional[str],
                             parents: Optional[Future]) -> None:
        """Refuse a file rename onto a directory, or onto a file without ``delete_enable``;
        and, if nothing has the new name, where ``parents`` (:meth:`_start_parents`'s
        look-up, None for a new name in the source's directory, which the source proves)
        refuses it: under a file, or (``require_existing_dir``) in a missing directory.
        ``parents`` is waited for in every case: no request of the command is in flight
        after its reply."""
        failure = None if parents is None else parents.exception()
        if kind == DIRECTORY:
            raise Refusal(errno.EISDIR, "Target is a directory")
        if kind == FILE and not self._ctx.account.delete_enable:
            raise Refusal(errno.EACCES, "Overwriting by rename needs delete permission")
        if kind is None and isinstance(failure, NotStorable):
            raise Refusal(failure.errno, failure.strerror) from None
        if kind is None and failure is not None:
            raise failure

    def _start_parents(self, side: OwnerExecutor, dst: str) -> Future:
        """Whether the parents of ``dst``, a new name in another directory, allow it
        (``cos.naming.parents_allow``: as a new file's, which STOR asks beside its other
        look-ups), asked on the look-up pool ``side`` now, beside the rename's other
        look-ups (it went after them, a round trip more)."""
        return side.submit(parents_allow, self._bucket, object_key(dst),
                           self._ctx.account.require_existing_dir)

    def _start_unmarked(self, side: OwnerExecutor, src: str, dst: str) -> Optional[Future]:
        """Whether the directory that the file or directory ``src``, moving to ``dst``,
        leaves lacks its marker (``fs.CosFS._keep_directory``), asked on the look-up pool
        ``side`` now; None when it stays in its directory (which it keeps) or leaves the
        root."""
        if parent_dir(dst) == parent_dir(src) or parent_dir(src) == "/":
            return None
        return side.submit(lacks_marker, self._bucket, dir_prefix(parent_dir(src)))

    def _remove_renamed(self, src: str, keys: list[str], unmarked: Optional[Future]) -> None:
        """After a rename's reply: write the marker of the directory the source leaves if
        ``unmarked`` (the look-up of :meth:`_start_unmarked`, None if it stays in its
        directory) finds none, then delete the source and its MFMT markers (and keep the
        directory if it is empty then and its marker could not be written first:
        ``fs.CosFS._keep_if_emptied``)."""
        kept = unmarked is None or self._keep_left_directory(src, unmarked)
        if len(keys) == 1:
            self._bucket.delete(keys[0])
        else:
            delete_keys(self._bucket, keys)
        if not kept:
            self._keep_if_emptied(parent_dir(src))

    def _keep_left_directory(self, src: str, unmarked: Future) -> bool:
        """Write the marker of the directory ``src`` leaves if ``unmarked`` says it has
        none; return True if it is kept so, as ``fs.CosFS._keep_directory`` does (a failed
        look-up is only logged)."""
        try:
            lacking = unmarked.result()
        except StorageError as exc:
            log.warning("path=%s: could not tell whether it has its marker (%s)",
                        parent_dir(src), exc)
            return False
        return not lacking or self._write_marker(parent_dir(src))

    def _rename_directory(self, src: str, dst: str, unmarked: Optional[Future]) -> None:
        """Rename the directory ``src`` object by object (``cos.copies.rename_directory``);
        ``unmarked``, :meth:`_start_unmarked`'s look-up (None: it stays in its directory),
        says whether the directory it leaves needs its marker, written first. Raises
        ``Refusal``."""
        if not self._ctx.account.delete_enable:
            raise Refusal(errno.EACCES, "Renaming a directory deletes its old name: needs "
                                       "delete permission")
        if dst.startswith(src.rstrip("/") + "/"):
            raise Refusal(errno.EINVAL, "Cannot move a directory into itself")
        source, target = dir_prefix(src), dir_prefix(dst)
        with announced(self._bucket, "rename", source, target):  # or Conflict
            if self.lookup(dst) is not None:
                raise Refusal(errno.EEXIST, "Target exists")
            self._check_parents(dst)
            kept = unmarked is None or self._keep_left_directory(src, unmarked)
            try:
                moved = rename_directory(
                    self._bucket, source, target, self._ctx.transfer, self._ctx.copier(),
                    None if self.quota is None else self.quota.moving_directory)
            except InvalidPath as exc:
                raise Unstorable(exc.strerror) from exc
            if not kept:
                self._keep_if_emptied(parent_dir(src))
        self._scope.clear()
        self._heads.clear()
        self._own_upload = None
        if moved:
            self._carry_mtimes(src, moved, source)

    def _carry_mtimes(self, path: str, moved: list[Moved], directory: str = "") -> None:
        """Move the MFMT times' listing markers along with a rename. The rename is done by
        then: a failure is only logged (LIST then shows COS's time, MDTM still the MFMT
        one)."""
        try:
            carry_markers(self._bucket, moved, directory)
        except StorageError as exc:
            log.warning("path=%s: renamed, but its MFMT times stay behind: %s", path, exc)

    @transient_escapes
    def rename_source(self, path: str) -> tuple[Bucket, ObjectInfo, list[tuple[float, str, str]]]:
        """The file ``path`` that a rename takes into another folder: this filesystem's
        bucket, what a HEAD says of it, and its MFMT markers. Raises ``Refusal`` (ENOENT,
        EISDIR)."""
        self._require_file(path)
        info = self._head(path)
        return self._bucket, info, self._reserved([], markers_of, self._bucket, info.key)

    @transient_escapes
    def copy_in(self, dst: str, source: ForeignObject, stamps: list[float]) -> tuple[bool, bool]:
        """Make the file ``dst`` a copy of ``source`` (an object of another folder's
        bucket), pinned to its ETag, with the markers of its MFMT times ``stamps`` beside
        it; the target is checked as a rename's, and the quotas it enters as a rename's
        (``QuotaExceeded``). Returns whether it copied (not if ``dst`` is ``source`` itself,
        two folders over the same keys: as rename(2) onto itself) and whether this home's
        quotas counted the source leaving its homes too (the source's side then does not).
        Raises ``Refusal`` or ``StorageError`` (``PermissionDenied`` when these credentials
        may not read the source)."""
        dst_key = object_key(dst)
        bucket, key = self._bucket.located(dst_key)
        if source.home is None or (bucket.name, key) == (source.home.name, source.key):
            return False, False
        parents = self._start_parents(self._ctx.engine.lookups.for_owner(self), dst)
        kind = name_kind(self._bucket, dst_key)  # beside the look-up of its parents
        self._check_rename_target(dst, kind, parents)
        replaced = self._replaced_size(dst_key, kind)
        counted = None if self.quota is None else self.quota.arriving(
            source.home.name, source.key, dst_key, source.size)
        try:
            self._copy_pinned(source, dst_key, stamps)
        except BaseException:
            if counted is not None:
                counted(False)
            raise
        if counted is not None:
            counted(True)
        self._replaced(dst, replaced)
        self._forget(dst)
        return True, counted is not None

    @transient_escapes
    def remove_renamed(self, path: str, source: ObjectInfo, keys: list[str],
                       counted: bool) -> None:
        """Delete the file ``path`` (``source``) renamed into another folder and its
        markers (``keys``), keeping the directory it left; the quotas it leaves are told,
        unless the target's ``counted`` it (see :meth:`copy_in`)."""
        self._forget(path)
        kept = self._keep_directory(path)
        self._remove_renamed(path, [source.key, *keys], None)
        if not kept:
            self._keep_if_emptied(parent_dir(path))
        if self.quota is not None and not counted:
            self.quota.removed(source.key, source.size)
