"""``cosftpctl check --online``: try each account's credentials on its bucket.

``cosftpctl`` runs ``python -m cosftp_prefork.cos.probe [--timeout S] [--threads N] CONFIG``
in a child process: the process that runs ``cosftpctl`` becomes the master on ``run``, and
the master never loads the COS SDK.

Each account is tried with its own credentials at its own endpoint, as the server uses them:

1. HEAD Bucket: the endpoint answers, the credentials are good, the bucket is there;
2. GET Bucket for one key at the root: list permission, and the error code a HEAD cannot
   carry (COS answers a HEAD without a body);
3. for an account with write authority (``W``): InitiateMultipartUpload of
   ``.cosftp/check/<random>``, then AbortMultipartUpload of it. Nothing is stored (an upload
   without parts holds no data), no object is created or deleted (no notification, no
   version, no replication), and the server's uploads need both permissions anyway. A PUT and
   DELETE of a probe object would leave a delete marker in a versioned bucket and fire
   ObjectCreated/ObjectRemoved events;
4. on 404: GetService (the account's bucket list, ``service.cos.myqcloud.com``) tells a
   bucket of another region, which a COS region answers with ``NoSuchBucket`` too, from one
   that does not exist; a key not allowed GetService cannot tell them apart.

Accounts are tried concurrently (``--threads`` at once), each within ``--timeout`` from its
start: one without an answer by then is reported unreachable and another thread takes the
next account, so 100 accounts at an unreachable endpoint take a few timeouts, not 100.

Output: one line per account in the order of the file, ``OK`` or ``FAIL``, section, user,
bucket, region (or endpoint), verdict, what to do, and COS's error code and request id when
there is one; never a secret. Exit status 0 when every account passes, 1 when one fails, 2
when the configuration cannot be read.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import logging
import re
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from ..config.model import AccountConfig, mounted_folders
from ..config.settings import load_config
from ..errors import ConfigError, NotFound, PermissionDenied, StorageError
from ..paths import RESERVED_NAME
from .bucket import Bucket
from .registry import BucketRegistry

DEFAULT_TIMEOUT = 10.0
DEFAULT_THREADS = 64
PROBE_PREFIX = f"{RESERVED_NAME}/check/"

OK = "OK"
WRONG_CREDENTIALS = "wrong credentials"
CLOCK_SKEW = "clock skew"
NO_SUCH_BUCKET = "no such bucket"
WRONG_REGION = "wrong region"
UNREACHABLE = "unreachable"
NO_READ = "no permission to read"
NO_LIST = "no permission to list"
NO_WRITE = "no permission to write"
FAILED = "error"

_CREDENTIALS = {
    "InvalidAccessKeyId": "COS knows no such SecretId: check cos_secretid",
    "SignatureDoesNotMatch": "the SecretKey does not go with the SecretId: check cos_secretkey",
}
_CLOCK = "this host's clock differs from COS's: synchronise it (NTP)"
# What COS sends back (codes, request ids) is printed: only these characters of it.
_UNSAFE = re.compile(r"[^A-Za-z0-9 ._:=+/@()'-]")
_UNREACHABLE_REASONS = (
    ("Connection refused", "connection refused"),
    ("timed out", "timed out"),
    ("Name or service not known", "the name does not resolve"),
    ("Temporary failure in name resolution", "the name does not resolve"),
    ("CERTIFICATE_VERIFY_FAILED", "its TLS certificate is not trusted"),
)


@dataclass(frozen=True)
class Finding:
    """What the check found for one account."""

    verdict: str
    detail: str
    code: str = ""
    request_id: str = ""

    @property
    def ok(self) -> bool:
        return self.verdict == OK


def _safe(text: str, limit: int = 160) -> str:
    return _UNSAFE.sub("?", text)[:limit]


def report_line(account: AccountConfig, finding: Finding) -> str:
    """The line printed for ``account``: verdict, advice, COS error code and request id."""
    ids = [_safe(finding.code, 64)] if finding.code else []
    if finding.request_id:
        ids.append(f"request id {_safe(finding.request_id, 128)}")
    where = account.region or account.endpoint
    return (f"{'OK  ' if finding.ok else 'FAIL'} [{account.section}] {account.user} "
            f"{account.bucket} {where}: {finding.verdict}: {finding.detail}"
            + (f" ({', '.join(ids)})" if ids else ""))


def _unreachable(error: StorageError) -> Finding:
    text = str(error)
    reason = next((short for marker, short in _UNREACHABLE_REASONS if marker in text),
                  _safe(text.split(": ", 1)[-1], 120))
    return Finding(UNREACHABLE, f"cannot reach COS: {reason}")


def _refusal(error: StorageError, denied: str, action: str) -> Finding:
    """What an error means; ``denied`` is the verdict of an AccessDenied of ``action``."""
    code, request_id = error.code, error.request_id
    if error.status == 0:
        return _unreachable(error)
    if code in _CREDENTIALS:
        return Finding(WRONG_CREDENTIALS, _CREDENTIALS[code], code, request_id)
    if code == "RequestTimeTooSkewed" or (code == "AccessDenied" and "expired" in str(error)):
        return Finding(CLOCK_SKEW, _CLOCK, code, request_id)
    if isinstance(error, PermissionDenied):
        return Finding(denied, f"COS refuses {action} to this key: grant it (CAM policy or "
                       "bucket ACL)", code, request_id)
    return Finding(FAILED, f"{action} failed: {_safe(error.strerror or '', 120)}", code,
                   request_id)


def _missing(bucket: Bucket, account: AccountConfig, error: StorageError) -> Finding:
    """A 404 for the bucket: another region's (GetService lists it there) or none."""
    try:
        listed = bucket.listed_region()  # COS's answer: printed, so only _safe's characters
        region = _safe(listed, 64) if listed else None
        unknown = ""
    except StorageError:
        region = None
        unknown = "; or it is in another region: GetService, which would tell, failed"
    if region and region != account.region:
        fix = f"set cos_region = {region}"
        if account.endpoint:
            fix += f" or a cos_endpoint of {region}"
        return Finding(WRONG_REGION, f"the bucket is in {region}: {fix}", error.code,
                       error.request_id)
    where = account.region or account.endpoint
    return Finding(NO_SUCH_BUCKET, f"COS has no bucket {bucket.name} in {where}: check "
                   f"cos_bucket (<name>-<appid>){unknown}", error.code, error.request_id)


def _try_write(bucket: Bucket) -> Finding:
    key = PROBE_PREFIX + uuid.uuid4().hex
    try:
        upload_id = bucket.create_multipart(key).upload_id
    except StorageError as exc:
        return _refusal(exc, NO_WRITE, "InitiateMultipartUpload (uploads)")
    try:
        bucket.abort_multipart(key, upload_id)
    except StorageError as exc:
        found = _refusal(exc, NO_WRITE, "AbortMultipartUpload (the server aborts failed "
                         "uploads)")
        return dataclasses.replace(found, detail=f"{found.detail}; an upload without parts "
                                   f"is left at {key}")
    return Finding(OK, "HeadBucket, GetBucket (list), InitiateMultipartUpload and "
                   "AbortMultipartUpload allowed")


def probe(bucket: Bucket, account: AccountConfig) -> Finding:
    """Try ``account``'s credentials on its bucket (see the module's docstring)."""
    head_error: Optional[StorageError] = None
    try:
        bucket.head_bucket()
    except StorageError as exc:
        if exc.status == 0:
            return _unreachable(exc)
        head_error = exc  # without an error code: the listing gives one
    try:
        bucket.list_page("", max_keys=1)
    except NotFound as exc:
        return _missing(bucket, account, exc)
    except StorageError as exc:
        if head_error is not None:
            return _refusal(exc, NO_READ, "HeadBucket and GetBucket")
        return _refusal(exc, NO_LIST, "GetBucket (list)")
    if isinstance(head_error, NotFound):
        return _missing(bucket, account, head_error)
    if head_error is not None:
        return _refusal(head_error, NO_READ, "HeadBucket")
    if account.can_write:
        return _try_write(bucket)
    return Finding(OK, "HeadBucket and GetBucket (list) allowed")


def _probe_account(registry: BucketRegistry, account: AccountConfig) -> Finding:
    try:
        return probe(registry.home(account), account)
    except Exception as exc:  # one account's surprise must not hide the others' findings
        return Finding(FAILED, f"{type(exc).__name__}: {_safe(str(exc), 160)}")


def probe_all(accounts: Sequence[AccountConfig], timeout: float = DEFAULT_TIMEOUT,
              threads: int = DEFAULT_THREADS) -> list[Finding]:
    """Probe every account, ``threads`` at once, each within ``timeout`` seconds of its
    start; return the findings in the order of ``accounts``."""
    registry = BucketRegistry(pool_size=threads, timeout=timeout)
    findings: list[Optional[Finding]] = [None] * len(accounts)
    started: dict[int, float] = {}
    waiting = collections.deque(range(len(accounts)))
    changed = threading.Condition()

    def work() -> None:
        while True:
            with changed:
                if not waiting:
                    return
                index = waiting.popleft()
                started[index] = time.monotonic()
            finding = _probe_account(registry, accounts[index])
            with changed:
                if findings[index] is None:
                    findings[index] = finding
                changed.notify_all()

    def add_thread() -> None:
        threading.Thread(target=work, name="probe", daemon=True).start()

    for _ in range(min(threads, len(accounts))):
        add_thread()
    with changed:
        while None in findings:
            now = time.monotonic()
            for index, since in started.items():
                if findings[index] is None and now - since >= timeout:
                    findings[index] = Finding(UNREACHABLE, f"no answer within {timeout:g} s")
                    add_thread()  # the late one may never return: another takes its place
            ends = [since + timeout - now for index, since in started.items()
                    if findings[index] is None]
            changed.wait(max(0.01, min(ends, default=timeout)))
    return [finding for finding in findings if finding is not None]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cosftp_prefork.cos.probe",
        description="Try each account of a configuration on COS (cosftpctl check --online).")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="seconds each account may take (default %(default)s)")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help="accounts tried at once (default %(default)s)")
    parser.add_argument("config", help="configuration file")
    args = parser.parse_args(argv)
    # The SDK logs every error answer (XML and all): the lines below say what matters.
    logging.getLogger().addHandler(logging.NullHandler())
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"cosftpctl: configuration error: {exc}", file=sys.stderr)
        return 2
    # Each virtual folder too, with the credentials of each login that mounts it.
    folders = mounted_folders(config.accounts)
    targets = [*config.accounts, *folders]
    findings = probe_all(targets, args.timeout, max(1, args.threads))
    for account, finding in zip(targets, findings):
        print(report_line(account, finding))
    failed = sum(not finding.ok for finding in findings)
    counted = f" ({len(config.accounts)} account(s), {len(folders)} folder mount(s))" \
        if folders else " account(s)"
    print(f"{config.path}: {len(findings) - failed} of {len(findings)}{counted} passed the "
          "online check")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
