"""Quotas and accounts an auth hook answers for, on one node: a quota of the file over
their homes, and the quotas the hook's answers give their own homes (issue 23), kept in
auth_hook_quota_homes rows of the usage table."""

from __future__ import annotations

import ftplib
import io
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from .admin_client import RO_TOKEN, AdminClient, admin_server, admin_url
from .conftest import ALPHA
from .crowds import kill_the_worker
from .hooked import FILE_ACCOUNTS, MIB, definition, hooked_server, logs_in, quoted, refused
from .server_proc import Account, ServerProcess, wait_until
from .test_commands import put
from .test_quotas import announced_race, keys_under, park, stopped, used


def test_a_quota_of_the_file_counts_the_hook_accounts_under_it(emulator, tmp_path, service):
    home = f"hq-{uuid.uuid4().hex[:8]}/"
    boss = Account("boss", "boss-pw", ALPHA, extra=f"cos_prefix = {home}\nquota_files = 1")
    service.users["member"] = ("member-pw", definition(emulator, cos_prefix=f"{home}member"))
    settings = {"auth_hook_url": service.url, "auth_hook_timeout": "1000",
                "worker_processes": "1", "max_login_failures": "0"}
    with ServerProcess(str(tmp_path), emulator.port, [*FILE_ACCOUNTS, boss],
                       optional=settings) as server, server.login("member", "member-pw") as ftp:
        ftp.storbinary("STOR one.txt", io.BytesIO(b"1"))
        with pytest.raises(ftplib.error_perm, match=r"^552"):
            ftp.storbinary("STOR two.txt", io.BytesIO(b"2"))


@pytest.fixture
def quota_server(emulator, tmp_path, service):
    # auth_cache_ttl 0: every login brings a new answer (the latest answer's limits hold).
    with hooked_server(emulator, tmp_path, service.url, auth_cache_ttl="0",
                       quota_scan_interval="0", auth_hook_quota_homes="3") as proc:
        yield proc


def test_a_hook_answer_gives_its_account_a_quota_kept_like_the_files(quota_server, service,
                                                                   emulator, cos):
    """quota_size from the answer: the first use scans what another tool wrote, ALLO and a
    resume past it get 552 before their bytes, an upload crossing it is stopped and undone,
    SITE QUOTA shows it."""
    home = f"hookquota-{uuid.uuid4().hex[:8]}/"
    service.users["quoted"] = ("quoted-pw", quoted(emulator, home, quota_size="4M"))
    cos.put_object(Bucket=ALPHA, Key=f"{home}by-another-tool.bin", Body=b"o" * MIB)
    ftp = quota_server.login("quoted", "quoted-pw")
    assert used(ftp) == (MIB, 1)
    assert "4 MiB = 4194304 bytes" in ftp.sendcmd("SITE QUOTA")
    with pytest.raises(ftplib.error_perm, match=r"^552 Quota exceeded: this account's home"):
        ftp.sendcmd(f"ALLO {4 * MIB}")
    assert put(ftp, "fits.bin", b"f" * MIB).startswith("226")
    assert stopped(ftp, "crosses.bin", b"c" * (3 * MIB)).startswith("552 Quota exceeded")
    assert f"{home}crosses.bin" not in keys_under(cos, home)
    assert not keys_under(cos, f"{home}.cosftp/parked/")  # undone, not parked
    assert used(ftp) == (2 * MIB, 2)
    # A resume past the quota: refused before its bytes, the parked upload kept.
    data = b"p" * (3 * MIB)
    park(ftp, cos, "parked.bin", f"{home}parked.bin", data[:2 * MIB + 10])
    ftp = quota_server.login("quoted", "quoted-pw")
    offset = ftp.size("parked.bin")
    assert offset == 2 * MIB
    put(ftp, "more.bin", b"m" * MIB)  # 3 MiB used: no room for the 2 MiB parked
    with pytest.raises(ftplib.error_perm, match=r"^552 Quota exceeded"):
        ftp.storbinary("STOR parked.bin", io.BytesIO(data[offset:]), rest=offset)
    assert ftp.size("parked.bin") == offset  # still parked, still resumable
    ftp.delete("fits.bin")
    ftp.delete("more.bin")
    ftp.storbinary("STOR parked.bin", io.BytesIO(data[offset:]), rest=offset)
    assert used(ftp) == (4 * MIB, 2)
    ftp.quit()


def test_sessions_of_a_hook_quota_racing_for_its_last_bytes_cannot_both_win(quota_server,
                                                                          service, emulator):
    home = f"hookrace-{uuid.uuid4().hex[:8]}/"
    service.users["racer"] = ("racer-pw", quoted(emulator, home, quota_size="2M"))
    first, second = (quota_server.login("racer", "racer-pw") for _ in range(2))
    announced_race((first, "a.bin"), (second, "b.bin"), 3 * MIB // 2, "Quota exceeded")
    assert used(second) == (3 * MIB // 2, 1)
    for ftp in (first, second):
        ftp.quit()


def test_the_files_quota_wins_and_between_answers_the_latest(quota_server, service,
                                                              emulator, tmp_path):
    """A home of the file keeps the file's quota whatever an answer says; a home only
    answers give has the limits of the latest answer, for every session of it."""
    shared = f"hooklatest-{uuid.uuid4().hex[:8]}/"
    service.users["early"] = ("early-pw", quoted(emulator, shared, quota_files=1))
    service.users["late"] = ("late-pw", quoted(emulator, shared, quota_files=3))
    early = quota_server.login("early", "early-pw")
    assert "files: 0 used of 1" in early.sendcmd("SITE QUOTA")
    late = quota_server.login("late", "late-pw")
    for ftp in (early, late):  # the latest answer holds for the session logged in before
        assert "files: 0 used of 3" in ftp.sendcmd("SITE QUOTA")
    put(early, "one.txt", b"1")
    put(early, "two.txt", b"2")  # past the early answer's 1
    service.users["early"] = ("early-pw", quoted(emulator, shared, quota_files=2))
    quota_server.login("early", "early-pw").quit()  # a newer answer: 2 files
    with pytest.raises(ftplib.error_perm, match=r"^552 .*2 of its 2 files \(quota_files\)"):
        put(late, "three.txt", b"3")
    for ftp in (early, late):
        ftp.quit()


def test_a_hook_quota_on_a_home_of_the_file_is_the_files(emulator, tmp_path, service):
    home = f"hookfile-{uuid.uuid4().hex[:8]}/"
    boss = Account("boss", "boss-pw", ALPHA, extra=f"cos_prefix = {home}\nquota_files = 1")
    service.users["same"] = ("same-pw", quoted(emulator, home, quota_files=5))
    settings = {"auth_hook_url": service.url, "auth_hook_timeout": "1000",
                "worker_processes": "1", "max_login_failures": "0"}
    with ServerProcess(str(tmp_path), emulator.port, [*FILE_ACCOUNTS, boss],
                       optional=settings) as server, server.login("same", "same-pw") as ftp:
        assert "files: 0 used of 1" in ftp.sendcmd("SITE QUOTA")
        ftp.storbinary("STOR one.txt", io.BytesIO(b"1"))
        with pytest.raises(ftplib.error_perm, match=r"^552"):
            ftp.storbinary("STOR two.txt", io.BytesIO(b"2"))
        wait_until(lambda: "the file's quota of this home holds" in server.log_text(),
                   what="the answer's quota said to be overruled")


def test_hook_quotas_fill_at_most_auth_hook_quota_homes_then_421(quota_server, service,
                                                                 emulator):
    """auth_hook_quota_homes = 3 homes of the usage table for answers' quotas, each held
    by a live session: a fourth home is refused with 421 and a log line; homes already kept
    and accounts without a quota still log in."""
    tag = uuid.uuid4().hex[:8]
    for number in range(4):
        service.users[f"h{number}"] = ("pw", quoted(emulator, f"hookfull-{tag}/{number}/",
                                                    quota_files=9))
    service.users["free"] = ("pw", definition(emulator, cos_prefix=f"hookfull-{tag}/free/"))
    held = [quota_server.login(f"h{number}", "pw") for number in range(3)]
    assert refused(quota_server, "h3", "pw").startswith("421")
    wait_until(lambda: "auth_hook_quota_homes" in quota_server.log_text(),
               what="the full table logged")
    quota_server.login("h0", "pw").quit()
    quota_server.login("free", "pw").quit()
    for ftp in held:
        ftp.quit()


def few_hook_homes(emulator, tmp_path, service, root: str, user: str, users: int,
                   homes: int) -> ServerProcess:
    """A server keeping ``homes`` rows for the answers' quotas (auth_cache_ttl and
    quota_scan_interval 0: a row is free at once when no session of its home is logged in),
    and ``users`` hook accounts ``<user>0``... (password ``pw``), each its own home under
    ``root`` with a quota of 9 files."""
    for number in range(users):
        service.users[f"{user}{number}"] = ("pw", quoted(emulator, f"{root}/{number}/",
                                                         quota_files=9))
    return hooked_server(emulator, tmp_path, service.url, auth_cache_ttl="0",
                         quota_scan_interval="0", auth_hook_quota_homes=str(homes))


def test_a_hook_homes_row_is_free_again_once_no_session_holds_it(emulator, tmp_path,
                                                                  service, cos):
    """auth_hook_quota_homes = 2, auth_cache_ttl and quota_scan_interval 0 (a row is free
    at once when no session of its home is logged in): while both rows have a live
    session a third home gets 421; once one of them logs out the third gets in, in turn; a
    freed home answered again is scanned again at its first use; a row with a live session
    keeps its usage through it all."""
    tag = uuid.uuid4().hex[:8]
    with few_hook_homes(emulator, tmp_path, service, f"hookreuse-{tag}", "r", 3, 2) as proc:
        first = proc.login("r0", "pw")
        assert put(first, "kept.bin", b"k").startswith("226")
        second = proc.login("r1", "pw")
        assert used(second) == (0, 0)
        assert refused(proc, "r2", "pw").startswith("421")
        second.quit()
        wait_until(lambda: logs_in(proc, "r2", "pw"), what="r1's row free for r2")
        # r1's home was freed: what another tool wrote meanwhile is found by a new scan.
        cos.put_object(Bucket=ALPHA, Key=f"hookreuse-{tag}/1/by-another-tool.bin", Body=b"o")
        wait_until(lambda: logs_in(proc, "r1", "pw"), what="r2's row free for r1")
        again = proc.login("r1", "pw")
        assert used(again) == (1, 1)
        again.quit()
        assert used(first) == (1, 1)  # r0's row, held all along, kept its usage
        first.quit()


def crowd_logs_in(server: ServerProcess, users: list[str]) -> dict[str, object]:
    """Log ``users`` in at once (password ``pw``); each user's session, or the reply that
    refused it (its connection closed)."""
    def attempt(user: str) -> object:
        ftp = ftplib.FTP(encoding="utf-8")
        ftp.connect(server.host, server.port, timeout=30)
        try:
            ftp.login(user, "pw")
            return ftp
        except ftplib.Error as exc:
            ftp.close()
            return str(exc)

    with ThreadPoolExecutor(len(users)) as pool:
        return dict(zip(users, pool.map(attempt, users)))


def test_a_hook_homes_row_held_by_a_killed_workers_session_is_free_again(emulator, tmp_path,
                                                                         service):
    """auth_hook_quota_homes = 1, one worker: a session of the one home is logged in, so a
    second home gets 421; the worker is SIGKILLed (its session never leaves): the master
    gives back its session count when it reaps it, and the second home gets in."""
    tag = uuid.uuid4().hex[:8]
    with few_hook_homes(emulator, tmp_path, service, f"hookkill-{tag}", "k", 2, 1) as proc:
        first = proc.login("k0", "pw")
        assert refused(proc, "k1", "pw").startswith("421")
        kill_the_worker(proc.proc.pid)
        first.close()
        proc.login("k1", "pw").quit()


def test_crowds_of_new_hook_homes_take_the_free_rows_and_the_rest_get_421(emulator, tmp_path,
                                                                        service, cos):
    """auth_hook_quota_homes = 2, two workers: eight hook users, a home each, log in all at
    once; two get in, the others get 421 and are closed. Each winner's row is its own
    home's (each home holds a file of its own size, written by another tool, and that is
    what its SITE QUOTA counts), and cosftpctl quota lists just those two. Once they leave,
    the next crowd (those refused) takes the freed rows the same way, until all got in."""
    from .test_master import state_of

    tag = uuid.uuid4().hex[:8]
    homes = {f"c{number}": f"hookcrowd-{tag}/{number}/" for number in range(8)}
    for number, (user, home) in enumerate(homes.items()):
        service.users[user] = ("pw", quoted(emulator, home, quota_files=9))
        cos.put_object(Bucket=ALPHA, Key=f"{home}by-another-tool.bin", Body=b"o" * (number + 1))
    with hooked_server(emulator, tmp_path, service.url, worker_processes="2",
                       auth_cache_ttl="0", quota_scan_interval="0",
                       auth_hook_quota_homes="2") as proc:
        waiting = list(homes)
        while waiting:
            outcome = crowd_logs_in(proc, waiting)
            winners = {user: ftp for user, ftp in outcome.items()
                       if isinstance(ftp, ftplib.FTP)}
            refusals = [reply for reply in outcome.values() if isinstance(reply, str)]
            assert len(winners) == min(2, len(waiting)), outcome
            assert all(reply.startswith("421 Too many homes with a quota") for reply in
                       refusals), refusals
            for user, ftp in winners.items():
                assert used(ftp) == (list(homes).index(user) + 1, 1), user
            shown = proc.ctl("quota").stdout
            listed = set(re.findall(rf"(?m)^{ALPHA}/(hookcrowd-{tag}/\d+/)$", shown))
            assert listed == {homes[user] for user in winners}, shown
            for ftp in winners.values():
                ftp.quit()
            waiting = [user for user in waiting if user not in winners]
            wait_until(lambda: not any(w.sessions for w in state_of(proc).workers()),
                       what="the sessions gone, their rows free")


def test_cosftpctl_quota_and_the_admin_api_list_the_homes_answers_gave_a_quota(
        emulator, tmp_path, service):
    """A home whose quota only an answer gives: its own rows in cosftpctl quota and in GET
    /api/v1/quotas (hook_homes), with bucket, prefix, limits, usage and the answer's time."""
    home = f"hooklisted-{uuid.uuid4().hex[:8]}/"
    service.users["listed"] = ("pw", quoted(emulator, home, quota_size="4M", quota_files=7))
    with admin_server(str(tmp_path), emulator.port, auth_hook_url=service.url,
                      auth_hook_timeout="1000", worker_processes="1") as proc:
        before = time.time()
        ftp = proc.login("listed", "pw")
        assert put(ftp, "a.bin", b"a" * 1000).startswith("226")
        ftp.quit()
        answer = AdminClient(admin_url(proc)).get("/quotas", token=RO_TOKEN)
        [listed] = [row for row in answer["hook_homes"] if row["prefix"] == home]
        assert before <= listed.pop("answered") <= time.time()
        assert before <= listed.pop("scanned") <= time.time()
        assert listed == {"bucket": ALPHA, "prefix": home, "reserved_bytes": 0,
                          "size": {"used": 1000, "limit": 4 * MIB},
                          "files": {"used": 1, "limit": 7}}
        assert answer["enabled"]
        shown = proc.ctl("quota")
        assert shown.returncode == 0, shown.stderr
        assert re.search(rf"(?m)^{ALPHA}/{home}\n +1000 +4 MiB +1 +7 +0 ", shown.stdout), \
            shown.stdout


def test_a_file_moved_from_a_hook_home_into_a_folder_with_a_quota_leaves_the_home(
        emulator, tmp_path, service):
    """A hook home with a quota, a virtual folder with the file's quota (quota_files): a
    file renamed from the home into the folder counts in the folder and no longer in the
    home at once (not at the home's next scan), and back again."""
    root = f"hookmove-{uuid.uuid4().hex[:8]}/"
    folder = f"\n[FOLDER_q]\ncos_prefix = {root}q\nauthority = RW\nquota_files = 5\n"
    boss = Account("boss", "boss-pw", ALPHA, extra=f"cos_prefix = {root}boss\n"
                   "virtual_folders = /q=q")
    service.users["mover"] = ("pw", quoted(emulator, f"{root}home/", quota_files=9,
                                           virtual_folders="/q=q"))
    settings = {"auth_hook_url": service.url, "auth_hook_timeout": "1000",
                "worker_processes": "1", "max_login_failures": "0"}
    with ServerProcess(str(tmp_path), emulator.port, [boss], optional=settings,
                       sections=folder) as proc:
        ftp = proc.login("mover", "pw")
        assert put(ftp, "moved.bin", b"m" * 10).startswith("226")
        assert used(ftp) == (10, 1)
        ftp.rename("moved.bin", "/q/moved.bin")
        assert used(ftp) == (0, 0)
        assert "files: 1 used of 5" in ftp.sendcmd("SITE QUOTA")  # the folder's
        ftp.rename("/q/moved.bin", "/back.bin")
        assert used(ftp) == (10, 1)
        assert "files: 0 used of 5" in ftp.sendcmd("SITE QUOTA")
        ftp.quit()
