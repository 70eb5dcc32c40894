import re
from datetime import timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PATTERN = re.compile(r"(\d{1,9})\s*([smhdw]?)")


def parse_duration(text: str) -> timedelta:
    """'30d', '24h', '90m', '45s', '2w' or a plain number of seconds ('0') as a timedelta."""
    match = _PATTERN.fullmatch((text or "").strip().lower())
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 30d, 24h, 90m, 45s or 0")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2) or "s"])
