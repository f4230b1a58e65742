"""A Redis 6.0 for the tests: a RESP proxy in front of the real ``redis-server`` (7.x here)
that answers what Redis 6.0.16 (Debian 11, Ubuntu 22.04) answers where 7.x would differ.

* ``INFO`` says ``redis_version:6.0.16`` (or ``version``), and so does ``HELLO``;
* arguments and commands added after 6.0 are refused with 6.0's error text: ``EXPIRE``
  and friends with ``NX|XX|GT|LT`` (an arity error), ``SET`` with ``GET``/``EXAT``/``PXAT``
  (a syntax error), ``CLIENT SETINFO`` (redis-py sends it on connect and ignores the error),
  ``SCRIPT FLUSH ASYNC|SYNC`` and the commands of 6.2 and 7.x;
* a refused command inside ``MULTI`` fails the whole transaction (``EXECABORT``), as the
  arity and syntax checks at queueing time do on a real server;
* a Lua script that calls such a command or ``EXPIRE`` with an option fails when it runs
  (a real 6.0 fails inside the script; the proxy cannot see into 7.x running it, so it
  reads the script's text when it is loaded or evaluated);
* an error a script meets (a write refused by a read-only replica, say) comes as 6.0 wraps
  it: ``ERR Error running script (call to f_<sha>): @user_script:<line>: @user_script:
  <line>: -READONLY ...`` where 7.x answers ``READONLY ... script: <sha>, on
  @user_script:<line>.`` (redis-py then raises a plain ``ResponseError``, not
  ``ReadOnlyError``);
* ``delay``: seconds to wait before forwarding each command (a slow Redis);
* ``commands``: how many commands it received, to count what a client sends, ``names``
  how many of each command (lower case); ``runs``:
  how many times each script ran (``EVALSHA``, by SHA1) and answered;
* :meth:`Redis6Proxy.hold`: the next run of a script waits, before Redis runs it or after
  (its answer kept), until the test releases it: an interleaving of two clients' calls
  made on purpose, not hoped for.

A closed upstream (Redis restarted) closes the client's connection, as a restart would.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import threading
import time
from collections import Counter
from typing import BinaryIO, Optional

# Commands a 6.0 server does not know (6.2 and 7.x), lower case.
NEWER_COMMANDS = frozenset({
    "getex", "getdel", "copy", "lmove", "blmove", "zunion", "zinter", "zdiff", "zdiffstore",
    "zrangestore", "zrandmember", "hrandfield", "smismember", "geosearch", "geosearchstore",
    "xautoclaim", "reset", "failover",  # 6.2
    "expiretime", "pexpiretime", "sintercard", "lmpop", "blmpop", "zmpop", "bzmpop", "lcs",
    "eval_ro", "evalsha_ro", "fcall", "fcall_ro", "function",  # 7.0
    "waitaof",  # 7.2
})
EXPIRES = frozenset({"expire", "pexpire", "expireat", "pexpireat"})
SET_OPTIONS_60 = frozenset({b"ex", b"px", b"nx", b"xx", b"keepttl"})
_CALL = re.compile(rb"""redis\.p?call\(\s*['"]([A-Za-z_]+)['"]""")
# A script's error as Redis 7 answers it: the error, then where in which script.
_SCRIPT_ERROR_7 = re.compile(rb"^-(.*) script: ([0-9a-f]{40}), on @user_script:(\d+)\.\r\n$")


def refusal(args: list[bytes]) -> Optional[bytes]:
    """Redis 6.0.16's error for a command it would refuse that 7.x accepts, or None."""
    name = args[0].decode(errors="replace").lower()
    if name in NEWER_COMMANDS:
        shown = "".join(f"`{arg.decode(errors='replace')[:128]}`, " for arg in args[1:])
        return f"ERR unknown command `{args[0].decode(errors='replace')}`, with args " \
               f"beginning with: {shown}".encode()
    if name in EXPIRES and len(args) != 3:
        return f"ERR wrong number of arguments for '{name}' command".encode()
    if name == "set" and any(a.lower() not in SET_OPTIONS_60 and not a.isdigit()
                             for a in args[3:]):
        return b"ERR syntax error"
    newer_subcommand = (name == "client" and args[1:2] and args[1].lower() == b"setinfo") or \
        (name == "script" and args[1:2] and args[1].lower() == b"flush" and len(args) > 2)
    if newer_subcommand:
        return (f"ERR Unknown subcommand or wrong number of arguments for "
                f"'{args[1].decode(errors='replace')}'. Try {name.upper()} HELP.").encode()
    return None


def script_refusal(body: bytes) -> Optional[bytes]:
    """Why Redis 6.0 would fail running this Lua script, or None."""
    for match in _CALL.finditer(body):
        name = match.group(1).decode().lower()
        line = body[:match.start()].count(b"\n") + 1
        where = f"ERR Error running script (call to f_{hashlib.sha1(body).hexdigest()}): " \
                f"@user_script:{line}: @user_script: {line}: "
        if name in NEWER_COMMANDS:
            return (where + "Unknown Redis command called from Lua script").encode()
        if name in EXPIRES and _arguments(body, match.end()) > 3:
            return (where + "Wrong number of args calling Redis command From Lua "
                    "script").encode()
    return None


def _arguments(body: bytes, start: int) -> int:
    """How many arguments the call whose first one ends at ``start`` has, the command
    name included (commas outside nested parentheses and braces, plus one)."""
    depth, count = 0, 1
    for char in body[start:]:
        if char in b"({[":
            depth += 1
        elif char in b")}]":
            if depth == 0:
                return count
            depth -= 1
        elif char == ord(",") and depth == 0:
            count += 1
    return count


def as_60_script_error(reply: bytes) -> bytes:
    """A Redis 7 reply to ``EVALSHA``/``EVAL`` whose script met an error, as 6.0 words it
    (the call's error after ``ERR Error running script``); any other reply as it is."""
    found = _SCRIPT_ERROR_7.match(reply)
    if found is None:
        return reply
    error, sha, line = found.groups()
    return b"-ERR Error running script (call to f_%s): @user_script:%s: @user_script: %s: " \
           b"-%s\r\n" % (sha, line, line, error)


def read_command(stream: BinaryIO) -> Optional[list[bytes]]:
    """One RESP command (an array of bulk strings), or None at end of stream."""
    header = stream.readline()
    if not header:
        return None
    if not header.startswith(b"*"):
        raise ValueError(f"not a RESP array: {header[:40]!r}")
    args = []
    for _ in range(int(header[1:])):
        length = int(stream.readline()[1:])
        args.append(stream.read(length + 2)[:-2])
    return args


def read_reply(stream: BinaryIO) -> bytes:
    """One whole RESP2 or RESP3 reply (redis-py 6 and later say ``HELLO 3``, which Redis
    6.0 accepts), as the bytes that carry it."""
    header = stream.readline()
    if not header:
        raise EOFError("upstream closed")
    kind, size = header[:1], header[1:-2]
    if kind in b"$=!" and int(size) >= 0:  # bulk and verbatim strings, blob errors
        return header + stream.read(int(size) + 2)
    if kind in b"*~>" and int(size) > 0:  # arrays, sets, pushes
        return header + b"".join(read_reply(stream) for _ in range(int(size)))
    if kind == b"%":  # maps: a key and a value per entry
        return header + b"".join(read_reply(stream) for _ in range(2 * int(size)))
    if kind == b"|":  # attributes, then the reply they describe
        attributes = b"".join(read_reply(stream) for _ in range(2 * int(size)))
        return header + attributes + read_reply(stream)
    return header  # simple strings, errors, integers, nulls, doubles, booleans, big numbers


class Held:
    """The next run of the script ``sha`` (``EVALSHA``; one that fails, such as a
    ``NOSCRIPT``, does not count), held before Redis runs it or, with ``reply``, after:
    ``arrived`` is set once it waits, :meth:`release` lets it go on."""

    def __init__(self, sha: str, reply: bool) -> None:
        self.sha, self.reply, self.taken = sha, reply, False
        self.arrived, self._released = threading.Event(), threading.Event()

    def release(self) -> None:
        self._released.set()

    def wait(self) -> None:
        self.arrived.set()
        self._released.wait()


def encode(args: list[bytes]) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


class Redis6Proxy:
    """Listens on 127.0.0.1:``port`` and relays to the redis-server on ``upstream``."""

    def __init__(self, upstream: int, version: str = "6.0.16") -> None:
        self.upstream, self.version = upstream, version
        self.delay = 0.0
        self.commands = 0
        self.names: Counter[str] = Counter()
        self.runs: Counter[str] = Counter()
        self._held: list[Held] = []
        self._lock = threading.Lock()
        self._refused_scripts: dict[str, bytes] = {}  # sha1 -> why 6.0 fails running it
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open: set[socket.socket] = set()
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self) -> None:
        self._stopped = True
        self._listener.close()
        self.release_holds()
        self.drop_connections()

    def release_holds(self) -> None:
        """Let every held run go on, and hold nothing more (a test's cleanup)."""
        with self._lock:
            held, self._held = self._held, []
        for one in held:
            one.release()

    def hold(self, sha: str, reply: bool = False) -> Held:
        """Hold the next run of the script ``sha`` (see :class:`Held`)."""
        held = Held(sha, reply)
        with self._lock:
            self._held.append(held)
        return held

    def _pause(self, args: list[bytes], reply: Optional[bytes]) -> None:
        """Wait here if a hold takes this ``EVALSHA`` now (before Redis if ``reply`` is
        None); a run that answered counts in ``runs``."""
        if args[0].lower() != b"evalsha" or len(args) < 2 or (reply or b"+")[:1] == b"-":
            return
        sha, taken = args[1].decode(errors="replace").lower(), None
        with self._lock:
            if reply is not None:
                self.runs[sha] += 1
            for held in self._held:
                if not held.taken and held.sha == sha and held.reply == (reply is not None):
                    held.taken, taken = True, held
                    break
        if taken is not None:
            taken.wait()

    def drop_connections(self) -> None:
        with self._lock:
            open_now = list(self._open)
        for sock in open_now:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream), timeout=30)
        except OSError:
            client.close()  # Redis is down: the client sees the connection closed
            return
        with self._lock:
            self._open |= {client, upstream}
        try:
            self._relay(client.makefile("rb"), client, upstream.makefile("rb"), upstream)
        except (OSError, EOFError, ValueError):
            pass
        finally:
            with self._lock:
                self._open -= {client, upstream}
            client.close()
            upstream.close()

    def _relay(self, requests: BinaryIO, client: socket.socket, replies: BinaryIO,
               upstream: socket.socket) -> None:
        in_multi = failed_multi = False
        while (args := read_command(requests)) is not None:
            name = args[0].lower()
            with self._lock:
                self.commands += 1
                self.names[name.decode(errors="replace")] += 1
            if self.delay:
                time.sleep(self.delay)  # a slow server, not a synchronisation
            error = refusal(args) or self._script_refusal(name, args)
            if error is not None:
                failed_multi = failed_multi or in_multi
                client.sendall(b"-" + error + b"\r\n")
                continue
            if name == b"exec" and failed_multi:
                upstream.sendall(encode([b"DISCARD"]))
                read_reply(replies)
                client.sendall(b"-EXECABORT Transaction discarded because of previous "
                               b"errors.\r\n")
                in_multi = failed_multi = False
                continue
            in_multi = (in_multi or name == b"multi") and name not in (b"exec", b"discard")
            self._pause(args, None)
            upstream.sendall(encode(args))
            reply = read_reply(replies)
            self._pause(args, reply)
            if name in (b"info", b"hello"):
                reply = self._as_60(reply)
            elif name in (b"evalsha", b"eval"):
                reply = as_60_script_error(reply)
            client.sendall(reply)

    def _script_refusal(self, name: bytes, args: list[bytes]) -> Optional[bytes]:
        """Remember the scripts 6.0 would fail; refuse running them."""
        if (name == b"script" and len(args) == 3 and args[1].lower() == b"load") or \
                (name == b"eval" and len(args) > 1):
            body = args[-1] if name == b"script" else args[1]
            why = script_refusal(body)
            if why is not None:
                with self._lock:
                    self._refused_scripts[hashlib.sha1(body).hexdigest()] = why
            return why if name == b"eval" else None
        if name == b"evalsha" and len(args) > 1:
            with self._lock:
                return self._refused_scripts.get(args[1].decode(errors="replace").lower())
        return None

    def _as_60(self, reply: bytes) -> bytes:
        """An INFO reply (a bulk or verbatim string) or a HELLO reply (a map or an array
        holding ``version``) with this proxy's version."""
        version = self.version.encode()
        if reply[:1] in b"$=":
            body = reply.partition(b"\r\n")[2]
            body = re.sub(rb"redis_version:[^\r\n]*", b"redis_version:" + version, body[:-2])
            return b"%s%d\r\n%s\r\n" % (reply[:1], len(body), body)
        return re.sub(rb"(\$7\r\nversion\r\n)\$\d+\r\n[^\r]*\r\n",
                      lambda m: m.group(1) + b"$%d\r\n%s\r\n" % (len(version), version), reply)
