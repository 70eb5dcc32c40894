"""/api/audit: the organization's audit log. Here rather than in accounts, which keeps the log,
because an admin-scoped key may read it and key authentication sits in keys, above accounts."""

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.views import APIView

from accounts.audit import READERS_ONLY, audit_list
from accounts.models import Role
from infra.errors import ApplicationError
from infra.pagination import Pagination
from infra.schema import NO_NUL_PATTERN, errors
from keys.access import INSUFFICIENT_ROLE, OrganizationAccess, resolve_access


class AuditEventOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    action = serializers.CharField()
    actor = serializers.CharField(source="actor_label")
    actor_key_id = serializers.CharField()
    target_type = serializers.CharField()
    target_id = serializers.CharField()
    ip = serializers.CharField(allow_null=True)
    user_agent = serializers.CharField()
    metadata = serializers.JSONField()


class AuditListApi(APIView):
    """The organization's audit log, newest first. Owners, admins and admin-scoped keys."""

    permission_classes = [OrganizationAccess]
    pagination_class = Pagination  # the schema documents the paginated envelope
    key_scopes = ("admin",)

    class FilterSerializer(serializers.Serializer):
        # DRF's CharField refuses NUL characters (400), which PostgreSQL cannot compare (a 500).
        action = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
        actor = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "action",
                str,
                description="Prefix, e.g. 'key.' or 'key.revoked'.",
                pattern=NO_NUL_PATTERN,
            ),
            OpenApiParameter(
                "actor",
                str,
                description="Part of the actor's email or key id.",
                pattern=NO_NUL_PATTERN,
            ),
        ],
        responses={200: AuditEventOutputSerializer(many=True), **errors(400, 401, 403)},
        operation_id="audit_list",
    )
    def get(self, request):
        access = resolve_access(request)
        if access.actor.role not in (Role.OWNER, Role.ADMIN):
            raise ApplicationError(INSUFFICIENT_ROLE, READERS_ONLY, status=403)
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        events = audit_list(
            organization=access.organization,
            action=filters.validated_data.get("action"),
            actor=filters.validated_data.get("actor"),
        )
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(events, request, view=self)
        return paginator.get_paginated_response(AuditEventOutputSerializer(page, many=True).data)
