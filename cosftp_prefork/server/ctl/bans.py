"""``cosftpctl bans`` and ``unban``: what they read of the configuration file before
``server.banctl`` does the work.

They read only where the server is, the options of the bans and ``[CLUSTER]``
(``locate.locate_bans``), not the accounts: with 5,000 accounts the whole file costs
0.7 s to validate, and an account being edited must not keep an operator from lifting a
ban. Unlike ``status`` or ``stop``, which go on with the defaults of what they cannot use,
they refuse a file whose options they read are unusable, with ``load_config``'s words, as
the full load did: a wrong ``pid_file``, ``ipv6_prefix_length`` or ``redis_url`` would
have them list or lift the bans of another place.
"""

from __future__ import annotations

import sys
from typing import Optional

from ...config.locate import locate_bans
from ...errors import ConfigError
from ..banctl import cmd_bans, cmd_unban
from ..pidfile import Target, find_master

EXIT_CONFIG = 2  # as for any configuration error


def run_bans(config_path: str, unban: bool = False, address: Optional[str] = None) -> int:
    """Run ``bans``, or with ``unban`` ``unban ADDRESS`` (every address: ``address`` None),
    with the file at ``config_path``. Return the command's exit status; 2 if the file
    cannot be read or an option they read cannot be used (each said on stderr)."""
    try:
        found = locate_bans(config_path)
    except ConfigError as exc:
        print(f"cosftpctl: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    for problem in found.problems:
        print(f"cosftpctl: configuration error: {problem}", file=sys.stderr)
    if found.problems:
        return EXIT_CONFIG
    target = Target.located(config_path, found.located)

    def master_pid() -> Optional[int]:
        return find_master(target)
    if unban:
        return cmd_unban(found, address, master_pid)
    return cmd_bans(found, master_pid)
