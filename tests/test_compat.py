"""The pyftpdlib internals ``cosftp_prefork.ftp.compat`` relies on still exist in the
installed (pinned) pyftpdlib, checked on real handler instances over real sockets; and no
module but compat touches them."""

from __future__ import annotations

import logging
import pathlib
import re
import socket
import sys
from importlib.metadata import version

import pytest
from OpenSSL import SSL
from pyftpdlib.handlers import DTPHandler, FTPHandler, TLS_DTPHandler, TLS_FTPHandler
from pyftpdlib.handlers.ftps.ssl import SSLConnectionMixin
from pyftpdlib.ioloop import Acceptor, AsyncChat, IOLoop
from pyftpdlib.servers import FTPServer, ThreadedFTPServer

from cosftp_prefork.ftp import compat
from cosftp_prefork.ftp.active import CosActiveDTP
from cosftp_prefork.ftp.datachannel import CosDTPHandler
from cosftp_prefork.ftp.fs import CosFS
from cosftp_prefork.ftp.handler import CosFTPHandler
from cosftp_prefork.ftp.passive import CosPassiveDTP
from cosftp_prefork.ftp.tls import CosTLSDTPHandler, CosTLSFTPHandler
from cosftp_prefork.server.balanced import BalancedFTPServer

PYFTPDLIB = version("pyftpdlib")
CLASSES = {cls.__name__: cls for cls in (
    AsyncChat, FTPHandler, DTPHandler, SSLConnectionMixin, TLS_FTPHandler, Acceptor,
    ThreadedFTPServer)}
# Our subclasses of pyftpdlib classes, whose private overrides must be listed in compat.
OURS = (CosFTPHandler, CosDTPHandler, CosTLSFTPHandler, CosTLSDTPHandler, CosPassiveDTP,
        CosActiveDTP, BalancedFTPServer, CosFS)
PACKAGE = pathlib.Path(compat.__file__).resolve().parent.parent


class _TLSProbe(TLS_FTPHandler):
    """pyftpdlib's TLS control channel, with a context so that it needs no certificate."""

    ssl_context = SSL.Context(SSL.TLS_SERVER_METHOD)


@pytest.fixture
def channels():
    """Real pyftpdlib channels on connected loopback sockets: a listening server, plain
    and TLS control channels, and a data channel of each."""
    ioloop = IOLoop()
    server = FTPServer(("127.0.0.1", 0), FTPHandler, ioloop=ioloop)
    made, sockets = [], []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def connected() -> socket.socket:
            client = socket.create_connection(listener.getsockname())
            accepted, _ = listener.accept()
            sockets.extend((client, accepted))
            return accepted

        try:
            control = FTPHandler(connected(), server, ioloop)
            tls_control = _TLSProbe(connected(), server, ioloop)
            made = [control, tls_control, DTPHandler(connected(), control),
                    TLS_DTPHandler(connected(), tls_control)]
            yield [server, *made]
        finally:
            for channel in made:
                channel.close()
            server.close()
            for sock in sockets:
                sock.close()
            ioloop.close()


def test_every_relied_on_attribute_exists(channels):
    for class_name, names in compat.RELIED_ON.items():
        cls = CLASSES[class_name]
        instances = [channel for channel in channels if isinstance(channel, cls)]
        assert instances, f"no real {class_name} instance to check"
        for instance in instances:
            missing = [name for name in names if not hasattr(instance, name)]
            assert not missing, f"pyftpdlib {PYFTPDLIB} {type(instance).__name__}: {missing}"


def test_every_overridden_method_exists_and_is_listed():
    for class_name, names in compat.OVERRIDDEN.items():
        for name in names:
            assert callable(getattr(CLASSES[class_name], name, None)), \
                f"pyftpdlib {PYFTPDLIB} {class_name} has no method {name}"
    listed = {name for names in compat.OVERRIDDEN.values() for name in names}
    for ours in OURS:
        theirs = [cls for cls in ours.__mro__ if cls.__module__.startswith("pyftpdlib")]
        own = [cls for cls in ours.__mro__ if cls.__module__.startswith("cosftp_prefork")]
        overridden = {name for cls in own for name, value in vars(cls).items()
                      if name.startswith("_") and not name.startswith("__") and callable(value)
                      and any(name in vars(base) for base in theirs)}
        assert overridden <= listed, f"{ours.__name__} overrides unlisted {overridden - listed}"


def test_helpers_read_and_write_real_state(channels):
    server, control, tls_control, dtp, tls_dtp = channels
    assert compat.listen_fileno(server) == server.socket.fileno()
    assert not compat.is_closed(control) and not compat.is_closing(control)
    assert compat.transfer_type(control) == "a"
    assert compat.take_restart_position(control) == 0
    assert compat.rename_source(control) is None
    control._rnfr = "/renamed"
    assert compat.rename_source(control) == "/renamed"
    compat.forget_rename(control)
    assert compat.rename_source(control) is None
    assert compat.take_queued_transfer(control) is None
    compat.queue_transfer(control, "upload", "STOR")
    assert compat.take_queued_transfer(control) == ("upload", "STOR")
    assert compat.take_queued_transfer(control) is None
    assert compat.take_queued_sending(control) is None
    control.push_dtp_data(b"listing", cmd="LIST")  # no data connection: pyftpdlib queues it
    assert compat.take_queued_sending(control) == (b"listing", False, None, "LIST")
    assert compat.take_queued_sending(control) is None
    assert compat.passive_listener(control) is None
    assert not compat.connecting_actively(control)
    assert compat.buffered_input_len(control) == 0 and compat.buffered_input(control) == b""
    compat.set_feature(tls_control, "HASH SHA-1*", replacing="HASH ")
    compat.set_feature(tls_control, "HASH MD5*", replacing="HASH ")
    feats = tls_control._extra_feats
    assert "HASH MD5*" in feats and "HASH SHA-1*" not in feats and "AUTH TLS" in feats
    assert compat.mlst_facts(control) == control._current_facts
    assert not compat.tls_established(tls_control) and not compat.data_protected(tls_control)
    assert not compat.protection_negotiated(tls_control)
    assert not compat.epsv_only(control)
    compat.set_epsv_only(control)
    assert compat.epsv_only(control) and control._epsvall
    assert not compat.tls_handshake_pending(tls_dtp)
    assert compat.close_reply(dtp) == ""
    compat.set_close_reply(dtp, "426 Test reply.", print)
    assert dtp._resp == ("426 Test reply.", print)
    assert compat.close_reply(dtp) == "426 Test reply."
    compat.skip_tls_shutdown(tls_dtp)
    tls_dtp.close()
    assert compat.is_closed(tls_dtp)
    ioloop = control.ioloop
    [timer] = compat.timers_added(ioloop, lambda: ioloop.call_later(60, print))
    assert timer in ioloop.sched._tasks and compat.timers_added(ioloop, print) == []
    timer.cancel()
    control.del_channel()
    compat.rest(control)  # in the map, asking for nothing
    assert ioloop.socket_map[control._fileno] is control and control._wanted_io_events == 0
    compat.wake_to_read(control)
    compat.unrest(control)
    assert control._fileno not in ioloop.socket_map
    control.add_channel()
    assert ioloop.socket_map[control._fileno] is control


def test_input_set_aside_runs_later_as_if_just_read(channels):
    """What a read brought beyond the line being run is taken out of asynchat's buffer, and
    run later line by line through the handler's own parsing; an unfinished line (here cut
    inside its terminator) waits for the rest, and the handler's ``recv`` is its own again."""
    control = channels[1]
    control.ac_in_buffer = b"NOOP\r\nNOOP\r"
    held = compat.take_unread_input(control)
    assert held == b"NOOP\r\nNOOP\r" and control.ac_in_buffer == b""
    compat.run_input(control, held)
    assert control._last_response.startswith("200 ")
    assert compat.buffered_input(control) == b"NOOP"
    assert compat.take_unread_input(control) == b"\r"
    assert "recv" not in vars(control)


class _Reader:
    """What ``compat.watch_readable`` watches: counts its read events and closes."""

    events = 0
    closed = False

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def handle_read_event(self) -> None:
        self.events += 1

    def close(self) -> None:
        self.closed = True


def test_a_watched_reader_is_called_and_closed_with_the_channels():
    """pyftpdlib's IO loop calls a watched reader when its socket turns readable, and closes
    it beside the channels it holds (sorting them all by ``_fileno``)."""
    ioloop, reader = IOLoop(), _Reader()
    left, right = socket.socketpair()
    other_left, other_right = socket.socketpair()
    try:
        compat.watch_readable(ioloop, right.fileno(), reader)
        channel = AsyncChat(other_right, ioloop)
        channel.add_channel()
        ioloop.poll(0)
        assert reader.events == 0
        left.send(b"x")
        ioloop.poll(1)
        assert reader.events == 1
        ioloop.close()
        assert reader.closed and compat.is_closed(channel)
    finally:
        for sock in (left, right, other_left, other_right):
            sock.close()


def _touches(text: str, names: set[str]) -> list[str]:
    found = re.findall(r"\.(_[A-Za-z]\w*)\b", text)
    return sorted({name for name in found if name in names})


def test_no_module_but_compat_touches_pyftpdlib_internals():
    private = {name for names in compat.RELIED_ON.values() for name in names}
    overridden = {name for names in compat.OVERRIDDEN.values() for name in names}
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name == "compat.py" and path.parent.name == "ftp":
            continue
        text = path.read_text(encoding="utf-8")
        touched = _touches(text, private)
        # An override may call pyftpdlib's version of itself through super(), nothing else
        # (a module that imports no pyftpdlib class may have a method of the same name).
        if re.search(r"^from pyftpdlib|^import pyftpdlib|import compat$", text, re.M):
            touched += [name for name in sorted(overridden)
                        if re.search(rf"(?<!super\(\))\.{name}\b", text)]
        if touched:
            offenders[str(path.relative_to(PACKAGE))] = touched
    assert not offenders, f"touch pyftpdlib internals outside ftp/compat.py: {offenders}"


def test_the_default_mlst_facts_are_those_a_new_session_starts_with(channels):
    """REIN puts back ``compat.DEFAULT_MLST_FACTS``: what pyftpdlib starts a session with."""
    control = next(channel for channel in channels if type(channel) is FTPHandler)
    assert tuple(compat.mlst_facts(control)) == compat.DEFAULT_MLST_FACTS


class _ReprCounter:
    """A channel stand-in that counts how often its ``repr`` is made."""

    made = 0

    def __repr__(self) -> str:
        type(self).made += 1
        return "<probe>"


def test_pyftpdlib_debug_lines_make_no_repr_unless_logged(caplog):
    """pyftpdlib's ``debug(msg, channel)`` (at every data channel's close, every transfer's
    start, every passive listener's close) formats ``repr(channel)``, the session's user,
    addresses and directory, before the logger decides to drop the line: the worker makes
    every pyftpdlib module's ``debug`` format only a line DEBUG logs, and that line as
    before."""
    compat.debug_only_when_logged()  # as the worker does at its start
    callers = [module for name, module in sorted(sys.modules.items())
               if name.startswith("pyftpdlib.") and name != "pyftpdlib.log" and
               callable(getattr(module, "debug", None))]
    assert {module.__name__ for module in callers} >= {
        "pyftpdlib.ioloop", "pyftpdlib.handlers.ftp.control", "pyftpdlib.handlers.ftp.data",
        "pyftpdlib.handlers.ftp.dispatchers"}
    for module in callers:
        with caplog.at_level(logging.INFO, logger="pyftpdlib"):
            module.debug("call: close()", _ReprCounter())
        assert _ReprCounter.made == 0, module.__name__
        with caplog.at_level(logging.DEBUG, logger="pyftpdlib"):
            module.debug("call: close()", _ReprCounter())
        assert "[debug] call: close() (<probe>)" in caplog.text, module.__name__
        assert _ReprCounter.made == 1, module.__name__
        _ReprCounter.made = 0
        caplog.clear()
