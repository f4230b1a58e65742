"""FTPS configuration: certificate and key validation at load, ``cosftpctl check``, and
reloads with a broken certificate or a moved implicit port."""

from __future__ import annotations

import os
import pathlib
import re
import signal

import pytest

from cosftp_prefork.config.settings import parse_config
from cosftp_prefork.errors import ConfigError

from .conftest import SECURE, _close
from .ftps import implicit_login, implicit_port, tls_login
from .server_proc import (
    ROOT,
    ServerProcess,
    closed_port,
    connection_refused,
    release_port,
    tls_network,
    wait_until,
)
from .test_commands import put
from .test_master import master_of, state_of
from .tls_clients import write_certificate

# --- configuration


def config_text(network: str = "", account: str = "") -> str:
    return f"""
[COS_ACCOUNT_0]
cos_secretid = id
cos_secretkey = key
cos_bucket = alpha-1250000000
cos_region = ap-guangzhou
home_dir = /
ftp_login_user_name = user
ftp_login_user_password = pw
authority = RW
{account}

[NETWORK]
listen_port = 2121
{network}
"""


def config_error(network: str = "", account: str = "") -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(config_text(network, account), "test.conf")
    return str(info.value)


def test_tls_is_off_by_default():
    config = parse_config(config_text(), "test.conf")
    assert config.network.tls is None and config.network.implicit_tls_port == 0
    assert config.accounts[0].tls_required is False


def test_tls_settings_load(certs):
    cert, key = certs
    config = parse_config(config_text(f"tls_certfile = {cert}\ntls_keyfile = {key}\n"
                                      "implicit_tls_port = 990", "tls_required = yes"))
    assert config.network.tls.certfile == cert and config.network.implicit_tls_port == 990
    assert config.network.tls.subject == "CN=127.0.0.1"
    assert config.accounts[0].tls_required is True
    assert config.warnings == ()
    assert not config.network.tls.force_data  # force_local_data_ssl: off unless set


def test_force_local_data_ssl_loads(certs):
    config = parse_config(config_text(f"tls_certfile = {certs[0]}\ntls_keyfile = {certs[1]}\n"
                                      "force_local_data_ssl = YES"))
    assert config.network.tls.force_data and not config.network.tls.force_logins
    assert config.warnings == ()


def test_relative_certificate_paths_follow_the_config_file(tmp_path, monkeypatch):
    (tmp_path / "etc" / "certs").mkdir(parents=True)
    cert, _ = write_certificate(tmp_path / "etc" / "certs")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    text = config_text("tls_certfile = certs/server.crt\ntls_keyfile = certs/server.key")
    tls = parse_config(text, str(tmp_path / "etc" / "vsftpd.conf")).network.tls
    assert tls.certfile == cert  # and certs/server.key was read, or parsing would have failed


def test_one_file_may_hold_certificate_and_key(certs, tmp_path):
    both = tmp_path / "both.pem"
    both.write_bytes(pathlib.Path(certs[0]).read_bytes() + pathlib.Path(certs[1]).read_bytes())
    assert parse_config(config_text(f"tls_certfile = {both}")).network.tls is not None


@pytest.mark.parametrize(("content", "problem"), [
    (None, "cannot read .*: No such file or directory"),
    (b"not a certificate", "holds no valid PEM certificate"),
])
def test_unusable_certificate_file_is_refused(tmp_path, certs, content, problem):
    path = tmp_path / "cert.pem"
    if content is not None:
        path.write_bytes(content)
    message = config_error(f"tls_certfile = {path}\ntls_keyfile = {certs[1]}")
    assert message.startswith("test.conf [NETWORK] tls_certfile: ")
    assert re.search(problem, message), message


def test_unreadable_certificate_path_is_refused(tmp_path):
    message = config_error(f"tls_certfile = {tmp_path}")  # a directory cannot be read
    assert "[NETWORK] tls_certfile: cannot read" in message


def test_key_of_another_certificate_is_refused(tmp_path, certs):
    _, other_key = write_certificate(tmp_path, "other")
    message = config_error(f"tls_certfile = {certs[0]}\ntls_keyfile = {other_key}")
    assert "[NETWORK] tls_keyfile: the private key in" in message
    assert f"does not belong to the certificate in {certs[0]}" in message


def test_encrypted_key_is_refused(tmp_path):
    cert, key = write_certificate(tmp_path, "locked", encrypt=True)
    message = config_error(f"tls_certfile = {cert}\ntls_keyfile = {key}")
    assert "[NETWORK] tls_keyfile: the private key in" in message and "encrypted" in message


def test_file_without_key_is_refused(certs):
    message = config_error(f"tls_certfile = {certs[0]}")  # no tls_keyfile: key expected here
    assert "[NETWORK] tls_certfile: " in message and "no valid PEM private key" in message


@pytest.mark.parametrize(("network", "account", "where"), [
    ("", "tls_required = true", "[COS_ACCOUNT_0] tls_required: needs [NETWORK] tls_certfile"),
    ("implicit_tls_port = 990", "", "[NETWORK] implicit_tls_port: needs tls_certfile"),
    ("tls_keyfile = /k.pem", "", "[NETWORK] tls_keyfile: needs tls_certfile"),
    ("require_ssl_reuse = true", "", "[NETWORK] require_ssl_reuse: needs tls_certfile"),
    ("force_local_logins_ssl = true", "",
     "[NETWORK] force_local_logins_ssl: needs tls_certfile"),
    ("force_local_data_ssl = true", "", "[NETWORK] force_local_data_ssl: needs tls_certfile"),
])
def test_tls_options_need_a_certificate(network, account, where):
    assert where in config_error(network, account)


def test_implicit_port_must_differ_from_listen_port(certs):
    message = config_error(f"tls_certfile = {certs[0]}\ntls_keyfile = {certs[1]}\n"
                           "implicit_tls_port = 2121")
    assert "[NETWORK] implicit_tls_port: 2121 is already listen_port" in message


@pytest.mark.parametrize(("valid_from", "expected"), [(-40, "expired on"),
                                                      (2, "is not valid before")])
def test_out_of_date_certificate_is_a_warning(tmp_path, valid_from, expected):
    cert, key = write_certificate(tmp_path, valid_from=valid_from)
    config = parse_config(config_text(f"tls_certfile = {cert}\ntls_keyfile = {key}"))
    assert config.network.tls is not None
    assert len(config.warnings) == 1 and expected in config.warnings[0]


def test_tls_lines_of_the_shipped_example_load(certs, monkeypatch):
    """Uncommented, with real files, the example's FTPS lines make a valid configuration."""
    monkeypatch.chdir(ROOT)
    with open("conf/vsftpd.conf.example", encoding="utf-8") as handle:
        text = handle.read()
    values = {"tls_certfile": certs[0], "tls_keyfile": certs[1], "tls_required": "true",
              "force_local_data_ssl": "true"}
    for option, value in values.items():
        text, count = re.subn(rf"(?m)^# {option} = \S+", f"{option} = {value}", text)
        assert count == 1, option
    text = re.sub(r"(?m)^# (implicit_tls_port = )", r"\1", text)
    config = parse_config(text, "example", {})
    assert config.network.tls is not None and config.network.implicit_tls_port == 990
    assert config.network.tls.force_data
    assert config.accounts[0].tls_required and not config.accounts[1].tls_required


def test_cosftpctl_check_names_the_bad_certificate(emulator, tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    proc = ServerProcess(str(tmp_path), emulator.port, [SECURE],
                         network={"tls_certfile": str(garbage)})
    proc.write_config()
    done = proc.ctl("check")
    assert done.returncode == 2
    assert f"[NETWORK] tls_certfile: {garbage} holds no valid PEM certificate" in done.stderr


def test_cosftpctl_check_reports_tls(emulator, tmp_path, certs):
    proc = ServerProcess(str(tmp_path), emulator.port, [SECURE], network=tls_network(*certs))
    proc.write_config()
    done = proc.ctl("check")
    assert done.returncode == 0, done.stderr
    assert f"FTPS with {certs[0]}" in done.stdout


# --- reload


def test_reload_with_broken_certificate_keeps_serving_tls(emulator, tmp_path, area):
    cert, key = write_certificate(tmp_path, "renewed")
    with ServerProcess(str(tmp_path), emulator.port, [SECURE],
                       network=tls_network(cert, key)) as proc:
        with open(cert, "w", encoding="ascii") as handle:
            handle.write("truncated by a botched renewal\n")
        done = proc.ctl("reload")
        assert done.returncode != 0 and "[NETWORK] tls_certfile" in done.stderr
        os.kill(master_of(proc).pid, signal.SIGHUP)  # straight to the master, too
        wait_until(lambda: "reload failed" in proc.log_text(), what="reload failure logged")
        assert "holds no valid PEM certificate" in proc.log_text()
        assert state_of(proc).master().generation == 1
        ftp = tls_login(proc, SECURE)  # the certificate loaded at start still serves
        assert put(ftp, area, b"still secure").startswith("226")
        _close(ftp)


def test_reload_moves_the_implicit_port(emulator, tmp_path, certs):
    with ServerProcess(str(tmp_path), emulator.port, [SECURE],
                       network=tls_network(*certs, implicit=True)) as proc:
        _close(implicit_login(proc, SECURE))
        old_port, new_port = implicit_port(proc), closed_port()
        proc.network["implicit_tls_port"] = str(new_port)
        proc.write_config()
        release_port(new_port)  # held until now: no other test file's server takes it
        done = proc.ctl("reload")
        assert done.returncode == 0, done.stderr
        _close(implicit_login(proc, SECURE))
        wait_until(lambda: connection_refused(old_port), what="old implicit port closed")
        assert f"implicit FTPS port {new_port}" in proc.ctl("status").stdout
