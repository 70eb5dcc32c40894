"""The SSE relay of a streamed chat completion.

Streaming is passed through event by event as it arrives, with the model name rewritten to the
public one. The upstream is always asked for `stream_options.include_usage`; its usage chunk is
forwarded only if the client asked for it (without usage that counts, the tokens are estimated:
see `usage`). A stream must end with `data: [DONE]`: one that closes without it, or sends an
error event, is a 502 after the chunks already relayed. If the client goes away, the upstream
stream is closed and the usage of what was sent is kept.
"""

import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from aibaas.gateway.providers.base import (
    UPSTREAM_ERROR,
    UPSTREAM_TIMEOUT,
    ModelSpec,
    ProviderError,
    StreamUsage,
)
from aibaas.gateway.providers.openai_compatible.errors import STREAM_CUT_SHORT, STREAM_FAILED
from aibaas.gateway.providers.openai_compatible.upstreams import _open
from aibaas.gateway.providers.openai_compatible.usage import (
    CHAT_MIN_PROMPT_TOKENS,
    _estimate_chat,
    _usage_chunk,
    _usage_from,
)
from infra import jsonfast

# The package's name, as before it was split: log configuration and filters keep working.
logger = logging.getLogger(__package__)

# The largest event (one SSE line) relayed from an upstream: a model server that sends more
# without a line break is broken or hostile, and is not buffered without end.
MAX_EVENT_BYTES = 4 * 1024 * 1024


def _contents(chunk: Any) -> list[str]:
    if not isinstance(chunk, dict):
        return []
    return [
        content
        for choice in chunk.get("choices") or []
        if isinstance(choice, dict)
        and isinstance(choice.get("delta"), dict)
        and (content := choice["delta"].get("content"))
        and isinstance(content, str)
    ]


# A chunk with some text in a delta: `"content"` followed by a non-empty string (a quote
# inside generated text is escaped, `\\"content\\"`, and cannot match).
_CONTENT = re.compile(rb'"content"\s*:\s*"[^"]')


def _model_renames(model: ModelSpec) -> list[tuple[bytes, bytes]]:
    """(upstream `"model"` member, ours) for each upstream name, in both common spellings."""
    public = json.dumps(model.name).encode()
    renames = []
    for name in {upstream.upstream_model for upstream in model.upstreams}:
        quoted = json.dumps(name).encode()
        renames.append((b'"model":' + quoted, b'"model":' + public))
        renames.append((b'"model": ' + quoted, b'"model":' + public))
    return renames


def _renamed(data: bytes, renames: list[tuple[bytes, bytes]]) -> bytes | None:
    """A content chunk with its model renamed without a JSON round trip, or None when the chunk
    needs the full path (it carries usage, or its model is not spelled as expected).

    Most chunks of a stream are content chunks: skipping json.loads/dumps for them halves the
    relay's CPU per chunk (`make bench`, 500 concurrent streams). A `"usage"` inside generated
    text is escaped (`\\"usage\\"`) and cannot match."""
    if b'"usage"' in data or not (data.startswith(b"{") and data.endswith(b"}")):
        return None
    for theirs, ours in renames:
        if data.count(theirs) == 1:
            return data.replace(theirs, ours)
    return None


class _Relay:
    """One stream's state as it is relayed: what the upstream reported, the text produced so far
    (for an estimate), and whether it failed or finished."""

    def __init__(self, model: ModelSpec, body: dict[str, Any], usage: StreamUsage) -> None:
        self.model, self.body, self.usage = model, body, usage
        self.client_wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self.reported = False  # the upstream sent valid usage (else it is estimated at the end)
        self.failed = False  # the upstream sent an error event: the stream ends there
        self.completion: list[str] = []
        self.unparsed: list[bytes] = []  # fast-path chunks: parsed only if usage is estimated
        self.identity: dict[str, Any] = {}  # id and created of the stream, for our usage chunk
        self.renames = _model_renames(model)

    def upstream_body(self) -> dict[str, Any]:
        """The body sent upstream: always asking for usage (relayed only if the client did)."""
        options = self.body.get("stream_options") or {}
        return dict(self.body, stream=True, stream_options={**options, "include_usage": True})

    def _parsed(self, chunk: dict[str, Any]) -> None:
        if not self.identity:
            self.identity.update(id=chunk.get("id"), created=chunk.get("created"))
        self.completion.extend(_contents(chunk))

    def _completion_text(self) -> str:
        for data in self.unparsed:
            with contextlib.suppress(ValueError):  # forwarded as it came; counts for nothing
                chunk = json.loads(data)
                if isinstance(chunk, dict):
                    self._parsed(chunk)
        self.unparsed.clear()
        return "".join(self.completion)

    def estimate(self) -> None:
        """Bill what was produced, counted by our tokenizer (no usage from the upstream)."""
        self.usage.usage = _estimate_chat(self.body, self._completion_text())

    def event(self, data: bytes) -> bytes | None:
        """One event's data, as the client gets it (None: not forwarded)."""
        fast = _renamed(data, self.renames)
        if fast is None:
            return self._event_parsed(data)
        self.unparsed.append(data)
        if _CONTENT.search(data):
            self.usage.produced += 1
        return b"data: " + fast + b"\n\n"

    def _event_parsed(self, data: bytes) -> bytes | None:
        try:
            chunk = json.loads(data)
        except ValueError:
            return None  # not an event we understand: never forward garbage
        if not isinstance(chunk, dict):
            return None
        if "error" in chunk or chunk.get("object") == "error":  # vLLM's older shape
            # Its message is the operator's business (it may name the machine, the account):
            # logged here, and the client gets our generic error event.
            logger.warning(
                "upstream of %s sent an error event: %s",
                self.model.name,
                " ".join(data.decode(errors="replace").split())[:500],
            )
            self.failed = True
            return None
        upstream_usage = _usage_from(chunk, min_prompt=CHAT_MIN_PROMPT_TOKENS)
        if upstream_usage is not None:
            self.usage.usage = upstream_usage
            self.reported = True
        self._parsed(chunk)
        if _contents(chunk):
            self.usage.produced += 1
        if chunk.get("usage") is not None and (
            upstream_usage is None or not self.client_wants_usage
        ):
            # Not asked for, or nonsense that is neither recorded nor relayed (our estimate
            # goes out before [DONE] instead).
            del chunk["usage"]
            if not chunk.get("choices"):
                return None
        elif not self.client_wants_usage:
            chunk.pop("usage", None)
        chunk["model"] = self.model.name
        return b"data: " + jsonfast.dumps(chunk) + b"\n\n"

    def done(self) -> bytes:
        """The end of a complete stream: [DONE], after our usage chunk when the client asked
        for usage and the upstream gave none that counts."""
        self.usage.finished = True
        if self.reported:
            return b"data: [DONE]\n\n"
        self.estimate()
        if not self.client_wants_usage:
            return b"data: [DONE]\n\n"
        identity = self.identity
        chunk = _usage_chunk(
            self.model.name, identity.get("id"), identity.get("created"), self.usage.usage
        )
        return b"data: " + jsonfast.dumps(chunk) + b"\n\ndata: [DONE]\n\n"

    def lines(self, lines: list[bytes]) -> bytes:
        """The events of complete lines, joined for one write: up to [DONE] or a failure."""
        out: list[bytes] = []
        for raw_line in lines:
            if not raw_line.startswith(b"data:"):
                continue
            data = raw_line[5:].strip()
            if data == b"[DONE]":
                out.append(self.done())
                break
            event = self.event(data)
            if event is not None:
                out.append(event)
            elif self.failed:
                break
        return b"".join(out)

    def last(self, pending: bytes) -> bytes:
        """The events of the upstream's last line when it closed (it may lack the newline)."""
        data = pending.strip()[5:].strip() if pending.startswith(b"data:") else b""
        if data == b"[DONE]":
            return self.done()
        return (self.event(data) or b"") if data else b""

    def cut_short(self) -> ProviderError:
        """A stream without [DONE] is cut short, whatever it sent: not relayed as complete (the
        chunks sent so far are billed, estimated if need be)."""
        return ProviderError(
            UPSTREAM_ERROR, STREAM_FAILED if self.failed else STREAM_CUT_SHORT, 502
        )


async def relay_chat_stream(
    model: ModelSpec, body: dict[str, Any], usage: StreamUsage
) -> AsyncIterator[bytes]:
    """Stream a chat completion from the model's upstreams to the client as SSE events,
    filling `usage` as it goes (see the module docstring)."""
    relay = _Relay(model, body, usage)
    response, usage.upstream_latency_ms = await _open(
        model, "/chat/completions", relay.upstream_body(), stream=True
    )
    # What the upstream sent in one read goes to the client in one write: the events are
    # split here (bytes.split) instead of one aiohttp readline per line, blank ones
    # included, and one uvicorn send per event.
    pending = b""
    try:
        async for received in response.content.iter_any():
            lines = (pending + received).split(b"\n")
            pending = lines.pop()  # an incomplete line waits for the next read
            out = relay.lines(lines)
            if out:
                yield out
            if usage.finished:
                break
            if relay.failed:
                raise ProviderError(UPSTREAM_ERROR, STREAM_FAILED, 502)
            if len(pending) > MAX_EVENT_BYTES:
                raise ProviderError(
                    UPSTREAM_ERROR, "The model server sent an event too large to relay.", 502
                )
        else:  # the upstream closed
            out = relay.last(pending)
            if out:
                yield out
            if not usage.finished:
                raise relay.cut_short()
    except TimeoutError:
        raise ProviderError(UPSTREAM_TIMEOUT, "The model server stopped answering.", 504) from None
    except aiohttp.ClientError:
        raise ProviderError(UPSTREAM_ERROR, "The model server broke the stream.", 502) from None
    finally:
        if usage.finished:
            response.release()  # back to the pool for the next request
        else:
            response.close()  # the client left or the stream broke: drop the connection
        if not usage.finished and not relay.reported:
            # The client hung up or the upstream broke: bill what was produced so far.
            relay.estimate()
