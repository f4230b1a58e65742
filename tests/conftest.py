"""Shared fixtures: one COS emulator process and one standard server for the session."""

from __future__ import annotations

import base64
import collections
import hashlib
import re
import uuid
from collections.abc import Iterator

import psutil
import pytest

from .auth_service import AuthService
from .emulator_proc import EmulatorProcess
from .server_proc import Account, ServerProcess, deadline_scale, tls_network
from .tls_clients import write_certificate

ALPHA = "alpha-1250000000"
BETA = "beta-1250000000"

# The home of the standard server's account rooted at a prefix of ALPHA (test_clients.py runs
# the peer suites both as alice, at the bucket's root, and as it).
TENANT_PREFIX = "tenants/peer/"
# ...and inside a virtual folder: the standard server's account "mounter" (rooted at a prefix
# of ALPHA) mounts this prefix of BETA at PEER_MOUNT.
PEER_FOLDER_PREFIX = "peers/folder/"
PEER_MOUNT = "/mnt/in"
PEER_FOLDER = f"""
[FOLDER_peers]
cos_bucket = {BETA}
cos_region = ap-guangzhou
cos_prefix = {PEER_FOLDER_PREFIX}
authority = RW
"""
MOUNTER = Account("mounter", "mounter-pw", ALPHA, "RW",
                  extra=f"cos_prefix = tenants/mounter/\nvirtual_folders = {PEER_MOUNT}=peers")

STANDARD_ACCOUNTS = [
    Account("alice", "alice-pw", ALPHA, "RW"),
    Account("reader", "reader-pw", ALPHA, "R"),
    Account("writer", "writer-pw", ALPHA, "W"),
    Account("keeper", "keeper-pw", ALPHA, "RW", delete_enable=False),
    Account("bob", "bob-pw", BETA, "RW"),
    Account("tenant", "tenant-pw", ALPHA, "RW", extra=f"cos_prefix = {TENANT_PREFIX}"),
]


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item):
    """pytest-timeout's guard (pyproject.toml: 120 s) against a hung test stretches with the
    load when the test starts, as ``wait_until``'s deadlines do: at load 17-26 on 2 cores
    tests that take 40 s when quiet met it. A test's own timeout mark is left as it is."""
    if item.get_closest_marker("timeout") is None:
        guard = float(item.config.getoption("timeout") or item.config.getini("timeout") or 0)
        if guard:
            item.add_marker(pytest.mark.timeout(guard * deadline_scale()))
    yield


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist, the test files marked ``long_file`` first, then the others with
    the most tests first (pytest-xdist's own order, which scripts/test turns off with
    ``--no-loadscope-reorder`` for this one); each file's tests keep their order. With
    ``--dist loadfile`` a file runs whole on one worker and the run ends with the last
    file to end: in pytest-xdist's order a long file of few tests (test_oldest_python.py,
    two) came 92nd of 102 and ran on alone at the end. A run in one process keeps the
    files in the order they were collected."""
    if not hasattr(config, "workerinput"):
        return
    tests = collections.Counter(item.path for item in items)
    items.sort(key=lambda item: (item.get_closest_marker("long_file") is None,
                                 -tests[item.path]))


@pytest.fixture(scope="session", autouse=True)
def no_leaked_servers(tmp_path_factory):
    """Fail the run if any server process started by a test outlives the tests."""
    yield
    base = str(tmp_path_factory.getbasetemp())
    leaked = []
    for proc in psutil.process_iter(["cmdline"]):
        title = " ".join(proc.info["cmdline"] or [])
        if title.startswith("cosftp: master") and base in title:
            leaked.append(title.strip())
            proc.kill()
    assert not leaked, f"tests left servers running: {leaked}"


# [OPTIONAL] of a test whose point needs more than one worker (balancing, one worker killed
# or hung while another serves, limits counted across workers, a listing of several):
# the harness starts one (tests/server_proc.py write_config).
TWO_WORKERS = {"worker_processes": "2"}
# The ``daemon`` of such a test.
two_worker_daemon = pytest.mark.parametrize("daemon", [TWO_WORKERS], indirect=True,
                                            ids=["2 workers"])


@pytest.fixture
def daemon(emulator, tmp_path, request):
    """A daemonised server (``cosftpctl start``), as test_master.py, test_master_reload.py,
    test_master_stops.py and test_worker_starts.py use it; a test may give it [OPTIONAL]
    settings (indirect parameter)."""
    proc = ServerProcess(str(tmp_path), emulator.port, [Account("ops", "ops-pw", ALPHA)],
                         optional=getattr(request, "param", {}))
    started = proc.start_daemon()  # on another port if its port was taken meanwhile
    assert started.returncode == 0, started.stderr
    master_pid = proc.daemon_pid()
    yield proc
    proc.ensure_stopped(master_pid)


@pytest.fixture(scope="session")
def emulator():
    emu = EmulatorProcess(buckets=[ALPHA, BETA, "gamma-1250000000"])
    emu.start()
    yield emu
    emu.stop()


@pytest.fixture(scope="session")
def cos(emulator):
    """A real SDK client on the emulator, to check what the server really stored."""
    return emulator.client()


def cheapest_hash(password: str) -> str:
    """The ``scrypt$`` form of ``password`` with the cheapest parameters the server takes
    (N=2^10, r=1, p=1: ~2 ms where ``hash-password``'s take ~45 ms of a core)."""
    salt = b"cheap-salt-16byt"
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2 ** 10, r=1, p=1, dklen=32)
    return "scrypt$1024$1$1${}${}".format(*(base64.b64encode(part).decode()
                                            for part in (salt, digest)))


# An account with the cheapest hash. Every login to an account with a plain-text password
# also runs a dummy scrypt with the parameters of the costliest configured hash, or
# hash-password's without one (config/passwords.PasswordChecker), so that timing tells no
# one which accounts have plain-text passwords: with this account that is a 2 ms scrypt
# per login to the standard server, not ~45 ms of one of the suite's two cores. The
# standard server's tests are not about that cost (test_auth.py and test_login_cost.py
# have their own servers with hash-password's parameters).
CHEAP_HASH = Account("cheaphash", cheapest_hash("cheaphash-pw"), ALPHA, "R")


# --- FTPS: the servers the test_tls*.py files share (tests/ftps.py: their clients)

PLAIN = Account("plainuser", "plain-pw", ALPHA)
SECURE = Account("secureuser", "secure-pw", ALPHA, extra="tls_required = true")
# What a require_ssl_reuse server logs when it refuses a data connection's fresh TLS session.
REUSE_REFUSAL = "refused a TLS data connection"


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> tuple[str, str]:
    return write_certificate(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_server(emulator, tmp_path_factory, certs):
    proc = ServerProcess(str(tmp_path_factory.mktemp("tls")), emulator.port, [PLAIN, SECURE],
                         network=tls_network(*certs, implicit=True))
    with proc:
        yield proc


@pytest.fixture(params=["tls_server", "reuse_server"])
def ftps_server(request):
    """Both TLS servers: curl (OpenSSL) and lftp (GnuTLS) resume the control connection's
    session on data connections, so ``require_ssl_reuse`` must change nothing for them."""
    server = request.getfixturevalue(request.param)
    refusals = server.log_text().count(REUSE_REFUSAL)
    yield server
    assert server.log_text().count(REUSE_REFUSAL) == refusals


@pytest.fixture(scope="module")
def reuse_server(emulator, tmp_path_factory, certs):
    proc = ServerProcess(str(tmp_path_factory.mktemp("reuse")), emulator.port, [PLAIN, SECURE],
                         network={**tls_network(*certs, implicit=True),
                                  "require_ssl_reuse": "true"})
    with proc:
        yield proc


# test_tls_reuse.py and test_tls_session_life.py: require_ssl_reuse on one worker.
REUSE_PLAIN = Account("reuseuser", "reuse-pw", ALPHA)


@pytest.fixture(scope="module")
def reuse_one_worker(emulator, tmp_path_factory):
    """require_ssl_reuse with one worker: every session shares its process, so a ticket of
    one control connection would decrypt under another's if they shared a context."""
    cert, key = write_certificate(tmp_path_factory.mktemp("certs"))
    proc = ServerProcess(str(tmp_path_factory.mktemp("reuse1w")), emulator.port, [REUSE_PLAIN],
                         optional={"worker_processes": "1"},
                         network={"tls_certfile": cert, "tls_keyfile": key,
                                  "require_ssl_reuse": "true"})
    with proc:
        yield proc


@pytest.fixture(scope="session")
def server(emulator, tmp_path_factory):
    # No ban on failed logins: tests that send bad logins or garbage commands would ban the
    # one address every test connects from (the ban has its own tests and server). For the
    # same reason no per-address limit on connections (test_governance.py tests those).
    # Two workers (one start per test process): a test's sessions may land on different
    # workers, as a user's do, so that what one worker keeps to itself shows.
    proc = ServerProcess(str(tmp_path_factory.mktemp("server")), emulator.port,
                         [*STANDARD_ACCOUNTS, MOUNTER, CHEAP_HASH], sections=PEER_FOLDER,
                         optional={"max_login_failures": "0", "max_connections_per_ip": "0",
                                   **TWO_WORKERS})
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def service() -> Iterator[AuthService]:
    """An auth hook (tests/auth_service.py) that a test's servers ask about users not in
    their file (tests/hooked.py); stopped after the test."""
    hook = AuthService().start()
    yield hook
    hook.stop()


@pytest.fixture
def area(request) -> str:
    """A directory name unique to this test, so tests sharing a bucket never collide."""
    name = re.sub(r"[^A-Za-z0-9_]+", "_", request.node.name)[:60]
    return f"{name}_{uuid.uuid4().hex[:6]}"


@pytest.fixture
def alice(server):
    ftp = server.login("alice", "alice-pw")
    yield ftp
    _close(ftp)


def _close(ftp) -> None:
    try:
        ftp.quit()
    except Exception:
        ftp.close()


# What another tool (the COS console, a camera's own uploader) may have given an object, and
# what a copy inside COS (rename, MFMT) must keep.
ATTRIBUTES = {"ContentType": "text/plain; charset=utf-8", "CacheControl": "max-age=60",
              "ContentDisposition": 'attachment; filename="scan.txt"',
              "Metadata": {"x-cos-meta-scanner": "lobby-7"}, "StorageClass": "STANDARD_IA",
              "ServerSideEncryption": "AES256"}
KEPT = {"content-type": "text/plain; charset=utf-8", "cache-control": "max-age=60",
        "content-disposition": 'attachment; filename="scan.txt"',
        "x-cos-meta-scanner": "lobby-7", "x-cos-storage-class": "STANDARD_IA",
        "x-cos-server-side-encryption": "AES256"}


def put_with_attributes(cos, key: str, data: bytes) -> None:
    cos.put_object(Bucket=ALPHA, Key=key, Body=data, **ATTRIBUTES)


def kept_attributes(cos, key: str) -> dict:
    """The headers of ``key`` named in ``KEPT``, as COS answers them now."""
    head = {name.lower(): value for name, value in cos.head_object(Bucket=ALPHA, Key=key).items()}
    return {name: head.get(name) for name in KEPT}
