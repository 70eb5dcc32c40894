"""aibaas/gateway/tokenizer.py: deterministic, plausible, fast, and self-consistent."""

import random
import string
import time

import pytest

from aibaas.gateway.tokenizer import (
    IMAGE_PART_TOKENS,
    REPLY_PRIMING,
    TOKENS_PER_MESSAGE,
    TOKENS_PER_NAME,
    count_chat_tokens,
    count_tokens,
    tokenize,
)

PROSE = (
    "Rate limits protect the service from abuse and keep latency predictable for every "
    "customer. When a key exceeds its budget, the gateway answers with a 429 and a "
    "Retry-After header, so well-behaved clients back off and try again later. "
)
CODE = 'def handler(request):\n    payload = json.loads(request.body)\n    return {"ok": True}\n'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("hello", 1),
        ("Hello, world!", 4),  # Hello , _world !
        ("The quick brown fox jumps over the lazy dog.", 10),
        ("tokenization", 3),  # toke niza tion: long words cost ceil(len / 4)
        ("2024", 2),  # numbers split every 3 digits
        ("a  b", 3),  # a, the run of spaces, b
        ("\n\n", 1),
        (" " * 20, 3),  # whitespace: 8 characters a token
        ("你好世界", 4),  # one per CJK character
    ],
)
def test_counts_on_samples(text, expected):
    assert count_tokens(text) == expected


def test_english_prose_lands_near_openai_rates():
    words = len(PROSE.split())
    tokens = count_tokens(PROSE)
    # cl100k gives about 1.3 tokens per English word (and about 4 characters per token).
    assert 1.0 * words <= tokens <= 1.6 * words
    assert 3 <= len(PROSE) / tokens <= 6


def test_code_counts_more_tokens_per_character_than_prose():
    assert len(CODE) / count_tokens(CODE) < len(PROSE) / count_tokens(PROSE)


def random_text(rng: random.Random, size: int) -> str:
    alphabet = string.ascii_letters + string.digits + string.punctuation + " \n\t" + "éü你🙂"
    return "".join(rng.choice(alphabet) for _ in range(size))


@pytest.mark.parametrize("seed", range(20))
def test_tokenize_is_lossless_and_agrees_with_count(seed):
    rng = random.Random(seed)
    text = random_text(rng, rng.randint(0, 500)) + PROSE[: rng.randint(0, len(PROSE))]
    pieces = tokenize(text)
    assert "".join(pieces) == text
    assert len(pieces) == count_tokens(text)


@pytest.mark.parametrize("seed", range(10))
def test_a_prefix_of_whole_pieces_counts_as_that_many_tokens(seed):
    rng = random.Random(seed)
    text = PROSE + " internationalization " + random_text(rng, 200)
    pieces = tokenize(text)
    for cut in range(len(pieces) + 1):
        assert count_tokens("".join(pieces[:cut])) == cut


def test_counting_is_deterministic():
    text = PROSE * 10 + CODE * 10
    assert len({count_tokens(text) for _ in range(5)}) == 1


def test_counting_grows_linearly():
    assert count_tokens(PROSE * 10) == pytest.approx(10 * count_tokens(PROSE), abs=10)


def test_a_4_kb_prompt_counts_quickly():
    # A sanity bound far above the ~0.3 ms it takes, so a busy machine does not flake it.
    text = (PROSE + CODE) * (4096 // len(PROSE + CODE) + 1)
    text = text[:4096]
    started = time.perf_counter()
    for _ in range(100):
        count_tokens(text)
    assert (time.perf_counter() - started) / 100 < 0.01


def test_chat_tokens_add_openai_overhead():
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hello, world!", "name": "alice"},
    ]
    expected = (
        REPLY_PRIMING
        + 2 * TOKENS_PER_MESSAGE
        + count_tokens("system")
        + count_tokens("You are terse.")
        + count_tokens("user")
        + count_tokens("Hello, world!")
        + TOKENS_PER_NAME
        + count_tokens("alice")
    )
    assert count_chat_tokens(messages) == expected


def test_chat_tokens_of_content_parts_tool_calls_and_empty_content():
    parts = [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]
    with_parts = count_chat_tokens([{"role": "user", "content": parts}])
    assert with_parts == (
        REPLY_PRIMING
        + TOKENS_PER_MESSAGE
        + count_tokens("user")
        + count_tokens("What is in this image?")
        + IMAGE_PART_TOKENS
    )
    tool_call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
    }
    assert count_chat_tokens([tool_call]) > REPLY_PRIMING + TOKENS_PER_MESSAGE + 1
    assert count_chat_tokens([]) == REPLY_PRIMING
