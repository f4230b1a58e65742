"""``scripts/bootstrap --clients`` installs the Debian packages the tests drive without
starting or enabling their services, touches nothing the host had, and tells a non-root user
the exact apt-get command line.

Nothing is installed for real: the script runs in a copy of the checkout (with a venv already
in place) and a PATH whose ``apt-get``, ``dpkg-query``, ``id``, ``systemctl`` and
``update-rc.d`` are ``fake_debian`` below, which records each call and, for apt-get, what the
policy-rc.d answered at that moment (101 = starts forbidden)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

from .server_proc import ROOT

FAKE_DEBIAN = '''\
import json, os, subprocess, sys

state = os.environ["FAKE_STATE"]
name, args = os.path.basename(sys.argv[0]), sys.argv[1:]
FILES = {
    "haproxy": ["/usr/sbin/haproxy", "/lib/systemd/system/haproxy.service",
                "/etc/init.d/haproxy"],
    "fail2ban": ["/usr/bin/fail2ban-regex", "/lib/systemd/system/fail2ban.service",
                 "/etc/init.d/fail2ban"],
    "redis-server": ["/usr/bin/redis-server", "/lib/systemd/system/redis-server.service",
                     "/lib/systemd/system/redis-server@.service", "/etc/init.d/redis-server"],
    "redis-tools": ["/usr/bin/redis-cli"],
    "nftables": ["/usr/sbin/nft", "/lib/systemd/system/nftables.service"],
    "nginx": ["/usr/sbin/nginx", "/lib/systemd/system/nginx.service", "/etc/init.d/nginx"],
}
DEPENDS = {"redis-server": ["redis-tools"]}
RECOMMENDS = {"fail2ban": ["nftables"]}


def installed():
    with open(os.path.join(state, "installed.json")) as f:
        return json.load(f)


policy = os.environ["COSFTP_BOOTSTRAP_POLICY_RC_D"]
answer = None
if name == "apt-get" and os.access(policy, os.X_OK):
    answer = subprocess.run([policy, "haproxy.service", "start"]).returncode
with open(os.path.join(state, "calls.jsonl"), "a") as f:
    f.write(json.dumps({"cmd": name, "args": args, "policy": answer}) + "\\n")

if name == "id":
    print(os.environ["FAKE_UID"])
elif name == "apt-get" and args[0] == "install":
    if os.environ.get("FAKE_APT_FAILS"):
        sys.exit(100)
    wanted = [a for a in args[1:] if not a.startswith("-")]
    for package in list(wanted):
        wanted += DEPENDS.get(package, [])
        if "--no-install-recommends" not in args:
            wanted += RECOMMENDS.get(package, [])
    now = sorted(set(installed() + wanted))
    with open(os.path.join(state, "installed.json"), "w") as f:
        json.dump(now, f)
elif name == "dpkg-query" and args[0] == "-W":
    if args[3:]:  # -W -f FORMAT PACKAGE: one package's status
        if args[3] not in installed():
            sys.exit(1)
        print("ii ", end="")
    else:
        for package in installed():
            print("ii  " + package)
elif name == "dpkg-query" and args[0] == "-L":
    print("\\n".join(FILES.get(args[1], [])))
'''

TOOLS = ("dirname", "sed", "awk", "sort", "comm", "mv", "rm", "chmod", "sh")
ALL_THREE = ["fail2ban", "haproxy", "redis-server"]
BROWSER = ["chromium", "chromium-driver"]  # the console tests' headless browser: no service


class Host:
    """A checkout copy and a fake Debian: what is installed, who runs, what got called."""

    def __init__(self, base, installed: list[str], uid: int = 0,
                 fakes: tuple[str, ...] = ("apt-get", "dpkg-query", "id", "systemctl"),
                 on_path: tuple[str, ...] = ()) -> None:
        self.base = base
        self.checkout = base / "checkout"
        (self.checkout / "scripts").mkdir(parents=True)
        shutil.copy(os.path.join(ROOT, "scripts", "bootstrap"), self.checkout / "scripts")
        (self.checkout / "setup.py").write_text("")
        venv_bin = self.checkout / ".venv" / "bin"
        venv_bin.mkdir(parents=True)
        (venv_bin / "python").write_text("#!/bin/sh\nexit 0\n")
        (venv_bin / "python").chmod(0o755)
        (self.checkout / ".venv" / ".installed").write_text("")
        os.utime(self.checkout / "setup.py", (1, 1))  # older than the stamp: no pip
        self.state = base / "state"
        self.state.mkdir()
        (self.state / "installed.json").write_text(json.dumps(installed))
        self.bin = base / "bin"
        self.bin.mkdir()
        fake = base / "fake_debian.py"
        fake.write_text(f"#!{sys.executable}\n{FAKE_DEBIAN}")
        fake.chmod(0o755)
        for name in fakes:
            (self.bin / name).symlink_to(fake)
        for name in on_path:  # a command installed some other way than its Debian package
            (self.bin / name).write_text("#!/bin/sh\n")
            (self.bin / name).chmod(0o755)
        for tool in TOOLS:
            (self.bin / tool).symlink_to(shutil.which(tool))
        self.policy = base / "policy-rc.d"
        self.env = {"PATH": str(self.bin), "FAKE_STATE": str(self.state),
                    "FAKE_UID": str(uid), "COSFTP_BOOTSTRAP_POLICY_RC_D": str(self.policy)}

    def bootstrap(self, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [shutil.which("bash"), str(self.checkout / "scripts" / "bootstrap"), "--clients"],
            env={**self.env, **env}, capture_output=True, text=True, timeout=60)

    def calls(self, cmd: str) -> list[dict]:
        path = self.state / "calls.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return [call for call in map(json.loads, lines) if call["cmd"] == cmd]

    def installs(self) -> list[dict]:
        return [call for call in self.calls("apt-get") if call["args"][0] == "install"]


@pytest.fixture
def host(tmp_path):
    return lambda *args, **kwargs: Host(tmp_path, *args, **kwargs)


def test_installs_with_service_starts_denied_and_disables_only_what_it_installed(host):
    debian = host(["lftp", "tnftp", "nginx"], on_path=("curl",))
    done = debian.bootstrap()
    assert done.returncode == 0, done.stderr
    install, = debian.installs()
    assert install["args"] == ["install", "-qq", "-y", "--no-install-recommends", *ALL_THREE,
                               *BROWSER]
    assert install["policy"] == 101  # invoke-rc.d/deb-systemd-invoke: action forbidden
    assert not os.path.lexists(debian.policy)  # gone again: later installs start services
    # Units of what this run installed, dependencies included; nothing of the host's nginx,
    # no template (redis-server@.service).
    disable, = debian.calls("systemctl")
    assert disable["args"][:2] == ["disable", "--quiet"]
    assert sorted(disable["args"][2:]) == [f"{p}.service" for p in ALL_THREE]


def test_a_policy_the_host_had_is_replaced_during_apt_get_and_put_back(host):
    debian = host(["lftp", "curl", "tnftp", "fail2ban", "redis-server", *BROWSER])
    mine = "#!/bin/sh\n# the host's own policy\nexit 0\n"
    debian.policy.write_text(mine)
    debian.policy.chmod(0o750)
    assert debian.bootstrap().returncode == 0
    assert [call["policy"] for call in debian.installs()] == [101]
    assert debian.policy.read_text() == mine
    assert stat.S_IMODE(debian.policy.stat().st_mode) == 0o750
    assert sorted(os.listdir(debian.base)) == ["bin", "checkout", "fake_debian.py",
                                               "policy-rc.d", "state"]


def test_a_failed_apt_get_fails_bootstrap_and_removes_the_policy(host):
    debian = host(["lftp", "curl", "tnftp", *BROWSER])
    done = debian.bootstrap(FAKE_APT_FAILS="1")
    assert done.returncode != 0
    assert [call["policy"] for call in debian.installs()] == [101]
    assert not os.path.lexists(debian.policy)
    assert debian.calls("systemctl") == []


def test_without_systemd_the_init_scripts_it_installed_are_disabled(host):
    debian = host(["lftp", "curl", "tnftp", "nginx", *BROWSER],
                  fakes=("apt-get", "dpkg-query", "id", "update-rc.d"))
    assert debian.bootstrap().returncode == 0
    assert sorted(call["args"][0] for call in debian.calls("update-rc.d")) == ALL_THREE
    assert {call["args"][1] for call in debian.calls("update-rc.d")} == {"disable"}


def test_nothing_missing_installs_nothing(host):
    debian = host(["lftp", "curl", "tnftp", *ALL_THREE, *BROWSER])
    done = debian.bootstrap()
    assert done.returncode == 0, done.stderr
    assert debian.calls("apt-get") == [] and debian.calls("systemctl") == []


def test_not_root_prints_the_exact_apt_get_command_and_fails(host):
    debian = host(["lftp", "curl", "nginx", *BROWSER], uid=1000)
    done = debian.bootstrap()
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert "    apt-get install -y --no-install-recommends tnftp fail2ban haproxy redis-server" \
        in lines, done.stderr
    assert "systemctl disable --now fail2ban haproxy redis-server" in done.stderr
    assert debian.calls("apt-get") == [] and not os.path.lexists(debian.policy)
