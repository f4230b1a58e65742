"""The data channel of COS-backed sessions: uploads streamed into an UploadSession and
committed only when the transfer finished, downloads pumped from COS, pacing, the reply
that ends a transfer."""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import time
from typing import Optional

from pyftpdlib.handlers import DTPHandler

from ..cos.checksum import PrefixCrcs
from ..cos.downloads import CHUNK_SIZE
from ..cos.uploads import UploadInterrupted, UploadSession, UploadState
from ..errors import (
    NotStorable,
    OutcomeUnknown,
    QuotaExceeded,
    StorageError,
)
from ..events.spool import SpoolError
from . import compat
from .pacing import TCP_CLOSE, DownloadPacing, UploadPacing, tcp_state
from .progress import TransferMeter
from .pump import Pump
from .retries import FailedUpload, UploadWatch, failed_upload, lost_retry

log = logging.getLogger(__name__)


NOT_RECORDED = "451 Done, but the server could not record it (event spool); try again."
# A download this small is read in the session's thread (its bytes came with the GET's
# answer) and sent by the IO loop, as the socket's buffer takes it at once: a pump or
# read-ahead thread per file was a quarter of the worker's CPU in lftp mirror of 4 KiB
# files (docs/performance.md).
SMALL_DOWNLOAD = 64 * 1024


def reply_for(exc: OSError, command: str = "STOR") -> str:
    """The reply that ends ``command`` when its transfer failed with ``exc``."""
    if isinstance(exc, NotStorable):
        return f"550 {exc.strerror}; nothing stored."
    if exc.errno == errno.EFBIG:
        return f"552 {exc.strerror}; transfer aborted, nothing stored."
    if command in ("LIST", "MLSD", "NLST"):
        return f"451 {exc}; listing aborted."
    if command == "RETR":  # a download stores nothing: the file stays as it was
        return f"451 {exc}; transfer aborted."
    if isinstance(exc, OutcomeUnknown):  # its answer lost: COS may hold the file
        return f"451 {exc}; the file may have been stored: check it before sending it again."
    return f"451 {exc}; transfer aborted, nothing stored."


def client_gone(error: BaseException) -> bool:
    """The data connection broke, or the client took nothing for a whole timeout."""
    return isinstance(error, TimeoutError) or \
        (isinstance(error, OSError) and error.errno in compat.DISCONNECTED)


def expected_bytes(file, upload: bool) -> Optional[int]:
    """The bytes a transfer of ``file`` should move, if known: an upload's size announced
    by ``ALLO``; what a download has left from where it starts (the ``REST`` offset)."""
    if upload:
        return getattr(file, "announced", None)
    size = getattr(file, "size", None)
    return None if size is None else max(0, size - file.tell())


class CosDTPHandler(UploadPacing, DownloadPacing, DTPHandler):
    """Data channel that commits an upload only when the client finished sending.

    pyftpdlib closes the file object on every way out of a transfer; our upload file aborts
    on ``close()`` unless ``commit()`` ran first, so the only place that commits is here,
    and 226 is sent only after COS confirmed the object.
    """

    _counted = False
    _pump: Optional[Pump] = None  # sending a plain binary download, off the IO loop
    _meter: Optional[TransferMeter] = None  # the figures of the transfer, from its start
    _retry_of: Optional[FailedUpload] = None  # an upload's: the STOR that failed before it
    # A STOR from byte 0's: what it received, shown to the master until its final reply.
    _watch: Optional[UploadWatch] = None
    # 1 MiB instead of pyftpdlib's 64 KiB: measured in docs/performance.md, STOR went from
    # 0.67x to ~1x the direct SDK and RETR from 0.58x to 0.8x.
    ac_in_buffer_size = CHUNK_SIZE
    ac_out_buffer_size = CHUNK_SIZE

    def enable_receiving(self, type: str, cmd: str) -> None:
        if cmd == "STOR":  # a retry of it cut short is refused (see ftp.retries)
            self._retry_of = self.cmd_channel.failed_upload
            self._watch_upload()
        self.cmd_channel.failed_upload = None  # any upload ends the wait for a retry
        self._pace(upload=True)
        super().enable_receiving(type, cmd)
        self._start_meter(upload=True)
        self._count_transfer(self.file_obj, expected_bytes(self.file_obj, upload=True))

    def _watch_upload(self) -> None:
        """Show this STOR, if from byte 0, to the master as each chunk arrives: should the
        worker die before its final reply, a retry of it cut short is told apart on a new
        session (see ``ftp.retries``)."""
        upload = self.file_obj
        if getattr(upload, "prefix", None) is None:
            return
        watch = self.cmd_channel.upload_watch()
        if watch is not None:
            watch.started(self.cmd_channel.username, upload.name)
            self._watch = watch

    def handle_read_event(self) -> None:
        """Read the upload's next bytes, unless the session was kicked: it then closes,
        this transfer with it, before taking one more byte."""
        if self.cmd_channel.obey_kick():
            return
        super().handle_read_event()
        self._show_received()

    def _show_received(self) -> None:
        if self._watch is not None:
            self._watch.received(self.file_obj.prefix)

    def _pace(self, upload: bool) -> None:
        """Take the session's rate limit for this file transfer (see ``ftp.throttle``)."""
        rates = self.cmd_channel.rates
        if rates is not None and self._throttle is None:
            self._throttle = rates.throttle(upload)

    def push_with_producer(self, producer) -> None:
        # Only RETR sends a file; listings send other producers. (``cmd`` cannot tell: when
        # the data connection opened first, as clients do, pyftpdlib sets it after this.)
        download = isinstance(producer, compat.FileProducer)
        self._start_meter(upload=False)
        if download:
            producer.buffer_size = CHUNK_SIZE
            self._pace(upload=False)
            # From where the file stands now (its REST offset), before the pump reads ahead.
            expected = expected_bytes(producer.file, upload=False)
        large = download and (expected is None or expected > SMALL_DOWNLOAD)
        if large and self._pumpable(producer):
            self._start_pump(producer)
        else:
            if download and not large and hasattr(producer.file, "read_ahead"):
                producer.file.read_ahead = False  # it came with the GET's answer: no thread
            super().push_with_producer(producer)
        if download:
            self._count_transfer(producer.file, expected)

    def _pumpable(self, producer) -> bool:
        """A binary download of a COS object over a clear (not TLS) data connection: ASCII
        needs the producer's line-end conversion, TLS the IO loop's handshakes."""
        return producer.type == "i" and hasattr(producer.file, "read_ahead") and \
            type(self.socket) is socket.socket

    def _start_pump(self, producer) -> None:
        """Send the file from a pump thread. The producer stays queued until the pump
        finished, so that pyftpdlib takes any earlier end (ABOR, a hang-up, a timeout) for an
        aborted transfer; meanwhile the IO loop does not watch the socket (level-triggered
        events would spin) until the pump's ``on_done`` asks it to."""
        compat.start_transfer(self)
        self.producer_fifo.append(producer)
        self.modify_ioloop_events(0)
        producer.file.read_ahead = False  # the pump reads on its own thread already
        self._pump = Pump(producer.file, self.socket, CHUNK_SIZE, self.timeout,
                          on_sent=self._sent, on_done=self._pump_done, pace=self._throttle)

    def transfer_in_progress(self) -> bool:
        """True from the transfer command's 125/150 on, for ABOR: its 426 is that command's
        final reply, then 226 ABOR's own; 225 alone would leave the client waiting for one.

        pyftpdlib counts bytes instead, and a transfer can have sent none yet (the TLS
        handshake of its data connection under way, COS yet to answer; a pumped download's
        count lags behind what the client has): lftp's pget, aborting a segment then,
        waited for the missing reply until its ``net:timeout``."""
        return (self.cmd is not None and not self.transfer_finished) or \
            self._pump is not None or super().transfer_in_progress()

    def _sent(self, count: int) -> None:
        self.tot_bytes_sent += count  # read by the IO loop's data-channel timeout

    def _pump_done(self) -> None:
        """From the pump's thread: wake the IO loop (epoll_ctl is thread-safe, and the
        descriptor stays registered until ``close`` has stopped the pump)."""
        self.modify_ioloop_events(self.ioloop.WRITE)

    def initiate_send(self) -> None:
        """asynchat's sending, or, for a pumped download, the end the pump reported."""
        pump = self._pump
        if pump is None:
            super().initiate_send()
        elif not pump.done:
            self.modify_ioloop_events(0)  # not from on_done: keep waiting for it
        elif pump.error is None:
            self.discard_buffers()  # all sent: the end of the data, 226
            self.handle_close()
        elif client_gone(pump.error):
            log.info("path=%s: the download stopped: %s", self.file_obj.name, pump.error)
            self.handle_close()  # 426
        else:
            raise pump.error

    def _stop_pump(self) -> None:
        pump = self._pump
        if pump is None:
            return
        if not pump.done:
            with contextlib.suppress(OSError):
                self.socket.shutdown(socket.SHUT_RDWR)
        pump.stop()

    def _start_meter(self, upload: bool) -> None:
        """Measure this data connection's transfer (a listing's too), and show it as the
        session's in ``cosftpctl sessions``."""
        if self._meter is None:
            self._meter = TransferMeter(upload, self._handed_over, self.socket,
                                        time.monotonic())
            self.cmd_channel.meter = self._meter

    def _handed_over(self) -> int:
        return self.tot_bytes_sent + self.tot_bytes_received

    def get_transmitted_bytes(self) -> int:
        """pyftpdlib's count (handed to or read from the socket) while the transfer runs,
        for its idle timeout and ABOR; once it ended, the bytes the client had (see
        ``progress``), for xferlog, vsftpd.log and the metrics."""
        if self._meter is not None and self._meter.result is not None:
            return self._meter.result
        return self._handed_over()

    def _count_transfer(self, file, expected: Optional[int]) -> None:
        """A file transfer of ``file`` starts (STOR, APPE, RETR): count it, and say what it
        moves (``expected`` bytes, if known)."""
        if not self._counted:
            self._counted = True
            self._meter.counted = True
            self._meter.name = getattr(file, "name", "")
            self._meter.expected = expected
            self.cmd_channel.stats.transfer_started(self.receive)
            self.cmd_channel.stats.transfer_unqueued(self.cmd_channel)  # counted from now

    def close(self) -> None:
        ending = not compat.is_closed(self)
        self._stop_pump()
        self._show_received()  # the last chunk, had its read found the end of data too
        cut = self._cut_short() if not compat.is_closed(self) and self.receive and \
            self.transfer_finished else None
        if cut:
            self.transfer_finished = False
            compat.set_close_reply(self, f"426 {cut}; transfer aborted.", log.debug)
            log.warning("path=%s: %s; the upload is not complete",
                        getattr(self.file_obj, "name", "-"), cut)
        if not compat.is_closed(self) and self.cmd is not None and \
                not self.transfer_finished and self.cmd_channel.stats.stopping.is_set():
            compat.set_close_reply(self, "426 Server shutting down; transfer aborted.", log.info)
        if not compat.is_closed(self) and self.receive and self.transfer_finished:
            self._commit_upload()
        if self._meter is not None and not compat.is_closed(self):
            self._meter.finish(complete=self.transfer_finished)  # while the socket is open
        if self._counted and not compat.is_closed(self):
            self.cmd_channel.stats.transfer_ended(self._meter)
        super().close()
        if self._watch is not None:  # the final reply went out
            self._watch.ended()
            self._watch = None
        fs = self.cmd_channel.placing_fs  # the session may have closed inside the close
        if ending and fs is not None:
            self._report_end(fs)

    def _report_end(self, fs) -> None:
        """After the reply: the event of a failed upload (parked or discarded) or of a
        download the client had whole (paths placed by the session's filesystem ``fs``)."""
        transfer, hooks = self.file_obj, self.cmd_channel.hooks
        seconds = self.get_elapsed_time()
        if isinstance(transfer, UploadSession) and transfer.committed is None:
            hooks.upload_failed(fs.path_of(transfer), transfer.size,
                                transfer.state is UploadState.PARKED, seconds)
        elif transfer is not None and self.cmd == "RETR" and self.transfer_finished:
            hooks.downloaded(fs.path_of(transfer), self.get_transmitted_bytes(), seconds)

    def _cut_short(self) -> Optional[str]:
        """Why an upload's data that ended is not the whole file, or None.

        pyftpdlib (plain and TLS alike) takes a reset for the end of the data; but the
        kernel drops what it had received and not yet read when a reset arrives (a FIN
        leaves the socket in CLOSE_WAIT, a reset in CLOSE). And a client that announced
        the file's size (ALLO) and closed before sending it all was cut short: lftp
        announces the whole file before a REST + STOR too, so the object's size counts.
        Without ALLO, a STOR that sent only the first bytes of the STOR that failed before
        it on this session, or of one a dead worker had in flight, is lftp's retry cut short
        (see ``ftp.retries``)."""
        if tcp_state(self.socket) == TCP_CLOSE:
            return "Data connection reset by the client"
        upload = self.file_obj
        announced = getattr(upload, "announced", None)
        if announced is not None and \
                max(upload.size, self.tot_bytes_received) < announced:
            return (f"Data connection closed after {self.tot_bytes_received} of the "
                    f"{announced} bytes ALLO announced")
        cut = None if self._retry_of is None else self._retry_of.cut_retry(upload)
        if cut is None and self._watch is not None:
            cut = lost_retry(self._watch, self.cmd_channel.username, upload)
        return cut

    def _commit_upload(self) -> None:
        upload = self.file_obj
        if upload is None or upload.closed:
            return
        try:
            upload.commit(still_wanted=lambda wait: not self.cmd_channel.peer_gone(wait))
        except UploadInterrupted:
            self.transfer_finished = False
            compat.set_close_reply(self, "426 Connection closed; transfer aborted.", log.debug)
            log.warning("path=%s: the client vanished with its data connection; the "
                        "upload is not complete", upload.name)
        except OSError as exc:
            self.transfer_finished = False
            compat.set_close_reply(self, reply_for(exc), logging.getLogger("pyftpdlib").warning)
            log.error("path=%s: upload failed: %s", upload.name, exc)
            self.cmd_channel.failed_upload = failed_upload(self.cmd or "STOR", upload)
        else:
            self._report_upload(upload)
        finally:
            self.cmd_channel.fs.upload_finished(upload)

    def _report_upload(self, upload: UploadSession) -> None:
        """The upload's event, on disk before its 226; if the spool cannot take it, 451."""
        assert upload.committed is not None
        try:
            self.cmd_channel.hooks.uploaded(self.cmd_channel.fs.path_of(upload),
                                            upload.committed, upload.resumed,
                                            self.cmd or "STOR", self.get_elapsed_time())
        except SpoolError:
            compat.set_close_reply(self, NOT_RECORDED, log.error)

    def refuse_upload(self, reply: str, logfun, prefix: Optional[PrefixCrcs] = None) -> None:
        """End the upload with ``reply`` while the client may still be sending (see
        ``UploadPacing``). A STOR from byte 0 is remembered as failed, as one that fails once
        its data all arrived (``_commit_upload``): a client that wrote the whole file before
        it read the reply (lftp) may send its first bytes again and close (``ftp.retries``).
        So that its first bytes are all the client sent, the drain reads on into them when
        they hold every byte received so far, unchanged: a binary transfer on a plain
        socket (a TLS drain reads records, an ASCII transfer's bytes were converted)."""
        upload = self.file_obj
        failed = failed_upload(self.cmd or "STOR", upload) \
            if isinstance(upload, UploadSession) else None
        self.cmd_channel.failed_upload = failed
        if failed is not None and self._data_wrapper is None and \
                type(self.socket) is socket.socket and \
                failed.prefix.length == self.tot_bytes_received:
            prefix = failed.prefix
        super().refuse_upload(reply, logfun, prefix)

    def handle_error(self) -> None:
        """Reply 552/451 for storage failures instead of pyftpdlib's generic 426."""
        try:
            raise
        except OSError as exc:
            # pyftpdlib wraps file errors; the download pump hands ours over as they are
            original = exc.__cause__ if isinstance(exc.__cause__, OSError) and \
                not isinstance(exc, StorageError) else exc
            if isinstance(original, (StorageError, NotStorable)) or \
                    original.errno == errno.EFBIG:
                log.error("path=%s: %s failed: %s", getattr(self.file_obj, "name", "-"), self.cmd,
                          original)
                self.refuse_upload(reply_for(original, self.cmd),
                                   logging.getLogger("pyftpdlib").warning)
                return
            super().handle_error()
        except QuotaExceeded as exc:
            log.warning("path=%s: %s stopped: %s", getattr(self.file_obj, "name", "-"),
                        self.cmd, exc)
            self.refuse_upload(f"552 {exc}; transfer aborted, nothing stored.",
                               logging.getLogger("pyftpdlib").warning)
        except Exception:
            super().handle_error()
