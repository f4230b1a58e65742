"""A small run of bench/load.py --hostile: concurrent mixed sessions (plain FTP, AUTH TLS and
implicit FTPS, scrypt passwords) alone and then beside small crowds of every attacker, zero
errors, every byte intact, no attacker logged in, the workers back to what they held."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_twenty_sessions_for_ten_seconds_lose_nothing_beside_attackers():
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "load.py"), "--sessions", "20",
         "--seconds", "10", "--workers", "2", "--hostile", "--flood", "50", "--stalls", "40",
         "--guessers", "2", "--drippers", "2", "--tls-guessers", "2", "--garbage", "2"],
        capture_output=True, text=True, timeout=600,
    )
    result = json.loads(done.stdout[done.stdout.index("{"):])
    for run in (result["quiet"], result["hostile"]):
        assert run["errors"] == 0, (run["first_errors"], run["server_log_of_errors"])
        assert run["mismatches"] == 0
        assert run["sessions_by_kind"] == {"ftp": 10, "explicit": 5, "implicit": 5}, run
        assert run["commands"] > 100
    attackers = result["attackers"]
    assert attackers["guesser"]["logins_230"] == attackers["tls_guessers"]["logins_230"] == 0
    assert attackers["tls_garbage"]["closed_by_server"] > 0, attackers["tls_garbage"]
    stalls = attackers["tls_stall"]
    assert sum(group["closed_at_once"] for group in stalls.values()) >= 40 - 16, stalls
    assert result["workers_after_hostile"]["settled"], result["workers_after_hostile"]
    assert result["failures"] == [] and done.returncode == 0, result["failures"]
