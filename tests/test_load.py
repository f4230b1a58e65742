"""A small run of bench/load.py: concurrent mixed sessions, zero errors, every byte intact."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_twenty_sessions_for_ten_seconds_lose_nothing():
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "load.py"), "--sessions", "20",
         "--seconds", "10", "--workers", "2"],
        capture_output=True, text=True, timeout=300,
    )
    result = json.loads(done.stdout[done.stdout.index("{"):])
    assert result["errors"] == 0, result["first_errors"]
    assert result["mismatches"] == 0
    assert result["sessions"] == 20 and result["commands"] > 100
    assert done.returncode == 0
