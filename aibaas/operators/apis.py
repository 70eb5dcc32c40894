"""/api/admin/orgs: tenant lifecycle for operators (staff users by session or JWT, or the
operator token). One APIView per operation; the services audit every change."""

from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_field,
    extend_schema_serializer,
)
from rest_framework import serializers, status
from rest_framework.authentication import SessionAuthentication
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.tokens import VersionedJWTAuthentication
from aibaas.operators.authentication import (
    IsOperator,
    OperatorTokenAuthentication,
    operator_actor,
)
from aibaas.operators.selectors import tenant_get, tenant_list, tenant_usage
from aibaas.operators.services import tenant_create, tenant_reset_usage, tenant_update
from infra.pagination import Pagination
from infra.schema import errors
from keys.apis import IssuedKeyOutputSerializer, KeyOutputSerializer
from keys.authentication import ManagementApiKeyAuthentication
from keys.models import Scope

MAX_QUOTA = 10**15


def _quota_field(what: str) -> serializers.IntegerField:
    return serializers.IntegerField(
        min_value=0,
        max_value=MAX_QUOTA,
        allow_null=True,
        required=False,
        help_text=f"Custom monthly {what} quota; null: the plan's.",
    )


class MonthUsageOutputSerializer(serializers.Serializer):
    period = serializers.DateField(help_text="First day of the calendar month (UTC).")
    requests = serializers.IntegerField(help_text="Billable requests counted by the quota.")
    tokens = serializers.IntegerField(help_text="Their tokens, input and output.")


class OrgOutputSerializer(serializers.Serializer):
    slug = serializers.CharField()
    name = serializers.CharField()
    plan = serializers.CharField(source="plan.slug")
    custom_monthly_request_quota = serializers.IntegerField(
        source="monthly_request_quota", allow_null=True, help_text="null: the plan's."
    )
    custom_monthly_token_quota = serializers.IntegerField(
        source="monthly_token_quota", allow_null=True, help_text="null: the plan's."
    )
    monthly_request_quota = serializers.SerializerMethodField(
        help_text="The quota in force (custom, else the plan's); null: unlimited."
    )
    monthly_token_quota = serializers.SerializerMethodField(
        help_text="The quota in force (custom, else the plan's); null: unlimited."
    )
    usage = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()
    closed_at = serializers.DateTimeField(source="deleted_at", allow_null=True)

    def get_monthly_request_quota(self, organization) -> int | None:
        return organization.quota_limits()["monthly_request_quota"]

    def get_monthly_token_quota(self, organization) -> int | None:
        return organization.quota_limits()["monthly_token_quota"]

    @extend_schema_field(MonthUsageOutputSerializer)
    def get_usage(self, organization) -> dict:
        usage = self.context["usage"][organization.pk]
        return MonthUsageOutputSerializer(usage).data


def _org(organization, usage=None) -> dict:
    usage = usage or tenant_usage(organizations=[organization])
    return OrgOutputSerializer(organization, context={"usage": usage}).data


class NewOrgOutputSerializer(OrgOutputSerializer):
    owner_email = serializers.EmailField()
    key = IssuedKeyOutputSerializer(help_text="The first API key; its raw key is shown this once.")


class _OperatorApi(APIView):
    authentication_classes = [
        OperatorTokenAuthentication,
        SessionAuthentication,
        ManagementApiKeyAuthentication,  # so that a tenant key is told 403, not taken for a JWT
        VersionedJWTAuthentication,
    ]
    permission_classes = [IsOperator]


class OrgListCreateApi(_OperatorApi):
    pagination_class = Pagination

    @extend_schema_serializer(component_name="OrgCreateInput")
    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=100)
        owner_email = serializers.EmailField(
            help_text="The owner; a new account (no password: set by password reset) if unknown."
        )
        plan = serializers.SlugField(max_length=50, default="free")
        slug = serializers.SlugField(max_length=60, required=False)
        monthly_request_quota = _quota_field("request")
        monthly_token_quota = _quota_field("token")
        key_name = serializers.CharField(max_length=100, default="default")
        key_scopes = serializers.ListField(
            child=serializers.ChoiceField(choices=Scope.values),
            min_length=1,
            max_length=10,
            required=False,
            help_text="Scopes of the first key (default: inference).",
        )

    @extend_schema(
        parameters=[OpenApiParameter("plan", str, description="Only organizations on this plan.")],
        responses={200: OrgOutputSerializer(many=True), **errors(400, 401, 403)},
        operation_id="admin_orgs_list",
    )
    def get(self, request):
        organizations = tenant_list(plan=request.query_params.get("plan"))
        paginator = self.pagination_class()
        page = list(paginator.paginate_queryset(organizations, request, view=self))
        usage = tenant_usage(organizations=page)
        data = OrgOutputSerializer(page, many=True, context={"usage": usage}).data
        return paginator.get_paginated_response(data)

    @extend_schema(
        request=InputSerializer,
        responses={201: NewOrgOutputSerializer, **errors(400, 401, 403)},
        operation_id="admin_orgs_create",
    )
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        tenant = tenant_create(actor=operator_actor(request), **serializer.validated_data)
        data = _org(tenant.organization)
        data["owner_email"] = tenant.owner.email
        data["key"] = {
            **KeyOutputSerializer(tenant.first_key.api_key).data,
            "key": tenant.first_key.raw_key,
        }
        return Response(data, status=status.HTTP_201_CREATED)


class OrgDetailApi(_OperatorApi):
    @extend_schema_serializer(component_name="OrgUpdateInput")
    class InputSerializer(serializers.Serializer):
        plan = serializers.SlugField(max_length=50, required=False)
        monthly_request_quota = _quota_field("request")
        monthly_token_quota = _quota_field("token")

    @extend_schema(
        responses={200: OrgOutputSerializer, **errors(401, 403, 404)},
        operation_id="admin_orgs_read",
    )
    def get(self, request, slug: str):
        return Response(_org(tenant_get(slug=slug)))

    @extend_schema(
        request=InputSerializer,
        responses={200: OrgOutputSerializer, **errors(400, 401, 403, 404, 409)},
        operation_id="admin_orgs_update",
    )
    def patch(self, request, slug: str):
        organization = tenant_get(slug=slug)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        organization = tenant_update(
            organization=organization, actor=operator_actor(request), **serializer.validated_data
        )
        return Response(_org(organization))


class OrgResetUsageApi(_OperatorApi):
    @extend_schema_serializer(component_name="OrgResetUsageInput")
    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")

    @extend_schema(
        request=InputSerializer,
        responses={200: OrgOutputSerializer, **errors(400, 401, 403, 404, 409)},
        operation_id="admin_orgs_reset_usage",
    )
    def post(self, request, slug: str):
        organization = tenant_get(slug=slug)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        tenant_reset_usage(
            organization=organization, actor=operator_actor(request), **serializer.validated_data
        )
        return Response(_org(organization))
