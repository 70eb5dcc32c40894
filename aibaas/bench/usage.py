"""Usage reads at scale: GET /v1/usage and GET /api/usage (the usage page's data) with
1,000,000 usage events across 50 organizations x 20 keys x 5 models, over the last 30 days.

Budget (issue 13): p95 under 200 ms for both, read from the rollups. The events are inserted
by one SQL statement (PostgreSQL; a SQLite run uses BENCH_USAGE_EVENTS, default 100,000 there)
and the rollups built by rollup_rebuild (timed too); a second run reuses them.
"""

import os
import random
import time

from django.db import connection
from django.test import Client

from aibaas.bench.stats import summary, table

ORGANIZATIONS = 50
KEYS = 20
MODELS = 5
ROUNDS = 200
SLUG = "bench-usage-{:02d}"

_INSERT = """
INSERT INTO metering_usageevent (request_id, organization_id, api_key_id, key_id, model,
    endpoint, status_code, input_tokens, output_tokens, estimated, cached, cost, latency_ms,
    upstream_latency_ms, client_ip, error_code, billable, created_at)
SELECT 'bench-usage-' || g,
    (%(orgs)s)[1 + g %% {orgs}],
    NULL,
    'bnch' || lpad(((g / {orgs}) %% {keys})::text, 8, '0'),
    'bench-model-' || (g %% {models}),
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


def _organizations():
    from accounts.actors import Actor
    from accounts.models import Organization
    from billing.models import Plan
    from billing.services import plan_seed_defaults
    from keys.services import api_key_create

    plan_seed_defaults()
    plan = Plan.objects.get(slug="enterprise")
    organizations = []
    for index in range(ORGANIZATIONS):
        org, _ = Organization.objects.get_or_create(
            slug=SLUG.format(index), defaults={"name": f"Bench usage {index}", "plan": plan}
        )
        raw = api_key_create(
            organization=org, name="bench reader", actor=Actor.for_system("bench"),
            scopes=["usage:read"],
        ).raw_key  # fmt: skip
        organizations.append((org, raw))
    return organizations


def _events(organizations, count: int) -> tuple[int, float]:
    from metering.models import UsageEvent

    ids = [org.pk for org, _ in organizations]
    present = UsageEvent.objects.filter(organization_id__in=ids).count()
    if present >= count:
        return present, 0.0
    if connection.vendor != "postgresql":
        raise SystemExit("the usage bench inserts its events with PostgreSQL's generate_series")
    start = time.perf_counter()
    sql = _INSERT.format(orgs=ORGANIZATIONS, keys=KEYS, models=MODELS)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM metering_usageevent WHERE request_id LIKE 'bench-usage-%%'")
        cursor.execute(sql, {"orgs": ids, "count": count})
    return count, time.perf_counter() - start


# secure=True: production settings redirect plain HTTP (SECURE_SSL_REDIRECT).
def _timed(client: Client, path: str, raw: str, query: dict) -> float:
    start = time.perf_counter()
    response = client.get(path, query, secure=True, HTTP_AUTHORIZATION=f"Bearer {raw}")
    elapsed = time.perf_counter() - start
    assert response.status_code == 200, response.content[:300]
    return elapsed * 1000


def run() -> None:
    from metering.rollups.maintenance import rollup_rebuild

    count = int(os.environ.get("BENCH_USAGE_EVENTS", "1000000"))
    organizations = _organizations()
    stored, insert_seconds = _events(organizations, count)
    start = time.perf_counter()
    rows = sum(rollup_rebuild(organization=org) for org, _ in organizations)
    rebuild_seconds = time.perf_counter() - start

    client = Client()
    for _, raw in organizations:  # the first use of each key verifies it (argon2): not timed
        client.get("/v1/usage", secure=True, HTTP_AUTHORIZATION=f"Bearer {raw}")
    rng = random.Random(13)  # noqa: S311 (which organization asks: a fixed, repeatable draw)
    cases = {
        "GET /v1/usage (this month)": ("/v1/usage", {}),
        "GET /api/usage (30 days by day, per model)": (
            "/api/usage", {"granularity": "day", "group_by": "model"},
        ),
        "GET /api/usage (24 h by hour, per key)": (
            "/api/usage", {"granularity": "hour", "group_by": "key"},
        ),
    }  # fmt: skip
    results = []
    for name, (path, query) in cases.items():
        timings = [_timed(client, path, rng.choice(organizations)[1], query) for _ in range(ROUNDS)]
        s = summary(timings)
        verdict = "ok" if s["p95"] < 200 else "OVER BUDGET"
        results.append([name, s["n"], f"{s['p50']:.1f}", f"{s['p95']:.1f}", f"{s['p99']:.1f}",
                        verdict])  # fmt: skip
    print(
        f"\nusage events: {stored:,} in {ORGANIZATIONS} organizations x {KEYS} keys x {MODELS} "
        f"models over 30 days (inserted in {insert_seconds:.1f} s); rollups rebuilt: {rows:,} "
        f"rows in {rebuild_seconds:.1f} s"
    )
    table(
        "usage reads (ms, in-process Django client, budget p95 < 200 ms)",
        ["read", "n", "p50", "p95", "p99", "budget"],
        results,
    )
