"""``cosftpctl COMMAND --help``: one manual page per subcommand, as cosftpctl(8) would have.

Each page says what the command does, its exit status and examples; ``cli.build_parser``
gives every subcommand its page, and ``tests/test_docs.py`` runs ``--help`` of each and
parses every example with the real parser, so a page cannot name an option that is gone.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

CONF = "/opt/cosftp-prefork/conf/vsftpd.conf"


@dataclass(frozen=True)
class Page:
    description: str
    examples: tuple[tuple[str, str], ...]  # (command line, what it does)
    exit_status: str = ""

    def epilog(self) -> str:
        lines = []
        if self.exit_status:
            lines += ["exit status:", *(f"  {line}" for line in self.exit_status.splitlines()),
                      ""]
        lines.append("examples:")
        for command, what in self.examples:
            lines += [f"  {command}", f"      {what}"]
        return "\n".join(lines)


PAGES = {
    "run": Page(
        """Run the server in the foreground: the master binds the ports, forks
worker_processes workers and supervises them until TERM or INT (fast stop) or
QUIT (graceful stop). Every log line goes to <log_dir>/cosftp.log and, unless
--log-file-only, to stderr too (the journal under systemd). This is what the
systemd unit runs (conf/cosftp-prefork.service); start runs it in the background.""",
        ((f"cosftpctl -c {CONF} run", "serve in the foreground; Ctrl-C stops it"),
         (f"cosftpctl -c {CONF} run --log-file-only", "the same, logging to the file only")),
        """0  stopped by a signal
1  already running, or could not start or keep its workers (the reason is logged)
2  the configuration file is invalid"""),
    "start": Page(
        """Start the server in the background and return once every worker serves. If
it cannot serve (a port in use, a masquerade_address that does not resolve),
print the errors the server logged, make sure nothing is left running and exit 1.
The server logs to <log_dir>/cosftp.log; <log_dir>/cosftp.out keeps what is
written before logging is set up, and crash tracebacks. Relative paths in the
file follow the file, so the directory you run it from does not matter.""",
        ((f"cosftpctl -c {CONF} start", "start the server of that file"),
         (f"cd / && cosftpctl -c {CONF} start", "the same, from any directory")),
        """0  every worker serves
1  already running, or it did not start (the errors it logged are printed)
2  the configuration file is invalid"""),
    "stop": Page(
        """Stop the server of this configuration file and wait until it is gone. Fast
stop (TERM): transfers in flight end with 426 (an upload is parked for resume,
nothing half-written), every client gets 421, within stop_timeout seconds.
--graceful (QUIT): new connections are refused and transfers in flight end
normally, for at most graceful_timeout seconds, then as a fast stop. Works from
any directory, and while the file does not validate: of it, this reads only
[OPTIONAL] pid_file, log_dir, graceful_timeout, stop_timeout and [NETWORK]
listen_address, listen_port (one it cannot use is named and its default taken).
When the pid file leads to no server, it stops a master of this file found
listening on listen_port, and names any other program holding that port.""",
        ((f"cosftpctl -c {CONF} stop", "fast stop"),
         (f"cosftpctl -c {CONF} stop --graceful", "let the transfers in flight finish first")),
        """0  stopped
1  the port is held by a program that is not this file's server (named), or
   the server did not stop in time
3  not running"""),
    "reload": Page(
        """Have the master reload the configuration file (HUP) and print its verdict. The
master reads and validates the file (this command does not read it beyond
finding the pid file): an invalid one changes nothing, and the master's message
is printed. A valid one starts a new generation of workers on the same sockets
and the old ones drain, so sessions in flight, even a long upload, finish
untouched on the old configuration. If the new workers cannot start, the
master keeps the old ones serving. The warnings the master logged for a reload
it applied are printed on stderr (a setting that takes effect only at the next
start, such as ipv6_prefix_length or run_as_user; an unknown option). --timeout
bounds the wait for the verdict (default 60 s; the master rolls back a
generation not serving after 30 s).""",
        ((f"cosftpctl -c {CONF} reload", "apply an edited file to new sessions"),
         (f"cosftpctl -c {CONF} reload --timeout 120", "the same, on a slow machine"),
         ("systemctl reload cosftp-prefork", "the same through the unit's ExecReload")),
        """0  reloaded
1  the reload failed (a port in use, or the new workers could not start and
   it rolled back: still serving the previous configuration; see cosftp.log),
   or no verdict within --timeout (it may still be running)
2  the master refused the file: its message names the file, section, option
   and problem (or why the workers could not run it); nothing changed. Also
   when this command cannot read the file (no such file, no permission)
3  not running
4  the master that runs is of another version (an upgrade since it started):
   its state file is not read; restart it to run this version"""),
    "status": Page(
        """Show the master (pid, uptime, generation, configuration file, ports), a
"state: stopping ..." line once it stops (exit status still 0), and one
row per worker: pid, generation, state, sessions, uploads and downloads in
flight, bytes up and down, RSS, CPU %, open files and heartbeat age; with
[CLUSTER], whether the workers reach Redis. Works from any directory, and while
the file does not validate: of it, this reads only where the server is
([OPTIONAL] pid_file, log_dir, [NETWORK] listen_address, listen_port; one it
cannot use is named and its default taken), not the accounts: check judges the
file, reload has the master judge it.""",
        ((f"cosftpctl -c {CONF} status", "is it running, and how are its workers"),
         (f"cosftpctl -c {CONF} status >/dev/null || echo down", "for scripts: exit 0 "
          "only when running")),
        """0  running
3  not running
4  a master of this file holds the port but its pid file is elsewhere (started
   before relative paths followed the file?): stop it, then start it again; or
   the master runs another version (an upgrade since it started): restart it"""),
    "sessions": Page(
        """One line per live session of every worker, like ftpwho: the worker's pid, the
user once logged in, the client's address (the real one behind a balancer),
the state, the bytes and rate of the transfer in flight or of the last one, the
time since the last command, and that command (never a password). Updated once
a second. Reads of the file only where the server is, as status does.""",
        ((f"cosftpctl -c {CONF} sessions", "who is connected, doing what"),
         (f"watch -n 1 cosftpctl -c {CONF} sessions", "follow transfers as they run")),
        """0  running
3  not running
4  as for status"""),
    "check": Page(
        """Validate the configuration file without starting anything: every option, the
TLS certificate and key, that masquerade_address resolves, and the version of
the [CLUSTER] Redis and that it takes writes (a key under cosftp: written and
deleted; a refusal, such as a read-only replica, MISCONF or OOM, is a warning
naming Redis's error, as an unreachable Redis is). Credentials left as the
example's XXXXXX are an error; the example's bucket and passwords are warnings,
as are unknown options and an expired certificate (all on stderr). It prints
where log_dir and pid_file are.
--online then tries every account on COS with its own credentials (HEAD Bucket,
a listing of one key, and for write authority an upload started and aborted
under .cosftp/check/, so nothing is stored) and prints one verdict per account:
OK, wrong credentials, clock skew, no such bucket, wrong region, unreachable, no
permission to read, list or write.""",
        (("cosftpctl -c conf/vsftpd.conf check", "validate the file before start or reload"),
         ("cosftpctl -c conf/vsftpd.conf check --online", "and try each account on COS"),
         ("cosftpctl -c conf/vsftpd.conf check --online --timeout 30",
          "the same, for a slow link to COS")),
        """0  the file is valid (and, with --online, every account works)
1  --online: an account failed (its line says why), or the check did not end
2  the file is invalid, or holds the example's placeholder credentials: the
   message names the file, section, option and problem"""),
    "hash-password": Page(
        """Read a password and print its scrypt form (scrypt$N$r$p$salt$hash), for
ftp_login_user_password: on a terminal it asks twice, otherwise it reads one
line of standard input.""",
        (("cosftpctl hash-password", "prompt for a password, print its hash"),
         ("printf '%s\\n' \"$PASSWORD\" | cosftpctl hash-password", "hash one from a script")),
        """0  printed the hash
1  the two passwords differ, or the password is empty"""),
    "bans": Page(
        """List every address banned, or with failed logins within login_failure_window
(not banned yet): its failures, when the ban ends, and where it is held (this
node, the cluster with [CLUSTER] redis_url). For a stopped server, the bans it
saved in <pid_file>.bans, restored at start.""",
        ((f"cosftpctl -c {CONF} bans", "who is banned, until when"),),
        """0  listed
1  Redis could not be asked, or refused (unreachable, BUSY, LOADING, MASTERDOWN:
   stderr says what it answered; this node's bans are listed)
2  the file cannot be read, or an option bans reads cannot be used (where the
   server is, the options of the bans, [CLUSTER]; the accounts are not read)
3  not running (the saved bans are listed)
4  the master that runs is of another version (an upgrade since it started):
   its state file is not read; restart it to run this version"""),
    "unban": Page(
        """Lift the ban of one address, or of every address with --all, and forget its
failed logins: at once on every worker and, with [CLUSTER], on every node. The
saved <pid_file>.bans is updated before it returns, so a stop and start right
after does not bring the ban back; on a stopped server it edits that file. An
address that is not banned is no error (as fail2ban-client's unbanip). Each
unban is logged in cosftp.log with who ran it. Run it as the user that can
write the state file (the server's, or root).""",
        ((f"cosftpctl -c {CONF} unban 203.0.113.9", "let that address log in again"),
         (f"cosftpctl -c {CONF} unban --all", "lift every ban")),
        """0  lifted, or it was not banned
1  a place could not be changed (Redis unreachable, BUSY, LOADING or refusing
   writes: OOM, READONLY, MISCONF...; the bans file not saved): stderr says what
   Redis answered, what was lifted where, and what was not
2  not one IPv4 or IPv6 address (a network is refused too); or the file cannot
   be read, or an option unban reads cannot be used (as for bans)
4  the master that runs is of another version (an upgrade since it started):
   its state file is not changed; restart it to run this version"""),
    "quota": Page(
        """Show each account's quota (quota_size, quota_files of its home) and what the
running server counts in it: bytes and files stored, bytes reserved by uploads
under way, and when the home was last scanned. A home nobody has used since the
master started shows ? (its first session scans it). Accounts sharing a home
share its usage; the smallest limit of theirs holds. Then each virtual folder
with a quota ([FOLDER_<name>] quota_size, quota_files) and the users mounting it
(with USER: that user's folders). Then (without USER) each home whose quota an
auth hook's answer gave (bucket/prefix on a line of its own, the latest answer's
limits, and how long ago it came). With [CLUSTER], the usage is the cluster's,
read from Redis (every node's writes, every live node's reservations), as every
node reserves against it; while Redis cannot be read, this node's table, and
stderr says why.""",
        ((f"cosftpctl -c {CONF} quota", "every account's usage and limits"),
         (f"cosftpctl -c {CONF} quota alice", "alice's only")),
        """0  shown
2  no such account
3  not running
4  the master that runs is of another version (an upgrade since it started):
   its usage table is not read; restart it to run this version"""),
    "quota-scan": Page(
        """Scan the homes and virtual folders with a quota again now (of one account and
its folders, or every one), as the server does every quota_scan_interval: their
usage becomes what COS holds under each prefix (the server's .cosftp/ data and
directory markers not counted), so
that files other tools wrote or deleted are counted. Worker 1 scans; this waits
until it did and shows the usage. Run it as the user that can write the state
file (the server's, or root).""",
        ((f"cosftpctl -c {CONF} quota-scan", "count every home with a quota again"),
         (f"cosftpctl -c {CONF} quota-scan alice", "alice's home and folders only")),
        """0  scanned
1  not scanned within 300 s (see cosftp.log), or the state file not writable
2  no such account, or it has no quota
3  not running
4  the master that runs is of another version (an upgrade since it started):
   its usage table is not changed; restart it to run this version"""),
}


def describe(name: str, command: argparse.ArgumentParser) -> None:
    """Give subcommand ``name`` its manual page (description, exit status, examples)."""
    page = PAGES.get(name)
    if page is None:
        return  # tests/test_docs.py fails for a subcommand without a page
    command.description = page.description
    command.epilog = page.epilog()
    command.formatter_class = argparse.RawDescriptionHelpFormatter
