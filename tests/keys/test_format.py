"""The key format: sk_live_<key id>_<secret><checksum>, refused on any typo before any I/O."""

import re
import string
import zlib

import pytest

from infra.logs import REDACTED, redact_stored
from keys import format as key_format

ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase
KEY_RE = re.compile(r"sk_(live|test)_([0-9A-Za-z]{12})_([0-9A-Za-z]{43})([0-9A-Za-z]{6})")


def _base62(number: int, length: int) -> str:
    digits = []
    for _ in range(length):
        number, rest = divmod(number, 62)
        digits.append(ALPHABET[rest])
    return "".join(reversed(digits))


def with_checksum(body: str) -> str:
    """`body` + its CRC32 in 6 base62 digits: how a secret scanner recognises a real key."""
    return body + _base62(zlib.crc32(body.encode()), 6)


@pytest.fixture
def raw() -> str:
    return key_format.generate().raw


def test_generated_key_parses_back_to_its_key_id():
    key = key_format.generate()
    parsed = key_format.parse(key.raw)
    assert parsed == key
    assert parsed.key_id == key.raw[8:20]
    assert parsed.test_mode is False


def test_live_key_layout_is_prefix_key_id_secret_checksum():
    raw = key_format.generate().raw
    match = KEY_RE.fullmatch(raw)
    assert match is not None, raw
    assert match.group(1) == "live"
    assert len(raw) == key_format.KEY_LENGTH == 70


def test_test_mode_key_has_the_test_prefix_and_parses_as_test_mode():
    key = key_format.generate(test_mode=True)
    assert key.raw.startswith("sk_test_")
    assert key_format.parse(key.raw).test_mode is True


def test_live_key_has_the_live_prefix():
    assert key_format.generate(test_mode=False).raw.startswith("sk_live_")


def test_checksum_is_crc32_of_everything_before_it_in_base62(raw):
    assert with_checksum(raw[:-6]) == raw


def test_every_key_has_a_fresh_key_id_and_secret():
    keys = [key_format.generate() for _ in range(200)]
    assert len({k.key_id for k in keys}) == 200
    assert len({KEY_RE.fullmatch(k.raw).group(3) for k in keys}) == 200


def test_secret_carries_at_least_256_bits_of_randomness():
    # 43 base62 digits hold 256 bits; the first digit varies too (no fixed leading zeros).
    secrets_ = [KEY_RE.fullmatch(key_format.generate().raw).group(3) for _ in range(300)]
    assert {len(s) for s in secrets_} == {43}
    assert len({s[0] for s in secrets_}) > 1
    assert 62**43 >= 2**256


def test_a_given_key_id_is_kept():
    key = key_format.generate(key_id="ABCDEFabcdef")
    assert key.key_id == "ABCDEFabcdef"
    assert key_format.parse(key.raw).key_id == "ABCDEFabcdef"


@pytest.mark.parametrize("test_mode", [False, True], ids=["live", "test"])
def test_hint_shows_prefix_four_key_id_chars_and_last_four(test_mode):
    raw = key_format.generate(test_mode=test_mode).raw
    hint = key_format.hint(raw)
    prefix = "sk_test_" if test_mode else "sk_live_"
    assert re.fullmatch(re.escape(prefix) + r"[0-9A-Za-z]{4}…[0-9A-Za-z]{4}", hint), hint
    assert hint == f"{prefix}{raw[8:12]}…{raw[-4:]}"


def test_hint_reveals_nothing_of_the_secret(raw):
    match = KEY_RE.fullmatch(raw)
    hint = key_format.hint(raw)
    # Built from the public key id and the checksum only: not one character of the secret.
    assert hint[8:12] == match.group(2)[:4]
    assert hint[-4:] == match.group(4)[-4:]
    assert len(hint) == len("sk_live_") + 4 + 1 + 4
    assert key_format.parse(hint) is None


def test_every_single_character_substitution_is_refused(raw):
    refused = 0
    for position, original in enumerate(raw):
        for replacement in ALPHABET + "_-. ":
            if replacement == original:
                continue
            mutated = raw[:position] + replacement + raw[position + 1 :]
            assert key_format.parse(mutated) is None, (position, replacement)
            refused += 1
    assert refused > 70 * 60


def test_every_truncation_is_refused(raw):
    for length in range(len(raw)):
        assert key_format.parse(raw[:length]) is None, length
    for start in range(1, len(raw)):
        assert key_format.parse(raw[start:]) is None, start


def test_every_single_extra_character_is_refused(raw):
    for position in range(len(raw) + 1):
        for extra in "0aZ_ ":
            assert key_format.parse(raw[:position] + extra + raw[position:]) is None, position


def test_every_single_deleted_character_is_refused(raw):
    for position in range(len(raw)):
        assert key_format.parse(raw[:position] + raw[position + 1 :]) is None, position


def test_swapping_two_adjacent_characters_is_refused(raw):
    for position in range(len(raw) - 1):
        if raw[position] == raw[position + 1]:
            continue
        swapped = raw[:position] + raw[position + 1] + raw[position] + raw[position + 2 :]
        assert key_format.parse(swapped) is None, position


@pytest.mark.parametrize(
    "prefix",
    [
        "sk_prod_",
        "sk_demo_",
        "pk_live_",
        "SK_LIVE_",
        "sk_Live_",
        "sk-live-",
        "rk_test_",
        "sk_lve__",
    ],
)
def test_wrong_prefix_is_refused_even_with_a_matching_checksum(raw, prefix):
    forged = with_checksum(prefix + raw[8:-6])
    assert len(forged) == len(raw)
    assert key_format.parse(forged) is None


@pytest.mark.parametrize(
    "body",
    [
        "sk_live_" + "A" * 11 + "_" + "b" * 44,  # key id one short, secret one long
        "sk_live_" + "A" * 13 + "_" + "b" * 42,  # key id one long
        "sk_live_" + "A" * 12 + "-" + "b" * 43,  # wrong separator
        "sk_live_" + "A" * 12 + "b" * 44,  # no separator
        "sk_live_" + "A" * 11 + "é_" + "b" * 43,  # non-ASCII letter
        "sk_live_" + "A" * 12 + "_" + "b" * 42 + "+",  # base64, not base62
    ],
)
def test_wrong_shape_is_refused_even_with_a_matching_checksum(body):
    assert key_format.parse(with_checksum(body)) is None


@pytest.mark.parametrize(
    "value",
    [
        "",
        " ",
        "sk_live_",
        "sk_test_",
        "Bearer sk_live_",
        "\x00" * 70,
        "é" * 70,
        "٣" * 70,  # Unicode digits are not base62 digits
        "' OR 1=1 --" + "x" * 59,
        "sk_live_" + "x" * 10_000,
    ],
)
def test_garbage_is_refused(value):
    assert key_format.parse(value) is None


def test_surrounding_whitespace_is_not_part_of_a_key(raw):
    assert key_format.parse(f" {raw}") is None
    assert key_format.parse(f"{raw}\n") is None


def test_unicode_lookalike_digits_with_a_matching_length_are_refused(raw):
    # Full-width digits match \d in Python regexes but are not base62.
    forged = raw[:20] + "\uff10" + raw[21:]
    assert key_format.parse(forged) is None


@pytest.mark.parametrize(
    "template",
    ["{key}", "revoking {key} now", "leaked:{key}.", "{key}{key}", "first half: {half}"],
)
def test_redact_removes_keys_and_key_fragments_from_free_text(raw, template):
    text = template.format(key=raw, half=raw[:40])
    redacted = redact_stored(text)
    assert raw[21:29] not in redacted
    assert REDACTED in redacted


@pytest.mark.parametrize(
    "text", ["sk_live_backend", "prod sk_test_ key", "my sk_live_Juzr…nAjm key", "plain name"]
)
def test_redact_leaves_names_and_hints_alone(text):
    assert redact_stored(text) == text
