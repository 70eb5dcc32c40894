"""Validation of /v1 request bodies: OpenAI's rules for the fields the gateway reads.

Every bad input raises ApplicationError 400 `invalid_request_error` naming the `param` (as
OpenAI does, e.g. "messages[0].role"). Fields the gateway does not know pass through to the
provider unchanged: the upstream is the judge of those.
"""

import json
import re
from typing import Any

from infra.errors import INVALID_REQUEST, ApplicationError

INVALID_JSON = "invalid_json"
UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
REQUEST_TOO_LARGE = "request_too_large"

ROLES = ("system", "user", "assistant", "tool", "developer")
MAX_STOP = 4
MAX_N = 128  # OpenAI's limit on `n`
MAX_EMBEDDING_INPUTS = 2048
ENCODING_FORMATS = ("float", "base64")
MAX_TOKEN_ID = 2**31 - 1
# A model name holds something besides whitespace (the OpenAPI schema uses the same pattern).
MODEL_PATTERN = re.compile(r"\S")


def invalid(param: str | None, message: str, code: str = INVALID_REQUEST) -> ApplicationError:
    return ApplicationError(code, message, status=400, param=param)


def parse_json_body(
    content_type: str, raw: bytes, max_bytes: int, content_encoding: str = ""
) -> dict[str, Any]:
    """The request body as a JSON object: 415 unless plain JSON (no content coding, such as
    gzip: it would otherwise be read as broken JSON), 413 over max_bytes, 400 if broken."""
    if content_encoding and content_encoding.strip().lower() != "identity":
        raise ApplicationError(
            UNSUPPORTED_MEDIA_TYPE,
            f"Content-Encoding {content_encoding.strip()[:40]!r} is not supported: send the "
            "JSON body uncompressed.",
            status=415,
        )
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise ApplicationError(
            UNSUPPORTED_MEDIA_TYPE,
            "Send the request body as JSON with Content-Type: application/json.",
            status=415,
        )
    if len(raw) > max_bytes:
        raise too_large(max_bytes)
    try:
        # UTF-8 only, as JSON on the wire must be (json.loads would also guess UTF-16 and -32,
        # whose escapes the surrogate check below would not see).
        text = raw.decode("utf-8")
        body = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise invalid(None, "The request body is not valid UTF-8 JSON.", INVALID_JSON) from None
    except RecursionError:
        raise invalid(None, "The request body is nested too deeply.", INVALID_JSON) from None
    if not isinstance(body, dict):
        raise invalid(None, "The request body must be a JSON object.")
    if "\\ud" in text or "\\uD" in text:
        _refuse_lone_surrogates(body)
    return body


def _refuse_lone_surrogates(body: dict[str, Any]) -> None:
    """JSON may escape half of a UTF-16 pair ("\\ud800") on its own: Python decodes it to a
    string that cannot be encoded, which would fail far from here (hashing a prompt, writing a
    reply or a usage event). Only a body with such an escape pays for this check."""
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise invalid(
            None, "The request body contains invalid Unicode (an unpaired surrogate).", INVALID_JSON
        ) from None


def too_large(max_bytes: int) -> ApplicationError:
    return ApplicationError(
        REQUEST_TOO_LARGE,
        f"The request body is larger than the limit of {max_bytes} bytes.",
        status=413,
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise invalid("model", "You must provide a model parameter.")
    if not isinstance(model, str) or not MODEL_PATTERN.search(model):
        raise invalid("model", "'model' must be a non-empty string.")
    return model


def _optional_bool(body: dict[str, Any], name: str, param: str | None = None) -> None:
    if name in body and body[name] is not None and not isinstance(body[name], bool):
        raise invalid(param or name, f"'{param or name}' must be a boolean.")


def _positive_int(body: dict[str, Any], name: str) -> None:
    value = body.get(name)
    if value is not None and (not _is_int(value) or value < 1):
        raise invalid(name, f"'{name}' must be a positive integer.")


def _number_in(body: dict[str, Any], name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is not None and (not _is_number(value) or not low <= value <= high):
        raise invalid(name, f"'{name}' must be a number from {low:g} to {high:g}.")


def _message(index: int, message: Any) -> None:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise invalid(where, f"'{where}' must be an object.")
    role = message.get("role")
    if role not in ROLES:
        raise invalid(f"{where}.role", f"'{where}.role' must be one of: {', '.join(ROLES)}.")
    content = message.get("content")
    if content is None:
        if role == "assistant" and message.get("tool_calls"):
            return
        raise invalid(f"{where}.content", f"'{where}.content' is required.")
    if isinstance(content, list):
        for part_index, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                param = f"{where}.content[{part_index}]"
                raise invalid(param, f"'{param}' must be an object with a 'type'.")
    elif not isinstance(content, str):
        raise invalid(f"{where}.content", f"'{where}.content' must be a string or a list.")


def validate_chat(body: dict[str, Any]) -> str:
    """Check a chat completion request; return its model name."""
    model = _model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", "'messages' must be a non-empty list of messages.")
    for index, message in enumerate(messages):
        _message(index, message)
    _optional_bool(body, "stream")
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise invalid("stream_options", "'stream_options' must be an object.")
        if not body.get("stream"):
            raise invalid("stream_options", "'stream_options' is only allowed with stream: true.")
        _optional_bool(options, "include_usage", "stream_options.include_usage")
    _positive_int(body, "max_tokens")
    _positive_int(body, "max_completion_tokens")
    _number_in(body, "temperature", 0, 2)
    _number_in(body, "top_p", 0, 1)
    n = body.get("n")
    if n is not None and (not _is_int(n) or not 1 <= n <= MAX_N):
        raise invalid("n", f"'n' must be an integer from 1 to {MAX_N}.")
    stop = body.get("stop")
    if (
        stop is not None
        and not isinstance(stop, str)
        and (
            not isinstance(stop, list)
            or len(stop) > MAX_STOP
            or not all(isinstance(s, str) for s in stop)
        )
    ):
        raise invalid("stop", f"'stop' must be a string or a list of up to {MAX_STOP}.")
    return model


def _token_ids(param: str, ids: list[int]) -> None:
    if any(x < 0 or x > MAX_TOKEN_ID for x in ids):
        raise invalid(param, f"'{param}' holds a token id outside 0..{MAX_TOKEN_ID}.")


def validate_embeddings(body: dict[str, Any]) -> str:
    """Check an embeddings request; return its model name."""
    model = _model(body)
    raw = body.get("input")
    if isinstance(raw, str):
        if not raw:
            raise invalid("input", "'input' must not be empty.")
    elif isinstance(raw, list) and raw:
        if len(raw) > MAX_EMBEDDING_INPUTS:
            raise invalid("input", f"'input' may hold at most {MAX_EMBEDDING_INPUTS} items.")
        if all(_is_int(x) for x in raw):
            _token_ids("input", raw)  # one text as token ids
        else:
            for index, item in enumerate(raw):
                if isinstance(item, str) and item:
                    continue
                if isinstance(item, list) and item and all(_is_int(x) for x in item):
                    _token_ids(f"input[{index}]", item)
                    continue
                param = f"input[{index}]"
                raise invalid(
                    param, f"'{param}' must be a non-empty string or a list of token ids."
                )
    else:
        raise invalid(
            "input", "'input' must be a string, a list of strings, or lists of token ids."
        )
    encoding = body.get("encoding_format")
    if encoding is not None and encoding not in ENCODING_FORMATS:
        raise invalid("encoding_format", "'encoding_format' must be 'float' or 'base64'.")
    _positive_int(body, "dimensions")
    return model
