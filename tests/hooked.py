"""Servers that ask an auth hook (tests/auth_service.py) about users not in their file, and
the hook's answers: what test_auth_hook.py, test_auth_hook_quotas.py,
test_auth_hook_cluster.py, test_limits.py, test_folders.py and test_hooks_https.py share."""

from __future__ import annotations

import ftplib

import pytest

from .conftest import ALPHA
from .server_proc import Account, ServerProcess

MIB = 1024 * 1024

# The keys a hook's answer may name (cos_credentials) rather than send.
SHARED_KEYS = "\n[COS_CREDENTIALS_shared]\ncos_secretid = shared-id\ncos_secretkey = shared-key\n"
FILE_ACCOUNTS = [Account("filer", "filer-pw", ALPHA, extra=SHARED_KEYS)]


def definition(emulator, bucket: str = ALPHA, **options) -> dict:
    """An account definition as a hook answers it: a [COS_ACCOUNT_N] section's options."""
    return {"cos_bucket": bucket, "cos_region": "ap-guangzhou", "cos_protocol": "http",
            "cos_ip": "127.0.0.1", "cos_port": emulator.port, "cos_secretid": "test-id",
            "cos_secretkey": "test-key", "authority": "RW", **options}


def hooked_server(emulator, tmp_path, url: str, kind: type[ServerProcess] = ServerProcess,
                  **optional: str) -> ServerProcess:
    """A server (of ``kind``, not started) with FILE_ACCOUNTS in its file, asking the hook at
    ``url`` about other users, with [OPTIONAL] ``optional``."""
    # One worker: the cache of yeses is per worker, and the tests count the hook's calls.
    settings = {"auth_hook_url": url, "auth_hook_timeout": "1000", "worker_processes": "1",
                "max_login_failures": "0", **optional}
    return kind(str(tmp_path), emulator.port, FILE_ACCOUNTS, optional=settings)


def refused(server: ServerProcess, user: str, password: str) -> str:
    """The reply to a login that must fail."""
    with pytest.raises(ftplib.Error) as failure:
        server.login(user, password).quit()
    return str(failure.value)


def logs_in(server: ServerProcess, user: str, password: str) -> bool:
    """True if ``user`` logged in (and out again), False if refused (530, or 421: try
    later)."""
    try:
        server.login(user, password).quit()
        return True
    except (ftplib.error_perm, ftplib.error_temp):  # 530, or 421: try later
        return False


def quoted(emulator, prefix: str, **quota) -> dict:
    """An answer rooting its account at ``prefix`` of ALPHA with ``quota``."""
    return definition(emulator, cos_prefix=prefix, **quota)
