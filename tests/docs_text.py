"""Reading the project's docs the way a reader does: the options a configuration text
names and the cosftpctl commands a text shows, so tests can hold the docs to the code."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex

from cosftp_prefork.config.settings import ACCOUNT_PREFIX, SETTINGS
from cosftp_prefork.server.cli import build_parser

from .server_proc import ROOT

_OPTION_LINE_RE = re.compile(r"^\s*#?\s*([a-z][a-z0-9_]*)\s*=(?!=)")
_SECTION_RE = re.compile(r"^\s*#?\s*\[([A-Za-z0-9_]+)\]\s*$")
# Where a shell command ends: another command, a pipe, a redirection, a comment.
_SHELL_END_RE = re.compile(r"\s*(?:&&|\|\||\||;|2?>|\s#)")


def read(name: str) -> str:
    with open(os.path.join(ROOT, name), encoding="utf-8") as handle:
        return handle.read()


def section_kind(section: str) -> str:
    """The settings table's section for a section of the file (``COS_ACCOUNT_0`` ->
    ``COS_ACCOUNT``)."""
    return ACCOUNT_PREFIX if re.match(r"^COS_ACCOUNT(_.*)?$", section) else section


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
        if exc.code:
            return stderr.getvalue().strip().splitlines()[-1]
    return ""
