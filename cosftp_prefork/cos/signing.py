"""The ``Authorization`` header and the URL of a COS request, as cos-python-sdk-v5 makes
them (``CosS3Auth`` and ``CosConfig.uri``), without building the SDK's ``requests`` objects
for each request (docs/performance.md, "Issue 21: CPU per small file")."""

from __future__ import annotations

import functools
import hashlib
import hmac
import time
from typing import Any, Optional
from urllib.parse import quote, quote_plus

from qcloud_cos.cos_auth import filter_headers

# The SDK signs for 10,000 s from 60 s before now (CosS3Auth's ``expire``).
_SDK_EXPIRE = 10_000
_SDK_LEAD = 60


class Signer:
    """The ``Authorization`` header the SDK's ``CosS3Auth`` writes, for the credentials of
    one SDK configuration.

    COS lets a signing key serve a whole key-time window (``q-key-time``; the SDK signs
    with ``q-sign-time`` equal to it). ``CosS3Auth`` starts a window at every request (60 s
    before now, for 10,000 s), so it derives the key anew each time; here one window serves
    ``WINDOW`` seconds of requests (it still starts at least 60 s before each and ends at
    least 10,000 - ``WINDOW`` s after) and its key is derived once. Equal to ``CosS3Auth``'s
    header for the same window (``tests/test_signed.py`` compares them).
    """

    WINDOW = 600

    def __init__(self, conf: Any) -> None:
        self._conf = conf
        self._known: tuple[str, str, str] = ("", "", "")  # secret key, key time, signing key

    def key_time(self, now: float) -> str:
        """The key-time window that serves a request made at ``now``."""
        opened = int(now) - int(now) % self.WINDOW
        return f"{opened - _SDK_LEAD};{opened + _SDK_EXPIRE}"

    def authorization(self, method: str, path: str, params: dict, headers: Any,
                      key_time: Optional[str] = None) -> str:
        """Sign a request for ``path`` (the key, not URL-encoded, or "/") with ``params``
        and ``headers`` (the ones it sends; ``host`` among them when signed)."""
        conf = self._conf
        if conf._anonymous:
            return ""
        # As CosS3Auth reads them, at each request: a credential provider may refresh them.
        credential = None if conf._secret_id and conf._secret_key else \
            getattr(conf, "_credential_inst", None)
        secret_id = conf._secret_id or (credential.secret_id if credential else None)
        secret_key = conf._secret_key or (credential.secret_key if credential else None)
        key_time = key_time or self.key_time(time.time())
        signed_headers = _signed_headers(headers)
        signed_params = _encoded(params if conf._sign_params else {})
        text = "\n".join((method.lower(), path, _joined(signed_params),
                          _joined(signed_headers), ""))
        digest = hashlib.sha1(text.encode("utf-8")).hexdigest()
        string_to_sign = f"sha1\n{key_time}\n{digest}\n"
        signature = hmac.digest(self._signing_key(secret_key, key_time).encode(),
                                string_to_sign.encode(), "sha1").hex()
        return (f"q-sign-algorithm=sha1&q-ak={secret_id}&q-sign-time={key_time}"
                f"&q-key-time={key_time}&q-header-list={';'.join(sorted(signed_headers))}"
                f"&q-url-param-list={';'.join(sorted(signed_params))}&q-signature={signature}")

    def _signing_key(self, secret_key: str, key_time: str) -> str:
        known_secret, known_time, known_key = self._known
        if (known_secret, known_time) != (secret_key, key_time):
            known_key = hmac.new(utf8(secret_key), key_time.encode(), hashlib.sha1).hexdigest()
            self._known = (secret_key, key_time, known_key)  # one tuple: safe across threads
        return known_key


def utf8(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


# The same few header and parameter names come with every request: each name's quoting
# (and whether the SDK's filter signs a header) is remembered rather than redone.
@functools.lru_cache(maxsize=1024)
def _encoded_name(name: Any) -> str:
    return quote(utf8(name), "-_.~").lower()


@functools.lru_cache(maxsize=1024)
def _signed_name(name: Any) -> Optional[str]:
    """The name of a header as ``CosS3Auth`` signs it, None if its filter leaves that
    header unsigned."""
    return _encoded_name(name) if filter_headers({name: ""}) else None


@functools.lru_cache(maxsize=1024)
def _query_name(name: str) -> str:
    return quote_plus(name)


def _signed_headers(headers: Any) -> dict[str, str]:
    """:func:`_encoded` of the headers ``CosS3Auth``'s filter signs."""
    signed = {}
    for name, value in headers.items():
        signed_name = _signed_name(name)
        if signed_name is not None:
            signed[signed_name] = quote(utf8(value), "-_.~")
    return signed


def _encoded(pairs: Any) -> dict[str, str]:
    """Names (lower case) and values URL-encoded as ``CosS3Auth`` signs them."""
    return {_encoded_name(name): quote(utf8(value), "-_.~") for name, value in pairs.items()}


def query(params: dict[str, Any]) -> str:
    """``urlencode(params)`` (names are strings here)."""
    return "&".join(f"{_query_name(name)}="
                    f"{quote_plus(value if isinstance(value, bytes) else str(value))}"
                    for name, value in params.items())


def _joined(pairs: dict[str, str]) -> str:
    return "&".join(f"{name}={value}" for name, value in sorted(pairs.items()))



def quoted_path(key: str) -> str:
    """``key`` as ``CosConfig.uri`` writes it after the bucket's URL."""
    path = key[1:] if key.startswith("/") else key
    return quote(path.encode("utf-8"), "/-_.~").replace("./", ".%2F")
