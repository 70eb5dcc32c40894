"""Operators' writes on tenants: create one (organization, owner, custom quotas, first key) in one
transaction, change its plan and quotas, reset its month's usage. Each step is audited by the
service that owns it, with the operator as the actor."""

from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db import transaction

from accounts.actors import Actor
from accounts.models import Organization, User
from accounts.services import (
    organization_create,
    organization_set_plan,
    organization_set_quota,
    user_create,
)
from billing.models import BillingAccount, Plan
from billing.selectors import PLAN_NOT_FOUND, plan_get
from billing.subscriptions.state import LIVE
from infra.errors import ApplicationError
from keys.services import IssuedKey, api_key_create
from metering.quota import quota_reset

ORGANIZATION_CLOSED = "organization_closed"
ORGANIZATION_CLOSED_MESSAGE = "Organization {slug} was closed by its owner; it cannot change."
PLAN_MANAGED_BY_STRIPE = "plan_managed_by_stripe"
PLAN_MANAGED_BY_STRIPE_MESSAGE = (
    "Organization {slug} pays for its plan by a live Stripe subscription, which sets its plan: "
    "change or cancel the subscription instead (Django admin, Stripe billing)."
)
QUOTA_FIELDS = Organization.QUOTA_FIELDS


@dataclass(frozen=True, slots=True)
class NewTenant:
    organization: Organization
    owner: User
    first_key: IssuedKey  # its raw key exists only here: shown once, never stored or logged


def _plan(slug: str) -> Plan:
    """The plan by slug; an unknown one is the caller's input error (400 on `plan`)."""
    try:
        return plan_get(slug=slug)
    except ApplicationError as error:
        if error.code == PLAN_NOT_FOUND:
            raise ValidationError({"plan": error.message}) from None
        raise


def _require_open(organization: Organization) -> None:
    if organization.deleted_at is not None:
        message = ORGANIZATION_CLOSED_MESSAGE.format(slug=organization.slug)
        raise ApplicationError(ORGANIZATION_CLOSED, message, status=409)


@transaction.atomic
def tenant_create(
    *,
    actor: Actor,
    name: str,
    owner_email: str,
    plan: str,
    slug: str | None = None,
    key_name: str = "default",
    key_scopes: list[str] | None = None,
    **quotas: int | None,
) -> NewTenant:
    """A new organization on `plan` with custom `quotas` (monthly_request_quota,
    monthly_token_quota; None: the plan's), owned by `owner_email` (a new account without a
    password, set by password reset, unless one exists), and its first API key."""
    chosen = _plan(plan)
    owner = User.objects.filter(email__iexact=owner_email.strip()).first()
    if owner is None:
        owner = user_create(email=owner_email, password=None)
    organization = organization_create(
        name=name, owner=owner, plan=chosen, slug=slug or None, actor=actor
    )
    custom = {field: quotas[field] for field in QUOTA_FIELDS if quotas.get(field) is not None}
    if custom:
        organization = organization_set_quota(organization=organization, actor=actor, quotas=custom)
    first_key = api_key_create(
        organization=organization, name=key_name, actor=actor, scopes=key_scopes
    )
    return NewTenant(organization=organization, owner=owner, first_key=first_key)


@transaction.atomic
def tenant_update(
    *, organization: Organization, actor: Actor, plan: str | None = None, **quotas: int | None
) -> Organization:
    """Change the plan and/or the custom quotas given (a quota of None: back to the plan's).
    Refused for a closed organization and, for the plan, while a live Stripe subscription sets
    it."""
    organization = Organization.objects.select_for_update().get(pk=organization.pk)
    _require_open(organization)
    if plan is not None:
        chosen = _plan(plan)
        if chosen.pk != organization.plan_id:
            subscribed = BillingAccount.objects.filter(
                organization=organization, subscription_status__in=LIVE
            ).exclude(stripe_subscription_id="")
            if subscribed.exists():
                message = PLAN_MANAGED_BY_STRIPE_MESSAGE.format(slug=organization.slug)
                raise ApplicationError(PLAN_MANAGED_BY_STRIPE, message, status=409)
            organization_set_plan(organization=organization, plan=chosen, actor=actor)
    given = {field: quotas[field] for field in QUOTA_FIELDS if field in quotas}
    if given:
        organization = organization_set_quota(organization=organization, actor=actor, quotas=given)
    return Organization.objects.select_related("plan").get(pk=organization.pk)


def tenant_reset_usage(*, organization: Organization, actor: Actor, reason: str = "") -> None:
    """Zero the organization's quota counter of this month (audited as quota.reset)."""
    _require_open(organization)
    quota_reset(organization, actor=actor, reason=reason)
