"""``cosftpctl``: start, stop and inspect the server. The only place that exits the process."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from typing import Optional

from .config import Config, load_config
from .errors import ConfigError

DEFAULT_CONFIG = os.path.join("conf", "vsftpd.conf")
START_TIMEOUT = 15.0
STOP_TIMEOUT = 30.0
EXIT_NOT_RUNNING = 3  # LSB status code for "program is not running"

SIGNAL_HELP = """signals understood by the master:
  TERM, INT  fast stop: close the listener, abort transfers (nothing half-written), exit
  QUIT       stop (same as TERM for now)
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cosftpctl", description="FTP server for Tencent Cloud COS buckets.",
        epilog=SIGNAL_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                        help=f"configuration file (default: {DEFAULT_CONFIG})")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run in the foreground (systemd, containers)")
    sub.add_parser("start", help="start in the background and return once it serves")
    sub.add_parser("stop", help="stop the running server")
    sub.add_parser("status", help="say whether the server runs (exit 0) or not (exit 3)")
    sub.add_parser("check", help="validate the configuration file and exit")
    return parser


def read_pid(pid_file: str) -> Optional[int]:
    """Return the pid in ``pid_file`` if that process is alive, else None (stale or absent)."""
    try:
        with open(pid_file, encoding="ascii") as handle:
            pid = int(handle.read().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def cmd_run(config: Config) -> int:
    from .master import Master

    running = read_pid(config.server.pid_file)
    if running:
        print(f"cosftpctl: already running as pid {running} ({config.server.pid_file})",
              file=sys.stderr)
        return 1
    return Master(config, foreground=True).run()


def cmd_start(config: Config) -> int:
    running = read_pid(config.server.pid_file)
    if running:
        print(f"cosftpctl: already running as pid {running}", file=sys.stderr)
        return 1
    os.makedirs(config.server.log_dir, exist_ok=True)
    out_path = os.path.join(config.server.log_dir, "cosftp.out")
    with open(out_path, "ab") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "cosftp_prefork.cli", "-c", config.path, "run"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if read_pid(config.server.pid_file) == child.pid:
            print(f"cosftpctl: started, pid {child.pid}, log in {config.server.log_dir}")
            return 0
        if child.poll() is not None:
            print(f"cosftpctl: server exited with status {child.returncode}; see {out_path}",
                  file=sys.stderr)
            return 1
        time.sleep(0.05)
    print(f"cosftpctl: server did not report ready within {START_TIMEOUT:.0f}s; see {out_path}",
          file=sys.stderr)
    return 1


def cmd_stop(config: Config) -> int:
    pid = read_pid(config.server.pid_file)
    if pid is None:
        print("cosftpctl: not running")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        if read_pid(config.server.pid_file) is None:
            print(f"cosftpctl: stopped pid {pid}")
            return 0
        time.sleep(0.05)
    print(f"cosftpctl: pid {pid} did not stop within {STOP_TIMEOUT:.0f}s", file=sys.stderr)
    return 1


def cmd_status(config: Config) -> int:
    pid = read_pid(config.server.pid_file)
    if pid is None:
        print("cosftpctl: not running")
        return EXIT_NOT_RUNNING
    print(f"cosftpctl: running, master pid {pid}, config {config.path}")
    return 0


def cmd_check(config: Config) -> int:
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{config.path}: OK, {len(config.accounts)} account(s)")
    return 0


COMMANDS = {"run": cmd_run, "start": cmd_start, "stop": cmd_stop, "status": cmd_status,
            "check": cmd_check}


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"cosftpctl: configuration error: {exc}", file=sys.stderr)
        return 2
    return COMMANDS[args.command](config)


if __name__ == "__main__":
    sys.exit(main())
