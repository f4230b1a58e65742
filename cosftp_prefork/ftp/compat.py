"""Every contact with pyftpdlib's internals, in one place.

pyftpdlib keeps much of a session's state in private attributes and has no public hook
for what the handlers need (a queued upload, the reply a data channel sends when it
closes, the raw input buffer...). Everything else reads and writes them only through the
helpers here, so that an upgrade of the pinned version is checked in one module:
``tests/test_compat.py`` asserts that every name in ``RELIED_ON`` still exists on real
pyftpdlib instances.

Private methods our subclasses override stay in the subclass; ``OVERRIDDEN`` lists them
with the names those overrides rely on.
"""

import contextlib
import logging
import sys
from typing import Any, Callable, Optional

# Re-exported: these live in pyftpdlib's internal modules, not in ``pyftpdlib.handlers``.
from pyftpdlib.handlers.ftp.dispatchers import ActiveDTP, PassiveDTP
from pyftpdlib.handlers.ftp.producers import BufferedIteratorProducer, FileProducer
from pyftpdlib.ioloop import _ERRNOS_DISCONNECTED as DISCONNECTED
from pyftpdlib.ioloop import AsyncChat
from pyftpdlib.log import debug as _pyftpdlib_debug
from pyftpdlib.log import logger as _pyftpdlib_logger

from . import scheduled

__all__ = ["DISCONNECTED", "ActiveDTP", "BufferedIteratorProducer", "FileProducer",
           "PassiveDTP"]

# pyftpdlib class -> the private attributes and methods the helpers below use.
RELIED_ON: dict[str, tuple[str, ...]] = {
    # ioloop.AsyncChat, the base of the control and data channels (ac_in_buffer: asynchat's)
    "AsyncChat": ("_closed", "_closing", "_fileno", "_wanted_io_events", "ac_in_buffer"),
    "FTPHandler": ("_idler", "_in_buffer", "_in_buffer_len", "_restart_position",
                   "_in_dtp_queue", "_out_dtp_queue", "_current_type", "_current_facts",
                   "_extra_feats", "_dtp_acceptor", "_dtp_connector", "_on_dtp_connection",
                   "_rnfr", "_shutdown_connecting_dtp", "_epsvall"),
    "DTPHandler": ("_resp", "_initialized", "_wanted_io_events"),
    # handlers.ftps.ssl.SSLConnectionMixin, mixed into both TLS channels
    "SSLConnectionMixin": ("_error", "_ssl_accepting", "_ssl_established", "_ssl_want_read",
                           "_ssl_want_write"),
    "TLS_FTPHandler": ("_prot", "_pbsz"),
    "Acceptor": ("_fileno",),  # the listening server
}

# pyftpdlib class -> private methods our subclasses override (and call through super()).
OVERRIDDEN: dict[str, tuple[str, ...]] = {
    "FTPHandler": ("_make_epasv", "_make_eport",  # ftp/dataconnect.py
                    "_on_dtp_close"),  # ftp/lifecycle.py
    "ThreadedFTPServer": ("_loop",),  # server/balanced.py: serves one session in its thread
}


# --- any channel (control or data)

def is_closed(channel: Any) -> bool:
    """True once the channel's socket was closed."""
    return channel._closed


def is_closing(channel: Any) -> bool:
    """True while a graceful close (``close_when_done``) is under way."""
    return channel._closing


# --- control channel: the command line being read

def buffered_input_len(handler: Any) -> int:
    """Bytes of the command line received so far."""
    return handler._in_buffer_len


def buffered_input(handler: Any) -> bytes:
    """The command line received so far."""
    return b"".join(handler._in_buffer)


def discard_input(handler: Any) -> None:
    """Forget the command line received so far."""
    handler._in_buffer, handler._in_buffer_len = [], 0


def take_unread_input(handler: Any) -> bytes:
    """Remove and return what the client sent after the command line being run: the rest of
    the last read (asynchat's ``ac_in_buffer``), lines and the start of one. The read loop
    running that line (asynchat's ``handle_read`` goes on while its buffer holds bytes) then
    stops after it, where it would run the rest."""
    unread, handler.ac_in_buffer = handler.ac_in_buffer, b""
    return unread


def run_input(handler: Any, data: bytes) -> None:
    """Run the command lines in ``data`` (``take_unread_input``'s) as if the client had just
    sent them; an unfinished last line waits for the rest, as one read would leave it.

    asynchat reads commands only from ``recv``: its read loop (``AsyncChat.handle_read``,
    below the TLS layer and our mixins, which are about the socket) is run over ``data`` put
    back in its buffer, with a ``recv`` of this handler that brings nothing more."""
    handler.ac_in_buffer = data
    handler.recv = _nothing_more
    try:
        AsyncChat.handle_read(handler)
    finally:
        del handler.recv


def _nothing_more(buffer_size: int) -> bytes:
    return b""


# --- control channel: replies

def push_bytes(handler: Any, data: bytes) -> None:
    """Queue ``data`` on the control connection as it is. pyftpdlib's ``FTPHandler.push``
    takes text and encodes it, which leaves no place to double Telnet's IAC (0xFF) in the
    encoded bytes; asynchat's own ``push`` takes bytes."""
    AsyncChat.push(handler, data)


# --- control channel: the idle timer (``timeout``, ``handle_timeout``)

def stop_idle_timer(handler: Any) -> bool:
    """Cancel the session's idle timer; True if one was running. pyftpdlib starts it in
    ``FTPHandler.__init__``, on the event loop of the thread that accepted the connection."""
    idler, handler._idler = handler._idler, None
    return scheduled.cancel(idler)


def start_idle_timer(handler: Any) -> None:
    """Start the idle timer on the session's event loop (``handler.ioloop``), as pyftpdlib
    starts it: ``handle_timeout`` once ``timeout`` seconds pass without a command."""
    handler._idler = handler.ioloop.call_later(handler.timeout, handler.handle_timeout,
                                               _errback=handler.handle_error)


def restart_idle_timer(handler: Any) -> None:
    """Count the idle time from now, if the timer runs (pyftpdlib stops it while a data
    connection is open, and when the session closes)."""
    idler = handler._idler
    if idler is not None and not idler.cancelled:
        idler.reset()


# --- control channel: session state

def take_restart_position(handler: Any) -> int:
    """Return the offset the last REST set and reset it, as a transfer command does."""
    offset, handler._restart_position = handler._restart_position, 0
    return offset


def rename_source(handler: Any) -> Optional[str]:
    """The path the last RNFR named (None: no rename pending)."""
    return handler._rnfr


def forget_rename(handler: Any) -> None:
    """Drop the pending RNFR, as a refused RNTO does."""
    handler._rnfr = None


def queue_transfer(handler: Any, file_obj: Any, cmd: str) -> None:
    """Have the data connection, once it opens, run ``cmd`` on ``file_obj``."""
    handler._in_dtp_queue = (file_obj, cmd)


def take_queued_transfer(handler: Any) -> Optional[tuple[Any, str]]:
    """Remove and return the ``(file, cmd)`` waiting for a data connection, if any."""
    queued, handler._in_dtp_queue = handler._in_dtp_queue, None
    return queued


def take_queued_sending(handler: Any) -> Optional[tuple[Any, bool, Any, str]]:
    """Remove and return the ``(data, isproducer, file, cmd)`` a RETR or a listing left
    waiting for a data connection, if any."""
    queued, handler._out_dtp_queue = handler._out_dtp_queue, None
    return queued


def transfer_waiting(handler: Any) -> bool:
    """True while a transfer command (RETR, a listing, STOR...) waits for its data
    connection."""
    return handler._in_dtp_queue is not None or handler._out_dtp_queue is not None


def file_transfer_waiting(handler: Any) -> bool:
    """True while a file transfer (STOR, APPE, RETR; not a listing) waits for its data
    connection."""
    sending = handler._out_dtp_queue
    return handler._in_dtp_queue is not None or (sending is not None and bool(sending[2]))


def transfer_type(handler: Any) -> str:
    """``"a"`` (TYPE A) or ``"i"`` (TYPE I)."""
    return handler._current_type


def set_transfer_type(handler: Any, kind: str) -> None:
    """Set TYPE: ``"a"`` or ``"i"``."""
    handler._current_type = kind


def mlst_facts(handler: Any) -> list:
    """The MLST facts the session chose with ``OPTS MLST``."""
    return handler._current_facts


# What pyftpdlib's FTPHandler starts a session with on POSIX (checked by test_compat).
DEFAULT_MLST_FACTS = ("type", "perm", "size", "modify", "unique")


def reset_transfer_parameters(handler: Any) -> None:
    """Put back what a new connection starts with: TYPE A, no REST offset, the default MLST
    facts, and PASV/PORT/EPRT allowed again after ``EPSV ALL`` (REIN, RFC 959 4.1.1)."""
    handler._current_type = "a"
    handler._restart_position = 0
    handler._current_facts = list(DEFAULT_MLST_FACTS)
    handler._epsvall = False


def set_feature(handler: Any, feature: str, replacing: Optional[str] = None) -> None:
    """Have this session's FEAT list ``feature``, instead of any line starting with
    ``replacing``. Assigned, not appended: pyftpdlib's list may be shared by the class."""
    prefix = feature if replacing is None else replacing
    others = [feat for feat in handler._extra_feats if not feat.startswith(prefix)]
    handler._extra_feats = [*others, feature]


# --- control channel: the data connection being set up

def epsv_only(handler: Any) -> bool:
    """True after ``EPSV ALL``: PASV, PORT and EPRT are refused (RFC 2428)."""
    return handler._epsvall


def set_epsv_only(handler: Any) -> None:
    """``EPSV ALL``: from now on data connections are set up with EPSV alone."""
    handler._epsvall = True


def passive_listener(handler: Any) -> Any:
    """The passive data listener (PASV/EPSV) of the session, or None."""
    return handler._dtp_acceptor


def forget_passive_listener(handler: Any) -> None:
    """Drop the session's reference to its passive listener (closed or never made)."""
    handler._dtp_acceptor = None


def connecting_actively(handler: Any) -> bool:
    """True while an active (PORT/EPRT) data connection is being made (a connector that
    failed inside its constructor is the session's, closed, until the next data command)."""
    connector = handler._dtp_connector
    return connector is not None and not connector._closed


def shut_down_connecting(handler: Any) -> None:
    """Close the passive listener or the active connector the session has, if any."""
    handler._shutdown_connecting_dtp()


def forget_active_connector(handler: Any, connector: Any) -> None:
    """Drop the session's reference to ``connector`` (PORT/EPRT's), if it is still the
    session's: its connection was handed over, or failed."""
    if handler._dtp_connector is connector:
        handler._dtp_connector = None


def data_channel_opened(handler: Any) -> None:
    """Tell the session its ``data_channel`` was just set: runs a queued transfer."""
    handler._on_dtp_connection()


# --- data channel

def transfer_started(dtp: Any) -> bool:
    """True once a transfer command took the data channel (it is no longer idle)."""
    return dtp._initialized


def start_transfer(dtp: Any) -> None:
    """What ``DTPHandler.push_with_producer`` notes before sending: the channel is in use
    (pyftpdlib closes an unused one when it turns readable) and does not wait to read."""
    dtp._initialized = True
    dtp._wanted_io_events = 0


def close_reply(dtp: Any) -> str:
    """The reply the data channel will send when it closes, "" if none."""
    return dtp._resp[0] if dtp._resp else ""


def set_close_reply(dtp: Any, text: str, logfun: Callable[[str], Any]) -> None:
    """Make ``text`` the reply the data channel sends on the control channel when it
    closes (pyftpdlib's own is 226 or 426), logged with ``logfun``."""
    dtp._resp = (text, logfun)


# --- the IO loop

def watch_readable(ioloop: Any, fileno: int, member: Any) -> None:
    """Have ``ioloop`` call ``member.handle_read_event()`` whenever ``fileno`` is readable
    (``member`` is no pyftpdlib channel: ``ftp.drain``). The loop, when it closes, sorts what
    it holds by their ``_fileno``, which channels have: give ``member`` one."""
    member._fileno = fileno
    ioloop.register(fileno, member, ioloop.READ)


def rest(channel: Any) -> None:
    """Keep ``channel``, just taken off its IO loop (``del_channel``), in the loop's map with
    no event asked for: the loop then waits in ``poll`` (woken by ``wake_to_read``), not in
    the sleep pyftpdlib's session thread takes when its map is empty (uninterruptible). Undo
    with ``unrest`` before ``add_channel``: epoll's register of a registered descriptor is
    ignored (EEXIST), so the channel would hear nothing."""
    channel.ioloop.register(channel._fileno, channel, 0)
    channel._wanted_io_events = 0


def unrest(channel: Any) -> None:
    """Undo ``rest``: the channel is off the loop again, for ``add_channel``."""
    channel.ioloop.unregister(channel._fileno)


def wake_to_read(channel: Any) -> None:
    """From any thread: have ``channel``'s loop ask for reading it, which wakes the loop's
    ``poll`` at once if the socket is readable (a kick's shut-down read side is). Nothing
    happens once the channel or its loop closed."""
    with contextlib.suppress(OSError, ValueError):
        channel.ioloop.modify(channel._fileno, channel.ioloop.READ)


def timers_added(ioloop: Any, run: Callable[[], Any]) -> list[Any]:
    """Call ``run()`` and return the timers (``_CallLater``) it scheduled on ``ioloop``:
    pyftpdlib's ``handle_auth_failed`` keeps no handle on its delayed 530's."""
    before = {id(task) for task in ioloop.sched._tasks}
    run()
    return [task for task in ioloop.sched._tasks if id(task) not in before]


def stop_reading(channel: Any) -> None:
    """Have the IO loop wake ``channel`` only to send, until its next send wants reading
    again (``AsyncChat.initiate_send`` asks for reading whenever it ran)."""
    if not channel._closed and channel._wanted_io_events != channel.ioloop.WRITE:
        channel.ioloop.modify(channel._fileno, channel.ioloop.WRITE)
        channel._wanted_io_events = channel.ioloop.WRITE


# --- TLS (both channels)

def skip_tls_shutdown(channel: Any) -> None:
    """Close without the TLS closing handshake: the connection failed."""
    channel._error = True


def tls_handshake_pending(channel: Any) -> bool:
    """True while the TLS handshake of the connection is under way."""
    return channel._ssl_accepting


def tls_handshake_awaits_peer(channel: Any) -> bool:
    """True while the TLS handshake is under way and can go on only once the peer's next
    bytes come (it has nothing to write)."""
    return channel._ssl_accepting and channel._ssl_want_read and not channel._ssl_want_write


def tls_established(handler: Any) -> bool:
    """True once the control connection is encrypted (AUTH TLS done); False on a handler
    without FTPS (the auth hook asks every session)."""
    return getattr(handler, "_ssl_established", False)


def protection_negotiated(handler: Any) -> bool:
    """True once PROT may set a level: TLS is on and PBSZ came (RFC 2228)."""
    return tls_established(handler) and handler._pbsz


def data_protected(handler: Any) -> bool:
    """True after PROT P: data connections are encrypted."""
    return handler._prot


def protection_state(handler: Any) -> tuple[bool, bool]:
    """What PBSZ and PROT set, (PBSZ came, PROT P), for ``restore_protection``."""
    return handler._pbsz, handler._prot


def restore_protection(handler: Any, state: tuple[bool, bool]) -> None:
    """Put back a ``protection_state``; (False, False) is the state right after AUTH TLS."""
    handler._pbsz, handler._prot = state


# --- the listening server

def listen_fileno(server: Any) -> Optional[int]:
    """File number of the listening socket, None once it is closed."""
    return server._fileno


# --- pyftpdlib's debug lines

def debug_only_when_logged() -> None:
    """Make every loaded pyftpdlib module's ``debug`` format its line only if the
    ``pyftpdlib`` logger logs DEBUG (it may change at a reload: asked at each call).

    pyftpdlib's ``log.debug(msg, inst)`` formats ``repr(inst)`` (the session's user,
    addresses and directory: ``get_repr_info``) before the logger drops the line, at every
    data channel's close, transfer's start and passive listener's close: 2-3 % of a
    worker's CPU per small file (docs/performance.md). Each module imported the function
    by name, so each module's name is replaced; the line DEBUG logs is the same."""
    for name, module in list(sys.modules.items()):
        if name.startswith("pyftpdlib.") and getattr(module, "debug", None) is _pyftpdlib_debug:
            module.debug = _debug


def _debug(msg: str, inst: Any = None) -> None:
    if _pyftpdlib_logger.isEnabledFor(logging.DEBUG):
        _pyftpdlib_debug(msg, inst)
