"""An operator's custom monthly quotas for one organization (the operators' API): each replaces
its plan's quota while set (None: the plan's again). Audited; the organization's keys re-read
their limits on their next request (keys/signals.py)."""

from django.core.exceptions import ValidationError
from django.db import transaction

from accounts.actors import Actor
from accounts.audit import audit_record
from accounts.models import AuditAction, Organization

QUOTA_NEGATIVE = "A quota is a whole number of at least 0 (null: the plan's quota)."
QUOTA_UNKNOWN = "Not a quota of an organization."


@transaction.atomic
def organization_set_quota(
    *, organization: Organization, actor: Actor, quotas: dict[str, int | None]
) -> Organization:
    """Set the custom quotas in `quotas` (Organization.QUOTA_FIELDS; one left out keeps its
    value, None: the plan's again). Idempotent: no change, no audit event."""
    for field, value in quotas.items():
        if field not in Organization.QUOTA_FIELDS:
            raise ValidationError({field: QUOTA_UNKNOWN})
        if value is not None and (not isinstance(value, int) or value < 0):
            raise ValidationError({field: QUOTA_NEGATIVE})
    organization = Organization.objects.select_for_update().get(pk=organization.pk)
    changes = {
        field: {"from": getattr(organization, field), "to": value}
        for field, value in quotas.items()
        if getattr(organization, field) != value
    }
    if not changes:
        return organization
    for field, change in changes.items():
        setattr(organization, field, change["to"])
    organization.save(update_fields=list(changes))
    audit_record(
        action=AuditAction.QUOTA_CHANGED,
        actor=actor,
        organization=organization,
        target_type="organization",
        target_id=organization.slug,
        target_label=organization.name,
        metadata=changes,
    )
    return organization
