"""Gateway overhead: the fake upstream called directly vs through aibaas in its production setup
(gunicorn + uvicorn workers, PostgreSQL, Redis, a Celery worker draining usage events), at
concurrency 1 and 32, and 500 concurrent slow streams.

Budget (issue 4): overhead over direct p50 <= 2 ms and p99 <= 10 ms at concurrency 1;
>= 1,000 requests/s through aibaas at concurrency 32 with 0 errors; 500 concurrent streams
(1 s to first token, 2 s of streaming) with 0 errors and <= 5% added total latency.
Needs DATABASE_URL (PostgreSQL) and REDIS_URL; the load generator (aiohttp), the fake upstream
and aibaas all share this machine.
"""

import asyncio
import gc
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import aiohttp

from aibaas.bench.stats import summary, table

ROOT = Path(__file__).resolve().parent.parent.parent
LOG_DIR = ROOT / ".bench"  # the servers' logs of the last run (git-ignored)
WORKERS = int(os.environ.get("BENCH_GATEWAY_WORKERS", "2"))
DURATION = float(os.environ.get("BENCH_DURATION", "8"))
STREAMS = int(os.environ.get("BENCH_STREAMS", "500"))
STREAM_ROUNDS = int(os.environ.get("BENCH_STREAM_ROUNDS", "3"))
BODY = {"model": "bench-fake", "messages": [{"role": "user", "content": "Say hello."}]}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_http(url: str, timeout: float = 30.0) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)  # noqa: S310 (a local URL we built)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


@contextmanager
def _process(command: list[str], env: dict, name: str):
    LOG_DIR.mkdir(exist_ok=True)
    log = open(LOG_DIR / f"{name}.log", "w")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(  # noqa: S603 (our own command line)
        command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        yield process
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


async def _load(
    url: str,
    headers: dict,
    body: dict,
    concurrency: int,
    duration: float,
    stream: bool = False,
    requests: int | None = None,
):
    latencies: list[float] = []
    first_bytes: list[float] = []
    errors: dict[str, int] = {}
    payload = json.dumps(dict(body, stream=stream)).encode()
    deadline = time.monotonic() + duration
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    remaining = [requests] if requests is not None else None
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker():
            while True:
                if remaining is not None:
                    if remaining[0] <= 0:
                        return
                    remaining[0] -= 1
                elif time.monotonic() >= deadline:
                    return
                started = time.perf_counter()
                try:
                    async with session.post(url, data=payload, headers=headers) as response:
                        if stream:
                            await response.content.readany()
                            first_bytes.append(time.perf_counter() - started)
                        await response.read()
                        if response.status != 200:
                            errors[str(response.status)] = errors.get(str(response.status), 0) + 1
                            continue
                except (aiohttp.ClientError, TimeoutError) as error:
                    errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1
                    continue
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    if stream:
        _FIRST_BYTES[url] = first_bytes
    return latencies, errors, elapsed


_FIRST_BYTES: dict[str, list[float]] = {}


async def _alternate(first: tuple, second: tuple, duration: float):
    """One client at a time, alternating between two (url, headers, body): the results of
    each, as _load gives them (the pair runs for twice `duration`)."""
    targets = [(url, headers, json.dumps(body).encode()) for url, headers, body in (first, second)]
    latencies: list[list[float]] = [[], []]
    errors: list[dict[str, int]] = [{}, {}]
    deadline = time.monotonic() + 2 * duration
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=timeout
    ) as session:
        started = time.perf_counter()
        i = 0
        while time.monotonic() < deadline:
            which = i % 2
            url, headers, payload = targets[which]
            i += 1
            begin = time.perf_counter()
            try:
                async with session.post(url, data=payload, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        key = str(response.status)
                        errors[which][key] = errors[which].get(key, 0) + 1
                        continue
            except (aiohttp.ClientError, TimeoutError) as error:
                key = type(error).__name__
                errors[which][key] = errors[which].get(key, 0) + 1
                continue
            latencies[which].append(time.perf_counter() - begin)
        elapsed = (time.perf_counter() - started) / 2
    return (latencies[0], errors[0], elapsed), (latencies[1], errors[1], elapsed)


def _wait_for_usage_drain(redis_url: str, timeout: float = 60.0) -> int:
    """Wait until the usage stream is empty (the Celery worker drained it); what is left."""
    import redis

    from metering.usage.events import stream_key

    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = client.xlen(stream_key())
            if left == 0 or time.monotonic() >= deadline:
                return left
            time.sleep(0.5)
    finally:
        client.close()


def _row(label: str, concurrency: int, result) -> list:
    latencies, errors, elapsed = result
    s = summary([x * 1000 for x in latencies])
    return [
        label,
        concurrency,
        s["n"],
        f"{s['n'] / elapsed:.0f}",
        f"{s['p50']:.2f}",
        f"{s['p95']:.2f}",
        f"{s['p99']:.2f}",
        sum(errors.values()) or 0,
        ", ".join(f"{k} x{v}" for k, v in errors.items()),
    ]


def _bench_model(name: str, upstream_base: str, upstream_model: str):
    """An openai_compatible model whose one upstream is the fake upstream's `upstream_model`."""
    from aibaas.gateway.models import AIModel, Upstream

    model, _ = AIModel.objects.update_or_create(
        name=name,
        defaults={
            "kind": "chat",
            "provider": "openai_compatible",
            "context_window": 8192,
            "enabled": True,
            "test_mode_allowed": False,
            "response_cache_ttl": 0,
        },
    )
    model.upstreams.all().delete()
    Upstream.objects.create(
        model=model,
        base_url=upstream_base,
        upstream_model=upstream_model,
        api_key_env="",
        weight=1,
        timeout_seconds=60,
        connect_timeout_seconds=5,
    )
    return model


def _seed(upstream_base: str) -> str:
    from decimal import Decimal

    from accounts.actors import Actor
    from accounts.models import Organization
    from billing.models import ModelPrice, Plan
    from billing.services import plan_seed_defaults
    from keys.services import api_key_create

    plan_seed_defaults()
    # Every limit set, none reached: the bench measures the whole admission path (per-IP
    # layer, the key's four windows in Redis, the monthly quota row in PostgreSQL, settlement).
    from aibaas.bench.limiter import LIMITS

    plan, _ = Plan.objects.update_or_create(
        slug="bench-limits",
        defaults={"name": "Bench (all limits, never reached)", "is_public": False, **LIMITS},
    )
    org, _ = Organization.objects.update_or_create(
        slug="bench-gateway", defaults={"name": "Bench gateway", "plan": plan}
    )
    model = _bench_model("bench-fake", upstream_base, "fake")
    _bench_model("bench-fake-slow", upstream_base, "fake-slow")
    ModelPrice.objects.update_or_create(
        model=model,
        defaults={"input_per_million": Decimal("1"), "output_per_million": Decimal("2")},
    )
    return api_key_create(
        organization=org, name="bench", actor=Actor.for_system("bench"), check_quota=False
    ).raw_key


def run() -> None:
    from django.db import connection

    if connection.vendor != "postgresql" or not os.environ.get("REDIS_URL"):
        print(
            "\ngateway bench skipped: it needs DATABASE_URL (PostgreSQL) and REDIS_URL, the "
            "production setup it measures"
        )
        return
    upstream_port, gateway_port = _free_port(), _free_port()
    upstream_base = f"http://127.0.0.1:{upstream_port}/v1"
    gateway_base = f"http://127.0.0.1:{gateway_port}/v1"
    key = _seed(upstream_base)
    redis_url = os.environ["REDIS_URL"]
    env = dict(os.environ)
    env.update(
        {
            "DEBUG": "False",
            "SECRET_KEY": os.environ.get("SECRET_KEY") or secrets.token_urlsafe(50),
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "SECURE_SSL_REDIRECT": "False",
            "STATIC_MANIFEST": "False",
            "LOG_LEVEL": "WARNING",
            # The per-IP layer stays on, at a rate one load generator cannot reach.
            "GATEWAY_IP_RATE": "100000000/m",
            "CELERY_BROKER_URL": os.environ.get("CELERY_BROKER_URL", redis_url),
        }
    )
    python = sys.executable
    bin_dir = Path(python).parent
    with ExitStack() as stack:
        stack.enter_context(
            _process(
                [
                    python,
                    "-m",
                    "uvicorn",
                    "aibaas.bench.fake_upstream:app",
                    "--port",
                    str(upstream_port),
                    "--log-level",
                    "warning",
                    "--no-access-log",
                    "--lifespan",
                    "off",
                ],
                env,
                "upstream",
            )
        )
        stack.enter_context(
            _process(
                # The production command (README), configured by its environment.
                [
                    str(bin_dir / "gunicorn"),
                    "-c",
                    str(ROOT / "deploy" / "gunicorn.conf.py"),
                    "aibaas.asgi:application",
                ],
                dict(
                    env,
                    BIND=f"127.0.0.1:{gateway_port}",
                    WEB_CONCURRENCY=str(WORKERS),
                    # No access log, as in the figures before it existed: one line per
                    # request to a file would be measured as gateway overhead.
                    ACCESS_LOG="off",
                ),
                "gateway",
            )
        )
        stack.enter_context(
            _process(
                [
                    str(bin_dir / "celery"),
                    "-A",
                    "aibaas",
                    "worker",
                    "-B",
                    "-s",
                    str(LOG_DIR / "celerybeat-schedule"),
                    "-c",
                    "1",
                    "-l",
                    "warning",
                    "--without-gossip",
                    "--without-mingle",
                ],
                env,
                "celery",
            )
        )
        _wait_http(f"http://127.0.0.1:{upstream_port}/v1/models")
        _wait_http(f"http://127.0.0.1:{gateway_port}/healthz")
        auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        plain = {"Content-Type": "application/json"}
        direct_url = f"{upstream_base}/chat/completions"
        gateway_url = f"{gateway_base}/chat/completions"
        asyncio.run(_load(gateway_url, auth, BODY, 4, 2.0))  # warm keys, registry, pools

        rows = []
        results = {}
        # Concurrency 1: direct and through aibaas alternate request by request, so both see
        # the same machine (on a shared 2-core VM its speed drifts by 2x within minutes).
        direct, through = asyncio.run(
            _alternate(
                (direct_url, plain, dict(BODY, model="fake")), (gateway_url, auth, BODY), DURATION
            )
        )
        results[("direct", 1)], results[("aibaas", 1)] = direct, through
        rows.append(_row("direct upstream", 1, direct))
        rows.append(_row("through aibaas", 1, through))
        results[("direct", 32)] = asyncio.run(
            _load(direct_url, plain, dict(BODY, model="fake"), 32, DURATION)
        )
        rows.append(_row("direct upstream", 32, results[("direct", 32)]))
        results[("aibaas", 32)] = asyncio.run(_load(gateway_url, auth, BODY, 32, DURATION))
        rows.append(_row("through aibaas", 32, results[("aibaas", 32)]))
        table(
            f"Chat completions, non-stream ({WORKERS} gunicorn workers; ms)",
            ["path", "concurrency", "requests", "req/s", "p50", "p95", "p99", "errors", ""],
            rows,
        )
        d1 = summary([x * 1000 for x in results[("direct", 1)][0]])
        a1 = summary([x * 1000 for x in results[("aibaas", 1)][0]])
        a32 = results[("aibaas", 32)]
        d32 = results[("direct", 32)]
        rps32 = len(a32[0]) / a32[2]
        over50, over99 = a1["p50"] - d1["p50"], a1["p99"] - d1["p99"]
        print(
            f"overhead at concurrency 1: p50 +{over50:.2f} ms, p99 +{over99:.2f} ms "
            f"(budget 2 / 10): {'PASS' if over50 <= 2 and over99 <= 10 else 'FAIL'}"
        )
        print(
            f"throughput at concurrency 32: {rps32:.0f} req/s through aibaas vs "
            f"{len(d32[0]) / d32[2]:.0f} direct, ratio {rps32 / (len(d32[0]) / d32[2]):.2f}, "
            f"errors {sum(a32[1].values())} (budget >= 1000, 0 errors): "
            f"{'PASS' if rps32 >= 1000 and not a32[1] else 'FAIL'}"
        )

        # The rounds above left tens of thousands of usage events for the Celery worker to drain
        # into PostgreSQL: let it finish, so that the stream rounds measure streams (both of
        # them, direct and through aibaas, on an otherwise idle machine).
        backlog = _wait_for_usage_drain(redis_url)
        print(f"(usage events still in the stream before the stream rounds: {backlog})")

        slow = dict(BODY, model="bench-fake-slow")
        # A server carrying 500 concurrent streams keeps ~500 upstream connections open and
        # reuses them; one untimed round warms aibaas's upstream pool to that steady state (the
        # load generator's own connections are new in every timed round).
        asyncio.run(_load(gateway_url, auth, slow, STREAMS, 0, stream=True, requests=STREAMS))
        # The load generator's own garbage collector, out of the timed rounds' way: what the
        # rounds above left (hundreds of thousands of latencies) would be scanned again and
        # again in the middle of a round, and the stall counted against whichever path ran.
        gc.collect()
        gc.freeze()
        # Paired rounds, direct then through aibaas: on this shared 2-core VM one round's p50
        # moves by several percent from one minute to the next, so the verdict is the median
        # of the rounds' added latency, and every round is printed.
        rows, added_by_round, errors_seen, short = [], [], 0, False
        for number in range(1, STREAM_ROUNDS + 1):
            direct = asyncio.run(
                _load(
                    direct_url,
                    plain,
                    dict(slow, model="fake-slow"),
                    STREAMS,
                    0,
                    stream=True,
                    requests=STREAMS,
                )
            )
            direct_first = _FIRST_BYTES.get(direct_url, [])
            through = asyncio.run(
                _load(gateway_url, auth, slow, STREAMS, 0, stream=True, requests=STREAMS)
            )
            through_first = _FIRST_BYTES.get(gateway_url, [])
            ds = summary([x * 1000 for x in direct[0]])
            ts = summary([x * 1000 for x in through[0]])
            for label, result, stats, first in (
                ("direct upstream", direct, ds, direct_first),
                ("through aibaas", through, ts, through_first),
            ):
                rows.append(
                    [
                        number,
                        label,
                        stats["n"],
                        f"{summary([x * 1000 for x in first])['p50']:.0f}",
                        f"{stats['p50']:.0f}",
                        f"{stats['p95']:.0f}",
                        f"{stats['p99']:.0f}",
                        sum(result[1].values()),
                    ]
                )
            errors_seen += sum(through[1].values()) + sum(direct[1].values())
            short = short or ts["n"] != STREAMS
            if ds["n"] and ts["n"]:
                added_by_round.append((ts["p50"] - ds["p50"]) / ds["p50"] * 100)
        table(
            f"{STREAMS} concurrent streams (1 s to first token, 2 s streaming; total ms), "
            f"{STREAM_ROUNDS} paired rounds",
            ["round", "path", "streams ok", "first chunk p50", "p50", "p95", "p99", "errors"],
            rows,
        )
        added = statistics.median(added_by_round) if added_by_round else float("nan")
        print(
            f"added total latency p50: median {added:.1f}% over the rounds "
            f"({', '.join(f'{a:.1f}%' for a in added_by_round)}) (budget <= 5%, 0 errors): "
            f"{'PASS' if added <= 5 and not errors_seen and not short else 'FAIL'}"
        )
