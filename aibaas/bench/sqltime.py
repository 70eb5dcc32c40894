"""Where a request's time goes: the SQL it ran (timed around each execute, so network and
driver included) against the rest (Python: auth, DRF, the selector's own work, JSON), and
PostgreSQL's EXPLAIN ANALYZE of its heaviest query (server time and the access path, which a
busy shared machine disturbs less than wall clock)."""

import re
import time
from dataclasses import dataclass, field

from django.db import connection


@dataclass
class Query:
    sql: str
    params: tuple
    ms: float


@dataclass
class QueryTimer:
    """Times every query run inside `with timer:` (connection.execute_wrapper)."""

    queries: list[Query] = field(default_factory=list)

    def __call__(self, execute, sql, params, many, context):
        start = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.queries.append(Query(sql, params, (time.perf_counter() - start) * 1000))

    def __enter__(self) -> "QueryTimer":
        self._wrapper = connection.execute_wrapper(self)
        self._wrapper.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._wrapper.__exit__(*exc)

    @property
    def ms(self) -> float:
        return sum(query.ms for query in self.queries)


@dataclass
class Plan:
    planning_ms: float
    execution_ms: float
    access: str  # e.g. "Index Scan using usage_rollup_dimensions"


_TIME = re.compile(r"(Planning|Execution) Time: ([0-9.]+) ms")
_ACCESS = re.compile(
    r"((?:Index Only Scan|Index Scan|Bitmap Index Scan|Seq Scan) (?:using \S+ )?on \S+)"
)


def explain(query: Query) -> Plan | None:
    """EXPLAIN (ANALYZE) of one query as run: server-side planning and execution time and its
    first access path. None on SQLite."""
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + query.sql, query.params)
        text = "\n".join(row[0] for row in cursor.fetchall())
    times = dict(_TIME.findall(text))
    access = _ACCESS.search(text)
    return Plan(
        float(times.get("Planning", "nan")),
        float(times.get("Execution", "nan")),
        access.group(1) if access else "?",
    )
