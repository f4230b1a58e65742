"""Unit tests for the pure FTP path <-> key mapping."""

from __future__ import annotations

import pytest

from cosftp_prefork.errors import InvalidPath
from cosftp_prefork.paths import (
    MAX_KEY_BYTES,
    child_name,
    dir_prefix,
    ftp_path_for_key,
    object_key,
    parent_dir,
)


def test_object_key_strips_leading_slash():
    assert object_key("/a/b.txt") == "a/b.txt"
    assert object_key("/ä b/c d.txt") == "ä b/c d.txt"


def test_root_is_not_a_file():
    with pytest.raises(InvalidPath):
        object_key("/")


def test_dir_prefix():
    assert dir_prefix("/") == ""
    assert dir_prefix("/a") == "a/"
    assert dir_prefix("/a/b/") == "a/b/"


@pytest.mark.parametrize("bad", ["/a\x00b", "/a\nb", "/a\rb", "/a//b", "/a/../b", "/./a"])
def test_refuses_unsafe_components(bad):
    with pytest.raises(InvalidPath):
        object_key(bad)


def test_key_length_limit_counts_utf8_bytes():
    assert object_key("/" + "a" * MAX_KEY_BYTES)
    with pytest.raises(InvalidPath, match="850"):
        object_key("/" + "a" * (MAX_KEY_BYTES + 1))
    with pytest.raises(InvalidPath):
        object_key("/" + "文" * (MAX_KEY_BYTES // 3 + 1))


def test_names_and_parents():
    assert child_name("a/", "a/b.txt") == "b.txt"
    assert child_name("a/", "a/sub/") == "sub"
    assert ftp_path_for_key("a/b/") == "/a/b"
    assert parent_dir("/a/b") == "/a"
    assert parent_dir("/a") == "/"
