"""What a worker asks of the C library (glibc; musl and others lack some, and are then left
as they are): to die with its master, and to keep its heap from growing past what it holds."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to SIGTERM us when the master dies; the ppid check covers the rest.

    Called after the privilege drop (``Master._run_worker``): changing the process's user
    or group clears this setting."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


_M_ARENA_MAX = -8  # mallopt(3)
MALLOC_ARENAS = 2


def _malloc_call(name: str, *args: int) -> None:
    """Call glibc's ``name`` if the C library has it (musl has neither function)."""
    with contextlib.suppress(OSError, AttributeError):
        getattr(_c_library(), name)(*args)


@functools.cache
def _c_library() -> ctypes.CDLL:
    """The C library, loaded once: ``trim_malloc`` runs at every tick."""
    return ctypes.CDLL(None)


def share_malloc_arenas() -> None:
    """Let all threads allocate from ``MALLOC_ARENAS`` glibc arenas.

    Part buffers and data-channel reads are megabytes, allocated by one session's thread and
    freed by a part thread. With glibc's default of one arena per thread (up to 8 per CPU),
    each arena keeps the peak its sessions reached, and the worker's RSS grows well past
    what it holds (16 uploads: 75 MiB for 16 MiB of budget). A fixed mmap threshold instead
    (every buffer its own mapping) kept RSS at 34-42 MiB but cost 30 % more CPU per GiB in
    page faults; two shared arenas and a trim every tick keep it at ~40 MiB for the CPU of
    before (docs/performance.md).
    """
    _malloc_call("mallopt", _M_ARENA_MAX, MALLOC_ARENAS)


def trim_malloc() -> None:
    """Give the memory glibc holds free back to the kernel (after bursts of uploads)."""
    _malloc_call("malloc_trim", 0)

