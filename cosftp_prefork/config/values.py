"""The parsers of option values. Each takes the raw text of one value and returns the value
or raises ``ValueError`` saying what is wrong (never quoting a secret), and records in words
what it accepts (``words_for``: docs/configuration.md is generated from them). Also the kinds
of sections a file may have (``section_kind``)."""

from __future__ import annotations

import codecs
import contextlib
import ipaddress
import re
from typing import Any, Callable, Optional, TypeVar

from ..paths import MAX_KEY_BYTES, NAME_ROOM, home_prefix
from .hooks import (
    parse_command,
    parse_event_names,
    parse_globs,
    parse_url,
)
from .locations import (
    parse_path,
)
from .model import (
    ACCOUNT_PREFIX,
    CREDENTIALS_PREFIX,
    FOLDER_PREFIX,
    GIB,
    MIB,
    AdminToken,
)
from .passwords import PREFIX, HashFormatError, check_stored_form, parse_hash
from .sizes import SIZE_WORDS, parse_size

_Parser = TypeVar("_Parser", bound=Callable[[str], Any])
_ACCEPTS: dict[Callable[[str], Any], str] = {}


def _accepts(words: str) -> Callable[[_Parser], _Parser]:
    """Record what a value parser accepts, as the generated reference shows it."""
    def record(parse: _Parser) -> _Parser:
        _ACCEPTS[parse] = words
        return parse
    return record


def size_in_words(nbytes: int) -> str:
    """``nbytes`` in the largest binary unit that divides it: 2097152 is ``2 MiB``."""
    for unit, size in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if nbytes % size == 0:
            return f"{nbytes // size} {unit}"
    return f"{nbytes} byte{'' if nbytes == 1 else 's'}"


def integer(low: int, high: Optional[int] = None, unit: str = "") -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"must be an integer{unit}, got {raw!r}") from None
        if value < low or (high is not None and value > high):
            upper = f" and {high}" if high is not None else ""
            raise ValueError(f"must be between {low}{upper}, got {value}" if upper
                             else f"must be at least {low}, got {value}")
        return value
    if unit == BYTES and high is not None:
        words = f"bytes, {size_in_words(low)} to {size_in_words(high)}"
    else:
        words = f"integer, {low} or more" if high is None else f"integer, {low} to {high}"
    return _accepts(words)(parse)


for _parse, _words in ((parse_url, "an http:// or https:// URL"),
                       (parse_command, "a program's absolute path, then its arguments (run "
                                       "without a shell)"),
                       (parse_event_names, "event names, comma-separated, or all"),
                       (parse_globs, "patterns of FTP paths, comma-separated")):
    _accepts(_words)(_parse)


@_accepts("text")
def text(raw: str) -> str:
    return raw


@_accepts("true or false (also yes/no, on/off, 1/0)")
def boolean(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("true", "yes", "on", "1"):
        return True
    if lowered in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"must be true or false, got {raw!r}")


def choice(*choices: str, fold: Callable[[str], str] = str.upper) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = fold(raw)
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {raw!r}")
        return value
    return _accepts(f"one of {', '.join(choices)}")(parse)


@_accepts("http or https")
def protocol(raw: str) -> str:
    value = raw.lower()
    if value not in ("http", "https"):
        raise ValueError(f"must be http or https, got {raw!r}")
    return value


_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9-]*-[0-9]+$")
ACCOUNT_SECTION_RE = re.compile(r"^COS_ACCOUNT(_.*)?$")
CREDENTIALS_SECTION_RE = re.compile(r"^COS_CREDENTIALS_([A-Za-z0-9_.-]{1,64})$")
# A folder's name is what virtual_folders writes after "=": no comma, "=" or space in it.
FOLDER_SECTION_RE = re.compile(r"^FOLDER_[^\s,=]+$")


def section_kind(section: str) -> str:
    """The settings table's section for a section of a file (``COS_ACCOUNT_0`` ->
    ``COS_ACCOUNT``, ``COS_CREDENTIALS_shared`` -> ``COS_CREDENTIALS``, ``FOLDER_team`` ->
    ``FOLDER``)."""
    if ACCOUNT_SECTION_RE.match(section):
        return ACCOUNT_PREFIX
    if FOLDER_SECTION_RE.match(section):
        return FOLDER_PREFIX
    return CREDENTIALS_PREFIX if CREDENTIALS_SECTION_RE.match(section) else section


_HOST_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
                      r"(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$")


@_accepts("<name>-<appid>, as the COS console shows it")
def bucket(raw: str) -> str:
    if not _BUCKET_RE.match(raw):
        raise ValueError(f"must be <name>-<appid> such as examplebucket-1250000000, got {raw!r}")
    return raw


@_accepts("an IPv4 or IPv6 address")
def ip_address(raw: str) -> str:
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        raise ValueError(f"must be an IP address, got {raw!r}") from None


@_accepts("IP addresses, comma-separated")
def ip_addresses(raw: str) -> tuple[str, ...]:
    """One address or several, comma-separated (``0.0.0.0, ::`` for dual stack). A wildcard
    already covers every address of its family, so it cannot be listed with one of them;
    ``::`` alone also serves IPv4, listed with IPv4 addresses it serves IPv6 only."""
    addresses = tuple(ip_address(part.strip()) for part in raw.split(","))
    for address in addresses:
        if addresses.count(address) > 1:
            raise ValueError(f"lists {address} twice")
        family = ipaddress.ip_address(address).version
        wildcard = "0.0.0.0" if family == 4 else "::"
        if address != wildcard and wildcard in addresses:
            raise ValueError(f"{wildcard} already covers {address}; list one of them")
    return addresses


@_accepts("addresses or CIDR blocks, comma-separated")
def networks(raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """A comma-separated list of CIDR blocks or single addresses."""
    found = []
    for part in (p.strip() for p in raw.split(",")):
        try:
            found.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"must be a comma-separated list of addresses or CIDR blocks "
                             f"(like 10.0.0.0/8), got {part!r}") from None
    return tuple(found)


@_accepts("one line of printable text, at most 200 characters")
def message(raw: str) -> str:
    """Text the server sends in a reply: one line (a CR or LF would end the reply and
    start another), no control characters, short enough for every client's buffer."""
    if len(raw) > 200 or not raw.isprintable():
        raise ValueError("must be one line of printable text of at most 200 characters")
    return raw


@_accepts("a redis://, rediss:// or unix:// URL")
def redis_url(raw: str) -> str:
    if not re.match(r"^(redis|rediss|unix)://", raw):
        raise ValueError(f"must be a redis://, rediss:// or unix:// URL, got {raw!r}")
    return raw


@_accepts("an IP address or a host name")
def host(raw: str) -> str:
    with contextlib.suppress(ValueError):
        return ip_address(raw)
    if _HOST_RE.match(raw) and not raw.replace(".", "").isdigit():
        return raw
    raise ValueError(f"must be an IP address or host name, got {raw!r}")


@_accepts("a text encoding that extends ASCII (utf-8, gbk, gb18030, latin-1...)")
def encoding(raw: str) -> str:
    """A text encoding that keeps ASCII as it is (FTP commands are ASCII): utf-16 or an
    EBCDIC code page would turn every command into garbage."""
    try:
        name = codecs.lookup(raw).name
        ascii_safe = "USER a\r\n".encode(name) == b"USER a\r\n"
    except LookupError:
        ascii_safe, name = False, ""
    if not name or not ascii_safe:
        raise ValueError("must be a text encoding that extends ASCII, such as utf-8, gbk, "
                         f"gb18030 or latin-1, got {raw!r}")
    return name


@_accepts("a password, or its scrypt$... hash")
def password(raw: str) -> str:
    check_stored_form(raw)
    return raw


_SYSTEM_NAME_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_.-]{0,31}\$?|[0-9]+)$")


@_accepts("a user or group name of this system, or a number")
def system_name(raw: str) -> str:
    """A user or group name of this system (or a numeric id); whether it exists is checked
    when the server starts as root (``server.privileges``)."""
    if not _SYSTEM_NAME_RE.match(raw):
        raise ValueError(f"must be a user or group name such as cosftp (or a number), "
                         f"got {raw!r}")
    return raw


MAX_ADMIN_TOKENS = 16  # each failed token costs one scrypt per configured token
_TOKEN_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
_TOKEN_MODES = {"rw": True, "ro": False}


@_accepts("name:hash:rw or name:hash:ro, comma-separated; the hash from cosftpctl "
          "hash-password")
def admin_tokens(raw: str) -> tuple[AdminToken, ...]:
    """``name:hash:rw, name:hash:ro``: the admin API's tokens, each stored as the scrypt
    hash ``cosftpctl hash-password`` prints. No message quotes a hash."""
    tokens: list[AdminToken] = []
    for number, entry in enumerate((part.strip() for part in raw.split(",")), 1):
        fields = entry.split(":")
        if len(fields) != 3:
            raise ValueError(f"entry {number} is not name:hash:rw or name:hash:ro")
        name, stored, mode = (field.strip() for field in fields)
        if not _TOKEN_NAME_RE.match(name):
            raise ValueError(f"entry {number}: the name must be 1-32 letters, digits, '_', "
                             "'.' or '-'")
        if mode not in _TOKEN_MODES:
            raise ValueError(f"token {name}: the mode must be rw or ro")
        if not stored.startswith(PREFIX):
            raise ValueError(f"token {name}: store the token's hash (cosftpctl "
                             "hash-password), never the token itself")
        try:
            parse_hash(stored)
        except HashFormatError as exc:
            raise ValueError(f"token {name}: the hash {exc}") from None
        if any(token.name == name for token in tokens):
            raise ValueError(f"token {name} is listed twice")
        tokens.append(AdminToken(name, stored, _TOKEN_MODES[mode]))
    if len(tokens) > MAX_ADMIN_TOKENS:
        raise ValueError(f"lists {len(tokens)} tokens; at most {MAX_ADMIN_TOKENS}")
    return tuple(tokens)


@_accepts("a path such as /home/user0 (only a name: nothing is written there)")
def home_dir(raw: str) -> str:
    return "/" + raw.strip("/")


@_accepts("/path=name pairs, comma-separated: each mounts [FOLDER_name] at /path")
def mount_list(raw: str) -> tuple[tuple[str, str], ...]:
    """``/in=incoming, /shared/docs=docs``: where each named folder appears in the
    account's tree. A path is absolute and names a directory below ``/`` (no empty, ``.``,
    ``..`` or ``.cosftp`` component); no two paths are the same or one under the other
    (a folder's tree is the folder's alone)."""
    mounts: list[tuple[str, str]] = []
    for part in (p.strip() for p in raw.split(",")):
        path, equals, name = (side.strip() for side in part.partition("="))
        if not equals or not path or not name:
            raise ValueError(f"must be /path=name pairs such as /shared=docs, got {part!r}")
        if not path.startswith("/"):
            raise ValueError(f"{path!r} is outside /: a mount path starts with /")
        try:
            key = home_prefix(path)
        except ValueError as exc:
            raise ValueError(f"{path!r} {exc}") from None
        if not key:
            raise ValueError(f"{part!r}: / is the account's own; mount a folder below it")
        path = "/" + key[:-1]
        for other, _ in mounts:
            if other == path:
                raise ValueError(f"mounts two folders at {path}")
            if path.startswith(other + "/") or other.startswith(path + "/"):
                raise ValueError(f"{path} and {other} overlap: mount a folder beside another, "
                                 "not under it")
        mounts.append((path, name))
    return tuple(mounts)


@_accepts("low,high")
def port_range(raw: str) -> tuple[int, int]:
    parts = [p.strip() for p in raw.split(",")]
    if len(parts) > 2 or not all(re.fullmatch(r"[0-9]+", p) for p in parts):
        raise ValueError(f"must be low,high such as 60000,65535, got {raw!r}")
    low = int(parts[0])
    high = int(parts[1]) if len(parts) == 2 else 65535
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"must satisfy 1 <= low <= high <= 65535, got {raw!r}")
    return low, high


BYTES = " number of bytes"
# Relative paths are resolved against the file's base directory (config.locations).
_accepts("a path; relative: to the config file's directory (its parent for conf/)")(parse_path)
_accepts("a key prefix such as tenants/alice (a leading / dropped, a trailing / added); no "
         f"empty, . or .. component, no .cosftp, at most {MAX_KEY_BYTES - NAME_ROOM} "
         "bytes")(home_prefix)
_accepts(SIZE_WORDS)(parse_size)



def words_for(parse: Callable[[str], Any]) -> str:
    """What ``parse`` accepts, in words ('' if it does not say)."""
    return _ACCEPTS.get(parse, "")
