"""Run cosftp-prefork against the embedded COS emulator with a demo account.

Started by ``scripts/demo``. Writes a demo config under ``log/demo/``, starts the emulator and
the server as child processes, prints how to connect and stops both on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_DIR = os.path.join(ROOT, "log", "demo")
BUCKET = "demo-1250000000"
USER, PASSWORD = "demo", "demo"

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
listen_address = 127.0.0.1
listen_port = {port}
passive_port = 60000,60100

[OPTIONAL]
worker_processes = 2
log_dir = {log_dir}
"""


def wait_for_file(path: str, proc: subprocess.Popen, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path, encoding="ascii") as handle:
                return handle.read().strip()
        if proc.poll() is not None:
            sys.exit(f"demo: {proc.args[2]} exited with status {proc.returncode}")
        time.sleep(0.05)
    sys.exit(f"demo: {path} did not appear within {timeout:.0f}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=2121, help="FTP port (default 2121)")
    args = parser.parse_args()
    # Ctrl-C reaches the whole process group; a plain SIGTERM must also stop the children.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    os.makedirs(DEMO_DIR, exist_ok=True)
    ready = os.path.join(DEMO_DIR, "emulator.port")
    if os.path.exists(ready):
        os.unlink(ready)
    emulator = subprocess.Popen([sys.executable, "-m", "cosftp_prefork.emulator", "--port", "0",
                                 "--bucket", BUCKET, "--ready-file", ready], cwd=ROOT)
    server = None
    try:
        cos_port = wait_for_file(ready, emulator)
        config_path = os.path.join(DEMO_DIR, "vsftpd.conf")
        with open(config_path, "w", encoding="utf-8") as handle:
            handle.write(CONFIG.format(bucket=BUCKET, cos_port=cos_port, user=USER,
                                       password=PASSWORD, port=args.port, log_dir=DEMO_DIR))
        server = subprocess.Popen([sys.executable, "-m", "cosftp_prefork.cli", "-c", config_path,
                                   "run"], cwd=ROOT)
        print(f"""
cosftp-prefork demo: bucket {BUCKET} on the embedded COS emulator (port {cos_port}).
  connect:   ftp -p 127.0.0.1 {args.port}
        or:  lftp -u {USER},{PASSWORD} -p {args.port} 127.0.0.1
  user:      {USER}
  password:  {PASSWORD}
  config:    {config_path}
  logs:      {DEMO_DIR}/cosftp.log
Press Ctrl-C to stop.
""", flush=True)
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
