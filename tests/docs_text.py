"""Reading the project's Markdown the way a reader does: its code blocks, the commands and
options they name, and its links, so tests can hold the docs to the code."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
from dataclasses import dataclass

from cosftp_prefork.config.options import SETTINGS
from cosftp_prefork.config.values import section_kind
from cosftp_prefork.server.cli import build_parser

from .server_proc import ROOT

_FENCE_RE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
_INLINE_RE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
_OPTION_LINE_RE = re.compile(r"^\s*#?\s*([a-z][a-z0-9_]*)\s*=(?!=)")
_SECTION_RE = re.compile(r"^\s*#?\s*\[([A-Za-z0-9_]+)\]\s*$")
_LINK_RE = re.compile(r"\]\(([^)\s]+)\)")
_FILE_RE = re.compile(r"(?<![\w/.-])(?:\./)?((?:scripts|conf|docs)/[\w.-]*\w)")
# Files a reader creates: named in the docs, not in the repository.
READERS_FILES = {"conf/vsftpd.conf"}
# Where a shell command ends: another command, a pipe, a redirection, a comment.
_SHELL_END_RE = re.compile(r"\s*(?:&&|\|\||\||;|2?>|\s#)")


@dataclass(frozen=True)
class Block:
    language: str
    text: str


def read(name: str) -> str:
    with open(os.path.join(ROOT, name), encoding="utf-8") as handle:
        return handle.read()


def blocks(markdown: str) -> list[Block]:
    """The fenced code blocks of ``markdown``, with their info string's language."""
    return [Block(m.group(1), m.group(2)) for m in _FENCE_RE.finditer(markdown)]


def block_after(markdown: str, marker: str) -> Block:
    """The first fenced block after the line holding ``marker``."""
    start = markdown.index(marker)
    return blocks(markdown[start:])[0]


def code(markdown: str, languages: tuple[str, ...] = ()) -> list[str]:
    """Every piece of code a reader might copy: inline code spans and fenced blocks (only
    those of ``languages``, if given)."""
    fenced = [block.text for block in blocks(markdown)
              if not languages or block.language in languages]
    prose = _FENCE_RE.sub("", markdown)
    return fenced + _INLINE_RE.findall(prose)


def options(ini_text: str) -> list[tuple[str, str]]:
    """``(section, option)`` of every ``option =`` line of an INI text, commented out or
    not, with the settings table's name of the section (``None`` before any header)."""
    section, found = None, []
    for line in ini_text.splitlines():
        header = _SECTION_RE.match(line)
        if header:
            section = section_kind(header.group(1))
            continue
        option = _OPTION_LINE_RE.match(line)
        if option:
            found.append((section, option.group(1)))
    return found


def unknown_options(ini_text: str) -> list[str]:
    """``[SECTION] option`` of every ``option =`` line of an INI text that the settings
    table does not have in that section."""
    known = {(s.section, s.name) for s in SETTINGS}
    return [f"[{section}] {name}" for section, name in options(ini_text)
            if (section, name) not in known]


SHELL = ("sh", "bash", "console")


def cosftpctl_lines(markdown: str) -> list[str]:
    """Every ``cosftpctl ...`` command in the shell code of ``markdown``."""
    return [line for piece in code(markdown, SHELL) for line in cosftpctl_commands(piece)]


def cosftpctl_commands(text: str) -> list[str]:
    """What follows each ``cosftpctl`` of ``text``, up to the end of that shell command;
    a synopsis's optional part (``[-c FILE]``) is taken as given."""
    found = []
    for line in text.splitlines():
        for match in re.finditer(r"(?<![\w-])cosftpctl(?=\s|$)(.*)", line):
            rest = _SHELL_END_RE.split(match.group(1), maxsplit=1)[0]
            found.append(re.sub(r"\[(-[^\]]*)\]", r"\1", rest).strip())
    return found


def parse_problem(arguments: str) -> str:
    """'' if ``cosftpctl ARGUMENTS`` is a command line cosftpctl's parser accepts, else
    what the parser said."""
    if not arguments or arguments.startswith("COMMAND"):
        return ""  # the program named, or the generic "cosftpctl COMMAND --help"
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(stderr):
            build_parser().parse_args(shlex.split(arguments))
    except SystemExit as exc:
        said = stderr.getvalue().strip().splitlines()[-1] if exc.code else ""
        # Naming a command without its arguments (`cosftpctl unban`) is prose, not a typo.
        return "" if said.endswith(" required") else said
    return ""


def missing_files(markdown: str) -> list[str]:
    """``scripts/x``, ``conf/x`` and ``docs/x`` named in the code of ``markdown`` that the
    repository does not have (``conf/vsftpd.conf`` is the reader's)."""
    named = {m.group(1) for piece in code(markdown) for m in _FILE_RE.finditer(piece)}
    return sorted(path for path in named - READERS_FILES
                  if not os.path.exists(os.path.join(ROOT, path)))


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    headings = re.findall(r"^#{1,6}\s+(.+)$", _FENCE_RE.sub("", markdown), re.MULTILINE)
    found: set[str] = set()
    for heading in headings:
        base = anchor(heading)
        name, n = base, 0
        while name in found:
            n += 1
            name = f"{base}-{n}"
        found.add(name)
    return found


def broken_links(name: str) -> list[str]:
    """Relative links of the file ``name`` (from the repository root) whose file or
    heading does not exist."""
    markdown = read(name)
    broken = []
    for target in _LINK_RE.findall(_FENCE_RE.sub("", markdown)):
        if re.match(r"^[a-z]+:", target):
            continue  # https:, mailto:
        path, _, fragment = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(name), path)) if path else name
        exists = os.path.exists(os.path.join(ROOT, resolved))
        if not exists or (fragment and resolved.endswith(".md")
                          and fragment not in anchors(read(resolved))):
            broken.append(target)
    return broken
