"""Run the COS emulator as a subprocess and hand out real SDK clients for it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Optional

from qcloud_cos import CosConfig, CosS3Client

from cosftp_prefork.config.model import AccountConfig

from .server_proc import wait_until, within


class EmulatorProcess:
    """``python -m cosftp_prefork.emulator.app`` on a free loopback port."""

    def __init__(self, buckets: Sequence[str], region: str = "ap-guangzhou",
                 extra_args: Sequence[str] = ()) -> None:
        self.buckets = list(buckets)
        self.region = region
        self.extra_args = list(extra_args)
        self.port = 0
        self.proc: Optional[subprocess.Popen] = None
        self._dir = tempfile.mkdtemp(prefix="cos-emulator-")

    def start(self) -> EmulatorProcess:
        ready = os.path.join(self._dir, "port")
        # COSFTP_EMULATOR_PYTHON: another interpreter for the emulator, where moto cannot be
        # installed beside the gateway (Python 3.9: botocore holds urllib3 below 2, which the
        # gateway needs; tests/test_oldest_python.py)
        python = os.environ.get("COSFTP_EMULATOR_PYTHON") or sys.executable
        args = [python, "-m", "cosftp_prefork.emulator.app", "--port", "0",
                "--region", self.region, "--ready-file", ready]
        for bucket in self.buckets:
            args += ["--bucket", bucket]
        args += self.extra_args
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        wait_until(lambda: os.path.exists(ready) or self.proc.poll() is not None,
                   timeout=30, what="emulator ready file")
        assert self.proc.poll() is None, f"emulator exited with {self.proc.returncode}"
        with open(ready, encoding="ascii") as handle:
            self.port = int(handle.read())
        return self

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client(self) -> CosS3Client:
        return sdk_client(self, retry=1)

    def set_faults(self, **faults) -> dict:
        """Change injected faults (latency_ms, error_rate, reset_rate, down); return them all."""
        return self._put("faults", faults)

    def set_accounts(self, **accounts) -> dict:
        """Register keys, their denied actions, bucket regions, ``strict``, ``clock_offset``
        (see ``cosftp_prefork/emulator/accounts.py``); return what is registered."""
        return self._put("accounts", accounts)

    def _put(self, what: str, body: dict) -> dict:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/__emulator__/{what}", method="PUT",
            data=json.dumps(body).encode())
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def requests(self, reset: bool = False, contains: str = "") -> dict:
        """COS requests served so far, by kind (``HEAD``, ``GET``, ``LIST``, ``PUT``…), of
        those whose key or listed prefix holds ``contains`` (other tests' servers and
        janitors share the emulator); ``reset`` starts the count again after reading it."""
        query = urllib.parse.urlencode({"contains": contains})
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/__emulator__/requests?{query}",
            method="DELETE" if reset else "GET")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def requests_signed_by(self, secret_id: str) -> list[tuple[str, str, str]]:
        """Every request signed with ``secret_id`` since the last reset, in order: kind, key
        or listed prefix, copy source."""
        return [(entry["kind"], entry["target"], entry["source"])
                for entry in request_log(self.port, signed_by=secret_id)]

    def rendezvous(self, **arm) -> dict:
        """Arm the rendezvous (``contains``, ``parties``, ``timeout``, optionally ``kind`` and
        ``exact``, ``part``: only that UploadPart) if given; return its state (``armed``,
        ``passed``, ``broken``)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/__emulator__/rendezvous",
            method="PUT" if arm else "GET", data=json.dumps(arm).encode() if arm else None)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def connections(self) -> dict:
        """TCP connections the emulator has accepted so far (``accepted``)."""
        return connections(self.port)

    def stop(self) -> Optional[int]:
        shutil.rmtree(self._dir, ignore_errors=True)
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            within(lambda seconds: self.proc.wait(timeout=seconds), 30)
        return self.proc.returncode


@contextlib.contextmanager
def strict_emulator(buckets: Sequence[str], keys: dict,
                    regions: dict[str, str]) -> Iterator[EmulatorProcess]:
    """An emulator of its own that checks requests as COS does: it knows ``keys`` (SecretId
    -> ``{"secret", "deny"/"allow"}``) and no other SecretId, and the buckets of ``regions``
    live in those regions."""
    with EmulatorProcess(buckets) as emu:
        emu.set_accounts(strict=True, keys=keys, buckets=regions)
        yield emu


def connections(port: int) -> dict:
    """What ``GET /__emulator__/connections`` says of the emulator on ``port``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/__emulator__/connections",
                                timeout=10) as response:
        return json.loads(response.read())


def request_log(port: int, contains: str = "", signed_by: Optional[str] = None) -> list[dict]:
    """The emulator's log of requests (``kind``, ``target``, ``start``, ``end``: seconds of
    ``time.monotonic()``, which every process on the machine shares; ``source``, a COPY's;
    ``signer``, the SecretId) whose key or listed prefix holds ``contains`` and, if given,
    that ``signed_by`` signed, oldest first."""
    filters = {"contains": contains, **({"signed_by": signed_by} if signed_by else {})}
    query = urllib.parse.urlencode(filters)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/__emulator__/log?{query}",
                                timeout=10) as response:
        return json.loads(response.read())


def emulator_account(emulator, bucket: str) -> AccountConfig:
    """An account of ``bucket`` whose COS requests go to ``emulator``, as the server's
    configuration makes it."""
    return AccountConfig(section="COS_ACCOUNT_0", secret_id="test-id", secret_key="test-key",
                         bucket=bucket, region=emulator.region, protocol="http", endpoint=None,
                         cos_ip="127.0.0.1", cos_port=emulator.port, home_dir="/", user="t",
                         password="t", authority="RW", delete_enable=True)


def sdk_client(emulator, retry: int = 0, secret_id: str = "test-id",
               secret_key: str = "test-key", region: str = "") -> CosS3Client:
    """The real SDK pointed at ``emulator`` (an ``EmulatorProcess`` or an in-process
    ``Emulator``: anything with ``region``, ``port`` and, optionally, ``host``), signing
    with the given key, for ``region`` (default: the emulator's)."""
    config = CosConfig(Region=region or emulator.region, SecretId=secret_id,
                       SecretKey=secret_key, IP=getattr(emulator, "host", "127.0.0.1"),
                       Port=emulator.port, Scheme="http")
    return CosS3Client(config, retry=retry)


def all_keys(cos: CosS3Client, bucket: str, prefix: str) -> list[str]:
    """Every key of ``bucket`` under ``prefix``, page by page, in key order."""
    keys: list[str] = []
    marker = ""
    while True:
        page = cos.list_objects(Bucket=bucket, Prefix=prefix, Marker=marker, MaxKeys=1000)
        keys += [item["Key"] for item in page.get("Contents", [])]
        if page.get("IsTruncated") != "true":
            return keys
        marker = page.get("NextMarker") or keys[-1]
