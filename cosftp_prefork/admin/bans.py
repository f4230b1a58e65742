"""``GET /api/v1/bans`` (this node's ban table), ``POST /api/v1/bans`` (ban an address) and
``DELETE /api/v1/bans/<address>`` (lift a ban: as ``cosftpctl unban``, also in the
cluster's Redis when ``[CLUSTER]`` is set).

A ban or unban changes the shared ban table and waits, as ``cosftpctl unban`` does, until
the master saved the bans file, so that a stop right after cannot undo it. Each worker reads
the table again at its next accept; the connections of a newly banned address that are not
logged in yet close at once: each worker is woken (``server.wakeup``) and closes its own,
and until it did, each of them is closed before it runs another command
(``WorkerStats.kick_due``). With ``[CLUSTER]``, a ban is written in Redis
before the answer (``banctl.ban_in_cluster``), in its place after the unbans made so far,
and every node holds it within a second; if Redis cannot be asked, the workers' cluster
thread publishes it when it answers (``Gate.share``).
"""

from __future__ import annotations

import ipaddress
import time
from typing import Any, Optional

from ..server.banctl import (
    Outcome,
    allowlisted,
    ban_in_cluster,
    describe,
    lift_everywhere,
    lift_running,
    parse_address,
    shown_as,
    wait_saved,
)
from ..server.scoreboard import BanRow, address_group
from ..server.wakeup import wake_worker
from .app import ApiError, Context, Response

MAX_BAN_SECONDS = 366 * 86400


def bans(context: Context) -> Response:
    now, server = time.time(), context.config.server
    rows = [row for row in context.state.ban_rows()
            if row.until > now or (row.failures and now - row.since <=
                                   server.login_failure_window)]
    rows.sort(key=lambda row: ipaddress.ip_address(row.address).packed)
    return Response(200, {
        "bans": [_ban(row, now, context) for row in rows],
        "max_login_failures": server.max_login_failures,
        "login_failure_window": server.login_failure_window,
        "ban_time": server.ban_time,
    })


def _ban(row: BanRow, now: float, context: Context) -> dict[str, Any]:
    banned = row.until > now
    return {"address": shown_as(row.address, context.config), "banned": banned,
            "failures": row.failures if now - row.since <=
            context.config.server.login_failure_window else 0,
            "banned_until": row.until if banned else None,
            "seconds_left": max(0, int(row.until - now)) if banned else None,
            # whose ban this node holds, as ``cosftpctl bans``'s WHOSE column says it
            "copy": row.copy if banned else None,
            "allowlisted": allowlisted(row.address, context.config)}


def _address(text: str, context: Context) -> str:
    """What ``text`` is banned as (an IPv6 address: its network of ipv6_prefix_length)."""
    try:
        return parse_address(text, context.config.server.ipv6_prefix_length)
    except ValueError as exc:
        raise ApiError(422, "give one address, not a network" if "/" in text
                       else str(exc)) from None


def add(context: Context) -> Response:
    body = context.request.json()
    if not isinstance(body, dict) or not isinstance(body.get("address"), str):
        raise ApiError(422, 'send {"address": "192.0.2.7"} (and "seconds", if not ban_time)')
    group = _address(body["address"], context)
    address = shown_as(group, context.config)
    seconds = _seconds(body.get("seconds"), context.config.server.ban_time)
    if not context.config.server.max_login_failures:
        raise ApiError(409, "bans are off (max_login_failures = 0): a ban would not be "
                       "enforced")
    if allowlisted(group, context.config):
        raise ApiError(422, f"{address} is in ban_allowlist: a ban would not be enforced")
    if group == address_group(context.request.client, context.config.server.ipv6_prefix_length):
        raise ApiError(422, f"{address} is your own address: the ban would lock you out")
    now = int(time.time())
    until = now + seconds
    # Redis first: a heartbeat of this node between the two then finds the ban there, made
    # after any unban it brings, and keeps the row this writes (the other way round, the
    # row made here could be forgotten for an unban made before it, until the next beat).
    problem = ban_in_cluster(context.config, group, until, seconds) \
        if context.config.cluster.redis_url else None
    context.state.ban(group, until, started=now)
    for worker in context.state.workers():  # its connections not logged in close now
        wake_worker(worker.pid)
    saved = wait_saved(context.state, context.master_alive)
    what = f"banned {address} for {seconds}s" + ("" if saved else
                                                "; the master did not save the bans file yet")
    if problem is not None:
        what += f"; not in the cluster's Redis yet ({problem}): this node's workers publish " \
                f"it when Redis answers"
    return Response(201, {"address": address, "banned_until": until, "saved": saved},
                    audit=what)


def _seconds(value: Optional[Any], default: int) -> int:
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or \
            not 0 < value <= MAX_BAN_SECONDS:
        raise ApiError(422, f'"seconds" must be a whole number from 1 to {MAX_BAN_SECONDS}')
    return value


def lift(context: Context, address: str) -> Response:
    wanted = _address(address, context)
    outcome, config = Outcome(), context.config
    lift_everywhere(config, wanted, time.time(), outcome,
                    lambda: lift_running(context.state, wanted, context.master_alive, outcome,
                                         config.server.pid_file))
    now = time.time()
    report = describe(wanted, outcome, now, bool(config.cluster.redis_url))
    body = {"address": shown_as(wanted, config), "lifted": bool(outcome.lifted(now)),
            "failures_forgotten": outcome.failures(), "message": report}
    if outcome.problems:
        raise ApiError(500, report, **{k: v for k, v in body.items() if k != "message"})
    return Response(200, body, audit=f"unban {body['address']}: {report}")
