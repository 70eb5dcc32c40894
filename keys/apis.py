"""Management API for keys (/api/keys...) and the machine endpoint GET /v1/key."""

from datetime import timedelta

from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_serializer,
)
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from infra.pagination import Pagination
from infra.schema import errors
from keys.access import OrganizationAccess, resolve_access
from keys.models import ApiKey, ApiKeyStatus, Scope
from keys.selectors import api_key_effective_scopes, api_key_get, api_key_list
from keys.services import api_key_create, api_key_revoke, api_key_rotate, api_key_update

KEY_SCOPES = ("keys:write", "admin")
LIMIT_FIELDS = ApiKey.LIMIT_FIELDS


class KeyOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    key_id = serializers.CharField()
    name = serializers.CharField()
    hint = serializers.CharField()
    scopes = serializers.ListField(child=serializers.CharField())
    effective_scopes = serializers.SerializerMethodField(
        help_text="What the key may do now: its scopes limited by its creator's current role."
    )
    models = serializers.ListField(
        child=serializers.CharField(), source="allowed_models", allow_null=True
    )
    requests_per_minute = serializers.IntegerField(allow_null=True)
    requests_per_day = serializers.IntegerField(allow_null=True)
    tokens_per_minute = serializers.IntegerField(allow_null=True)
    tokens_per_day = serializers.IntegerField(allow_null=True)
    test_mode = serializers.BooleanField()
    status = serializers.CharField()
    created_at = serializers.DateTimeField()
    created_by = serializers.EmailField(source="created_by.email", allow_null=True, default=None)
    expires_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    revoked_reason = serializers.CharField()
    rotated_from = serializers.CharField(
        source="rotated_from.key_id", allow_null=True, default=None
    )
    last_used_at = serializers.DateTimeField(allow_null=True)
    last_used_ip = serializers.CharField(allow_null=True)

    def get_effective_scopes(self, key: ApiKey) -> list[str]:
        return sorted(api_key_effective_scopes(key))


class IssuedKeyOutputSerializer(KeyOutputSerializer):
    key = serializers.CharField(help_text="The raw key. Shown this once; it is not stored.")


def _issued(issued) -> dict:
    data = KeyOutputSerializer(issued.api_key).data
    data["key"] = issued.raw_key
    return data


_LIMIT_HELP = (
    "Lowers the plan's {what} for this key: at most the plan's value (400 above it); the key "
    "gets the lower of the two, also after a plan change. null = the plan's limit."
)


def _limit_field(what: str) -> serializers.IntegerField:
    return serializers.IntegerField(
        min_value=1, allow_null=True, required=False, help_text=_LIMIT_HELP.format(what=what)
    )


class _LimitsMixin(serializers.Serializer):
    requests_per_minute = _limit_field("requests per minute")
    requests_per_day = _limit_field("requests per day")
    tokens_per_minute = _limit_field("tokens per minute")
    tokens_per_day = _limit_field("tokens per day")


class _KeyFields(_LimitsMixin):
    """What a key's creation and update both take (beside its name)."""

    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=Scope.values),
        required=False,
        min_length=1,  # a key needs a scope (the service says so too; the schema shows it)
        max_length=10,
    )
    models = serializers.ListField(
        child=serializers.CharField(max_length=200),
        required=False,
        allow_null=True,
        max_length=100,
    )
    expires_at = serializers.DateTimeField(required=False, allow_null=True)


def _key_write(operation_id: str, request, output=KeyOutputSerializer, ok: int = 200):
    """The schema of a write on one key: its input, its output, the errors it may answer."""
    return extend_schema(
        request=request,
        responses={ok: output, **errors(400, 401, 403, 404)},
        operation_id=operation_id,
    )


class _OrgApi(APIView):
    permission_classes = [OrganizationAccess]
    key_scopes = KEY_SCOPES

    def _key_and_input(self, request, ident: str) -> tuple:
        """(the caller's access, the organization's key `ident`, the view's valid input)."""
        access = resolve_access(request)
        key = api_key_get(organization=access.organization, ident=ident)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return access, key, serializer.validated_data


class KeyListCreateApi(_OrgApi):
    pagination_class = Pagination  # the schema documents the paginated envelope

    @extend_schema_serializer(component_name="KeyCreateInput")
    class InputSerializer(_KeyFields):
        name = serializers.CharField(max_length=100)
        test_mode = serializers.BooleanField(required=False, default=False)

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "status", str, enum=ApiKeyStatus.values, description="Only keys in this state."
            )
        ],
        responses={200: KeyOutputSerializer(many=True), **errors(400, 401, 403)},
        operation_id="keys_list",
    )
    def get(self, request):
        access = resolve_access(request)
        keys = api_key_list(
            organization=access.organization, status=request.query_params.get("status")
        )
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(keys, request, view=self)
        return paginator.get_paginated_response(KeyOutputSerializer(page, many=True).data)

    @extend_schema(
        request=InputSerializer,
        responses={201: IssuedKeyOutputSerializer, **errors(400, 401, 403)},
        operation_id="keys_create",
    )
    def post(self, request):
        access = resolve_access(request)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        issued = api_key_create(
            organization=access.organization, actor=access.actor, **serializer.validated_data
        )
        return Response(_issued(issued), status=status.HTTP_201_CREATED)


class KeyDetailApi(_OrgApi):
    @extend_schema_serializer(component_name="KeyUpdateInput")
    class InputSerializer(_KeyFields):
        name = serializers.CharField(max_length=100, required=False)

    @extend_schema(
        responses={200: KeyOutputSerializer, **errors(401, 403, 404)}, operation_id="keys_read"
    )
    def get(self, request, ident: str):
        access = resolve_access(request)
        key = api_key_get(organization=access.organization, ident=ident)
        return Response(KeyOutputSerializer(key).data)

    @_key_write("keys_update", InputSerializer)
    def patch(self, request, ident: str):
        access, key, data = self._key_and_input(request, ident)
        key = api_key_update(api_key=key, actor=access.actor, **data)
        return Response(KeyOutputSerializer(key).data)


class KeyRevokeApi(_OrgApi):
    @extend_schema_serializer(component_name="KeyRevokeInput")
    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")

    @_key_write("keys_revoke", InputSerializer)
    def post(self, request, ident: str):
        access, key, data = self._key_and_input(request, ident)
        key = api_key_revoke(api_key=key, actor=access.actor, **data)
        return Response(KeyOutputSerializer(key).data)


class KeyRotateApi(_OrgApi):
    @extend_schema_serializer(component_name="KeyRotateInput")
    class InputSerializer(serializers.Serializer):
        grace_seconds = serializers.IntegerField(
            min_value=0,
            max_value=30 * 24 * 3600,
            required=False,
            help_text="How long the old key keeps working (default 86400; 0 ends it now).",
        )

    @_key_write("keys_rotate", InputSerializer, IssuedKeyOutputSerializer, 201)
    def post(self, request, ident: str):
        access, key, data = self._key_and_input(request, ident)
        grace = data.get("grace_seconds")
        issued = api_key_rotate(
            api_key=key,
            actor=access.actor,
            grace=None if grace is None else timedelta(seconds=grace),
        )
        return Response(_issued(issued), status=status.HTTP_201_CREATED)
