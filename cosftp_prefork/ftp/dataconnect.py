"""The data connection a transfer command uses: PASV, EPSV and EPRT answered as RFC 2428
asks (a network protocol the connection cannot use: 522), PASV refused where it cannot
announce the address, and a transfer command refused without a trustworthy connection."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
from typing import Optional

from . import compat
from .lifecycle import TRANSFER_BUSY
from .passive import CosPassiveDTP, PassiveRangeExhausted

log = logging.getLogger(__name__)

NO_DATA_CONNECTION = "425 Use PASV, EPSV, PORT or EPRT first."


class DataConnectionSetup:
    """Mixin for the control handler: see the module docstring."""

    def transfer_refusal(self) -> Optional[str]:
        """Return the reply refusing a transfer command before it opens a file or asks COS
        anything (450 while another transfer is under way, 425 without a trustworthy data
        connection), or None to run it; the data connection is then the command's."""
        if self._transfer_busy():
            return TRANSFER_BUSY
        return self._claim_data_connection()

    def release_data_connection(self) -> None:
        """Close the data connection a refused transfer command would have used, opened or
        coming (the passive listener and what it holds, PORT's connector, an idle data
        channel): the refusal leaves nothing behind, and the next transfer needs a new
        PASV, EPSV, PORT or EPRT."""
        compat.shut_down_connecting(self)
        if self.data_channel is not None:
            self.data_channel.close()

    def _claim_data_connection(self) -> Optional[str]:
        """Return the reply refusing a transfer command for want of a trustworthy data
        connection (see ``passive``), or None to go on."""
        listener = compat.passive_listener(self)
        if isinstance(listener, CosPassiveDTP):
            refusal = listener.claim()
            if refusal is not None:
                compat.forget_passive_listener(self)
            return refusal
        if self.data_channel is None and not compat.connecting_actively(self):
            return NO_DATA_CONNECTION
        return None

    def _make_epasv(self, extmode: bool = False) -> None:
        if not self.new_data_connection():
            return
        local_ip = self.socket.getsockname()[0]
        if not extmode and ":" in local_ip and not local_ip.startswith("::ffff:"):
            self.respond("425 PASV can only announce an IPv4 address; use EPSV.")
            return
        try:
            super()._make_epasv(extmode)
        except PassiveRangeExhausted:
            compat.forget_passive_listener(self)
            log.warning("all passive ports in use")
            self.respond("425 No free passive port; try again shortly.")

    def ftp_EPSV(self, line: str) -> None:
        """RFC 2428: ``EPSV ALL`` is answered 200 (pyftpdlib answered 220, the greeting's
        code), and a network protocol this connection cannot use 522 with the ones it can."""
        protocol = line.strip().upper()
        if protocol == "ALL":
            compat.set_epsv_only(self)
            self.respond("200 EPSV ALL ok: data connections are set up with EPSV only.")
        elif not self._protocol_refused(protocol, extended_passive=True):
            super().ftp_EPSV(line)

    def ftp_EPRT(self, line: str) -> None:
        """A network protocol this connection cannot use: 522 with the ones it can."""
        fields = line.split(line[0]) if line else []
        if len(fields) == 5 and not compat.epsv_only(self) and \
                self._protocol_refused(fields[1], extended_passive=False):
            return
        super().ftp_EPRT(line)

    def _protocol_refused(self, protocol: str, extended_passive: bool) -> bool:
        """Answer 522 and return True if RFC 2428's network ``protocol`` (1: IPv4, 2:
        IPv6) is one data connections of this session cannot use; the reply lists those
        they can, in the RFC's form ("use (1)"), which clients parse. Anything else than
        a number is left to pyftpdlib (501)."""
        usable = ["2" if self.socket.family == socket.AF_INET6 else "1"]
        if not extended_passive and usable == ["2"] and socket.has_dualstack_ipv6():
            usable.insert(0, "1")  # EPRT to an IPv4 address over an IPv6 connection
        if not protocol.isdigit() or protocol in usable:
            return False
        self.respond(f"522 Network protocol not supported, use ({','.join(usable)}).")
        return True

    def _make_eport(self, ip: str, port: int) -> None:
        """EPRT may spell an IPv6 address in any of its forms: compare the canonical one."""
        if not self.new_data_connection():
            return
        with contextlib.suppress(ValueError):
            address = ipaddress.ip_address(ip)
            if address.version == 6 and address.ipv4_mapped is None:
                ip = str(address)
        super()._make_eport(ip, port)
