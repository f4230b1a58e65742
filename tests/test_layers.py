"""The process model's import rule, end to end: the master never loads the worker stack.

The master parses config, binds and supervises; pyftpdlib, the COS SDK and OpenSSL are
imported by each forked worker. The import-linter contract (pyproject.toml) holds this for
the source; these tests hold it for the running processes, and show what it buys: a reload
after an upgrade of the installed package starts workers running the new code.
"""

from __future__ import annotations

import ftplib
import io
import json
import os
import shutil
import subprocess
import sys

import pytest

from .admin_client import RW_TOKEN, AdminClient, hash_token
from .conftest import ALPHA
from .server_proc import (
    FREE_PORT,
    ROOT,
    Account,
    ServerProcess,
    closed_port,
    tls_network,
    wait_until,
)
from .tls_clients import write_certificate

FORBIDDEN = ("qcloud_cos", "pyftpdlib", "OpenSSL", "urllib3", "requests", "cosftp_prefork.ftp",
             "cosftp_prefork.cos", "cosftp_prefork.events.deliver", "cosftp_prefork.events.http",
             "cosftp_prefork.admin")

# Runs cosftpctl in this interpreter and, when the master exits (workers leave through
# os._exit and never run atexit), writes the names of the modules it had loaded.
LAUNCHER = """
import atexit, json, os, runpy, sys
out, master = sys.argv.pop(1), os.getpid()
def dump():
    if os.getpid() == master:
        with open(out, "w") as handle:
            json.dump(sorted(sys.modules), handle)
atexit.register(dump)
sys.argv[0] = "cosftpctl"
runpy.run_module("cosftp_prefork", run_name="__main__", alter_sys=True)
"""


def _banner(server: ServerProcess) -> str:
    with ftplib.FTP() as ftp:
        return ftp.connect(server.host, server.port, timeout=10)


def test_the_master_never_loads_pyftpdlib_the_cos_sdk_or_openssl(emulator, tmp_path):
    """A master that served FTPS sessions, a transfer (whose event its events process
    delivered), a reload and the admin API (which asked for a second reload) exits without
    ever having imported the worker stack, an HTTP client or the API."""
    cert, key = write_certificate(tmp_path)
    modules = tmp_path / "master-modules.json"
    launcher = tmp_path / "launcher.py"
    launcher.write_text(LAUNCHER)
    server = ServerProcess(str(tmp_path / "server"), emulator.port,
                           [Account("mods", "mods-pw", ALPHA)],
                           network={**tls_network(cert, key), "admin_port": FREE_PORT},
                           sections=f"\n[ADMIN]\ntokens = ops:{hash_token(RW_TOKEN)}:rw\n",
                           launcher=[sys.executable, str(launcher), str(modules)],
                           hooks={"event_hook_command": f"{shutil.which('true')}"})
    with server:
        ftp = server.login("mods", "mods-pw")
        ftp.storbinary("STOR layers-probe.txt", io.BytesIO(b"probe"))
        ftp.quit()
        wait_until(lambda: os.path.isdir(os.path.join(server.log_dir, "events")) and not [
            name for name in os.listdir(os.path.join(server.log_dir, "events"))
            if name.endswith(".batch")], what="the events delivered")
        assert "started events process" in server.log_text()
        reload = server.ctl("reload")
        assert reload.returncode == 0, reload.stderr
        api = AdminClient(f"https://127.0.0.1:{server.admin_port}", verify=cert)
        assert api.call("POST", "/reload").json()["result"] == "ok"
        assert _banner(server).startswith("220")
    loaded = json.loads(modules.read_text())
    assert "cosftp_prefork.server.master" in loaded  # the dump is the master's
    assert [name for name in loaded if name.split(".")[0] in FORBIDDEN
            or name.startswith(FORBIDDEN)] == []


@pytest.fixture
def installed_copy(tmp_path) -> str:
    """A copy of the package in a folder of its own, as an upgrade would replace it."""
    site = tmp_path / "site"
    shutil.copytree(os.path.join(ROOT, "cosftp_prefork"), site / "cosftp_prefork",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return str(site)


def test_a_reload_after_an_upgrade_starts_workers_on_the_new_code(emulator, tmp_path,
                                                                   installed_copy):
    env = {**os.environ, "PYTHONPATH": installed_copy}
    server = ServerProcess(str(tmp_path / "server"), emulator.port,
                           [Account("upg", "upg-pw", ALPHA)], env=env)
    handler = os.path.join(installed_copy, "cosftp_prefork", "ftp", "handler.py")
    with server:
        old = _banner(server)
        assert "cosftp-prefork ready." in old
        with open(handler, encoding="utf-8") as source:
            text = source.read()
        # The greeting is the configuration's (ftpd_banner): the new code marks it.
        given = '"banner": config.server.ftpd_banner,'
        assert given in text
        with open(handler, "w", encoding="utf-8") as source:
            source.write(text.replace(given, given.replace(",", ' + " (upgraded)",')))
        reload = server.ctl("reload")
        assert reload.returncode == 0, reload.stderr
        # Every worker of the new generation greets with the new banner (the old ones have
        # stopped accepting once reload returned).
        wait_until(lambda: all("(upgraded)" in _banner(server) for _ in range(4)),
                   what="the new code's banner")


# What ``cosftpctl run`` imports of a file without [CLUSTER], metrics_port or a certificate
# (its master), then what each worker adds after its fork; prints both lists of modules.
STARTUP = """
import json, sys
from cosftp_prefork.server import cli
from cosftp_prefork.config.settings import load_config
from cosftp_prefork.server.metrics_dir import use_metrics_dir
config = load_config(sys.argv[1])
use_metrics_dir(config)
from cosftp_prefork.server.master import Master
master = sorted(sys.modules)
from cosftp_prefork.server.worker import Worker
print(json.dumps([master, sorted(sys.modules)]))
"""


def test_a_server_without_cluster_metrics_or_tls_loads_none_of_their_libraries(tmp_path):
    """redis-py ([CLUSTER]), prometheus_client (metrics_port) and cryptography (a
    certificate to check) cost its master and each worker ~130 ms of CPU to import, at
    every start and for every worker started again: a server that uses none of them loads
    none (cryptography comes into the workers with pyOpenSSL, which pyftpdlib imports)."""
    server = ServerProcess(str(tmp_path), closed_port(), [Account("plain", "plain-pw", ALPHA)])
    server.write_config()
    env = {key: value for key, value in os.environ.items()
           if key != "PROMETHEUS_MULTIPROC_DIR"}
    done = subprocess.run([sys.executable, "-c", STARTUP, server.config_path], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    master, worker = json.loads(done.stdout)
    unused = ("redis", "prometheus_client", "cryptography")
    assert [name for name in master if name.split(".")[0] in unused] == []
    assert [name for name in worker if name.split(".")[0] in unused[:2]] == []
