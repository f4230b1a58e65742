"""The admin API's process as the master sees it (``children``): it serves the port the
master bound, with the master's shared state; replaced at once after each reload (new
tokens and accounts). The API itself (``admin/``) is imported in the forked child only."""

from __future__ import annotations

import socket
from typing import Callable, Optional

from ..config.model import Config
from .children import SupervisedChild
from .scoreboard import SharedState


class AdminProcess(SupervisedChild):
    """The master's view of its admin API process."""

    name = "admin API"
    title = "cosftp: admin API"
    log_name = "admin"

    def __init__(self, sock: socket.socket, state: Callable[[], Optional[SharedState]]) -> None:
        super().__init__(sock)
        self._state = state  # the master's, made after the port is bound

    def serve(self, config: Config, master_pid: int) -> int:
        from ..admin.process import serve_admin  # in the child only: the master stays small

        state = self._state()
        assert self.sock is not None and state is not None
        return serve_admin(self.sock, config, state, master_pid)
