"""bench/chaos.py's clients: one that never exits is reported with what it was doing (the
bench is run by hand; this keeps its hang report from rotting)."""

from __future__ import annotations

import os

from bench.client_runs import hang_report, run_client

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
