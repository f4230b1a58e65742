"""The pagination helper every COS listing goes through (pure logic: the listings themselves
are tested end to end in test_listings, test_resume and test_mtimes)."""

from __future__ import annotations

from cosftp_prefork.cos.pagination import marker_after, paginate

from .server_proc import wait_until

PAGES = {"": (["a", "b"], "b"), "b": (["c"], "c"), "c": (["d"], None)}


def test_marker_after_follows_next_marker_else_the_last_item():
    assert marker_after("false", "x", "y") is None
    assert marker_after(None, None, "y") is None
    assert marker_after("true", "x", "y") == "x"
    assert marker_after("True", "", "y") == "y"  # COS or moto sent no NextMarker
    assert marker_after("true", None, None) is None  # an empty page: nothing to go on from


def test_paginate_asks_for_each_page_when_wanted():
    asked: list[str] = []

    def fetch(marker: str) -> tuple[list[str], object]:
        asked.append(marker)
        return PAGES[marker]
    listed = paginate(fetch, lambda page: page[1], "")
    assert next(listed)[0] == ["a", "b"] and asked == [""]
    assert [page[0] for page in listed] == [["c"], ["d"]]
    assert asked == ["", "b", "c"]


def test_paginate_ahead_requests_the_next_page_while_the_caller_works():
    asked: list[str] = []

    def fetch(marker: str) -> tuple[list[str], object]:
        asked.append(marker)  # on the listing's own thread
        return PAGES[marker]
    listed = paginate(fetch, lambda page: page[1], "", ahead=True)
    assert next(listed)[0] == ["a", "b"]
    wait_until(lambda: asked == ["", "b"], what="the second page asked for ahead")
    assert [page[0] for page in listed] == [["c"], ["d"]]
    assert asked == ["", "b", "c"]
