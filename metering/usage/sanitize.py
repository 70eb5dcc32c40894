"""Values of a usage event made storable, whatever a client sent: an event must never be refused
by the database (and dead-lettered or lost) because of its content. PostgreSQL's text cannot
hold NUL, UTF-8 cannot hold a lone surrogate, a column has a length, an integer column a range.

Each function is pure and costs a fraction of a microsecond on the usual value (ASCII, short,
in range): they run on every event, on the request path.
"""

import math
import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from billing.pricing import COST_QUANTUM, ZERO_COST

REPLACEMENT = "\ufffd"
# The usage table's integer columns (PostgreSQL integer, smallint).
INT_MAX = 2**31 - 1
SMALLINT_MAX = 2**15 - 1
# metering.UsageEvent.cost is max_digits=18, decimal_places=8 (< 10^10). The cap is a whole
# number: SQLite keeps the column as a double, which would round 9999999999.99999999 up to 10^10,
# a value Django then cannot read back.
COST_MAX = Decimal("9999999999")

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def clean_text(value: object, max_length: int, *, empty: str = "") -> str:
    """`value` as text PostgreSQL stores: NUL and lone surrogates (json.loads lets "\\ud800"
    through) become U+FFFD, cut to max_length characters; `empty` when nothing is left."""
    if not isinstance(value, str):
        value = "" if value is None else str(value)
    if not value.isascii() or "\x00" in value:
        value = _UNSTORABLE.sub(REPLACEMENT, value)
    if len(value) > max_length:
        value = value[:max_length]
    return value or empty


def clamp_int(value: object, maximum: int = INT_MAX) -> int:
    """A count for a column of [0, maximum]: out-of-range values are clamped, non-numbers 0."""
    if type(value) is not int:
        try:
            number = float(value) if not isinstance(value, int) else value
            value = int(number) if math.isfinite(number) else 0
        except (TypeError, ValueError, OverflowError):
            return 0
    return 0 if value < 0 else value if value <= maximum else maximum


def clamp_cost(value: object) -> Decimal:
    """Money for the cost column: a Decimal in [0, COST_MAX] with 8 places. A float goes
    through its shortest repr (no binary noise); what is no number at all is 0."""
    if not isinstance(value, Decimal):
        try:
            value = Decimal(str(value))
        except (InvalidOperation, ValueError):
            return ZERO_COST
    if not value.is_finite() or value < 0:
        return ZERO_COST
    if value > COST_MAX:
        return COST_MAX
    return value.quantize(COST_QUANTUM, rounding=ROUND_HALF_UP)
