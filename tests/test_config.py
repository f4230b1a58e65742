"""Unit tests for config parsing and validation (pure logic: no processes, no network)."""

from __future__ import annotations

import configparser
import contextlib
import dataclasses
import os
import re
from typing import Optional

import pytest

from cosftp_prefork.config.hookanswer import hook_account
from cosftp_prefork.config.locate import locate_bans, locate_server
from cosftp_prefork.config.locations import base_dir, parse_path
from cosftp_prefork.config.model import (
    GIB,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIB,
    SECRET_OPTIONS,
    AccountConfig,
    BanOptions,
    Config,
    Located,
    NetworkConfig,
    ServerConfig,
    TransferConfig,
    part_size_for,
)
from cosftp_prefork.config.options import SETTINGS
from cosftp_prefork.config.passwords import hash_password
from cosftp_prefork.config.placeholders import find_placeholders
from cosftp_prefork.config.settings import load_config, parse_config
from cosftp_prefork.errors import ConfigError
from cosftp_prefork.ftp.authorizer import CosAuthorizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The example shipped with cos-ftp-server-V5, values filled in as a user would: no spaces
# around "=" in the login lines, Chinese inline comments, "default" for tuning options.
OLD_EXAMPLE = """\
[COS_ACCOUNT_0]
cos_secretid = AKIDsecretid0
cos_secretkey = secretkey0value
cos_bucket = photos-1250000000
cos_region = ap-guangzhou
cos_protocol = https
#cos_endpoint = ap-guangzhou.myqcloud.com
home_dir = /home/user0
ftp_login_user_name=user0
ftp_login_user_password=pass0
authority=RW
delete_enable=true                  # true为允许该ftp用户进行删除操作(默认)

[COS_ACCOUNT_1]
cos_secretid = AKIDsecretid1
cos_secretkey = secretkey1value
cos_bucket = photos-1250000000
cos_region = ap-guangzhou
home_dir = /home/user1
ftp_login_user_name=user1
ftp_login_user_password=pass1
authority=R
delete_enable=false

[COS_ACCOUNT_2]
cos_secretid = AKIDsecretid2
cos_secretkey = secretkey2value
cos_bucket = backup-1250000001
cos_region = ap-shanghai
home_dir = /home/user2
ftp_login_user_name=user2
ftp_login_user_password=pass2
authority=W
delete_enable=false

[NETWORK]
masquerade_address = 203.0.113.7            # 如果FTP SERVER处于某个网关或NAT后
listen_port = 2121                          # Ftp Server的监听端口, 默认为2121

passive_port = 60000,65535                  # passive模式下端口的选择范围

[FILE_OPTION]
# 默认单文件大小最大支持到200G, 不建议设置太大
single_file_max_size = 214748364800

[OPTIONAL]
# 以下设置, 如无特殊需要, 建议保留default设置
min_part_size       = default
upload_thread_num   = default
max_connection_num  = 100
max_list_file       = 10000                # ls命令最大可列出的文件数目
log_level           = DEBUG                # 设置日志输出的级别
log_dir             = log                  # 设置日志的存放目录
"""

SECRET_ID, SECRET_KEY, PASSWORD = "SID-sentinel-7f3a", "SKEY-sentinel-91c2", "PW-sentinel-5d0e"

MINIMAL = f"""\
[COS_ACCOUNT_0]
cos_secretid = {SECRET_ID}
cos_secretkey = {SECRET_KEY}
cos_bucket = b-1
cos_region = ap-guangzhou
home_dir = /h
ftp_login_user_name = u
ftp_login_user_password = {PASSWORD}
authority = RW
"""


def set_option(text: str, section: str, option: str, value: Optional[str]) -> str:
    """Return ``text`` with ``option`` of ``section`` set to ``value`` (None: removed); the
    line is replaced in place, else added under the header, else a new section is appended."""
    lines = text.splitlines()
    current, where, header_at = None, None, None
    for number, line in enumerate(lines):
        header = re.match(r"^\[(.+)\]\s*$", line)
        if header:
            current = header.group(1)
            if current == section:
                header_at = number
        elif current == section and re.match(rf"^{re.escape(option)}\s*[=:]", line):
            where = number
    new = [] if value is None else [f"{option} = {value}"]
    if where is not None:
        lines[where:where + 1] = new
    elif header_at is not None:
        lines[header_at + 1:header_at + 1] = new
    elif value is not None:
        lines += ["", f"[{section}]", *new]
    return "\n".join(lines) + "\n"


def second_account(user: str = "v", home: str = "/h2") -> str:
    return (MINIMAL.replace("COS_ACCOUNT_0", "COS_ACCOUNT_1")
            .replace("ftp_login_user_name = u", f"ftp_login_user_name = {user}")
            .replace("home_dir = /h", f"home_dir = {home}"))


@pytest.fixture
def write(tmp_path):
    """Write config text to a file; return its absolute path."""
    def write(text: str, name: str = "vsftpd.conf") -> str:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return str(path)
    return write


@pytest.fixture
def load_error(write):
    """Load ``text`` from a real file; return (path, message) of the ConfigError."""
    def load_error(text: str, environ: Optional[dict] = None) -> tuple[str, str]:
        path = write(text)
        with pytest.raises(ConfigError) as info:
            load_config(path, environ or {})
        assert info.value.path == path
        return path, str(info.value)
    return load_error


def assert_names(message: str, path: str, section: str, option: str) -> None:
    assert message.startswith(f"{path} [{section}] {option}: "), message


# --- the old format


def test_old_v5_example_parses(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = parse_config(OLD_EXAMPLE, "old.conf", {})
    assert config.path == "old.conf"
    assert config.warnings == ()
    assert [a.section for a in config.accounts] == [
        "COS_ACCOUNT_0", "COS_ACCOUNT_1", "COS_ACCOUNT_2"]
    first, second, third = config.accounts
    assert (first.user, first.password, first.home_dir) == ("user0", "pass0", "/home/user0")
    assert (first.secret_id, first.secret_key) == ("AKIDsecretid0", "secretkey0value")
    assert (first.bucket, first.region, first.protocol, first.endpoint) == \
        ("photos-1250000000", "ap-guangzhou", "https", None)
    assert (first.authority, first.can_read, first.can_write, first.delete_enable) == \
        ("RW", True, True, True)
    assert (second.user, second.authority, second.can_read, second.can_write,
            second.delete_enable) == ("user1", "R", True, False, False)
    assert (third.user, third.bucket, third.region, third.can_read, third.can_write) == \
        ("user2", "backup-1250000001", "ap-shanghai", False, True)
    assert config.network == NetworkConfig(("0.0.0.0",), 2121, "203.0.113.7", (60000, 65535))
    assert config.transfer.single_file_max_size == 214748364800
    assert config.transfer.min_part_size == 2 * MIB
    assert config.transfer.upload_thread_num >= 1
    assert config.server.max_connection_num == 100
    assert config.server.max_list_file == 10000
    assert config.server.log_level == "DEBUG"
    assert config.server.log_dir == str(tmp_path / "log")


def test_inline_comments_are_stripped_but_hash_inside_a_value_is_kept():
    text = set_option(MINIMAL, "COS_ACCOUNT_0", "authority", "R    # read only")
    text = set_option(text, "COS_ACCOUNT_0", "cos_secretkey", "abc#def")
    text = set_option(text, "NETWORK", "listen_port", "2200 # FTP 控制端口")
    text = set_option(text, "OPTIONAL", "max_list_file", "default  # keep it")
    config = parse_config(text, "c.conf", {})
    assert config.accounts[0].authority == "R"
    assert config.accounts[0].secret_key == "abc#def"
    assert config.network.listen_port == 2200
    assert config.server.max_list_file == 10000


def test_defaults_for_every_missing_option(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = parse_config(MINIMAL, "m.conf", {})
    account = config.accounts[0]
    assert (account.protocol, account.endpoint, account.cos_ip, account.cos_port) == \
        ("https", None, None, None)
    assert (account.delete_enable, account.anonymous_enable) == (True, False)
    assert config.network == NetworkConfig(("0.0.0.0",), 2121, None, (60000, 65535))
    assert config.transfer.single_file_max_size == 200 * GIB
    assert config.transfer.min_part_size == 2 * MIB
    assert 1 <= config.transfer.upload_thread_num <= 32
    assert config.transfer.multipart_copy_threshold == 5 * GIB
    server = config.server
    assert (server.max_connection_num, server.max_connections_per_ip, server.max_list_file) == \
        (512, 64, 10000)
    assert (server.login_timeout, server.max_prelogin_connections,
            server.max_prelogin_connections_per_ip) == (30, 128, 16)
    assert server.log_level == "INFO"
    assert server.log_dir == str(tmp_path / "log")
    assert server.pid_file == str(tmp_path / "log" / "cosftp.pid")
    assert server.worker_processes >= 1
    assert (server.max_login_failures, server.login_failure_window, server.ban_time) == \
        (5, 60, 300)
    assert (server.accept_timeout, server.connect_timeout) == (30, 60)  # connect: vsftpd's


@pytest.mark.parametrize(("workers", "checks"), [("1", None), ("256", None), ("2", "3")])
def test_max_password_checks_defaults_to_the_cpus_shared_by_the_workers(workers, checks):
    text = set_option(MINIMAL, "OPTIONAL", "worker_processes", workers)
    if checks is not None:
        text = set_option(text, "OPTIONAL", "max_password_checks", checks)
    cpus = os.cpu_count() or 1
    expected = int(checks) if checks else max(1, -(-cpus // int(workers)))
    assert parse_config(text, "p.conf", {}).server.max_password_checks == expected


def test_max_worker_processes_below_worker_processes_is_refused(load_error):
    text = set_option(MINIMAL, "OPTIONAL", "worker_processes", "4")
    assert parse_config(text, "p.conf", {}).server.max_worker_processes == 256
    path, message = load_error(set_option(text, "OPTIONAL", "max_worker_processes", "3"))
    assert_names(message, path, "OPTIONAL", "max_worker_processes")
    assert "is 3, below worker_processes (4): raise it" in message


def test_delay_failed_login_keeps_the_3_s_of_files_without_it():
    """A file written before the option (cos-ftp-server-V5's, whose pyftpdlib waited 3 s)
    keeps that wait, not vsftpd's default of 1 s."""
    assert parse_config(OLD_EXAMPLE, "old.conf", {}).server.delay_failed_login == 3
    text = set_option(MINIMAL, "OPTIONAL", "delay_failed_login", "0")
    assert parse_config(text, "d.conf", {}).server.delay_failed_login == 0


def test_delay_failed_login_not_below_login_timeout_is_warned_of():
    """A delay that outlasts the login time leaves nobody a second try on the connection."""
    text = set_option(MINIMAL, "OPTIONAL", "login_timeout", "20")
    assert parse_config(set_option(text, "OPTIONAL", "delay_failed_login", "19"), "d.conf",
                        {}).warnings == ()
    warned = parse_config(set_option(text, "OPTIONAL", "delay_failed_login", "20"), "d.conf",
                          {}).warnings
    assert warned == ("d.conf [OPTIONAL] delay_failed_login: 20 s is not below login_timeout "
                      "(20 s): a client that fails a login is closed (421 Login timed out) "
                      "right after its 530, with no second try on that connection",), warned


@pytest.mark.parametrize("value, problem", [
    ("-1", "must be between 0 and 60, got -1"),
    ("61", "must be between 0 and 60, got 61"),
    ("3600", "must be between 0 and 60, got 3600"),
    ("1.5", "must be an integer, got '1.5'"),
    ("3s", "must be an integer, got '3s'"),
])
def test_delay_failed_login_out_of_bounds_is_refused(load_error, value, problem):
    path, message = load_error(set_option(MINIMAL, "OPTIONAL", "delay_failed_login", value))
    assert_names(message, path, "OPTIONAL", "delay_failed_login")
    assert message.endswith(problem), message


@pytest.mark.parametrize("empty", ["", "default", "DEFAULT", "  default  # comment"])
def test_empty_value_or_the_word_default_means_the_default(empty):
    text = set_option(MINIMAL, "NETWORK", "passive_port", empty)
    text = set_option(text, "OPTIONAL", "max_connection_num", empty)
    text = set_option(text, "COS_ACCOUNT_0", "delete_enable", empty)
    config = parse_config(text, "d.conf", {})
    assert config.network.passive_ports == (60000, 65535)
    assert config.server.max_connection_num == 512
    assert config.accounts[0].delete_enable is True


def test_relative_log_dir_and_pid_file_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = set_option(MINIMAL, "OPTIONAL", "log_dir", "var/logs")
    config = parse_config(text, "l.conf", {})
    assert config.server.log_dir == str(tmp_path / "var" / "logs")
    assert config.server.pid_file == str(tmp_path / "var" / "logs" / "cosftp.pid")
    config = parse_config(set_option(text, "OPTIONAL", "pid_file", "run/x.pid"), "l.conf", {})
    assert config.server.pid_file == str(tmp_path / "run" / "x.pid")


PATH_OPTIONS = (("OPTIONAL", "log_dir"), ("OPTIONAL", "pid_file"),
                ("OPTIONAL", "xferlog_file"), ("OPTIONAL", "vsftpd_log_file"))


def _with_relative_paths() -> str:
    text = MINIMAL
    for section, option in PATH_OPTIONS:
        text = set_option(text, section, option, f"rel/{option}")
    return set_option(text, "OPTIONAL", "xferlog_enable", "true")


def test_relative_paths_follow_the_config_file_not_the_working_directory(tmp_path,
                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path / "..")
    config = parse_config(_with_relative_paths(), str(tmp_path / "etc" / "cosftp.conf"), {})
    base = tmp_path / "etc" / "rel"
    assert (config.server.log_dir, config.server.pid_file) == \
        (str(base / "log_dir"), str(base / "pid_file"))
    assert (config.operator.xferlog_file, config.operator.vsftpd_log_file) == \
        (str(base / "xferlog_file"), str(base / "vsftpd_log_file"))
    defaults = parse_config(MINIMAL, str(tmp_path / "etc" / "cosftp.conf"), {})
    assert defaults.server.pid_file == str(tmp_path / "etc" / "log" / "cosftp.pid")
    text = set_option(MINIMAL, "OPTIONAL", "pid_file", "/run/cosftp/../cosftp.pid")
    assert parse_config(text, "/etc/x.conf", {}).server.pid_file == "/run/cosftp.pid"


def test_relative_paths_of_a_file_in_conf_follow_the_directory_above(tmp_path, monkeypatch):
    """The layout of the systemd unit as shipped (WorkingDirectory=/opt/cosftp-prefork,
    -c conf/vsftpd.conf), of a source checkout and of cos-ftp-server-V5: log_dir = log
    stays <root>/log, where it was when relative paths followed the working directory."""
    monkeypatch.chdir("/")
    config = parse_config(_with_relative_paths(), str(tmp_path / "conf" / "vsftpd.conf"), {})
    assert config.server.log_dir == str(tmp_path / "rel" / "log_dir")
    assert config.operator.vsftpd_log_file == str(tmp_path / "rel" / "vsftpd_log_file")
    config = parse_config(MINIMAL, str(tmp_path / "conf" / "vsftpd.conf"), {})
    assert config.server.log_dir == str(tmp_path / "log")


def test_every_file_option_is_resolved_as_a_path():
    """An option naming a file or directory on this host must use parse_path, or it would
    follow the working directory again (home_dir is a key prefix in the bucket)."""
    not_files = {"home_dir", "require_existing_dir", "max_list_file"}
    named_like_files = [s for s in SETTINGS if re.search(r"(_file|_dir|certfile|keyfile)$",
                                                         s.name) and s.name not in not_files]
    assert len(named_like_files) == 7
    assert all(s.parse is parse_path for s in named_like_files), named_like_files


def test_explicit_values_override_defaults():
    text = set_option(MINIMAL, "COS_ACCOUNT_0", "cos_protocol", "HTTP")
    text = set_option(text, "COS_ACCOUNT_0", "cos_ip", "10.0.0.1")
    text = set_option(text, "COS_ACCOUNT_0", "cos_port", "8080")
    text = set_option(text, "NETWORK", "listen_address", "127.0.0.1")
    text = set_option(text, "NETWORK", "passive_port", "30000, 30010")
    text = set_option(text, "NETWORK", "masquerade_address", "ftp.example.com")
    text = set_option(text, "OPTIONAL", "min_part_size", str(8 * MIB))
    text = set_option(text, "OPTIONAL", "log_level", "warning")
    config = parse_config(text, "x.conf", {})
    account = config.accounts[0]
    assert (account.protocol, account.cos_ip, account.cos_port) == ("http", "10.0.0.1", 8080)
    assert config.network == NetworkConfig(("127.0.0.1",), 2121, "ftp.example.com",
                                           (30000, 30010))
    assert config.transfer.min_part_size == 8 * MIB
    assert config.server.log_level == "WARNING"


@pytest.mark.parametrize(("raw", "expected"), [
    ("true", True), ("TRUE", True), ("yes", True), ("on", True), ("1", True),
    ("false", False), ("False", False), ("no", False), ("off", False), ("0", False),
])
def test_boolean_spellings(raw, expected):
    text = set_option(MINIMAL, "COS_ACCOUNT_0", "delete_enable", raw)
    assert parse_config(text, "b.conf", {}).accounts[0].delete_enable is expected


def test_home_dir_is_normalised():
    text = set_option(MINIMAL, "COS_ACCOUNT_0", "home_dir", "home/user0/")
    assert parse_config(text, "h.conf", {}).accounts[0].home_dir == "/home/user0"


def test_hashed_password_accepted():
    text = set_option(MINIMAL, "COS_ACCOUNT_0", "ftp_login_user_password", hash_password("pw"))
    assert parse_config(text, "h.conf", {}).accounts[0].password.startswith("scrypt$")


# --- ${VAR} substitution


def test_environment_substitution_replaces_set_variables():
    text = set_option(MINIMAL, "COS_ACCOUNT_0", "cos_secretkey", "${MY_KEY}")
    text = set_option(text, "COS_ACCOUNT_0", "cos_bucket", "${BUCKET_NAME}-1250000000")
    environ = {"MY_KEY": "from-env", "BUCKET_NAME": "media"}
    account = parse_config(text, "e.conf", environ).accounts[0]
    assert (account.secret_key, account.bucket) == ("from-env", "media-1250000000")


def test_environment_substitution_is_validated_like_a_literal():
    text = set_option(MINIMAL, "NETWORK", "listen_port", "${PORT}")
    assert parse_config(text, "e.conf", {"PORT": "2200"}).network.listen_port == 2200
    with pytest.raises(ConfigError, match=r"\[NETWORK\] listen_port"):
        parse_config(text, "e.conf", {"PORT": "not-a-port"})


def test_environment_defaults_to_os_environ(monkeypatch):
    monkeypatch.setenv("COSFTP_TEST_SECRET", "process-env")
    text = set_option(MINIMAL, "COS_ACCOUNT_0", "cos_secretid", "${COSFTP_TEST_SECRET}")
    assert parse_config(text, "e.conf").accounts[0].secret_id == "process-env"


def test_unset_environment_variable_names_section_option_and_variable(load_error):
    text = set_option(MINIMAL, "COS_ACCOUNT_0", "cos_secretkey", "${MY_UNSET_KEY}")
    path, message = load_error(text, {"OTHER": "x"})
    assert_names(message, path, "COS_ACCOUNT_0", "cos_secretkey")
    assert "MY_UNSET_KEY" in message and "not set" in message


# --- validation errors: each names the file, the [SECTION] and the option


def _bad(section: str, option: str, value: Optional[str], fragment: str = ""):
    return pytest.param(section, option, value, fragment, id=f"{option}={value}")


@pytest.mark.parametrize(("section", "option", "value", "fragment"), [
    _bad("COS_ACCOUNT_0", "cos_secretid", None, "is required"),
    _bad("COS_ACCOUNT_0", "cos_secretkey", None, "is required"),
    _bad("COS_ACCOUNT_0", "cos_bucket", None, "is required"),
    _bad("COS_ACCOUNT_0", "home_dir", None, "is required"),
    _bad("COS_ACCOUNT_0", "ftp_login_user_name", None, "is required"),
    _bad("COS_ACCOUNT_0", "ftp_login_user_password", None, "is required"),
    _bad("COS_ACCOUNT_0", "authority", None, "is required"),
    _bad("COS_ACCOUNT_0", "authority", "X", "R, W, RW"),
    _bad("COS_ACCOUNT_0", "authority", "RWX", "R, W, RW"),
    _bad("COS_ACCOUNT_0", "cos_bucket", "nobucket", "<name>-<appid>"),
    _bad("COS_ACCOUNT_0", "cos_bucket", "Bucket-123", "<name>-<appid>"),
    _bad("COS_ACCOUNT_0", "cos_bucket", "b-abc", "<name>-<appid>"),
    _bad("COS_ACCOUNT_0", "cos_bucket", "-1", "<name>-<appid>"),
    _bad("COS_ACCOUNT_0", "cos_region", None, "cos_endpoint"),
    _bad("COS_ACCOUNT_0", "cos_protocol", "ftp", "http or https"),
    _bad("COS_ACCOUNT_0", "cos_endpoint", "bad host!", "host name"),
    _bad("COS_ACCOUNT_0", "cos_ip", "10.0.0.300", "IP address"),
    _bad("COS_ACCOUNT_0", "cos_port", "80", "needs cos_ip"),
    _bad("COS_ACCOUNT_0", "delete_enable", "maybe", "true or false"),
    _bad("COS_ACCOUNT_0", "delete_enable", "2", "true or false"),
    _bad("NETWORK", "passive_port", "70000,80000", "65535"),
    _bad("NETWORK", "passive_port", "5,4", "low <= high"),
    _bad("NETWORK", "passive_port", "a,b", "low,high"),
    _bad("NETWORK", "passive_port", "1,2,3", "low,high"),
    _bad("NETWORK", "listen_port", "70000", "between 0 and 65535"),
    _bad("NETWORK", "listen_port", "-1", "between 0 and 65535"),
    _bad("NETWORK", "listen_port", "ftp", "integer"),
    _bad("NETWORK", "listen_address", "not-an-ip", "IP address"),
    _bad("NETWORK", "listen_address", "127.0.0.1, ", "IP address"),
    _bad("NETWORK", "listen_address", "::1, ::1", "lists ::1 twice"),
    _bad("NETWORK", "listen_address", "0.0.0.0, 127.0.0.1", "0.0.0.0 already covers 127.0.0.1"),
    _bad("NETWORK", "listen_address", ":: , ::1", ":: already covers ::1"),
    _bad("NETWORK", "masquerade_address", "999.1.1.1", "IP address or host name"),
    _bad("FILE_OPTION", "single_file_max_size", "big", "integer"),
    _bad("FILE_OPTION", "single_file_max_size", "200G", "integer"),
    _bad("FILE_OPTION", "single_file_max_size", "0", "between"),
    _bad("FILE_OPTION", "single_file_max_size", str(MAX_PARTS * MAX_PART_SIZE + 1), "between"),
    _bad("OPTIONAL", "min_part_size", "2MB", "integer"),
    _bad("OPTIONAL", "min_part_size", str(MIB - 1), "between"),
    _bad("OPTIONAL", "min_part_size", str(5 * GIB + 1), "between"),
    _bad("OPTIONAL", "min_part_size", str(6 * GIB), "between"),
    _bad("OPTIONAL", "upload_thread_num", "0", "between"),
    _bad("OPTIONAL", "login_timeout", "0", "between 1 and 3600"),
    _bad("OPTIONAL", "connect_timeout", "0", "between 1 and 3600"),
    _bad("OPTIONAL", "connect_timeout", "30s", "integer"),
    _bad("OPTIONAL", "max_password_checks", "0", "between 1 and 256"),
    _bad("OPTIONAL", "max_prelogin_connections_per_ip", "-1", "at least 0"),
    _bad("OPTIONAL", "max_connection_num", "-1", "at least 0"),
    _bad("OPTIONAL", "max_list_file", "0", "at least 1"),
    _bad("OPTIONAL", "log_level", "LOUD", "DEBUG"),
    _bad("OPTIONAL", "worker_processes", "0", "between"),
    _bad("NETWORK", "proxy_protocol", "on", "off, optional, required"),
    _bad("NETWORK", "proxy_allowed", "10.0.0.0/33", "CIDR"),
    _bad("NETWORK", "proxy_protocol", "required", "needs proxy_allowed"),
    _bad("CLUSTER", "redis_url", "10.0.0.20:6379", "redis://"),
    _bad("CLUSTER", "redis_down", "maybe", "open, closed"),
    _bad("CLUSTER", "redis_timeout", "0", "between 1 and 10000"),
    _bad("CLUSTER", "redis_check_interval", "0", "between 1 and 3600"),
    _bad("OPTIONAL", "auth_hook_url", "ftp://auth.example.com/", "http:// or https://"),
    _bad("OPTIONAL", "auth_hook_url", "https:///login", "with a host"),
    _bad("OPTIONAL", "auth_hook_command", "ftp-auth --check", "absolute path"),
    _bad("OPTIONAL", "auth_hook_command", "/nonexistent/ftp-auth", "not an executable"),
    _bad("OPTIONAL", "auth_hook_command", "/bin/true 'unclosed", "cannot be split"),
    _bad("OPTIONAL", "auth_hook_timeout", "50", "between 100 and 60000"),
    _bad("OPTIONAL", "auth_hook_order", "random", "file_first, hook_first"),
    _bad("OPTIONAL", "auth_cache_ttl", "-1", "between 0 and 86400"),
    _bad("COS_CREDENTIALS_shared", "cos_secretid", "", "is required"),
    _bad("HOOKS", "event_hook_url", "ftp://x.example/", "http:// or https://"),
    _bad("HOOKS", "event_hook_url", "https:///path", "with a host"),
    _bad("HOOKS", "event_hook_command", "ingest --now", "absolute path"),
    _bad("HOOKS", "event_hook_command", "/no/such/program", "not an executable"),
    _bad("HOOKS", "event_hook_command", "/bin/true 'open", "cannot be split"),
    _bad("HOOKS", "event_hook_events", "upload, uploaded", "uploaded"),
    _bad("HOOKS", "event_hook_paths", "incoming/*", "starting with /"),
    _bad("HOOKS", "event_spool_max_mib", "0", "between 1"),
    _bad("HOOKS", "event_spool_full", "block", "refuse, drop_oldest"),
    _bad("HOOKS", "hook_retry_max_age", "0", "at least 1"),
    _bad("HOOKS", "pre_hook_failure", "ajar", "closed, open"),
    _bad("HOOKS", "pre_hook_timeout", "0", "between 1 and 300"),
    _bad("COS_ACCOUNT_0", "pre_upload_hook_url", "http://", "with a host"),
])
def test_bad_values_name_file_section_and_option(load_error, section, option, value,
                                                  fragment):
    path, message = load_error(set_option(MINIMAL, section, option, value))
    assert_names(message, path, section, option)
    assert fragment in message, message
    for secret in (SECRET_ID, SECRET_KEY, PASSWORD):
        assert secret not in message


@pytest.mark.parametrize(("section", "option", "value"), [
    ("FILE_OPTION", "single_file_max_size", str(MAX_PARTS * MAX_PART_SIZE)),
    ("FILE_OPTION", "single_file_max_size", "1"),
    ("OPTIONAL", "min_part_size", str(MIB)),
    ("OPTIONAL", "min_part_size", str(5 * GIB)),
    ("NETWORK", "listen_port", "0"),
    ("NETWORK", "listen_port", "65535"),
    ("NETWORK", "passive_port", "1,1"),
    ("NETWORK", "passive_port", "65535,65535"),
    ("OPTIONAL", "connect_timeout", "1"),
    ("OPTIONAL", "connect_timeout", "3600"),
])
def test_boundary_values_are_accepted(section, option, value):
    parse_config(set_option(MINIMAL, section, option, value), "ok.conf", {})


@pytest.mark.parametrize("bucket", ["examplebucket-1250000000", "a-b-c-1", "0ab-9"])
def test_good_bucket_forms(bucket):
    text = set_option(MINIMAL, "COS_ACCOUNT_0", "cos_bucket", bucket)
    assert parse_config(text, "b.conf", {}).accounts[0].bucket == bucket


@pytest.mark.parametrize(("value", "addresses"), [
    ("::", ("::",)),
    ("0.0.0.0, ::", ("0.0.0.0", "::")),
    ("127.0.0.1,::1", ("127.0.0.1", "::1")),
    ("0:0:0:0:0:0:0:1", ("::1",)),
])
def test_listen_address_takes_one_or_more_addresses(value, addresses):
    text = set_option(MINIMAL, "NETWORK", "listen_address", value)
    assert parse_config(text, "l.conf", {}).network.listen_addresses == addresses


def test_endpoint_replaces_region():
    text = set_option(MINIMAL, "COS_ACCOUNT_0", "cos_region", None)
    text = set_option(text, "COS_ACCOUNT_0", "cos_endpoint", "cos.ap-x.myqcloud.com")
    account = parse_config(text, "x.conf", {}).accounts[0]
    assert (account.region, account.endpoint) == (None, "cos.ap-x.myqcloud.com")


def test_duplicate_user_names_both_sections(load_error):
    path, message = load_error(MINIMAL + "\n" + second_account(user="u"))
    assert_names(message, path, "COS_ACCOUNT_1", "ftp_login_user_name")
    assert "[COS_ACCOUNT_0]" in message and "'u'" in message


@pytest.mark.parametrize("home", ["/h", "h", "/h/"])
def test_duplicate_home_dir_names_both_sections(load_error, home):
    path, message = load_error(MINIMAL + "\n" + second_account(home=home))
    assert_names(message, path, "COS_ACCOUNT_1", "home_dir")
    assert "[COS_ACCOUNT_0]" in message


def test_anonymous_must_be_read_only_and_named_anonymous(load_error):
    text = set_option(MINIMAL, "COS_ACCOUNT_0", "anonymous_enable", "true")
    path, message = load_error(text)
    assert_names(message, path, "COS_ACCOUNT_0", "anonymous_enable")
    text = set_option(text, "COS_ACCOUNT_0", "ftp_login_user_name", "anonymous")
    path, message = load_error(text)
    assert_names(message, path, "COS_ACCOUNT_0", "authority")
    account = parse_config(set_option(text, "COS_ACCOUNT_0", "authority", "R"), "a", {}
                           ).accounts[0]
    assert account.anonymous_enable and not account.can_write


def test_no_account_section(load_error):
    path, message = load_error("[NETWORK]\nlisten_port = 21\n")
    assert message.startswith(f"{path}: ") and "COS_ACCOUNT" in message


@pytest.mark.parametrize("text", [
    "this is not ini\n",
    "[COS_ACCOUNT_0\ncos_bucket = b-1\n",
    MINIMAL + "authority = R\n",
    MINIMAL + "\n" + MINIMAL,
], ids=["no-header", "unclosed-header", "duplicate-option", "duplicate-section"])
def test_ini_syntax_error(load_error, text):
    path, message = load_error(text)
    assert message.startswith(f"{path}: not a valid INI file"), message


def test_unreadable_file(tmp_path):
    missing = tmp_path / "missing.conf"
    with pytest.raises(ConfigError, match="cannot read") as info:
        load_config(str(missing), {})
    assert str(missing) in str(info.value)
    with pytest.raises(ConfigError, match="cannot read") as info:
        load_config(str(tmp_path), {})
    assert str(tmp_path) in str(info.value)
    binary = tmp_path / "latin1.conf"
    binary.write_bytes(MINIMAL.encode() + "# caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="cannot read") as info:
        load_config(str(binary), {})
    assert str(binary) in str(info.value)


def test_load_config_reports_the_absolute_path(tmp_path, monkeypatch):
    (tmp_path / "rel.conf").write_text(MINIMAL, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert load_config("rel.conf", {}).path == str(tmp_path / "rel.conf")


# --- secrets


def test_secrets_stay_out_of_repr():
    config = parse_config(MINIMAL, "s.conf", {})
    for text in (repr(config), str(config), repr(config.accounts[0])):
        for secret in (SECRET_ID, SECRET_KEY, PASSWORD):
            assert secret not in text
    assert "b-1" in repr(config.accounts[0])  # the repr is still useful


def test_bad_password_hash_does_not_echo_the_value(load_error):
    text = set_option(MINIMAL, "COS_ACCOUNT_0", "ftp_login_user_password",
                      "scrypt$PW-sentinel-hash")
    path, message = load_error(text)
    assert_names(message, path, "COS_ACCOUNT_0", "ftp_login_user_password")
    assert "sentinel" not in message


def test_bad_password_from_environment_does_not_echo_the_value(load_error):
    text = set_option(MINIMAL, "COS_ACCOUNT_0", "ftp_login_user_password", "${PW}")
    path, message = load_error(text, {"PW": "scrypt$PW-sentinel-env"})
    assert_names(message, path, "COS_ACCOUNT_0", "ftp_login_user_password")
    assert "sentinel" not in message


@pytest.mark.parametrize("text", [
    MINIMAL.replace(f"cos_secretkey = {SECRET_KEY}", f"cos_secretkey {SECRET_KEY}"),
    MINIMAL.replace(f"ftp_login_user_password = {PASSWORD}", f"ftp_login_user_password {PASSWORD}"),
    f"cos_secretkey = {SECRET_KEY}\n" + MINIMAL,
], ids=["missing-equals-secretkey", "missing-equals-password", "before-any-section"])
def test_syntax_error_on_a_secret_line_does_not_echo_the_secret(load_error, text):
    _, message = load_error(text)
    assert "not a valid INI file" in message
    assert SECRET_KEY not in message and PASSWORD not in message


# --- warnings


def test_unknown_options_and_sections_warn_but_do_not_fail():
    text = set_option(MINIMAL, "OPTIONAL", "frobnicate", "1")
    text = set_option(text, "COS_ACCOUNT_0", "cos_secret_key", "typo")
    text += "\n[EXTRA]\nx = 1\n"
    config = parse_config(text, "w.conf", {})
    assert len(config.accounts) == 1
    assert len(config.warnings) == 3, config.warnings
    assert any("w.conf [OPTIONAL] frobnicate" in w and "unknown option" in w
               for w in config.warnings)
    assert any("w.conf [COS_ACCOUNT_0] cos_secret_key" in w for w in config.warnings)
    assert any("w.conf [EXTRA]" in w and "unknown section" in w for w in config.warnings)
    assert not any("typo" in w for w in config.warnings)


def test_known_file_has_no_warnings():
    assert parse_config(MINIMAL, "w.conf", {}).warnings == ()


# --- immutability


@pytest.mark.parametrize(("attribute", "pick"), [
    ("path", lambda c: c),
    ("user", lambda c: c.accounts[0]),
    ("listen_port", lambda c: c.network),
    ("min_part_size", lambda c: c.transfer),
    ("log_dir", lambda c: c.server),
])
def test_config_is_frozen(attribute, pick):
    target = pick(parse_config(MINIMAL, "f.conf", {}))
    assert isinstance(target, (Config, AccountConfig, NetworkConfig, TransferConfig,
                               ServerConfig))
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(target, attribute, "x")


def test_accounts_and_warnings_are_tuples():
    config = parse_config(MINIMAL, "f.conf", {})
    assert isinstance(config.accounts, tuple) and isinstance(config.warnings, tuple)


# --- part size


def test_part_size_raised_to_a_whole_mib_for_200_gib():
    size = part_size_for(2 * MIB, 200 * GIB)
    assert size % MIB == 0
    assert size >= -(-200 * GIB // MAX_PARTS) and size >= 2 * MIB
    assert size - MIB < -(-200 * GIB // MAX_PARTS)  # the smallest whole MiB that fits
    assert size == 21 * MIB


def test_part_size_unchanged_when_parts_suffice():
    assert part_size_for(2 * MIB, GIB) == 2 * MIB
    assert part_size_for(2 * MIB, MAX_PARTS * 2 * MIB) == 2 * MIB
    assert part_size_for(2 * MIB, MAX_PARTS * 2 * MIB + 1) == 3 * MIB


@pytest.mark.parametrize(("min_size", "max_size"), [
    (MIB, MAX_PARTS * MAX_PART_SIZE),
    (5 * GIB, MAX_PARTS * MAX_PART_SIZE),
    (MIB, MAX_PARTS * MAX_PART_SIZE * 3),
    (MIB, MAX_PARTS * MAX_PART_SIZE - 1),
])
def test_part_size_never_above_5_gib(min_size, max_size):
    size = part_size_for(min_size, max_size)
    assert size <= MAX_PART_SIZE
    assert size * MAX_PARTS >= min(max_size, MAX_PARTS * MAX_PART_SIZE)


def _largest_file_part(text: str) -> int:
    """The part size that fits the largest file the config allows in 10,000 parts."""
    transfer = parse_config(text, "p.conf", {}).transfer
    return part_size_for(transfer.min_part_size, transfer.single_file_max_size)


def test_transfer_part_size_follows_the_config():
    assert _largest_file_part(MINIMAL) == 21 * MIB
    text = set_option(MINIMAL, "FILE_OPTION", "single_file_max_size", str(GIB))
    assert _largest_file_part(text) == 2 * MIB


# --- the shipped example and user lookup


def test_shipped_example_loads(monkeypatch):
    monkeypatch.chdir(ROOT)
    config = load_config("conf/vsftpd.conf.example", {})
    monkeypatch.chdir("/")
    assert load_config(os.path.join(ROOT, "conf", "vsftpd.conf.example"), {}) == config
    assert config.path == os.path.join(ROOT, "conf", "vsftpd.conf.example")
    assert [a.user for a in config.accounts] == ["user0", "user1"]
    assert config.warnings == ()
    assert config.server.log_dir == os.path.join(ROOT, "log")


def test_the_shipped_example_is_all_placeholders(monkeypatch):
    """Its credentials can never work (fatal); its bucket and passwords are warnings."""
    monkeypatch.chdir(ROOT)
    config = load_config("conf/vsftpd.conf.example", {})
    found = {(p.section, p.option, p.fatal) for p in find_placeholders(config)}
    assert found == {(section, option, option.startswith("cos_secret"))
                     for section in ("COS_ACCOUNT_0", "COS_ACCOUNT_1")
                     for option in ("cos_secretid", "cos_secretkey", "cos_bucket",
                                    "ftp_login_user_password")}
    described = [p.describe(config.path) for p in find_placeholders(config)]
    assert all(line.startswith(f"{config.path} [COS_ACCOUNT_") for line in described)
    assert not any("pass0" in line or "pass1" in line for line in described)


@pytest.mark.parametrize(("section", "option", "value", "fatal"), [
    ("COS_ACCOUNT_0", "cos_secretid", "xxxxxxxx", True),
    ("COS_ACCOUNT_0", "cos_secretkey", "XXXXXX", True),
    ("COS_ACCOUNT_0", "cos_bucket", "examplebucket-1250000001", False),
    ("COS_ACCOUNT_0", "ftp_login_user_password", "pass1", False),
    ("NETWORK", "masquerade_address", "203.0.113.10", False),
    ("NETWORK", "masquerade_address", "2001:db8::1", False),
])
def test_each_placeholder_is_found(section, option, value, fatal):
    found = find_placeholders(parse_config(set_option(MINIMAL, section, option, value),
                                           "p.conf", {}))
    assert [(p.section, p.option, p.fatal) for p in found] == [(section, option, fatal)]
    if option in SECRET_OPTIONS:
        assert value not in found[0].problem


@pytest.mark.parametrize(("section", "option", "value"), [
    ("COS_ACCOUNT_0", "cos_secretid", "AKIDXXXXXX"),
    ("COS_ACCOUNT_0", "cos_bucket", "myexamplebucket-1250000000"),
    ("COS_ACCOUNT_0", "ftp_login_user_password", "pass2"),
    ("NETWORK", "masquerade_address", "198.51.99.1"),
])
def test_values_that_only_look_like_placeholders_are_not(section, option, value):
    assert find_placeholders(parse_config(set_option(MINIMAL, section, option, value),
                                          "p.conf", {})) == []


def test_pid_file_is_found_even_when_the_file_is_broken(tmp_path, monkeypatch):
    broken = tmp_path / "broken.conf"
    broken.write_text("[OPTIONAL]\npid_file = /run/x.pid\n[COS_ACCOUNT_0]\nauthority = ?\n")
    found = locate_server(str(broken))
    assert (found.pid_file, found.port, found.problems) == ("/run/x.pid", 2121, ())
    with pytest.raises(ConfigError):
        load_config(str(broken), {})
    (tmp_path / "conf").mkdir()
    in_conf = tmp_path / "conf" / "broken.conf"
    in_conf.write_text("[NETWORK]\nlisten_port = 2200\n[OPTIONAL]\nlog_dir = var\n")
    monkeypatch.chdir("/")
    found = locate_server(str(in_conf))
    assert (found.pid_file, found.port) == (str(tmp_path / "var" / "cosftp.pid"), 2200)


def test_locating_takes_each_option_as_loading_does_and_names_what_it_cannot_use(tmp_path):
    """What status, sessions and stop read of the file is what load_config reads there
    (${NAME} from the environment, paths following the file, the timeouts stop waits
    for); an option whose value cannot be used is named as load_config names it and its
    default taken (the port: unknown), while the rest of the file is not judged."""
    path = tmp_path / "vsftpd.conf"
    text = set_option(MINIMAL, "OPTIONAL", "log_dir", "${RUN_DIR}/log")
    for option, value in (("graceful_timeout", "900"), ("stop_timeout", "45")):
        text = set_option(text, "OPTIONAL", option, value)
    text = set_option(text, "NETWORK", "listen_address", "127.0.0.1, ::1")
    path.write_text(text)
    config = load_config(str(path), {"RUN_DIR": "/srv/ftp"})
    found = locate_server(str(path), {"RUN_DIR": "/srv/ftp"})
    assert found == Located(config.server.pid_file, config.network.listen_port,
                            config.network.listen_addresses, config.server.log_dir, 900, 45)
    assert found.pid_file == "/srv/ftp/log/cosftp.pid"
    path.write_text(set_option(set_option(text, "NETWORK", "listen_port", "ftp"),
                               "OPTIONAL", "stop_timeout", "1") +
                    "[COS_ACCOUNT_late]\nauthority = X\n")
    found = locate_server(str(path), {})
    assert (found.pid_file, found.port, found.stop_timeout) == \
        (str(tmp_path / "log" / "cosftp.pid"), 0, 30)
    assert found.problems == (
        f"{path} [OPTIONAL] log_dir: environment variable RUN_DIR is not set",
        f"{path} [NETWORK] listen_port: must be an integer, got 'ftp'",
        f"{path} [OPTIONAL] stop_timeout: must be between 10 and 3600, got 1")


def test_bans_read_of_the_file_what_loading_reads_there(tmp_path):
    """What cosftpctl bans and unban read of the file (locate_bans: where the server is,
    the options of the bans, [CLUSTER]) is what load_config reads there: ${NAME}, paths
    following the file, the node's name made of the host's and listen_port."""
    path = tmp_path / "vsftpd.conf"
    text = set_option(MINIMAL, "OPTIONAL", "log_dir", "${RUN_DIR}/log")
    for option, value in (("max_login_failures", "3"), ("login_failure_window", "90"),
                          ("ban_time", "1200"), ("ban_allowlist", "192.0.2.0/24, 2001:db8::/48"),
                          ("ipv6_prefix_length", "56")):
        text = set_option(text, "OPTIONAL", option, value)
    text = set_option(text, "NETWORK", "listen_port", "2200")
    for option, value in (("redis_url", "redis://:${REDIS_PASSWORD}@10.0.0.20:6379/0"),
                          ("redis_down", "Closed"), ("redis_timeout", "250"),
                          ("redis_check_interval", "2")):
        text = set_option(text, "CLUSTER", option, value)
    path.write_text(text)
    environ = {"RUN_DIR": "/srv/ftp", "REDIS_PASSWORD": "s3cret"}
    config = load_config(str(path), environ)
    found = locate_bans(str(path), environ)
    server = config.server
    assert found.server == BanOptions(
        server.pid_file, server.log_dir, server.max_login_failures,
        server.login_failure_window, server.ban_time, server.ban_allowlist,
        server.ipv6_prefix_length)
    assert found.server.pid_file == "/srv/ftp/log/cosftp.pid"
    assert found.server.ipv6_prefix_length == 56 and found.server.ban_time == 1200
    assert found.cluster == config.cluster
    assert found.cluster.node_id.endswith(":2200") and found.cluster.redis_timeout == 0.25
    assert found.located == locate_server(str(path), environ)
    assert found.problems == ()


@pytest.mark.parametrize(("section", "option", "value"), [
    ("CLUSTER", "redis_url", "http://10.0.0.20:6379"),
    ("CLUSTER", "redis_url", "redis://:${REDIS_PASSWORD}@10.0.0.20:6379/0"),
    ("CLUSTER", "redis_down", "maybe"),
    ("CLUSTER", "redis_timeout", "0"),
    ("CLUSTER", "redis_check_interval", "often"),
    ("OPTIONAL", "ipv6_prefix_length", "32"),
    ("OPTIONAL", "ban_allowlist", "192.0.2.0/33"),
    ("OPTIONAL", "pid_file", "${PID_DIR}/x.pid"),
])
def test_bans_name_an_option_they_cannot_use_as_loading_does(tmp_path, section, option,
                                                              value):
    """An option bans and unban read but cannot use is named (section, option, problem)
    in the words load_config refuses the file with, whatever else is wrong in the file."""
    path = tmp_path / "vsftpd.conf"
    path.write_text(set_option(MINIMAL, section, option, value))
    with pytest.raises(ConfigError) as refused:
        load_config(str(path), {})
    path.write_text(set_option(MINIMAL, section, option, value) +
                    "[COS_ACCOUNT_late]\nauthority = X\n")
    assert locate_bans(str(path), {}).problems == (str(refused.value),)
    assert f"[{section}] {option}: " in str(refused.value)


def whole_file_location(path: str) -> tuple[str, int]:
    """The pid file and port configparser finds reading all of the file at ``path``: what
    locate_server answered before it read only the sections it needs (its code then)."""
    parser = configparser.RawConfigParser(inline_comment_prefixes=("#",), strict=False)
    with contextlib.suppress(configparser.Error, OSError, UnicodeDecodeError):
        parser.read(path, encoding="utf-8")

    def option(section: str, name: str) -> str:
        value = parser.get(section, name, fallback="").strip()
        return "" if value.lower() == "default" else value

    base = base_dir(path)
    log_dir = os.path.normpath(os.path.join(base, option("OPTIONAL", "log_dir") or "log"))
    pid_file = option("OPTIONAL", "pid_file")
    port = option("NETWORK", "listen_port") or "2121"
    return (os.path.normpath(os.path.join(base, pid_file)) if pid_file
            else os.path.join(log_dir, "cosftp.pid"),
            int(port) if port.isdigit() and int(port) <= 65535 else 0)


ACCOUNT_LINES = "[COS_ACCOUNT_0]\nauthority = RW\n"
LOCATING_CASES = {
    "plain": "[OPTIONAL]\npid_file = /run/a.pid\n[NETWORK]\nlisten_port = 2200\n",
    "defaults": ACCOUNT_LINES,
    "word default": "[OPTIONAL]\npid_file = default\nlog_dir = Default\n",
    "after accounts": ACCOUNT_LINES * 3 + "[OPTIONAL]\nlog_dir = /var/x\n",
    "twice, the last wins": "[OPTIONAL]\npid_file = /a.pid\n" + ACCOUNT_LINES +
                            "[OPTIONAL]\npid_file = /b.pid\n",
    "DEFAULT section": "[DEFAULT]\npid_file = /d.pid\n[OPTIONAL]\nlog_dir = x\n",
    "DEFAULT without OPTIONAL": "[DEFAULT]\npid_file = /d.pid\n" + ACCOUNT_LINES,
    "header comment": "[OPTIONAL] # where it runs\npid_file = /c.pid # ours\n",
    "hash in a header": "[OPTIONAL#x]\npid_file = /h.pid\n[OPTIONAL]\nlog_dir = /y\n",
    "text after a header": "[OPTIONAL]junk\npid_file = /j.pid\n",
    "bracket in a header": "[a]b]\npid_file = /no.pid\n[OPTIONAL]\nlog_dir = /z\n",
    "empty brackets": "[OPTIONAL]\npid_file = /e.pid\n[]\npid_file = /f.pid\n",
    "lower case": "[optional]\npid_file = /l.pid\n",
    "continued value": "[OPTIONAL]\npid_file = /p.pid\n  [NETWORK]\nlisten_port = 7\n",
    "continued account": "[COS_ACCOUNT_0]\nlogin_message = hi\n\t[OPTIONAL]\n"
                         "pid_file = /q.pid\n",
    "indented header": "[COS_ACCOUNT_0]\n\n  [OPTIONAL]\npid_file = /i.pid\n",
    "option before any section": "pid_file = /s.pid\n[OPTIONAL]\npid_file = /t.pid\n",
    "comments before any section": "# a\n; b\n\n  # c\n[OPTIONAL]\npid_file = /u.pid\n",
    "bad line elsewhere": ACCOUNT_LINES + "no equals sign\n[OPTIONAL]\npid_file = /v.pid\n",
    "header in a value": "[OPTIONAL]\nftpd_banner = [NETWORK]\npid_file = /w.pid\n",
    "no newline at the end": "[NETWORK]\nlisten_port = 99999",
    "CRLF": "[OPTIONAL]\r\npid_file = /crlf.pid\r\n[NETWORK]\r\nlisten_port = 21\r\n",
    "nothing": "",
}


@pytest.mark.parametrize("text", LOCATING_CASES.values(), ids=LOCATING_CASES.keys())
def test_locating_the_server_reads_what_configparser_reads_in_the_whole_file(tmp_path, text):
    """locate_server reads only [OPTIONAL], [NETWORK] and [DEFAULT], for speed (5,000
    accounts: 0.4-0.55 s to 16-20 ms), and finds what configparser finds reading it all:
    headers with comments or text after them, sections twice, a header-like line that
    continues a value, lines before any section, bad lines elsewhere. A guard: it passed
    before that change too."""
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "vsftpd.conf"
    path.write_bytes(text.encode("utf-8"))
    found = locate_server(str(path))
    assert (found.pid_file, found.port) == whole_file_location(str(path))


def test_proxy_and_cluster_settings():
    text = set_option(MINIMAL, "NETWORK", "proxy_protocol", "Optional")
    text = set_option(text, "NETWORK", "proxy_allowed", "10.0.0.5, 10.1.0.0/16, ::1")
    text = set_option(text, "CLUSTER", "redis_url", "redis://:secret@10.0.0.20:6379/0")
    text = set_option(text, "CLUSTER", "redis_down", "closed")
    text = set_option(text, "CLUSTER", "redis_check_interval", "2")
    config = parse_config(text, "c.conf", {})
    proxy = config.network.proxy
    assert proxy.mode == "optional" and not proxy.refuses_direct()
    assert proxy.expects_header("10.1.2.3") and proxy.expects_header("::ffff:10.0.0.5")
    assert proxy.expects_header("::1") and not proxy.expects_header("10.0.0.6")
    assert config.cluster.redis_url == "redis://:secret@10.0.0.20:6379/0"
    assert config.cluster.redis_down == "closed" and config.cluster.redis_timeout == 0.5
    assert config.cluster.node_id.endswith(":2121") and config.cluster.redis_check_interval == 2
    default = parse_config(MINIMAL, "m.conf", {})
    assert default.network.proxy.mode == "off" and default.cluster.redis_url is None
    assert default.cluster.redis_check_interval == 5
    assert not default.network.proxy.expects_header("10.0.0.5")


def test_account_for_user():
    """``config.py`` has no ``account_for_user``; the lookup the server uses is the
    authorizer's, built from ``Config.accounts``."""
    config = parse_config(OLD_EXAMPLE, "u.conf", {})
    authorizer = CosAuthorizer(config)
    for account in config.accounts:
        assert authorizer.account(account.user) is account
        assert authorizer.has_user(account.user)
    assert not authorizer.has_user("User0") and not authorizer.has_user("nobody")
    with pytest.raises(KeyError):
        authorizer.account("nobody")


# --- ftp_encoding


def test_ftp_encoding_defaults_to_utf8_and_accounts_inherit_the_servers():
    default = parse_config(MINIMAL, "e.conf", {})
    assert default.server.ftp_encoding == default.accounts[0].ftp_encoding == "utf-8"
    server_wide = parse_config(set_option(MINIMAL, "OPTIONAL", "ftp_encoding", "GBK"),
                               "e.conf", {})
    assert server_wide.server.ftp_encoding == server_wide.accounts[0].ftp_encoding == "gbk"
    text = set_option(MINIMAL, "OPTIONAL", "ftp_encoding", "latin-1")
    own = parse_config(set_option(text, "COS_ACCOUNT_0", "ftp_encoding", "gb18030"),
                       "e.conf", {})
    assert (own.server.ftp_encoding, own.accounts[0].ftp_encoding) == ("iso8859-1", "gb18030")


@pytest.mark.parametrize(("section", "value"), [
    ("OPTIONAL", "klingon"), ("COS_ACCOUNT_0", "utf-16"), ("OPTIONAL", "rot13"),
    ("COS_ACCOUNT_0", "cp037"),
])
def test_bad_ftp_encoding_names_section_and_option(load_error, section, value):
    path, message = load_error(set_option(MINIMAL, section, "ftp_encoding", value))
    assert_names(message, path, section, "ftp_encoding")
    assert "extends ASCII" in message and repr(value) in message


# --- external authentication

HOOKED = set_option(MINIMAL, "OPTIONAL", "auth_hook_url", "https://auth.example.com/ftp")
SHARED = "\n[COS_CREDENTIALS_shared]\ncos_secretid = shared-id\ncos_secretkey = shared-key\n"


def test_the_auth_hook_settings_are_read():
    config = parse_config(set_option(HOOKED + SHARED, "OPTIONAL", "auth_hook_timeout", "250"))
    hook = config.auth_hook
    assert hook.enabled and hook.url == "https://auth.example.com/ftp"
    assert (hook.timeout, hook.cache_ttl, hook.order) == (0.25, 60, "file_first")
    assert config.credentials == {"shared": ("shared-id", "shared-key")}
    assert not parse_config(MINIMAL).auth_hook.enabled


def test_a_hook_url_and_a_hook_command_are_not_both_set(load_error):
    text = set_option(HOOKED, "OPTIONAL", "auth_hook_command", "/bin/true")
    path, message = load_error(text)
    assert_names(message, path, "OPTIONAL", "auth_hook_command")


def test_a_file_account_may_name_a_credentials_section(load_error):
    text = set_option(set_option(MINIMAL, "COS_ACCOUNT_0", "cos_secretid", None),
                      "COS_ACCOUNT_0", "cos_secretkey", None)
    shared = set_option(text, "COS_ACCOUNT_0", "cos_credentials", "shared") + SHARED
    account = parse_config(shared).accounts[0]
    assert (account.secret_id, account.secret_key) == ("shared-id", "shared-key")
    path, message = load_error(set_option(text, "COS_ACCOUNT_0", "cos_credentials", "other")
                               + SHARED)
    assert_names(message, path, "COS_ACCOUNT_0", "cos_credentials")
    path, message = load_error(set_option(MINIMAL, "COS_ACCOUNT_0", "cos_credentials",
                                          "shared") + SHARED)
    assert "cannot come with cos_secretid" in message


def test_a_hook_account_is_read_by_the_accounts_table():
    config = parse_config(HOOKED + SHARED)
    account = hook_account({"cos_bucket": "b-1", "cos_endpoint": "cos.example.com",
                            "cos_credentials": "shared", "authority": "R",
                            "delete_enable": False, "cos_port": 8080, "cos_ip": "10.0.0.1"},
                           "hooky", config)
    assert (account.user, account.bucket, account.endpoint, account.authority) == \
        ("hooky", "b-1", "cos.example.com", "R")
    assert (account.secret_id, account.secret_key) == ("shared-id", "shared-key")
    assert (account.cos_port, account.delete_enable, account.from_hook) == (8080, False, True)


@pytest.mark.parametrize(("answer", "option", "fragment"), [
    ({"cos_bucket": "b-1", "authority": "RW"}, "cos_secretid", "is required"),
    ({"cos_credentials": "other", "cos_bucket": "b-1", "cos_region": "r", "authority": "R"},
     "cos_credentials", "names no [COS_CREDENTIALS_<name>]"),
    ({"cos_credentials": "shared", "cos_secretid": "x", "cos_bucket": "b-1",
      "cos_region": "r", "authority": "R"}, "cos_credentials", "cannot come"),
    ({"cos_credentials": "shared", "cos_bucket": "b-1", "authority": "RW"}, "cos_region",
     "is required (or set cos_endpoint)"),
    ({"cos_credentials": "shared", "cos_bucket": ["b-1"]}, "cos_bucket", "must be text"),
    ({"anonymous_enable": True}, "anonymous_enable", "is set by the server"),
    ({"ftp_login_user_name": "root"}, "ftp_login_user_name", "is set by the server"),
    ({"cos_credentials": "shared", "cos_bucket": "b-1", "cos_region": "r", "authority": "RW",
      "quota_size": "ten"}, "quota_size", "must be a number of bytes"),
    ({"event_hook_url": "https://hooks.example.com/"}, "event_hook_url",
     "is set in the file only"),
    ({"cos_credentials": "shared", "cos_bucket": "b-1", "cos_region": "r",
      "authority": "RW", "cos_port": 80}, "cos_port", "needs cos_ip"),
    ({"cos_bucket\nforged log line": "b-1"}, "'cos_bucket\\nforged log line'",
     "is not an account option"),
    ({"cos_secretid": "i", "cos_secretkey": "${SECRET}", "cos_bucket": "b-1",
      "cos_region": "r", "authority": "RW"}, "cos_secretkey", "environment variable SECRET"),
])
def test_a_hook_account_is_checked_as_strictly_as_the_file(answer, option, fragment):
    config = parse_config(HOOKED + SHARED)
    with pytest.raises(ConfigError) as info:
        hook_account(answer, "hooky", config)
    assert info.value.option == option, str(info.value)
    assert fragment in str(info.value)
    assert "shared-key" not in str(info.value)


# --- event hooks ([HOOKS] and per account)


def with_hooks(text: str, section: str = "HOOKS", **options: str) -> str:
    for option, value in options.items():
        text = set_option(text, section, option, value)
    return text


def test_hooks_of_the_server_and_an_account(tmp_path):
    text = with_hooks(MINIMAL, event_hook_url="https://hooks.example/cosftp",
                      event_hook_secret="server-secret", event_hook_command="/bin/true --x 'a b'",
                      event_hook_paths="/in/*, *.jpg", hook_retry_max_age="3600",
                      event_spool_max_mib="2", event_spool_full="DROP_OLDEST",
                      pre_upload_hook_url="http://check.example/up")
    text = with_hooks(text, "COS_ACCOUNT_0", event_hook_url="http://own.example/e",
                      event_hook_events="upload, delete", event_hook_timeout="3",
                      pre_delete_hook_url="http://own.example/pre")
    config = parse_config(text, str(tmp_path / "h.conf"), {})
    hooks, own = config.hooks, config.accounts[0].hooks
    http, command = hooks.server.targets
    assert (http.kind, http.target, http.secret, http.timeout) == \
        ("http", "https://hooks.example/cosftp", "server-secret", 10)
    assert command.argv == ("/bin/true", "--x", "a b") and command.paths == ("/in/*", "*.jpg")
    assert hooks.spool_dir == str(tmp_path / "log" / "events")
    assert (hooks.spool_max, hooks.spool_full, hooks.retry_max_age) == \
        (2 * MIB, "drop_oldest", 3600)
    (target,) = own.targets
    assert (target.secret, target.timeout, target.events) == \
        ("server-secret", 3, frozenset({"upload", "delete"}))
    assert own.pre_delete.url == "http://own.example/pre" and own.pre_upload is None
    assert hooks.server.pre_upload.secret == "server-secret"
    assert config.events_enabled and config.pre_checks_enabled
    assert "server-secret" not in repr(config)
    plain = parse_config(MINIMAL, "p.conf", {})
    assert not plain.events_enabled and not plain.pre_checks_enabled


def test_an_accounts_receiver_without_any_secret_is_refused(load_error):
    """No secret in the account nor in [HOOKS]: its receivers could not verify anything."""
    text = with_hooks(MINIMAL, "COS_ACCOUNT_0", event_hook_url="http://x.example/")
    path, message = load_error(text)
    assert_names(message, path, "COS_ACCOUNT_0", "event_hook_secret")
    assert "is required with event_hook_url" in message


def test_a_hook_secret_never_shows_in_a_message(load_error):
    text = with_hooks(MINIMAL, event_hook_secret="${HOOK_SECRET}",
                      event_hook_url="http://x.example/")
    assert parse_config(text, "s.conf", {"HOOK_SECRET": "s3cr3t-value"}).hooks.server.targets
    _, message = load_error(set_option(text, "HOOKS", "event_hook_url", "gopher://x"),
                            {"HOOK_SECRET": "s3cr3t-value"})
    assert "s3cr3t-value" not in message


def test_filters_without_a_destination_warn():
    config = parse_config(with_hooks(MINIMAL, event_hook_events="upload"), "w.conf", {})
    assert any("[HOOKS] event_hook_events/event_hook_paths: no event_hook_url" in w
               for w in config.warnings)
    assert not config.events_enabled
