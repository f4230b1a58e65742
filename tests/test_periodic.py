"""The background loop of the abort retrier and the janitor (pure logic; the janitor's
sweeps are tested against the emulator in test_parked_uploads)."""

from __future__ import annotations

import threading

from cosftp_prefork.cos.periodic import Periodic

from .server_proc import wait_until


def test_periodic_runs_its_job_until_stopped():
    runs: list[str] = []
    periodic = Periodic("test-periodic", 0.01, lambda: runs.append(threading.current_thread().name))
    periodic.start()
    wait_until(lambda: len(runs) >= 3, what="three runs")
    periodic.stop()
    stopped = len(runs)
    assert set(runs) == {"test-periodic"}
    assert not any(t.name == "test-periodic" for t in threading.enumerate())
    assert len(runs) == stopped  # no run after stop() returned


def test_periodic_stop_before_start_returns():
    Periodic("never-started", 60, lambda: None).stop()
