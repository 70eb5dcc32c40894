"""The demo chat model's answers: a few English sentences from a small vocabulary, seeded by a
hash of the messages and sampling parameters (same request, same answer), mentioning the last
user message's topic, cut by `stop` and max_completion_tokens / max_tokens ("length")."""

import hashlib
import json
import random
import re
from typing import Any

from aibaas.gateway.providers.base import ModelSpec
from aibaas.gateway.tokenizer import count_chat_tokens, tokenize
from aibaas.gateway.validation import MAX_N

# Request fields that change the answer; max_tokens only cuts it (a cut answer is a prefix).
_SAMPLING_FIELDS = ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty")

_OPENERS = (
    "Good question about {t}.",
    "Here is a short take on {t}.",
    "Let us look at {t}.",
    "Thanks for asking about {t}.",
    "A few points stand out on {t}.",
    "Sure, we can talk about {t}.",
)
_SUBJECTS = (
    "the main idea", "a simple plan", "the best first step", "most teams", "a small test",
    "the data", "a clear goal", "good tooling", "each change", "the simple path",
)  # fmt: skip
_VERBS = ("helps", "shows", "keeps", "makes", "needs", "finds", "gives", "brings", "builds")
_OBJECTS = (
    "the work simple", "each step clear", "a lot of time", "the risk low", "the next move",
    "a clean result", "the right trade", "a solid base", "the cost down", "room to grow",
)  # fmt: skip
_TAILS = ("in most cases", "over time", "for a start", "when you test it", "with some care")
_LINKS = ("Also,", "In short,", "Still,", "Then", "In practice,", "For {t},")
_CLOSERS = (
    "I am the demo model of aibaas, so take this as a sample answer.",
    "This answer comes from the aibaas demo model.",
    "Ask again in other words and the answer will change.",
)
_STOPWORDS_TEXT = """
    the and for are but not you your with this that what how why who can could would should
    about into from have has had was were will just like please tell give me some any all
    does did its our out get use using there their them then than when where which
"""
_STOPWORDS = frozenset(_STOPWORDS_TEXT.split())
_TOPIC_WORD = re.compile(r"[A-Za-z]{3,24}")


def hash_int(*parts: Any) -> int:
    data = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str).encode()
    return int.from_bytes(hashlib.sha256(data).digest()[:16], "big")


def _message_text(message: Any) -> str:
    content = message.get("content") if isinstance(message, dict) else message
    if isinstance(content, list):
        return " ".join(
            str(p.get("text") or "") for p in content if isinstance(p, dict) and "text" in p
        )
    return content if isinstance(content, str) else ""


def _topic(messages: list) -> str:
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    words: list[str] = []
    for word in _TOPIC_WORD.findall(_message_text(users[-1]) if users else ""):
        word = word.lower()
        if word not in _STOPWORDS and word not in words:
            words.append(word)
    return " and ".join(words[:2]) or "your message"


def _sentence(rng: random.Random, topic: str) -> str:
    words = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
    if rng.random() < 0.5:
        words += " " + rng.choice(_TAILS)
    if rng.random() < 0.4:
        words = rng.choice(_LINKS).format(t=topic) + " " + words
    return words[0].upper() + words[1:] + "."


def compose_answer(rng: random.Random, topic: str) -> str:
    """A short answer of 2 paragraphs: opener, sentences, a closing remark."""
    first = [rng.choice(_OPENERS).format(t=topic)]
    first += [_sentence(rng, topic) for _ in range(rng.randint(2, 4))]
    second = [_sentence(rng, topic) for _ in range(rng.randint(1, 3))] + [rng.choice(_CLOSERS)]
    return " ".join(first) + "\n\n" + " ".join(second)


def int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def compose_answers(
    model: ModelSpec, body: dict[str, Any]
) -> tuple[int, list[tuple[list[str], str]]]:
    """(prompt tokens, [(the answer's token pieces, finish_reason)] for each of n choices)."""
    messages = body.get("messages") or []
    n = min(max(1, int_or_none(body.get("n")) or 1), MAX_N)
    limit = int_or_none(body.get("max_completion_tokens"))
    if limit is None:
        limit = int_or_none(body.get("max_tokens"))
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else [s for s in stop or () if isinstance(s, str)]
    seed = hash_int(model.name, messages, {k: body.get(k) for k in _SAMPLING_FIELDS})
    topic = _topic(messages)
    answers = []
    for index in range(n):
        rng = random.Random(seed + index)  # noqa: S311 (a demo, not cryptography)
        text = compose_answer(rng, topic)
        finish = "stop"
        cut = min((text.find(s) for s in stops if s and s in text), default=-1)
        if cut >= 0:
            text = text[:cut]
        pieces = tokenize(text)
        if limit is not None and len(pieces) > limit:
            pieces, finish = pieces[: max(limit, 0)], "length"
        answers.append((pieces, finish))
    return count_chat_tokens(messages), answers
