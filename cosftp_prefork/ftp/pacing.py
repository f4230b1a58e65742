"""How an upload's data channel reads under the worker's memory budget (README "Memory and
scheduling"; the budget and the part buffers are in ``cos.engine`` and ``cos.parts``).

* **Back-pressure.** While the upload cannot take bytes (its part buffer is not granted yet,
  or as many of its parts are on their way to COS as it may have), the channel stops
  reading its socket, so that TCP slows the client down and nothing is buffered around the
  budget; it looks again every ``BACK_PRESSURE_POLL`` seconds.
* **Bytes before buffers.** A part buffer is claimed only once the client has sent the
  first ``READY_BYTES`` of that part, or has finished sending; until then the bytes wait in
  the socket, and ``SO_RCVLOWAT`` wakes the IO loop when they are there. A client that
  sends a few bytes and then one a second holds no buffer, and since nothing is read from
  it, ``data_connection_timeout`` cuts it off like any stalled transfer. (Plain data
  connections only: a TLS layer may hold decrypted bytes the socket no longer shows.)
* **Waiting is not stalling.** A transfer the server holds back is not timed out.
* **A refusal is read.** An upload the server stops while the client sends (``refuse``: a
  quota crossed, ``single_file_max_size``, a refused name, COS failing, a buffer not filled)
  hands its data connection to a bounded drain (``ftp.drain``) after the reply, instead of
  closing it on unread bytes: a reset would keep a client still sending from reading why.
* **Buffers are lent.** While other uploads wait for memory, an upload that has held a part
  buffer for ``data_connection_timeout`` seconds without filling it is cut off (426; what
  reached COS is parked for REST + STOR), so clients trickling bytes cannot keep the budget
  from everyone else.
* **Rates before buffers.** An upload with a rate limit (``ftp.throttle``) claims a part
  buffer only once its throttle let the whole part go (or what the client has left to
  send), and then reads it at once: it waits for its rate holding no buffer and reading
  nothing. A download with one (``DownloadPacing``) sends nothing meanwhile; the IO loop
  wakes it when its bytes may go.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import struct
import termios
from typing import Optional

from ..cos.checksum import PrefixCrcs
from ..cos.downloads import CHUNK_SIZE
from . import compat, scheduled
from .admission import raw_socket
from .drain import Drain
from .throttle import Throttle

log = logging.getLogger(__name__)

BACK_PRESSURE_POLL = 0.01  # seconds between looks at whether a held-back upload may go on
READY_BYTES = 32 * 1024  # at most; and a quarter of the socket's receive buffer
# tcpi_state (linux/tcp_states.h): the peer sent its FIN, or reset the connection
TCP_CLOSE_WAIT, TCP_CLOSE = 8, 7


def tcp_state(sock) -> int:
    """The kernel's TCP state of ``sock`` (0 if it cannot tell)."""
    if type(sock) is socket.socket:  # asked twice per upload: no borrowed socket object
        return _tcp_state(sock)
    with raw_socket(sock) as raw:
        return _tcp_state(raw)


def _tcp_state(sock: socket.socket) -> int:
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    except OSError:
        return 0


def _queued(sock: socket.socket) -> int:
    """Bytes received and not read yet."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]


class UploadPacing:
    """Mixin for the data channel (before pyftpdlib's ``DTPHandler`` in the bases): see
    the module docstring. Downloads and listings read nothing and pass through."""

    _held_back = False  # the server keeps the upload from reading: no stall timeout
    _awaiting_bytes = False  # the next part's first bytes are not there yet
    _low_water = 1  # the socket's SO_RCVLOWAT
    _resume_call = None
    _hold_check = None
    _throttle: Optional[Throttle] = None  # the session's rate limit for this transfer
    _rate_wait = 0.0  # seconds until the throttle lets bytes go again
    _refused = False  # the server ended the upload while the client sent: drain on close
    _drained_into: Optional[PrefixCrcs] = None  # what the drain feeds what it reads into

    def enable_receiving(self, type: str, cmd: str) -> None:
        super().enable_receiving(type, cmd)
        if self.timeout:
            self._hold_check = self.ioloop.call_every(
                max(1.0, self.timeout / 4), self._check_hold, _errback=self.handle_error)

    def handle_read_event(self) -> None:
        """Read only what the upload can take now. (The event, not ``handle_read``: the
        TLS layer handles it first.)"""
        room = self._upload_room()
        if room:
            self.ac_in_buffer_size = min(CHUNK_SIZE, room)
            before = self.tot_bytes_received
            super().handle_read_event()
            if self._throttle is not None:
                self._throttle.used(self.tot_bytes_received - before)
        elif not self._awaiting_bytes:  # (else SO_RCVLOWAT wakes the loop)
            self._held_back = True
            self.modify_ioloop_events(0)
            self._resume_later()

    def handle_timeout(self) -> None:
        """pyftpdlib's stall check, every ``data_connection_timeout``: not while the server
        itself holds the transfer back."""
        if not self._held_back:
            super().handle_timeout()

    def refuse_upload(self, reply: str, logfun, prefix: Optional[PrefixCrcs] = None) -> None:
        """End the upload with ``reply`` (sent as the channel closes) while the client may
        still be sending: its data connection is drained after the reply, not reset, and
        what the drain reads is fed on into ``prefix``, the upload's first bytes so far, if
        given (``ftp.drain``)."""
        self._refused = True
        self._drained_into = prefix
        compat.set_close_reply(self, reply, logfun)
        self.close()

    def close(self) -> None:
        kept = self._socket_to_drain()
        scheduled.cancel(self._hold_check)
        scheduled.cancel(self._resume_call)
        if self._throttle is not None:
            self._throttle.close()
        super().close()  # the reply goes out
        if kept is not None:
            try:
                drain = Drain(kept, self.ioloop, getattr(self.file_obj, "name", "-"),
                              prefix=self._drained_into)
            except OSError:
                kept.close()  # the connection broke meanwhile: nothing to drain
            else:
                self.cmd_channel.drain_refused_upload(drain)

    def _socket_to_drain(self) -> Optional[socket.socket]:
        """A duplicate of the data socket of a refused upload, which keeps the connection
        open once pyftpdlib closed its own (None: nothing to drain, the client reset it)."""
        if not self._refused or not self.receive or compat.is_closed(self) or \
                compat.is_closed(self.cmd_channel) or tcp_state(self.socket) == TCP_CLOSE:
            return None
        try:
            return socket.socket(fileno=os.dup(self.socket.fileno()))
        except OSError as exc:  # out of descriptors: close it as before, with a reset
            log.warning("path=%s: the refused upload's data connection is closed at once: %s",
                        getattr(self.file_obj, "name", "-"), exc)
            return None

    def _receiving_upload(self) -> bool:
        return self.receive and hasattr(self.file_obj, "room")

    def _upload_room(self) -> int:
        if not self._receiving_upload():
            return CHUNK_SIZE
        self._awaiting_bytes = False
        if self._throttle is None:
            return self.file_obj.room(self._more_coming, self._part_bytes_there)
        room = self.file_obj.room(self._more_coming, self._part_paid_for)
        if not room:
            return 0
        allowed, self._rate_wait = self._throttle.allowance(room)
        return allowed

    def _part_paid_for(self, size: int) -> bool:
        """Whether the next part's buffer may be claimed under a rate limit: its first bytes
        are there (``_part_bytes_there``) and its throttle let all of them go, or all the
        client has left to send (once it finished). Over TLS, a slice: a client may wait
        for the server's closing alert before it closes, so its socket cannot tell the
        last bytes of a file from a pause, and a whole part would be waited for in vain."""
        if not self._part_bytes_there(size):
            return False
        if type(self.socket) is not socket.socket:
            size = 1
        elif tcp_state(self.socket) in (TCP_CLOSE_WAIT, TCP_CLOSE):
            size = min(size, max(1, _queued(self.socket)))
        paid, self._rate_wait = self._throttle.save_up(size)
        return paid

    def _more_coming(self) -> bool:
        """True unless the client has closed the data connection with nothing left unread
        (a TLS connection's closing alert counts as more)."""
        with raw_socket(self.socket) as raw:
            try:
                return raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
            except BlockingIOError:
                return True
            except OSError:
                return False

    def _part_bytes_there(self, size: int) -> bool:
        """Whether the bytes that would claim a part buffer of ``size`` have arrived (or the
        client finished sending); if not, ask the kernel to wake the loop when they have."""
        if type(self.socket) is not socket.socket:
            return True
        wanted = min(size, READY_BYTES,
                     self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 4)
        there = _queued(self.socket) >= wanted or \
            tcp_state(self.socket) in (TCP_CLOSE_WAIT, TCP_CLOSE)
        self._set_low_water(1 if there else wanted)
        self._awaiting_bytes = not there
        return there

    def _set_low_water(self, size: int) -> None:
        if size != self._low_water:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, size)
            self._low_water = size

    def _resume_later(self) -> None:
        # The loop's own timer: the channel's ``call_later`` keeps every call it ever made
        # in a list until the channel closes (100 a second while an upload waits).
        self._resume_call = self.ioloop.call_later(max(BACK_PRESSURE_POLL, self._rate_wait),
                                                   self._resume_reading,
                                                   _errback=self.handle_error)

    def _resume_reading(self) -> None:
        if compat.is_closed(self):
            return
        if self._upload_room() or self._awaiting_bytes:
            self._held_back = False
            self.modify_ioloop_events(self.ioloop.READ)
        else:
            self._resume_later()

    def _check_hold(self) -> None:
        """Cut the upload off if it keeps a part buffer it does not fill while others wait."""
        upload = self.file_obj
        if compat.is_closed(self) or not self._receiving_upload() or \
                not upload.hoarding(self.timeout):
            return
        log.warning("path=%s: upload cut off: its part buffer was not filled in %ds while "
                    "other uploads waited for memory", upload.name, self.timeout)
        self.refuse_upload(f"426 Upload too slow: its buffer was not filled in {self.timeout} "
                           "s while other uploads waited for memory; transfer aborted.",
                           log.info)


class DownloadPacing:
    """Mixin for the data channel: a download with a rate limit, sent by the IO loop (TLS,
    ASCII; the pump paces its own), sends what its throttle allows, then nothing until the
    loop's timer says more may go."""

    _throttle: Optional[Throttle] = None
    _send_call = None

    def initiate_send(self) -> None:
        throttle = self._throttle
        if throttle is None or self.receive or not self.producer_fifo:
            super().initiate_send()
            return
        granted, wait = throttle.allowance(CHUNK_SIZE)
        if not granted:
            self.modify_ioloop_events(0)
            self._send_call = self.ioloop.call_later(wait, self._send_again,
                                                     _errback=self.handle_error)
            return
        self.ac_out_buffer_size = granted
        before = self.tot_bytes_sent
        super().initiate_send()
        throttle.used(self.tot_bytes_sent - before)

    def _send_again(self) -> None:
        if not compat.is_closed(self):
            self.modify_ioloop_events(self.ioloop.WRITE)

    def close(self) -> None:
        scheduled.cancel(self._send_call)
        super().close()
