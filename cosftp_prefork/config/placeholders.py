"""Values of ``conf/vsftpd.conf.example`` left in a configuration: ``cosftpctl check`` names them.

A placeholder SecretId or SecretKey (the example's ``XXXXXX``: only X's) can never sign a
request COS accepts, so ``check`` calls it an error (exit status 2). The others are warnings
(``check`` still exits 0): the example's bucket ``examplebucket-<appid>``, the example's
plain passwords (anyone who has read the example knows them) and a ``masquerade_address`` in
an address block reserved for documentation (RFC 5737, RFC 3849), which no client can
reach. ``start`` does not refuse them: an existing file keeps starting, and the other
accounts keep working.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from .model import Config

_PLACEHOLDER_SECRET = re.compile(r"[Xx]+")
EXAMPLE_BUCKET_NAME = "examplebucket"
EXAMPLE_PASSWORDS = frozenset({"pass0", "pass1"})
DOCUMENTATION_NETWORKS = tuple(ipaddress.ip_network(block) for block in (
    "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"))
_SECRETS = {
    "cos_secretid": "is a placeholder (only X's, as in the example): COS refuses every "
                    "request signed with it; put the SecretId of an API key "
                    "(https://console.cloud.tencent.com/cam/capi)",
    "cos_secretkey": "is a placeholder (only X's, as in the example): COS refuses every "
                     "request signed with it; put the SecretKey of the same API key",
}


@dataclass(frozen=True)
class Placeholder:
    """An option that still holds the example's value; ``fatal`` when it cannot work."""

    section: str
    option: str
    problem: str
    fatal: bool

    def describe(self, path: str) -> str:
        return f"{path} [{self.section}] {self.option}: {self.problem}"


def _in_documentation_block(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:  # a host name: cosftpctl check resolves it
        return False
    return any(ip in network for network in DOCUMENTATION_NETWORKS)


def find_placeholders(config: Config) -> list[Placeholder]:
    """Every option of ``config`` that still holds a value of the shipped example."""
    found = []
    for account in config.accounts:
        for option, value in (("cos_secretid", account.secret_id),
                              ("cos_secretkey", account.secret_key)):
            if _PLACEHOLDER_SECRET.fullmatch(value):
                found.append(Placeholder(account.section, option, _SECRETS[option], True))
        if account.bucket.startswith(EXAMPLE_BUCKET_NAME + "-"):
            found.append(Placeholder(account.section, "cos_bucket", f"{account.bucket} is "
                                     "the example's bucket: put your bucket's <name>-<appid> "
                                     "from the COS console", False))
        if account.password in EXAMPLE_PASSWORDS:  # plain text, as a hash never is
            found.append(Placeholder(account.section, "ftp_login_user_password", "is the "
                                     "example's password, known to anyone who has read it: "
                                     "choose another and store its hash (cosftpctl "
                                     "hash-password)", False))
    masquerade = config.network.masquerade_address
    if masquerade and _in_documentation_block(masquerade):
        found.append(Placeholder("NETWORK", "masquerade_address", f"{masquerade} is an "
                                 "address reserved for documentation, which no client can "
                                 "reach: put this server's public address", False))
    return found
