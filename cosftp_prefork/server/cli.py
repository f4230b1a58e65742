"""``cosftpctl``: start, stop and inspect the server. The only place that exits the process:
this module parses the command line and reads what the command needs of the file; the
commands are in ``server.ctl``, a module per family, and in ``reloadctl``, ``quotactl``
(with the admin API's reads)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from ..config.locate import locate_in_text, locate_server
from ..config.model import Located
from ..config.settings import load_config
from ..errors import ConfigError
from .ctl.bans import run_bans
from .ctl.check import ONLINE_TIMEOUT, cmd_check
from .ctl.lifecycle import cmd_run, cmd_start, stop
from .ctl.passwords import cmd_hash_password
from .ctl.status import EXIT_UNKNOWN, sessions, status
from .filelayout import OtherLayoutError
from .logs import LOG_FILE_NAME
from .manual import describe
from .pidfile import Target
from .quotactl import cmd_quota, cmd_quota_scan
from .reloadctl import EXIT_REFUSED, RELOAD_TIMEOUT, cmd_reload

DEFAULT_CONFIG = os.path.join("conf", "vsftpd.conf")

SIGNAL_HELP = """signals understood by the master:
  TERM, INT  fast stop (stop): close the listener; a transfer in flight ends with 426 (an
             upload is parked for resume, nothing half-written), every client gets 421; exit
  QUIT       graceful stop (stop --graceful): close the listener (new connections are
             refused), let the transfers in flight end with 226; each worker then tells
             its sessions 421 and exits (after graceful_timeout: as TERM); a TERM (stop)
             cuts it short; exit
  HUP        reload the config file (an invalid file is refused, old config kept)
  USR1       reopen log files (logrotate)
  TTIN/TTOU  one worker more / less
each command's exit status and examples: cosftpctl COMMAND --help
"""


def _seconds(text: str) -> float:
    """A positive number of seconds, for argparse."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < 3600:
        raise argparse.ArgumentTypeError(f"must be seconds between 0 and 3600, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cosftpctl", description="FTP server for Tencent Cloud COS buckets.",
        epilog=SIGNAL_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                        help=f"configuration file (default: {DEFAULT_CONFIG})")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run in the foreground (systemd, containers)")
    run.add_argument("--log-file-only", action="store_true",
                     help="log to log_dir/cosftp.log only, not to stderr too (what start uses)")
    sub.add_parser("start", help="start in the background and return once it serves")
    stop_cmd = sub.add_parser("stop", help="stop the running server (fast: TERM); exit 3 if "
                              "none runs, 1 if another program holds the port")
    stop_cmd.add_argument("--graceful", action="store_true",
                          help="QUIT: refuse new connections, let the transfers in flight "
                               "finish (at most graceful_timeout), then stop")
    reload = sub.add_parser("reload", help="have the master validate the config and reload it "
                            "without dropping sessions")
    reload.add_argument("--timeout", type=_seconds, default=RELOAD_TIMEOUT,
                        help="seconds to wait for the master's verdict (default %(default)g)")
    sub.add_parser("status", help="show master and workers (exit 0), or exit 3 if not running")
    sub.add_parser("sessions", help="one line per live session (like ftpwho): user, client, "
                   "command, bytes, rate, idle time")
    sub.add_parser("bans", help="addresses banned, or with failed logins in the window: "
                   "failures, end of the ban, whose (this node's own, or a copy of "
                   "another node's), where (this node, saved, the cluster)")
    unban = sub.add_parser(
        "unban", help="lift the ban of an address at once on every worker (and, with "
        "[CLUSTER], every node) and forget its failed logins; exit 0 also if it was not "
        "banned (as fail2ban-client's unbanip)")
    which = unban.add_mutually_exclusive_group(required=True)
    which.add_argument("address", nargs="?", help="one IPv4 or IPv6 address")
    which.add_argument("--all", action="store_true", help="every address")
    check = sub.add_parser(
        "check", help="validate the configuration file and exit (2: invalid, or the "
        "example's placeholder credentials); --online: also try each account on COS")
    check.add_argument("--online", action="store_true",
                       help="with each account's credentials, HEAD its bucket, list one key "
                            "and (write authority) start and abort an upload under "
                            ".cosftp/check/; one line per account; exit 1 if one fails")
    check.add_argument("--timeout", type=_seconds, default=ONLINE_TIMEOUT,
                       help="seconds each account may take online (default %(default)s)")
    quota = sub.add_parser("quota", help="usage and limits of each account's quota "
                           "(quota_size, quota_files) in the running server")
    quota.add_argument("user", nargs="?", help="this account only")
    quota_scan = sub.add_parser("quota-scan", help="scan the homes with a quota now (files "
                                "other tools wrote are counted) and show their usage")
    quota_scan.add_argument("user", nargs="?", help="this account's home only")
    sub.add_parser("hash-password",
                   help="read a password (prompt or stdin) and print its scrypt form")
    for name, command in sub.choices.items():
        describe(name, command)
    return parser


# The commands that read of the file only where its server is (``locate_server``): they
# work whatever else is wrong in it, and fast with thousands of accounts.
LOCATING_COMMANDS = ("stop", "status", "sessions", "reload")


def _located_anyway(config_path: str) -> Located:
    """``locate_server`` of the file at ``config_path``, each option it could not use
    printed as a configuration error; where the defaults put the server of a file that
    cannot be read (said too). Stopping or inspecting a running server must not depend on
    the file being valid: the command goes on."""
    try:
        located = locate_server(config_path)
    except ConfigError as exc:
        print(f"cosftpctl: configuration error: {exc}", file=sys.stderr)
        return locate_in_text("", os.path.abspath(config_path))
    for problem in located.problems:
        print(f"cosftpctl: configuration error: {problem}", file=sys.stderr)
    return located


def _run_located(args: argparse.Namespace) -> int:
    """Run one of ``LOCATING_COMMANDS``; return its exit status."""
    if args.command == "reload":  # the master reads the file and gives its verdict
        try:
            located = locate_server(args.config)
        except ConfigError as exc:
            print(f"cosftpctl: configuration error: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        return cmd_reload(Target.located(args.config, located), args.timeout)
    located = _located_anyway(args.config)
    target = Target.located(args.config, located)
    if args.command == "stop":
        return stop(target, args.graceful, located.graceful_timeout, located.stop_timeout)
    if args.command == "status":
        return status(target, os.path.join(located.log_dir, LOG_FILE_NAME))
    return sessions(target)


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except OtherLayoutError as exc:  # the master of the version before an upgrade
        print(f"cosftpctl: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN


def _run(args: argparse.Namespace) -> int:
    """Run the command ``args`` name; return its exit status."""
    if args.command == "hash-password":
        return cmd_hash_password()
    if args.command in LOCATING_COMMANDS:
        return _run_located(args)
    if args.command in ("bans", "unban"):  # what they read of the file: ctl.bans
        return run_bans(args.config, args.command == "unban",
                        None if args.command == "bans" or args.all else args.address)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"cosftpctl: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "run":
        return cmd_run(config, args.log_file_only)
    if args.command == "start":
        return cmd_start(config)
    if args.command == "check":
        return cmd_check(config, args.online, args.timeout)
    if args.command == "quota":
        return cmd_quota(config, args.user)
    return cmd_quota_scan(config, args.user)  # the last one


if __name__ == "__main__":
    sys.exit(main())
