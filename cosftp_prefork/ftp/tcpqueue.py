"""How many bytes the kernel still holds for a TCP connection that its peer has not
acknowledged: not sent yet, or sent and not acknowledged (Linux; None where it cannot tell).

* ``unsent(fileno)``: of a socket we hold, by ``SIOCOUTQ`` (``TIOCOUTQ``), one ioctl.
* ``unsent_after_close(...)``: of a connection we closed, which the kernel goes on sending
  until the peer has it all, looked up by its addresses through ``NETLINK_SOCK_DIAG`` (what
  ``ss`` uses; no privilege needed for TCP). Both count the FIN once one is queued.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
from typing import Optional

_OUTQ = getattr(termios, "TIOCOUTQ", None)  # SIOCOUTQ on Linux
_INT = struct.Struct("i")
_UINT = struct.Struct("=I")

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLMSG_ERROR = 2
_NLM_F_REQUEST = 1
_NLMSG = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
# inet_diag_req_v2: family, protocol, extensions, pad, states; then inet_diag_sockid:
# source and destination port (big-endian), addresses (16 bytes each), interface, cookie.
_REQUEST = struct.Struct("=BBBBI")
_PORTS = struct.Struct("!HH")
_TAIL = struct.Struct("=III")
_NO_COOKIE = 0xFFFFFFFF
_ALL_STATES = 0xFFFFFFFF
# inet_diag_msg: family, state, timer, retransmits, the sockid (48 bytes), then expires,
# receive queue, write queue, uid, inode.
_STATE_AT = _NLMSG.size + 1
_WQUEUE_AT = _NLMSG.size + 4 + 48 + 8
_TCP_TIME_WAIT, _TCP_CLOSE, _TCP_LISTEN = 6, 7, 10  # linux/tcp_states.h


def unsent(fileno: int) -> Optional[int]:
    """Unacknowledged bytes of the TCP socket ``fileno``, or None if the system cannot
    tell."""
    if _OUTQ is None or fileno < 0:
        return None
    try:
        return _INT.unpack(fcntl.ioctl(fileno, _OUTQ, bytes(_INT.size)))[0]
    except OSError:
        return None


def unsent_after_close(family: int, local: tuple, peer: tuple) -> Optional[int]:
    """Unacknowledged bytes of the TCP connection from ``local`` to ``peer`` (as
    ``getsockname``/``getpeername`` gave them), which this process may have closed: the FIN
    counts one; 0 once the peer acknowledged everything. None if there is no such
    connection (the peer reset it, or it is long over) or the system cannot tell."""
    if not hasattr(socket, "AF_NETLINK"):
        return None
    try:
        sockid = (_PORTS.pack(local[1], peer[1]) + _packed(family, local[0]) +
                  _packed(family, peer[0]) + _TAIL.pack(0, _NO_COOKIE, _NO_COOKIE))
        request = _REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, _ALL_STATES) + sockid
        header = _NLMSG.pack(_NLMSG.size + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST,
                             1, 0)
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as diag:
            diag.settimeout(1.0)
            diag.send(header + request)
            answer = diag.recv(4096)
    except (OSError, ValueError):
        return None
    if len(answer) < _WQUEUE_AT + 4 or _NLMSG.unpack_from(answer)[1] == _NLMSG_ERROR:
        return None  # ENOENT: no such connection
    state = answer[_STATE_AT]
    if state in (_TCP_CLOSE, _TCP_LISTEN):
        # The look-up falls back on a socket listening on the local port: the connection
        # itself is gone.
        return None
    return 0 if state == _TCP_TIME_WAIT else _UINT.unpack_from(answer, _WQUEUE_AT)[0]


def _packed(family: int, address: str) -> bytes:
    return socket.inet_pton(family, address.split("%", 1)[0]).ljust(16, b"\0")
