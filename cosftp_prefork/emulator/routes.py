"""moto's S3 routes made to match a key of any characters, a newline included.

moto finds the handler of a request twice, and both times by regular expressions in which
``.`` stops at a newline: its Flask app's URL rules (``{0}/(?P<key_name>.+)``, through its
``RegexConverter``), then, for the operations it serializes from botocore's model
(InitiateMultipartUpload, CompleteMultipartUpload, ACLs, tagging, ...), its
``ServiceOperationRouter`` (``/{Bucket}/{Key+}``, through its ``GreedyLabelConverter``). A
key holding a newline after its first "/" then got Flask's HTML 404, or a 500, from every
request ``fast.py`` does not answer, where COS serves it as any other key (the SDK can name
such a key; FTP cannot). Both converters match it once their patterns let ``.`` match a
newline (``(?s:...)``), which changes nothing for any other path.

A key made of ``/`` alone (the path ``//``, ``///``, ...) has a route of its own: werkzeug's
routing strips the leading slashes of the path, so moto routed it as the bucket's ``/``
(a GET of the key ``/`` listed the bucket, a DELETE deleted the bucket, a PUT made one).
:func:`routed` gives moto such a request with a path its key route matches; moto reads the
key itself from the raw path (``RAW_URI``), as for every key.
"""

from __future__ import annotations

from typing import Any

import moto.moto_server.werkzeug_app
from moto.core import routing
from moto.moto_server.utilities import RegexConverter

from . import fast


def _dot_all(pattern: str) -> str:
    return pattern if pattern.startswith("(?s:") else f"(?s:{pattern})"


class _DotAllRegexConverter(RegexConverter):
    """moto's ``RegexConverter``, its pattern's ``.`` matching a newline too."""

    def __init__(self, url_map: Any, *items: Any) -> None:
        super().__init__(url_map, *items)
        self.regex = _dot_all(self.regex)


def install() -> None:
    """Make the routes of moto's apps and operation routers created from now on match keys
    holding a newline (once per process; the emulator creates its app after)."""
    moto.moto_server.werkzeug_app.RegexConverter = _DotAllRegexConverter  # type: ignore[misc]
    for converter in (routing.GreedyLabelConverter, routing.ImplicitGreedyLabelConverter):
        converter.regex = _dot_all(converter.regex)


def routed(environ: dict) -> dict:
    """The environ to give moto's app for this request: itself, or, for a key made of
    ``/`` alone named on the bucket's host, a copy whose ``PATH_INFO`` moto's key route
    matches (its ``RAW_URI``, which moto reads the key from, unchanged)."""
    path = environ.get("PATH_INFO", "")
    if len(path) < 2 or path.strip("/") or not fast.place(environ).bucket:
        return environ
    return {**environ, "PATH_INFO": "/%2F"}
