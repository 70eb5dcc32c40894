"""/api/audit: the organization's audit log. Here rather than in accounts, which keeps the log,
because an admin-scoped key may read it and key authentication sits in keys, above accounts."""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.views import APIView

from accounts.audit import READERS_ONLY, action_label, audit_list, target_text
from accounts.forms import AUDIT_BAD_DATE, AuditFilterForm
from accounts.models import AuditAction, Role
from infra.errors import INVALID_REQUEST, ApplicationError
from infra.pagination import Pagination
from infra.schema import NO_NUL_PATTERN, errors
from keys.access import INSUFFICIENT_ROLE, OrganizationAccess, resolve_access


class AuditEventOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    action = serializers.CharField(help_text="Machine name, e.g. 'key.revoked'.")
    action_label = serializers.SerializerMethodField(help_text="As people read it: 'Key revoked'.")
    actor = serializers.CharField(source="actor_label")
    actor_key_id = serializers.CharField()
    target_type = serializers.CharField()
    target_id = serializers.CharField()
    target_label = serializers.SerializerMethodField(
        help_text="What it acted on, as people read it: \"key 'CI deploy' (AbCd1234EfGh)\", "
        "'member alice@example.com'. Empty when the event has no target."
    )
    ip = serializers.CharField(allow_null=True)
    user_agent = serializers.CharField()
    metadata = serializers.JSONField()

    def get_action_label(self, event) -> str:
        return action_label(event.action)

    def get_target_label(self, event) -> str:
        return target_text(event)


class AuditListApi(APIView):
    """The organization's audit log, newest first. Owners, admins and admin-scoped keys."""

    permission_classes = [OrganizationAccess]
    pagination_class = Pagination  # the schema documents the paginated envelope
    key_scopes = ("admin",)

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "action",
                str,
                description="Prefix of the action, e.g. 'key.' (every key event) or "
                f"'key.revoked'. Known actions: {', '.join(AuditAction.values)}.",
                pattern=NO_NUL_PATTERN,
            ),
            OpenApiParameter(
                "actor",
                str,
                description="Part of the actor's email or key id.",
                pattern=NO_NUL_PATTERN,
            ),
            OpenApiParameter(
                "since",
                OpenApiTypes.DATE,
                description="From this UTC day, included (YYYY-MM-DD); anything else is a 400 "
                f"('{AUDIT_BAD_DATE}').",
            ),
            OpenApiParameter(
                "until",
                OpenApiTypes.DATE,
                description="To this UTC day, included (YYYY-MM-DD); not before `since`, else 400.",
            ),
        ],
        responses={200: AuditEventOutputSerializer(many=True), **errors(400, 401, 403)},
        operation_id="audit_list",
    )
    def get(self, request):
        access = resolve_access(request)
        if access.actor.role not in (Role.OWNER, Role.ADMIN):
            raise ApplicationError(INSUFFICIENT_ROLE, READERS_ONLY, status=403)
        # The dashboard's filter form: one parser, one set of messages for page, CSV and API.
        form = AuditFilterForm(request.query_params)
        if not form.is_valid():
            param, message = form.first_error()
            raise ApplicationError(INVALID_REQUEST, message, param=param)
        events = audit_list(organization=access.organization, **form.filters())
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(events, request, view=self)
        return paginator.get_paginated_response(AuditEventOutputSerializer(page, many=True).data)
