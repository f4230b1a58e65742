"""The emulator's own answers to HEAD Object, GET Object, ListObjects, PUT Object and PUT
Object - Copy (cosftp_prefork/emulator/fast.py) equal moto's, over random buckets,
requests, copies and PUTs, and so do the objects they made; the requests they do not
cover still go to moto, and the shim's checks still come first. Each in both ways of naming
the bucket: the COS SDK's virtual host, and the path-style requests of S3 clients (rclone,
the bench's baseline)."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import random
import re
import shutil
import subprocess
import sys
import urllib.parse
import uuid
from collections import Counter
from xml.sax.saxutils import escape

import pytest
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import get_canned_acl, s3_backends
from moto.s3.utils import metadata_from_headers
from werkzeug.datastructures import EnvironHeaders
from werkzeug.test import Client, EnvironBuilder

from cosftp_prefork.emulator.app import Emulator, cos_host
from cosftp_prefork.emulator.fast import answer as fast_answer
from cosftp_prefork.emulator.fast import object_metadata

from .emulator_proc import sdk_client
from .test_clients import require

BUCKET = "fast-1250000000"
# "/" often, so keys nest; unicode, XML and URL specials, a space, a plus, a control byte.
ALPHABET = "//ab.é中 %+&<>\"'\x01"
AUTH = "q-sign-algorithm=sha1&q-ak=fast"
# What an AWS SDK (rclone's) signs a path-style request with.
SIGV4 = ("AWS4-HMAC-SHA256 Credential=fast/20261206/us-east-1/s3/aws4_request, "
         "SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=" + "0" * 64)
STYLES = ("virtual", "path")
# Headers that differ between any two answers: random ids.
RANDOM_HEADERS = {"x-cos-request-id", "x-cos-trace-id"}


@pytest.fixture(scope="module")
def emu():
    with Emulator(buckets=[BUCKET]) as running:
        yield running


def backend():
    return s3_backends[DEFAULT_ACCOUNT_ID]["aws"]


def address(emu, style: str, bucket: str, path: str, headers: dict | None = None,
            slash: bool = False) -> tuple[str, dict]:
    """The URL path and headers of a request for ``path`` in ``bucket`` (URL-encoded, "/"
    for the bucket itself): the COS SDK's virtual host, or path-style to the emulator's
    address as an AWS SDK sends it (its signing headers, x-amz-* for x-cos-*; the bucket
    as "/<bucket>", or "/<bucket>/" with ``slash``)."""
    if style == "virtual":
        return path, {"Host": cos_host(bucket, emu.region), "Authorization": AUTH,
                      **(headers or {})}
    renamed = {("x-amz-" + name[6:] if name.lower().startswith("x-cos-") else name): value
               for name, value in (headers or {}).items()}
    within = "/" if slash else ""
    return f"/{bucket}{path if path != '/' else within}", {
        "Host": f"127.0.0.1:{emu.port}", "Authorization": SIGV4,
        "x-amz-date": "20261206T120000Z", "x-amz-content-sha256": "UNSIGNED-PAYLOAD",
        **renamed}


def both(emu, method: str, bucket: str, path: str, query: str = "",
         headers: dict | None = None, style: str = "virtual", slash: bool = False,
         taken: Counter | None = None) -> tuple:
    """The shim's answer made here and moto's, each as (status, headers, body) with the
    random ids left out (headers, error bodies) and NextMarker tokens resolved to the key
    they stand for; ``taken`` counts whether fast.py answered the first (the log's
    ``fast``)."""
    return answers_of(emu, method, *address(emu, style, bucket, path, headers, slash), query,
                      taken)


def answers_of(emu, method: str, url: str, sent: dict, query: str = "",
               taken: Counter | None = None) -> tuple:
    """``both``'s answers to a request of this URL path and these headers."""
    answers = []
    for fast in (True, False):
        emu.app.fast_answers = fast
        try:
            response = Client(emu.app).open(url, method=method, query_string=query,
                                             headers=sent)
            if fast and taken is not None:
                taken[emu.app.requests[-1].fast] += 1
        finally:
            emu.app.fast_answers = True
        kept = sorted((name, value) for name, value in response.headers.items()
                      if name.lower() not in RANDOM_HEADERS)
        body = re.sub(rb"<NextMarker>([^<]*)</NextMarker>", _resolved, response.data)
        body = re.sub(rb"<(RequestId|TraceId)>[^<]*<", rb"<\1><", body)
        # (moto's error body held raw in the Message where a control byte in the key makes
        # it no XML: its id escaped)
        body = re.sub(rb"&lt;RequestId&gt;[A-Za-z0-9]*", rb"&lt;RequestId&gt;", body)
        answers.append((response.status, kept, body))
    return tuple(answers)


def _resolved(match: re.Match) -> bytes:
    token = urllib.parse.unquote(match.group(1).decode())
    name = backend()._pagination_tokens.get(token, token)
    return b"<NextMarker>%s</NextMarker>" % name.encode()


def random_name(rng: random.Random) -> str:
    """A key the SDK can name: no leading "/" (it takes it off), no "." or ".." segment
    (the URL would lose it)."""
    while True:
        name = rng.choice(ALPHABET[2:]) + "".join(rng.choice(ALPHABET)
                                                  for _ in range(rng.randint(0, 6)))
        if not {".", ".."} & set(name.split("/")):
            return name


def fill(emu, rng: random.Random, bucket: str, names: list[str], versioned: bool) -> None:
    """Put keys through the emulator (some with metadata, content headers, a storage class,
    encryption) or straight into moto (no CRC64 known to the shim yet), overwrite and
    delete some."""
    cos = sdk_client(emu)
    for _ in range(rng.randint(5, 20)):
        name = rng.choice(names) if names and rng.random() < 0.3 else random_name(rng)
        if rng.random() < 0.2:
            backend().put_object(bucket, name, b"y" * rng.randint(0, 9))
            names.append(name)
            continue
        extra = rng.choice([{}, {"ContentType": "text/plain"}, {"StorageClass": "STANDARD_IA"},
                            {"Metadata": {"x-cos-meta-mtime": "1600000000"},
                             "ContentDisposition": "attachment"},
                            {"ServerSideEncryption": "AES256"}])
        cos.put_object(Bucket=bucket, Key=name, Body=b"x" * rng.randint(0, 9), **extra)
        names.append(name)
    for name in rng.sample(names, k=min(len(names), rng.randint(0, 4))):
        cos.delete_object(Bucket=bucket, Key=name)


def new_bucket(emu, tag: str, versioned: bool) -> str:
    """A new bucket of its own (``tag`` and a random part), versioned or not."""
    bucket = f"{tag}{'v' if versioned else ''}-{uuid.uuid4().hex[:8]}-1250000000"
    emu.create_bucket(bucket)
    if versioned:
        backend().put_bucket_versioning(bucket, "Enabled")
    return bucket


def random_list_query(rng: random.Random, names: list[str]) -> str:
    name = rng.choice(names) if names else random_name(rng)
    pairs = []
    for parameter, values in (
            ("prefix", ["", name[:rng.randint(0, len(name))], random_name(rng)]),
            ("delimiter", ["", "/", "a", "é"]),
            ("marker", ["", name, name[:-1], random_name(rng)]),
            ("max-keys", ["0", "1", "2", "3", "1000", "1001"]),
            ("encoding-type", ["url"])):
        if rng.random() < 0.7:
            pairs.append((parameter, rng.choice(values)))
    rng.shuffle(pairs)
    query = urllib.parse.urlencode(pairs, quote_via=urllib.parse.quote)
    return query.replace("%20", "+") if rng.random() < 0.5 else query


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("versioned", [False, True], ids=["plain", "versioned"])
def test_fast_answers_equal_motos_over_random_buckets(emu, versioned, style):
    rng = random.Random(21 + versioned)
    bucket = new_bucket(emu, "cmp", versioned)
    names: list[str] = []
    checked, taken = 0, Counter()
    for _ in range(12):
        fill(emu, rng, bucket, names, versioned)
        for _ in range(60):
            query = random_list_query(rng, names)
            fast, moto = both(emu, "GET", bucket, "/", query, style=style,
                              slash=rng.random() < 0.5, taken=taken)
            assert fast == moto, query
            checked += 1
        for name in [*rng.sample(names, k=min(len(names), 25)), random_name(rng)]:
            path = "/" + urllib.parse.quote(name.encode("utf-8"), safe="/")
            fast, moto = both(emu, "HEAD", bucket, path, style=style, taken=taken)
            assert fast == moto, name
            checked += 1
    assert checked > 800
    # most were answered here (an equivalence alone passes without any); a versioned
    # bucket's HEADs of delete markers and moto's 404s and odd listings are moto's
    assert taken[True] > checked / 2, taken


def test_requests_the_fast_answers_do_not_cover_are_motos(emu):
    """Each of these goes to moto (its answer differs from what a fast answer would say,
    or moto alone knows it): the answers with and without fast answers are equal."""
    cos = sdk_client(emu)
    cos.put_object(Bucket=BUCKET, Key="cover/a", Body=b"abc")
    etag = cos.head_object(Bucket=BUCKET, Key="cover/a")["ETag"]
    cases = [
        ("GET", BUCKET, "/", "prefix=cover/&versions"),  # another listing
        ("GET", BUCKET, "/", "prefix=cover/&prefix=x"),  # a parameter twice
        ("GET", BUCKET, "/", "delimiter=ab"),
        ("GET", "missing-1250000000", "/", "prefix=x"),  # no such bucket
        ("HEAD", BUCKET, "/cover/a", "versionId=null"),
        ("HEAD", BUCKET, "/cover/missing", ""),
        ("HEAD", "missing-1250000000", "/cover/a", ""),
    ]
    for method, bucket, path, query in cases:
        fast, moto = both(emu, method, bucket, path, query)
        assert fast == moto, (method, path, query)
    for headers in ({"If-Match": etag}, {"If-None-Match": etag}, {"Range": "bytes=0-0"},
                    {"If-Modified-Since": "Wed, 01 Jan 2031 00:00:00 GMT"}):
        fast, moto = both(emu, "HEAD", BUCKET, "/cover/a", headers=headers)
        assert fast == moto, headers
    assert both(emu, "HEAD", BUCKET, "/cover/a",
                headers={"If-None-Match": etag})[0][0].startswith("304")


def test_path_style_requests_the_fast_answers_do_not_cover_are_motos(emu):
    """Path-style requests that name the bucket itself, another listing (ListObjectsV2,
    which no client of the bench sends here), a bucket name moto reads otherwise, a region
    of another partition (moto's other backend), another query of a PUT or a streaming
    payload go to moto: the answers with and without fast answers are equal."""
    cos = sdk_client(emu)
    cos.put_object(Bucket=BUCKET, Key="pcover/a", Body=b"abc")
    host = f"127.0.0.1:{emu.port}"
    signing = {"Authorization": SIGV4, "x-amz-content-sha256": "UNSIGNED-PAYLOAD"}
    china = SIGV4.replace("us-east-1", "cn-north-1")
    cases = [
        ("HEAD", f"/{BUCKET}", "", {}),
        ("HEAD", f"/{BUCKET}/", "", {}),
        ("GET", f"/{BUCKET}", "list-type=2&prefix=pcover/", {}),
        ("GET", f"/{BUCKET}/", "prefix=pcover/&x-id=ListObjects", {}),
        ("HEAD", "//pcover/a", "", {}),
        ("HEAD", f"/{BUCKET.upper()}/pcover/a", "", {}),
        ("HEAD", f"/{BUCKET}/pcover/a", "", {"Authorization": china}),
        ("GET", f"/{BUCKET}", "prefix=pcover/", {"Authorization": china}),
        ("PUT", f"/{BUCKET}/pcover/b", "x-id=PutObject&x-id=PutObject", {}),
        ("PUT", f"/{BUCKET}/pcover/c", "x-id=PutObject&tagging", {}),
        ("PUT", f"/{BUCKET}/pcover/d", "",
         {"x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER"}),
    ]
    for method, url, query, headers in cases:
        fast, moto = answers_of(emu, method, url, {"Host": host, **signing, **headers},
                                query)
        if method == "PUT":  # each way wrote the object anew: seconds apart under load
            fast, moto = (without_header(answer, "last-modified") for answer in (fast, moto))
        assert fast == moto, (method, url, query, headers)
    assert backend().get_object(BUCKET, "pcover/b") is not None  # (moto stored it)


def without_header(answer: tuple, name: str) -> tuple:
    """``answers_of``'s ``answer`` without the header ``name``."""
    status, headers, body = answer
    return status, [(key, value) for key, value in headers if key.lower() != name], body


def test_rclones_path_style_requests_take_the_fast_answers(emu, tmp_path):
    """rclone (the bench's ``rclone serve ftp``: S3 path-style to 127.0.0.1, AWS signing
    headers, ``x-id`` queries) uploading, listing and copying on the emulator: every
    request the emulator answers for the gateway's SDK without moto's app is answered so for
    rclone too (its PUTs, its copy, its GETs, whole and ranged as ``rclone serve ftp`` reads
    a file, its listings, its HEADs of keys that exist), as the emulator's log says; what
    is left to moto is rclone's creation of the bucket and its HEADs of keys not there yet.
    Else the rows against rclone are tilted."""
    rclone = shutil.which("rclone", path=os.path.dirname(sys.executable)) or require("rclone")
    flags = ["--s3-provider", "Other", "--s3-endpoint", f"http://127.0.0.1:{emu.port}",
             "--s3-access-key-id", "x", "--s3-secret-access-key", "y"]
    (tmp_path / "é a").write_bytes(b"hello")
    first = len(emu.app.requests)
    for command in (["copyto", str(tmp_path / "é a"), f":s3:{BUCKET}/rc/é a"],
                    ["lsf", f":s3:{BUCKET}/rc/"],
                    ["copyto", f":s3:{BUCKET}/rc/é a", f":s3:{BUCKET}/rc/b"],
                    ["lsf", "-R", f":s3:{BUCKET}/rc/"], ["cat", f":s3:{BUCKET}/rc/b"],
                    ["cat", "--offset", "1", "--count", "3", f":s3:{BUCKET}/rc/b"]):
        done = subprocess.run([rclone, *command, *flags], capture_output=True, text=True,
                              timeout=60, env={**os.environ, "RCLONE_CONFIG": os.devnull})
        assert done.returncode == 0, done.stderr
        assert command[0] != "cat" or done.stdout in ("hello", "ell"), done.stdout
    assert backend().get_object(BUCKET, "rc/b").value == b"hello"
    sent = list(emu.app.requests)[first:]
    written: set[str] = set()
    for entry in sent:
        if entry.kind in ("PUT", "COPY") and entry.target:  # a key's PUT or copy
            written.add(entry.target)
        elif entry.kind == "HEAD" and entry.target not in written:
            continue  # not there yet: moto's 404
        elif entry.kind == "PUT":
            continue  # the bucket's creation
        assert entry.fast, (entry, [(e.kind, e.target, e.fast) for e in sent])
    # The log names keys as the client did (no bucket, no second URL-decoding) and counts
    # path-style listings and copies as the SDK's.
    assert written == {"rc/é a", "rc/b"}, written
    kinds = Counter(entry.kind for entry in sent if entry.fast)
    assert kinds["PUT"] == 1 and kinds["COPY"] == 1 and kinds["GET"] == 2 and \
        kinds["HEAD"] >= 2 and kinds["LIST"] >= 2, kinds


def test_the_shims_checks_come_before_a_fast_answer(emu):
    """Faults and accounts apply to the requests answered here as to any."""
    cos = sdk_client(emu)
    cos.put_object(Bucket=BUCKET, Key="checked/a", Body=b"abc")
    emu.app.faults.update({"deny_prefix": "checked/"})
    try:
        for method, path, query in (("HEAD", "/checked/a", ""),
                                    ("GET", "/", "prefix=checked/"), ("PUT", "/checked/b", "")):
            response = Client(emu.app).open(path, method=method, query_string=query, headers={
                "Host": cos_host(BUCKET, emu.region), "Authorization": AUTH}, data=b"b")
            assert response.status_code == 403
    finally:
        emu.app.faults.update({"deny_prefix": ""})
    assert backend().get_object(BUCKET, "checked/b") is None
    assert [entry.kind for entry in emu.app.requests if entry.target == "checked/b"] == ["PUT"]
    emu.app.accounts.update({"strict": True})
    try:
        response = Client(emu.app).open("/checked/a", method="HEAD", headers={
            "Host": cos_host(BUCKET, emu.region), "Authorization": AUTH})
        assert response.status_code == 403
    finally:
        emu.app.accounts.update({"strict": False})


def test_pinned_copies_fail_and_pass_as_with_motos_head(emu):
    """A copy pinned with ``x-cos-copy-source-If-Match`` reads its source's ETag from moto's
    backend (``fast.source_key``), not through a HEAD of moto's app: the same 200 or 412
    with and without fast answers, over random keys, current and stale ETags, a missing
    key, a delete marker and a versioned bucket."""
    rng = random.Random(2121)
    cos = sdk_client(emu)
    plain, versioned = (f"pin{kind}-{uuid.uuid4().hex[:8]}-1250000000" for kind in "pv")
    for bucket in (plain, versioned):
        emu.create_bucket(bucket)
    backend().put_bucket_versioning(versioned, "Enabled")
    statuses = set()
    for bucket in (plain, versioned):
        names = [random_name(rng) for _ in range(12)]
        for name in names:
            cos.put_object(Bucket=bucket, Key=name, Body=name.encode())
        cos.delete_object(Bucket=bucket, Key=names[-1])  # a delete marker where versioned
        for index, name in enumerate([*names, random_name(rng)]):
            current = backend().get_object(bucket, name).etag.strip('"') \
                if index < len(names) - 1 else "0" * 32
            for etag in (current, "f" * 32):
                source = f"{cos_host(bucket, emu.region)}/" + urllib.parse.quote(
                    name.encode("utf-8"), safe="/-_.~")
                answers = []
                for target in ("fast", "moto"):
                    emu.app.fast_answers = target == "fast"
                    try:
                        response = Client(emu.app).put(
                            f"/copied-{target}-{index}", headers={
                                "Host": cos_host(bucket, emu.region), "Authorization": AUTH,
                                "x-cos-copy-source": source,
                                "x-cos-copy-source-If-Match": f'"{etag}"'})
                    finally:
                        emu.app.fast_answers = True
                    answers.append(response.status_code)
                assert answers[0] == answers[1], (bucket, name, etag, answers)
                statuses.add(answers[0])
    assert {200, 412} <= statuses, statuses


# An AWS SDK names the operation in the query (x-id), which moto ignores; another parameter
# and a repeated x-id go to moto.
OPERATION_QUERIES = {operation: [""] * 6 + [f"x-id={operation}"] * 3 + [
    f"x-id={operation}&x-id={operation}", f"x-id={operation}&versionId=null"]
    for operation in ("CopyObject", "PutObject")}
# Whether fast.py answered each copy or PUT sent with fast answers on (the log's ``fast``).
TAKEN: Counter = Counter()
# Two plain buckets (b with a public-read ACL) and a versioned one, in each of two worlds.
ROLES = ("a", "b", "v")
VERSION_HEADERS = {"x-cos-version-id", "x-cos-copy-source-version-id"}


def copy_world(emu, rng: random.Random, tag: str) -> dict[str, str]:
    """Buckets a, b and v (versioned) named for ``tag``: one world of the copy test."""
    world = {role: f"cp{role}-{tag}-{uuid.uuid4().hex[:6]}-1250000000" for role in ROLES}
    for bucket in world.values():
        emu.create_bucket(bucket)
    backend().put_bucket_versioning(world["v"], "Enabled")
    backend().put_bucket_acl(world["b"], get_canned_acl("public-read"))  # objects take it
    return world


def two_worlds(emu, seed: int, tag: str) -> tuple[random.Random, dict, dict, Counter]:
    """A test's random source, its two identical worlds (``copy_world``: fast answers in
    True's, moto's app in False's), the names it made in each role and a count of the
    statuses it met; ``TAKEN`` cleared."""
    rng = random.Random(seed)
    TAKEN.clear()
    worlds = {True: copy_world(emu, rng, f"f{tag}"), False: copy_world(emu, rng, f"m{tag}")}
    return rng, worlds, {role: [] for role in ROLES}, Counter()


def put(emu, bucket: str, name: str, body: bytes, headers: dict) -> None:
    response = Client(emu.app).put(
        "/" + urllib.parse.quote(name.encode("utf-8"), safe="/"), data=body, headers={
            "Host": cos_host(bucket, emu.region), "Authorization": AUTH, **headers})
    assert response.status_code == 200, response.data


def random_object_headers(rng: random.Random) -> dict:
    headers = {}
    for _ in range(rng.randint(0, 2)):
        headers[f"x-cos-meta-{rng.choice(['mtime', 'a', 'b-c'])}"] = str(rng.randint(0, 9**9))
    if rng.random() < 0.4:
        headers["Content-Type"] = rng.choice(["text/plain", "application/x-thing"])
    if rng.random() < 0.2:
        headers["Content-Disposition"] = "attachment"
    if rng.random() < 0.3:
        headers["x-cos-storage-class"] = rng.choice(["STANDARD", "STANDARD_IA"])
    return headers


def random_copy_headers(rng: random.Random, etag: str) -> dict:
    """A copy's own headers: directive, metadata, storage class, one condition, and
    sometimes what only moto handles (an ACL, encryption, an unknown directive)."""
    headers = random_object_headers(rng)
    headers.pop("x-cos-storage-class", None)
    directive = rng.choice([None, "Copy", "Copy", "Replaced", "Replaced", "Replaced", "Bogus"])
    if directive:
        headers["x-cos-metadata-directive"] = directive
    storage = rng.choice([None, None, None, "STANDARD", "STANDARD_IA", "bogus"])
    if storage:
        headers["x-cos-storage-class"] = storage
    condition = rng.choice([None, None, None, None, ("If-Match", etag), ("If-Match", "f" * 32),
                            ("If-None-Match", etag), ("If-None-Match", "f" * 32),
                            ("If-Modified-Since", "Wed, 01 Jan 2031 00:00:00 GMT"),
                            ("If-Unmodified-Since", "Wed, 01 Jan 2001 00:00:00 GMT")])
    if condition:
        headers[f"x-cos-copy-source-{condition[0]}"] = f'"{condition[1]}"'
    extra = rng.choice([{}] * 8 + [{"x-cos-acl": "private"},
                                   {"x-cos-server-side-encryption": "AES256"}])
    return {**headers, **extra}


def copy_answer(emu, world: dict, fast: bool, target: tuple, source: str,
                headers: dict, style: str = "virtual", query: str = "") -> tuple:
    """The copy's answer (``in_both_worlds``); the source names its bucket by COS host
    (virtual) or by name (S3's form, path-style)."""
    role, name = target
    hosts = {r: cos_host(world[r], emu.region) if style == "virtual" else world[r]
             for r in ROLES}
    url, sent = address(emu, style, world[role], "/" + urllib.parse.quote(
        name.encode("utf-8"), safe="/"), {"x-cos-copy-source": source.format(**hosts),
                                          **headers})
    emu.app.fast_answers = fast
    try:
        response = Client(emu.app).put(url, headers=sent, query_string=query)
        TAKEN[fast and emu.app.requests[-1].fast] += fast
    finally:
        emu.app.fast_answers = True
    if response.status_code == 200:  # the time it says is the new object's
        made = backend().get_object(world[role], name)
        assert made.last_modified_ISO8601.encode() in response.data
    return in_both_worlds(world, response)


def in_both_worlds(world: dict, response) -> tuple:
    """An answer's status, headers and body with the world's bucket names, the random ids,
    the times and the version ids made the same in both worlds."""
    kept = sorted((key, "<v>" if key.lower() in VERSION_HEADERS else value)
                  for key, value in response.headers.items()
                  if key.lower() not in RANDOM_HEADERS | {"last-modified"})
    # (moto's own error body may come escaped, inside the COS one's Message)
    body = re.sub(rb"(RequestId|TraceId|LastModified)(>|&gt;)[^<&]*", rb"\1\2",
                  response.data)
    for r in ROLES:
        body = body.replace(world[r].encode(), r.encode())
    return response.status_code, kept, body


def object_state(bucket: str, name: str):
    """What a copy made: bytes, metadata (content headers included), storage class, ETag,
    encryption, ACL."""
    key = backend().get_object(bucket, name)
    if key is None:
        return None
    return (key.value, dict(key.metadata), key.storage_class, key.etag, key.encryption,
            key.acl and [(grant.permissions, [(grantee.id, grantee.uri)
                                              for grantee in grant.grantees])
                         for grant in key.acl.grants], key.website_redirect_location,
            backend().tagger.list_tags_for_resource(key.arn),
            key.arn in backend().tagger.tags)


@pytest.mark.parametrize("style", STYLES)
def test_copies_answered_here_equal_motos_over_random_copies(emu, style):
    """PUT Object - Copy answered from moto's backend (fast.py) or through moto's app:
    the same status, headers, body and resulting objects, over random keys (unicode, XML
    and URL specials), copies onto themselves, within and between buckets, into and out of
    a versioned bucket, directives Copy/Replaced/unknown, metadata, content types, storage
    classes, every copy condition, versionIds, missing sources, ACL and encryption
    headers, the AWS SDKs' x-id query. Two identical worlds of buckets, one copied in with
    fast answers, one without. (An equivalence test: it passes without fast copies too.)"""
    rng = random.Random(2124)
    TAKEN.clear()
    worlds = {True: copy_world(emu, rng, "fast"), False: copy_world(emu, rng, "moto")}
    names: dict[str, list[str]] = {role: [] for role in ROLES}
    for role in ROLES:
        for _ in range(10):
            name = random_name(rng)
            body, headers = name.encode() * rng.randint(0, 3), random_object_headers(rng)
            for world in worlds.values():
                put(emu, world[role], name, body, headers)
            names[role].append(name)
    statuses: Counter = Counter()
    for case in range(900):  # the versioned bucket, left to moto, less often
        source_role, target_role = rng.choices(ROLES, (5, 4, 1), k=2)
        source_name = rng.choice(names[source_role]) if rng.random() < 0.93 \
            else random_name(rng)
        target_name = source_name if source_role == target_role and rng.random() < 0.5 \
            else rng.choice([*names[target_role], random_name(rng)])
        current = backend().get_object(worlds[True][source_role], source_name)
        headers = random_copy_headers(rng, current.etag.strip('"') if current else "0" * 32)
        source = f"{{{source_role}}}/" + urllib.parse.quote(
            source_name.encode("utf-8"), safe="/-_.~").replace("{", "%7B").replace("}", "%7D")
        source += rng.choice([""] * 12 + ["?versionId=null", "?versionId=bogus"])
        query = rng.choice(OPERATION_QUERIES["CopyObject"])
        fast, moto = (copy_answer(emu, worlds[flag], flag, (target_role, target_name),
                                  source, headers, style, query) for flag in (True, False))
        assert fast == moto, (case, source_role, source_name, target_name, headers)
        states = [object_state(worlds[flag][target_role], target_name) for flag in worlds]
        assert states[0] == states[1], (case, target_name, headers)
        statuses[fast[0]] += 1
        if fast[0] == 200 and target_name not in names[target_role]:
            names[target_role].append(target_name)
    for role in ROLES:
        for name in names[role]:
            assert object_state(worlds[True][role], name) == \
                object_state(worlds[False][role], name), (role, name)
    assert statuses[200] > 150 and {400, 404, 412} <= set(statuses), statuses
    assert TAKEN[True] > 80, TAKEN  # answered here, not only equal


def test_plain_copies_are_answered_without_motos_app(emu):
    """The copies lftp's MFMT and a rename send (onto itself with Replaced, to another key
    with Copy, pinned with x-cos-copy-source-If-Match) are answered from moto's backend."""
    cos = sdk_client(emu)
    cos.put_object(Bucket=BUCKET, Key="plain/é a", Body=b"abc",
                   Metadata={"x-cos-meta-a": "1"})
    etag = cos.head_object(Bucket=BUCKET, Key="plain/é a")["ETag"]
    for target, headers in (  # as the shim hands them on: x-amz-*, S3's directive and source
            ("plain/é a", {"x-amz-metadata-directive": "REPLACE", "x-amz-meta-b": "2",
                           "x-amz-copy-source-If-Match": etag}),
            ("plain/other", {"x-amz-metadata-directive": "COPY"})):
        environ = EnvironBuilder(
            "/" + urllib.parse.quote(target.encode("utf-8")), method="PUT", headers={
                "Host": cos_host(BUCKET, emu.region), "Authorization": AUTH,
                "x-amz-copy-source": f"{BUCKET}/plain/%C3%A9%20a", **headers}).get_environ()
        made = fast_answer(environ)
        assert made is not None and made[0] == "200 OK", target
    assert cos.head_object(Bucket=BUCKET, Key="plain/é a")["x-cos-meta-b"] == "2"
    assert cos.get_object(Bucket=BUCKET, Key="plain/other")["Body"].get_raw_stream() \
        .read() == b"abc"


def random_put_headers(rng: random.Random, body: bytes) -> dict:
    """A PUT Object's headers: metadata, content headers, a storage class, Content-MD5
    right or wrong, x-cos-forbid-overwrite, and sometimes what only moto handles (an ACL,
    tagging, encryption, a condition, a form body, a storage class COS has and S3 not)."""
    headers = random_object_headers(rng)
    for name, values in (("Cache-Control", ["no-cache"]), ("Content-Encoding", ["gzip"]),
                         ("Expires", ["Wed, 01 Jan 2031 00:00:00 GMT"]),
                         ("Content-Language", ["zh"])):
        if rng.random() < 0.1:
            headers[name] = rng.choice(values)
    digest = rng.choice([None, None, body, body, b"other"])
    if digest is not None:
        headers["Content-MD5"] = base64.b64encode(hashlib.md5(digest).digest()).decode()
    forbid = rng.choice([None, None, "true", "true", "TRUE", "false"])
    if forbid:
        headers["x-cos-forbid-overwrite"] = forbid
    extra = rng.choice([{}] * 20 + [
        {"x-cos-acl": "private"}, {"x-cos-tagging": "a=1"},
        {"x-cos-server-side-encryption": "AES256"}, {"If-None-Match": "*"},
        {"x-cos-storage-class": "MAZ_STANDARD"},
        {"Content-Type": "application/x-www-form-urlencoded"},
        {"x-cos-website-redirect-location": "/elsewhere"}])
    return {**headers, **extra}


def put_answer(emu, world: dict, fast: bool, role: str, name: str, body: bytes,
               headers: dict, style: str = "virtual", query: str = "") -> tuple:
    """The PUT's answer and then a GET's of the key, each ``in_both_worlds``."""
    path = "/" + urllib.parse.quote(name.encode("utf-8"), safe="/")
    url, sent = address(emu, style, world[role], path, headers)
    emu.app.fast_answers = fast
    try:
        response = Client(emu.app).put(url, data=body, headers=sent, query_string=query)
        TAKEN[fast and emu.app.requests[-1].fast] += fast
    finally:
        emu.app.fast_answers = True
    url, sent = address(emu, style, world[role], path)
    return in_both_worlds(world, response), in_both_worlds(world, Client(emu.app).get(
        url, headers=sent))


@pytest.mark.parametrize("style", STYLES)
def test_puts_answered_here_equal_motos_over_random_puts(emu, style):
    """PUT Object answered from moto's backend (fast.py) or through moto's app: the same
    status, headers and body, the same object read back and the same object in moto,
    over random keys (unicode, spaces, XML and URL specials), bodies of 0..64 KiB, with
    and without metadata and content headers, storage classes, Content-MD5 right and
    wrong, x-cos-forbid-overwrite on new and existing keys, into a plain and a versioned
    bucket, and what only moto answers (ACL, tagging, encryption headers, a condition, a
    form body), the AWS SDKs' x-id query and signing headers (path-style). Two identical
    worlds of buckets, one written with fast answers, one without."""
    rng, worlds, names, statuses = two_worlds(emu, 2125, "put")
    for case in range(600):
        role = rng.choices(ROLES, (6, 3, 1))[0]
        name = rng.choice(names[role]) if names[role] and rng.random() < 0.5 \
            else random_name(rng)
        body = rng.randbytes(rng.choice([0, rng.randint(1, 99), rng.randint(0, 64 * 1024)]))
        headers = random_put_headers(rng, body)
        if style == "path" and rng.random() < 0.5:  # what an AWS SDK signs over http
            headers["x-amz-content-sha256"] = hashlib.sha256(body).hexdigest()
        query = rng.choice(OPERATION_QUERIES["PutObject"])
        fast, moto = (put_answer(emu, worlds[flag], flag, role, name, body, headers, style,
                                 query) for flag in (True, False))
        assert fast == moto, (case, role, name, len(body), headers)
        states = [object_state(worlds[flag][role], name) for flag in worlds]
        assert states[0] == states[1], (case, name, headers)
        statuses[fast[0][0]] += 1
        if fast[0][0] == 200:  # (moto stores a form body's fields, not the body)
            assert states[0][0] == body or "form" in headers.get("Content-Type", "")
            if name not in names[role]:
                names[role].append(name)
    # (x-cos-forbid-overwrite is the shim's, checked for the COS host only: 409 there)
    assert statuses[200] > 300 and {400, 409 if style == "virtual" else 400} <= \
        set(statuses), statuses
    assert TAKEN[True] > 120, TAKEN  # answered here, not only equal


def test_plain_puts_are_answered_without_motos_app(emu):
    """The PUTs the gateway sends for a new small file (metadata, Content-MD5,
    x-cos-forbid-overwrite, a storage class, a key with unicode and a space) are answered
    from moto's backend."""
    cos = sdk_client(emu)
    body = b"small file"
    environ = EnvironBuilder(  # as the shim hands it on: x-amz-*, its body in a buffer
        "/" + urllib.parse.quote("put/é a".encode()), method="PUT", data=body,
        headers={"Host": cos_host(BUCKET, emu.region), "Authorization": AUTH,
                 "Content-MD5": base64.b64encode(hashlib.md5(body).digest()).decode(),
                 "x-amz-meta-mtime": "1600000000", "x-amz-forbid-overwrite": "true",
                 "x-amz-storage-class": "STANDARD_IA"}).get_environ()
    environ["wsgi.input"] = io.BytesIO(body)
    made = fast_answer(environ)
    assert made is not None and made[0] == "200 OK"
    assert dict(made[1])["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    head = cos.head_object(Bucket=BUCKET, Key="put/é a")
    assert (head["x-cos-meta-mtime"], head["x-cos-storage-class"]) == \
        ("1600000000", "STANDARD_IA")
    assert cos.get_object(Bucket=BUCKET, Key="put/é a")["Body"].get_raw_stream() \
        .read() == body


# Range headers moto answers 206, 200 (whole) or 416, or fails on.
RANGES = ["bytes=0-0", "bytes=1-", "bytes=-3", "bytes=-0", "bytes=-20", "bytes=2-1",
          "bytes=0-100", "bytes=20-", "bytes=0-1,3-4", "bytes=x-y", "bytes=1-2-3", "bytes=-",
          "items=0-1", ""]


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("versioned", [False, True], ids=["plain", "versioned"])
def test_gets_answered_here_equal_motos_over_random_buckets(emu, versioned, style):
    """GET Object of random keys (some put straight into moto, with metadata, content
    headers, a storage class, encryption; overwritten, deleted: a 404 body, a delete
    marker), whole or with a random Range (suffixes, open ends, past the end, several,
    unreadable: moto's 206, 200 and 416), in a plain and a versioned bucket: the same
    status, headers and bytes with and without fast answers, and a plain bucket's current
    objects answered here but for moto's 416."""
    rng = random.Random(61 + versioned)
    bucket = new_bucket(emu, "get", versioned)
    names: list[str] = []
    checked, taken, statuses = 0, Counter(), Counter()
    for _ in range(8):
        fill(emu, rng, bucket, names, versioned)
        for name in [*rng.sample(names, k=min(len(names), 20)), random_name(rng)]:
            path = "/" + urllib.parse.quote(name.encode("utf-8"), safe="/")
            wanted = rng.choice([None, None, *RANGES, f"bytes={rng.randint(0, 9)}-"
                                 f"{rng.choice(['', rng.randint(0, 12)])}"])
            fast, moto = both(emu, "GET", bucket, path, style=style, taken=taken,
                              headers=None if wanted is None else {"Range": wanted})
            assert fast == moto, (name, wanted)
            statuses[fast[0]] += 1
            checked += 1
    assert statuses["200 OK"] > checked / 4 and statuses["206 PARTIAL CONTENT"] and \
        statuses["416 REQUESTED RANGE NOT SATISFIABLE"] and statuses["404 NOT FOUND"], statuses
    if versioned:  # every object has a version: moto's
        assert not taken[True], taken
    else:
        assert taken[True] == statuses["200 OK"] + statuses["206 PARTIAL CONTENT"], taken


def test_gets_the_fast_answers_do_not_cover_are_motos(emu):
    """A GET with a condition, a query (a version, a part, a response header override),
    checksum mode or an Origin, and a GET of an archived object, go to moto: the same
    answers with and without fast answers, and moto's verdicts are COS's (206, 304,
    412)."""
    cos = sdk_client(emu)
    cos.put_object(Bucket=BUCKET, Key="gcover/a", Body=b"abcdef",
                   Metadata={"x-cos-meta-mtime": "1600000000"})
    backend().put_object(BUCKET, "gcover/cold", b"z", storage="GLACIER")  # (COS: ARCHIVE)
    etag = cos.head_object(Bucket=BUCKET, Key="gcover/a")["ETag"]
    statuses = {}
    for query, headers in (
            ("", {"Range": "bytes=1-2"}), ("", {"Range": "bytes=9-"}),
            ("", {"If-Match": '"0"', "Range": "bytes=1-2"}),
            ("", {"If-Match": etag}), ("", {"If-Match": '"0"'}),
            ("", {"If-None-Match": etag}), ("", {"If-None-Match": '"0"'}),
            ("", {"If-Modified-Since": "Wed, 01 Jan 2031 00:00:00 GMT"}),
            ("", {"If-Unmodified-Since": "Wed, 01 Jan 2020 00:00:00 GMT"}),
            ("", {"x-cos-checksum-mode": "ENABLED"}), ("", {"Origin": "http://x"}),
            ("versionId=null", {}), ("partNumber=1", {}),
            ("response-content-type=text%2Fx", {}), ("acl", {})):
        fast, moto = both(emu, "GET", BUCKET, "/gcover/a", query, headers=headers)
        assert fast == moto, (query, headers)
        statuses[query or next(iter(headers.items()))] = fast[0].split()[0]
    assert statuses[("Range", "bytes=1-2")] == "206"
    assert statuses[("If-Match", '"0"')] == "412"
    assert statuses[("If-None-Match", etag)] == "304"
    fast, moto = both(emu, "GET", BUCKET, "/gcover/cold")
    assert fast == moto and fast[0].startswith("403"), fast  # InvalidObjectState


def test_plain_gets_are_answered_without_motos_app(emu):
    """The GET a RETR sends (and the SDK's and rclone's): a key with unicode and a space,
    metadata; answered from moto's backend with the object's bytes, ETag and headers."""
    cos = sdk_client(emu)
    body = os.urandom(70_000)
    cos.put_object(Bucket=BUCKET, Key="get/é a", Body=body, ContentType="text/x",
                   Metadata={"x-cos-meta-mtime": "1600000000"})
    before = len(emu.app.requests)
    response = cos.get_object(Bucket=BUCKET, Key="get/é a")
    assert response["Body"].get_raw_stream().read() == body
    assert (response["ETag"], response["Content-Length"], response["content-type"],
            response["x-cos-meta-mtime"]) == \
        (f'"{hashlib.md5(body).hexdigest()}"', str(len(body)), "text/x", "1600000000")
    assert [(entry.kind, entry.fast) for entry in list(emu.app.requests)[before:]] == \
        [("GET", True)]


def random_delete_body(rng: random.Random, names: list[str]) -> bytes:
    """A DELETE Multiple Objects body: keys there and not (some twice), Quiet or not, the
    AWS SDKs' namespace, whitespace; and one time in four what only moto answers (a
    VersionId, an ETag, an empty key, no object, a control byte XML cannot carry, XML cut
    short)."""
    space = rng.choice(["", "", "\n  "])
    keys = [rng.choice(names) if names and rng.random() < 0.6 else random_name(rng)
            for _ in range(rng.randint(1, 5))]
    objects = [f"<Key>{escape(name)}</Key>" for name in keys if "\x01" not in name] or \
        ["<Key>a</Key>"]
    objects += objects[:1] if rng.random() < 0.1 else []
    odd = rng.choice([None] * 18 + ["version", "etag", "empty", "short", "none", "control"])
    if odd in ("version", "etag", "empty"):
        spot = rng.randrange(len(objects))
        objects[spot] = {"version": objects[spot] + "<VersionId>null</VersionId>",
                         "etag": objects[spot] + '<ETag>"x"</ETag>',
                         "empty": rng.choice(["<Key></Key>", "<Key/>"])}[odd]
    elif odd == "control":
        objects.append("<Key>a\x01</Key>")
    elif odd == "none":
        objects = []
    quiet = rng.choice(["", "<Quiet>true</Quiet>", "<Quiet>false</Quiet>", "<Quiet>True</Quiet>"])
    xmlns = rng.choice(["", ' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'])
    head = rng.choice(["", '<?xml version="1.0" encoding="UTF-8"?>\n'])
    listed = "".join(f"{space}<Object>{space}{item}{space}</Object>" for item in objects)
    body = f"{head}<Delete{xmlns}>{quiet}{listed}{space}</Delete>".encode()
    return body[:rng.randint(1, len(body) - 1)] if odd == "short" else body


def delete_answer(emu, world: dict, fast: bool, role: str, method: str, path: str,
                  query: str, headers: dict, body: bytes, style: str) -> tuple:
    """A DELETE's or a POST ?delete's answer (``in_both_worlds``, versions made alike)."""
    url, sent = address(emu, style, world[role], path, headers)
    emu.app.fast_answers = fast
    try:
        response = Client(emu.app).open(url, method=method, query_string=query, headers=sent,
                                         data=body)
        TAKEN[fast and emu.app.requests[-1].fast] += fast
    finally:
        emu.app.fast_answers = True
    status, kept, answered = in_both_worlds(world, response)
    return status, kept, re.sub(rb"(VersionId>)[^<]*", rb"\1", answered)


def bucket_state(bucket: str) -> list:
    """Each key of ``bucket`` with the kinds and bytes of its versions (delete markers)."""
    keys = backend().get_bucket(bucket).keys
    return sorted((name, [(type(key).__name__, getattr(key, "value", None))
                          for key in keys.getlist(name)]) for name in keys)


@pytest.mark.parametrize("style", STYLES)
def test_deletes_answered_here_equal_motos_over_random_deletes(emu, style):
    """DELETE Object and DELETE Multiple Objects answered from moto's backend (fast.py) or
    through moto's app: the same answers (Quiet or Verbose, Content-MD5 right, wrong and
    missing) and the same keys left, in a plain and a versioned bucket, over random bodies
    and what only moto answers (versions, ETags, empty keys, malformed XML, a governance
    bypass, a condition). Two identical worlds, one with fast answers, one without."""
    rng, worlds, names, statuses = two_worlds(emu, 2127, "del")
    for case in range(400):
        role = rng.choices(ROLES, (6, 3, 1))[0]
        for _ in range(rng.randint(0, 3)):
            name = random_name(rng)
            for world in worlds.values():
                backend().put_object(world[role], name, name.encode())
            names[role].append(name)
        headers = rng.choice([{}] * 10 + [{"x-cos-bypass-governance-retention": "true"}])
        if rng.random() < 0.5:
            method, path = "DELETE", "/" + urllib.parse.quote(
                (rng.choice(names[role]) if names[role] else random_name(rng)).encode(),
                safe="/")
            query = rng.choice(["", "", "", "versionId=null", "x-id=DeleteObject"])
            body = b""
            if rng.random() < 0.1:
                headers["If-Match"] = '"x"'
        else:
            method, path, body = "POST", "/", random_delete_body(rng, names[role])
            query = rng.choice(["delete", "delete", "delete=", "delete&x-id=DeleteObjects",
                                "delete&delete", "delete&versionId=null"])
            digest = base64.b64encode(hashlib.md5(body).digest()).decode()
            md5 = rng.choice([digest] * 18 + [None, digest[::-1]])
            headers = {**headers, "Content-Type": "application/xml",
                       **({"Content-MD5": md5} if md5 else {})}
        fast, moto = (delete_answer(emu, worlds[flag], flag, role, method, path, query,
                                    headers, body, style) for flag in (True, False))
        assert fast == moto, (case, role, method, path, query, headers, body)
        assert bucket_state(worlds[True][role]) == bucket_state(worlds[False][role]), case
        statuses[fast[0]] += 1
    assert statuses[200] > 80 and statuses[204] > 80 and statuses[400] > 5, statuses
    assert TAKEN[True] > 200, TAKEN  # answered here, not only equal


def test_plain_deletes_are_answered_without_motos_app(emu, tmp_path):
    """The gateway's deletes (the SDK's DELETE Multiple Objects in Quiet mode, its DELETE
    Object) and rclone's (path-style DELETE Object, with its x-id) are answered from moto's
    backend, and delete what they name: both sides of a bench row alike."""
    cos = sdk_client(emu)
    for name in ("del/é a", "del/b", "del/c"):
        cos.put_object(Bucket=BUCKET, Key=name, Body=b"x")
    first = len(emu.app.requests)
    result = cos.delete_objects(Bucket=BUCKET, Delete={
        "Object": [{"Key": "del/é a"}, {"Key": "del/missing"}], "Quiet": "true"})
    assert not result.get("Deleted") and not result.get("Error")
    cos.delete_object(Bucket=BUCKET, Key="del/b")
    rclone = shutil.which("rclone", path=os.path.dirname(sys.executable)) or require("rclone")
    done = subprocess.run(
        [rclone, "deletefile", f":s3:{BUCKET}/del/c", "--s3-provider", "Other",
         "--s3-endpoint", f"http://127.0.0.1:{emu.port}", "--s3-access-key-id", "x",
         "--s3-secret-access-key", "y"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "RCLONE_CONFIG": os.devnull})
    assert done.returncode == 0, done.stderr
    assert [backend().get_object(BUCKET, name) for name in ("del/é a", "del/b", "del/c")] == \
        [None] * 3
    deletes = [(entry.kind, entry.target, entry.fast) for entry in emu.app.requests
               if entry.kind in ("POST", "DELETE")][-3:]
    assert len(emu.app.requests) > first and deletes == [
        ("POST", "", True), ("DELETE", "del/b", True), ("DELETE", "del/c", True)], deletes


def test_an_objects_metadata_is_what_moto_reads_of_the_same_headers():
    """The metadata and content headers a PUT or a metadata-replacing copy answered here
    stores (``fast.object_metadata``, which reads only the headers that can count) are
    what moto's ``metadata_from_headers`` reads through werkzeug's ``EnvironHeaders``: the
    same names, values and order, over random environs (empty Content-Type, Content-Type
    also sent as HTTP_CONTENT_TYPE, metadata names with dots, an empty one, checksum and
    content headers, headers moto keeps nothing of)."""
    rng = random.Random(2107)
    names = ["HTTP_X_AMZ_META_MTIME", "HTTP_X_AMZ_META_", "HTTP_X_AMZ_META_A.B",
             "HTTP_X_AMZ_META_\xe9", "CONTENT_TYPE", "HTTP_CONTENT_TYPE", "CONTENT_LENGTH",
             "HTTP_CONTENT_LENGTH", "HTTP_CONTENT_MD5", "HTTP_CACHE_CONTROL", "HTTP_EXPIRES",
             "HTTP_CONTENT_DISPOSITION", "HTTP_CONTENT_ENCODING", "HTTP_CONTENT_LANGUAGE",
             "HTTP_X_ROBOTS_TAG", "HTTP_X_AMZ_CHECKSUM_ALGORITHM", "HTTP_X_AMZ_CONTENT_SHA256",
             "HTTP_HOST", "HTTP_AUTHORIZATION", "HTTP_X_AMZ_STORAGE_CLASS",
             "HTTP_X_AMZ_METADATA_DIRECTIVE", "REQUEST_METHOD", "PATH_INFO"]
    for _ in range(3000):
        environ = {name: rng.choice(["", "v", "a b", "1"])
                   for name in rng.sample(names, rng.randint(0, len(names)))}
        assert list(object_metadata(environ).items()) == \
            list(metadata_from_headers(EnvironHeaders(environ)).items()), environ
