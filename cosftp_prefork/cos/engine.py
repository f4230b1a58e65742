"""The transfer engine of one worker: a memory budget for part buffers, part sizes that fit
the file, and fair thread pools for part uploads and server-side copies.

Nothing here knows FTP or pyftpdlib; the upload lifecycle (:mod:`.uploads`) takes buffers
from the :class:`TransferBudget` and ships parts through an :class:`Engine`'s pools.

Why fair pools: every session of a worker shares the same threads. A plain FIFO pool lets
one upload queue dozens of parts, or one directory rename hundreds of copies, in front of
everyone else's work. :class:`FairPool` keeps one queue per *owner* (an upload, a rename),
groups the owners by *account* (the FTP user), and serves the accounts in turn, then the
owners of the account whose turn it is in turn, with at most ``per_owner`` tasks of one owner
running at once: an account's thirty uploads share one account's turns, so another user's one
upload gets every other turn. The budget shares the same way: a buffer given back goes to the
waiting account that holds least. Copies run on a pool of their own, so no copy storm delays
a part upload. Both keep state only for the accounts and owners with work queued, running
or holding bytes: an account leaves when its last task ends or its last bytes are given back.
"""

from __future__ import annotations

import contextvars
import functools
import itertools
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Hashable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Optional

from .. import logcontext, metrics
from ..config.model import MAX_PART_SIZE, MAX_PARTS, MIB, part_size_for

log = logging.getLogger(__name__)


class Claim:
    """A request for ``size`` bytes of a :class:`TransferBudget` by an upload of
    ``account``."""

    def __init__(self, size: int, account: Hashable) -> None:
        self.size = size
        self.account = account
        self.asked_at = time.monotonic()
        self.waited = False  # not granted when asked
        self.arrival = 0  # its place among the budget's claims
        self.granted_at = 0.0  # time.monotonic() of the grant
        self._granted = threading.Event()
        # The asking session's log context: a grant after a wait is logged in its name.
        self._context = contextvars.copy_context()

    @property
    def granted(self) -> bool:
        return self._granted.is_set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        return self._granted.wait(timeout)


class TransferBudget:
    """The bytes a worker may hold in part buffers, ``limit`` in all, shared fairly between
    accounts.

    Bytes given back go to the waiting account that holds least now (ties: the one whose
    claim is oldest), each account's claims in arrival order: one user's crowd of uploads
    holding the whole budget cannot keep another user's first buffer waiting for more than
    the next buffer given back, and while both wait, each grant evens out what they hold
    (max-min fairness; an account alone takes the whole budget). The chosen claim is never
    overtaken by a smaller one that would fit, so a large claim is not starved. A claim is
    never refused; the caller waits (back-pressure).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._free = limit
        # Only the accounts holding bytes, and those with claims waiting: bounded by the
        # uploads in flight, an account leaves when it holds and asks nothing.
        self._held: dict[Hashable, int] = {}
        self._waiting: dict[Hashable, deque[Claim]] = {}
        self._waiters = self._waiters_shown = 0
        self._arrivals = itertools.count()
        self._lock = threading.Lock()
        metrics.UPLOAD_BUFFER_LIMIT.set(limit)

    @property
    def in_use(self) -> int:
        with self._lock:
            return self.limit - self._free

    @property
    def contended(self) -> bool:
        """Whether a claim is waiting for bytes to be given back."""
        with self._lock:
            return bool(self._waiting)

    def claim(self, size: int, account: Hashable = None) -> Claim:
        """Ask for ``size`` bytes (at most ``limit``) for an upload of ``account``; the
        claim is granted now or later."""
        if size > self.limit:
            raise ValueError(f"a buffer of {size} bytes exceeds the budget of {self.limit}")
        claim = Claim(size, account)
        with self._lock:
            claim.arrival = next(self._arrivals)
            self._waiting.setdefault(account, deque()).append(claim)
            self._waiters += 1
            self._grant()
            claim.waited = not claim.granted
            self._gauge()
        return claim

    def release(self, claim: Claim) -> None:
        """Give back a granted claim, or withdraw one still waiting."""
        with self._lock:
            if claim.granted:
                self._free += claim.size
                self._hold(claim.account, -claim.size)
                claim.size = 0
            elif claim in self._waiting.get(claim.account, ()):
                self._dequeue(claim)
            self._grant()
            self._gauge()

    def _grant(self) -> None:
        while self._waiting:
            account = min(self._waiting, key=self._rank)
            claim = self._waiting[account][0]
            if claim.size > self._free:
                return
            self._dequeue(claim)
            self._free -= claim.size
            self._hold(account, claim.size)
            claim.granted_at = time.monotonic()
            claim._granted.set()
            if claim.waited and log.isEnabledFor(logging.DEBUG):
                # Under the lock: the lines come in the order of the grants.
                claim._context.run(log.debug, "a part buffer of %d bytes granted after "
                                   "waiting %.3fs", claim.size,
                                   claim.granted_at - claim.asked_at)

    def _rank(self, account: Hashable) -> tuple[int, int]:
        """Who is served first: least held, then the oldest claim."""
        return self._held.get(account, 0), self._waiting[account][0].arrival

    def _dequeue(self, claim: Claim) -> None:
        queue = self._waiting[claim.account]
        queue.remove(claim)
        if not queue:
            del self._waiting[claim.account]
        self._waiters -= 1

    def _hold(self, account: Hashable, change: int) -> None:
        held = self._held.get(account, 0) + change
        if held:
            self._held[account] = held
        else:  # nothing held (a claim given back twice changes nothing)
            self._held.pop(account, None)

    def _gauge(self) -> None:
        metrics.UPLOAD_BUFFERS.set(self.limit - self._free)
        if self._waiters != self._waiters_shown:  # mostly 0: one write of the map less
            metrics.UPLOAD_BUFFER_WAITS.set(self._waiters)
            self._waiters_shown = self._waiters


class Kept:
    """The bytes of one new small file, kept after its STOR (see :class:`KeptBodies`)."""

    __slots__ = ("__weakref__", "_release", "body")

    def __init__(self, body: bytes) -> None:
        self.body = body
        self._release: Callable[[], Any] = lambda: None

    def release(self) -> None:
        """Give the bytes back to the worker now (at most once): :attr:`body` is empty
        afterwards, whatever still refers to this object."""
        self.body = b""
        self._release()


class KeptBodies:
    """The bytes of new small files a worker keeps after their STOR, so that a rename right
    after it can store them under the new name (``ftp.renames.Renames._rename_by_put``): at most
    ``limit`` in all, on top of the part buffers' budget, so that no upload ever waits for
    them. A file is kept only if it fits now; its bytes count until :meth:`Kept.release`
    (the session's next upload or rename, or its end) or, failing that, until the last
    reference to what :meth:`keep` returned is gone."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()

    @property
    def in_use(self) -> int:
        with self._lock:
            return self._used

    def keep(self, body: bytes) -> Optional[Kept]:
        """``body`` held as a :class:`Kept`, or None if it does not fit now."""
        with self._lock:
            if self._used + len(body) > self.limit:
                return None
            self._used += len(body)
            metrics.KEPT_UPLOADS.set(self._used)
        kept = Kept(body)
        kept._release = weakref.finalize(kept, self._give_back, len(body))
        return kept

    def _give_back(self, size: int) -> None:
        with self._lock:
            self._used -= size
            metrics.KEPT_UPLOADS.set(self._used)


@dataclass(frozen=True)
class PartPlan:
    """Part sizes of one upload: ``flat`` parts of ``base`` bytes, then sizes doubling every
    ``step`` parts up to ``cap``, so that the largest file allowed still fits in 10,000
    parts while small files get small parts (as rclone and s3transfer size their chunks)."""

    base: int
    flat: int
    step: int
    cap: int

    def size(self, number: int) -> int:
        """The size of part ``number`` (1-based)."""
        if number <= self.flat:
            return self.base
        return min(self.cap, self.base << min(40, 1 + (number - self.flat - 1) // self.step))

    def capacity(self, first: int = 1) -> int:
        """How many bytes parts ``first``..10,000 hold together."""
        total, number = 0, first
        while number <= MAX_PARTS:
            size = self.size(number)
            if size >= self.cap:
                return total + (MAX_PARTS - number + 1) * self.cap
            run_end = self.flat if number <= self.flat else (
                self.flat + ((number - self.flat - 1) // self.step + 1) * self.step)
            run_end = min(run_end, MAX_PARTS)
            total += (run_end - number + 1) * size
            number = run_end + 1
        return total

    @classmethod
    def for_upload(cls, min_part: int, max_size: int, cap: int,
                   announced: Optional[int] = None) -> PartPlan:
        """The plan for an upload of at most ``max_size`` bytes with parts of at most
        ``cap`` bytes; ``announced`` (ALLO) makes the parts up to that size uniform and as
        few as allowed, and bytes beyond it still fit."""
        cap = max(min_part, min(cap, MAX_PART_SIZE))
        if announced:
            base = min(cap, max(min_part, _whole_mib(-(-announced // (MAX_PARTS * 9 // 10)))))
            flat = -(-announced // base)
            plan = _growing(base, flat, cap, max_size)
            if plan is not None:
                return plan
        uniform = min(cap, part_size_for(min_part, max_size))
        return _growing(min_part, 0, cap, max_size) or cls(uniform, MAX_PARTS, MAX_PARTS, cap)


def _whole_mib(size: int) -> int:
    return -(-size // MIB) * MIB


@functools.lru_cache(maxsize=256)
def _growing(base: int, flat: int, cap: int, max_size: int) -> Optional[PartPlan]:
    """The plan with ``flat`` parts of ``base`` and the longest steps that still hold
    ``max_size``; None if even the shortest cannot. Without flat parts, the first step is
    of ``base`` too. Remembered (plans are frozen): every upload without ALLO asks for the
    same plan, and the search costs 25-55 us of CPU (more on a loaded machine) with the
    default part and file sizes, a few percent of a new small file's."""
    def plan(step: int) -> PartPlan:
        return PartPlan(base, flat or step, step, cap)
    if plan(1).capacity() < max_size:
        return None
    low, high = 1, MAX_PARTS
    while low < high:  # the largest step whose plan holds max_size
        middle = (low + high + 1) // 2
        if plan(middle).capacity() >= max_size:
            low = middle
        else:
            high = middle - 1
    return plan(low)


class _Task:
    __slots__ = ("args", "fn", "future")

    def __init__(self, fn: Callable, args: tuple) -> None:
        self.future: Future = Future()
        self.fn, self.args = fn, args


class _Owners:
    """The queued tasks of one account's owners: a FIFO queue per owner, the owners in turn.
    Holds only the owners with tasks queued."""

    def __init__(self) -> None:
        self._queues: dict[Hashable, deque[_Task]] = {}
        self._turns: deque[Hashable] = deque()  # owners with queued tasks, next first

    def __bool__(self) -> bool:
        return bool(self._turns)

    def add(self, owner: Hashable, task: _Task) -> None:
        queue = self._queues.setdefault(owner, deque())
        if not queue:
            self._turns.append(owner)
        queue.append(task)

    def take(self, may_run: Callable[[Hashable], bool]) -> Optional[tuple[Hashable, _Task]]:
        """The first task of the first owner in turn that ``may_run`` one more; moves that
        owner to the back of the line."""
        for _ in range(len(self._turns)):
            owner = self._turns.popleft()
            if not may_run(owner):
                self._turns.append(owner)
                continue
            queue = self._queues[owner]
            task = queue.popleft()
            if queue:
                self._turns.append(owner)
            else:
                del self._queues[owner]
            return owner, task
        return None


class FairPool:
    """``threads`` threads serving queued tasks in two rounds of turns: the accounts in
    turn, and in the account whose turn it is its owners in turn (one FIFO queue each), with
    at most ``per_owner`` tasks of one owner running at once. An owner given no account is
    an account of its own.

    The next turn is the queued account's whose last turn is oldest (one that had none, or
    none since its work ended, first), rather than a line it joins at the back: an upload
    with one part in flight queues its next part only once the last is stored, after the
    turn of an account with many queued, and in a line it would then wait for two of that
    account's turns for each of its own."""

    def __init__(self, threads: int, name: str, per_owner: Optional[int] = None,
                 waiting: Optional[metrics.Gauge] = None) -> None:
        self._per_owner = per_owner or threads
        self._waiting = waiting  # set to the number of queued tasks
        self._queued = 0
        self._accounts: dict[Hashable, _Owners] = {}  # those with tasks queued
        # Those with tasks queued or running: when each last had a turn (0: never), and how
        # many tasks each has; an account is forgotten when its last task ends.
        self._last_turn: dict[Hashable, int] = {}
        self._tasks: dict[Hashable, int] = {}
        self._turn_count = itertools.count(1)
        self._running: dict[Hashable, int] = {}  # by owner
        self._lock = threading.Condition()
        self._stopping = False
        self._threads = [threading.Thread(target=self._serve, name=f"{name}-{n}", daemon=True)
                         for n in range(threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, owner: Hashable, fn: Callable, *args: Any,
               account: Hashable = None) -> Future:
        """Queue ``fn(*args)`` for ``owner`` of ``account`` (None: the owner alone); return
        its future. It runs in the log context of the caller: its lines name the session
        that asked for it."""
        task = _Task(logcontext.carried(fn), args)
        account = owner if account is None else account
        with self._lock:
            if self._stopping:
                raise RuntimeError("the pool is shut down")
            self._accounts.setdefault(account, _Owners()).add(owner, task)
            self._last_turn.setdefault(account, 0)
            self._tasks[account] = self._tasks.get(account, 0) + 1
            self._count(1)
            self._lock.notify()
        return task.future

    def for_owner(self, owner: Hashable, account: Hashable = None) -> OwnerExecutor:
        """An executor-like view that submits every task for ``owner`` of ``account``."""
        return OwnerExecutor(self, owner, account)

    def queued(self) -> int:
        with self._lock:
            return self._queued

    def _count(self, change: int) -> None:
        self._queued += change
        if self._waiting is not None:
            self._waiting.set(self._queued)

    def shutdown(self, deadline: Optional[float] = None) -> None:
        """Run what is queued, then stop the threads; wait for them until ``deadline``
        (``time.monotonic()``) at most, if given: a stopping worker exits then, and its
        daemon threads with it, whatever COS still holds."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def _may_run(self, owner: Hashable) -> bool:
        return self._running.get(owner, 0) < self._per_owner

    def _next(self) -> Optional[tuple[Hashable, Hashable, _Task]]:
        """The next task of the account whose last turn is oldest among those with an
        owner that may run one more. Called with the lock held."""
        first = min(self._accounts, key=self._last_turn.__getitem__, default=None)
        if first is None:
            return None
        found = self._take(first)
        if found is not None:
            return found
        # Its owners all run as many as they may: the others by age of their last turn.
        for account in sorted(self._accounts, key=self._last_turn.__getitem__)[1:]:
            found = self._take(account)
            if found is not None:
                return found
        return None

    def _take(self, account: Hashable) -> Optional[tuple[Hashable, Hashable, _Task]]:
        owners = self._accounts[account]
        found = owners.take(self._may_run)
        if found is None:
            return None
        if not owners:
            del self._accounts[account]
        owner, task = found
        self._last_turn[account] = next(self._turn_count)
        self._running[owner] = self._running.get(owner, 0) + 1
        self._count(-1)
        return account, owner, task

    def _done(self, account: Hashable, owner: Hashable) -> None:
        self._running[owner] -= 1
        if not self._running[owner]:
            del self._running[owner]
        self._tasks[account] -= 1
        if not self._tasks[account]:
            del self._tasks[account], self._last_turn[account]

    def _serve(self) -> None:
        while True:
            with self._lock:
                found = self._next()
                while found is None:
                    if self._stopping and not self._accounts:
                        return
                    self._lock.wait()
                    found = self._next()
            account, owner, task = found
            try:
                if task.future.set_running_or_notify_cancel():
                    try:
                        task.future.set_result(task.fn(*task.args))
                    except BaseException as exc:  # handed to whoever waits on the future
                        task.future.set_exception(exc)
            finally:
                with self._lock:
                    self._done(account, owner)
                    self._lock.notify_all()


class OwnerExecutor:
    """The ``submit`` of a :class:`FairPool` for one owner of one account (what copy code
    expects of an ``Executor``)."""

    def __init__(self, pool: FairPool, owner: Hashable, account: Hashable = None) -> None:
        self._pool, self._owner, self._account = pool, owner, account

    def submit(self, fn: Callable, *args: Any) -> Future:
        return self._pool.submit(self._owner, fn, *args, account=self._account)


class Engine:
    """What a worker's uploads and copies share: the budget and the pools, and the bytes of
    new small files kept for a rename right after their STOR (an eighth of the budget more).

    ``lookups`` serves the short requests a command sends beside its main one (a new file's
    look-ups while its bytes arrive when ``lookup_slots`` are all taken, MFMT's marker
    beside its copy, a rename's delete after its reply), as many threads as ``copies``, a
    few per session at once: neither part uploads nor copy storms delay them."""

    LOOKUPS_PER_OWNER = 4

    def __init__(self, memory_limit: int, part_threads: int, copy_threads: int) -> None:
        self.budget = TransferBudget(memory_limit)
        self.kept = KeptBodies(memory_limit // 8)
        self.parts = FairPool(part_threads, "cos-part", waiting=metrics.UPLOAD_PARTS_WAITING)
        # Half the copy threads at most for one rename: a second one starts at once.
        self.copies = FairPool(copy_threads, "cos-copy", per_owner=max(1, copy_threads // 2))
        self.lookup_threads = max(self.LOOKUPS_PER_OWNER, copy_threads)
        self.lookups = FairPool(self.lookup_threads, "cos-lookup",
                                per_owner=self.LOOKUPS_PER_OWNER)
        # Look-ups a session's own thread has in flight (``cos.naming``), each on a pooled
        # COS connection until its thread reads the answer: as many as the pool's threads.
        self.lookup_slots = threading.BoundedSemaphore(self.lookup_threads)
        self._settle_deadline: Optional[float] = None  # set by ``hurry``

    def copier(self, owner: Optional[Hashable] = None,
               account: Hashable = None) -> OwnerExecutor:
        """An executor for the copies of one job (a rename, an MFMT, an APPE) of
        ``account``'s (the FTP user: its jobs share its turns)."""
        return self.copies.for_owner(owner if owner is not None else object(), account)

    def hurry(self, deadline: float) -> None:
        """The worker is stopping: an upload that ends from now on (parked or aborted) waits
        for its parts COS is receiving until ``deadline`` (``time.monotonic()``) at most, and
        keeps what was stored by then (see ``PartStream.settle``)."""
        self._settle_deadline = deadline

    def settle_timeout(self) -> Optional[float]:
        """How long an ending upload may still wait for its parts; None: as long as COS
        takes (the worker is not stopping)."""
        deadline = self._settle_deadline
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def shutdown(self, deadline: Optional[float] = None) -> None:
        """Stop the pools (see ``FairPool.shutdown``)."""
        for pool in (self.parts, self.copies, self.lookups):
            pool.shutdown(deadline)
