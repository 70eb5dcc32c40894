"""The HTTP load generator of the gateway bench (aiohttp): a fixed concurrency for a duration or
a number of requests, or two targets alternating one request at a time."""

import asyncio
import json
import time
from dataclasses import dataclass, field

import aiohttp

from aibaas.bench.stats import summary

TIMEOUT = aiohttp.ClientTimeout(total=120)


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)  # seconds, of the 200s
    errors: dict[str, int] = field(default_factory=dict)  # status or exception name -> count
    elapsed: float = 0.0
    first_bytes: list[float] = field(default_factory=list)  # streams: to the first chunk

    def error(self, key: str) -> None:
        self.errors[key] = self.errors.get(key, 0) + 1

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed

    def ms(self) -> dict:
        return summary([x * 1000 for x in self.latencies])


async def _one(session, url, payload, headers, result: Result, stream: bool) -> None:
    started = time.perf_counter()
    try:
        async with session.post(url, data=payload, headers=headers) as response:
            if stream:
                await response.content.readany()
                result.first_bytes.append(time.perf_counter() - started)
            await response.read()
            if response.status != 200:
                result.error(str(response.status))
                return
    except (aiohttp.ClientError, TimeoutError) as error:
        result.error(type(error).__name__)
        return
    result.latencies.append(time.perf_counter() - started)


async def load(
    url: str,
    headers: dict,
    body: dict,
    concurrency: int,
    duration: float,
    stream: bool = False,
    requests: int | None = None,
) -> Result:
    """`concurrency` clients posting `body` for `duration` seconds (or `requests` in all)."""
    result = Result()
    payload = json.dumps(dict(body, stream=stream)).encode()
    deadline = time.monotonic() + duration
    remaining = [requests] if requests is not None else None
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as session:

        async def client() -> None:
            while True:
                if remaining is not None:
                    if remaining[0] <= 0:
                        return
                    remaining[0] -= 1
                elif time.monotonic() >= deadline:
                    return
                await _one(session, url, payload, headers, result, stream)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        result.elapsed = time.perf_counter() - started
    return result


async def alternate(first: tuple, second: tuple, duration: float) -> tuple[Result, Result]:
    """One client at a time, alternating between two (url, headers, body): the result of each
    (the pair runs for twice `duration`)."""
    targets = [(url, headers, json.dumps(body).encode()) for url, headers, body in (first, second)]
    results = (Result(), Result())
    deadline = time.monotonic() + 2 * duration
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as session:
        started = time.perf_counter()
        i = 0
        while time.monotonic() < deadline:
            url, headers, payload = targets[i % 2]
            await _one(session, url, payload, headers, results[i % 2], stream=False)
            i += 1
        for result in results:
            result.elapsed = (time.perf_counter() - started) / 2
    return results
