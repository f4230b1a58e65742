"""Virtual folders (issue 23): other prefixes and buckets mounted into an account's tree.

``fa`` (rooted at ``<root>home/`` of ALPHA) mounts three folders: ``/shared`` (``<root>team/``
of ALPHA, read-write, which ``fb`` mounts too, at ``/team``), ``/ro`` (``<root>archive/``,
read-only) and ``/far/away`` (``<root>beta/`` of BETA, reached with a SecretId of its own that
the emulator checks and limits to BETA, without delete permission).
"""

from __future__ import annotations

import ftplib
import io
import os
import re
import subprocess
import uuid

import pytest

from cosftp_prefork.config.settings import load_config

from .auth_service import AuthService
from .conftest import ALPHA, BETA, TWO_WORKERS
from .emulator_proc import EmulatorProcess
from .hooked import definition
from .server_proc import (
    Account,
    ServerProcess,
    check_uncommented_example,
    many_accounts,
    mounting,
    wait_until,
)
from .test_clients import Peer, lftp, require, run
from .test_cluster import LoneNode, start_redis
from .test_commands import get, put
from .test_prefixes import keys_under
from .test_quotas import announced_race, park, race, resume_past_a_full_quota, stopped, used
from .test_transfers import curl_put

MIB = 1024 * 1024
ROOT = f"folders-{uuid.uuid4().hex[:8]}/"
FOLDER_ID = f"folder-key-{uuid.uuid4().hex[:8]}"
FOLDER_SECRET = "folder secret"
SECRET = f"beside the folders {uuid.uuid4().hex}".encode()

FOLDERS = f"""
[FOLDER_team]
cos_prefix = {ROOT}team
authority = RW

[FOLDER_fbsub]
cos_prefix = {ROOT}fb/sub
authority = RW

[FOLDER_archive]
cos_prefix = {ROOT}archive
authority = R

[FOLDER_beta]
cos_bucket = {BETA}
cos_region = ap-guangzhou
cos_secretid = {FOLDER_ID}
cos_secretkey = {FOLDER_SECRET}
cos_prefix = {ROOT}beta
authority = RW
delete_enable = false
"""
ACCOUNTS = [
    Account("fa", "fa-pw", ALPHA, extra=f"cos_prefix = {ROOT}home\n"
            "virtual_folders = /shared=team, /ro=archive, /far/away=beta"),
    Account("fb", "fb-pw", ALPHA, extra=f"cos_prefix = {ROOT}fb\n"
            "virtual_folders = /team=team, /me=fbsub"),
]
FA = Peer("fa", "fa-pw")


@pytest.fixture(scope="module")
def folder_key(emulator):
    """The folder of BETA's key: the emulator checks its signatures and keeps it to BETA."""
    emulator.set_accounts(keys={FOLDER_ID: {"secret": FOLDER_SECRET, "buckets": [BETA]}})


@pytest.fixture(scope="module")
def folders(emulator, cos, tmp_path_factory, folder_key):
    cos.put_object(Bucket=ALPHA, Key=f"{ROOT}archive/old.txt", Body=b"archived")
    cos.put_object(Bucket=BETA, Key=f"{ROOT}outside.txt", Body=SECRET)
    cos.put_object(Bucket=ALPHA, Key=f"{ROOT}outside.txt", Body=SECRET)
    proc = ServerProcess(str(tmp_path_factory.mktemp("folders")), emulator.port, ACCOUNTS,
                         optional={"max_login_failures": "0"}, sections=FOLDERS)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def fa(folders):
    ftp = folders.login("fa", "fa-pw")
    yield ftp
    ftp.close()


def files_under_root(cos) -> list[str]:
    """The keys of ``ROOT`` but the server's bookkeeping (MFMT markers of deleted files go
    when a listing finds them stale)."""
    return [key for key in keys_under(cos, ROOT) if "/.cosftp/" not in key]


def mlsd_types(ftp: ftplib.FTP, path: str) -> dict[str, str]:
    return {name: facts["type"] for name, facts in ftp.mlsd(path)}


# --- the tree


def test_listings_show_mount_points_and_the_way_to_them(fa):
    put(fa, "/mine.txt", b"mine")
    assert mlsd_types(fa, "/") == {"mine.txt": "file", "shared": "dir", "ro": "dir",
                                   "far": "dir"}
    assert sorted(fa.nlst("/")) == ["far", "mine.txt", "ro", "shared"]
    lines = []
    fa.retrlines("LIST /", lines.append)
    assert sorted(line.split()[-1] for line in lines if line.startswith("d")) == \
        ["far", "ro", "shared"]
    assert mlsd_types(fa, "/far") == {"away": "dir"}
    assert "type=dir" in fa.sendcmd("MLST /far/away")
    assert "type=dir" in fa.sendcmd("MLST /far")
    fa.cwd("/far/away")
    assert fa.pwd() == "/far/away"
    put(fa, "here.txt", b"here")
    fa.cwd("..")
    assert fa.pwd() == "/far"
    assert fa.nlst("a*") == ["away"]  # a wildcard matches mount points too
    assert mlsd_types(fa, "/ro") == {"old.txt": "file"}


def test_files_in_a_folder_are_the_folders_own(fa, folders, cos):
    """Every command inside a folder works on its prefix, its bookkeeping included; the other
    account mounting the same folder sees the same files."""
    fa.mkd("/shared/dir")
    put(fa, "/shared/dir/a.txt", b"alpha")
    assert cos.get_object(Bucket=ALPHA, Key=f"{ROOT}team/dir/a.txt")["Body"] \
        .get_raw_stream().read() == b"alpha"
    assert fa.size("/shared/dir/a.txt") == 5
    fa.storbinary("APPE /shared/dir/a.txt", io.BytesIO(b"+beta"))
    assert get(fa, "/shared/dir/a.txt") == b"alpha+beta"
    put(fa, "/shared/dir/a.txt", b"alpha")
    fa.sendcmd("MFMT 20210304050607 /shared/dir/a.txt")
    assert fa.sendcmd("MDTM /shared/dir/a.txt") == "213 20210304050607"
    assert any(key.startswith(f"{ROOT}team/.cosftp/") for key in keys_under(cos, ROOT))
    assert not any(key.startswith(f"{ROOT}home/.cosftp/") for key in keys_under(cos, ROOT))
    facts = dict(fa.mlsd("/shared/dir"))["a.txt"]
    assert facts["modify"] == "20210304050607"
    assert fa.sendcmd("HASH /shared/dir/a.txt").startswith("213 SHA-256 0-5 ")
    fb = folders.login("fb", "fb-pw")
    assert get(fb, "/team/dir/a.txt") == b"alpha"
    fb.quit()
    fa.delete("/shared/dir/a.txt")
    fa.rmd("/shared/dir")
    assert not keys_under(cos, f"{ROOT}team/dir/")


def test_each_folder_has_its_own_authority_and_delete_permission(fa, cos):
    assert get(fa, "/ro/old.txt") == b"archived"
    for attempt in (lambda: put(fa, "/ro/new.txt", b"x"), lambda: fa.delete("/ro/old.txt"),
                    lambda: fa.mkd("/ro/d"), lambda: fa.rename("/ro/old.txt", "/ro/o.txt")):
        with pytest.raises(ftplib.error_perm, match="550"):
            attempt()
    put(fa, "/far/away/kept.txt", b"kept")
    with pytest.raises(ftplib.error_perm, match="550"):
        fa.delete("/far/away/kept.txt")
    put(fa, "/far/away/other.txt", b"other")
    with pytest.raises(ftplib.error_perm, match="550 Overwriting by rename needs delete"):
        fa.rename("/far/away/other.txt", "/far/away/kept.txt")
    assert cos.get_object(Bucket=BETA, Key=f"{ROOT}beta/kept.txt")["Body"] \
        .get_raw_stream().read() == b"kept"
    facts = dict(fa.mlsd("/ro"))["old.txt"]
    assert "r" in facts["perm"] and "w" not in facts["perm"]


def mlst_perm(ftp: ftplib.FTP, path: str) -> set[str]:
    """The letters of the ``perm`` fact MLST gives ``path``."""
    return set(re.search(r"perm=([a-z]*);", ftp.sendcmd(f"MLST {path}")).group(1))


def test_mlsd_and_mlst_show_each_folders_permissions(fa):
    """The perm fact (RFC 3659 letters) of a mount point and of what is in a folder is the
    folder's authority and delete_enable, not the home's (RW with delete); a mount point, and
    a directory leading to one, cannot be deleted or renamed (no d, f)."""
    put(fa, "/far/away/perm.txt", b"p")
    put(fa, "/shared/perm.txt", b"p")
    mount_points = {"ro": set("el"), "shared": set("elcmp"), "far": set("elcmp")}
    assert {name: set(facts["perm"]) for name, facts in fa.mlsd("/")
            if name in mount_points} == mount_points
    assert set(dict(fa.mlsd("/far"))["away"]["perm"]) == set("elcm")  # no delete
    for path, letters in {"/ro": "el", "/shared": "elcmp", "/far": "elcmp",
                          "/far/away": "elcm"}.items():
        assert mlst_perm(fa, path) == set(letters), path
    assert set(dict(fa.mlsd("/far/away"))["perm.txt"]["perm"]) == set("afrw")
    assert mlst_perm(fa, "/far/away/perm.txt") == set("afrw")
    assert set(dict(fa.mlsd("/shared"))["perm.txt"]["perm"]) == set("adfrw")
    assert set(dict(fa.mlsd("/ro"))["old.txt"]["perm"]) == mlst_perm(fa, "/ro/old.txt") == {"r"}
    fa.delete("/shared/perm.txt")


@pytest.mark.parametrize("path", ["/shared", "/far", "/far/away"])
def test_mount_points_cannot_be_deleted_renamed_or_written_over(fa, path, cos):
    before = files_under_root(cos)
    for command in (f"DELE {path}", f"RMD {path}"):
        with pytest.raises(ftplib.error_perm, match=r"550 .*cannot be deleted"):
            fa.sendcmd(command)
    fa.sendcmd(f"RNFR {path}")
    with pytest.raises(ftplib.error_perm, match=r"553 .*cannot be renamed"):
        fa.sendcmd("RNTO /elsewhere")
    put(fa, "/victim.txt", b"v")
    fa.sendcmd("RNFR /victim.txt")
    with pytest.raises(ftplib.error_perm, match=r"553 .*cannot be written over"):
        fa.sendcmd(f"RNTO {path}")
    with pytest.raises(ftplib.error_perm, match=r"553 .*cannot be written over"):
        put(fa, path, b"over")
    with pytest.raises(ftplib.error_perm, match=r"550 .*exists"):
        fa.mkd(path)
    fa.delete("/victim.txt")
    assert files_under_root(cos) == before


# --- renames across folders


def test_a_file_renamed_across_folders_is_copied_with_its_time(fa, cos):
    put(fa, "/move-me.txt", b"moving")
    fa.sendcmd("MFMT 20190101000000 /move-me.txt")
    fa.rename("/move-me.txt", "/shared/moved.txt")  # same bucket, another prefix
    assert get(fa, "/shared/moved.txt") == b"moving"
    assert cos.object_exists(Bucket=ALPHA, Key=f"{ROOT}team/moved.txt")
    # The source goes after the reply; a listing that could show it waits for that.
    assert "move-me.txt" not in fa.nlst("/")
    assert not cos.object_exists(Bucket=ALPHA, Key=f"{ROOT}home/move-me.txt")
    assert fa.sendcmd("MDTM /shared/moved.txt") == "213 20190101000000"
    assert dict(fa.mlsd("/shared"))["moved.txt"]["modify"] == "20190101000000"
    put(fa, "/far/away/from-beta.txt", b"beta bytes")
    fa.rename("/far/away/from-beta.txt", "/shared/from-beta.txt")  # another bucket
    assert get(fa, "/shared/from-beta.txt") == b"beta bytes"
    with pytest.raises(ftplib.error_perm, match="550"):
        fa.size("/far/away/from-beta.txt")
    assert not cos.object_exists(Bucket=BETA, Key=f"{ROOT}beta/from-beta.txt")


def test_a_rename_onto_the_same_object_through_another_folder_keeps_it(folders, cos):
    """fb's /me is its own /sub: renaming /sub/f.txt to /me/f.txt names one object twice,
    and must not copy it onto itself and then delete it."""
    fb = folders.login("fb", "fb-pw")
    fb.mkd("/sub")
    put(fb, "/sub/f.txt", b"one object")
    fb.rename("/sub/f.txt", "/me/f.txt")
    assert get(fb, "/me/f.txt") == get(fb, "/sub/f.txt") == b"one object"
    fb.quit()


def test_a_rename_cos_cannot_copy_is_refused_with_the_reason(fa, cos, emulator):
    """The folder of BETA has credentials that may not read ALPHA: 553 naming why, and
    nothing changed on either side."""
    put(fa, "/shared/stay.txt", b"stay")
    with pytest.raises(ftplib.error_perm, match=r"553 .*may not read /shared/stay.txt"):
        fa.rename("/shared/stay.txt", "/far/away/stay.txt")
    assert get(fa, "/shared/stay.txt") == b"stay"
    assert not cos.object_exists(Bucket=BETA, Key=f"{ROOT}beta/stay.txt")


def test_a_directory_rename_across_folders_is_refused_whole(fa, cos):
    fa.mkd("/tree")
    put(fa, "/tree/one.txt", b"1")
    put(fa, "/tree/two.txt", b"2")
    before = files_under_root(cos)
    with pytest.raises(ftplib.error_perm, match=r"553 .*directory"):
        fa.rename("/tree", "/shared/tree")
    assert files_under_root(cos) == before


# --- resume, clients


def test_an_interrupted_upload_into_a_folder_resumes_from_its_own_records(folders, cos):
    ftp = folders.login("fa", "fa-pw")
    data = os.urandom(3 * MIB + 11)
    park(ftp, cos, "/shared/big.bin", f"{ROOT}team/big.bin", data)  # in the folder's .cosftp
    again = folders.login("fa", "fa-pw")
    offset = again.size("/shared/big.bin")
    assert offset in (2 * MIB, 3 * MIB)  # the parts COS held when the client vanished
    again.storbinary("STOR /shared/big.bin", io.BytesIO(data[offset:]), rest=offset)
    assert get(again, "/shared/big.bin") == data
    again.quit()


def test_lftp_mirrors_into_and_out_of_a_folder_and_curl_uses_one(folders, tmp_path, cos):
    tree = tmp_path / "tree"
    for rel in ("a.txt", "sub/b.txt"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(rel)
    lftp(folders, f'mirror -R "{tree}" /far/away/m', FA)
    assert cos.get_object(Bucket=BETA, Key=f"{ROOT}beta/m/sub/b.txt")["Body"] \
        .get_raw_stream().read() == b"sub/b.txt"
    back = tmp_path / "back"
    lftp(folders, f'mirror /far/away/m "{back}"', FA)
    assert (back / "sub" / "b.txt").read_text() == "sub/b.txt"
    url = f"ftp://127.0.0.1:{folders.port}/shared/curl.txt"
    source = tmp_path / "curl.txt"
    source.write_bytes(b"by curl")
    run([require("curl"), "-sS", "-u", "fa:fa-pw", "-T", str(source), url])
    assert run([require("curl"), "-sS", "-u", "fa:fa-pw", url]) == "by curl"
    listing = run([require("curl"), "-sS", "-u", "fa:fa-pw", "--list-only",
                   f"ftp://127.0.0.1:{folders.port}/far/"])
    assert listing.split() == ["away"]


# --- a hostile user


ESCAPES = ["/far/away/../../outside.txt", "/far/away/../../../outside.txt",
           "/far/away/..%2f..%2foutside.txt", "/far/away/%2e%2e/%2e%2e/outside.txt",
           "/far/away/..\\..\\outside.txt", f"/far/away/{ROOT}outside.txt",
           f"/far/away/../{ROOT}outside.txt", "/far/away/.cosftp", "/far/../../outside.txt"]


def test_a_hostile_user_cannot_leave_a_folders_prefix(fa, emulator):
    """Through every command, nothing names a key of BETA outside the folder's prefix with
    the folder's credentials, and nothing outside is read."""
    emulator.requests(reset=True)
    for path in ESCAPES:
        for command in ("SIZE", "MDTM", "MLST", "DELE", "RMD", "HASH", "CWD", "MKD"):
            try:
                reply = fa.sendcmd(f"{command} {path}")
            except ftplib.error_perm as exc:
                reply = str(exc)
            assert SECRET.decode() not in reply
        with pytest.raises(ftplib.error_perm):
            get(fa, path)
        fa.cwd("/")
    named = emulator.requests_signed_by(FOLDER_ID)
    assert named  # the paths that stay inside the folder were asked about, with its key
    for kind, target, source in named:
        assert target.startswith(f"{ROOT}beta/") or target == "", (kind, target)
        assert source == "", (kind, source)


# --- configuration


@pytest.mark.parametrize(("option", "problem"), [
    ("/x=nosuch", "[COS_ACCOUNT_0] virtual_folders: 'nosuch' names no [FOLDER_nosuch]"),
    ("/x=team, /x=archive", "mounts two folders at /x"),
    ("/x=team, /x/y=archive", "/x/y and /x overlap"),
    ("x=team", "'x' is outside /"),
    ("/../x=team", ". or .. components"),
    ("/=team", "/ is the account's own"),
    ("/x", "must be /path=name pairs"),
])
def test_check_names_the_section_and_option_of_a_bad_mount(emulator, tmp_path, option,
                                                           problem):
    server = ServerProcess(str(tmp_path), emulator.port, [
        Account("bad", "bad-pw", ALPHA, extra=f"virtual_folders = {option}")],
        sections=FOLDERS)
    server.write_config()
    done = server.ctl("check")
    assert done.returncode == 2, done.stdout
    assert "[COS_ACCOUNT_0] virtual_folders" in done.stderr and problem in done.stderr, \
        done.stderr


@pytest.mark.parametrize(("options", "problem"), [
    ("cos_bucket = beta-1250000000", "[FOLDER_broken] cos_region"),
    ("quota_size = 10X", "[FOLDER_broken] quota_size"),  # failed before folders had quotas
    ("quota_files = many", "[FOLDER_broken] quota_files")])
def test_check_names_a_folders_bad_option(emulator, tmp_path, options, problem):
    server = ServerProcess(str(tmp_path), emulator.port, [
        Account("bad", "bad-pw", ALPHA, extra="virtual_folders = /x=broken")],
        sections=f"\n[FOLDER_broken]\n{options}\nauthority = RW\n")
    server.write_config()
    done = server.ctl("check")
    assert done.returncode == 2 and problem in done.stderr, done.stderr


@pytest.mark.parametrize("options, problem", [
    ("cos_credentials = nosuch", "[FOLDER_vault] cos_credentials: names no "
     "[COS_CREDENTIALS_<name>] section: 'nosuch'"),
    ("cos_credentials = vault\ncos_secretid = x\ncos_secretkey = y",
     "[FOLDER_vault] cos_credentials: cannot come with cos_secretid or cos_secretkey"),
])
def test_check_names_a_folders_bad_credentials(emulator, tmp_path, options, problem):
    server = ServerProcess(str(tmp_path), emulator.port, [
        Account("bad", "bad-pw", ALPHA, extra="virtual_folders = /v=vault")],
        sections=f"\n[FOLDER_vault]\n{options}\nauthority = RW\n"
                 "[COS_CREDENTIALS_vault]\ncos_secretid = i\ncos_secretkey = k\n")
    server.write_config()
    done = server.ctl("check")
    assert done.returncode == 2 and problem in done.stderr, done.stderr


def vault_sections(secret_id: str, secret: str, prefix: str) -> str:
    """A folder of BETA reached with the keys of [COS_CREDENTIALS_vault]."""
    return f"""
[FOLDER_vault]
cos_bucket = {BETA}
cos_region = ap-guangzhou
cos_credentials = vault
cos_prefix = {prefix}
authority = RW

[COS_CREDENTIALS_vault]
cos_secretid = {secret_id}
cos_secretkey = {secret}
"""


def test_a_folder_uses_a_credentials_section_and_follows_its_reload(emulator, tmp_path, cos):
    """[FOLDER_vault] names [COS_CREDENTIALS_vault] (keys the emulator checks and keeps to
    BETA): a session writes and reads the folder with them; once a reload changes the
    section, new sessions sign with the new keys, a session already in keeps its own."""
    tag = uuid.uuid4().hex[:8]
    old_id, new_id = f"vault-old-{tag}", f"vault-new-{tag}"
    emulator.set_accounts(keys={old_id: {"secret": "old secret", "buckets": [BETA]},
                                new_id: {"secret": "new secret", "buckets": [BETA]}})
    prefix = f"{ROOT}vault-{tag}"
    account = Account("vaulter", "vaulter-pw", ALPHA, extra=f"cos_prefix = {ROOT}vaulter\n"
                      "virtual_folders = /v=vault")
    server = ServerProcess(str(tmp_path), emulator.port, [account],
                           sections=vault_sections(old_id, "old secret", prefix))
    with server:
        old = server.login("vaulter", "vaulter-pw")
        put(old, "/v/before.txt", b"old keys")
        assert get(old, "/v/before.txt") == b"old keys"
        assert cos.get_object(Bucket=BETA, Key=f"{prefix}/before.txt")["Body"] \
            .get_raw_stream().read() == b"old keys"
        assert any(target == f"{prefix}/before.txt"
                   for _, target, _ in emulator.requests_signed_by(old_id))
        server.sections = vault_sections(new_id, "new secret", prefix)
        server.write_config()
        assert server.ctl("reload").returncode == 0
        new = server.login("vaulter", "vaulter-pw")
        put(new, "/v/after.txt", b"new keys")
        assert get(new, "/v/before.txt") == b"old keys"
        signed = [target for _, target, _ in emulator.requests_signed_by(new_id)]
        assert f"{prefix}/after.txt" in signed and f"{prefix}/before.txt" in signed
        put(old, "/v/still.txt", b"old session")  # its folder keeps the keys it had
        assert f"{prefix}/still.txt" in [
            target for _, target, _ in emulator.requests_signed_by(old_id)]
        for ftp in (old, new):
            ftp.quit()


def test_folders_follow_a_reload(emulator, tmp_path, cos):
    account = Account("mover", "mover-pw", ALPHA, extra=f"cos_prefix = {ROOT}mover\n"
                      "virtual_folders = /one=team")
    cos.put_object(Bucket=ALPHA, Key=f"{ROOT}archive/old.txt", Body=b"archived")
    server = ServerProcess(str(tmp_path), emulator.port, [account], sections=FOLDERS)
    with server:
        old = server.login("mover", "mover-pw")
        assert "one" in old.nlst("/")
        server.accounts = [Account("mover", "mover-pw", ALPHA, extra=(
            f"cos_prefix = {ROOT}mover\nvirtual_folders = /two=archive"))]
        server.write_config()
        assert server.ctl("reload").returncode == 0
        new = server.login("mover", "mover-pw")
        assert sorted(new.nlst("/")) == ["two"]
        assert get(new, "/two/old.txt") == b"archived"
        assert "one" in old.nlst("/")  # a session keeps its tree to its end
        for ftp in (old, new):
            ftp.quit()


def test_an_upload_to_a_folder_with_wrong_credentials_fails_cleanly(emulator, tmp_path,
                                                                   folder_key):
    """The emulator checks the folder's signature: a wrong secret gets 550/451, not a
    dropped session, and the account's own tree still works."""
    sections = FOLDERS.replace(f"cos_secretkey = {FOLDER_SECRET}", "cos_secretkey = wrong")
    server = ServerProcess(str(tmp_path), emulator.port, [Account(
        "wrong", "wrong-pw", ALPHA, extra=f"cos_prefix = {ROOT}wrong\n"
        "virtual_folders = /b=beta")], sections=sections)
    with server:
        ftp = server.login("wrong", "wrong-pw")
        with pytest.raises(ftplib.Error, match=r"^(550|451)"):
            put(ftp, "/b/x.txt", b"x")
        put(ftp, "/mine.txt", b"mine")
        assert "mine.txt" in ftp.nlst("/")
        ftp.quit()
        # The log says in which folder the path it names is.
        assert re.search(r"user=wrong ip=\S+ folder=/b\] .*path=/x.txt", server.log_text()), \
            server.log_text()[-3000:]


def test_the_examples_folders_check(tmp_path):
    """conf/vsftpd.conf.example shows alice mounting a prefix of her bucket and a partner's
    bucket, commented out; uncommented, the file checks and mounts them where it says."""
    path, done = check_uncommented_example(tmp_path)
    assert done.returncode == 0 and "FOLDER" not in done.stderr, done.stderr
    alice = next(a for a in load_config(path).accounts if a.user == "alice")
    mounted = {where: alice.mounted(folder) for where, folder in alice.folders}
    assert {where: (a.bucket, a.region, a.prefix, a.authority, a.delete_enable)
            for where, a in mounted.items()} == {
        "/team": ("sharedbucket-1250000000", "ap-guangzhou", "shared/team/", "RW", True),
        "/partner/in": ("partnerbucket-1250000000", "ap-shanghai", "from-alice/", "RW", False)}


def test_check_online_tries_each_folder_with_its_credentials(folders, emulator, tmp_path,
                                                            folder_key):
    done = folders.ctl("check", "--online", "--timeout", "5", timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK   [FOLDER_beta] fa beta-1250000000" in done.stdout, done.stdout
    assert "6 of 6 (2 account(s), 4 folder mount(s)) passed" in done.stdout, done.stdout
    wrong = ServerProcess(str(tmp_path), emulator.port, ACCOUNTS, sections=FOLDERS.replace(
        f"cos_secretkey = {FOLDER_SECRET}", "cos_secretkey = wrong"))
    wrong.write_config()
    done = wrong.ctl("check", "--online", "--timeout", "5", timeout=300)
    assert done.returncode == 1
    assert re.search(r"FAIL \[FOLDER_beta\] fa .*wrong credentials.*SignatureDoesNotMatch",
                     done.stdout), done.stdout
    assert "wrong" not in done.stdout.replace("wrong credentials", "")


def test_check_keeps_anonymous_logins_read_only_in_folders(emulator, tmp_path):
    server = ServerProcess(str(tmp_path), emulator.port, [Account(
        "anonymous", "x", ALPHA, authority="R",
        extra="anonymous_enable = true\nvirtual_folders = /pub=archive, /up=team")],
        sections=FOLDERS)
    server.write_config()
    done = server.ctl("check")
    assert done.returncode == 2
    assert "[COS_ACCOUNT_0] virtual_folders: anonymous access is read-only: [FOLDER_team] at " \
        "/up has authority = RW" in done.stderr, done.stderr


def test_a_rename_across_folders_counts_in_the_quotas_it_enters_and_leaves(emulator, tmp_path):
    """qa (quota 1 MiB) mounts a pool no quota counts, qb mounts qa's own home: a file too
    big for qa's quota stays in the pool (552), a small one counts in qa when it comes and
    stops counting when it leaves, through the pool or into qb."""
    quota_sections = f"""
[FOLDER_qpool]
cos_prefix = {ROOT}q/pool
authority = RW

[FOLDER_qahome]
cos_prefix = {ROOT}q/a
authority = RW
"""
    accounts = [
        Account("qa", "qa-pw", ALPHA, extra=f"cos_prefix = {ROOT}q/a\nquota_size = 1M\n"
                "virtual_folders = /pool=qpool"),
        Account("qb", "qb-pw", ALPHA, extra=f"cos_prefix = {ROOT}q/b\nquota_size = 1M\n"
                "virtual_folders = /a=qahome")]
    with ServerProcess(str(tmp_path), emulator.port, accounts, sections=quota_sections) as server:
        qa, qb = server.login("qa", "qa-pw"), server.login("qb", "qb-pw")
        put(qa, "/pool/big.bin", b"b" * (3 * MIB // 2))
        put(qa, "/pool/small.bin", b"s" * 100)
        with pytest.raises(ftplib.error_perm, match=r"^552 Quota exceeded"):
            qa.sendcmd(f"ALLO {2 * MIB}")  # as without folders: the home's quota
        qa.sendcmd("RNFR /pool/big.bin")
        with pytest.raises(ftplib.error_perm, match=r"^552 Quota exceeded"):
            qa.sendcmd("RNTO /big.bin")
        assert qa.size("/pool/big.bin") == 3 * MIB // 2
        qa.rename("/pool/small.bin", "/small.bin")
        assert used(qa) == (100, 1)
        qa.rename("/small.bin", "/pool/small.bin")
        assert used(qa) == (0, 0)
        qa.rename("/pool/small.bin", "/small.bin")
        qb.rename("/a/small.bin", "/small.bin")  # from qa's home into qb's
        assert used(qb) == (100, 1) and used(qa) == (0, 0)
        # An upload through a folder counts in the quota of the home it lands in.
        assert stopped(qb, "/a/over.bin", b"o" * (3 * MIB // 2)).startswith("552 Quota exceeded")
        put(qb, "/a/fits.bin", b"f" * 1000)
        assert used(qa) == (1000, 1)
        for ftp in (qa, qb):
            ftp.quit()


def counted(emulator, action) -> dict:
    """The COS requests ``action`` sends for this module's keys, by kind."""
    emulator.requests(reset=True)
    action()
    return emulator.requests(contains=ROOT)


def test_folders_cost_no_cos_request_more(fa, emulator):
    """Mount points come from the configuration: listing a directory that holds some costs
    what listing one without does (and one leading only to a mount point, two LISTs at
    once: the home's, and its markers', sent beside it before the home's answers), a
    mount point's MLST and CWD cost nothing, and a command inside a folder what it costs in
    a home (tests/test_request_budget.py)."""
    fa.mkd("/plain")
    put(fa, "/plain/f.txt", b"x" * 1000)
    put(fa, "/f.txt", b"x" * 1000)
    lines: list[str] = []
    plain = counted(emulator, lambda: fa.retrlines("LIST /plain", lines.append))
    assert counted(emulator, lambda: fa.retrlines("LIST /", lines.append)) == plain
    # /far exists only on the way to /far/away: one LIST finds the home has nothing there
    # (the markers' listing went beside it, for nothing here: a request, not a wait).
    assert counted(emulator, lambda: fa.retrlines("LIST /far", lines.append)) == {"LIST": 2}
    assert counted(emulator, lambda: (fa.sendcmd("MLST /far/away"), fa.cwd("/far/away"),
                                      fa.cwd("/"))) == {}
    fa.mkd("/shared/in")
    folder = counted(emulator, lambda: put(fa, "/shared/in/budget.txt", b"x" * 1000))
    home = counted(emulator, lambda: put(fa, "/plain/budget.txt", b"x" * 1000))
    assert folder == home == {"LIST": 2, "PUT": 1}, (folder, home)


def test_five_thousand_accounts_a_fifth_with_a_folder(tmp_path):
    """The account table of a shared-bucket service (tests/server_proc.py many_accounts),
    every fifth account mounting one folder: check, start, logins through the folder of
    accounts on three kinds of home, a reload that drops no session."""
    common = f"{ROOT}common/"
    accounts = mounting(many_accounts(5000, ALPHA, f"{ROOT}many/", BETA), 5, "/common=common")
    section = (f"\n[FOLDER_common]\ncos_bucket = {ALPHA}\ncos_region = ap-guangzhou\n"
               f"cos_prefix = {common}\nauthority = RW\n")
    with EmulatorProcess([ALPHA, BETA]) as emulator:
        server = ServerProcess(str(tmp_path), emulator.port, accounts, sections=section)
        server.write_config()
        done = server.ctl("check")
        assert done.returncode == 0 and "OK, 5000 account(s)" in done.stdout, done.stderr
        with server:
            sessions = {user: server.login(user, f"{user}-pw") for user in ("u0", "u5", "u10")}
            for user, ftp in sessions.items():
                put(ftp, f"/common/{user}.txt", user.encode())
            assert server.ctl("reload").returncode == 0
            for user, ftp in sessions.items():
                assert sorted(ftp.nlst("/common")) == ["u0.txt", "u10.txt", "u5.txt"], user
                ftp.quit()
        assert sorted(keys_under(emulator.client(), common)) == [
            f"{common}u0.txt", f"{common}u10.txt", f"{common}u5.txt"]


@pytest.fixture
def hook():
    service = AuthService().start()
    yield service
    service.stop()


def test_an_auth_hook_account_mounts_the_files_folders(emulator, tmp_path, cos, hook):
    """A hook's answer may name the file's [FOLDER_<name>] sections in virtual_folders, as
    it names [COS_CREDENTIALS_<name>]; a folder the file does not have refuses the login."""
    hook.users["hooked"] = ("hooked-pw", definition(
        emulator, cos_prefix=f"{ROOT}hooked", virtual_folders="/team=team"))
    hook.users["lost"] = ("lost-pw", definition(emulator, virtual_folders="/x=nosuch"))
    settings = {"auth_hook_url": hook.url, "auth_hook_timeout": "1000",
                "worker_processes": "1", "max_login_failures": "0"}
    with ServerProcess(str(tmp_path), emulator.port, ACCOUNTS, optional=settings,
                       sections=FOLDERS) as server:
        ftp = server.login("hooked", "hooked-pw")
        assert "team" in ftp.nlst("/")
        put(ftp, "/team/hooked.txt", b"through the hook")
        ftp.quit()
        assert cos.get_object(Bucket=ALPHA, Key=f"{ROOT}team/hooked.txt")["Body"] \
            .get_raw_stream().read() == b"through the hook"
        with pytest.raises(ftplib.error_perm, match=r"^530"):
            server.login("lost", "lost-pw")
        assert "'nosuch' names no [FOLDER_nosuch]" in server.log_text()


# --- a folder's own quota (quota_size, quota_files in [FOLDER_<name>])

FQ = f"{ROOT}fq/"
QUOTA_FOLDERS = "".join(f"""
[FOLDER_{name}]
cos_prefix = {FQ}{name}
authority = RW
{limits}
""" for name, limits in [("qshare", "quota_size = 2M\nquota_files = 3"),
                         ("qrace", "quota_size = 2M"), ("qallo", "quota_size = 1M"),
                         ("qresume", "quota_size = 4M"), ("qmove", "quota_size = 1M"),
                         ("qscan", "quota_files = 5"), ("qfrom", "")])
QUOTA_ACCOUNTS = [
    Account("qfa", "qfa-pw", ALPHA, extra=f"cos_prefix = {FQ}a\nquota_size = 16M\n"
            "virtual_folders = /pool=qshare, /race=qrace, /allo=qallo, /resume=qresume, "
            "/move=qmove, /scan=qscan, /from=qfrom"),
    Account("qfb", "qfb-pw", ALPHA, extra=f"cos_prefix = {FQ}b\n"
            "virtual_folders = /shared=qshare, /race=qrace, /scan=qscan")]


@pytest.fixture(scope="module")
def fq(emulator, tmp_path_factory):
    # Two workers: racing sessions' reservations meet in the usage table they share.
    with ServerProcess(str(tmp_path_factory.mktemp("fq")), emulator.port, QUOTA_ACCOUNTS,
                       optional={"quota_scan_interval": "0", **TWO_WORKERS},
                       sections=QUOTA_FOLDERS) as proc:
        yield proc


def folder_used(ftp: ftplib.FTP, mount: str) -> tuple[int, int]:
    """Bytes and files SITE QUOTA says the virtual folder at ``mount`` holds."""
    reply = ftp.sendcmd("SITE QUOTA")
    found = re.search(rf"The virtual folder {re.escape(mount)}:\s+size: (\d+) bytes used"
                      r".*\s+files: (\d+) used", reply)
    assert found, reply
    return int(found.group(1)), int(found.group(2))


def test_two_accounts_mounting_one_folder_share_its_quota(fq, cos, tmp_path):
    """qfa's /pool and qfb's /shared are one folder with 2 MiB and 3 files: what one
    writes leaves the other less room; the home around it counts apart; a delete gives the
    room back; curl gets the 552 of a full folder too, both where it crosses the quota
    while sending (its data connection is drained after the reply, so curl, still sending,
    reads the 552 instead of a reset: 70, not 55) and where it is refused before its bytes."""
    a, b = fq.login("qfa", "qfa-pw"), fq.login("qfb", "qfb-pw")
    where = f"{FQ}qshare/"
    put(a, "/home.bin", b"h" * (3 * MIB // 2))  # the home, outside the folder
    assert folder_used(a, "/pool") == (0, 0) and used(a) == (3 * MIB // 2, 1)
    put(a, "/pool/a.bin", b"a" * (3 * MIB // 2))
    assert folder_used(b, "/shared") == (3 * MIB // 2, 1)
    assert used(a) == (3 * MIB // 2, 1)  # not in qfa's home quota
    reply = stopped(b, "/shared/b.bin", b"b" * MIB)
    assert reply.startswith("552 Quota exceeded: the virtual folder /shared holds"), reply
    crossing = tmp_path / "crossing.bin"
    crossing.write_bytes(b"x" * (8 * MIB))
    done = curl_put(fq.port, "qfb", "qfb-pw", crossing, "shared/crossing.bin")
    assert done.returncode == 70, done.stderr[-2000:]  # the 552 after its data
    assert "< 552 Quota exceeded: the virtual folder /shared holds" in done.stderr
    assert [key for key in keys_under(cos, where) if "/.cosftp/" not in key] == [
        f"{where}a.bin"]
    assert not keys_under(cos, f"{where}.cosftp/parked/")  # undone, not parked
    assert not cos.list_multipart_uploads(Bucket=ALPHA, Prefix=where).get("Upload")
    assert folder_used(a, "/pool") == (3 * MIB // 2, 1)  # the stopped upload gave it back
    b.delete("/shared/a.bin")
    assert folder_used(a, "/pool") == (0, 0)
    for name in ("1", "2", "3"):
        put(b if name == "2" else a, f"/{'shared' if name == '2' else 'pool'}/{name}", b"n")
    with pytest.raises(ftplib.error_perm, match=r"^552 .*3 of its 3 files \(quota_files\)"):
        put(b, "/shared/4", b"n")
    source = tmp_path / "c.bin"
    source.write_bytes(b"c" * 1024)
    done = subprocess.run([require("curl"), "-sS", "-u", "qfb:qfb-pw", "-T", str(source),
                           f"ftp://127.0.0.1:{fq.port}/shared/c.bin"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 25 and "552" in done.stderr, done.stderr  # its STOR refused
    assert f"{where}c.bin" not in keys_under(cos, where)
    assert put(b, "/shared/1", b"again").startswith("226")  # replaces: no file more
    assert folder_used(b, "/shared") == (len(b"again") + 2, 3)
    for ftp in (a, b):
        ftp.quit()


def test_two_sessions_of_two_accounts_racing_for_a_folders_last_bytes(fq, cos):
    """Both announce 1.5 MiB of the folder's 2 MiB from their home (where ALLO finds room):
    the first STOR into the folder reserves it, the second is refused before its 150. Then
    both stream 1.5 MiB without ALLO: at most one wins."""
    a, b = fq.login("qfa", "qfa-pw"), fq.login("qfb", "qfb-pw")
    announced_race((a, "/race/a.bin"), (b, "/race/b.bin"), 3 * MIB // 2,
                   "Quota exceeded: the virtual folder /race holds")
    assert folder_used(b, "/race") == (3 * MIB // 2, 1)
    b.delete("/race/a.bin")
    wins = race([(a, "/race/c.bin"), (b, "/race/d.bin")], 3 * MIB // 2)
    assert len(keys_under(cos, f"{FQ}qrace/")) == wins
    assert folder_used(a, "/race")[0] <= 2 * MIB
    for ftp in (a, b):
        ftp.quit()


def test_allo_in_a_folder_answers_for_the_folders_quota(fq, cos):
    """ALLO answers for the quota of the working directory's place: refused in /allo (1 MiB)
    for 2 MiB, accepted at / (qfa's 16 MiB home); the STOR into /allo it announced is then
    refused before its 150, and nothing is stored."""
    a = fq.login("qfa", "qfa-pw")
    a.cwd("/allo")
    with pytest.raises(ftplib.error_perm,
                       match=r"^552 Quota exceeded: the virtual folder /allo holds 0 bytes"):
        a.sendcmd(f"ALLO {2 * MIB}")
    a.sendcmd(f"ALLO {MIB // 2}")
    a.cwd("/")
    a.sendcmd(f"ALLO {2 * MIB}")
    a.voidcmd("TYPE I")
    with pytest.raises(ftplib.error_perm, match=r"^552 Quota exceeded: the virtual folder"):
        a.transfercmd("STOR /allo/big.bin")
    assert keys_under(cos, f"{FQ}qallo/") == []
    assert put(a, "/allo/fits.bin", b"f" * MIB).startswith("226")
    assert folder_used(a, "/allo") == (MIB, 1)
    a.quit()


def test_a_resume_into_a_folder_is_refused_before_its_bytes(fq, cos):
    """A parked upload of 3 MiB in /resume (4 MiB) while another file takes 3 MiB: its
    resume is refused at once (the parked bytes count from its REST) and stays resumable."""
    data = b"p" * (3 * MIB)
    park(fq.login("qfa", "qfa-pw"), cos, "/resume/parked.bin", f"{FQ}qresume/parked.bin",
         data[:2 * MIB + 10])
    ftp = fq.login("qfa", "qfa-pw")
    resume_past_a_full_quota(ftp, "/resume/parked.bin", "/resume/other.bin", data,
                             "Quota exceeded: the virtual folder /resume holds")
    assert folder_used(ftp, "/resume") == (3 * MIB, 1)
    ftp.quit()


def test_renames_into_a_full_folder_are_refused_and_out_of_it_give_back(fq, cos):
    """/move holds 1 MiB: a 1.5 MiB file of the home or of another folder is not copied in
    (552, nothing in the folder's prefix); a small one is, and counts there and no more in
    the home; renamed out again, it counts in the home and no more in the folder."""
    a = fq.login("qfa", "qfa-pw")
    where = f"{FQ}qmove/"
    home_before = used(a)
    put(a, "/big.bin", b"b" * (3 * MIB // 2))
    put(a, "/from/big.bin", b"b" * (3 * MIB // 2))  # a folder without a quota
    for source in ("/big.bin", "/from/big.bin"):
        a.sendcmd(f"RNFR {source}")
        with pytest.raises(ftplib.error_perm,
                           match=r"^552 Quota exceeded: the virtual folder /move holds"):
            a.sendcmd("RNTO /move/big.bin")
        assert a.size(source) == 3 * MIB // 2
    assert keys_under(cos, where) == []
    put(a, "/small.bin", b"s" * 100)
    a.rename("/small.bin", "/move/small.bin")
    assert folder_used(a, "/move") == (100, 1)
    assert used(a) == (home_before[0] + 3 * MIB // 2, home_before[1] + 1)
    a.rename("/move/small.bin", "/small.bin")
    assert folder_used(a, "/move") == (0, 0)
    assert used(a) == (home_before[0] + 3 * MIB // 2 + 100, home_before[1] + 2)
    a.rename("/small.bin", "/move/small.bin")
    a.rename("/move/small.bin", "/from/small.bin")  # into another folder
    assert folder_used(a, "/move") == (0, 0)
    a.rename("/from/small.bin", "/move/small.bin")
    a.delete("/move/small.bin")
    assert folder_used(a, "/move") == (0, 0)
    a.quit()


def test_site_quota_cosftpctl_quota_and_quota_scan_show_a_folder(fq, cos):
    """SITE QUOTA shows the home's and each folder's usage, in the home or in a folder;
    cosftpctl quota lists the folder with the accounts sharing it; a file another tool wrote
    into the folder counts after cosftpctl quota-scan of an account mounting it."""
    b = fq.login("qfb", "qfb-pw")
    put(b, "/scan/one.txt", b"1")
    b.cwd("/scan")
    inside = b.sendcmd("SITE QUOTA")
    b.cwd("/")
    assert b.sendcmd("SITE QUOTA") == inside
    assert "The virtual folder /scan:" in inside and "files: 1 used of 5" in inside, inside
    assert "The virtual folder /shared:" in inside and "of 2 MiB" in inside, inside
    assert "This account's home" not in inside  # qfb's home has no quota
    cos.put_object(Bucket=ALPHA, Key=f"{FQ}qscan/by-another-tool.txt", Body=b"other")
    assert folder_used(b, "/scan") == (1, 1)  # quota_scan_interval = 0: not by itself
    done = fq.ctl("quota-scan", "qfb")
    assert done.returncode == 0, done.stderr
    assert folder_used(b, "/scan") == (6, 2)
    shown = fq.ctl("quota")
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"^qfb\s+no quota", shown.stdout, re.MULTILINE), shown.stdout
    row = next(line for line in shown.stdout.splitlines() if line.startswith("qscan "))
    assert row.split()[1] == "6" and row.split()[-1] == "qfa,qfb", shown.stdout
    assert re.search(r"^qshare\s.*2 MiB.*qfa,qfb$", shown.stdout, re.MULTILINE), shown.stdout
    b.quit()


def test_a_rename_between_two_folders_inside_one_home_keeps_its_count(emulator, tmp_path):
    """Two folders whose prefixes are in qadm's own home (10 MiB): a file renamed from one
    to the other is copied, and stays counted once in the home that holds both."""
    sections = "".join(f"\n[FOLDER_in{name}]\ncos_prefix = {FQ}adm/{name}\nauthority = RW\n"
                       for name in ("x", "y"))
    account = Account("qadm", "qadm-pw", ALPHA, extra=f"cos_prefix = {FQ}adm\n"
                      "quota_size = 10M\nvirtual_folders = /x=inx, /y=iny")
    with ServerProcess(str(tmp_path), emulator.port, [account], sections=sections) as server:
        ftp = server.login("qadm", "qadm-pw")
        put(ftp, "/x/f.bin", b"f" * 1000)
        assert used(ftp) == (1000, 1)
        ftp.rename("/x/f.bin", "/y/f.bin")
        assert get(ftp, "/y/f.bin") == b"f" * 1000
        assert used(ftp) == (1000, 1)
        ftp.delete("/y/f.bin")
        assert used(ftp) == (0, 0)
        ftp.quit()


def test_a_folders_quota_holds_across_nodes_and_is_scanned_again(emulator, tmp_path, cos):
    """Two nodes sharing a Redis ([CLUSTER]), qc1 logged in on one and qc2 on the other,
    both mounting a folder of 2 MiB: what one node stores counts on the other and leaves no
    room there; with quota_scan_interval = 1 a file another tool wrote into the folder
    counts without anyone asking."""
    redis = start_redis(tmp_path)
    sections = f"\n[FOLDER_qcl]\ncos_prefix = {FQ}cluster\nauthority = RW\nquota_size = 2M\n"
    accounts = [Account(user, f"{user}-pw", ALPHA, extra=f"cos_prefix = {FQ}{user}\n"
                        f"virtual_folders = /{mount}=qcl")
                for user, mount in (("qc1", "pool"), ("qc2", "shared"))]
    nodes = []
    try:
        for name in ("fa", "fb"):
            proc = LoneNode(str(tmp_path / name), emulator.port, accounts, sections=sections,
                            optional={"quota_scan_interval": "1"})
            proc.redis_port, proc.name = redis.port, name
            nodes.append(proc.start())
        one, two = nodes[0].login("qc1", "qc1-pw"), nodes[1].login("qc2", "qc2-pw")
        put(one, "/pool/a.bin", b"a" * (3 * MIB // 2))
        assert folder_used(two, "/shared") == (3 * MIB // 2, 1)
        reply = stopped(two, "/shared/b.bin", b"b" * MIB)
        assert reply.startswith("552 Quota exceeded: the virtual folder /shared"), reply
        cos.put_object(Bucket=ALPHA, Key=f"{FQ}cluster/other-tool.bin", Body=b"o" * 100)
        wait_until(lambda: folder_used(one, "/pool") == (3 * MIB // 2 + 100, 2),
                   what="the periodic scan to count the other tool's file")
        assert folder_used(two, "/shared") == (3 * MIB // 2 + 100, 2)
        for ftp in (one, two):
            ftp.quit()
    finally:
        for proc in nodes:
            proc.stop()
        redis.stop()
