"""The demo embeddings model: unit vectors from feature hashing the words, plus a component
seeded by the exact text."""

import hashlib
import math
import random
import re
import struct
from typing import Any

from aibaas.gateway.providers.demo.text import hash_int
from aibaas.gateway.tokenizer import count_tokens

_EMBED_WORD = re.compile(r"[a-z0-9]+")


def embedding_vector(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector (float32 values) for `text`."""
    vector = [0.0] * dimensions
    words = _EMBED_WORD.findall(text.lower())
    for word in words:
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        for offset in (0, 4):  # two buckets per word spread collisions
            bucket = int.from_bytes(digest[offset : offset + 3], "little") % dimensions
            vector[bucket] += 1.0 if digest[offset + 3] & 1 else -1.0
    # Seeded by the exact text: word order, case and punctuation still make a difference.
    rng = random.Random(hash_int("embedding", text))  # noqa: S311
    noise = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    scale = 0.5 * math.sqrt(sum(v * v for v in vector) or 1.0) / math.sqrt(dimensions)
    vector = [v + scale * x for v, x in zip(vector, noise, strict=True)]
    norm = math.sqrt(sum(v * v for v in vector))
    packed = struct.pack(f"<{dimensions}f", *(v / norm for v in vector))
    return list(struct.unpack(f"<{dimensions}f", packed))


def embedding_inputs(raw: Any) -> list[tuple[str, int]]:
    """[(text to embed, its tokens)] from a string, a list of strings, token ids, or lists
    of token ids (OpenAI accepts all four)."""
    token_ids = isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw)
    if isinstance(raw, str) or token_ids:
        raw = [raw]
    inputs = []
    for item in raw if isinstance(raw, list) else []:
        if isinstance(item, list):
            inputs.append((" ".join(str(i) for i in item), len(item)))
        else:
            inputs.append((str(item), count_tokens(str(item))))
    return inputs
