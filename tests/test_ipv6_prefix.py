"""``[OPTIONAL] ipv6_prefix_length``: an IPv6 client is its network (a /64 by default) for
the per-address limits and the bans, as it usually owns all of it and could hop across
2^64 addresses to escape them; IPv4 (IPv4-mapped IPv6 too) stays exact, and the session
table still shows each session's own address. This machine has only ::1, so the clients'
addresses come in PROXY ``TCP6`` headers from the "balancer"."""

from __future__ import annotations

import ftplib

import pytest

from cosftp_prefork.server.banctl import parse_address
from cosftp_prefork.server.scoreboard import address_group, group_label

from .conftest import ALPHA
from .server_proc import Account, ServerProcess, wait_until
from .test_master import state_of
from .test_proxy import BALANCER, log_lines, proxied_ftp


def tcp6_header(client: str) -> bytes:
    return f"PROXY TCP6 {client} 2001:db8:ffff::1 40000 21\r\n".encode()


def arrive(proc: ServerProcess, client: str) -> ftplib.FTP:
    """A control connection from ``client`` through the balancer (it needs no data
    connection: its source address is never used)."""
    return proxied_ftp(proc, tcp6_header(client), "127.0.0.1")


def fail_logins(proc: ServerProcess, client: str, times: int) -> None:
    for _ in range(times):
        ftp = arrive(proc, client)
        with pytest.raises(ftplib.error_perm):
            ftp.login("alice", "wrong")
        ftp.close()


def server(emulator, tmp_path_factory, name: str, **optional: str) -> ServerProcess:
    return ServerProcess(str(tmp_path_factory.mktemp(name)), emulator.port,
                         [Account("alice", "alice-pw", ALPHA)],
                         network={"proxy_protocol": "optional", "proxy_allowed": BALANCER},
                         optional={"max_login_failures": "2", "max_connections_per_ip": "2",
                                   **optional})


@pytest.fixture(scope="module")
def by_network(emulator, tmp_path_factory):
    proc = server(emulator, tmp_path_factory, "by-network").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def exact(emulator, tmp_path_factory):
    proc = server(emulator, tmp_path_factory, "exact", ipv6_prefix_length="128").start()
    yield proc
    proc.stop()


def shown_clients(proc: ServerProcess) -> set[str]:
    state = state_of(proc)
    try:
        return {session.client for session in state.session_details()}
    finally:
        state.close()


def test_addresses_of_one_network_count_as_one_client(by_network):
    """Two addresses of 2001:db8:1::/64 use up its max_connections_per_ip = 2: a third
    address of it is refused, another /64 is not; the sessions still show each exact
    address. IPv4-mapped clients stay apart (::ffff:0:0/64 is every IPv4 address)."""
    first, second = arrive(by_network, "2001:db8:1::1"), arrive(by_network, "2001:db8:1::2")
    assert first.welcome.startswith("220") and second.welcome.startswith("220")
    third = arrive(by_network, "2001:db8:1::ffff:3")
    assert third.welcome.startswith("421") and "same IP" in third.welcome
    elsewhere = arrive(by_network, "2001:db8:2::1")
    assert elsewhere.welcome.startswith("220")
    assert {"2001:db8:1::1", "2001:db8:1::2"} <= shown_clients(by_network)
    assert "2001:db8:1::" not in shown_clients(by_network)
    mapped = [arrive(by_network, f"::ffff:127.0.0.{n}") for n in (41, 41, 42)]
    assert [ftp.welcome[:3] for ftp in mapped] == ["220", "220", "220"]
    assert {"127.0.0.41", "127.0.0.42"} <= shown_clients(by_network)
    for ftp in [first, second, third, elsewhere, *mapped]:
        ftp.close()
    wait_until(lambda: not shown_clients(by_network) & {"2001:db8:1::1", "2001:db8:1::2"},
               what="the sessions of 2001:db8:1::/64 released")


def test_a_ban_earned_by_one_address_bans_its_network(by_network):
    """Two failed logins from 2001:db8:5::1 ban 2001:db8:5::/64: 2001:db8:5::9 is refused,
    2001:db8:6::1 is not; ``cosftpctl bans`` lists the network, and ``unban`` of any of
    its addresses lifts it."""
    fail_logins(by_network, "2001:db8:5::1", 2)
    banned = arrive(by_network, "2001:db8:5::9")
    assert banned.welcome.startswith("421") and "failed logins" in banned.welcome
    banned.close()
    other = arrive(by_network, "2001:db8:6::1")
    assert other.welcome.startswith("220")
    other.login("alice", "alice-pw")
    other.close()
    listing = by_network.ctl("bans")
    assert "2001:db8:5::/64" in listing.stdout, listing
    lifted = by_network.ctl("unban", "2001:db8:5::7")
    assert lifted.returncode == 0, lifted
    back = arrive(by_network, "2001:db8:5::1")
    assert back.welcome.startswith("220")
    back.close()


def test_prefix_length_128_keeps_each_address_apart(exact):
    """``ipv6_prefix_length = 128``: addresses are counted and banned one by one (an option
    the server knows, not one it warns of and ignores)."""
    assert not log_lines(exact, "ipv6_prefix_length")
    fail_logins(exact, "2001:db8:7::1", 2)
    banned = arrive(exact, "2001:db8:7::1")
    assert banned.welcome.startswith("421")
    banned.close()
    neighbours = [arrive(exact, f"2001:db8:7::{n}") for n in (2, 3, 3)]
    assert [ftp.welcome[:3] for ftp in neighbours] == ["220", "220", "220"]
    assert {"2001:db8:7::2", "2001:db8:7::3"} <= shown_clients(exact)
    third = arrive(exact, "2001:db8:7::3")
    assert third.welcome.startswith("421") and "same IP" in third.welcome
    for ftp in [*neighbours, third]:
        ftp.close()


def test_what_an_address_counts_as():
    """IPv6 by its network, IPv4 and IPv4-mapped exact, a zone dropped; the operator may
    name a ban by any address of its network, or by the network, not by another one."""
    assert address_group("2001:db8:1:2:3:4:5:6", 64) == "2001:db8:1:2::"
    assert address_group("2001:db8:1:2:3:4:5:6", 48) == "2001:db8:1::"
    assert address_group("2001:db8:1:2:3:4:5:6", 128) == "2001:db8:1:2:3:4:5:6"
    assert address_group("::ffff:192.0.2.7", 64) == address_group("192.0.2.7", 64) == \
        "192.0.2.7"
    assert address_group("fe80::1%eth0", 64) == "fe80::"
    assert group_label("2001:db8:1:2::", 64) == "2001:db8:1:2::/64"
    assert group_label("192.0.2.7", 64) == "192.0.2.7"
    assert group_label("2001:db8::1", 128) == "2001:db8::1"
    assert parse_address("2001:db8::7", 64) == parse_address("2001:db8::/64", 64) == \
        "2001:db8::"
    for network in ("2001:db8::/48", "192.0.2.0/24", "2001:db8::/64x"):
        with pytest.raises(ValueError, match="is a network"):
            parse_address(network, 64)


def test_a_reload_keeps_the_prefix_length_until_a_restart(emulator, tmp_path_factory):
    """A reload that changes ``ipv6_prefix_length`` keeps the length the server started
    with, says so (section, option, the value kept) and reloads the rest: the bans and
    per-address counts of the running server stay those of its networks, and ``cosftpctl
    bans``/``unban`` name them by that length, not by the file's new one."""
    with server(emulator, tmp_path_factory, "reloaded") as proc:
        fail_logins(proc, "2001:db8:8::1", 2)
        with open(proc.config_path, encoding="utf-8") as handle:
            text = handle.read()
        with open(proc.config_path, "w", encoding="utf-8") as handle:
            handle.write(text.replace("[OPTIONAL]\n", "[OPTIONAL]\nipv6_prefix_length = 128\n"
                                      "ftpd_banner = reloaded.\n"))
        done = proc.ctl("reload")
        assert done.returncode == 0, done
        neighbour = arrive(proc, "2001:db8:8::9")
        assert neighbour.welcome.startswith("421") and "failed logins" in neighbour.welcome
        neighbour.close()
        warned = log_lines(proc, "[OPTIONAL] ipv6_prefix_length")
        assert warned and "next start" in warned[-1] and "64" in warned[-1], warned
        first, second = arrive(proc, "2001:db8:9::1"), arrive(proc, "2001:db8:9::2")
        assert first.welcome == second.welcome == "220 reloaded."  # the rest did reload
        third = arrive(proc, "2001:db8:9::3")
        assert third.welcome.startswith("421") and "same IP" in third.welcome
        for ftp in (first, second, third):
            ftp.close()
        listing = proc.ctl("bans")
        assert "2001:db8:8::/64" in listing.stdout, listing
        lifted = proc.ctl("unban", "2001:db8:8::7")
        assert lifted.returncode == 0 and "was not banned" not in lifted.stdout, lifted
        back = arrive(proc, "2001:db8:8::1")
        assert back.welcome.startswith("220")
        back.close()
