"""The OpenAPI 3.1 document of the admin API, served at ``/api/v1/openapi.json``.

Every response the API sends is described here (the tests validate each one they receive
against it with ``openapi-core``), errors included: ``{"error": "..."}``, with ``errors``
for a reload the configuration refused.
"""

from __future__ import annotations

import json
from typing import Any

from .. import __version__
from ..server.scoreboard import MASTER_STATES


def _null(kind: str, **more: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], **more}


def _object(properties: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"type": "object", "properties": properties,
            **({"required": list(properties)} if required else {})}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_INT, _NUM, _STR, _BOOL = ({"type": t} for t in ("integer", "number", "string", "boolean"))
# What the master logged for the last reload, kept up to 4 KiB, and how many more it logged.
_WARNINGS = {"warnings": {"type": "array", "items": _STR}, "warnings_not_shown": _INT}

SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {
        "error": _STR, "errors": {"type": "array", "items": _STR}}},
    "Status": _object({
        "master": _object({
            "pid": _INT,
            "state": {"enum": [*MASTER_STATES, "?"],
                      "description": "running, or stopping: new connections refused, "
                                     "transfers in flight end (a graceful stop lets them "
                                     "finish), then the server exits"},
            "generation": _INT, "started": _NUM, "uptime_seconds": _NUM,
            "workers": _INT, "config_path": _STR, "ftp_port": _INT,
            "implicit_tls_port": _null("integer"), "auth_tls": _BOOL,
            "rss_bytes": _null("integer")}),
        "reload": _object({"state": {"enum": ["none", "running", "ok", "failed"]},
                           "count": _INT, "errors": {"type": "array", "items": _STR},
                           **_WARNINGS}),
        "workers": {"type": "array", "items": _ref("Worker")},
        "logins": _object({"logged_in": _INT, "waiting": _INT}),
        "bans": _INT, "time": _NUM,
        "you": _object({"token": _STR, "writable": _BOOL})}),
    "Worker": _object({
        "pid": _INT, "index": _INT, "generation": _INT,
        "state": {"enum": ["free", "starting", "serving", "draining", "aborting", "?"]},
        "health": {"enum": ["ok", "late", "free", "starting", "draining", "aborting", "?"],
                   "description": "ok: serving, heartbeat fresh; late: serving, no "
                                  "heartbeat for 5 s; else its state"},
        "heartbeat_age_seconds": _null("number"), "sessions": _INT, "uploads": _INT,
        "downloads": _INT, "bytes_up": _INT, "bytes_down": _INT,
        "rss_bytes": _null("integer"), "rss_limit_bytes": _null("integer"),
        "fds": _null("integer"), "cpu_seconds": _null("number")}),
    "Session": _object({
        "id": {"type": "string", "pattern": "^[0-9]+$"}, "worker_pid": _INT, "client": _STR,
        "user": _null("string"), "logged_in": _BOOL, "command": _null("string"),
        "connected": _null("number"), "idle_seconds": _NUM,
        "transfer": {"oneOf": [{"type": "null"}, _ref("Transfer")]}}),
    "Transfer": _object({
        "direction": {"enum": ["upload", "download"]}, "in_flight": _BOOL, "file": _STR,
        "bytes": _INT, "expected_bytes": _null("integer", description=(
            "ALLO's size (upload), the object's size less the REST offset (download); "
            "null: not known")),
        "rate": {"type": "number", "description": "bytes/s over the last 5 s"}}),
    "Sessions": _object({"sessions": {"type": "array", "items": _ref("Session")}}),
    "Kicked": _object({"id": _STR, "closed": _BOOL}),
    "Ban": _object({
        "address": _STR, "banned": _BOOL, "failures": _INT,
        "banned_until": _null("integer"), "seconds_left": _null("integer"),
        "copy": _null("boolean", description=(
            "true: a copy of a ban made on another node of the cluster; false: this node's "
            "own (earned here, made through its admin API, restored from its bans file); "
            "null: not banned")),
        "allowlisted": _BOOL}),
    "Bans": _object({"bans": {"type": "array", "items": _ref("Ban")},
                     "max_login_failures": _INT, "login_failure_window": _INT,
                     "ban_time": _INT}),
    "NewBan": {"type": "object", "required": ["address"], "properties": {
        "address": _STR, "seconds": {"type": "integer", "minimum": 1}}},
    "Banned": _object({"address": _STR, "banned_until": _INT, "saved": _BOOL}),
    "Unbanned": _object({"address": _STR, "lifted": _BOOL, "failures_forgotten": _INT,
                         "message": _STR}),
    "Account": _object({
        "user": _STR, "section": _STR, "bucket": _STR,
        "prefix": _null("string", description="cos_prefix: the account's / (null: the "
                                              "bucket's root)"),
        "region": _null("string"),
        "endpoint": _null("string"), "home_dir": _STR,
        "authority": {"enum": ["R", "W", "RW"]}, "delete_enable": _BOOL, "anonymous": _BOOL,
        "tls_required": _BOOL, "ftp_encoding": _STR}),
    "Accounts": _object({"accounts": {"type": "array", "items": _ref("Account")}}),
    "Usage": _object({"used": _null("integer", description="null: no quota, or its home "
                                                            "not scanned yet"),
                      "limit": _null("integer", description="null: none")}),
    "Quotas": _object({
        "enabled": {"type": "boolean", "description": "some account or folder has a quota"},
        "usage_from": {"enum": ["cluster", "node"], "description": "cluster: Redis's figures "
                       "([CLUSTER], what every node reserves against); node: this node's"},
        "cluster_error": _null("string", description="why Redis could not be read (then "
                                                     "usage_from is node); null: it was"),
        "quotas": {"type": "array", "items": _object({
            "user": _STR, "unlimited": _BOOL, "size": _ref("Usage"), "files": _ref("Usage"),
            "reserved_bytes": _null("integer", description="held by uploads under way"),
            "scanned": _null("number", description="time of the home's last scan")})},
        "folders": {"type": "array", "description": "virtual folders with a quota, one per "
                    "bucket and prefix they are mounted at", "items": _object({
                        "folder": {"type": "string", "description": "[FOLDER_<name>]'s name"},
                        "bucket": _STR,
                        "prefix": _null("string", description="null: the bucket's root"),
                        "users": {"type": "array", "items": _STR,
                                  "description": "the accounts sharing its usage"},
                        "size": _ref("Usage"), "files": _ref("Usage"),
                        "reserved_bytes": _null("integer"),
                        "scanned": _null("number")})},
        "hook_homes": {"type": "array", "description": "homes an auth hook's answers gave a "
                       "quota (this node's answers; usage as usage_from says)",
                       "items": _object({
                           "bucket": _STR,
                           "prefix": _null("string", description="null: the bucket's root"),
                           "answered": {"type": "number",
                                        "description": "time of the latest answer, whose "
                                        "limits hold"},
                           "size": _ref("Usage"), "files": _ref("Usage"),
                           "reserved_bytes": _null("integer"),
                           "scanned": _null("number")})}}),
    "Events": _object({
        "enabled": _BOOL, "queued": _INT, "spool_bytes": _INT,
        "spool_limit_bytes": _null("integer"), "dead_letters": _INT,
        "oldest_queued_seconds": _null("number")}),
    # The warnings come with "ok" only: the master writes them with its verdict.
    "Reloaded": {**_object({"result": {"enum": ["ok", "running"]}, "generation": _INT,
                            **_WARNINGS}), "required": ["result", "generation"]},
}

_ERRORS = {
    400: "the body is not valid JSON", 401: "no token, or an invalid one",
    403: "a read-only token, a banned address, or a cross-site request",
    404: "no such resource or item", 409: "conflict (see the message)",
    413: "request body too large", 415: "a body not sent as application/json",
    422: "a value that cannot be used; a reload: the configuration's errors",
    429: "too many failed tokens: wait", 500: "the change failed (see the message)",
    503: "busy (token checks), the master did not answer, or the server is stopping",
}
_READ_ERRORS = (401, 403, 429, 503)
_WRITE_ERRORS = (400, 401, 403, 413, 415, 429, 503)


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": schema}}}


def _operation(summary: str, answers: dict[int, tuple[str, str]],
               errors: tuple[int, ...], **more: Any) -> dict[str, Any]:
    responses = {str(code): _json(_ref(schema), text) for code, (schema, text) in
                 answers.items()}
    responses.update({str(code): _json(_ref("Error"), _ERRORS[code]) for code in errors})
    return {"summary": summary, "responses": responses, **more}


def _path_parameter(name: str, description: str) -> list[dict[str, Any]]:
    return [{"name": name, "in": "path", "required": True, "description": description,
             "schema": _STR}]


def document() -> dict[str, Any]:
    """The OpenAPI document, as a dict."""
    read, write = _READ_ERRORS, _WRITE_ERRORS
    return {
        "openapi": "3.1.0",
        "info": {"title": "cosftp-prefork admin API", "version": __version__,
                 "description": "Status, sessions, bans, accounts, quotas, events and reload "
                                "of one cosftp-prefork server. Every call but this document "
                                "needs Authorization: Bearer <token> ([ADMIN] tokens); "
                                "state-changing calls need an rw token and are written to "
                                "the audit log."},
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "components": {"schemas": SCHEMAS, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/openapi.json": {"get": {"summary": "this document", "security": [],
                                      "responses": {"200": {
                                          "description": "the OpenAPI document",
                                          "content": {"application/json": {
                                              "schema": {"type": "object"}}}}}}},
            "/status": {"get": _operation("master, workers, reload state", {
                200: ("Status", "the server's status")}, read)},
            "/sessions": {"get": _operation("live sessions and their transfers", {
                200: ("Sessions", "the sessions")}, read)},
            "/sessions/{session_id}": {
                "parameters": _path_parameter("session_id", "a session's id"),
                "delete": _operation("close a session (its client gets 421)", {
                    200: ("Kicked", "closed"),
                    202: ("Kicked", "asked to close; not done yet")}, (*write, 404))},
            "/bans": {
                "get": _operation("this node's bans and failed logins", {
                    200: ("Bans", "the ban table")}, read),
                "post": _operation("ban an address (with [CLUSTER], on every node within "
                                   "about a second)", {201: ("Banned", "banned")},
                                   (*write, 409, 422), requestBody={
                                       "required": True, "content": {"application/json": {
                                           "schema": _ref("NewBan")}}})},
            "/bans/{address}": {
                "parameters": _path_parameter("address", "an IPv4 or IPv6 address"),
                "delete": _operation("lift a ban and forget the failed logins", {
                    200: ("Unbanned", "lifted, or was not banned")}, (*write, 422, 500))},
            "/accounts": {"get": _operation("the accounts, without secrets", {
                200: ("Accounts", "the accounts")}, read)},
            "/quotas": {"get": _operation("quota usage per account", {
                200: ("Quotas", "usage and limits")}, read)},
            "/events": {"get": _operation("the event queue", {
                200: ("Events", "its figures")}, read)},
            "/reload": {"post": _operation("reload the configuration file", {
                200: ("Reloaded", "the new generation serves"),
                202: ("Reloaded", "still running")}, (*write, 409, 422, 500))},
        },
    }


def document_bytes() -> bytes:
    return json.dumps(document(), indent=1).encode("utf-8")
