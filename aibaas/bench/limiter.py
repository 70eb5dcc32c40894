"""The limiter's cost per request: the whole admission of one /v1 request as the gateway makes it
(metering.admission.aadmit: the per-IP layer, the key's four windows and the organization's
monthly quota, then the settlement), on the gateway's asyncio path, one request at a time.

Counted, not estimated: Redis round trips (writes to its connections: each pipeline is one),
Redis commands (INFO commandstats, before and after) and the quota's PostgreSQL statements.
Budget (issue 5): 1 Redis round trip per request. Without REDIS_URL the in-process limiter is
measured alone.
"""

import asyncio
import time
import uuid

from django.conf import settings

from aibaas.bench.stats import summary, table

REQUESTS = 5_000
# Every limit of a plan, none reached (the gateway bench's plan too).
LIMITS = {
    "requests_per_minute": 10**9,
    "requests_per_day": 10**9,
    "tokens_per_minute": 10**12,
    "tokens_per_day": 10**12,
    "monthly_request_quota": 10**12,
    "monthly_token_quota": 10**15,
}


class _Counter:
    """Counts calls of an async method for the duration (the bench's own instrument)."""

    def __init__(self, owner, name: str) -> None:
        self.owner, self.name, self.calls = owner, name, 0
        self.real = getattr(owner, name)

    def __enter__(self):
        real, counter = self.real, self

        async def counted(*args, **kwargs):
            counter.calls += 1
            return await real(*args, **kwargs)

        setattr(self.owner, self.name, counted)
        return self

    def __exit__(self, *exc) -> None:
        setattr(self.owner, self.name, self.real)


def _context(organization_id: int, limits: dict):
    from keys.context import KeyContext

    return KeyContext(
        pk=0,
        key_id=f"bench{uuid.uuid4().hex[:12]}",
        name="bench",
        organization_id=organization_id,
        organization_slug="bench-limiter",
        plan_slug="bench",
        scopes=frozenset({"inference"}),
        models=None,
        test_mode=False,
        limits=limits,
        expires_at=None,
        revoked_at=None,
        created_by_id=None,
    )


async def _admissions(context, count: int) -> list[int]:
    from metering import admission, quota

    times = []
    for i in range(count):
        started = time.perf_counter_ns()
        admitted = await admission.aadmit(context, tokens=300, client_ip=f"203.0.113.{i % 250}")
        await admitted.asettle(180)  # the tokens the request really used
        times.append(time.perf_counter_ns() - started)
    await quota.aflush(leases=True)
    return times


def _commands(client) -> int:
    stats = client.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))


def _organization_id() -> int:
    from accounts.models import Organization
    from billing.models import Plan

    plan, _ = Plan.objects.update_or_create(
        slug="bench-limiter",
        defaults={"name": "Bench limiter", "is_public": False, **LIMITS},
    )
    org, _ = Organization.objects.update_or_create(
        slug="bench-limiter", defaults={"name": "Bench limiter", "plan": plan}
    )
    return org.pk


def _row(label: str, times: list[int], round_trips, commands, statements) -> list:
    s = summary([t / 1000 for t in times])
    return [
        label,
        s["n"],
        round_trips,
        commands,
        statements,
        f"{s['p50']:.0f}",
        f"{s['p95']:.0f}",
        f"{s['p99']:.0f}",
    ]


def _shared(organization_id: int) -> tuple[list, bool]:
    """The row of the shared limiter (Redis and PostgreSQL) and whether it keeps to one Redis
    round trip per request."""
    import redis.asyncio.connection as redis_connection

    from infra.redis_clients import redis_client
    from metering import limiter
    from metering.quota import batched

    context = _context(organization_id, LIMITS)
    asyncio.run(_admissions(context, 200))  # scripts loaded, pools warm, a quota lease
    client = redis_client()
    before = _commands(client)
    with (
        _Counter(redis_connection.Connection, "send_packed_command") as sent,
        _Counter(batched.Connections, "fetchone") as statements,
    ):
        times = asyncio.run(_admissions(context, REQUESTS))
    commands = (_commands(client) - before) / REQUESTS
    round_trips = sent.calls / REQUESTS
    row = _row(
        "Redis + PostgreSQL (all limits, settled)",
        times,
        f"{round_trips:.2f}",
        f"{commands:.2f}",
        f"{statements.calls / REQUESTS:.3f}",
    )
    limiter.reset(context.key_id)
    return row, round(round_trips, 2) <= 1.0


def run() -> None:
    from metering import ip_limit

    settings.GATEWAY_IP_RATE = "1000000000/m"  # counted, never reached
    ip_limit.reset_state()
    organization_id = _organization_id()
    rows = []
    verdict = None
    if settings.REDIS_URL:
        row, verdict = _shared(organization_id)
        rows.append(row)
    # The embedded default: the same limiter in the process (the quota is measured with the
    # database the bench runs on, in a worker thread unless it is PostgreSQL).
    saved = settings.REDIS_URL
    settings.REDIS_URL = ""
    try:
        local = _context(organization_id, {k: v for k, v in LIMITS.items() if "monthly" not in k})
        asyncio.run(_admissions(local, 200))
        rows.append(
            _row(
                "in-process (windows + per-IP, settled)",
                asyncio.run(_admissions(local, REQUESTS)),
                "0",
                "0",
                "0",
            )
        )
    finally:
        settings.REDIS_URL = saved
    table(
        "Rate limiter and quota, per request (admission + settlement, microseconds)",
        ["backend", "requests", "Redis round trips", "Redis commands", "SQL", "p50", "p95", "p99"],
        rows,
    )
    if verdict is not None:
        print(f"budget 1 Redis round trip per request: {'PASS' if verdict else 'FAIL'}")
    else:
        print("Redis figures skipped: set REDIS_URL to measure the shared limiter")
