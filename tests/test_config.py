"""Unit tests for config parsing and validation (pure logic, no processes)."""

from __future__ import annotations

import dataclasses
import os

import pytest

from cosftp_prefork.config import (
    GIB,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIB,
    load_config,
    locate_pid_file,
    parse_config,
    part_size_for,
)
from cosftp_prefork.errors import ConfigError
from cosftp_prefork.passwords import hash_password

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

OLD_EXAMPLE = """\
[COS_ACCOUNT_0]
cos_secretid = XXXXXX
cos_secretkey = YYYYYY
cos_bucket = photos-1250000000
cos_region = ap-guangzhou
home_dir = /home/user0
ftp_login_user_name=user0
ftp_login_user_password=pass0
authority=RW
delete_enable=true

[COS_ACCOUNT_1]
cos_secretid = XXXX
cos_secretkey = YYYY
cos_bucket = photos-1250000000
cos_region = ap-guangzhou
home_dir = /home/user1
ftp_login_user_name=user1
ftp_login_user_password=pass1
authority=R
delete_enable=false

[NETWORK]
masquerade_address = 203.0.113.7
listen_port = 2121
passive_port = 60000,65535

[FILE_OPTION]
single_file_max_size = 214748364800

[OPTIONAL]
min_part_size       = default
upload_thread_num   = default
max_connection_num  = 100
max_list_file       = 10000
log_level           = DEBUG
log_dir             = log
"""

MINIMAL = """\
[COS_ACCOUNT_0]
cos_secretid = sid
cos_secretkey = skey
cos_bucket = b-1
cos_region = ap-guangzhou
home_dir = /h
ftp_login_user_name = u
ftp_login_user_password = p
authority = RW
"""


def with_option(text: str, section: str, line: str) -> str:
    header = f"[{section}]\n"
    return text.replace(header, header + line + "\n") if header in text \
        else text + f"\n{header}{line}\n"


def error_for(text: str, environ=None) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "test.conf", environ or {})
    return str(info.value)


def test_old_example_parses_with_defaults():
    config = parse_config(OLD_EXAMPLE, "old.conf", {})
    first, second = config.accounts
    assert (first.user, first.bucket, first.authority, first.delete_enable) == \
        ("user0", "photos-1250000000", "RW", True)
    assert (second.can_read, second.can_write, second.delete_enable) == (True, False, False)
    assert config.network.masquerade_address == "203.0.113.7"
    assert config.network.passive_ports == (60000, 65535)
    assert config.transfer.min_part_size == 2 * MIB
    assert config.server.max_connection_num == 100
    assert config.server.log_level == "DEBUG"
    assert config.server.log_dir == os.path.abspath("log")


def test_defaults_for_missing_options():
    config = parse_config(MINIMAL, "m.conf", {})
    account = config.accounts[0]
    assert (account.protocol, account.delete_enable, account.endpoint) == ("https", True, None)
    assert config.network.listen_address == "0.0.0.0"
    assert config.network.listen_port == 2121
    assert config.transfer.single_file_max_size == 200 * GIB
    assert config.server.max_list_file == 10000
    assert config.server.pid_file == os.path.join(os.path.abspath("log"), "cosftp.pid")
    assert config.server.worker_processes >= 1


def test_inline_comments_and_default_word():
    text = MINIMAL.replace("authority = RW", "authority = RW    # read and write")
    text = with_option(text, "OPTIONAL", "max_list_file = default  # keep it")
    config = parse_config(text, "c.conf", {})
    assert config.accounts[0].authority == "RW"
    assert config.server.max_list_file == 10000


def test_environment_substitution():
    text = MINIMAL.replace("cos_secretkey = skey", "cos_secretkey = ${MY_KEY}")
    assert parse_config(text, "e.conf", {"MY_KEY": "from-env"}).accounts[0].secret_key == \
        "from-env"
    message = error_for(text)
    assert "[COS_ACCOUNT_0]" in message and "cos_secretkey" in message and "MY_KEY" in message


@pytest.mark.parametrize(("section", "line", "option"), [
    ("COS_ACCOUNT_0", "authority = X", "authority"),
    ("COS_ACCOUNT_0", "cos_protocol = ftp", "cos_protocol"),
    ("COS_ACCOUNT_0", "delete_enable = maybe", "delete_enable"),
    ("COS_ACCOUNT_0", "cos_port = 80", "cos_port"),
    ("NETWORK", "passive_port = 70000,80000", "passive_port"),
    ("NETWORK", "passive_port = 5000,4000", "passive_port"),
    ("NETWORK", "passive_port = a,b", "passive_port"),
    ("NETWORK", "listen_port = 70000", "listen_port"),
    ("NETWORK", "listen_address = not-an-ip", "listen_address"),
    ("FILE_OPTION", "single_file_max_size = big", "single_file_max_size"),
    ("FILE_OPTION", f"single_file_max_size = {MAX_PARTS * MAX_PART_SIZE + 1}",
     "single_file_max_size"),
    ("OPTIONAL", "min_part_size = 1000", "min_part_size"),
    ("OPTIONAL", f"min_part_size = {6 * GIB}", "min_part_size"),
    ("OPTIONAL", "log_level = LOUD", "log_level"),
    ("OPTIONAL", "worker_processes = 0", "worker_processes"),
])
def test_bad_values_name_file_section_and_option(section, line, option):
    text = MINIMAL
    if section == "COS_ACCOUNT_0":
        key = line.split(" = ")[0]
        text = "\n".join(existing for existing in MINIMAL.splitlines()
                         if not existing.startswith(key + " "))
    message = error_for(with_option(text, section, line))
    assert message.startswith(f"test.conf [{section}] {option}:"), message


@pytest.mark.parametrize("bucket", ["nobucket", "Bucket-123", "b-abc", "-1"])
def test_bad_bucket_forms(bucket):
    message = error_for(MINIMAL.replace("cos_bucket = b-1", f"cos_bucket = {bucket}"))
    assert "[COS_ACCOUNT_0] cos_bucket" in message and "<name>-<appid>" in message


def test_missing_required_option_and_region_or_endpoint():
    assert "ftp_login_user_name: is required" in error_for(
        MINIMAL.replace("ftp_login_user_name = u\n", ""))
    no_region = MINIMAL.replace("cos_region = ap-guangzhou\n", "")
    assert "cos_region" in error_for(no_region)
    endpoint = with_option(no_region, "COS_ACCOUNT_0", "cos_endpoint = cos.ap-x.myqcloud.com")
    assert parse_config(endpoint, "x", {}).accounts[0].endpoint == "cos.ap-x.myqcloud.com"


def test_duplicate_users_and_home_dirs_name_both_sections():
    second = MINIMAL.replace("COS_ACCOUNT_0", "COS_ACCOUNT_1")
    message = error_for(MINIMAL + "\n" + second)
    assert "[COS_ACCOUNT_1] ftp_login_user_name" in message and "[COS_ACCOUNT_0]" in message
    second = second.replace("ftp_login_user_name = u", "ftp_login_user_name = v")
    assert "home_dir" in error_for(MINIMAL + "\n" + second)


def test_file_level_errors(tmp_path):
    assert "at least one account" in error_for("[NETWORK]\nlisten_port = 21\n")
    assert "not a valid INI file" in error_for("this is not ini")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.conf"))


def test_secrets_stay_out_of_repr_and_errors():
    config = parse_config(MINIMAL, "s.conf", {})
    assert "skey" not in repr(config) and "sid" not in repr(config.accounts[0])
    bad = MINIMAL.replace("ftp_login_user_password = p",
                          "ftp_login_user_password = scrypt$not-a-hash")
    message = error_for(bad)
    assert "ftp_login_user_password" in message and "not-a-hash" not in message


def test_hashed_password_accepted():
    text = MINIMAL.replace("ftp_login_user_password = p",
                           f"ftp_login_user_password = {hash_password('pw')}")
    assert parse_config(text, "h.conf", {}).accounts[0].password.startswith("scrypt$")


def test_anonymous_must_be_read_only_and_named_anonymous():
    text = with_option(MINIMAL, "COS_ACCOUNT_0", "anonymous_enable = true")
    assert "ftp_login_user_name = anonymous" in error_for(text)
    text = text.replace("ftp_login_user_name = u", "ftp_login_user_name = anonymous")
    assert "authority" in error_for(text)


def test_unknown_sections_and_options_warn():
    text = with_option(MINIMAL, "OPTIONAL", "frobnicate = 1") + "\n[EXTRA]\nx = 1\n"
    warnings = parse_config(text, "w.conf", {}).warnings
    assert any("[OPTIONAL] frobnicate" in w for w in warnings)
    assert any("[EXTRA]" in w for w in warnings)


def test_config_is_frozen():
    config = parse_config(MINIMAL, "f.conf", {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.accounts[0].user = "x"  # type: ignore[misc]


def test_part_size_rules():
    assert part_size_for(2 * MIB, GIB) == 2 * MIB
    raised = part_size_for(2 * MIB, 200 * GIB)
    assert raised % MIB == 0 and raised * MAX_PARTS >= 200 * GIB and raised >= 2 * MIB
    assert part_size_for(MIB, MAX_PARTS * MAX_PART_SIZE) == MAX_PART_SIZE


def test_shipped_example_loads_and_pid_file_is_found_even_when_broken(tmp_path):
    example = os.path.join(ROOT, "conf", "vsftpd.conf.example")
    assert len(load_config(example, {}).accounts) == 2
    broken = tmp_path / "broken.conf"
    broken.write_text("[OPTIONAL]\npid_file = /run/x.pid\n[COS_ACCOUNT_0]\nauthority = ?\n")
    assert locate_pid_file(str(broken)) == "/run/x.pid"
