"""Where each reply queued on the control connection ends, so that a kick drops only whole
replies its client has not begun to receive.

A kick (``ftp.admission``) sends ``421`` as the session's last word and drops the replies
still queued in the worker: a client that reads no replies may have up to
``MAX_QUEUED_REPLIES`` of them waiting (``ftp.backpressure``). asynchat sends a queued item as
much as the socket takes and keeps the rest at the head of its queue; dropping the queue
whole then cut the reply being sent, and the ``421`` followed half a line (``214-The
following commands are recognized:\\r\\n USER PASS AC421 Session closed...``): a client read
it as part of the ``214`` reply, or as garbage. Here the handler counts the bytes of each
reply as they are queued and as the socket takes them: the reply the client has begun to
receive is finished, then the ``421`` goes; the replies after it are dropped.

A reply ends with its ``respond`` (its final line): a multi-line reply's earlier lines
are pushed one by one, and ``STAT path`` pushes its listing through a producer, whose
bytes are counted as it makes them (it makes them at the head of the queue, so they belong
to the reply being sent).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Optional

from . import compat


class ReplyQueue:
    """Mixin for the control handler, after ``ClientDialect`` (whose ``push`` and
    ``push_with_producer`` hand their bytes and producers here): see the module docstring."""

    _replies: Optional[deque] = None  # unsent bytes of each queued reply, oldest first
    _last_open = False  # the newest of ``_replies`` has no final line yet
    _first_begun = False  # bytes of the oldest were handed to the socket

    def _queued(self) -> deque:
        if self._replies is None:
            self._replies = deque()
        return self._replies

    def push_encoded(self, data: bytes) -> None:
        """Queue reply bytes ``data`` (already encoded) and send what the socket takes."""
        replies = self._queued()
        if not self._last_open or not replies:
            replies.append(0)
            self._last_open = True
        replies[-1] += len(data)
        compat.push_bytes(self, data)

    def respond(self, resp: str, *args: Any, **kwargs: Any) -> None:
        """Queue a reply's final line: the reply ends there."""
        super().respond(resp, *args, **kwargs)
        self._last_open = False

    def push_with_producer(self, producer) -> None:
        """Queue a producer's lines (``STAT path``) as part of the reply being pushed."""
        self._queued()
        super().push_with_producer(_Counted(producer, self))

    def produced(self, count: int) -> None:
        """A producer at the head of the queue made ``count`` bytes of the oldest reply."""
        replies = self._queued()
        if replies:
            replies[0] += count
        else:
            replies.append(count)

    def send(self, data) -> int:
        """Send ``data`` (the head of the queue); the bytes the socket took are the oldest
        reply's. A try that sends nothing counts as begun too: a TLS write refused for now
        must be made again with the same bytes."""
        replies = self._queued()
        if replies:
            self._first_begun = True
        sent = super().send(data)
        left = sent
        while left > 0 and replies:
            taken = min(left, replies[0])
            replies[0] -= taken
            left -= taken
            if replies[0] == 0 and (len(replies) > 1 or not self._last_open):
                replies.popleft()
                self._first_begun = False
        return sent

    def drop_unsent_replies(self) -> bool:
        """Drop the queued replies the client has not begun to receive; keep the rest of the
        one it has. Return True if that rest is queued (it goes before anything else)."""
        replies = self._queued()
        rest = replies[0] if replies and self._first_begun else 0
        kept: deque = deque()
        left = rest
        for item in self.producer_fifo:
            if left <= 0:
                break
            if isinstance(item, (bytes, bytearray, memoryview)):
                left -= len(item)
            kept.append(item)  # bytes of the reply being sent, or its producer
        self.producer_fifo.clear()
        self.producer_fifo.extend(kept)
        replies.clear()
        if kept:
            replies.append(rest)
        self._last_open = False
        return bool(kept)


class _Counted:
    """A producer whose bytes are counted in its handler's reply as it makes them."""

    def __init__(self, producer, handler: ReplyQueue) -> None:
        self._producer = producer
        self._handler = handler

    def more(self) -> bytes:
        """The next chunk (``b""`` once done), counted."""
        chunk = self._producer.more()
        if chunk:
            self._handler.produced(len(chunk))
        return chunk
