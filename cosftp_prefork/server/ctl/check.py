"""``cosftpctl check``: the file validated, and what else a start would find wrong (the
masquerade name, the workers' user, Redis); with ``--online``, each account tried on COS by
a child process (this one never loads the COS SDK)."""

from __future__ import annotations

import subprocess
import sys
from typing import Optional

from ...config.locations import base_dir
from ...config.masquerade import resolve_masquerade
from ...config.model import Config
from ...config.placeholders import find_placeholders
from ...errors import ConfigError
from ...logfiles import escape_controls
from ..privileges import Identity, describe_workers, probe, workers_identity

ONLINE_TIMEOUT = 10.0
ONLINE_THREADS = 64  # accounts tried at once by check --online
ONLINE_START_MARGIN = 60.0  # for the probe process to start (it imports the SDK)


def cmd_check(config: Config, online: bool = False,
              timeout: float = ONLINE_TIMEOUT) -> int:
    """Validate the file: 2 if it cannot work (options, placeholder credentials, masquerade
    name, Redis), warnings on stderr; then, with ``online``, the probe's verdicts."""
    placeholders = find_placeholders(config)
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for found in placeholders:
        if not found.fatal:
            print(f"warning: {found.describe(config.path)}", file=sys.stderr)
    try:
        resolve_masquerade(config)
        cluster = _check_cluster(config)
        identity = workers_identity(config)
    except ConfigError as exc:  # (Redis's version may be quoted: whatever answered wrote it)
        print(f"cosftpctl: configuration error: {escape_controls(str(exc))}", file=sys.stderr)
        return 2
    fatal = [found for found in placeholders if found.fatal]
    for found in fatal:
        print(f"cosftpctl: configuration error: {found.describe(config.path)}",
              file=sys.stderr)
    if fatal:
        return 2
    tls = f", FTPS with {config.network.tls.certfile}" if config.network.tls else ""
    print(f"{config.path}: OK, {len(config.accounts)} account(s){tls}")
    print(f"relative paths from {base_dir(config.path)}: log_dir {config.server.log_dir}, "
          f"pid_file {config.server.pid_file}")
    _check_identity(identity)
    if cluster:  # what Redis said of itself (its version, its errors): escaped
        print(escape_controls(cluster),
              file=sys.stderr if cluster.startswith("warning") else sys.stdout)
    return _check_online(config, timeout) if online else 0


def _check_online(config: Config, timeout: float) -> int:
    """Run ``cos/probe.py`` in a child process (this process becomes the master on
    ``run``, which never loads the COS SDK); its lines go to our stdout. The child bounds
    each account by ``timeout``; this bounds the child, whatever happens to it."""
    rounds = -(-len(config.accounts) // ONLINE_THREADS)
    limit = ONLINE_START_MARGIN + timeout * (rounds + 1)
    command = [sys.executable, "-m", "cosftp_prefork.cos.probe", "--timeout", str(timeout),
               "--threads", str(ONLINE_THREADS), config.path]
    sys.stdout.flush()  # our lines first: the child writes to the same stdout
    try:
        return subprocess.run(command, timeout=limit, check=False).returncode
    except subprocess.TimeoutExpired:
        print(f"cosftpctl: the online check did not end within {limit:g} s", file=sys.stderr)
        return 1


def _check_identity(identity: Optional[Identity]) -> None:
    """Print who the workers run as and, if they drop privileges, warn when they could not
    import the server's code (the installation, not the file: start refuses then)."""
    print(describe_workers(identity))
    if identity is not None:
        from ..workers import load_worker

        problem = probe(identity, (), (), load_worker)
        if problem:
            print(f"warning: {problem}", file=sys.stderr)


def _check_cluster(config: Config) -> Optional[str]:
    """Ask the [CLUSTER] Redis its version, as a worker does when it starts (raises
    ``ConfigError`` if it is too old); the line to print, if Redis is configured."""
    if not config.cluster.redis_url:
        return None
    from ..cluster import check_config  # redis-py is loaded only when it is needed

    try:
        return check_config(config.cluster)
    except ConfigError as exc:
        raise ConfigError(exc.problem, config.path, exc.section, exc.option) from exc
