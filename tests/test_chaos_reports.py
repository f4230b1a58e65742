"""bench/chaos.py's clients: one that never exits is reported with what it was doing (the
bench is run by hand; this keeps its hang report from rotting)."""

from __future__ import annotations

import os

from bench.client_runs import hang_report, lftp_lost_mfmt, run_client

from .control_cutter import ControlCutter
from .test_clients import lftp_command


def test_a_client_that_does_not_exit_is_reported_with_its_sessions_log(server, tmp_path):
    """lftp logged in as alice and listing, then waiting (its ``sleep``) past the timeout:
    the run says it hung, with lftp's state and connections; the report holds the command
    line, lftp's debug log and the server's lines of alice's session, not another user's."""
    debug = str(tmp_path / "lftp.log")
    command = lftp_command(server, f"debug -t -o {debug} 9; cls /; sleep 600")
    bob = server.login("bob", "bob-pw")  # another session in the same moments
    try:
        run = run_client("lftp sleeping", "alice", command, timeout=3, debug_log=debug)
    finally:
        bob.quit()
    assert run.hang is not None and run.returncode != 0
    assert "state sleeping" in run.hang and "ESTABLISHED" in run.hang
    report = hang_report(run, os.path.join(server.log_dir, "cosftp.log"),
                         str(tmp_path / "hung.txt"))
    assert report.startswith("lftp sleeping hung: no exit within")
    assert "sleep 600" in report
    assert "debug: " in report and "---> PASV" in (tmp_path / "hung.txt").read_text()
    server_lines = [line for line in report.splitlines() if line.startswith("    | ")]
    assert any("USER 'alice' logged in" in line for line in server_lines), report
    assert all("user=bob" not in line for line in server_lines), report
    assert lftp_lost_mfmt(run) is None  # waiting in its own sleep, not for a reply


def test_lftp_waiting_for_a_lost_mfmts_reply_is_told_apart(server, tmp_path, area, cos):
    """lftp's own bug (docs/clients.md): the connection lost while lftp waits for an empty
    file's ``MFMT`` reply, lftp waits for ever. Its debug log shows the ``MFMT`` and the
    lost connection with no reply between, which the chaos bench reports as a known client
    bug, not as the server holding lftp."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "empty.bin").write_bytes(b"")
    debug = str(tmp_path / "lftp.log")
    with ControlCutter(server.port, "MFMT") as cutter:
        cutter_server = type("Relay", (), {"port": cutter.port})
        command = lftp_command(cutter_server, f"debug -t -o {debug} 9; "
                               "set net:reconnect-interval-base 1; set net:max-retries 2; "
                               f"mirror -R {source} /{area}")
        run = run_client("lftp mirror", "alice", command, timeout=10, debug_log=debug)
    assert cutter.cut == 1
    assert run.hang is not None and "state sleeping" in run.hang, run.hang
    lost = lftp_lost_mfmt(run)
    assert lost is not None and lost.endswith(" empty.bin"), lost
    assert cos.head_object(Bucket="alpha-1250000000", Key=f"{area}/empty.bin")[
        "Content-Length"] == "0"  # the server stored it before the MFMT


def test_lftp_reconnects_after_losing_site_chmods_reply(server, tmp_path, area, cos):
    """Unlike ``MFMT``, a connection lost while lftp waits for ``SITE CHMOD`` (sent after
    the files) is no hang: lftp reconnects and sends it again (here lost twice, with
    ``net:max-retries 2``: the third is answered), exit 0."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "f.bin").write_bytes(os.urandom(4096))
    debug = str(tmp_path / "lftp.log")
    with ControlCutter(server.port, "SITE CHMOD", cuts=2) as cutter:
        cutter_server = type("Relay", (), {"port": cutter.port})
        command = lftp_command(cutter_server, f"debug -t -o {debug} 9; "
                               "set net:reconnect-interval-base 1; set net:max-retries 2; "
                               f"mirror -R {source} /{area}")
        run = run_client("lftp mirror", "alice", command, timeout=120, debug_log=debug)
    assert cutter.cut == 2 and run.hang is None and run.returncode == 0, run.tail(3)
    log = (tmp_path / "lftp.log").read_text()
    assert log.count("---> SITE CHMOD 644 ./f.bin") == 3
    assert "<--- 200 SITE CHMOD successful." in log
