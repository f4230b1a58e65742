"""A signed JSON POST and its bounded answer: what receivers and pre-check services get.

urllib3 (a dependency of the COS SDK already) pools the connections per host, verifies TLS
certificates and host names against the system's store (OpenSSL's default paths, which
``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` change), and is imported only by the processes that
post: the workers (pre-checks) and the events process, never the master. No retries here
(the caller decides), no redirects followed (a receiver that moved is a configuration to
fix, and a redirect must not carry the signature elsewhere).
"""

from __future__ import annotations

from dataclasses import dataclass

import urllib3

from .body import SIGNATURE_HEADER

MAX_ANSWER = 16 * 1024  # bytes of an answer read; a receiver's body is not ours to keep
USER_AGENT = "cosftp-prefork"


@dataclass(frozen=True)
class Answer:
    status: int
    reason: str  # the status line's phrase, as the server sent it (unsafe for a log as is)
    data: bytes  # the first MAX_ANSWER bytes of the body


class PostError(Exception):
    """No answer: the connection failed, or the timeout passed."""


def make_pool(connections: int) -> urllib3.PoolManager:
    """A pool of up to ``connections`` kept-alive connections per receiver."""
    return urllib3.PoolManager(num_pools=16, maxsize=connections, block=False,
                               retries=False)


def post(pool: urllib3.PoolManager, url: str, body: bytes, signature: str, event: str,
         event_id: str, timeout: float) -> Answer:
    """POST ``body`` to ``url``; ``timeout`` bounds the connection and each read. Raises
    ``PostError``."""
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature,
               "X-Cosftp-Event": event, "X-Cosftp-Event-Id": event_id,
               "User-Agent": USER_AGENT}
    try:
        response = pool.request("POST", url, body=body, headers=headers, redirect=False,
                                preload_content=False,
                                timeout=urllib3.Timeout(connect=timeout, read=timeout))
        try:
            data = response.read(MAX_ANSWER + 1)
        finally:
            if not response.isclosed():
                response.close()  # a body left unread: the connection cannot serve again
            response.release_conn()
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise PostError(describe(exc)) from exc
    return Answer(response.status, response.reason or "", data[:MAX_ANSWER])


def describe(exc: BaseException) -> str:
    """A short reason for a failed POST (urllib3 nests the socket's error)."""
    cause = getattr(exc, "reason", None) or exc
    return f"{type(cause).__name__}: {cause}"
