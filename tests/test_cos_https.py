"""COS over HTTPS, as every real deployment reaches it: the emulator behind a TLS front
(haproxy terminating TLS with a test certificate), the server trusting that certificate
through ``REQUESTS_CA_BUNDLE`` as the SDK's ``requests`` does.

Over plain HTTP a download is spliced from the COS socket into the data socket
(``cos.streams.SocketBody``); over HTTPS the pump reads each chunk into one kept buffer
(``ftp.pump``, ``how="copy"``): these tests are the only ones that drive that path, the
multipart upload and the start-up probe over TLS.
"""

from __future__ import annotations

import ftplib
import io
import os
import subprocess

import pytest

from .conftest import ALPHA
from .server_proc import FREE_PORT, Account, ServerProcess
from .test_clients import require
from .test_downloads import _relayed, _retr
from .tls_front import TlsFront, environment

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def tls_front(emulator, tmp_path_factory):
    with TlsFront(tmp_path_factory.mktemp("cos-tls"), emulator.port) as front:
        yield front


def _https_server(tmp_path, tls_front, trusted: bool = True) -> ServerProcess:
    account = Account("alice", "alice-pw", ALPHA, protocol="https", cos_port=tls_front.port)
    proc = ServerProcess(str(tmp_path), 0, [account],
                         network={"metrics_port": FREE_PORT},
                         env=environment(tls_front.ca if trusted else ""))
    return proc


@pytest.fixture(scope="module")
def https_server(tls_front, tmp_path_factory):
    with _https_server(tmp_path_factory.mktemp("https"), tls_front) as proc:
        yield proc


def test_uploads_and_downloads_go_over_https_whole(https_server, cos, area):
    """A multipart upload and a small one stored through the TLS front are COS's bytes; a
    download (whole and from a REST offset) is read chunk by chunk, not spliced, and is
    the object's bytes; a small download is read in the session's thread."""
    big, small = os.urandom(3 * MIB + 5), os.urandom(10 * 1024 + 1)
    before = _relayed(https_server)
    ftp = https_server.login("alice", "alice-pw")
    ftp.mkd(area)
    assert ftp.storbinary(f"STOR {area}/big", io.BytesIO(big)).startswith("226")
    assert ftp.storbinary(f"STOR {area}/small", io.BytesIO(small)).startswith("226")
    assert _retr(ftp, f"{area}/big") == big
    assert _retr(ftp, f"{area}/big", rest=MIB + 3) == big[MIB + 3:]
    assert _retr(ftp, f"{area}/small") == small
    ftp.quit()
    after = _relayed(https_server)
    assert after["copy"] - before["copy"] == 2 and after["splice"] == before["splice"]
    for name, data in (("big", big), ("small", small)):
        assert cos.get_object(Bucket=ALPHA, Key=f"{area}/{name}")["Body"].get_raw_stream() \
            .read() == data


def test_curl_downloads_and_lists_over_https(https_server, cos, area, tmp_path):
    data = os.urandom(2 * MIB + 9)
    cos.put_object(Bucket=ALPHA, Key=f"{area}/file", Body=data)
    url = f"ftp://alice:alice-pw@127.0.0.1:{https_server.port}/{area}/"
    curl = require("curl")
    listing = subprocess.run([curl, "-sS", "--list-only", url], capture_output=True,
                             text=True, timeout=60)
    assert (listing.returncode, listing.stdout.split()) == (0, ["file"]), listing.stderr
    target = tmp_path / "file"
    done = subprocess.run([curl, "-sS", "-o", str(target), url + "file"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert target.read_bytes() == data


def test_an_untrusted_cos_certificate_is_named(tls_front, tmp_path):
    """Without the CA, ``check --online`` says the certificate is not trusted, and a
    session's command that needs COS gets a 4xx reply, not a hang or a dropped session."""
    proc = _https_server(tmp_path, tls_front, trusted=False)
    proc.write_config()
    done = proc.ctl("check", "--online", "--timeout", "10", timeout=120)
    assert done.returncode != 0
    assert "its TLS certificate is not trusted" in done.stdout, done.stdout + done.stderr
    with proc:
        ftp = proc.login("alice", "alice-pw")
        with pytest.raises(ftplib.error_temp, match=r"^4"):
            ftp.nlst("/")
        assert ftp.voidcmd("NOOP").startswith("200")
        ftp.quit()
