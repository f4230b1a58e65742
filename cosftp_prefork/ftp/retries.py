"""A client's retry of a failed upload that it cut short: the first bytes of the upload that
failed, sent again and closed.

lftp (4.9.2; the code is unchanged in its master) retries a STOR refused with a 4xx after
it had sent the whole file (COS failing at the commit, an integrity check) by asking SIZE,
then sending the file from where SIZE says, but its copy of the file still carries the end
of data it had reached: it closes the data connection after its first buffers (192 KiB here)
and then waits for ever (docs/clients.md has the code path and the report for lftp). In
stream mode that close is the end of the file; a client that announced the size (``ALLO``,
lftp's ``ftp:use-allo``, off by default) is told apart by that size (``datachannel``),
others here.

The retry is recognised by its bytes, never by its size or name alone: the next STOR of the
same session to the same name, from byte 0, whose data ends cleanly after ``n`` bytes, with
``n`` less than the failed upload's size and its ``n`` bytes those the failed upload began
with (the CRC64s of both uploads' first ``n`` bytes, kept at every 4 KiB of their first
8 MiB; lftp reads its file in 64 KiB steps). A new file of that name is stored as ever,
smaller or not (a camera's latest.jpg after a failure: another picture has other bytes). It
is refused as a cut transfer (426; the parts that reached COS are parked), once: the record
is taken by the next upload of the session, whatever it is, so a client that meant to store
that prefix gets it stored when it tries again. lftp, refused, goes the way of any broken
transfer: it reconnects and sends the whole file.

A refusal while the data still arrives (the name's look-ups or a part failing in COS, a
quota crossed) takes lftp down the same path when it had written its last byte by then: it
writes the whole file into its socket before it reads the reply, and the server drains
what follows the refusal (``ftp.drain``). Such a STOR is remembered too, and the drain reads
on into its first bytes, so that they are all the client sent.

lftp takes the same path when its session is lost after the last byte and before the final
reply (its worker killed): it reconnects, and the retry comes on a new session, maybe of
another worker. The master keeps what a dead worker's uploads from byte 0 had received
(``server.scoreboard.uploads``: the bytes, the CRC64s at every 64 KiB of the first 1 MiB),
for minutes; a STOR from byte 0 of the same account and path ending cleanly after ``n``
bytes, fewer than such an upload received, that are its first ``n`` bytes, is refused the
same way, once (:func:`lost_retry`). Any other upload is stored as ever.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

from ..cos.checksum import PrefixCrcs
from ..cos.uploads import UploadSession


@dataclass(frozen=True)
class FailedUpload:
    """A STOR from byte 0 that failed after its data all arrived, or was refused while it
    arrived (``prefix`` then grows with what the refusal's drain reads)."""

    path: str
    prefix: PrefixCrcs

    def cut_retry(self, upload: UploadSession) -> Optional[str]:
        """Why ``upload``, whose data just ended, is this upload's retry cut short, or None."""
        prefix = upload.prefix
        if prefix is None or upload.name != self.path:
            return None
        length, whole = prefix.length, self.prefix.length
        if not 0 < length < whole:
            return None
        sent = prefix.at(length)
        if sent is None or sent != self.prefix.at(length):
            return None
        return (f"Data connection closed after {length} bytes, the first {length} of the "
                f"{whole} bytes of the upload of this name that failed before")


def failed_upload(command: str, upload: UploadSession) -> Optional[FailedUpload]:
    """What to remember of ``upload``, which failed: a STOR from byte 0, or nothing."""
    if command != "STOR" or upload.prefix is None:
        return None
    return FailedUpload(upload.name, upload.prefix)


class UploadWatch(Protocol):
    """A session's STOR from byte 0 as the master sees it while it has no final reply, and
    the uploads the master kept of dead workers (the worker's ``server.inflight``)."""

    def started(self, user: str, path: str) -> None:
        """``user``'s upload to ``path`` receives its first bytes."""

    def received(self, prefix: PrefixCrcs) -> None:
        """The upload received the bytes of ``prefix`` so far."""

    def ended(self) -> None:
        """The upload's final reply went out."""

    def lost_upload(self, user: str, path: str, prefix: PrefixCrcs) -> Optional[int]:
        """The bytes a dead worker's upload of ``path`` by ``user`` had received, if more
        than ``prefix`` holds and they began with them (taken: once); else None."""


def lost_retry(watch: UploadWatch, user: str, upload: UploadSession) -> Optional[str]:
    """Why ``upload`` (``user``'s STOR), whose data just ended, is the retry cut short of an
    upload a dead worker had received more of, or None."""
    prefix = upload.prefix
    if prefix is None:
        return None
    whole = watch.lost_upload(user, upload.name, prefix)
    if whole is None:
        return None
    length = prefix.length
    return (f"Data connection closed after {length} bytes, the first {length} of the "
            f"{whole} bytes of the upload of this name that a server failure cut off")
