"""A serving process killed with kill -9 mid-stream: each of its admitted requests still gets
exactly one usage event, `interrupted` (599), written by a survivor within a bounded time
(issue 10, item 3; metering/usage/inflight.py and metering/usage/reaper.py).

The production start command with 2 workers, PostgreSQL, a private Redis run with
deploy/redis.conf. 16 slow streams; once each has delivered tokens (and the registry has
checkpointed them), the worker holding the most of them is killed -9 (its pid is in its
registry's name). Then, within BOUND_SECONDS: every stream on the dead worker has one event,
status 599, its input tokens, output tokens between its last checkpoint and what the client
received; every stream on the surviving worker has its normal event (200, every token).

On the way, the registry is deleted from Redis (as a Redis restarted without its data would
lose it): the workers' heartbeats write it again.

Twice: with a broker (Celery's drain task reaps; here on a thread of the test) and without
(the surviving worker reaps after its heartbeat).
"""

import json
import os
import signal
import threading
import time

import httpx
import pytest
import redis

from aibaas.gateway.tokenizer import count_chat_tokens
from metering.models import UsageEvent
from metering.usage.inflight import HEARTBEAT_SECONDS, PROCESSES_KEY, keys_of
from metering.usage.reaper import INTERRUPTED, INTERRUPTED_STATUS
from tests.metering.durability.production import Drainer, assert_reconciled, worker_pids
from tests.servers import production_server

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]

STREAMS = 16
MESSAGES = [{"role": "user", "content": "Tell me a long story about durable billing"}]
BODY = {"model": "demo-chat", "messages": MESSAGES, "stream": True, "max_tokens": 400}
TOKEN_DELAY = 0.05
DELIVERED_BEFORE_KILL = 30  # tokens each stream has received (1.5 s: checkpoints were taken)
TTL_SECONDS = 10.0  # USAGE_INFLIGHT_TTL_SECONDS: its production default
BOUND_SECONDS = TTL_SECONDS + 8.0  # the TTL, a beat, a reaper's period, the drain
SERVER_ENV = {"GATEWAY_IP_RATE": "", "DEMO_TOKEN_DELAY_SECONDS": str(TOKEN_DELAY)}


class Stream:
    """One streaming request on a thread: its request id and the tokens it received."""

    def __init__(self, base: str, key: str) -> None:
        self.base, self.key = base, key
        self.request_id: str | None = None
        self.delivered = 0
        self.finished = False
        self.broken = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        try:
            with httpx.stream(
                "POST", f"{self.base}/v1/chat/completions", json=BODY, headers=headers, timeout=60
            ) as response:
                self.request_id = response.headers["x-request-id"]
                for line in response.iter_lines():
                    if line == "data: [DONE]":
                        self.finished = True
                    elif line.startswith("data: {"):
                        choices = json.loads(line[6:]).get("choices") or [{}]
                        if choices[0].get("delta", {}).get("content"):
                            self.delivered += 1
        except httpx.TransportError:
            self.broken = True


def _wait(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _registered(control: redis.Redis) -> dict[str, str]:
    """Live processes' registries: request id → process name."""
    where = {}
    for process in control.smembers(PROCESSES_KEY):
        inflight, _, _ = keys_of(process.decode())
        for request_id in control.hkeys(inflight):
            where[request_id.decode()] = process.decode()
    return where


@pytest.mark.parametrize("reaper", ["celery", "surviving worker"])
def test_worker_killed_mid_stream_leaves_one_interrupted_event_per_stream(
    settings, private_redis, metered_key, reaper
):
    settings.REDIS_URL = private_redis.url
    env = {**SERVER_ENV, "REDIS_URL": private_redis.url, "CELERY_BROKER_URL": None}
    if reaper == "celery":
        settings.CELERY_BROKER_URL = env["CELERY_BROKER_URL"] = private_redis.url
    else:
        settings.CELERY_BROKER_URL = ""
    control = redis.Redis.from_url(private_redis.url)
    drainer = Drainer(every=1.0) if reaper == "celery" else None
    with production_server(extra_env=env) as server:
        _wait(lambda: len(control.smembers(PROCESSES_KEY)) == 2, 30, "both workers' registries")
        streams = [Stream(server.url, metered_key) for _ in range(STREAMS)]
        _wait(lambda: all(s.delivered >= DELIVERED_BEFORE_KILL for s in streams), 30, "the streams")
        # A Redis that lost the registry (restarted without its data): each process's next
        # heartbeat writes its markers and checkpoints again.
        control.delete(*control.keys("aibaas:{usage}:*"))
        ids = {s.request_id for s in streams}
        _wait(lambda: ids <= set(_registered(control)), 5 * HEARTBEAT_SECONDS, "re-registration")
        where = _registered(control)
        by_process: dict[str, list[Stream]] = {}
        for stream in streams:
            by_process.setdefault(where[stream.request_id], []).append(stream)
        victim = max(by_process, key=lambda process: len(by_process[process]))
        pid = int(victim.split(":")[1])
        assert pid in worker_pids(server.pid)
        _, progress, _ = keys_of(victim)
        checkpoints = {k.decode(): int(v) for k, v in control.hgetall(progress).items()}
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        dead = by_process[victim]
        survivors = [s for s in streams if s not in dead]
        if drainer is not None:
            drainer.__enter__()
        try:
            for stream in streams:
                stream.thread.join(timeout=60)
            _wait(
                lambda: UsageEvent.objects.filter(request_id__in=ids).count() == STREAMS,
                BOUND_SECONDS - (time.monotonic() - killed),
                "an event for every stream",
            )
        finally:
            if drainer is not None:
                drainer.__exit__()

        def registries_clean() -> bool:
            # The dead worker's registry is gone (the reaper removes it after writing the
            # events); the others hold no finished request (a marker goes just after an event
            # written to the database directly).
            processes = {p.decode() for p in control.smembers(PROCESSES_KEY)}
            return victim not in processes and not any(
                control.hlen(keys_of(process)[0]) for process in processes
            )

        _wait(registries_clean, 5.0, "the registries to be clean")
    control.close()

    events = {e.request_id: e for e in UsageEvent.objects.filter(request_id__in=ids)}
    assert len(events) == STREAMS  # request ids are unique: one each, none doubled
    prompt = count_chat_tokens(MESSAGES)
    for stream in dead:
        event = events[stream.request_id]
        assert stream.broken and not stream.finished
        assert (event.status_code, event.error_code, event.billable) == (
            INTERRUPTED_STATUS,
            INTERRUPTED,
            True,
        )
        assert event.input_tokens == prompt
        assert checkpoints[stream.request_id] > 0
        assert checkpoints[stream.request_id] <= event.output_tokens <= stream.delivered
    for stream in survivors:
        event = events[stream.request_id]
        assert stream.finished
        assert (event.status_code, event.output_tokens) == (200, stream.delivered)
    assert_reconciled()
