"""The per-IP layer (metering/ip_limit.py): django-ratelimit's rate syntax, the sliding estimate
over two windows, in the process and on Redis, and the fallback when Redis is unreachable."""

import asyncio
import logging
import uuid

import pytest

from metering import ip_limit, limiter
from tests.metering import limiter_calls as calls
from tests.servers import free_port

MINUTE = 60_000
T0 = 1_800_000_000_000 - (1_800_000_000_000 % MINUTE)  # a window's first millisecond


@pytest.fixture(autouse=True)
def _fresh():
    ip_limit.reset_state()
    limiter.reset_state()
    yield
    ip_limit.reset_state()
    limiter.reset_state()


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request, settings):
    if request.param == "local":
        settings.REDIS_URL = ""
    settings.GATEWAY_IP_RATE = "10/m"
    return request.param


@pytest.fixture
def ip() -> str:
    return f"2001:db8:{uuid.uuid4().hex[:4]}:{uuid.uuid4().hex[:4]}::1"


def checks(ip: str, times: list[int]) -> list[int]:
    async def run():
        return [await calls.ip_check(ip, now_ms=t) for t in times]

    return asyncio.run(run())


@pytest.mark.parametrize(
    ("rate", "parsed"),
    [
        ("6000/m", (6000, 60)),
        ("5/10s", (5, 10)),
        ("100/h", (100, 3600)),
        ("2/d", (2, 86400)),
        (" 7 / 2m ", (7, 120)),
        ("", None),
        ("   ", None),
    ],
)
def test_rates_are_django_ratelimits_syntax(rate, parsed):
    assert ip_limit.parse_rate(rate) == parsed


@pytest.mark.parametrize("rate", ["lots", "3", "10/w", "-1/m", "10/0s", "1.5/m"])
def test_a_bad_rate_is_refused(rate):
    with pytest.raises(ValueError, match="not a rate"):
        ip_limit.parse_rate(rate)


def test_the_limit_admits_exactly_its_rate_in_a_window(backend, ip):
    verdicts = checks(ip, [T0 + i * 1000 for i in range(12)])
    assert [v == 0 for v in verdicts] == [True] * 10 + [False] * 2
    assert all(v >= 1 for v in verdicts[10:])


def test_the_previous_window_weighs_on_the_next_one_so_no_2x_at_its_edge(backend, ip):
    # 10 at the very end of a window, then at the start of the next: still 10 in the last
    # minute, so refused; half a minute later half of them have aged out of the estimate.
    late = [T0 + MINUTE - 100 + i for i in range(10)]
    verdicts = checks(ip, [*late, T0 + MINUTE + 10, T0 + MINUTE + 30_000, T0 + MINUTE + 30_001])
    assert [v == 0 for v in verdicts] == [True] * 10 + [False, True, True]


def test_a_refusal_says_when_the_estimate_is_back_under_the_limit(backend, ip):
    verdicts = checks(ip, [*[T0 + i for i in range(10)], T0 + 20_000])
    # This window's 11 (the refused one counts too) only age out as previous-window weight.
    assert 40 <= verdicts[-1] <= 60 + 6


def test_addresses_are_counted_apart(backend, ip):
    checks(ip, [T0 + i for i in range(10)])
    other_network = ip.replace("2001:db8:", "2001:db9:", 1)
    assert checks(other_network, [T0 + 20])[0] == 0


def test_no_address_or_no_rate_is_never_limited(settings, ip):
    settings.GATEWAY_IP_RATE = ""
    assert checks(ip, [T0 + i for i in range(100)]) == [0] * 100
    settings.GATEWAY_IP_RATE = "1/m"
    assert asyncio.run(calls.ip_check(None)) == 0


@pytest.mark.redis
def test_an_unreachable_redis_falls_back_to_counting_in_the_process(settings, ip, caplog):
    caplog.set_level(logging.ERROR, logger="metering.limiter")
    settings.GATEWAY_IP_RATE = "3/m"
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    verdicts = checks(ip, [T0 + i for i in range(5)])
    assert [v == 0 for v in verdicts] == [True, True, True, False, False]
    assert limiter.backend_status()["backend"] == "local"
    assert "Redis unreachable" in caplog.text


def test_an_address_is_counted_once_whatever_its_spelling(backend):
    checks("192.0.2.77", [T0 + i for i in range(5)])
    verdicts = checks("::ffff:192.0.2.77", [T0 + 10 + i for i in range(7)])
    assert [v == 0 for v in verdicts] == [True] * 5 + [False] * 2


def test_a_forwarded_header_that_is_no_address_is_still_counted_and_kept_short(backend):
    garbage = "not-an-address," + "x" * 5000
    verdicts = checks(garbage, [T0 + i for i in range(12)])
    assert [v == 0 for v in verdicts] == [True] * 10 + [False] * 2
    assert len(ip_limit._key(ip_limit._address(garbage), 1)) < 100


def test_ipv6_addresses_of_one_64_network_share_a_budget(backend, ip):
    """One customer line gets a whole /64: cycling through it does not escape the layer."""
    network = ip.rsplit("::", 1)[0]
    neighbours = [f"{network}:{i:x}:{i:x}:{i:x}:{i:x}" for i in range(11)]
    verdicts = [checks(address, [T0 + i])[0] for i, address in enumerate(neighbours)]
    assert verdicts[:10] == [0] * 10
    assert verdicts[10] >= 1


def test_the_ipv6_mask_is_django_ratelimits_setting(backend, ip, settings):
    settings.RATELIMIT_IPV6_MASK = 128
    network = ip.rsplit("::", 1)[0]
    neighbours = [f"{network}:{i:x}:{i:x}:{i:x}:{i:x}" for i in range(11)]
    assert all(checks(address, [T0])[0] == 0 for address in neighbours)
