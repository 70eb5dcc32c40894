"""GET /v1/key, and what any header value whatsoever gets from it: 401 JSON, never 500 or 200."""

import random
import time
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from billing.models import Plan
from keys import format as key_format
from keys import verification
from keys.verification import MISSING_KEY_MESSAGE
from tests.keys.conftest import bearer

pytestmark = pytest.mark.django_db

# A malformed key is refused by its format alone: no SQL and no argon2, which the fuzz tests
# assert exactly. The time bound is loose (a busy 2-core machine shares it with other test
# runs); it catches a pathological path such as regex backtracking on a 10 kB header.
FAST_SECONDS = 1.0


@pytest.fixture
def argon2_runs(monkeypatch) -> list[str]:
    runs: list[str] = []
    original = verification.check_key_hash

    def spy(raw: str, encoded: str) -> bool:
        runs.append(raw[8:20])
        return original(raw, encoded)

    monkeypatch.setattr(verification, "check_key_hash", spy)
    return runs


def get_key(client: Client, **headers):
    return client.get("/v1/key", **headers)


def assert_401(response, code: str = "invalid_api_key") -> dict:
    assert response.status_code == 401, (response.status_code, response.content[:300])
    assert response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) >= {"type", "code", "message", "param"}
    assert (error["type"], error["code"]) == ("authentication_error", code)
    assert response["WWW-Authenticate"].startswith("Bearer")
    return error


# --- the calling key -------------------------------------------------------------------------


def test_v1_key_describes_the_calling_key(make_key, org, api_client):
    expires = (timezone.now() + timedelta(days=30)).replace(microsecond=0)
    issued = make_key(
        org,
        name="prod",
        scopes=["usage:read", "inference"],
        models=["demo-small"],
        requests_per_minute=5,
        expires_at=expires,
    )
    response = get_key(api_client, **bearer(issued.raw_key))
    assert response.status_code == 200
    body = response.json()
    plan = Plan.objects.get(slug="free")
    assert body == {
        "object": "api_key",
        "id": issued.api_key.key_id,
        "name": "prod",
        "organization": org.slug,
        "plan": "free",
        "scopes": ["inference", "usage:read"],
        "models": ["demo-small"],
        "expires_at": expires.isoformat().replace("+00:00", "Z"),
        "test_mode": False,
        "limits": {
            "requests_per_minute": 5,
            "requests_per_day": plan.requests_per_day,
            "tokens_per_minute": plan.tokens_per_minute,
            "tokens_per_day": plan.tokens_per_day,
            "monthly_request_quota": plan.monthly_request_quota,
            "monthly_token_quota": plan.monthly_token_quota,
            "burst_percent": 0,
            "burst_seconds": 10,
        },
        # Nothing used yet: every limit remains whole, and nothing is waiting to free up.
        "remaining": {
            "requests_per_minute": 5,
            "requests_per_day": plan.requests_per_day,
            "tokens_per_minute": plan.tokens_per_minute,
            "tokens_per_day": plan.tokens_per_day,
            "monthly_request_quota": plan.monthly_request_quota,
            "monthly_token_quota": plan.monthly_token_quota,
        },
        "reset_seconds": {
            "requests_per_minute": 0,
            "requests_per_day": 0,
            "tokens_per_minute": 0,
            "tokens_per_day": 0,
            "monthly_request_quota": body["reset_seconds"]["monthly_request_quota"],
            "monthly_token_quota": body["reset_seconds"]["monthly_token_quota"],
        },
        "billing": None,  # no failed payment (tests/billing/test_grace.py)
    }
    assert 0 < body["reset_seconds"]["monthly_request_quota"] <= 31 * 86400
    assert response["X-RateLimit-Limit"] == "5" and response["X-RateLimit-Remaining"] == "5"
    assert issued.raw_key not in response.content.decode()


def test_v1_key_without_expiry_or_allow_list_has_nulls(issued, api_client):
    body = get_key(api_client, **bearer(issued.raw_key)).json()
    assert (body["expires_at"], body["models"]) == (None, None)


def test_v1_key_of_a_test_key_says_test_mode(make_key, org, api_client):
    issued = make_key(org, test_mode=True)
    assert get_key(api_client, **bearer(issued.raw_key)).json()["test_mode"] is True


def test_v1_key_accepts_the_x_api_key_header(issued, api_client):
    response = get_key(api_client, HTTP_X_API_KEY=issued.raw_key)
    assert response.status_code == 200
    assert response.json()["id"] == issued.api_key.key_id


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_bearer_scheme_is_case_insensitive(issued, api_client, scheme):
    response = get_key(api_client, HTTP_AUTHORIZATION=f"{scheme} {issued.raw_key}")
    assert response.status_code == 200


def test_any_scope_may_read_v1_key(make_key, org, api_client):
    issued = make_key(org, scopes=["usage:read"])
    assert get_key(api_client, **bearer(issued.raw_key)).status_code == 200


def test_v1_key_ignores_a_dashboard_session(owner_client):
    assert_401(owner_client.get("/v1/key"))


# --- refusals --------------------------------------------------------------------------------


def test_missing_key_is_401_saying_how_to_send_one(db, api_client):
    error = assert_401(get_key(api_client))
    assert error["message"] == MISSING_KEY_MESSAGE
    assert "Authorization: Bearer" in error["message"]
    assert "X-API-Key" in error["message"]
    assert error["param"] is None


def test_revoked_key_is_401_key_revoked(issued, api_client, owner_client):
    owner_client.post(f"/api/keys/{issued.api_key.key_id}/revoke", content_type="application/json")
    error = assert_401(get_key(api_client, **bearer(issued.raw_key)), "key_revoked")
    assert "revoked" in error["message"]


def test_expired_key_is_401_key_expired(make_key, org, api_client, time_machine):
    now = timezone.now()
    issued = make_key(org, expires_at=now + timedelta(days=1))
    assert get_key(api_client, **bearer(issued.raw_key)).status_code == 200
    time_machine.move_to(now + timedelta(days=1, seconds=1), tick=False)
    assert_401(get_key(api_client, **bearer(issued.raw_key)), "key_expired")


def test_wrong_secret_for_a_real_key_id_is_401_invalid_api_key(issued, api_client):
    forged = key_format.generate(key_id=issued.api_key.key_id).raw
    assert_401(get_key(api_client, **bearer(forged)))


def test_unknown_well_formed_key_is_401_invalid_api_key(db, api_client):
    assert_401(get_key(api_client, **bearer(key_format.generate().raw)))


# --- fuzz ------------------------------------------------------------------------------------

VALID_LOOKING = "sk_live_" + "A1b2C3d4E5f6" + "_" + "x" * 43 + "000000"
LATIN1 = bytes(range(0x80, 0x100)).decode("latin-1")

FUZZ_VALUES = {
    "empty": "",
    "space": " ",
    "whitespace": " \t  ",
    "bearer-alone": "Bearer",
    "bearer-space": "Bearer ",
    "bearer-spaces": "Bearer      ",
    "bearer-tab": "Bearer\t",
    "bearer-10kB": "Bearer " + "A" * 10_240,
    "bearer-10kB-key-prefix": "Bearer sk_live_" + "a" * 10_240,
    "raw-10kB": "x" * 10_240,
    "latin1": "Bearer " + LATIN1,
    "latin1-raw": LATIN1 * 3,
    "emoji": "Bearer 🔑🔑🔑" + "🙂" * 60,
    "rtl": "Bearer \u202esk_live_\u05d0\u05d1\u05d2" + "\u0627" * 60,
    "zero-width": "Bearer sk_live_\u200b" + "a" * 61,
    "control-chars": "Bearer \x01\x02\x03\x1b[31m\x7f",
    "sql": "Bearer ' OR 1=1 --",
    "sql-union": "Bearer sk_live_' UNION SELECT key_hash FROM keys_apikey --",
    "sql-in-key-shape": "Bearer sk_live_' OR '1'='1_" + "x" * 50,
    "percent": "Bearer %00%27%22",
    "bad-checksum": "Bearer " + VALID_LOOKING,
    "basic": "Basic dXNlcjpwYXNz",
    "basic-xxx": "Basic xxx",
    "token-scheme": "Token sk_live_abc",
    "lowercase-bearer-garbage": "bearer garbage",
    "double-bearer": "Bearer Bearer sk_live_x",
    "json": 'Bearer {"key": "sk_live_x"}',
    "newline": "Bearer sk_live_\r\nX-Injected: 1",
}


@pytest.mark.parametrize("header", ["HTTP_AUTHORIZATION", "HTTP_X_API_KEY"])
@pytest.mark.parametrize("value", FUZZ_VALUES.values(), ids=FUZZ_VALUES.keys())
def test_fuzzed_header_is_401_json_quickly(
    db, api_client, header, value, django_assert_num_queries, argon2_runs
):
    if header == "HTTP_X_API_KEY" and value.startswith(("Bearer", "bearer")):
        value = value.partition(" ")[2] or value
    started = time.perf_counter()
    with django_assert_num_queries(0):
        response = get_key(api_client, **{header: value})
    elapsed = time.perf_counter() - started
    assert_401(response)
    assert elapsed < FAST_SECONDS
    assert argon2_runs == []


@pytest.mark.parametrize(
    "mangle",
    [
        lambda raw: f"Bearer {raw}x",
        lambda raw: f"Bearer {raw} garbage",
        lambda raw: f"Bearer {raw},{raw}",
        lambda raw: f"Bearer {raw}\x00",
        lambda raw: f"Bearer {raw[:-1]}",
        lambda raw: f"Bearer {raw.upper()}",
        lambda raw: f"Bearer {raw.replace('sk_live_', 'sk_test_')}",
        lambda raw: f"Bearer {raw[:30]}é{raw[31:]}",
        lambda raw: f"Basic {raw}",
        lambda raw: f"{raw}",
        lambda raw: f"Bearer{raw}",
    ],
    ids=[
        "trailing-char",
        "trailing-word",
        "twice",
        "trailing-nul",
        "truncated",
        "uppercased",
        "live-as-test",
        "accent-inside",
        "basic-scheme",
        "no-scheme",
        "no-space",
    ],
)
def test_a_valid_key_mangled_in_the_header_is_401(
    issued, api_client, mangle, django_assert_num_queries, argon2_runs
):
    with django_assert_num_queries(0):
        response = get_key(api_client, HTTP_AUTHORIZATION=mangle(issued.raw_key))
    assert_401(response)
    assert argon2_runs == []


def test_an_unknown_scheme_falls_back_to_x_api_key(issued, api_client):
    response = get_key(
        api_client, HTTP_AUTHORIZATION="Basic dXNlcjpwYXNz", HTTP_X_API_KEY=issued.raw_key
    )
    assert response.status_code == 200


def test_300_random_header_values_all_get_401_json(db, api_client, argon2_runs):
    rng = random.Random(20240603)
    pools = [
        "".join(chr(c) for c in range(0x20, 0x7F)),  # printable ASCII
        LATIN1,
        "\u202e\u200b\u05d0\u0627\u4e2d\u6587🔑🙂\ufeff\u2028",  # RTL, zero-width, CJK, emoji
        "".join(chr(c) for c in range(1, 0x20)),  # control characters, no NUL
        key_format.ALPHABET + "_",
    ]
    slowest = 0.0
    for round_ in range(300):
        length = rng.choice([0, 1, 2, 8, 69, 70, 71, rng.randint(0, 3000)])
        pool = "".join(rng.sample(pools, rng.randint(1, len(pools))))
        value = "".join(rng.choice(pool) for _ in range(length))
        if round_ % 3 == 0:  # key-shaped: passes the pattern, fails the checksum
            value = "sk_live_" + "".join(rng.choice(key_format.ALPHABET) for _ in range(12))
            value += "_" + "".join(rng.choice(key_format.ALPHABET) for _ in range(49))
        header = rng.choice(["HTTP_AUTHORIZATION", "HTTP_X_API_KEY"])
        if header == "HTTP_AUTHORIZATION" and rng.random() < 0.7:
            value = rng.choice(["Bearer ", "bearer ", "Bearer  ", ""]) + value
        started = time.perf_counter()
        response = get_key(api_client, **{header: value})
        slowest = max(slowest, time.perf_counter() - started)
        assert response.status_code == 401, (round_, repr(value[:80]), response.content[:200])
        assert response.json()["error"]["code"] == "invalid_api_key", repr(value[:80])
    assert argon2_runs == []
    assert slowest < FAST_SECONDS
