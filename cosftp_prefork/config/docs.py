"""Generate the option lists of ``docs/configuration.md`` from the settings table.

The reference cannot drift from the code: each section's list in that file sits between
``<!-- BEGIN GENERATED: [SECTION] -->`` and ``<!-- END GENERATED -->`` and is rendered from
``SETTINGS`` (name, what it accepts, default, help); the prose around the lists is written by
hand. ``tests/test_docs.py`` fails when the committed file differs from what this renders.

    python -m cosftp_prefork.config.docs            # rewrite docs/configuration.md
    python -m cosftp_prefork.config.docs --check    # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Optional

from .options import REQUIRED, SETTINGS, Setting
from .values import size_in_words

DEFAULT_FILE = os.path.join("docs", "configuration.md")
BEGIN = "<!-- BEGIN GENERATED: [{}] -->"
END = "<!-- END GENERATED -->"
_BLOCK_RE = re.compile(r"<!-- BEGIN GENERATED: \[([A-Z_]+)\] -->\n.*?<!-- END GENERATED -->",
                       re.DOTALL)
REGENERATE = "python -m cosftp_prefork.config.docs (or scripts/gen-docs)"


class DocsError(Exception):
    """The file's generated blocks do not match the settings table's sections."""


def sections() -> list[str]:
    """The table's sections in the order they first appear (``COS_ACCOUNT`` stands for
    every ``[COS_ACCOUNT_N]``)."""
    return list(dict.fromkeys(setting.section for setting in SETTINGS))


def default_in_words(setting: Setting) -> str:
    """The default as the reference shows it: a value as it is written in the file."""
    if setting.default is REQUIRED:
        return "required"
    if setting.shown_default is not None:
        return setting.shown_default
    value = setting.default
    if value is None or value in ("", ()):
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple):
        return f"`{','.join(map(str, value))}`"
    if isinstance(value, int) and setting.accepts.startswith("bytes"):
        return f"`{value}` ({size_in_words(value)})"
    return f"`{value}`"


def _sentence(text: str) -> str:
    return text if text.endswith(".") else f"{text}."


def render_setting(setting: Setting) -> str:
    default = default_in_words(setting)
    lead = "Required" if default == "required" else f"Default {default}"
    accepts = f"; {setting.accepts}" if setting.accepts else ""
    return f"- **`{setting.name}`**: {_sentence(setting.help)}\n  {lead}{accepts}.\n"


def render_section(section: str) -> str:
    """The generated block of ``section``, markers included."""
    body = "".join(render_setting(s) for s in SETTINGS if s.section == section)
    return f"{BEGIN.format(section)}\n{body}{END}"


def regenerate(text: str) -> str:
    """``text`` with every generated block rendered anew; raises ``DocsError`` if a block
    names no section of the table or a section has no block (its options would be
    missing)."""
    known = sections()
    found = _BLOCK_RE.findall(text)
    unknown = [name for name in found if name not in known]
    missing = [name for name in known if name not in found]
    twice = sorted({name for name in found if found.count(name) > 1})
    if unknown or missing or twice:
        raise DocsError(f"generated blocks: unknown {unknown}, missing {missing}, repeated "
                        f"{twice}; add a line {BEGIN.format('SECTION')} and {END} for each "
                        f"section of the settings table ({', '.join(known)})")
    return _BLOCK_RE.sub(lambda match: render_section(match.group(1)), text)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cosftp_prefork.config.docs",
        description="Render the option lists of the configuration reference from the "
                    "settings table (cosftp_prefork/config/options.py).")
    parser.add_argument("file", nargs="?", default=DEFAULT_FILE,
                        help=f"the reference to rewrite (default: {DEFAULT_FILE})")
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if the file is out of date")
    args = parser.parse_args(argv)
    try:
        with open(args.file, encoding="utf-8") as handle:
            text = handle.read()
        fresh = regenerate(text)
    except (OSError, DocsError) as exc:
        print(f"{parser.prog}: {args.file}: {exc}", file=sys.stderr)
        return 2
    if fresh == text:
        return 0
    if args.check:
        print(f"{args.file} differs from the settings table in "
              f"cosftp_prefork/config/options.py; run {REGENERATE}", file=sys.stderr)
        return 1
    with open(args.file, "w", encoding="utf-8") as handle:
        handle.write(fresh)
    print(f"{args.file}: option lists rewritten from the settings table")
    return 0


if __name__ == "__main__":
    sys.exit(main())
