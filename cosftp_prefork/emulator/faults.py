"""What the emulator does wrong or holds on purpose: injected faults (latency, errors,
downloads cut short, copies failing) and the rendezvous that proves requests were sent at
once."""

from __future__ import annotations

import random
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional


@dataclass
class Faults:
    """What the emulator does wrong on purpose, changeable at run time.

    ``latency_ms`` delays every request; ``error_rate`` answers that share of requests with
    503 SlowDown; ``reset_rate`` cuts that share of object downloads off half-way, and
    ``reset_next`` the next that many downloads; copies whose source contains
    ``fail_copies_of`` get 503; ``corrupt_crc`` reports wrong CRC64s for new objects and parts,
    ``corrupt_crc_next`` in the next that many answers that carry one;
    ``corrupt_next_parts`` flips a byte in each of the next that many uploaded parts before they
    are stored (bytes damaged on the way: COS then reports the CRC64 of what it stored);
    ``down`` fails every request with 503; requests for keys, or listings of prefixes, that
    start with ``deny_prefix`` get 403 AccessDenied (credentials limited to some prefixes);
    the next ``copy_errors_next`` PUT Object - Copy requests are answered 200 with an
    InternalError body and copy nothing (COS: "if an error occurs during the copy, HTTP 200
    OK is returned with the error as the response body", PUT Object - Copy, 436/10881).

    Faults of chosen COS operations (named as :func:`operation` names them, comma-separated):
    ``fail_rate`` of the ``fail_ops`` requests are answered 500 InternalError or 503
    ServiceUnavailable (either, at random; COS's 5xx codes, Error Codes 436/7730) and not
    carried out, and so are the next ``fail_next`` of them whatever the rate (a COS failing
    for a moment, then answering again); ``lose_rate`` of the ``lose_ops`` requests are
    carried out and their answer lost, and so are the next ``lose_next`` of them whatever
    the rate: held ``stall_ms`` first if that is set, then cut off
    (half the body sent, or nothing when it has none) as a connection reset in mid-answer,
    so the client cannot tell whether COS did it (a retried CompleteMultipartUpload then
    finds NoSuchUpload).
    ``drop_rate`` of the ``drop_ops`` requests are lost on the way: not carried out, the
    connection reset before any answer (the client cannot tell this from a lost answer);
    so are the next ``drop_next`` of them whatever the rate, counted only once an answer
    was lost (``lose_next``, ``lose_rate``) since ``drop_next`` was set: a request carried
    out and its answer lost, then its retries lost on the way (their last error a reset,
    not what COS would answer a retry of a write it did carry out).
    ``corrupt_part_rate`` of the uploaded parts get a byte flipped before they are stored,
    as ``corrupt_next_parts``.
    """

    latency_ms: float = 0.0
    error_rate: float = 0.0
    reset_rate: float = 0.0
    reset_next: int = 0
    fail_copies_of: str = ""
    corrupt_crc: bool = False
    corrupt_crc_next: int = 0
    corrupt_next_parts: int = 0
    down: bool = False
    deny_prefix: str = ""
    copy_errors_next: int = 0
    fail_ops: str = ""
    fail_rate: float = 0.0
    fail_next: int = 0
    lose_ops: str = ""
    lose_rate: float = 0.0
    lose_next: int = 0
    stall_ms: float = 0.0
    drop_ops: str = ""
    drop_rate: float = 0.0
    drop_next: int = 0
    corrupt_part_rate: float = 0.0
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        self.random = random.Random(self.seed)
        self.answer_lost = False  # since drop_next was set: it counts only once one was

    def lost_answer(self) -> None:
        """An answer was lost (``lose_next``, ``lose_rate``): ``drop_next`` counts from now."""
        self.answer_lost = True

    def update(self, changes: dict) -> None:
        for name in ("latency_ms", "error_rate", "reset_rate", "reset_next", "fail_copies_of",
                     "corrupt_crc", "corrupt_crc_next", "corrupt_next_parts", "down", "deny_prefix",
                     "copy_errors_next", "fail_ops", "fail_rate", "fail_next", "lose_ops",
                     "lose_rate", "lose_next", "stall_ms", "drop_ops", "drop_rate",
                     "drop_next", "corrupt_part_rate"):
            if name in changes:
                setattr(self, name, type(getattr(self, name))(changes[name]))
        if "drop_next" in changes:
            self.answer_lost = False

    def as_dict(self) -> dict:
        return {"latency_ms": self.latency_ms, "error_rate": self.error_rate,
                "reset_rate": self.reset_rate, "reset_next": self.reset_next,
                "fail_copies_of": self.fail_copies_of, "corrupt_crc": self.corrupt_crc,
                "corrupt_crc_next": self.corrupt_crc_next,
                "corrupt_next_parts": self.corrupt_next_parts,
                "down": self.down, "deny_prefix": self.deny_prefix,
                "copy_errors_next": self.copy_errors_next, "fail_ops": self.fail_ops,
                "fail_rate": self.fail_rate, "fail_next": self.fail_next,
                "lose_ops": self.lose_ops,
                "lose_rate": self.lose_rate, "lose_next": self.lose_next,
                "stall_ms": self.stall_ms,
                "drop_ops": self.drop_ops, "drop_rate": self.drop_rate,
                "drop_next": self.drop_next,
                "corrupt_part_rate": self.corrupt_part_rate}

    def names(self, ops: str, operation_name: str) -> bool:
        """Whether the comma-separated operation names ``ops`` include ``operation_name``."""
        return operation_name in {name.strip() for name in ops.split(",")}


def cut_short(body: bytes) -> Iterator[bytes]:
    yield body[: len(body) // 2]
    raise ConnectionResetError("injected reset")


def operation(method: str, query: str, copied: bool, is_object: bool) -> str:
    """The COS API a request calls, named as COS's API reference names it (``PutObject``,
    ``UploadPart``, ``CompleteMultipartUpload``, ``CopyObject`` for PUT Object - Copy,
    ``UploadPartCopy``...), from its ``method``, its query string, whether it names a copy
    source (``copied``) and whether it names an object (``is_object``); ``method`` itself
    for anything else."""
    names = {name for name, _ in urllib.parse.parse_qsl(query, keep_blank_values=True)}
    if method == "PUT":
        if copied:
            return "UploadPartCopy" if "partNumber" in names else "CopyObject"
        return "UploadPart" if "partNumber" in names else "PutObject" if is_object else "PUT"
    if method == "POST":
        if "uploads" in names:
            return "InitiateMultipartUpload"
        if "uploadId" in names:
            return "CompleteMultipartUpload"
        return "DeleteMultipleObjects" if "delete" in names else "POST"
    if method == "GET":
        if not is_object:
            return "ListMultipartUploads" if "uploads" in names else "ListObjects"
        return "ListParts" if "uploadId" in names else "GetObject"
    if method == "DELETE" and is_object:
        return "AbortMultipartUpload" if "uploadId" in names else "DeleteObject"
    return "HeadObject" if method == "HEAD" and is_object else method


@dataclass
class _Tally:
    """What became of the requests one arming of the rendezvous took."""

    passed: int = 0
    broken: int = 0


class Rendezvous:
    """Holds the requests whose key or listed prefix holds a text (and, if given, of one
    kind: ``DELETE``, ``LIST``...) until ``parties`` of them are in flight at once, then lets
    them all go: a test proves that the gateway sends them concurrently without measuring
    time (sent one after another, the first waits for the others in vain and the rendezvous
    breaks after ``timeout`` seconds), or holds one request for that long. One use per
    arming; ``PUT /__emulator__/rendezvous`` with ``{"contains", "parties", "timeout",
    "kind", "exact", "part"}`` arms it, ``GET`` tells how many requests met (``passed``) and
    how many waited in vain (``broken``). With ``exact``, only requests naming the key
    ``contains`` itself meet (not the server's bookkeeping objects whose keys hold it); with
    ``part``, only that part number's UploadPart (of every key holding ``contains``).
    Arming anew leaves the requests a former arming holds waiting until its time is up; they
    count as that arming's, not the new one's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._barrier: Optional[threading.Barrier] = None
        self._contains = self._kind = ""
        self._exact = False
        self._part = 0  # 0: any request, else only the UploadPart of that number
        self._left = 0  # requests the armed rendezvous still takes
        self._tally = _Tally()  # the latest arming's

    def arm(self, contains: str, parties: int, timeout: float, kind: str = "",
            exact: bool = False, part: int = 0) -> None:
        with self._lock:
            self._barrier = threading.Barrier(parties, timeout=timeout)
            self._contains, self._kind, self._left = contains, kind, parties
            self._exact, self._part = exact, part
            self._tally = _Tally()

    def meet(self, kind: str, target: str, part: int = 0) -> None:
        """Wait, if the request (``kind``, ``target``, ``part``: its part number, 0 if it is
        no UploadPart) is one the rendezvous is armed for."""
        with self._lock:
            barrier, tally = self._barrier, self._tally
            named = target == self._contains if self._exact else self._contains in target
            if barrier is None or not named or self._kind not in ("", kind) or \
                    self._part not in (0, part):
                return
            self._left -= 1
            if self._left == 0:
                self._barrier = None  # later requests go their way
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            with self._lock:
                tally.broken += 1
                if self._barrier is barrier:
                    self._barrier = None
            return
        with self._lock:
            tally.passed += 1

    def as_dict(self) -> dict:
        """The latest arming's state: ``armed`` (it still takes requests), ``passed`` and
        ``broken`` (its requests that met, and those that waited in vain)."""
        with self._lock:
            return {"armed": self._barrier is not None, "passed": self._tally.passed,
                    "broken": self._tally.broken}
