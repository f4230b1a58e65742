"""``cosftpctl hash-password``: the scrypt form of a password, for the file."""

from __future__ import annotations

import getpass
import sys

from ...config.passwords import hash_password


def cmd_hash_password() -> int:
    """Print the scrypt form of a password read from the terminal or standard input."""
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("cosftpctl: passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        print("cosftpctl: empty password", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0
