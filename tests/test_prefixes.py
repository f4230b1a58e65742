"""Accounts rooted at a key prefix (``cos_prefix``): tenants sharing one bucket (issue 23).

Three tenants (``ta``, ``tb``, ``tc``) are rooted at ``<root>a/``, ``<root>b/`` and
``<root>c/`` of one bucket, an admin at ``<root>``, and one account at the bucket's root.
``tb`` is hostile: it signs its COS requests with a SecretId of its own, so the emulator can
tell every key the server named on its behalf.
"""

from __future__ import annotations

import ftplib
import io
import os
import posixpath
import subprocess
import time
import uuid
from datetime import datetime

import pytest

from cosftp_prefork.config.settings import load_config

from .conftest import ALPHA, BETA, _close
from .emulator_proc import EmulatorProcess
from .server_proc import (
    Account,
    ServerProcess,
    check_uncommented_example,
    many_accounts,
    wait_until,
)
from .test_commands import get, put

MIB = 1024 * 1024
ROOT = f"tenants-{uuid.uuid4().hex[:8]}/"
HOSTILE_ID = f"hostile-{uuid.uuid4().hex[:8]}"
SECRET = f"secret of tenant a {uuid.uuid4().hex}".encode()
INNER = f"inner secret of tenant a {uuid.uuid4().hex}".encode()
# Names tenant a has; tenant b has none of them (its own are "mine.txt" and "own").
A_NAMES = ("secret.txt", "docs", "inner.txt", "big.bin")


def tenant(user: str, prefix: str, **kwargs) -> Account:
    return Account(user, f"{user}-pw", ALPHA, extra=f"cos_prefix = {prefix}", **kwargs)


ACCOUNTS = [
    tenant("ta", f"{ROOT}a/"),
    tenant("tb", f"{ROOT}b/", secret_id=HOSTILE_ID),
    tenant("tc", f"/{ROOT}c"),  # written as a path: normalised to <root>c/
    tenant("tadmin", ROOT),
    Account("troot", "troot-pw", ALPHA),
]


@pytest.fixture(scope="module")
def tenants(emulator, tmp_path_factory):
    proc = ServerProcess(str(tmp_path_factory.mktemp("tenants")), emulator.port, ACCOUNTS,
                         optional={"max_login_failures": "0"})
    proc.start()
    yield proc
    proc.stop()


def login(server: ServerProcess, user: str) -> ftplib.FTP:
    return server.login(user, f"{user}-pw")


def parts_of(cos, key: str) -> int:
    """Parts COS holds of the one pending upload of ``key`` (0 if there is none)."""
    uploads = [u for u in cos.list_multipart_uploads(Bucket=ALPHA, Prefix=key).get("Upload", [])
               if u["Key"] == key]
    if not uploads:
        return 0
    listing = cos.list_parts(Bucket=ALPHA, Key=key, UploadId=uploads[0]["UploadId"])
    return len(listing.get("Part", []))


def keys_under(cos, prefix: str, bucket: str = ALPHA) -> list[str]:
    found, marker = [], ""
    while True:
        page = cos.list_objects(Bucket=bucket, Prefix=prefix, Marker=marker, MaxKeys=1000)
        found += [item["Key"] for item in page.get("Contents", [])]
        if page.get("IsTruncated") != "true":
            return found
        marker = found[-1]


def park(ftp: ftplib.FTP, cos, home: str, path: str, data: bytes, parts: int) -> None:
    """Send ``data`` to ``path`` in a STOR until COS holds ``parts`` parts, drop both
    connections as a killed client does, and wait for the upload to be parked in ``home``."""
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd(f"STOR {path}")
    conn.sendall(data)
    wait_until(lambda: parts_of(cos, home + path) >= parts, what=f"{parts} parts in COS")
    ftp.sock.close()
    ftp.close()
    conn.close()
    # Parked: its record written, then its live marker deleted (cos/resume.py); a test that
    # takes a snapshot of the bucket afterwards must not list the marker and HEAD it gone.
    wait_until(lambda: keys_under(cos, f"{home}.cosftp/parked/{path}/")
               and not keys_under(cos, f"{home}.cosftp/live/{path}/"),
               what="the upload to be parked")


def state_outside(cos, prefix: str) -> dict:
    """Every object of ``ROOT`` outside ``prefix`` (key -> ETag and MFMT time) and every
    multipart upload there with its parts: what a tenant at ``prefix`` must not change."""
    objects = {}
    for key in keys_under(cos, ROOT):
        if not key.startswith(prefix):
            head = {k.lower(): v for k, v in cos.head_object(Bucket=ALPHA, Key=key).items()}
            objects[key] = (head.get("etag"), head.get("x-cos-meta-mtime"))
    uploads = {(u["Key"], u["UploadId"]): parts_of(cos, u["Key"]) for u in
               cos.list_multipart_uploads(Bucket=ALPHA, Prefix=ROOT).get("Upload", [])
               if not u["Key"].startswith(prefix)}
    return {"objects": objects, "uploads": uploads}


@pytest.fixture(scope="module")
def victim(tenants, cos):
    """Tenant a's files: secret.txt (with an MFMT time), docs/inner.txt, a parked upload of
    big.bin; and one object beside the tenants' homes."""
    ftp = login(tenants, "ta")
    put(ftp, "secret.txt", SECRET)
    ftp.sendcmd("MFMT 20200102030405 secret.txt")
    ftp.mkd("docs")
    put(ftp, "docs/inner.txt", INNER)
    big = os.urandom(3 * MIB + 5)
    park(ftp, cos, f"{ROOT}a/", "big.bin", big, 2)
    cos.put_object(Bucket=ALPHA, Key=f"{ROOT}outside.txt", Body=SECRET)
    return big


# --- the hostile tenant

FILE_PATHS = ["../a/secret.txt", "/../a/secret.txt", "../../a/secret.txt",
              "%2e%2e/a/secret.txt", "..%2fa%2fsecret.txt", ".%2e/a/secret.txt",
              "..\\a\\secret.txt", "/a/secret.txt", f"/{ROOT}a/secret.txt",
              f"../../{ROOT}a/secret.txt", "../outside.txt", f"/{ROOT}outside.txt",
              "../a/docs/inner.txt", "../a/big.bin", "../a/*", "*/secret.txt",
              "../a/.cosftp/mtime", ".cosftp/parked/big.bin", "../.cosftp"]
DIR_PATHS = ["..", "../..", "/..", "../a", "../a/docs", "%2e%2e", f"/{ROOT}a", f"/{ROOT}",
             "*", "../*", "../a/*", "/*/*", "../a/.cosftp", "../a/.cosftp/parked", ".cosftp",
             ".cosftp/mtime", "~", "~ta", "../c"]
READING = ("SIZE", "MDTM", "MLST", "STAT", "HASH", "XCRC", "XMD5", "XSHA1", "XSHA256",
           "XSHA512")
LISTING = ("LIST", "NLST", "MLSD")


class Probe:
    """A hostile session that keeps every reply and every byte the server sent it."""

    def __init__(self, ftp: ftplib.FTP) -> None:
        self.ftp = ftp
        self.seen: list[tuple[str, str, bytes]] = []  # (command, reply, data)

    def send(self, command: str) -> str:
        try:
            reply = self.ftp.sendcmd(command)
        except ftplib.all_errors as exc:
            reply = str(exc)
        self.seen.append((command, reply, b""))
        return reply

    def transfer(self, command: str, data: bytes = b"", rest=None) -> str:
        chunks: list[bytes] = []
        try:
            if command.startswith(("STOR", "APPE")):
                reply = self.ftp.storbinary(command, io.BytesIO(data), rest=rest)
            else:
                reply = self.ftp.retrbinary(command, chunks.append, rest=rest)
        except ftplib.all_errors as exc:
            reply = str(exc)
        self.seen.append((command, reply, b"".join(chunks)))
        return reply

    def told(self) -> list[tuple[str, str, bytes]]:
        """What the server said, less the paths the client wrote itself, as written and as
        a path of its own home (the server may echo those: ``550 /a/x is not
        retrievable`` for ``../a/x``)."""
        told = []
        for command, reply, data in self.seen:
            words = command.split(" ")  # the path is the last word (none holds a space)
            if len(words) > 1:
                for echoed in (words[-1], posixpath.normpath(posixpath.join("/", words[-1]))):
                    reply = reply.replace(echoed, "")
            told.append((command, reply, data))
        return told


def test_a_hostile_tenant_learns_nothing_and_changes_nothing_outside_its_home(
        tenants, victim, emulator, cos):
    """Every command, every way of writing a path out of the home: nothing of tenant a (or
    of the admin's level) is read, listed, named, changed or resumed, no reply names a key
    (the prefix), and no COS request signed with tb's key names a key outside its home, so
    nothing outside can show in the time a reply takes either."""
    before = state_outside(cos, f"{ROOT}b/")
    probe = Probe(login(tenants, "tb"))
    put(probe.ftp, "mine.txt", b"tenant b's own")
    probe.ftp.mkd("own")
    for path in FILE_PATHS:
        for command in READING:
            probe.send(f"{command} {path}")
        probe.transfer(f"RETR {path}")
        probe.transfer(f"RETR {path}", rest=5)
    for path in DIR_PATHS:
        for command in LISTING:
            probe.transfer(f"{command} {path}")
        probe.send(f"MLST {path}")
        probe.send(f"STAT {path}")
        probe.send(f"CWD {path}")
        probe.send("PWD")
        probe.transfer("LIST")
        probe.send(f"XCWD {path}")
        probe.send("XPWD")
        probe.transfer("NLST")
        probe.send("CWD /")
    for _ in range(3):
        probe.send("CDUP")
    assert probe.send("PWD").startswith('257 "/"')
    read = probe.told()
    for command, reply, data in read:
        assert SECRET not in data and INNER not in data, command
        for told in (reply, data.decode("utf-8", "replace")):
            assert ROOT.rstrip("/") not in told, (command, told)
            assert not any(name in told for name in A_NAMES), (command, told)
    listed = [data for command, _, data in read if command.startswith(("NLST", "LIST"))]
    assert any(b"mine.txt" in data for data in listed)  # the probe did list its own home

    for path in FILE_PATHS + DIR_PATHS + ["/", "."]:
        probe.send(f"DELE {path}")
        probe.send(f"RMD {path}")
        probe.send(f"MFMT 20000101000000 {path}")
        probe.send(f"SITE CHMOD 600 {path}")
        probe.send(f"RNFR {path}")
        probe.send("RNTO stolen")
        probe.send("RNFR mine.txt")
        probe.send(f"RNTO {path}")
        probe.send("RNFR own")
        probe.send(f"RNTO {path}/own")
        probe.transfer(f"APPE {path}", b"appended by b")
        probe.transfer(f"STOR {path}", b"overwritten by b", rest=2 * MIB)
        probe.send(f"SIZE {path}")
        probe.transfer(f"STOR {path}", b"overwritten by b")
        probe.send(f"MKD {path}")
        probe.send(f"XMKD {path}/x")
        probe.send(f"XRMD {path}")
        probe.send(f"ALLO 10 {path}")
        probe.transfer(f"STOU {path}", b"unique by b")
    probe.send("SITE QUOTA")
    probe.send("SITE HELP")
    probe.send("RNFR /")
    assert probe.send("RNTO /elsewhere").startswith("5")
    for command, reply, data in probe.told():
        assert SECRET not in data and INNER not in data, command
        assert ROOT.rstrip("/") not in reply, (command, reply)
    probe.ftp.quit()

    assert state_outside(cos, f"{ROOT}b/") == before
    for kind, target, source in emulator.requests_signed_by(HOSTILE_ID):
        assert target.startswith(f"{ROOT}b/") or target == "", (kind, target)
        assert source == "" or source.partition("/")[2].startswith(f"{ROOT}b/"), (kind, source)
    victim_ftp = login(tenants, "ta")  # and tenant a's own files are as they were
    assert get(victim_ftp, "secret.txt") == SECRET
    assert victim_ftp.sendcmd("MDTM secret.txt") == "213 20200102030405"
    offset = victim_ftp.size("big.bin")
    assert offset in (2 * MIB, 3 * MIB)  # the parts COS held when the client vanished
    victim_ftp.storbinary("STOR big.bin", io.BytesIO(victim[offset:]), rest=offset)
    assert get(victim_ftp, "big.bin") == victim
    victim_ftp.quit()


def test_error_replies_name_the_path_not_the_key(tenants, emulator):
    """A COS failure's message names the key it failed on; a tenant is told its own path
    (``/denied.txt``), never the key with the prefix in front."""
    ftp = login(tenants, "tc")
    emulator.set_faults(deny_prefix=f"{ROOT}c/")
    try:
        with pytest.raises(ftplib.error_temp) as failed:
            put(ftp, "denied.txt", b"x" * 10)
    finally:
        emulator.set_faults(deny_prefix="")
    reply = str(failed.value)
    assert "/denied.txt" in reply and "AccessDenied" in reply, reply
    assert ROOT.rstrip("/") not in reply, reply
    _close(ftp)


def test_curl_and_lftp_cannot_reach_another_tenant(tenants, tmp_path):
    """The probes as real clients send them: curl with --path-as-is (no client-side ``..``
    folding) in each of its CWD methods, and lftp's cat, ls, find, glob and get, from tenant
    b's login, of a file and a directory only tenant a has."""
    name, folder = f"only-a-{uuid.uuid4().hex[:8]}.txt", f"dir-of-a-{uuid.uuid4().hex[:8]}"
    owner = login(tenants, "ta")
    put(owner, name, SECRET)
    owner.mkd(folder)
    put(owner, f"{folder}/{name}", INNER)
    owner.quit()
    base = f"ftp://127.0.0.1:{tenants.port}"
    for path in (f"../a/{name}", f"%2e%2e/a/{name}", f"..%2fa%2f{name}",
                 f"%2f{ROOT}a/{name}", f"../a/{folder}/{name}", f"/../../a/{name}"):
        for method in ("multicwd", "nocwd", "singlecwd"):
            done = subprocess.run(["curl", "-sS", "--path-as-is", "--ftp-method", method,
                                   "-u", "tb:tb-pw", f"{base}/{path}"],
                                  capture_output=True, timeout=60)
            assert done.returncode != 0, (path, method)
            assert SECRET not in done.stdout and INNER not in done.stdout, (path, method)
            assert ROOT.rstrip("/").encode() not in done.stderr, done.stderr
    for path in ("../a/", "../", f"../a/{folder}/"):
        listing = subprocess.run(["curl", "-sS", "--path-as-is", "-u", "tb:tb-pw",
                                  f"{base}/{path}"], capture_output=True, timeout=60)
        assert name.encode() not in listing.stdout and folder.encode() not in listing.stdout
    out = tmp_path / "got"

    def lftp(script: str) -> bytes:
        done = subprocess.run(["lftp", "-u", "tb,tb-pw", "-p", str(tenants.port), "-e",
                               f"set cmd:fail-exit no; set net:max-retries 1; {script}; bye",
                               "127.0.0.1"], capture_output=True, timeout=120)
        return done.stdout + done.stderr
    read = lftp(f"cat ../a/{name}; cat /../a/{folder}/{name}; get ../a/{name} -o {out}; "
                f"mirror ../a {tmp_path / 'mirrored'}")
    listed = lftp("cls -1 ../a; cls -1 /; cls -1 ../..; find ..; glob echo ../a/*")
    for told in (read, listed):
        assert SECRET not in told and INNER not in told, told
    assert ROOT.rstrip("/").encode() not in read, read  # (tb's own tree may hold the name)
    assert name.encode() not in listed and folder.encode() not in listed, listed
    assert not out.exists()
    mirrored = [p.name for p in (tmp_path / "mirrored").rglob("*")] \
        if (tmp_path / "mirrored").exists() else []
    assert name not in mirrored and folder not in mirrored


# --- nesting, and the server's own data


def test_an_admin_rooted_above_sees_every_tenant_but_not_their_server_data(tenants, cos):
    tenant_a, tenant_c = login(tenants, "ta"), login(tenants, "tc")
    put(tenant_a, "report.txt", b"from a")
    tenant_a.sendcmd("MFMT 20210101000000 report.txt")  # a marker in a's .cosftp/mtime/
    put(tenant_c, "c.txt", b"from c")
    [marker] = keys_under(cos, f"{ROOT}a/.cosftp/mtime/report.txt#")
    assert not keys_under(cos, f".cosftp/mtime/{ROOT}")  # the bucket root's area has none
    admin, root = login(tenants, "tadmin"), login(tenants, "troot")
    assert {"a", "c"} <= set(admin.nlst("/"))
    assert ".cosftp" not in admin.nlst("/") + admin.nlst("a") + root.nlst(ROOT + "a")
    assert "report.txt" in admin.nlst("a") and "report.txt" in root.nlst(ROOT + "a")
    assert ".cosftp" not in [name for name, _ in admin.mlsd("a")]
    assert get(admin, "a/report.txt") == b"from a"
    put(admin, "c/from-admin.txt", b"from the admin")
    assert get(tenant_c, "from-admin.txt") == b"from the admin"

    hidden = marker[len(ROOT):]  # a/.cosftp/mtime/report.txt#...: a's, as the admin sees it
    for ftp, base in ((admin, ""), (root, ROOT)):
        for command in (f"CWD {base}a/.cosftp", f"SIZE {base}{hidden}", f"DELE {base}{hidden}",
                        f"MDTM {base}{hidden}", f"MLST {base}a/.cosftp"):
            with pytest.raises(ftplib.error_perm, match=r"^55"):
                ftp.sendcmd(command)
        with pytest.raises(ftplib.error_perm, match=r"^55"):
            ftp.nlst(f"{base}a/.cosftp/mtime")
        with pytest.raises(ftplib.error_perm, match=r"^55"):
            get(ftp, f"{base}{hidden}")
        with pytest.raises(ftplib.error_perm, match=r"^553"):
            put(ftp, f"{base}a/.cosftp/planted", b"x")
        with pytest.raises(ftplib.error_perm, match=r"^553"):
            ftp.mkd(f"{base}c/.cosftp")
        ftp.sendcmd(f"RNFR {base}a")  # a's home holds a's server data: it stays where it is
        with pytest.raises(ftplib.error_perm, match=r"^553 .*another account's home"):
            ftp.sendcmd(f"RNTO {base}a-moved")
    assert cos.object_exists(Bucket=ALPHA, Key=marker)
    assert tenant_a.sendcmd("MDTM report.txt") == "213 20210101000000"
    assert "a-moved" not in admin.nlst("/")
    for ftp in (tenant_a, tenant_c, admin, root):
        ftp.quit()


def test_parked_uploads_are_their_accounts_own_whatever_the_user_names(tenants, emulator,
                                                                         tmp_path, cos):
    """Tenant c parks an upload. Nobody else can find, resume or abort it: not another
    server whose account has c's user name but another home, not the admin above (whose
    janitor, on that server, lets parked uploads expire after 2 s), not the bucket's root
    account. Then c resumes it."""
    data = os.urandom(3 * MIB + 11)
    park(login(tenants, "tc"), cos, f"{ROOT}c/", "parked.bin", data, 2)
    [record] = cos.list_objects(Bucket=ALPHA, Prefix=f"{ROOT}c/.cosftp/parked/parked.bin/")[
        "Contents"]
    before = state_outside(cos, f"{ROOT}elsewhere/")
    others = [tenant("tc", f"{ROOT}elsewhere/"), tenant("tadmin", ROOT)]
    with ServerProcess(str(tmp_path), emulator.port, others,
                       optional={"resume_ttl": "2"}) as other:
        attempts = [(login(other, "tc"), "parked.bin"),
                    (login(other, "tadmin"), "c/parked.bin"),
                    (login(tenants, "troot"), f"{ROOT}c/parked.bin")]
        for ftp, path in attempts:
            with pytest.raises(ftplib.error_perm, match=r"^550"):
                ftp.size(path)
            with pytest.raises(ftplib.error_perm, match=r"^55"):
                ftp.storbinary(f"STOR {path}", io.BytesIO(data[2 * MIB:]), rest=2 * MIB)
            ftp.quit()
        parked_at = datetime.fromisoformat(record["LastModified"].replace("Z", "+00:00"))
        parked_at = parked_at.timestamp()
        wait_until(lambda: time.time() > parked_at + 3, what="the record to pass the ttl of 2 s")
        swept = emulator.requests(contains=f"{ROOT}.cosftp/").get("LIST", 0)
        wait_until(lambda: emulator.requests(contains=f"{ROOT}.cosftp/").get("LIST", 0)
                   >= swept + 2, what="the admin's janitor to sweep twice more")
    assert state_outside(cos, f"{ROOT}elsewhere/") == before
    owner = login(tenants, "tc")
    offset = owner.size("parked.bin")
    assert offset in (2 * MIB, 3 * MIB)
    owner.storbinary("STOR parked.bin", io.BytesIO(data[offset:]), rest=offset)
    assert get(owner, "parked.bin") == data
    owner.quit()


def test_names_are_limited_by_what_the_prefix_leaves_of_the_cos_limit(tenants, cos):
    """COS keys have at most 850 bytes, the prefix included: a name that would fit at the
    bucket's root but not under the prefix is refused up front, and nothing is stored."""
    room = 850 - len(f"{ROOT}a/")
    ftp = login(tenants, "ta")
    fits, too_long = "f" * room, "t" * (room + 1)
    with pytest.raises(ftplib.error_perm, match=rf"^553 .*{room} bytes"):
        put(ftp, too_long, b"x")
    with pytest.raises(ftplib.error_perm, match=r"^553"):
        ftp.mkd("d" * room)
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        ftp.size(too_long)
    assert put(ftp, fits, b"fits").startswith("226")
    assert cos.object_exists(Bucket=ALPHA, Key=f"{ROOT}a/{fits}")
    assert not any(key.endswith(too_long) for key in keys_under(cos, ROOT))
    ftp.delete(fits)
    ftp.quit()


# --- configuration


@pytest.mark.parametrize(("value", "problem"), [
    ("a//b", "empty component"), ("../x", r"\.\. components"), ("a/./b", r"\. or \.\."),
    (".cosftp/x", "may not contain .cosftp"), ("x" * 600, "leave room"),
    ("a/\x07b", "control characters")])
def test_check_refuses_a_cos_prefix_that_is_no_directory(emulator, tmp_path, value, problem):
    server = ServerProcess(str(tmp_path), emulator.port, [tenant("bad", value)])
    server.write_config()
    done = server.ctl("check")
    assert done.returncode == 2, done.stdout
    assert "[COS_ACCOUNT_0] cos_prefix" in done.stderr and problem.replace("\\", "") in \
        done.stderr.replace("\\", ""), done.stderr


def test_the_examples_shared_bucket_layout_checks(tmp_path):
    """conf/vsftpd.conf.example shows three tenants and their admin in one bucket, commented
    out; uncommented, with credentials, the file checks and roots them where it says."""
    path, done = check_uncommented_example(tmp_path)
    assert done.returncode == 0 and "OK, 6 account(s)" in done.stdout, done.stderr
    homes = {account.user: account.prefix for account in load_config(path).accounts}
    assert homes == {"user0": "", "user1": "", "alice": "tenants/alice/",
                     "bob": "tenants/bob/", "carol": "tenants/carol/",
                     "tenant-admin": "tenants/"}


def test_cos_prefix_follows_a_reload_and_sessions_keep_their_home(emulator, tmp_path, cos):
    first, second = f"{ROOT}reload-1/", f"{ROOT}reload-2/"
    server = ServerProcess(str(tmp_path), emulator.port, [tenant("mover", first)])
    with server:
        old = login(server, "mover")
        put(old, "before.txt", b"1")
        server.accounts = [tenant("mover", second)]
        server.write_config()
        done = server.ctl("reload")
        assert done.returncode == 0, done.stderr
        new = login(server, "mover")
        put(new, "after.txt", b"2")
        assert new.nlst() == ["after.txt"]
        assert old.nlst() == ["before.txt"]  # the old session keeps its home to its end
        put(old, "late.txt", b"3")
        for ftp in (old, new):
            ftp.quit()
    assert sorted(keys_under(cos, first)) == [f"{first}before.txt", f"{first}late.txt"]
    assert keys_under(cos, second) == [f"{second}after.txt"]


# --- many accounts


def test_five_thousand_accounts_check_start_log_in_and_reload(tmp_path):
    """The figures (time, memory) are in docs/performance.md; here, that it works."""
    shared = f"{ROOT}many/"
    with EmulatorProcess([ALPHA, BETA]) as emulator:
        server = ServerProcess(str(tmp_path), emulator.port,
                               many_accounts(5000, ALPHA, shared, BETA))
        server.write_config()
        done = server.ctl("check")
        assert done.returncode == 0 and "OK, 5000 account(s)" in done.stdout, done.stderr
        with server:
            sessions = {user: login(server, user) for user in ("u0", "u2500", "u4998")}
            for user, ftp in sessions.items():
                put(ftp, "hello.txt", user.encode())
            assert server.ctl("reload").returncode == 0
            for user, ftp in sessions.items():
                assert get(ftp, "hello.txt") == user.encode()  # the reload dropped none
                assert get(login(server, user), "hello.txt") == user.encode()
                ftp.quit()
        local = emulator.client()
        assert sorted(keys_under(local, shared)) == [f"{shared}u0/hello.txt",
                                                      f"{shared}u4998/hello.txt"]
        assert keys_under(local, "", bucket=BETA) == ["hello.txt"]
