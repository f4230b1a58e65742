"""A relay in front of the server's FTP port that loses a control connection the moment
its client sends a chosen command: the client then waits for that command's reply on a
connection the server side closed, as after a killed worker, at a place chosen exactly.

Only the control connection goes through the relay; the ``PASV`` replies it passes on name
the server's own data ports, so data connections go straight to the server.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class ControlCutter:
    """Relay ``127.0.0.1:port`` to the server on ``server_port``; close a connection, both
    sides, instead of passing on the first ``cuts`` client lines that start with
    ``command`` (case-insensitive). ``cut`` counts the connections closed so far."""

    def __init__(self, server_port: int, command: str, cuts: int = 1) -> None:
        self.server_port, self.command, self.left = server_port, command.upper(), cuts
        self.cut = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def __enter__(self) -> ControlCutter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            server = socket.create_connection(("127.0.0.1", self.server_port))
            threading.Thread(target=self._pass_replies, args=(server, client),
                             daemon=True).start()
            threading.Thread(target=self._pass_commands, args=(client, server),
                             daemon=True).start()

    def _pass_replies(self, server: socket.socket, client: socket.socket) -> None:
        try:
            while data := server.recv(65536):
                client.sendall(data)
        except OSError:
            pass
        _close(client, server)

    def _pass_commands(self, client: socket.socket, server: socket.socket) -> None:
        """Pass the client's lines on one by one, until the one to cut at."""
        pending = b""
        try:
            while data := client.recv(65536):
                pending += data
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    if self._cuts_at(line):
                        _close(client, server)
                        return
                    server.sendall(line + b"\n")
        except OSError:
            pass
        _close(client, server)

    def _cuts_at(self, line: bytes) -> bool:
        """Whether ``line`` is one of the commands to lose the connection at (counted)."""
        with self._lock:
            if self.left and line.decode("latin-1").upper().startswith(self.command):
                self.left -= 1
                self.cut += 1
                return True
            return False


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
