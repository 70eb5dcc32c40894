"""The audit log: one service to append, selectors to read. Nothing updates or deletes events."""

from typing import Any

from django.db.models import QuerySet

from accounts.actors import Actor
from accounts.models import AuditEvent, Organization
from infra.logs import redact_stored

# The audit log shows IPs and emails: owners and admins read it, on the API and the dashboard.
READERS_ONLY = "Only owners and admins can read the audit log."


def _redact(value: Any) -> Any:
    """Defence in depth: whatever a caller passes, a string that looks like an API key never
    reaches the audit table."""
    if isinstance(value, str):
        return redact_stored(value)
    if isinstance(value, dict):
        return {str(k): _redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v) for v in value]
    return value


def _slug(organization: Organization | None) -> str:
    if organization is None:
        return ""
    if not organization.slug and organization.pk is not None:  # an id-only instance
        slug = Organization.objects.filter(pk=organization.pk).values_list("slug", flat=True)
        return slug.first() or ""
    return organization.slug


def audit_record(
    *,
    action: str,
    actor: Actor,
    organization: Organization | None = None,
    target_type: str = "",
    target_id: str = "",
    metadata: dict | None = None,
) -> AuditEvent:
    return AuditEvent.objects.create(
        organization=organization,
        organization_slug=_slug(organization),
        actor_user=actor.user,
        actor_key_id=actor.key_id,
        actor_label=actor.label[:254],
        action=action,
        target_type=target_type,
        target_id=str(target_id)[:64],
        ip=actor.ip,
        user_agent=actor.user_agent,
        metadata=_redact(metadata or {}),
    )


def audit_list(
    *, organization: Organization, action: str | None = None, actor: str | None = None
) -> QuerySet[AuditEvent]:
    events = AuditEvent.objects.filter(organization=organization).select_related("actor_user")
    if action:
        events = events.filter(action__startswith=action)
    if actor:
        events = events.filter(actor_label__icontains=actor)
    return events
