"""Key verification: cold (argon2) vs warm (cache hit) per check, SQL on the warm path, and
peak memory when 100 wrong secrets for cold keys arrive at once.

Budget (issue 3): warm p50 <= 50 us, p99 <= 200 us, zero SQL queries on a warm check.
"""

import contextlib
import threading
import time
from collections import Counter

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext

from aibaas.bench.stats import summary, table

WARM_CHECKS = 50_000
COLD_CHECKS = 20
CONCURRENT_WRONG = 100


def _proc_status_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM), in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    return 0


def _reset_hwm() -> bool:
    try:  # writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def _us(ns: float) -> str:
    return f"{ns / 1000:.1f}"


_WRONG_HEADER = [
    "argon2 params",
    "max concurrent",
    "wall time",
    "peak RSS growth",
    "unbounded would be",
    "outcomes",
]


def _timed(times: int, check, before=None, refused: bool = False) -> list[int]:
    """Nanoseconds of `times` calls of `check`, each after `before` when given (untimed). A
    refusal is an answer when `refused`, else an error."""
    from keys.verification import KeyRejected

    elapsed = []
    for _ in range(times):
        if before is not None:
            before()
        start = time.perf_counter_ns()
        with contextlib.suppress(KeyRejected) if refused else contextlib.nullcontext():
            check()
        elapsed.append(time.perf_counter_ns() - start)
    return elapsed


def _per_check(raw: str) -> None:
    """Each verification path's time per check, and the SQL queries of the warm path."""
    from keys import format as key_format
    from keys import verification
    from keys.verification import authenticate_key

    parsed = key_format.parse(raw)
    # Cold: nothing cached anywhere: one SQL query + one argon2id run.
    cold = _timed(
        COLD_CHECKS, lambda: authenticate_key(raw), lambda: verification.forget(parsed.key_id)
    )
    # Warm: the normal case. Per-process layer, refreshed from the cache every API_KEY_LOCAL_TTL.
    authenticate_key(raw)
    with CaptureQueriesContext(connection) as queries:
        warm = _timed(WARM_CHECKS, lambda: authenticate_key(raw))
    # Shared-cache layer only (what a check costs right after the local entry expired).
    shared = _timed(2_000, lambda: authenticate_key(raw), verification.clear_local)
    # Wrong secret for a key whose verifier is cached: one HMAC, no argon2.
    wrong = key_format.generate(key_id=parsed.key_id).raw
    # Malformed key: refused by the checksum before any I/O.
    malformed = raw[:-1] + ("A" if raw[-1] != "A" else "B")
    rows = []
    for name, values in [
        ("cold (SQL + argon2id)", cold),
        ("warm (per-process layer)", warm),
        ("warm (shared cache layer)", shared),
        (
            "wrong secret, verifier cached",
            _timed(5_000, lambda: authenticate_key(wrong), refused=True),
        ),
        (
            "malformed key (checksum)",
            _timed(20_000, lambda: authenticate_key(malformed), refused=True),
        ),
    ]:
        s = summary(values)
        rows.append([name, s["n"], _us(s["p50"]), _us(s["p95"]), _us(s["p99"]), _us(s["mean"])])
    table(
        "Key verification, per check (microseconds)",
        ["path", "n", "p50", "p95", "p99", "mean"],
        rows,
    )
    print(f"SQL queries during {WARM_CHECKS} warm checks: {len(queries)}")
    warm_s = summary(warm)
    verdict = warm_s["p50"] <= 50_000 and warm_s["p99"] <= 200_000 and len(queries) == 0
    print(f"budget warm p50 <= 50 us, p99 <= 200 us, 0 SQL: {'PASS' if verdict else 'FAIL'}")


def _attack(candidates: list[str]) -> tuple[list[str], float]:
    """Every candidate checked at once, one thread each: (their outcomes, the wall time)."""
    from keys.verification import KeyRejected, authenticate_key

    barrier = threading.Barrier(len(candidates))
    outcomes: list[str] = []

    def attack(candidate: str) -> None:
        barrier.wait()
        try:
            authenticate_key(candidate)
            outcomes.append("accepted")
        except KeyRejected as rejected:
            outcomes.append(rejected.code)
        finally:
            connection.close()

    threads = [threading.Thread(target=attack, args=(c,)) for c in candidates]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes, time.perf_counter() - start


def _concurrent_wrong(org, actor) -> None:
    """CONCURRENT_WRONG wrong secrets at once for as many cold keys (verifiers not cached): the
    time, the peak memory growth and the outcomes."""
    from keys import format as key_format
    from keys import verification
    from keys.services import api_key_create
    from keys.verification import authenticate_key

    keys = [
        api_key_create(organization=org, name=f"cold-{i}", actor=actor, check_quota=False)
        for i in range(CONCURRENT_WRONG)
    ]
    wrong_cold = [key_format.generate(key_id=k.api_key.key_id).raw for k in keys]
    for k in keys:  # contexts cached (as after any earlier use), verifiers gone
        authenticate_key(k.raw_key)
    cache.delete_many([verification.verifier_cache_key(k.api_key.key_id) for k in keys])
    verification.clear_local()
    params = settings.API_KEY_ARGON2
    rss_before = _proc_status_kib("VmRSS")
    exact = _reset_hwm()
    hwm_before = _proc_status_kib("VmHWM")
    outcomes, elapsed = _attack(wrong_cold)
    peak = _proc_status_kib("VmHWM") - (hwm_before if exact else rss_before)
    unbounded = CONCURRENT_WRONG * params["memory_cost"]
    table(
        f"{CONCURRENT_WRONG} concurrent wrong secrets for cold keys",
        _WRONG_HEADER,
        [
            [
                f"t={params['time_cost']} m={params['memory_cost'] // 1024} MiB "
                f"p={params['parallelism']}",
                settings.API_KEY_ARGON2_MAX_CONCURRENCY,
                f"{elapsed:.2f} s",
                f"{peak / 1024:.1f} MiB{'' if exact else ' (approx.)'}",
                f"{unbounded / 1024:.0f} MiB",
                ", ".join(f"{code} x{n}" for code, n in Counter(outcomes).most_common()),
            ]
        ],
    )
    for k in keys:
        verification.forget(k.api_key.key_id)


def run() -> None:
    from accounts.actors import Actor
    from accounts.models import Organization
    from billing.models import Plan
    from billing.services import plan_seed_defaults
    from keys.services import api_key_create

    plan_seed_defaults()
    org, _ = Organization.objects.get_or_create(
        slug="bench-keys",
        defaults={"name": "Bench keys", "plan": Plan.objects.get(slug="enterprise")},
    )
    actor = Actor.for_system("bench")
    _per_check(api_key_create(organization=org, name="bench", actor=actor).raw_key)
    _concurrent_wrong(org, actor)
