"""The API key format. Pure functions, no Django, no I/O.

    sk_live_<key id: 12>_<secret: 43><checksum: 6>      (70 characters)
    sk_test_...                                          (test mode: demo models only)

All parts are base62 (0-9, A-Z, a-z). The key id is public (it names the key in lists, logs
and audit events, and is how a key is looked up: no table scan, ever). The secret is 32 bytes
from `secrets` (256 bits). The checksum is CRC32 of everything before it, in base62, so a
truncated or mistyped key is refused before any cache or database access, and secret scanners
can tell a real aibaas key from look-alike noise (the same idea as GitHub's token format).
"""

import re
import secrets
import zlib
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote_plus

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
LIVE_PREFIX = "sk_live_"
TEST_PREFIX = "sk_test_"
KEY_ID_LENGTH = 12
SECRET_BYTES = 32
SECRET_LENGTH = 43  # ceil(256 / log2(62))
CHECKSUM_LENGTH = 6  # 62**6 > 2**32
KEY_LENGTH = len(LIVE_PREFIX) + KEY_ID_LENGTH + 1 + SECRET_LENGTH + CHECKSUM_LENGTH

KEY_PATTERN = re.compile(
    rf"sk_(live|test)_([0-9A-Za-z]{{{KEY_ID_LENGTH}}})_"
    rf"[0-9A-Za-z]{{{SECRET_LENGTH}}}([0-9A-Za-z]{{{CHECKSUM_LENGTH}}})"
)
KEY_ID_PATTERN = re.compile(rf"[0-9A-Za-z]{{{KEY_ID_LENGTH}}}")
# A key's prefix anywhere in a URL's query, in any letter case.
_PREFIX_IN_QUERY = re.compile(r"sk_(?:live|test)_", re.IGNORECASE)
# Query parameters that carry a key by convention; `key` may only name one (/api/usage?key=).
KEY_QUERY_PARAMETERS = frozenset({"api_key", "apikey", "api-key", "x-api-key", "access_key"})


@dataclass(frozen=True, slots=True)
class ParsedKey:
    raw: str
    key_id: str
    test_mode: bool


def _base62(number: int, length: int) -> str:
    chars = []
    for _ in range(length):
        number, rest = divmod(number, 62)
        chars.append(ALPHABET[rest])
    if number:
        raise ValueError("number does not fit")
    return "".join(reversed(chars))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), CHECKSUM_LENGTH)


def new_key_id() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(KEY_ID_LENGTH))


def generate(*, key_id: str | None = None, test_mode: bool = False) -> ParsedKey:
    """A new random key. `key_id` may be given (rotation keeps nothing but the settings)."""
    key_id = key_id or new_key_id()
    secret = _base62(int.from_bytes(secrets.token_bytes(SECRET_BYTES), "big"), SECRET_LENGTH)
    body = f"{TEST_PREFIX if test_mode else LIVE_PREFIX}{key_id}_{secret}"
    return ParsedKey(raw=body + _checksum(body), key_id=key_id, test_mode=test_mode)


def parse(raw: str) -> ParsedKey | None:
    """The parts of a well-formed key, or None. Costs microseconds; touches nothing else."""
    if len(raw) != KEY_LENGTH:
        return None
    match = KEY_PATTERN.fullmatch(raw)
    if match is None:
        return None
    if _checksum(raw[:-CHECKSUM_LENGTH]) != match.group(3):
        return None
    return ParsedKey(raw=raw, key_id=match.group(2), test_mode=match.group(1) == "test")


def hint(raw: str) -> str:
    """A non-secret reminder for lists: prefix, 4 characters of the key id, last 4 characters."""
    prefix = raw[: len(LIVE_PREFIX)]
    return f"{prefix}{raw[len(prefix) : len(prefix) + 4]}…{raw[-4:]}"


def key_in_query(query: str) -> bool:
    """Whether a URL's query string carries an API key: anything shaped like one (sk_live_...,
    sk_test_..., percent-encoded or not), a parameter named like one (`api_key`, `apikey`, ...),
    or a `key` whose value is not a key's public id or number. The empty query costs nothing."""
    if not query:
        return False
    if _PREFIX_IN_QUERY.search(unquote_plus(query)):
        return True
    for name, value in parse_qsl(query, keep_blank_values=True):
        name = name.strip().lower()
        if name in KEY_QUERY_PARAMETERS:
            return True
        if name == "key" and value and not (KEY_ID_PATTERN.fullmatch(value) or value.isdigit()):
            return True
    return False
