"""Real command-line FTP clients: lftp, curl, rclone and the classic ftp (tnftp).

Each runs three times: as alice, whose home is the bucket's root; as an account rooted at a
key prefix (``cos_prefix``), whose files must land under that prefix and nowhere else; and
inside a virtual folder (another bucket's prefix mounted two levels down an account's tree),
whose files must land in the folder's bucket and prefix, not in the account's home."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass

import pytest

from .conftest import ALPHA, BETA, PEER_FOLDER_PREFIX, PEER_MOUNT, TENANT_PREFIX

MIB = 1024 * 1024


def require(tool: str) -> str:
    # Debian puts haproxy in /usr/sbin, which a non-root user's PATH lacks.
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    if path is None:
        if os.environ.get("COSFTP_REQUIRE_CLIENTS"):
            pytest.fail(f"{tool} is not installed (scripts/bootstrap --clients installs it)")
        pytest.skip(f"{tool} is not installed")
    return path


def run(args: list[str], stdin: str = "", timeout: float = 60, **kwargs) -> str:
    done = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=timeout,
                          **kwargs)
    assert done.returncode == 0, f"{args[0]} failed ({done.returncode}): {done.stderr}"
    return done.stdout


@dataclass(frozen=True)
class Peer:
    """An account of the standard server the peer suites run as, and where they work."""

    user: str
    password: str
    prefix: str = ""  # the key prefix where they work: the cos_prefix, or a folder's
    bucket: str = ALPHA  # ... of this bucket
    mount: str = ""  # where that is in the account's tree ("": its home), relative to /
    home: str = ""  # the account's own cos_prefix in ALPHA, if it works in a folder

    def key(self, path: str) -> str:
        """The COS key of ``path`` (relative to the account's home)."""
        assert path.startswith(self.mount), path
        return self.prefix + path[len(self.mount):]

    def misplaced(self, path: str) -> list[tuple[str, str]]:
        """Where (bucket, key) a server mixing up homes and folders would store ``path``."""
        wrong = {(ALPHA, path), (ALPHA, self.home + path)}
        return sorted(wrong - {(self.bucket, self.key(path))})


ALICE = Peer("alice", "alice-pw")
PEERS = {"bucket-root": ALICE, "cos-prefix": Peer("tenant", "tenant-pw", TENANT_PREFIX),
         "virtual-folder": Peer("mounter", "mounter-pw", PEER_FOLDER_PREFIX, BETA,
                                PEER_MOUNT.lstrip("/") + "/", "tenants/mounter/")}


@pytest.fixture(params=list(PEERS))
def peer(request) -> Peer:
    return PEERS[request.param]


@pytest.fixture
def area(area: str, peer: Peer) -> str:
    """The test's directory, in the folder the peer works in."""
    return peer.mount + area


def lftp_command(server, script: str, peer: Peer = ALICE) -> list[str]:
    """The lftp command line that runs ``script`` as ``peer`` on ``server``."""
    settings = "set cmd:fail-exit true; set net:max-retries 1; set ftp:passive-mode true;"
    return [require("lftp"), "-u", f"{peer.user},{peer.password}", "-p", str(server.port),
            "-e", f"{settings} {script}; bye", "127.0.0.1"]


# lftp converts names from the locale's charset: a C locale would turn unicode into "?".
UTF8_LOCALE = {**os.environ, "LC_ALL": "C.UTF-8"}


def lftp(server, script: str, peer: Peer = ALICE) -> str:
    return run(lftp_command(server, script, peer), env=UTF8_LOCALE)


def assert_stored(cos, peer: Peer, *paths: str) -> None:
    """Each of ``paths`` is stored where ``peer`` works, and nowhere a server mixing up
    homes and folders would put it."""
    for path in paths:
        assert cos.object_exists(Bucket=peer.bucket, Key=peer.key(path)), path
        for bucket, key in peer.misplaced(path):
            assert cos.object_exists(Bucket=bucket, Key=key) is False, (bucket, key)


def test_lftp_put_get_ls_mv_rm(server, tmp_path, area, cos, peer):
    src = tmp_path / "big file.bin"
    src.write_bytes(os.urandom(3 * MIB + 7))
    out = tmp_path / "copy.bin"
    lftp(server, f'mkdir {area}; cd {area}; put "{src}" -o "big file.bin"; '
                 f'mv "big file.bin" moved.bin; get moved.bin -o "{out}"; cls -1', peer)
    assert out.read_bytes() == src.read_bytes()
    listing = lftp(server, f"cls -1 {area}/", peer)
    assert "moved.bin" in listing and "big file.bin" not in listing
    assert_stored(cos, peer, f"{area}/moved.bin")
    lftp(server, f"rm {area}/moved.bin; rmdir {area}", peer)
    assert cos.object_exists(Bucket=peer.bucket, Key=peer.key(f"{area}/moved.bin")) is False


def test_lftp_mirror_upload(server, tmp_path, area, cos, peer):
    tree = tmp_path / "tree"
    for rel in ("a.txt", "sub/b.txt", "sub/deeper/c.txt"):
        path = tree / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rel)
    lftp(server, f'mirror -R "{tree}" {area}', peer)
    assert_stored(cos, peer, f"{area}/sub/deeper/c.txt")
    back = tmp_path / "back"
    lftp(server, f'mirror {area} "{back}"', peer)
    for rel in ("a.txt", "sub/b.txt", "sub/deeper/c.txt"):
        assert (back / rel).read_text() == rel


TREE = ("a.txt", "with space/b c.txt", "sub/deeper/c.txt", "中文目录/报告 一.txt",
        "caf\u00e9/na\u00efve.txt")


def make_tree(root) -> None:
    for rel in TREE:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rel)
        path.chmod(0o640)


def test_lftp_mirror_both_ways_keeps_names_and_modes(server, tmp_path, area, cos, peer):
    """``mirror -R`` sends SITE CHMOD per file and fails the run if it is refused;
    ``mirror`` applies MLSD's unix.mode, which pyftpdlib wrote as 0o644 (mode 0)."""
    tree = tmp_path / "tree"
    make_tree(tree)
    lftp(server, f'mirror -R "{tree}" {area}', peer)  # exit 0 asserted by run()
    assert_stored(cos, peer, *(f"{area}/{rel}" for rel in TREE))
    back = tmp_path / "back"
    lftp(server, f'mirror {area} "{back}"', peer)
    for rel in TREE:
        assert (back / rel).read_text() == rel
        assert stat.S_IMODE((back / rel).stat().st_mode) == 0o644  # object storage's mode
        assert stat.S_IMODE((back / rel).parent.stat().st_mode) & 0o700 == 0o700
    lftp(server, f'mirror -R "{tree}" {area}', peer)  # a second run, nothing to send, exit 0


def rclone_env(server, tmp_path, peer: Peer = ALICE) -> dict:
    """rclone's ``:ftp:`` backend configured through its environment variables."""
    rclone = shutil.which("rclone", path=os.path.dirname(sys.executable)) or require("rclone")
    obscured = run([rclone, "obscure", peer.password]).strip()
    return {**os.environ, "RCLONE_CONFIG": str(tmp_path / "rclone.conf"),
            "RCLONE_FTP_HOST": "127.0.0.1", "RCLONE_FTP_PORT": str(server.port),
            "RCLONE_FTP_USER": peer.user, "RCLONE_FTP_PASS": obscured, "RCLONE_BIN": rclone}


def test_rclone_sync_into_a_new_directory_succeeds_first_time(server, tmp_path, area, cos,
                                                              peer):
    tree = tmp_path / "tree"
    make_tree(tree)
    env = rclone_env(server, tmp_path, peer)
    done = subprocess.run([env["RCLONE_BIN"], "sync", str(tree), f":ftp:{area}/new/deeper",
                           "-v", "--retries", "3", "--low-level-retries", "1"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert "Attempt 1/3 failed" not in done.stderr, done.stderr
    back = tmp_path / "back"
    run([env["RCLONE_BIN"], "copy", f":ftp:{area}/new/deeper", str(back)], env=env,
        timeout=120)
    for rel in TREE:
        assert (back / rel).read_text() == rel
    assert_stored(cos, peer, *(f"{area}/new/deeper/{rel}" for rel in TREE))


def test_tnftp_mget_expands_wildcards_on_the_server(server, tmp_path, area, cos, peer):
    ftp_bin = require("tnftp")
    put_script = "".join(f"put {tmp_path / name} {name}\n" for name in ("g1.txt", "g2.txt",
                                                                       "h.txt"))
    for name in ("g1.txt", "g2.txt", "h.txt"):
        (tmp_path / name).write_text(name)
    login = f"user {peer.user} {peer.password}\nbinary\n"
    run([ftp_bin, "-n", "-p", "127.0.0.1", str(server.port)],
        stdin=f"{login}mkdir {area}\ncd {area}\n{put_script}bye\n")
    assert_stored(cos, peer, f"{area}/h.txt")
    down = tmp_path / "down"
    down.mkdir()
    output = run([ftp_bin, "-n", "-i", "-p", "127.0.0.1", str(server.port)],
                 stdin=f"{login}cd {area}\nmget g*.txt\nbye\n", cwd=down)
    assert sorted(os.listdir(down)) == ["g1.txt", "g2.txt"], output
    assert (down / "g2.txt").read_text() == "g2.txt"


def test_curl_upload_download_and_list(server, tmp_path, area, cos, peer):
    curl = require("curl")
    src = tmp_path / "upload.bin"
    src.write_bytes(os.urandom(MIB + 99))
    base = f"ftp://127.0.0.1:{server.port}/{area}/"
    auth = ["--user", f"{peer.user}:{peer.password}", "--silent", "--show-error"]
    run([curl, *auth, "--ftp-create-dirs", "-T", str(src), base + "upload.bin"])
    out = tmp_path / "download.bin"
    run([curl, *auth, "-o", str(out), base + "upload.bin"])
    assert out.read_bytes() == src.read_bytes()
    assert run([curl, *auth, "--list-only", base]).split() == ["upload.bin"]
    tail = tmp_path / "tail.bin"
    run([curl, *auth, "-r", "1000-", "-o", str(tail), base + "upload.bin"])  # REST + RETR
    assert tail.read_bytes() == src.read_bytes()[1000:]
    assert_stored(cos, peer, f"{area}/upload.bin")


def test_classic_ftp_client_script(server, tmp_path, area, cos, peer):
    ftp_bin = require("tnftp")
    src = tmp_path / "classic.txt"
    src.write_text("from the classic client\n")
    script = (f"user {peer.user} {peer.password}\nbinary\nmkdir {area}\ncd {area}\n"
              f"put {src} classic.txt\nascii\nsize classic.txt\nbinary\nls\nget classic.txt "
              f"{tmp_path / 'back.txt'}\nbye\n")
    output = run([ftp_bin, "-n", "-p", "127.0.0.1", str(server.port)], stdin=script)
    assert "classic.txt\t24" in output  # SIZE answered in ASCII mode, the client's default
    assert (tmp_path / "back.txt").read_text() == "from the classic client\n"
    assert_stored(cos, peer, f"{area}/classic.txt")


def test_curl_and_lftp_create_nested_directories_level_by_level(server, tmp_path, area, cos,
                                                                peer):
    """MKD needs its parent (issue 13); clients that create trees one level at a time still
    work: curl --ftp-create-dirs, lftp mkdir -p and mirror -R into a new directory."""
    curl = require("curl")
    src = tmp_path / "deep.txt"
    src.write_text("deep")
    auth = ["--user", f"{peer.user}:{peer.password}", "--silent", "--show-error"]
    run([curl, *auth, "--ftp-create-dirs", "-T", str(src),
         f"ftp://127.0.0.1:{server.port}/{area}/c1/c2/c3/deep.txt"])
    assert_stored(cos, peer, f"{area}/", f"{area}/c1/", f"{area}/c1/c2/", f"{area}/c1/c2/c3/")
    tree = tmp_path / "tree"
    (tree / "x y" / "ünï").mkdir(parents=True)
    (tree / "x y" / "ünï" / "f.txt").write_text("f")
    lftp(server, f'mkdir -p {area}/l1/l2; mirror -R "{tree}" {area}/l1/l2/new', peer)
    assert_stored(cos, peer, f"{area}/l1/l2/new/x y/ünï/f.txt")
