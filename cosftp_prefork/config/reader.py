"""One section of the configuration read by the options table (``config.options``).

``Reader`` takes a parsed INI text (``configparser``) and gives, for a section, every option
its kind of section declares: the written value with ``${NAME}`` replaced from the
environment, parsed by its setting's parser, the default when it is empty or ``default``,
paths resolved against the file's base directory (``config.locations``). It collects the
warnings of the whole read; the modules that build the dataclasses (``config.accounts``,
``config.serverwide``, ``config.eventhooks``) and the partial readers (``config.locate``)
all read through it. Raises ``ConfigError``.
"""

from __future__ import annotations

import configparser
import re
from collections.abc import Mapping
from typing import Any, Optional

from ..errors import ConfigError
from .locations import base_dir, parse_path, resolve
from .model import SECRET_OPTIONS
from .options import BY_SECTION, REQUIRED, Setting
from .passwords import HashFormatError

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Reader:
    """Reads the settings of one file, collecting warnings; raises ``ConfigError``."""

    def __init__(self, parser: configparser.RawConfigParser, path: str,
                 environ: Mapping[str, str]) -> None:
        self.parser, self.path, self.environ = parser, path, environ
        self.base = base_dir(path)
        self.warnings: list[str] = []

    def error(self, problem: str, section: str, option: Optional[str] = None) -> ConfigError:
        """The ``ConfigError`` of ``problem`` at ``section`` (and ``option``) of this file,
        returned for the caller to raise."""
        return ConfigError(problem, self.path, section, option)

    def section(self, section: str, kind: str) -> dict[str, Any]:
        """Return ``{option: value}`` for every setting of ``kind`` in ``section``."""
        known = BY_SECTION[kind]
        # The section's text read once: a get() per setting cost 40 % of a 5,000-account
        # file's parse (a chain of the section and the defaults built for each of ~37).
        written = dict(self.parser.items(section, raw=True)) \
            if self.parser.has_section(section) else {}
        for option in written:
            if option not in known:
                self.warnings.append(f"{self.path} [{section}] {option}: unknown option, "
                                     "ignored")
        return {name: self.value(section, setting, written.get(name, ""))
                for name, setting in known.items()}

    def value(self, section: str, setting: Setting, written: str) -> Any:
        """The value of ``setting`` written ``written`` in ``section``: ``${NAME}`` replaced,
        parsed, its default when empty or ``default``, a path resolved against the file's
        base directory. Raises ``ConfigError``."""
        value = self._parsed(section, setting, written)
        if setting.parse is parse_path and value is not None:
            return resolve(value, self.base)  # never the working directory's
        return value

    def _parsed(self, section: str, setting: Setting, written: str) -> Any:
        raw = self._substitute(written.strip(), section, setting.name)
        if raw == "" or raw.lower() == "default":
            if setting.default is REQUIRED:
                raise self.error("is required", section, setting.name)
            return setting.default
        try:
            return setting.parse(raw)
        except ValueError as exc:
            problem = str(exc)
            if setting.name in SECRET_OPTIONS and not isinstance(exc, HashFormatError):
                problem = "has an invalid value"
            raise self.error(problem, section, setting.name) from None

    def _substitute(self, raw: str, section: str, option: str) -> str:
        def replace(match: re.Match) -> str:
            name = match.group(1)
            if name not in self.environ:
                raise self.error(f"environment variable {name} is not set", section, option)
            return self.environ[name]
        return _ENV_RE.sub(replace, raw)
