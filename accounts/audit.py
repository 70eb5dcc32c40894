"""The audit log: one service to append, selectors to read. Nothing updates or deletes events.

Each event names what it acted on as people read it (`target_label`: an email, a key's name and
id, an organization's name), copied when it happened, so the log reads the same after the
subject is renamed or deleted.
"""

import csv
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.db.models import QuerySet

from accounts.actors import Actor
from accounts.models import AuditAction, AuditEvent, Organization, User
from infra.logs import redact_stored

# The audit log shows IPs and emails: owners and admins read it, on the API and the dashboard.
READERS_ONLY = "Only owners and admins can read the audit log."

_LABELS = dict(AuditAction.choices)
_TARGET_TYPES = {
    "user": "member",
    "api_key": "key",
    "organization": "organization",
    "invitation": "invitation",
    "plan": "plan",
    "subscription": "subscription",
    "quota": "monthly quota",
}
CSV_COLUMNS = [
    "time_utc",
    "action",
    "action_label",
    "actor",
    "target_type",
    "target_label",
    "target_id",
    "ip",
    "user_agent",
    "details",
]
# A cell a spreadsheet would run as a formula (OWASP "CSV injection"): =, +, -, @, tab, CR.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


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


def _default_target_label(target_type: str, target_id: str, metadata: dict) -> str:
    """A readable name for callers that give only an id (a user's pk, a key id)."""
    if target_type == "user" and target_id.isdigit():
        email = User.objects.filter(pk=int(target_id)).values_list("email", flat=True).first()
        return email or ""
    if target_type == "api_key" and target_id:
        return key_label(metadata.get("name") or "", target_id)
    return ""


def key_label(name: str, key_id: str) -> str:
    """How the log names a key: "'CI deploy' (AbCd1234EfGh)", or its id alone when unnamed."""
    return f"'{name}' ({key_id})" if name else key_id


def audit_record(
    *,
    action: str,
    actor: Actor,
    organization: Organization | None = None,
    target_type: str = "",
    target_id: str = "",
    target_label: str = "",
    metadata: dict | None = None,
) -> AuditEvent:
    metadata = _redact(metadata or {})
    target_id = str(target_id)[:64]
    label = target_label or _default_target_label(target_type, target_id, metadata)
    return AuditEvent.objects.create(
        organization=organization,
        organization_slug=_slug(organization),
        actor_user=actor.user,
        actor_key_id=actor.key_id,
        actor_label=actor.label[:254],
        action=action,
        target_type=target_type,
        target_id=target_id,
        target_label=redact_stored(label)[:254],
        ip=actor.ip,
        user_agent=actor.user_agent,
        metadata=metadata,
    )


def action_label(action: str) -> str:
    """'member.role_changed' → "Member's role changed"; an action without a label reads as its
    words ('billing.something_new' → 'Billing: something new')."""
    if action in _LABELS:
        return str(_LABELS[action])
    head, _, tail = action.partition(".")
    return f"{head.capitalize()}: {tail.replace('_', ' ')}" if tail else action.capitalize()


def target_text(event: AuditEvent) -> str:
    """What the event acted on, as people read it: "member ada@example.com", "key 'CI deploy'
    (AbCd1234EfGh)", "organization Acme"."""
    kind = _TARGET_TYPES.get(event.target_type, event.target_type.replace("_", " "))
    name = event.target_label or event.target_id
    if not name:
        return ""
    return f"{kind} {name}" if kind else name


def audit_list(
    *,
    organization: Organization,
    action: str | None = None,
    actor: str | None = None,
    since: date | None = None,
    until: date | None = None,
) -> QuerySet[AuditEvent]:
    """The organization's events, newest first. `action` is a prefix ('key.' or 'key.revoked'),
    `actor` part of the actor's label, `since`/`until` whole UTC days, both included."""
    events = AuditEvent.objects.filter(organization=organization).select_related("actor_user")
    if action:
        events = events.filter(action__startswith=action)
    if actor:
        events = events.filter(actor_label__icontains=actor)
    if since:
        events = events.filter(created_at__gte=_day_start(since))
    if until:
        events = events.filter(created_at__lt=_day_start(until + timedelta(days=1)))
    return events


def audit_actors(*, organization: Organization) -> list[str]:
    """Everyone who appears as an actor in the organization's log, for the filter's choices."""
    labels = (
        AuditEvent.objects.filter(organization=organization)
        .order_by("actor_label")
        .values_list("actor_label", flat=True)
        .distinct()
    )
    return [label for label in labels if label]


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    if text.lstrip(" ").startswith(_FORMULA_START):
        return "'" + text  # shown as text, never evaluated
    return text


def _details(metadata: dict) -> str:
    return "; ".join(f"{key}={value}" for key, value in metadata.items())


class _Echo:
    """A file-like object whose write returns the line: csv.writer feeds a streaming response."""

    def write(self, value: str) -> str:
        return value


def audit_csv_lines(events: Iterable[AuditEvent]) -> Iterator[str]:
    """The events as CSV lines (header first), one at a time, every cell formula-safe."""
    writer = csv.writer(_Echo())
    yield writer.writerow(CSV_COLUMNS)
    for event in events:
        yield writer.writerow(
            [
                _cell(value)
                for value in (
                    event.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
                    event.action,
                    action_label(event.action),
                    event.actor_label,
                    event.target_type,
                    target_text(event),
                    event.target_id,
                    event.ip,
                    event.user_agent,
                    _details(event.metadata),
                )
            ]
        )
