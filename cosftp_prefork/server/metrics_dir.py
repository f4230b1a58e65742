"""The private directory of the Prometheus multiprocess files, chosen before any metric exists.

prometheus_client decides when it is first imported whether values go to files
(``PROMETHEUS_MULTIPROC_DIR`` set) or stay in memory, and creates the files of the metrics
without labels at that import. So ``cosftpctl run`` prepares the directory and sets the
variable before importing the server: this module must not import prometheus_client. The
directory becomes the workers' user's (``give_to``) only after that import: prometheus_client
opens files following links, and the master's, made as root, must be open before another
process of that user could plant one.
"""

from __future__ import annotations

import os
import stat
from typing import Optional

from ..config.model import Config
from ..safefiles import refuse_link
from .privileges import Identity

ENV = "PROMETHEUS_MULTIPROC_DIR"


def metrics_dir(pid_file: str) -> str:
    """Beside the pid file, like the state file: private to this server."""
    return pid_file + ".metrics"


def use_metrics_dir(config: Config, owner: Optional[Identity] = None) -> Optional[str]:
    """Wipe and select the metrics directory of ``config`` for this process and its
    children, or make sure none is used when the endpoint is off; return it (None: off).
    It is this process's user's, mode 0700, until ``give_to``.

    ``owner``: the workers' user and group when the master runs as root (a directory they
    were given at an earlier start is taken back).
    Call only once no server of this pid file runs: the files of a running one would go.
    Raises ``OSError`` if the directory cannot be made or is not the server's own.
    """
    if not config.operator.metrics_port:
        os.environ.pop(ENV, None)
        return None
    path = metrics_dir(config.server.pid_file)
    refuse_link(path)  # its files are written by prometheus_client, which follows links
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.lstat(path)
    users = {os.geteuid(), owner.uid if owner else os.geteuid()}
    if not stat.S_ISDIR(info.st_mode) or info.st_uid not in users:
        raise OSError(f"{path} is not a directory owned by the server's user")
    if owner is not None:
        os.chown(path, os.geteuid(), os.getegid(), follow_symlinks=False)
    os.chmod(path, 0o700, follow_symlinks=False)
    for name in os.listdir(path):
        if name.endswith((".db", ".tmp")):
            os.unlink(os.path.join(path, name))
    os.environ[ENV] = path
    return path


def give_to(path: Optional[str], owner: Optional[Identity]) -> None:
    """Give the metrics directory at ``path`` (None: metrics off) to ``owner``, the workers'
    user and group (they and the exporter make files in it), once this process's own files
    are open (prometheus_client imported)."""
    if path is not None and owner is not None:
        os.chown(path, owner.uid, owner.gid, follow_symlinks=False)


def hand_over_own_files(path: str, owner: Optional[Identity]) -> None:
    """Give this process's metric files (made when prometheus_client was imported, with
    whatever umask it had) to ``owner``: the exporter, running as it, must read them."""
    if owner is None:
        return
    for name in os.listdir(path):
        if name.endswith(f"_{os.getpid()}.db"):
            os.chown(os.path.join(path, name), owner.uid, owner.gid, follow_symlinks=False)
