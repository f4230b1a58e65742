"""Real command-line FTP clients: lftp, curl and the classic ftp (tnftp)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys

import pytest

from .conftest import ALPHA

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


def lftp_command(server, script: str) -> list[str]:
    """The lftp command line that runs ``script`` as alice on ``server``."""
    settings = "set cmd:fail-exit true; set net:max-retries 1; set ftp:passive-mode true;"
    return [require("lftp"), "-u", "alice,alice-pw", "-p", str(server.port), "-e",
            f"{settings} {script}; bye", "127.0.0.1"]


# lftp converts names from the locale's charset: a C locale would turn unicode into "?".
UTF8_LOCALE = {**os.environ, "LC_ALL": "C.UTF-8"}


def lftp(server, script: str) -> str:
    return run(lftp_command(server, script), env=UTF8_LOCALE)


def test_lftp_put_get_ls_mv_rm(server, tmp_path, area, cos):
    src = tmp_path / "big file.bin"
    src.write_bytes(os.urandom(3 * MIB + 7))
    out = tmp_path / "copy.bin"
    lftp(server, f'mkdir {area}; cd {area}; put "{src}" -o "big file.bin"; '
                 f'mv "big file.bin" moved.bin; get moved.bin -o "{out}"; cls -1')
    assert out.read_bytes() == src.read_bytes()
    listing = lftp(server, f"cls -1 {area}/")
    assert "moved.bin" in listing and "big file.bin" not in listing
    lftp(server, f"rm {area}/moved.bin; rmdir {area}")
    assert cos.object_exists(Bucket=ALPHA, Key=f"{area}/moved.bin") is False


def test_lftp_mirror_upload(server, tmp_path, area):
    tree = tmp_path / "tree"
    for rel in ("a.txt", "sub/b.txt", "sub/deeper/c.txt"):
        path = tree / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rel)
    lftp(server, f'mirror -R "{tree}" {area}')
    back = tmp_path / "back"
    lftp(server, f'mirror {area} "{back}"')
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


def test_lftp_mirror_both_ways_keeps_names_and_modes(server, tmp_path, area):
    """``mirror -R`` sends SITE CHMOD per file and fails the run if it is refused;
    ``mirror`` applies MLSD's unix.mode, which pyftpdlib wrote as 0o644 (mode 0)."""
    tree = tmp_path / "tree"
    make_tree(tree)
    lftp(server, f'mirror -R "{tree}" {area}')  # exit 0 asserted by run()
    back = tmp_path / "back"
    lftp(server, f'mirror {area} "{back}"')
    for rel in TREE:
        assert (back / rel).read_text() == rel
        assert stat.S_IMODE((back / rel).stat().st_mode) == 0o644  # object storage's mode
        assert stat.S_IMODE((back / rel).parent.stat().st_mode) & 0o700 == 0o700
    lftp(server, f'mirror -R "{tree}" {area}')  # a second run, nothing to send, exit 0


def rclone_env(server, tmp_path) -> dict:
    """rclone's ``:ftp:`` backend configured through its environment variables."""
    rclone = shutil.which("rclone", path=os.path.dirname(sys.executable)) or require("rclone")
    obscured = run([rclone, "obscure", "alice-pw"]).strip()
    return {**os.environ, "RCLONE_CONFIG": str(tmp_path / "rclone.conf"),
            "RCLONE_FTP_HOST": "127.0.0.1", "RCLONE_FTP_PORT": str(server.port),
            "RCLONE_FTP_USER": "alice", "RCLONE_FTP_PASS": obscured, "RCLONE_BIN": rclone}


def test_rclone_sync_into_a_new_directory_succeeds_first_time(server, tmp_path, area):
    tree = tmp_path / "tree"
    make_tree(tree)
    env = rclone_env(server, tmp_path)
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


def test_tnftp_mget_expands_wildcards_on_the_server(server, tmp_path, area):
    ftp_bin = require("tnftp")
    put_script = "".join(f"put {tmp_path / name} {name}\n" for name in ("g1.txt", "g2.txt",
                                                                       "h.txt"))
    for name in ("g1.txt", "g2.txt", "h.txt"):
        (tmp_path / name).write_text(name)
    run([ftp_bin, "-n", "-p", "127.0.0.1", str(server.port)],
        stdin=f"user alice alice-pw\nbinary\nmkdir {area}\ncd {area}\n{put_script}bye\n")
    down = tmp_path / "down"
    down.mkdir()
    output = run([ftp_bin, "-n", "-i", "-p", "127.0.0.1", str(server.port)],
                 stdin=f"user alice alice-pw\nbinary\ncd {area}\nmget g*.txt\nbye\n",
                 cwd=down)
    assert sorted(os.listdir(down)) == ["g1.txt", "g2.txt"], output
    assert (down / "g2.txt").read_text() == "g2.txt"


def test_curl_upload_download_and_list(server, tmp_path, area):
    curl = require("curl")
    src = tmp_path / "upload.bin"
    src.write_bytes(os.urandom(MIB + 99))
    base = f"ftp://127.0.0.1:{server.port}/{area}/"
    auth = ["--user", "alice:alice-pw", "--silent", "--show-error"]
    run([curl, *auth, "--ftp-create-dirs", "-T", str(src), base + "upload.bin"])
    out = tmp_path / "download.bin"
    run([curl, *auth, "-o", str(out), base + "upload.bin"])
    assert out.read_bytes() == src.read_bytes()
    assert run([curl, *auth, "--list-only", base]).split() == ["upload.bin"]
    tail = tmp_path / "tail.bin"
    run([curl, *auth, "-r", "1000-", "-o", str(tail), base + "upload.bin"])  # REST + RETR
    assert tail.read_bytes() == src.read_bytes()[1000:]


def test_classic_ftp_client_script(server, tmp_path, area):
    ftp_bin = require("tnftp")
    src = tmp_path / "classic.txt"
    src.write_text("from the classic client\n")
    script = (f"user alice alice-pw\nbinary\nmkdir {area}\ncd {area}\n"
              f"put {src} classic.txt\nascii\nsize classic.txt\nbinary\nls\nget classic.txt "
              f"{tmp_path / 'back.txt'}\nbye\n")
    output = run([ftp_bin, "-n", "-p", "127.0.0.1", str(server.port)], stdin=script)
    assert "classic.txt\t24" in output  # SIZE answered in ASCII mode, the client's default
    assert (tmp_path / "back.txt").read_text() == "from the classic client\n"


def test_curl_and_lftp_create_nested_directories_level_by_level(server, tmp_path, area, cos):
    """MKD needs its parent (issue 13); clients that create trees one level at a time still
    work: curl --ftp-create-dirs, lftp mkdir -p and mirror -R into a new directory."""
    curl = require("curl")
    src = tmp_path / "deep.txt"
    src.write_text("deep")
    auth = ["--user", "alice:alice-pw", "--silent", "--show-error"]
    run([curl, *auth, "--ftp-create-dirs", "-T", str(src),
         f"ftp://127.0.0.1:{server.port}/{area}/c1/c2/c3/deep.txt"])
    for prefix in (f"{area}/", f"{area}/c1/", f"{area}/c1/c2/", f"{area}/c1/c2/c3/"):
        assert cos.object_exists(Bucket=ALPHA, Key=prefix), prefix
    tree = tmp_path / "tree"
    (tree / "x y" / "ünï").mkdir(parents=True)
    (tree / "x y" / "ünï" / "f.txt").write_text("f")
    lftp(server, f'mkdir -p {area}/l1/l2; mirror -R "{tree}" {area}/l1/l2/new')
    assert cos.object_exists(Bucket=ALPHA, Key=f"{area}/l1/l2/new/x y/ünï/f.txt")
