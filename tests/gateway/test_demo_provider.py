"""The built-in demo provider: deterministic chat and embeddings in OpenAI's exact shapes."""

import asyncio
import base64
import json
import math
import struct
import time

import pytest

from aibaas.gateway.providers.base import ModelSpec, StreamUsage
from aibaas.gateway.providers.demo import DemoProvider
from aibaas.gateway.tokenizer import count_chat_tokens, count_tokens

CHAT = ModelSpec(
    name="demo-chat",
    kind="chat",
    provider="demo",
    context_window=8192,
    test_mode_allowed=True,
    response_cache_ttl=0,
)
EMBED = ModelSpec(
    name="demo-embed",
    kind="embeddings",
    provider="demo",
    context_window=8192,
    test_mode_allowed=True,
    response_cache_ttl=0,
    embedding_dimensions=256,
)
demo = DemoProvider(token_delay=0)


def ask(content: str, **params) -> dict:
    return {"model": "demo-chat", "messages": [{"role": "user", "content": content}], **params}


def chat(body: dict, model: ModelSpec = CHAT):
    return asyncio.run(demo.chat(model, body))


def answer(body: dict) -> str:
    return chat(body).body["choices"][0]["message"]["content"]


def stream(body: dict, provider: DemoProvider = demo) -> tuple[list[bytes], StreamUsage]:
    usage = StreamUsage()

    async def collect():
        return [line async for line in provider.chat_stream(CHAT, body, usage)]

    return asyncio.run(collect()), usage


def events(lines: list[bytes]) -> list[dict]:
    """The JSON payloads of SSE lines, up to (not including) [DONE]."""
    payloads = []
    for line in lines:
        assert line.startswith(b"data: ") and line.endswith(b"\n\n"), line
        data = line[len(b"data: ") : -2]
        if data == b"[DONE]":
            break
        payloads.append(json.loads(data))
    return payloads


# --- chat --------------------------------------------------------------------------------------


def test_a_chat_completion_has_openais_shape():
    result = chat(ask("Tell me about rate limits"))
    body = result.body
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "demo-chat"
    (choice,) = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
    assert choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    json.dumps(body)  # serializable as is


def test_usage_is_exact_by_the_one_tokenizer():
    body = ask("Tell me about rate limits")
    result = chat(body)
    content = result.body["choices"][0]["message"]["content"]
    assert result.usage.input_tokens == count_chat_tokens(body["messages"])
    assert result.usage.output_tokens == count_tokens(content)
    assert result.usage.estimated is False
    assert result.body["usage"]["prompt_tokens"] == result.usage.input_tokens
    assert result.body["usage"]["completion_tokens"] == result.usage.output_tokens


def test_same_request_same_answer():
    body = ask("How do I rotate an API key?", temperature=0.7)
    assert len({answer(body) for _ in range(3)}) == 1


@pytest.mark.parametrize(
    "other",
    [
        ask("How do I revoke an API key?"),
        ask("How do I rotate an API key?", temperature=0.2),
        ask("How do I rotate an API key?", seed=42),
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                *ask("How do I rotate an API key?")["messages"],
            ]
        },
    ],
)
def test_a_different_request_gets_a_different_answer(other):
    assert answer(other) != answer(ask("How do I rotate an API key?"))


def test_the_answer_mentions_the_topic_of_the_last_user_message():
    text = answer(ask("Explain kubernetes autoscaling"))
    assert "kubernetes" in text.lower()


def test_content_parts_are_read_for_the_topic():
    body = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Explain photosynthesis"}]}
        ]
    }
    assert "photosynthesis" in answer(body)


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("limit", [1, 5, 17])
def test_max_tokens_cuts_the_answer_with_finish_reason_length(field, limit):
    full = answer(ask("Explain kubernetes autoscaling"))
    result = chat(ask("Explain kubernetes autoscaling", **{field: limit}))
    (choice,) = result.body["choices"]
    assert choice["finish_reason"] == "length"
    assert result.usage.output_tokens == limit == result.body["usage"]["completion_tokens"]
    assert count_tokens(choice["message"]["content"]) == limit
    assert full.startswith(choice["message"]["content"])


def test_a_generous_max_tokens_ends_with_stop():
    result = chat(ask("Explain kubernetes autoscaling", max_tokens=4000))
    assert result.body["choices"][0]["finish_reason"] == "stop"


def test_a_stop_sequence_ends_the_answer_before_it():
    full = answer(ask("Explain queues"))
    stop = full.split()[3]
    result = chat(ask("Explain queues", stop=[stop]))
    content = result.body["choices"][0]["message"]["content"]
    assert content == full[: full.index(stop)]
    assert result.body["choices"][0]["finish_reason"] == "stop"
    assert result.usage.output_tokens == count_tokens(content)


def test_n_gives_n_different_choices():
    result = chat(ask("Explain queues", n=3))
    choices = result.body["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2]
    assert len({c["message"]["content"] for c in choices}) == 3
    assert result.usage.output_tokens == sum(count_tokens(c["message"]["content"]) for c in choices)


# --- streaming ---------------------------------------------------------------------------------


def test_a_stream_is_openai_chunks_ending_in_done():
    lines, usage = stream(ask("Explain queues", stream=True))
    assert lines[-1] == b"data: [DONE]\n\n"
    chunks = events(lines)
    assert len(chunks) == len(lines) - 1
    ids = {chunk["id"] for chunk in chunks}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert all(chunk["model"] == "demo-chat" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert all("usage" not in chunk for chunk in chunks)
    assert usage.finished


def test_a_stream_sends_one_token_per_chunk_and_reassembles_to_the_answer():
    body = ask("Explain queues", max_tokens=40)
    lines, usage = stream({**body, "stream": True})
    deltas = [c["choices"][0]["delta"].get("content", "") for c in events(lines)]
    content_chunks = [d for d in deltas[1:] if d]
    assert "".join(deltas) == answer(body)
    assert all(count_tokens(d) == 1 for d in content_chunks)
    assert usage.usage.output_tokens == len(content_chunks) == 40
    assert usage.usage.input_tokens == count_chat_tokens(body["messages"])
    assert usage.usage.estimated is False
    assert events(lines)[-1]["choices"][0]["finish_reason"] == "length"


def test_include_usage_adds_a_usage_chunk_with_no_choices_before_done():
    body = ask("Explain queues", stream=True, stream_options={"include_usage": True})
    lines, usage = stream(body)
    chunks = events(lines)
    *content, last = chunks
    assert last["choices"] == []
    assert last["usage"] == {
        "prompt_tokens": usage.usage.input_tokens,
        "completion_tokens": usage.usage.output_tokens,
        "total_tokens": usage.usage.input_tokens + usage.usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    assert all(chunk["usage"] is None for chunk in content)
    non_stream = chat(ask("Explain queues"))
    assert last["usage"] == non_stream.body["usage"]
    assert lines[-1] == b"data: [DONE]\n\n"


def test_a_stream_of_n_choices_interleaves_them():
    lines, _ = stream(ask("Explain queues", n=2, stream=True))
    texts = {0: "", 1: ""}
    for chunk in events(lines):
        for choice in chunk["choices"]:
            texts[choice["index"]] += choice["delta"].get("content", "")
    result = chat(ask("Explain queues", n=2))
    assert [texts[0], texts[1]] == [c["message"]["content"] for c in result.body["choices"]]


def test_a_client_hanging_up_mid_stream_leaves_usage_for_what_was_sent():
    usage = StreamUsage()

    async def read_some():
        generator = demo.chat_stream(CHAT, ask("Explain queues", stream=True), usage)
        received = [await generator.__anext__() for _ in range(6)]  # role + 5 tokens
        await generator.aclose()
        return received

    received = asyncio.run(read_some())
    assert len(received) == 6
    assert usage.usage.output_tokens == 5
    assert not usage.finished


def test_the_token_delay_paces_the_stream():
    slow = DemoProvider(token_delay=0.01)
    begin = time.perf_counter()
    lines, _ = stream(ask("Explain queues", max_tokens=10, stream=True), provider=slow)
    assert time.perf_counter() - begin >= 10 * 0.01
    assert lines[-1] == b"data: [DONE]\n\n"


def test_the_token_delay_comes_from_settings(settings):
    settings.DEMO_TOKEN_DELAY_SECONDS = 0.25
    assert DemoProvider().token_delay == 0.25
    assert DemoProvider(token_delay=0).token_delay == 0


# --- embeddings --------------------------------------------------------------------------------


def embed(inputs, model: ModelSpec = EMBED, **params) -> dict:
    return asyncio.run(
        demo.embeddings(model, {"model": model.name, "input": inputs, **params})
    ).body


def vector(text: str) -> list[float]:
    return embed(text)["data"][0]["embedding"]


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_an_embeddings_response_has_openais_shape():
    body = embed("hello world")
    assert body["object"] == "list"
    assert body["model"] == "demo-embed"
    (item,) = body["data"]
    assert item["object"] == "embedding" and item["index"] == 0
    assert len(item["embedding"]) == 256
    assert body["usage"] == {"prompt_tokens": 2, "total_tokens": 2}


def test_an_embedding_is_deterministic_and_unit_length():
    first, second = vector("The cat sat on the mat."), vector("The cat sat on the mat.")
    assert first == second
    assert math.sqrt(sum(x * x for x in first)) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    "other", ["The cat sat on the hat.", "the cat sat on the mat.", "mat the on sat cat The.", ""]
)
def test_different_inputs_get_different_vectors(other):
    assert vector(other) != vector("The cat sat on the mat.")


def test_texts_that_share_words_are_closer_than_unrelated_ones():
    base = vector("the cat sat on the mat")
    assert cosine(base, vector("the cat sat on a mat")) > cosine(
        base, vector("quarterly revenue grew")
    )


def test_a_list_input_gives_one_vector_per_item_in_order():
    body = embed(["alpha", "beta gamma", "alpha"])
    assert [item["index"] for item in body["data"]] == [0, 1, 2]
    assert body["data"][0]["embedding"] == body["data"][2]["embedding"] == vector("alpha")
    assert body["data"][1]["embedding"] == vector("beta gamma")
    assert body["usage"]["prompt_tokens"] == 1 + 2 + 1


def test_token_id_inputs_are_accepted_and_counted_by_ids():
    body = embed([[1, 2, 3], [4, 5]])
    assert len(body["data"]) == 2
    assert body["usage"]["prompt_tokens"] == 5
    assert len(embed([1, 2, 3])["data"]) == 1


def test_base64_encoding_is_little_endian_float32_of_the_same_vector():
    encoded = embed("hello world", encoding_format="base64")["data"][0]["embedding"]
    raw = base64.b64decode(encoded)
    assert len(raw) == 256 * 4
    assert list(struct.unpack("<256f", raw)) == vector("hello world")


def test_dimensions_come_from_the_model_or_the_request():
    wide = ModelSpec("demo-wide", "embeddings", "demo", 8192, True, 0, (), 1024)
    assert len(embed("x", model=wide)["data"][0]["embedding"]) == 1024
    no_dims = ModelSpec("demo-default", "embeddings", "demo", 8192, True, 0, (), None)
    assert len(embed("x", model=no_dims)["data"][0]["embedding"]) == 256
    shorter = embed("x", dimensions=64)["data"][0]["embedding"]
    assert len(shorter) == 64
    assert math.sqrt(sum(v * v for v in shorter)) == pytest.approx(1.0, abs=1e-5)


def test_embeddings_usage_is_exact():
    result = asyncio.run(demo.embeddings(EMBED, {"input": ["one two three", "four"]}))
    assert result.usage.input_tokens == 4
    assert result.usage.output_tokens == 0
    assert result.usage.estimated is False
