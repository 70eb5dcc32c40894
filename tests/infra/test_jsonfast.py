"""infra/jsonfast.py: compact JSON that json.loads reads back to the value written, whatever the
value (orjson, or json.dumps where orjson refuses)."""

import json
import math

import pytest

from infra import jsonfast

VALUES = [
    {"id": "chatcmpl-1", "choices": [{"message": {"content": "héllo ✓ 𝄞"}}], "n": 3},
    {"lone": "a\ud800b"},  # a lone surrogate, as json.loads lets it through from an upstream
    {"big": 2**70, "negative": -(2**65)},  # past 64 bits: orjson refuses them
    {"nul": "a\x00b", "controls": "\n\t\u2028", "float": 0.1, "tiny": 1e-7},
    [1, "two", None, True, False, {}],
]


@pytest.mark.parametrize("value", VALUES)
def test_json_loads_reads_back_the_value_written(value):
    written = jsonfast.dumps(value)
    assert isinstance(written, bytes)
    assert json.loads(written) == value
    assert b", " not in written and b": " not in written  # compact


def test_a_lone_surrogate_is_escaped_as_json_dumps_escapes_it():
    assert jsonfast.dumps({"s": "\udfff"}) == b'{"s":"\\udfff"}'


def test_nan_and_infinity_are_written_as_null_json_has_no_such_numbers():
    assert json.loads(jsonfast.dumps({"a": math.nan, "b": math.inf})) == {"a": None, "b": None}
