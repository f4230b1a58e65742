"""``cosftpctl check --online``: each account's credentials tried on COS (the emulator, made to
answer as COS does: ``cosftp_prefork/emulator/accounts.py``), one verdict line per account."""

from __future__ import annotations

import re
import selectors
import socket
import threading

import pytest

from cosftp_prefork.server.ctl.check import ONLINE_THREADS

from .emulator_proc import EmulatorProcess, sdk_client, strict_emulator
from .server_proc import Account, ServerProcess, closed_port

HOME = "home-1250000000"
EAST = "east-1250000000"  # lives in ap-shanghai; the accounts say ap-guangzhou
KEYS = {
    "AKIDowner": {"secret": "owner-key"},
    "AKIDreader": {"secret": "reader-key", "deny": ["PutObject", "InitiateMultipartUpload"]},
    "AKIDnolist": {"secret": "nolist-key", "deny": ["GetBucket"]},
    "AKIDnoread": {"secret": "noread-key", "deny": ["HeadBucket", "GetBucket"]},
    "AKIDnoabort": {"secret": "noabort-key", "deny": ["AbortMultipartUpload"]},
    "AKIDblind": {"secret": "blind-key", "deny": ["GetService"]},
}
SECRETS = [spec["secret"] for spec in KEYS.values()] + ["wrong-key", "stranger-key"]


@pytest.fixture(scope="module")
def cos_accounts():
    """An emulator of its own that knows the keys above and no other."""
    with strict_emulator([HOME, EAST], KEYS, {EAST: "ap-shanghai"}) as emu:
        yield emu


def account(user: str, key: str, bucket: str = HOME, authority: str = "RW", **kw) -> Account:
    return Account(user, "pw", bucket, authority, secret_id=key,
                   secret_key=KEYS.get(key, {}).get("secret", "stranger-key"), **kw)


class SilentEndpoint:
    """A port that accepts connections and never answers; counts them, and the most open at
    once."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.port = self._listener.getsockname()[1]
        self.accepted = self.open = self.most_open = 0
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            for ready, _ in self._selector.select(0.1):
                if ready.fileobj is self._listener:
                    conn, _ = self._listener.accept()
                    self._selector.register(conn, selectors.EVENT_READ)
                    self.accepted += 1
                    self.open += 1
                    self.most_open = max(self.most_open, self.open)
                elif not ready.fileobj.recv(65536):  # the client gave up
                    self._selector.unregister(ready.fileobj)
                    ready.fileobj.close()
                    self.open -= 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()
        self._selector.close()


def check_online(workdir, emu: EmulatorProcess, accounts: list[Account], timeout: float = 5):
    proc = ServerProcess(str(workdir), emu.port, accounts)
    proc.write_config()
    done = proc.ctl("check", "--online", "--timeout", str(timeout), timeout=300)
    lines = {}
    for line in done.stdout.splitlines():
        found = re.match(r"(OK  |FAIL) \[COS_ACCOUNT_(\d+)\] (\S+) ", line)
        if found:
            lines[found.group(3)] = line
    assert len(lines) == len(accounts), done.stdout + done.stderr
    for secret in SECRETS:
        assert secret not in done.stdout + done.stderr
    return done, lines


def test_each_account_gets_its_verdict(cos_accounts, tmp_path):
    silent = SilentEndpoint()
    try:
        done, lines = check_online(tmp_path, cos_accounts, [
            account("fine", "AKIDowner"),
            account("looker", "AKIDreader", authority="R"),
            Account("badkey", "pw", HOME, secret_id="AKIDowner", secret_key="wrong-key"),
            account("stranger", "AKIDstranger"),
            account("nobucket", "AKIDowner", bucket="missing-1250000000"),
            account("elsewhere", "AKIDowner", bucket=EAST),
            account("blind", "AKIDblind", bucket=EAST),
            account("readonly", "AKIDreader"),
            account("nolist", "AKIDnolist"),
            account("noread", "AKIDnoread"),
            account("noabort", "AKIDnoabort"),
            account("refused", "AKIDowner", cos_port=closed_port()),
            account("silent", "AKIDowner", cos_port=silent.port),
        ])
    finally:
        silent.close()
    assert done.returncode == 1, done.stderr
    assert "2 of 13 account(s) passed the online check" in done.stdout
    expected = {
        "fine": ("OK  ", "OK", ""),
        "looker": ("OK  ", "OK", ""),
        "badkey": ("FAIL", "wrong credentials", "SignatureDoesNotMatch"),
        "stranger": ("FAIL", "wrong credentials", "InvalidAccessKeyId"),
        "nobucket": ("FAIL", "no such bucket", "NoSuchBucket"),
        "elsewhere": ("FAIL", "wrong region", "NoSuchBucket"),
        "blind": ("FAIL", "no such bucket", "NoSuchBucket"),
        "readonly": ("FAIL", "no permission to write", "AccessDenied"),
        "nolist": ("FAIL", "no permission to list", "AccessDenied"),
        "noread": ("FAIL", "no permission to read", "AccessDenied"),
        "noabort": ("FAIL", "no permission to write", "AccessDenied"),
        "refused": ("FAIL", "unreachable", ""),
        "silent": ("FAIL", "unreachable", ""),
    }
    for user, (status, verdict, code) in expected.items():
        line = lines[user]
        assert line.startswith(status) and f" {user} " in line, line
        assert f": {verdict}: " in line, line
        if code:
            assert re.search(rf"\({code}, request id [0-9a-f]{{32}}\)$", line), line
    assert f"{HOME} ap-guangzhou" in lines["fine"]
    assert "InitiateMultipartUpload and AbortMultipartUpload allowed" in lines["fine"]
    assert "the bucket is in ap-shanghai: set cos_region = ap-shanghai" in lines["elsewhere"]
    assert "or it is in another region" in lines["blind"]
    assert "connection refused" in lines["refused"]
    assert "no answer within 5 s" in lines["silent"]
    # What the write check leaves: nothing, but the upload the key could not abort.
    owner = sdk_client(cos_accounts, secret_id="AKIDowner", secret_key="owner-key")
    assert "Contents" not in owner.list_objects(Bucket=HOME, Prefix=".cosftp/")
    uploads = owner.list_multipart_uploads(Bucket=HOME, Prefix=".cosftp/check/")
    left = [upload["Key"] for upload in uploads.get("Upload", [])]
    assert len(left) == 1 and f"an upload without parts is left at {left[0]}" in \
        lines["noabort"]


def test_exit_status_0_when_every_account_works(cos_accounts, tmp_path):
    done, lines = check_online(tmp_path, cos_accounts, [
        account("fine", "AKIDowner"), account("looker", "AKIDreader", authority="R")])
    assert done.returncode == 0, done.stdout + done.stderr
    assert all(line.startswith("OK   ") for line in lines.values())
    assert "2 of 2 account(s) passed the online check" in done.stdout


def test_a_wrong_clock_is_told_apart_from_wrong_credentials(cos_accounts, tmp_path):
    cos_accounts.set_accounts(clock_offset=-3600)  # this host's clock is an hour ahead
    try:
        done, lines = check_online(tmp_path, cos_accounts, [account("fine", "AKIDowner")])
    finally:
        cos_accounts.set_accounts(clock_offset=0)
    assert done.returncode == 1
    assert ": clock skew: this host's clock differs from COS's" in lines["fine"]
    assert "(RequestTimeTooSkewed, request id " in lines["fine"]


def test_accounts_are_tried_at_once_each_within_the_timeout(cos_accounts, tmp_path):
    """Accounts at an endpoint that never answers do not wait for one another: the first
    ONLINE_THREADS connect together, and the rest still get their turn when those give up."""
    silent = SilentEndpoint()
    try:
        count = ONLINE_THREADS + 8
        accounts = [account(f"u{i}", "AKIDowner", cos_port=silent.port) for i in range(count)]
        done, lines = check_online(tmp_path, cos_accounts, accounts, timeout=2)
    finally:
        silent.close()
    assert done.returncode == 1
    assert all(": unreachable: no answer within 2 s" in line for line in lines.values())
    assert silent.accepted >= count
    assert silent.most_open >= ONLINE_THREADS


def test_what_cos_says_of_a_buckets_region_is_printed_safe(tmp_path):
    """GetService's answer names the region a bucket lives in, and the verdict quotes it;
    whatever answers at the account's endpoint writes it. Found: a region holding a
    right-to-left override and a C1 CSI (both valid in COS's XML) was printed raw, as COS's
    error codes and request ids never were (``_safe``: only the characters they are made
    of)."""
    odd = "odd-1250000000"
    with strict_emulator([odd], KEYS, {odd: "ap-x\u202e\x9b2J"}) as emu:
        done, lines = check_online(tmp_path, emu, [account("odd", "AKIDowner", bucket=odd)])
    assert "the bucket is in ap-x??2J: set cos_region = ap-x??2J" in lines["odd"], lines
    assert not {"\u202e", "\x9b"} & set(done.stdout + done.stderr), done.stdout
