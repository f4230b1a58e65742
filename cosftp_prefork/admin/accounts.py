"""``GET /api/v1/accounts``: the accounts of the configuration file, never a secret (no
SecretId or SecretKey, no password or its hash); those an auth hook answers with
(``auth_hook_url``, ``auth_hook_command``) exist per login and are not listed (their
sessions are, in ``sessions``); ``GET /api/v1/quotas``: each account's quota (issue 23:
``quota_size``, ``quota_files``) and its home's usage, and each virtual folder's with a
quota (where the accounts mounting it have it), and each home an auth hook's answers gave a
quota (``hook_homes``: bucket, prefix, the latest answer's limits and time), as ``cosftpctl
quota`` shows them.

The usage is what this node's usage table holds (``server.usage``, shared with the workers),
or with ``[CLUSTER]`` the cluster's in Redis (every node's writes and reservations; this
node's table while Redis cannot be read: ``usage_from`` says which, ``cluster_error`` why):
a home nobody used since the master started is not known yet (its first session scans it),
and its ``used`` figures are then ``null``. Accounts rooted in one home share its usage, and
the smallest limit of theirs holds for all of them (``config.quotas``).
"""

from __future__ import annotations

from typing import Any, Optional

from ..config.model import AccountConfig
from ..config.quotas import Usage
from ..server.quotactl import account_usage
from .app import Context, Response


def accounts(context: Context) -> Response:
    return Response(200, {"accounts": [_account(a) for a in context.config.accounts]})


def _account(account: AccountConfig) -> dict[str, Any]:
    return {"user": account.user, "section": account.section, "bucket": account.bucket,
            "prefix": account.prefix or None, "region": account.region,
            "endpoint": account.endpoint, "home_dir": account.home_dir,
            "authority": account.authority, "delete_enable": account.delete_enable,
            "anonymous": account.anonymous_enable, "tls_required": account.tls_required,
            "ftp_encoding": account.ftp_encoding}


def quotas(context: Context) -> Response:
    report = account_usage(context.config, context.state.usage)
    rows, folders = report.rows, report.folders
    return Response(200, {
        "enabled": bool(folders or report.hook_homes) or
        any(row.size_limit or row.files_limit for row in rows),
        "usage_from": report.source, "cluster_error": report.trouble or None,
        "quotas": [{"user": row.user, "unlimited": not (row.size_limit or row.files_limit),
                    **_figures(row.size_limit, row.files_limit, row.usage)} for row in rows],
        "folders": [{"folder": row.folder, "bucket": row.bucket, "prefix": row.prefix or None,
                     "users": list(row.users),
                     **_figures(row.size_limit, row.files_limit, row.usage)}
                    for row in folders],
        "hook_homes": [{"bucket": row.bucket, "prefix": row.prefix or None,
                        "answered": row.answered_at,
                        **_figures(row.size_limit, row.files_limit, row.usage)}
                       for row in report.hook_homes]})


def _figures(size_limit: int, files_limit: int, usage: Optional[Usage]) -> dict[str, Any]:
    # A row made by a reservation before its home's first scan holds no usage yet.
    known = usage if usage and usage.scanned_at else None
    return {"size": {"used": known.used if known else None, "limit": size_limit or None},
            "files": {"used": known.files if known else None, "limit": files_limit or None},
            "reserved_bytes": known.reserved if known else None,
            "scanned": known.scanned_at if known else None}
