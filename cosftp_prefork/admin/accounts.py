"""``GET /api/v1/accounts``: the configured accounts, never a secret (no SecretId or
SecretKey, no password or its hash); ``GET /api/v1/quotas``: each account's usage against its
limits.

Quotas (issue 23) are not in the server yet: every account is listed as unlimited, its usage
unknown (``null``), and ``enabled`` is false. The document's schema has the fields the quota
code fills in once it lands: ``size`` and ``files``, each with ``used`` and ``limit``.
"""

from __future__ import annotations

from typing import Any

from ..config.settings import AccountConfig
from .app import Context, Response


def accounts(context: Context) -> Response:
    return Response(200, {"accounts": [_account(a) for a in context.config.accounts]})


def _account(account: AccountConfig) -> dict[str, Any]:
    return {"user": account.user, "section": account.section, "bucket": account.bucket,
            "region": account.region, "endpoint": account.endpoint,
            "home_dir": account.home_dir, "authority": account.authority,
            "delete_enable": account.delete_enable, "anonymous": account.anonymous_enable,
            "tls_required": account.tls_required, "ftp_encoding": account.ftp_encoding}


def quotas(context: Context) -> Response:
    unknown = {"used": None, "limit": None}
    return Response(200, {"enabled": False, "quotas": [
        {"user": account.user, "unlimited": True, "size": dict(unknown),
         "files": dict(unknown)} for account in context.config.accounts]})
