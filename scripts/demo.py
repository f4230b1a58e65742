"""Run cosftp-prefork against the embedded COS emulator with a demo account.

Started by ``scripts/demo``. Writes a demo config under ``log/demo/``, starts the emulator and
the server as child processes, prints how to connect once the server serves and stops both
on Ctrl-C. The network options are those of the config's ``[NETWORK]`` section.
"""

from __future__ import annotations

import argparse
import ftplib
import os
import signal
import subprocess
import sys
import time

from cosftp_prefork.config.settings import load_config
from cosftp_prefork.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEMO_DIR = os.path.join(ROOT, "log", "demo")
BUCKET = "demo-1250000000"
USER, PASSWORD = "demo", "demo"
START_TIMEOUT = 60.0

CONFIG = """\
[COS_ACCOUNT_0]
cos_secretid = demo-secret-id
cos_secretkey = demo-secret-key
cos_bucket = {bucket}
cos_region = ap-guangzhou
cos_protocol = http
cos_ip = 127.0.0.1
cos_port = {cos_port}
home_dir = /home/demo
ftp_login_user_name = {user}
ftp_login_user_password = {password}
authority = RW
delete_enable = true

[NETWORK]
listen_address = {listen_address}
listen_port = {port}
passive_port = {passive_ports}
{masquerade}
[OPTIONAL]
worker_processes = 2
log_dir = {log_dir}
{run_as}"""
# As root, the workers would become nobody, who may not read a checkout in a private home
# (root's is 0700): the demo keeps them root. A real installation should not (README,
# docs/security.md).
RUN_AS_ROOT = "run_as_root = true  # the demo only: see docs/security.md\n"

BANNER = """
{rule}
  cosftp-prefork demo: serving on {host} port {port}
  bucket {bucket} on the embedded COS emulator (port {cos_port}, memory only)

  user:      {user}
  password:  {password}
  connect:   ftp -p {host} {port}
        or:  lftp -u {user},{password} -p {port} {host}
  passive:   {passive_ports} (passive_port, low,high)
  config:    {config}
  logs:      {log}

  Press Ctrl-C to stop.
{rule}
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=2121,
                        help="FTP port, [NETWORK] listen_port (default 2121)")
    parser.add_argument("--listen-address", default="127.0.0.1",
                        help="[NETWORK] listen_address (default 127.0.0.1)")
    parser.add_argument("--passive-ports", default="60000,60100",
                        help="[NETWORK] passive_port, low,high (default 60000,60100)")
    parser.add_argument("--cos-port", type=int, default=0,
                        help="the emulator's port (default: a free port, another each run)")
    parser.add_argument("--masquerade-address",
                        help="[NETWORK] masquerade_address, announced in PASV replies")
    parser.add_argument("--dir", default=DEMO_DIR,
                        help="where the demo config and logs go (default log/demo)")
    return parser


def wait_for_file(path: str, proc: subprocess.Popen, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path, encoding="ascii") as handle:
                return handle.read().strip()
        if proc.poll() is not None:
            sys.exit(f"demo: the COS emulator exited with status {proc.returncode}")
        time.sleep(0.05)
    sys.exit(f"demo: {path} did not appear within {timeout:.0f}s")


def connect_host(listen_address: str) -> str:
    """Where a local client reaches a server listening on ``listen_address`` (its first
    address, if it lists several)."""
    first = listen_address.split(",")[0].strip()
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(first, first)


def log_errors(log: str, offset: int, count: int = 5) -> str:
    """The last ``count`` ERROR/CRITICAL lines written to ``log`` after ``offset`` (the last
    lines, if none): why the server stopped, which the server logs to its file only."""
    try:
        with open(log, "rb") as handle:
            handle.seek(offset)
            lines = handle.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    # "2026-12-06 06:59:34,659 CRITICAL [pid role] logger: message"
    errors = [line for line in lines if line.split(" ")[2:3] in (["ERROR"], ["CRITICAL"])]
    return "\n".join((errors or lines)[-count:])


def wait_until_serving(host: str, port: int, proc: subprocess.Popen, log: str,
                       log_offset: int) -> None:
    """Return once the server at ``host`` answers with its FTP banner; exit with the
    reason it logged if it does not."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"demo: the server exited with status {proc.returncode}:\n"
                     f"{log_errors(log, log_offset)}\n(whole log: {log})")
        try:
            with ftplib.FTP() as ftp:
                ftp.connect(host, port, timeout=2)
            return
        except (OSError, EOFError, ftplib.Error):
            time.sleep(0.1)
    sys.exit(f"demo: the server did not answer on port {port} within {START_TIMEOUT:.0f}s; "
             f"see {log}")


def write_config(args: argparse.Namespace, cos_port: str) -> str:
    """Write the demo config into ``args.dir``; exit with the parser's message if the
    options make it invalid."""
    path = os.path.join(args.dir, "vsftpd.conf")
    masquerade = (f"masquerade_address = {args.masquerade_address}\n"
                  if args.masquerade_address else "")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(CONFIG.format(
            bucket=BUCKET, cos_port=cos_port, user=USER, password=PASSWORD,
            listen_address=args.listen_address, port=args.port,
            passive_ports=args.passive_ports, masquerade=masquerade, log_dir=args.dir,
            run_as=RUN_AS_ROOT if os.geteuid() == 0 else ""))
    try:
        load_config(path)
    except ConfigError as exc:
        sys.exit(f"demo: {exc}")
    return path


def banner(args: argparse.Namespace, cos_port: str, config_path: str) -> str:
    """What to connect with, framed so it stands out from pip's and the emulator's output."""
    text = BANNER.format(rule="=" * 76, host=connect_host(args.listen_address),
                         port=args.port, bucket=BUCKET,
                         cos_port=cos_port, user=USER, password=PASSWORD,
                         passive_ports=args.passive_ports,
                         config=config_path, log=os.path.join(args.dir, "cosftp.log"))
    return f"\033[1m{text}\033[0m" if sys.stdout.isatty() else text


def main() -> int:
    args = _parser().parse_args()
    args.dir = os.path.abspath(args.dir)
    # Ctrl-C reaches the whole process group; a plain SIGTERM must also stop the children.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    os.makedirs(args.dir, exist_ok=True)
    ready = os.path.join(args.dir, "emulator.port")
    if os.path.exists(ready):
        os.unlink(ready)
    emulator = subprocess.Popen([sys.executable, "-m", "cosftp_prefork.emulator.app",
                                 "--port", str(args.cos_port), "--bucket", BUCKET,
                                 "--ready-file", ready], cwd=ROOT)
    server = None
    try:
        cos_port = wait_for_file(ready, emulator)
        config_path = write_config(args, cos_port)
        log = os.path.join(args.dir, "cosftp.log")
        log_offset = os.path.getsize(log) if os.path.exists(log) else 0  # earlier runs'
        server = subprocess.Popen([sys.executable, "-m", "cosftp_prefork", "-c", config_path,
                                   "run", "--log-file-only"], cwd=ROOT)
        wait_until_serving(connect_host(args.listen_address), args.port, server, log,
                           log_offset)
        print(banner(args, cos_port, config_path), flush=True)
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        for proc in (server, emulator):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
