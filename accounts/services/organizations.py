import secrets

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.text import slugify

from accounts.actors import Actor
from accounts.audit import audit_record
from accounts.models import AuditAction, Invitation, Membership, Organization, Role, User
from accounts.services import rules
from accounts.services.team import acting_membership
from accounts.services.users import user_create
from accounts.signals import organization_closing
from billing.defaults import DEFAULT_PLAN_SLUG
from billing.models import BillingAccount, Plan
from billing.selectors import plan_get
from infra.errors import ApplicationError

SLUG_TAKEN = "An organization with this slug already exists."
ORGANIZATION_HAS_USAGE = "organization_has_usage"
ORGANIZATION_HAS_USAGE_MESSAGE = (
    "Organization {slug} has recorded usage ({count} events): usage is billing data, so the "
    "organization cannot be deleted. Revoke its keys and remove its members instead."
)
ORGANIZATION_HAS_SUBSCRIPTION = "organization_has_subscription"
ORGANIZATION_HAS_SUBSCRIPTION_MESSAGE = (
    "Organization {slug} has a Stripe subscription: it is closed (its subscription canceled), "
    "not deleted."
)
ORGANIZATION_HAS_KEYS = "organization_has_keys"
ORGANIZATION_HAS_KEYS_MESSAGE = (
    "Organization {slug} has {count} API key(s), revoked ones included: keys are revoked, never "
    "deleted, so the organization cannot be deleted. Revoke its keys and remove its members "
    "instead."
)


def _audit_organization(
    organization: Organization, action: str, *, actor: Actor, metadata: dict, label: str = ""
) -> None:
    """An audit event about the organization itself (its slug, its name unless `label`)."""
    audit_record(
        action=action,
        actor=actor,
        organization=organization,
        target_type="organization",
        target_id=organization.slug,
        target_label=label or organization.name,
        metadata=metadata,
    )


def _unique_slug(name: str) -> str:
    base = slugify(name)[:50].strip("-") or "org"
    if not Organization.objects.filter(slug=base).exists():
        return base
    for n in range(2, 20):
        candidate = f"{base}-{n}"
        if not Organization.objects.filter(slug=candidate).exists():
            return candidate
    return f"{base}-{secrets.token_hex(3)}"


DELETE_CONFIRMATION_MISMATCH = "Type the organization's name exactly to confirm."


@transaction.atomic
def organization_create(
    *,
    name: str,
    owner: User,
    plan: Plan | None = None,
    slug: str | None = None,
    actor: Actor | None = None,
) -> Organization:
    """Create an organization with `owner` as its owner member. Default plan: free.

    Audited as done by `actor` (default: the owner, as at signup)."""
    name = name.strip()
    if not name:
        raise ValidationError({"name": "An organization needs a name."})
    plan = plan or plan_get(slug=DEFAULT_PLAN_SLUG)
    if slug is not None:
        slug = slugify(slug)
        if not slug:
            raise ValidationError({"slug": "The slug must contain letters or digits."})
        if Organization.objects.filter(slug=slug).exists():
            raise ValidationError({"slug": SLUG_TAKEN})
    # Two signups with the same organization name may race for the slug: retry on conflict.
    for _ in range(5):
        try:
            with transaction.atomic():
                organization = Organization.objects.create(
                    name=name, slug=slug or _unique_slug(name), plan=plan
                )
            break
        except IntegrityError:
            if slug:
                raise ValidationError({"slug": SLUG_TAKEN}) from None
    else:  # pragma: no cover - five collisions in a row
        raise ValidationError({"name": "Could not allocate a unique slug; try another name."})
    Membership.objects.create(user=owner, organization=organization, role=Role.OWNER)
    _audit_organization(
        organization,
        AuditAction.ORGANIZATION_CREATED,
        actor=actor or Actor(user=owner),
        metadata={"plan": plan.slug, "owner": owner.email},
    )
    return organization


@transaction.atomic
def user_signup(
    *,
    email: str,
    password: str,
    organization_name: str,
    full_name: str = "",
    actor: Actor | None = None,
) -> Membership:
    """Sign up: the user, an organization on the free plan and an owner membership, or nothing.

    `actor` carries the request's address for the audit log (the user is filled in here)."""
    user = user_create(email=email, password=password, full_name=full_name)
    actor = Actor(
        user=user,
        role=Role.OWNER,
        ip=actor.ip if actor else None,
        user_agent=actor.user_agent if actor else "",
    )
    organization = organization_create(
        name=organization_name or f"{user.get_short_name()}'s organization",
        owner=user,
        actor=actor,
    )
    audit_record(
        action=AuditAction.USER_SIGNED_UP,
        actor=actor,
        organization=organization,
        target_type="user",
        target_id=str(user.pk),
        target_label=user.email,
    )
    return Membership.objects.select_related("organization", "user").get(
        user=user, organization=organization
    )


@transaction.atomic
def organization_set_plan(
    *, organization: Organization, plan: Plan, actor: Actor | None = None
) -> Organization:
    """Move the organization to `plan`. With an `actor` (operators: admin, set_plan) the change
    is audited here; billing audits its own transitions with Stripe's reasons. The
    organization's keys re-read their limits: keys/signals.py (keys sits above accounts)."""
    before = Organization.objects.filter(pk=organization.pk).values_list("plan__slug", flat=True)
    before = before.first()
    organization.plan = plan
    organization.save(update_fields=["plan"])
    if actor is not None and before != plan.slug:
        _audit_organization(
            organization,
            AuditAction.PLAN_CHANGED,
            actor=actor,
            metadata={"from": before, "to": plan.slug},
        )
    return organization


@transaction.atomic
def organization_rename(*, organization: Organization, actor: Actor, name: str) -> Organization:
    """Owners and admins rename; the slug (the stable public id) stays."""
    rules.require_manager(acting_membership(actor=actor, organization=organization))
    name = (name or "").strip()
    if not name:
        raise ValidationError({"name": "An organization needs a name."})
    organization = Organization.objects.select_for_update().get(pk=organization.pk)
    before = organization.name
    if before == name:
        return organization
    organization.name = name
    organization.save(update_fields=["name"])
    _audit_organization(
        organization,
        AuditAction.ORGANIZATION_RENAMED,
        actor=actor,
        label=name,
        metadata={"from": before, "to": name},
    )
    return organization


@transaction.atomic
def organization_delete_by_owner(
    *, organization: Organization, actor: Actor, confirmation: str
) -> bool:
    """An owner deletes the organization, typing its name to confirm. Its keys are revoked (by
    keys, listening to `organization_closing`), its members and invitations go, its audit log
    stays. The row itself goes when nothing holds it (organization_delete); an organization
    with usage or keys (billing records) is closed instead: kept, marked deleted, reachable by
    nobody. Returns True when the row was deleted."""
    rules.require_owner(acting_membership(actor=actor, organization=organization))
    organization = Organization.objects.select_for_update().get(pk=organization.pk)
    if confirmation.strip() != organization.name.strip():
        raise ValidationError({"confirmation": DELETE_CONFIRMATION_MISMATCH})
    if organization_delete_refusal(organization=organization) is None:
        organization_delete(organization=organization, actor=actor)
        return True
    organization_closing.send(sender=Organization, organization=organization, actor=actor)
    members = list(organization.memberships.select_related("user").values_list("user__email"))
    Invitation.objects.filter(
        organization=organization, accepted_at__isnull=True, revoked_at__isnull=True
    ).update(revoked_at=timezone.now())
    organization.memberships.all().delete()
    organization.deleted_at = timezone.now()
    organization.save(update_fields=["deleted_at"])
    _audit_organization(
        organization,
        AuditAction.ORGANIZATION_DELETED,
        actor=actor,
        metadata={
            "name": organization.name,
            "plan": organization.plan.slug,
            "kept": "usage and keys (billing records); keys revoked",
            "members": [email for (email,) in members],
        },
    )
    return False


def organization_delete_refusal(*, organization: Organization) -> ApplicationError | None:
    """Why the organization may not be deleted, or None. Usage events are billing data and keys
    are revoked, never deleted: an organization that has either does not go away with a click.
    What may be deleted is one created by mistake (members and audit events only)."""
    usage = organization.usage_events.count()
    if usage:
        message = ORGANIZATION_HAS_USAGE_MESSAGE.format(slug=organization.slug, count=usage)
        return ApplicationError(ORGANIZATION_HAS_USAGE, message, status=409)
    keys = organization.api_keys.count()
    if keys:
        message = ORGANIZATION_HAS_KEYS_MESSAGE.format(slug=organization.slug, count=keys)
        return ApplicationError(ORGANIZATION_HAS_KEYS, message, status=409)
    # Its Stripe subscription is canceled when it closes (billing listens): deleting the row
    # would take the billing account with it, and Stripe would go on charging.
    if (
        BillingAccount.objects.filter(organization=organization)
        .exclude(stripe_subscription_id="")
        .exclude(subscription_status__in=("canceled", "incomplete_expired"))
    ):
        message = ORGANIZATION_HAS_SUBSCRIPTION_MESSAGE.format(slug=organization.slug)
        return ApplicationError(ORGANIZATION_HAS_SUBSCRIPTION, message, status=409)
    return None


@transaction.atomic
def organization_delete(*, organization: Organization, actor: Actor) -> None:
    """Delete an organization without usage or keys (else ApplicationError, 409): its
    memberships and quota counters go with it; its audit events stay, with its slug, and gain
    one `organization.deleted` event."""
    organization = Organization.objects.select_for_update().get(pk=organization.pk)
    refusal = organization_delete_refusal(organization=organization)
    if refusal is not None:
        raise refusal
    _audit_organization(
        organization,
        AuditAction.ORGANIZATION_DELETED,
        actor=actor,
        metadata={"name": organization.name, "plan": organization.plan.slug},
    )
    organization.delete()
