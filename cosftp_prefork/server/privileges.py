"""Who the workers run as: the master may be root, the processes that serve clients are not.

vsftpd's model. Ports 21 and 990 need root (or ``CAP_NET_BIND_SERVICE``), so the master may
start as root: it binds the listening sockets, writes its pid, state and bans files, and
forks. Each worker and the metrics exporter then becomes ``run_as_user``/``run_as_group``
(default ``nobody`` and its primary group) before it reads anything a client sends: no
supplementary group, group then user (real, effective and saved), checked by trying to get
root back, which must fail. Whatever the master's user, a child also drops every capability
(the unprivileged systemd unit gives the master ``CAP_NET_BIND_SERVICE`` in its ambient set,
which children would inherit) and sets ``no_new_privs``, so no executable could give any back.

A worker imports its stack (pyftpdlib, the COS SDK, OpenSSL) after the drop, and opens the
log files by name. A virtualenv or interpreter under a private home (``/root`` is 0700, and
pyenv's interpreters live in ``~/.pyenv``) cannot be read by ``nobody``: without a check,
every worker would die in an import and the master would give up after a crash loop. So the
master first forks a probe that drops privileges as a worker does, then reads the code's
directories, opens the workers' files and imports the worker; if it cannot, the server does
not start and says which directory keeps the user out and what to do.
"""

from __future__ import annotations

import ctypes
import grp
import os
import pwd
import select
import signal
import stat
import sys
import sysconfig
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

from ..config.model import Config
from ..errors import ConfigError
from ..safefiles import open_append
from .signals import fork_holding_signals

PROBE_TIMEOUT = 60.0  # seconds for the probe to import the worker's stack
_PR_SET_NO_NEW_PRIVS = 38
_CAPABILITY_VERSION_3 = 0x20080522
_MAX_REPORT = 4096  # bytes of the probe's answer


@dataclass(frozen=True)
class Identity:
    """The user and group a child of the master becomes."""

    user: str
    uid: int
    group: str
    gid: int

    def describe(self) -> str:
        return f"{self.user}:{self.group} (uid {self.uid}, gid {self.gid})"


def workers_identity(config: Config) -> Optional[Identity]:
    """The user and group the workers of ``config`` switch to; None if they keep the
    master's (the master is not root, or ``run_as_root``). Raises ``ConfigError`` for a
    user or group this system does not know, or one that is root."""
    run_as = config.run_as
    if os.geteuid() != 0 or run_as.as_root:
        return None
    try:
        user = pwd.getpwuid(int(run_as.user)) if run_as.user.isdigit() \
            else pwd.getpwnam(run_as.user)
    except KeyError:
        raise ConfigError(f"no user {run_as.user!r} on this system: create it (useradd "
                          "--system --user-group --no-create-home --shell /usr/sbin/nologin "
                          "cosftp; see docs/security.md) or name another", config.path, "OPTIONAL",
                          "run_as_user") from None
    gid = user.pw_gid
    if run_as.group is not None:
        try:
            gid = grp.getgrgid(int(run_as.group)).gr_gid if run_as.group.isdigit() \
                else grp.getgrnam(run_as.group).gr_gid
        except KeyError:
            raise ConfigError(f"no group {run_as.group!r} on this system", config.path,
                              "OPTIONAL", "run_as_group") from None
    if user.pw_uid == 0 or gid == 0:
        option = "run_as_user" if user.pw_uid == 0 else "run_as_group"
        raise ConfigError("is root (id 0): the workers would parse what clients send as "
                          "root; choose an unprivileged one or set run_as_root = true",
                          config.path, "OPTIONAL", option)
    return Identity(user.pw_name, user.pw_uid, _group_name(gid), gid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def describe_workers(identity: Optional[Identity]) -> str:
    """One line for the log and ``cosftpctl check``: who serves the clients."""
    if identity is not None:
        return (f"workers and metrics exporter run as {identity.describe()}; the master "
                "stays root to bind ports and keep its pid, state and bans files")
    if os.geteuid() == 0:
        return ("run_as_root = true: the workers and the metrics exporter run as root and "
                "parse what clients send as root")
    uid = os.geteuid()
    return (f"the server runs as {_user_name(uid)} (uid {uid}), not root: its workers keep "
            "that user, no privilege drop (run_as_user applies when started as root)")


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


# --- dropping

def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check_call(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def drop_privileges(identity: Optional[Identity]) -> None:
    """In a child of the master, before it reads anything a client sends: become
    ``identity`` (None: keep the user), lose every capability and the means to gain one
    back. Raises ``OSError`` if a step fails or root could be had back."""
    if identity is not None:
        os.setgroups([])
        os.setresgid(identity.gid, identity.gid, identity.gid)
        os.setresuid(identity.uid, identity.uid, identity.uid)
        _check_no_way_back(identity)
    libc = _libc()
    # Zero permitted, effective and inheritable (ambient follows): what a root that became
    # another user has lost already, and the unprivileged unit's CAP_NET_BIND_SERVICE.
    _check_call(libc.capset(ctypes.byref(_CapHeader(_CAPABILITY_VERSION_3, 0)),
                            (_CapData * 2)()), "capset")
    _check_call(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    left = {name: value for name, value in capabilities().items() if value}
    if left:
        raise OSError(f"capabilities still held after dropping them: {left}")


def _check_no_way_back(identity: Identity) -> None:
    """Raise ``OSError`` unless the process is ``identity`` alone and cannot become root."""
    if os.getresuid() != (identity.uid,) * 3 or os.getresgid() != (identity.gid,) * 3 \
            or os.getgroups():
        raise OSError(f"still has other ids after becoming {identity.describe()}: uids "
                      f"{os.getresuid()}, gids {os.getresgid()}, groups {os.getgroups()}")
    for regain in (os.setuid, os.setgid, os.seteuid):
        try:
            regain(0)
        except PermissionError:
            continue
        raise OSError(f"{regain.__name__}(0) succeeded after becoming {identity.describe()}")


def capabilities() -> dict[str, int]:
    """This process's capability sets (``CapInh``, ``CapPrm``, ``CapEff``, ``CapAmb``)."""
    sets = {}
    # Bytes: just after the drop, a text codec may not be importable (that is what the
    # probe finds out, and says better).
    with open("/proc/self/status", "rb") as status:
        for line in status:
            name, _, value = line.partition(b":")
            if name in (b"CapInh", b"CapPrm", b"CapEff", b"CapAmb"):
                sets[name.decode()] = int(value, 16)
    return sets


# --- the probe: can the workers run as that user?

def code_directories() -> list[str]:
    """Where a worker's code comes from: the standard library (pure and compiled), the
    environment's site-packages and this package's own directory."""
    paths = sysconfig.get_paths()
    # The compiled modules' directory as the interpreter found it (sysconfig's DESTSHARED
    # is where it was built, wrong for an interpreter moved elsewhere).
    compiled = [entry for entry in sys.path if os.path.basename(entry) == "lib-dynload"]
    found = [paths["stdlib"], paths["platstdlib"], *compiled, paths["purelib"],
             paths["platlib"], os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    return [path for path in dict.fromkeys(found) if path and os.path.isdir(path)]


def probe(identity: Identity, files: Sequence[str], directories: Sequence[str],
          load: Callable[[], object]) -> Optional[str]:
    """Fork a child that drops to ``identity`` as a worker does, then reads the code's
    directories, opens ``files`` for appending, writes in ``directories`` and calls
    ``load`` (an import of the worker); return what it could not do (None: all of it)."""
    code = code_directories()  # sysconfig imports more: before the drop, where it can
    read_end, write_end = os.pipe()
    try:
        pid = fork_holding_signals()
    except OSError as exc:  # EAGAIN under a TasksMax / pids limit, ENOMEM
        os.close(read_end)
        os.close(write_end)
        return (f"cannot fork a process to try the workers' user ({exc.strerror}, errno "
                f"{exc.errno}): raise the limit on processes (TasksMax, ulimit -u) or free "
                "memory")
    if pid == 0:
        report: Optional[str] = "the probe failed"
        try:
            os.close(read_end)
            report = _try_as(identity, code, files, directories, load)
        except BaseException as exc:
            report = f"the probe failed: {exc!r}"
        finally:
            os.write(write_end, (report or "").encode("utf-8", "replace")[:_MAX_REPORT])
            os._exit(0 if report is None else 1)
    os.close(write_end)
    try:
        return _probe_result(pid, read_end)
    finally:
        os.close(read_end)


def _probe_result(pid: int, read_end: int) -> Optional[str]:
    deadline = time.monotonic() + PROBE_TIMEOUT
    report = b""
    while True:
        ready, _, _ = select.select([read_end], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(read_end, _MAX_REPORT) if ready else b""
        if not chunk:
            break
        report += chunk
    if not ready:  # the deadline passed with the child still running
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return f"could not import the worker's code within {PROBE_TIMEOUT:.0f}s"
    _, status = os.waitpid(pid, 0)
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        return None
    return report.decode("utf-8", "replace") or f"the probe died (wait status {status})"


def _try_as(identity: Identity, code: Sequence[str], files: Sequence[str],
            directories: Sequence[str], load: Callable[[], object]) -> Optional[str]:
    """In the probe: what ``identity`` cannot do, with why and what to do about it."""
    try:
        drop_privileges(identity)
    except OSError as exc:
        return f"cannot become {identity.describe()}: {exc}"
    who = f"the workers, running as {identity.describe()},"
    for path in code:
        if not os.access(path, os.R_OK | os.X_OK):
            return f"{who} cannot read {path}: {why_not(path, 'read it')}. {CODE_ADVICE}"
    for path in files:
        try:
            os.close(open_append(path))
        except OSError as exc:
            return (f"{who} cannot append to {path}: {exc.strerror}; "
                    f"{why_not(path, 'write it')}. {FILE_ADVICE}")
    for path in directories:
        if not os.access(path, os.W_OK | os.X_OK):
            return (f"{who} cannot create files in {path}: "
                    f"{why_not(path, 'write in it')}. {FILE_ADVICE}")
    try:
        load()
    except (ImportError, OSError) as exc:
        return f"{who} cannot import the server's code: {exc!r}{_unreadable_path()}. " \
               f"{CODE_ADVICE}"
    return None


CODE_ADVICE = ("Install the server where that user can read it: a virtualenv outside any "
               "private home, made with a Python that is outside one too (e.g. "
               "/usr/bin/python3 -m venv /opt/cosftp-prefork/.venv; pyenv's interpreters "
               "are under ~/.pyenv), or set run_as_user to a user who can read it; see "
               "docs/security.md")
FILE_ADVICE = ("Let that user reach it (the directories on the way searchable by it or its "
               "group: chgrp, chmod g+x) or choose another log_dir; see docs/security.md")


def why_not(path: str, action: str) -> str:
    """Why this process cannot ``action`` (say, ``read it``) at ``path``: the first
    directory on the way that it may not search, or the path's own mode and owner."""
    current = os.sep
    for part in os.path.abspath(path).split(os.sep)[1:]:
        if not os.access(current, os.X_OK):
            return f"{_mode_and_owner(current)} does not let it in"
        current = os.path.join(current, part)
    return f"{_mode_and_owner(current)} does not let it {action}"


def _mode_and_owner(path: str) -> str:
    try:
        info = os.stat(path)
    except OSError as exc:
        return f"{path} ({exc.strerror})"
    return (f"{path} (mode {stat.filemode(info.st_mode)}, owner {_user_name(info.st_uid)}, group "
            f"{_group_name(info.st_gid)})")


def _unreadable_path() -> str:
    """The directories of ``sys.path`` this process cannot read, with why: what an import
    that found no module here passed over."""
    unreadable = [f"{entry}: {why_not(entry, 'read it')}" for entry in sys.path
                  if entry and not os.access(entry, os.R_OK | os.X_OK)]
    return f" (unreadable on sys.path: {'; '.join(unreadable)})" if unreadable else ""
