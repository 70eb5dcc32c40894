"""Usage reads at scale: GET /v1/usage and GET /api/usage (the usage page's data) with
1,000,000 usage events across 50 organizations x 20 keys x 5 models, over the last 30 days.

Budget (issue 13): p95 under 200 ms for both, read from the rollups. The events are inserted
by one SQL statement (PostgreSQL only) and the rollups built by rollup_rebuild (timed too); a
second run reuses the events and keys (and the rollups with BENCH_USAGE_REBUILD=0). Method and
figures: docs/benchmarks.md.
"""

import os
import random
import time
from dataclasses import dataclass

from django.db import connection
from django.test import Client

from aibaas.bench.sqltime import QueryTimer, explain
from aibaas.bench.stats import summary, table

ORGANIZATIONS = 50
KEYS = 20
MODELS = 5
ROUNDS = 200
BUDGET_MS = 200
SLUG = "bench-usage-{:02d}"
KEY_NAME = "bench traffic {:02d}"

# Event g: organization g mod 50, key (g div 50) mod 20, model (g div 1000) mod 5, so every
# organization has all 20 x 5 pairs; 2 % refused (429), 1 % upstream errors (502), 5 % cached;
# spread evenly over the last 30 days.
_INSERT = """
INSERT INTO metering_usageevent (request_id, organization_id, api_key_id, key_id, model,
    endpoint, status_code, input_tokens, output_tokens, estimated, cached, cost, latency_ms,
    upstream_latency_ms, client_ip, error_code, billable, created_at)
SELECT 'bench-usage-' || g,
    (%(orgs)s::bigint[])[1 + g %% {orgs}],
    (%(key_pks)s::bigint[])[1 + (g %% {orgs}) * {keys} + (g / {orgs}) %% {keys}],
    (%(key_ids)s::text[])[1 + (g %% {orgs}) * {keys} + (g / {orgs}) %% {keys}],
    'bench-model-' || ((g / ({orgs} * {keys})) %% {models}),
    'chat.completions',
    CASE WHEN g %% 97 = 0 THEN 502 WHEN g %% 50 = 0 THEN 429 ELSE 200 END,
    10 + g %% 500, 5 + g %% 300, false, g %% 20 = 0,
    ((10 + g %% 500) + 2 * (5 + g %% 300)) * 0.000001,
    20 + (g * 7919) %% 3000, 10 + (g * 104729) %% 1500, NULL,
    CASE WHEN g %% 50 = 0 AND g %% 97 <> 0 THEN 'rate_limit_exceeded'
         WHEN g %% 97 = 0 THEN 'upstream_error' ELSE '' END,
    NOT (g %% 50 = 0 AND g %% 97 <> 0),
    now() - ((g * 2654435761) %% (30 * 86400)) * interval '1 second'
FROM generate_series(1::bigint, %(count)s) AS g
"""


@dataclass
class Tenant:
    organization: object
    keys: list  # the 20 traffic keys (ApiKey)
    reader: object  # IssuedKey with usage:read, made for this run and revoked after it


def _tenants() -> list[Tenant]:
    from accounts.actors import Actor
    from accounts.models import Organization
    from billing.models import Plan
    from billing.services import plan_seed_defaults
    from keys.models import ApiKey
    from keys.services import api_key_create

    plan_seed_defaults()
    plan = Plan.objects.get(slug="enterprise")
    actor = Actor.for_system("bench")
    tenants = []
    for index in range(ORGANIZATIONS):
        org, _ = Organization.objects.get_or_create(
            slug=SLUG.format(index), defaults={"name": f"Bench usage {index}", "plan": plan}
        )
        keys = []
        for number in range(KEYS):  # made once (argon2 each), reused by later runs
            name = KEY_NAME.format(number)
            key = ApiKey.objects.filter(organization=org, name=name).order_by("pk").first()
            key = key or api_key_create(organization=org, name=name, actor=actor).api_key
            keys.append(key)
        reader = api_key_create(
            organization=org, name="bench reader", actor=actor, scopes=["usage:read"]
        )
        tenants.append(Tenant(org, keys, reader))
    return tenants


def _events(tenants: list[Tenant], count: int) -> tuple[int, float]:
    from metering.models import UsageEvent

    ids = [tenant.organization.pk for tenant in tenants]
    present = UsageEvent.objects.filter(organization_id__in=ids).count()
    if present >= count:
        return present, 0.0
    if connection.vendor != "postgresql":
        raise SystemExit("the usage bench inserts its events with PostgreSQL's generate_series")
    start = time.perf_counter()
    sql = _INSERT.format(orgs=ORGANIZATIONS, keys=KEYS, models=MODELS)
    keys = [key for tenant in tenants for key in tenant.keys]
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM metering_usageevent WHERE organization_id = ANY(%s)", [ids])
        cursor.execute(
            sql,
            {
                "orgs": ids,
                "key_pks": [key.pk for key in keys],
                "key_ids": [key.key_id for key in keys],
                "count": count,
            },
        )
        cursor.execute("ANALYZE metering_usageevent")
    return count, time.perf_counter() - start


def _rebuild(tenants: list[Tenant]) -> tuple[int, float]:
    from metering.rollups.maintenance import rollup_rebuild

    start = time.perf_counter()
    rows = sum(rollup_rebuild(organization=tenant.organization) for tenant in tenants)
    elapsed = time.perf_counter() - start
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE metering_usagerollup")
    return rows, elapsed


def _series(granularity: str, group_by: str | None = None, only: str | None = None) -> tuple:
    """GET /api/usage (24 h by hour or 30 days by day, the defaults of each), grouped or not,
    filtered to 3 of the organization's keys or 2 of its models or not."""

    def query(tenant: Tenant) -> dict:
        out = {"granularity": granularity}
        if group_by:
            out["group_by"] = group_by
        if only == "keys":
            out["key"] = [key.key_id for key in tenant.keys[:3]]
        elif only == "models":
            out["model"] = ["bench-model-0", "bench-model-3"]
        return out

    return "/api/usage", query


# name -> (path, query of a tenant)
CASES = {
    "/v1/usage (this month)": ("/v1/usage", lambda tenant: {}),
    "/api/usage 24h by hour, per key": _series("hour", "key"),
    "/api/usage 24h by hour, per model": _series("hour", "model"),
    "/api/usage 24h by hour, per key, 2 models": _series("hour", "key", "models"),
    "/api/usage 24h by hour, per model, 3 keys": _series("hour", "model", "keys"),
    "/api/usage 30d by day, per key": _series("day", "key"),
    "/api/usage 30d by day, per model": _series("day", "model"),
    "/api/usage 30d by day, per key, 2 models": _series("day", "key", "models"),
    "/api/usage 30d by day, per model, 3 keys": _series("day", "model", "keys"),
    "/api/usage 30d by day, totals only": _series("day"),
}


# secure=True: production settings redirect plain HTTP (SECURE_SSL_REDIRECT).
def _timed(client: Client, path: str, tenant: Tenant, query: dict) -> tuple[float, QueryTimer]:
    raw = tenant.reader.raw_key
    with QueryTimer() as timer:
        start = time.perf_counter()
        response = client.get(path, query, secure=True, HTTP_AUTHORIZATION=f"Bearer {raw}")
        elapsed = (time.perf_counter() - start) * 1000
    assert response.status_code == 200, response.content[:300]
    return elapsed, timer


def _case(client: Client, tenants: list[Tenant], rng: random.Random, path, query_of) -> list:
    walls, sql, queries, heaviest = [], [], [], None
    for _ in range(ROUNDS):
        tenant = rng.choice(tenants)
        wall, timer = _timed(client, path, tenant, query_of(tenant))
        walls.append(wall)
        sql.append(timer.ms)
        queries.append(len(timer.queries))
        top = max(timer.queries, key=lambda query: query.ms)
        if heaviest is None or top.ms > heaviest.ms:
            heaviest = top
    s = summary(walls)
    mean_sql = sum(sql) / len(sql)
    plan = explain(heaviest)
    return [
        s["n"], f"{s['p50']:.1f}", f"{s['p95']:.1f}", f"{s['p99']:.1f}",
        f"{mean_sql:.1f}", f"{s['mean'] - mean_sql:.1f}", f"{100 * mean_sql / s['mean']:.0f}%",
        f"{sum(queries) / len(queries):.1f}",
        f"{plan.execution_ms:.1f}" if plan else "-",
        "ok" if s["p95"] < BUDGET_MS else "OVER BUDGET",
    ]  # fmt: skip


def run() -> None:
    from keys.services import api_key_revoke

    count = int(os.environ.get("BENCH_USAGE_EVENTS", "1000000"))
    tenants = _tenants()
    try:
        _measure(tenants, count)
    finally:
        from accounts.actors import Actor

        for tenant in tenants:
            api_key_revoke(api_key=tenant.reader.api_key, actor=Actor.for_system("bench"))


def _measure(tenants: list[Tenant], count: int) -> None:
    stored, insert_seconds = _events(tenants, count)
    rows, rebuild_seconds = 0, 0.0
    if insert_seconds or os.environ.get("BENCH_USAGE_REBUILD", "1") != "0":
        rows, rebuild_seconds = _rebuild(tenants)
    client = Client(HTTP_HOST="localhost")  # one of the default ALLOWED_HOSTS
    for tenant in tenants:  # the first use of each key verifies it (argon2): not timed
        _timed(client, "/v1/usage", tenant, {})
    rng = random.Random(13)  # noqa: S311 (which organization asks: a fixed, repeatable draw)
    results = [[name, *_case(client, tenants, rng, *case)] for name, case in CASES.items()]
    inserted = f"inserted in {insert_seconds:.1f} s" if insert_seconds else "from an earlier run"
    rebuilt = (
        f"rebuilt (rollup_rebuild, per organization): {rows:,} rows in {rebuild_seconds:.1f} s"
        if rebuild_seconds
        else "kept (BENCH_USAGE_REBUILD=0)"
    )
    print(
        f"\nusage events: {stored:,} in {ORGANIZATIONS} organizations x {KEYS} keys x {MODELS} "
        f"models over 30 days ({inserted}); rollups {rebuilt}"
    )
    table(
        f"usage reads (ms; in-process Django client, {ROUNDS} requests each from a random "
        f"organization; sql = time in queries, python = the rest; explain = server execution "
        f"of the heaviest query; budget p95 < {BUDGET_MS} ms)",
        ["read", "n", "p50", "p95", "p99", "sql", "python", "sql%", "queries", "explain",
         "budget"],
        results,
    )  # fmt: skip
    over = [row[0] for row in results if row[-1] != "ok"]
    print(f"\nverdict: {'OVER BUDGET: ' + ', '.join(over) if over else 'every read within budget'}")
