"""Sizes and rates as the configuration file writes them: ``500M``, ``10G``, ``256K``.

One parser for every option counted in bytes that a person sets by eye (``quota_size``, the
``max_*_rate`` options in bytes per second): K, M, G and T are 1024-based here, as vsftpd's
and SFTPGo's users expect of a disk or a line; ``KB``, ``KiB`` and lower case mean the same.
"""

from __future__ import annotations

import re

_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}
_SIZE_RE = re.compile(r"([0-9]+)\s*([KMGT]?)(I?B)?")
SIZE_WORDS = "bytes, with an optional K, M, G or T (1024-based: 10G is 10 x 1024^3); 0: none"


def parse_size(raw: str) -> int:
    """A size such as ``500M``: bytes, or K, M, G or T times 1024, 1024^2... Raises
    ``ValueError`` saying what is accepted."""
    match = _SIZE_RE.fullmatch(raw.strip().upper())
    if match is None or (match.group(3) and not match.group(2)):
        raise ValueError("must be a number of bytes with an optional K, M, G or T "
                         f"(1024-based), such as 500M or 10G, got {raw!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]
