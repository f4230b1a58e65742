"""The worker's lean COS requests (cosftp_prefork/cos/ signed.py, signing.py, wire.py and
streams.py): the signature the SDK would write, and HTTP/1.1 answers read as urllib3 read
them, over real loopback connections."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import socket
import ssl
import sys
import threading
import types
from collections.abc import Iterator
from typing import Any, Optional
from urllib.parse import urlencode

import pytest
from qcloud_cos import CosConfig, CosS3Client
from qcloud_cos.cos_auth import CosS3Auth
from requests.structures import CaseInsensitiveDict

from cosftp_prefork.cos.bucket import RETRY_ATTEMPTS, Bucket, ObjectInfo
from cosftp_prefork.cos.registry import BucketRegistry
from cosftp_prefork.cos.signed import Sender
from cosftp_prefork.cos.signing import Signer
from cosftp_prefork.emulator.app import Emulator
from cosftp_prefork.errors import NotFound, StorageError

from .emulator_proc import emulator_account
from .server_proc import wait_until
from .tls_clients import write_certificate

BUCKET = "signed-1250000000"
# Keys and values with what quoting must get right: unicode, spaces, reserved characters.
ALPHABET = "aZ09-_.~ /%+&=?#中é\U0001f600"


def _text(rng: random.Random, size: int) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, size)))


def _random_request(rng: random.Random) -> tuple[str, str, dict, dict]:
    method = rng.choice(["GET", "HEAD", "PUT", "DELETE", "POST"])
    path = "/" + _text(rng, 30)
    params = {_text(rng, 8): _text(rng, 12) for _ in range(rng.randint(0, 4))}
    headers = {"Host": "b-1250000000.cos.ap-guangzhou.myqcloud.com"}
    for name in rng.sample(["Content-Type", "Content-MD5", "Content-Length", "x-cos-meta-mtime",
                            "X-Cos-Forbid-Overwrite", "User-Agent", "Accept", "Range",
                            "x-cos-copy-source-If-Match", "If-Match"], rng.randint(0, 6)):
        headers[name] = _text(rng, 20)
    return method, path, params, headers


@pytest.mark.parametrize("sign_params", [True, False])
def test_the_signature_is_the_sdks_for_the_same_window(sign_params):
    """For random methods, keys, parameters and headers, the header equals what the SDK's
    CosS3Auth writes over the same key-time window."""
    conf = CosConfig(Region="ap-guangzhou", SecretId="AKIDsigned", SecretKey="secret-中",
                     SignParams=sign_params)
    signer = Signer(conf)
    rng = random.Random(21)
    for _ in range(2000):
        method, path, params, headers = _random_request(rng)
        request = types.SimpleNamespace(method=method, url="http://unused/",
                                        headers=CaseInsensitiveDict(headers))
        CosS3Auth(conf, path, params=params)(request)
        theirs = request.headers["Authorization"]
        key_time = dict(part.split("=", 1) for part in theirs.split("&"))["q-key-time"]
        ours = signer.authorization(method, path, params, CaseInsensitiveDict(headers),
                                    key_time=key_time)
        assert ours == theirs, (method, path, params, headers)


@pytest.mark.parametrize("where", [{"IP": "127.0.0.1", "Port": 9000, "Scheme": "http"},
                                   {"Endpoint": "cos.example.internal"},
                                   {"Domain": "files.example.com"}])
def test_a_requests_url_and_host_are_the_sdks(where):
    """The URL (key and parameters quoted) and Host header of a request are what the SDK's
    ``CosConfig.uri``, ``urlencode`` and ``get_host`` make, for random keys and parameters
    in several buckets, with every way of naming the endpoint (the Sender makes the
    bucket's part once)."""
    conf = CosConfig(Region="ap-guangzhou", SecretId="a", SecretKey="b", **where)
    sender = Sender(CosS3Client(conf))
    rng = random.Random(7)
    for _ in range(500):
        bucket = rng.choice([BUCKET, "other-1250000000"])
        _method, path, params, _headers = _random_request(rng)
        key = rng.choice([path, path[1:], "", "a/./b", "./x"])
        url, headers = sender._signed("GET", bucket, key, params, {}, None)
        expected = conf.uri(bucket=bucket, path=key) if key else conf.uri(bucket=bucket)
        assert url == (f"{expected}?{urlencode(params)}" if params else expected), key
        if "IP" in where:
            assert headers["Host"] == conf.get_host(Bucket=bucket)
        else:
            assert "Host" not in headers


def test_one_key_time_window_serves_many_requests_and_covers_each():
    """A window starts at least 60 s before each request it serves (as the SDK's) and ends
    at least 10,000 - WINDOW s after it; within one window the key time is the same."""
    signer = Signer(CosConfig(Region="ap-guangzhou", SecretId="a", SecretKey="b"))
    for now in range(1_700_000_000, 1_700_000_000 + 3 * Signer.WINDOW, 37):
        start, end = (int(part) for part in signer.key_time(now + 0.5).split(";"))
        assert start <= now - 60 and end >= now + 10_000 - Signer.WINDOW
        assert signer.key_time(start + 60) == signer.key_time(now)


class CannedServer:
    """A loopback HTTP server answering each request with the next of ``answers`` (raw
    bytes), closing the connection after an answer marked ``close``; it notes each request
    line and how many connections it accepted."""

    def __init__(self, answers: list[tuple[bytes, bool]],
                 tls: Optional[ssl.SSLContext] = None) -> None:
        self.answers = list(answers)
        self._tls = tls
        self.requests: list[bytes] = []
        self.accepted = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while self.answers:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            if self._tls is not None:
                try:
                    conn = self._tls.wrap_socket(conn, server_side=True)
                except (OSError, ssl.SSLError):  # the client refused the certificate
                    conn.close()
                    continue
            with conn, conn.makefile("rb") as reader:
                while self.answers:
                    head = self._request(reader)
                    if head is None:
                        break
                    self.requests.append(head)
                    answer, close = self.answers.pop(0)
                    conn.sendall(answer)
                    if close:
                        break

    @staticmethod
    def _request(reader) -> bytes | None:
        line = reader.readline()
        if not line:
            return None
        length = 0
        while (header := reader.readline()) not in (b"\r\n", b""):
            name, _, value = header.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        reader.read(length)
        return line.strip()

    def close(self) -> None:
        with contextlib.suppress(OSError):  # wakes a thread waiting in accept
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(5)
        assert not self._thread.is_alive()


@pytest.fixture
def canned() -> Iterator[callable]:
    servers: list[CannedServer] = []

    def start(*answers: tuple[bytes, bool], tls: Optional[ssl.SSLContext] = None,
              verify: Any = None, timeout: int = 5) -> tuple[CannedServer, Bucket]:
        server = CannedServer(list(answers), tls)
        servers.append(server)
        conf = CosConfig(Region="ap-guangzhou", SecretId="a", SecretKey="b",
                         Scheme="https" if tls else "http", IP="127.0.0.1", Port=server.port,
                         Timeout=timeout, VerifySSL=verify)
        return server, Bucket(CosS3Client(conf, retry=0), BUCKET, "ap-guangzhou")
    yield start
    for server in servers:
        server.close()


HEAD_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: \"abc\"\r\nLast-Modified: " \
          b"Wed, 01 Jan 2025 00:00:00 GMT\r\n\r\n"


def test_answers_framed_every_way_http_allows_are_read_whole(canned):
    """Chunked, close-delimited and 1xx-preceded answers are read whole; a connection the
    answer closes is not used again, one kept alive is."""
    page = (b'<?xml version="1.0"?><ListBucketResult><IsTruncated>false</IsTruncated>'
            b"<Contents><Key>d/a</Key><Size>3</Size><ETag>\"e\"</ETag>"
            b"<LastModified>2025-01-01T00:00:00.000Z</LastModified></Contents>"
            b"</ListBucketResult>")
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(
        b"%x;ext=1\r\n%s\r\n" % (len(piece), piece) for piece in (page[:40], page[40:])) + \
        b"0\r\nTrailer: x\r\n\r\n"
    until_close = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + page
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" + HEAD_OK
    server, bucket = canned((chunked, False), (until_close, True), (interim, False),
                            (HEAD_OK, False))
    assert [o.key for o in bucket.list_page("d/").objects] == ["d/a"]
    assert [o.key for o in bucket.list_page("d/").objects] == ["d/a"]
    assert bucket.head("d/a").etag == "abc"
    assert bucket.head("d/a").size == 5
    assert server.accepted == 2  # the close-delimited answer ended the first connection
    assert [line.split(b" ")[0] for line in server.requests] == [b"GET", b"GET", b"HEAD", b"HEAD"]


def test_a_cut_answer_is_a_storage_error_and_its_connection_is_dropped(canned):
    """An answer shorter than its Content-Length fails the request (retried as any broken
    connection, each time on a new connection); the connection is not used again."""
    short = b"HTTP/1.1 200 OK\r\nContent-Length: 900\r\n\r\n<ListBucketResult>"
    missing = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    server, bucket = canned(*[(short, True)] * RETRY_ATTEMPTS, (missing, False))
    with pytest.raises(StorageError) as info:
        bucket.list_page("d/")
    assert info.value.code == "ClientError"
    with pytest.raises(NotFound):
        bucket.head("d/a")
    assert server.accepted == RETRY_ATTEMPTS + 1


def test_https_goes_through_urllib3s_tls_with_the_accounts_verification(canned, tmp_path):
    """Over HTTPS the connection is urllib3's, opened with the SDK's settings: a
    certificate no CA vouches for is refused (nothing is sent), and with verification
    off (VerifySSL=False) the same server's answer is read."""
    cert, key = write_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server, verified = canned(*[(HEAD_OK, False)] * 2, tls=context)
    with pytest.raises(StorageError) as info:
        verified.head("d/a")
    assert info.value.code == "ClientError" and server.requests == []
    _, unverified = canned((HEAD_OK, False), tls=context, verify=False)
    assert unverified.head("d/a").etag == "abc"


@pytest.mark.parametrize("name, value", [
    ("content-type", "text/plain\r\nX-Injected: 1"), ("content-type", "text/plain\nX: 1"),
    ("content-type", "a\rb"), ("content-type", "a\x00b"), ("x-cos-meta-a b", "v"),
    ("x-cos-meta-a\nX-Injected", "v")])
def test_a_header_that_could_forge_another_is_refused_before_anything_is_sent(
        canned, name, value):
    """A header value holding CR, LF or NUL (one line break alone too), or a name that is no
    token, as a stored attribute could carry them into a PUT, refuses the request as
    http.client does: nothing reaches COS."""
    server, bucket = canned(*[(HEAD_OK, False)] * RETRY_ATTEMPTS)
    odd = ObjectInfo(key="x", size=0, mtime=0.0, attributes=((name, value),))
    with pytest.raises(StorageError) as info:
        bucket.put("d/a", b"data", like=odd)
    assert info.value.code == "ClientError"
    assert server.requests == []


def test_a_garbled_answer_is_a_storage_error(canned):
    _, bucket = canned(*[(b"SSH-2.0-OpenSSH\r\n\r\n", True)] * RETRY_ATTEMPTS)
    with pytest.raises(StorageError) as info:
        bucket.head("d/a")
    assert info.value.code == "ClientError"


def test_the_emulator_accepts_the_lean_requests_signature():
    """The emulator checks signatures as COS does (registered keys, strict): every kind of
    request the lean path sends is accepted; with a wrong secret, none is."""
    with Emulator(buckets=[BUCKET]) as emu:
        emu.app.accounts.update({"strict": True, "keys": {"AKIDlean": {"secret": "s-中"}}})
        account = dataclasses.replace(emulator_account(emu, BUCKET), secret_id="AKIDlean",
                                      secret_key="s-中")
        good = BucketRegistry().bucket(account)
        put = good.put("signed/a b+中", b"lean")
        seen = good.head("signed/a b+中")
        assert seen.etag == put.etag
        assert [o.key for o in good.list_page("signed/").objects] == ["signed/a b+中"]
        good.copy(seen, "signed/c", client_mtime=1_600_000_000, pinned=True)
        good.delete("signed/c")
        good.delete("signed/a b+中")
        bad = BucketRegistry().bucket(dataclasses.replace(account, secret_key="wrong"))
        with pytest.raises(StorageError) as info:
            bad.head("signed/x")
        assert info.value.status == 403
        with pytest.raises(StorageError) as info:
            bad.list_page("signed/")
        assert info.value.code == "SignatureDoesNotMatch"


def _drain_into_pipe(stream, size: int) -> tuple[bytes, list]:
    """``stream.splice_into`` a pipe in steps of at most ``size`` bytes until it answers 0
    (or None, which ends the list): the bytes the pipe gave, and each answer."""
    reader, writer = os.pipe()
    received, answers = bytearray(), []
    try:
        while True:
            moved = stream.splice_into(writer, size)
            answers.append(moved)
            if not moved:
                return bytes(received), answers
            while moved:
                piece = os.read(reader, moved)
                received += piece
                moved -= len(piece)
    finally:
        os.close(reader)
        os.close(writer)


def test_a_plain_get_is_spliced_whole_and_its_connection_serves_again(canned):
    """Over plain HTTP a GET's body moves into a pipe (the bytes buffered with the head
    first, then the socket's), stops at its Content-Length, and the connection goes back
    to the pool for the next request."""
    body = random.Random(7).randbytes(300_000)
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nETag: \"e\"\r\n\r\n" % len(body)
    server, bucket = canned((answer + body, False), (HEAD_OK, False))
    stream = bucket.open_read("d/a")
    received, answers = _drain_into_pipe(stream, 65_536)
    stream.close()
    assert received == body and answers[-1] == 0 and len(answers) > 2
    assert bucket.head("d/a").etag == "abc"
    assert server.accepted == 1


def test_a_spliced_get_cut_short_is_a_storage_error(canned):
    """A body that ends before its Content-Length: what came is in the pipe, then a
    StorageError (which the download reopens from), and the connection is not used again."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 900\r\n\r\n" + b"x" * 100
    server, bucket = canned((answer, True), (HEAD_OK, False))
    stream = bucket.open_read("d/a")
    with pytest.raises(StorageError) as info:
        _drain_into_pipe(stream, 65_536)
    stream.close()
    assert info.value.code == "StreamError" and "cut short" in str(info.value)
    assert bucket.head("d/a").size == 5
    assert server.accepted == 2


def _waiting_in_socket_read(thread: threading.Thread) -> bool:
    frame = sys._current_frames().get(thread.ident)
    while frame is not None:
        if frame.f_code.co_name == "readinto" and frame.f_code.co_filename.endswith("socket.py"):
            return True
        frame = frame.f_back
    return False


def test_a_get_closed_by_another_thread_ends_a_read_waiting_for_cos(canned):
    """A download given up (the session ends) while its read-ahead thread waits for bytes
    COS does not send: closing the stream ends that read at once, rather than when the COS
    timeout (here 120 s) runs out, and the connection is not used again."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 900\r\n\r\n" + b"x" * 100
    server, bucket = canned((answer, False), (HEAD_OK, False), timeout=120)
    stream = bucket.open_read("d/a")
    outcome: list[Any] = []

    def read() -> None:
        assert stream.read(100) == b"x" * 100
        try:
            outcome.append(stream.read(800))
        except StorageError as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_until(lambda: _waiting_in_socket_read(reader), what="the read waiting for COS")
    closer = threading.Thread(target=stream.close, daemon=True)
    closer.start()
    wait_until(lambda: not reader.is_alive() and not closer.is_alive(), timeout=30,
               what="the read and the close to end")
    assert isinstance(outcome[0], StorageError)
    assert bucket.head("d/a").size == 5
    assert server.accepted == 2


def test_over_https_a_get_is_read_into_a_buffer_not_spliced(canned, tmp_path):
    """TLS: the bytes on the socket are ciphertext, so ``splice_into`` declines (None); the
    body is read into the caller's buffer, and its connection serves the next request."""
    cert, key = write_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    body = random.Random(8).randbytes(200_000)
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    server, bucket = canned((answer + body, False), (HEAD_OK, False), tls=context,
                            verify=cert)
    stream = bucket.open_read("d/a")
    assert _drain_into_pipe(stream, 65_536) == (b"", [None])
    received, buffer = bytearray(), memoryview(bytearray(65_536))
    while count := stream.readinto(buffer):
        received += buffer[:count]
    stream.close()
    assert received == body
    assert bucket.head("d/a").etag == "abc"
    assert server.accepted == 1
