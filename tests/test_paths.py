"""Unit tests for the pure FTP path <-> key mapping."""

from __future__ import annotations

import pytest

from cosftp_prefork.errors import InvalidPath
from cosftp_prefork.paths import (
    MAX_KEY_BYTES,
    child_name,
    dir_prefix,
    fits_as_directory,
    ftp_path_for_key,
    new_name_key,
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


@pytest.mark.parametrize("char", [chr(code) for code in (*range(1, 32), 127)])
def test_new_names_refuse_every_control_character(char):
    with pytest.raises(InvalidPath, match=r"control|CR or LF"):
        new_name_key(f"/a{char}b")
    with pytest.raises(InvalidPath, match=r"control|CR or LF"):
        new_name_key(f"/d{char}/x")
    with pytest.raises(InvalidPath, match=r"control|CR or LF"):
        new_name_key(f"/d{char}", directory=True)


def test_a_new_key_of_a_bucket_may_not_start_with_a_backslash():
    """COS refuses such keys (Object Overview, 436/13324); under a prefix, or deeper, the
    name is an ordinary one."""
    with pytest.raises(InvalidPath, match="backslash"):
        new_name_key("/\\a")
    with pytest.raises(InvalidPath, match="backslash"):
        new_name_key("/\\d", directory=True)
    assert new_name_key("/\\a", at_bucket_root=False) == "\\a"
    assert new_name_key("/d/\\a") == "d/\\a"


def test_existing_names_with_control_characters_stay_addressable():
    assert object_key("/a\x01b") == "a\x01b"


def test_a_directory_marker_counts_its_slash():
    name = "/" + "d" * (MAX_KEY_BYTES - 1)
    assert new_name_key(name, directory=True) == name[1:] + "/"
    assert fits_as_directory(name)
    assert not fits_as_directory(name + "d")
    assert new_name_key(name + "d") == name[1:] + "d"  # as a file it fits
    with pytest.raises(InvalidPath, match="850"):
        new_name_key(name + "d", directory=True)
