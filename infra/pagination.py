"""The one pagination of /api lists: limit/offset, both bounded.

DRF's LimitOffsetPagination takes any size of number: `?offset=10**20` reached the database as
an OFFSET past a 64-bit integer (a 500 on PostgreSQL and SQLite alike). Here a limit above
MAX_LIMIT is MAX_LIMIT and an offset above MAX_OFFSET is MAX_OFFSET (an empty page), as DRF
already treats a bad or negative value as the default; the schema documents the bounds.
"""

from rest_framework.pagination import LimitOffsetPagination

MAX_LIMIT = 500
MAX_OFFSET = 10**9


class Pagination(LimitOffsetPagination):
    max_limit = MAX_LIMIT

    def get_offset(self, request) -> int:
        return min(super().get_offset(request), MAX_OFFSET)

    def get_schema_operation_parameters(self, view) -> list[dict]:
        parameters = super().get_schema_operation_parameters(view)
        bounds = {
            self.limit_query_param: {"minimum": 1, "maximum": MAX_LIMIT},
            self.offset_query_param: {"minimum": 0, "maximum": MAX_OFFSET},
        }
        for parameter in parameters:
            parameter["schema"].update(bounds.get(parameter["name"], {}))
        return parameters
