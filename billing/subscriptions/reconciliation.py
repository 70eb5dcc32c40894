"""Does Stripe bill what we metered? Per organization and hour reported to Stripe's meter: the
billable tokens our usage events hold now, what the outbox reported (MeterReport), and what
Stripe's meter says it received (its event summaries, grouped by hour). Every window where they
disagree, or whose report is still owed, is a difference; none is expected.
"""

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime

from accounts.models import Organization
from accounts.selectors import organization_get
from billing.models import MeterReport
from billing.subscriptions import stripe_client
from billing.subscriptions.sync import METER_EVENT_NAME
from billing.subscriptions.usage import billable_tokens_by_hour


@dataclass(frozen=True, slots=True)
class WindowDifference:
    organization: str
    window_start: datetime
    metered: int
    reported: int
    received: int | None  # None: Stripe was not asked (billing offline)
    status: str


@dataclass(frozen=True, slots=True)
class PeriodTotal:
    organization: str
    period: str  # YYYY-MM (UTC)
    metered: int
    received: int | None


@dataclass
class Reconciliation:
    differences: list[WindowDifference]
    totals: list[PeriodTotal]
    asked_stripe: bool


def _received(meter_id: str | None, customer: str, rows: list[MeterReport]) -> dict:
    if meter_id is None:
        return {}
    start, end = int(rows[0].window_start.timestamp()), int(rows[-1].window_end.timestamp())
    by_hour = stripe_client.meter_received_by_hour(
        meter_id=meter_id, customer=customer, start=start, end=end
    )
    return {datetime.fromtimestamp(t, tz=UTC): round(v) for t, v in by_hour.items()}


def usage_reconcile_with_stripe(*, organization_slug: str | None = None) -> Reconciliation:
    """Compare, for every window in the outbox (of one organization or all), metered, reported
    and, with billing online, received by Stripe. Raises stripe_client.StripeError when Stripe
    cannot answer (nothing is compared then)."""
    reports = MeterReport.objects.order_by("window_start")
    if organization_slug:
        reports = reports.filter(organization=organization_get(slug=organization_slug))
    asked = stripe_client.enabled()
    meter_id = stripe_client.meter_id_for(METER_EVENT_NAME) if asked else None
    groups: dict[tuple[int, str], list[MeterReport]] = defaultdict(list)
    for row in reports:
        groups[(row.organization_id, row.stripe_customer_id)].append(row)
    slugs = dict(
        Organization.objects.filter(pk__in={k[0] for k in groups}).values_list("pk", "slug")
    )
    result = Reconciliation(differences=[], totals=[], asked_stripe=asked)
    totals: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for (org_id, customer), rows in groups.items():
        metered = billable_tokens_by_hour(
            organization_id=org_id, start=rows[0].window_start, end=rows[-1].window_end
        )
        received = _received(meter_id, customer, rows) if asked else {}
        for row in rows:
            ours = metered.get(row.window_start, 0)
            reported = row.tokens if row.status == MeterReport.Status.SENT else 0
            theirs = received.get(row.window_start, 0) if asked else None
            total = totals[(slugs[org_id], f"{row.window_start:%Y-%m}")]
            total[0] += ours
            total[1] += theirs or 0
            owed = row.status in (MeterReport.Status.PENDING, MeterReport.Status.FAILED)
            if owed or ours != reported or (asked and theirs != ours):
                result.differences.append(
                    WindowDifference(
                        slugs[org_id], row.window_start, ours, reported, theirs, row.status
                    )
                )
    result.totals = [
        PeriodTotal(org, period, metered, received if asked else None)
        for (org, period), (metered, received) in sorted(totals.items())
    ]
    return result
