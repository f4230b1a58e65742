"""The event hook and pre-check options of a scope, read into ``config.hooks``' dataclasses.

A scope is the server (``[HOOKS]``) or one account (the same keys in its
``[COS_ACCOUNT_N]`` section, or in an auth hook's answer): ``scope_hooks`` makes its
``ScopeHooks`` (an account's taking the server's secret and timeout unless it sets its own),
``read_hooks`` the server's ``HooksConfig`` with its spool. Raises ``ConfigError``.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from typing import Any, Optional

from .hooks import COMMAND, HTTP, HooksConfig, HookTarget, PreCheck, ScopeHooks
from .model import HOOKS_SECTION, MIB
from .reader import Reader


def scope_hooks(reader: Reader, values: dict[str, Any], section: str,
                server: Optional[Mapping[str, Any]] = None) -> ScopeHooks:
    """The hooks ``values`` of one section configure; an account's (``server`` given) take
    the server's secret and timeout unless they set their own."""
    inherited = server or {}
    secret = values["event_hook_secret"] or inherited.get("event_hook_secret") or ""
    timeout = values["event_hook_timeout"] or inherited.get("event_hook_timeout") or 10
    urls = [name for name in ("event_hook_url", "pre_upload_hook_url", "pre_delete_hook_url")
            if values[name]]
    if urls and not secret:
        raise reader.error(f"is required with {urls[0]}: receivers verify the "
                           "X-Cosftp-Signature header it makes", section, "event_hook_secret")
    chosen = {"events": values["event_hook_events"] or HookTarget.events,
              "paths": values["event_hook_paths"] or (), "timeout": timeout, "scope": section}
    targets = []
    if values["event_hook_url"]:
        targets.append(HookTarget(HTTP, values["event_hook_url"], secret, **chosen))
    if values["event_hook_command"]:
        argv = values["event_hook_command"]
        targets.append(HookTarget(COMMAND, shlex.join(argv), "", argv=argv, **chosen))
    if not targets and (values["event_hook_events"] or values["event_hook_paths"]):
        reader.warnings.append(f"{reader.path} [{section}] event_hook_events/event_hook_paths: "
                               "no event_hook_url or event_hook_command to send to, ignored")

    def check(name: str) -> Optional[PreCheck]:
        return PreCheck(values[name], secret) if values[name] else None
    return ScopeHooks(tuple(targets), check("pre_upload_hook_url"), check("pre_delete_hook_url"))


def read_hooks(reader: Reader, values: dict[str, Any], log_dir: str) -> HooksConfig:
    """Return the server's ``HooksConfig``: ``[HOOKS]``'s ``values`` and the spool, by
    default ``<log_dir>/events``. Raises ``ConfigError``."""
    return HooksConfig(
        server=scope_hooks(reader, values, HOOKS_SECTION),
        spool_dir=values["event_spool_dir"] or os.path.join(log_dir, "events"),
        spool_max=values["event_spool_max_mib"] * MIB, spool_full=values["event_spool_full"],
        retry_max_age=values["hook_retry_max_age"], pre_hook_timeout=values["pre_hook_timeout"],
        pre_hook_failure=values["pre_hook_failure"])
