from django.db import models
from django.db.models import Q
from django.utils import timezone


class UsageEvent(models.Model):
    """One authenticated /v1 request: what it used and what it cost. Written in batches off the
    request path (metering/usage/); `request_id` is unique, so a replayed batch is harmless."""

    request_id = models.CharField(
        max_length=100, unique=True, help_text="The request's X-Request-ID; the idempotency key."
    )
    # Billing records outlive nothing by accident: an organization with usage is never deleted
    # (accounts.services.organization_delete refuses it; PROTECT holds for any other path).
    organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.PROTECT, related_name="usage_events"
    )
    api_key = models.ForeignKey(
        "keys.ApiKey",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="usage_events",
    )
    key_id = models.CharField(
        max_length=32, help_text="Public id of the calling key, kept if the key is deleted."
    )
    model = models.CharField(max_length=200, help_text="Public model name the client asked for.")
    endpoint = models.CharField(
        max_length=50, help_text='The /v1 operation: "chat.completions", "embeddings", ...'
    )
    status_code = models.PositiveSmallIntegerField(help_text="HTTP status of the response.")
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    estimated = models.BooleanField(
        default=False, help_text="Token counts estimated by our tokenizer, not the upstream's."
    )
    cached = models.BooleanField(default=False, help_text="Served from the response cache.")
    cost = models.DecimalField(
        max_digits=18, decimal_places=8, default=0, help_text="Price of the request, in USD."
    )
    latency_ms = models.PositiveIntegerField(default=0, help_text="Total time in aibaas.")
    upstream_latency_ms = models.PositiveIntegerField(
        null=True, blank=True, help_text="Time spent waiting for the model; empty when none ran."
    )
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    # db_default: a process of the previous release still inserts rows without these columns
    # while the migration rolls out.
    error_code = models.CharField(
        max_length=50,
        blank=True,
        default="",
        db_default="",
        help_text='The error code of the answer ("rate_limit_exceeded", "model_not_found", ...); '
        "empty for a success.",
    )
    billable = models.BooleanField(
        default=True,
        db_default=True,
        help_text="Admitted: counted by the limits and the quota, one of the organization's "
        '"requests". A refusal is not (its error_code says why).',
    )
    created_at = models.DateTimeField(
        default=timezone.now, db_index=True, help_text="When the request was received."
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["organization", "created_at"], name="usage_org_time"),
            models.Index(fields=["api_key", "created_at"], name="usage_key_time"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(cost__gte=0), name="usage_cost_not_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.endpoint} {self.model} ({self.status_code})"


class QuotaCounter(models.Model):
    """What an organization used of its monthly quota in one calendar month (UTC). Written only
    by metering/quota/: one conditional UPDATE per admitted request (or lease), lazily created
    on the first request of a month. Rows of past months stay as history."""

    organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.CASCADE, related_name="quota_counters"
    )
    period = models.DateField(help_text="First day of the calendar month (UTC) counted here.")
    requests = models.PositiveBigIntegerField(default=0, help_text="Requests admitted this month.")
    tokens = models.PositiveBigIntegerField(
        default=0, help_text="Tokens used this month (estimates, settled to actual counts)."
    )
    updated_at = models.DateTimeField(default=timezone.now, help_text="Last admission or change.")
    # db_default: the quota's statements are raw SQL, and a process of the previous release
    # still inserts rows without these columns while the migration rolls out.
    generation = models.PositiveIntegerField(
        default=0,
        db_default=0,
        help_text="Bumped by every reset: settlements and lease give-backs of admissions "
        "counted before a reset apply only to their own generation.",
    )
    leased_requests = models.PositiveBigIntegerField(
        default=0,
        db_default=0,
        help_text="Part of `requests` reserved by processes' leases not yet given back.",
    )
    leased_tokens = models.PositiveBigIntegerField(
        default=0,
        db_default=0,
        help_text="Part of `tokens` reserved by processes' leases not yet given back.",
    )
    leased_until = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When every lease counted in leased_* is to have been given back; after "
        "that instant they are leases of processes that died (lost for the month).",
    )

    class Meta:
        ordering = ["-period", "organization_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "period"], name="quota_counter_org_period"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.organization_id} {self.period:%Y-%m}: {self.requests} req, {self.tokens} tok"


# Upper bounds (ms) of the latency histograms' buckets; the last bucket holds everything above.
# Fixed for good: changing them needs a migration and `rebuild_rollups`.
LATENCY_BOUNDS_MS = (
    5, 10, 25, 50, 75, 100, 150, 200, 300, 500, 750,
    1000, 1500, 2000, 3000, 5000, 7500, 10000, 15000, 20000, 30000, 60000,
)  # fmt: skip
HISTOGRAM_BUCKETS = len(LATENCY_BOUNDS_MS) + 1


class UsageRollup(models.Model):
    """Usage events summed per organization x key x model x hour (or day), UTC: what every usage
    figure reads (GET /v1/usage, /api/usage, the dashboard), never the events themselves.

    Maintained in the transaction that stores the events (metering/rollups/maintenance.py), from
    the rows that transaction inserted, so a replayed batch adds nothing; `rebuild_rollups`
    recomputes them from the events. Billable events are rows with `refusal_code` "" (requests,
    tokens, cost, errors, latency); refused ones are rows with their error code (`refused`)."""

    HOUR = "hour"
    DAY = "day"
    GRANULARITIES = [(HOUR, "hour"), (DAY, "day")]

    # No index of its own: usage_rollup_dimensions leads with it (and is the one the reads of
    # a range need; with both, PostgreSQL may pick this one and read every hourly row).
    organization = models.ForeignKey(
        "accounts.Organization",
        on_delete=models.CASCADE,
        related_name="usage_rollups",
        db_index=False,
    )
    granularity = models.CharField(max_length=4, choices=GRANULARITIES)
    bucket = models.DateTimeField(help_text="Start of the hour or day (UTC) summed here.")
    key_id = models.CharField(
        max_length=32, help_text="Public id of the calling key, kept if the key is deleted."
    )
    api_key = models.ForeignKey(
        "keys.ApiKey",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="usage_rollups",
    )
    model = models.CharField(max_length=200, help_text="Public model name the client asked for.")
    refusal_code = models.CharField(
        max_length=50,
        blank=True,
        default="",
        help_text="Empty for billable requests; the error code of the refused ones counted here.",
    )
    requests = models.PositiveBigIntegerField(default=0, help_text="Billable requests.")
    refused = models.PositiveBigIntegerField(default=0, help_text="Requests refused.")
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    cached_requests = models.PositiveBigIntegerField(
        default=0, help_text="Billable requests served from the response cache."
    )
    cached_tokens = models.PositiveBigIntegerField(
        default=0, help_text="Input tokens of the requests served from the response cache."
    )
    cost_units = models.BigIntegerField(
        default=0, help_text="Cost in units of 0.00000001 USD (exact sums on every database)."
    )
    errors_4xx = models.PositiveBigIntegerField(
        default=0, help_text="Billable requests answered 4xx (e.g. 499: the client hung up)."
    )
    errors_5xx = models.PositiveBigIntegerField(
        default=0, help_text="Billable requests answered 5xx (upstream error, timeout, 599)."
    )
    latency_ms_sum = models.PositiveBigIntegerField(
        default=0, help_text="Sum of the billable requests' latency (for the mean)."
    )
    ttft_count = models.PositiveBigIntegerField(
        default=0, help_text="Billable requests that reached a model (time to first token)."
    )

    class Meta:
        ordering = ["organization_id", "granularity", "bucket"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "granularity", "bucket", "key_id", "model", "refusal_code"],
                name="usage_rollup_dimensions",
            ),
        ]

    def __str__(self) -> str:
        bucket = f"{self.bucket:%Y-%m-%d %H:00}"
        return f"{self.organization_id} {self.granularity} {bucket} {self.model}"


# The histograms: latency_b0..b22 (total time in aibaas) and ttft_b0..b22 (time to the first
# byte from the model: the whole answer when not streamed), one column per bucket so that any
# range sums in SQL.
for _index in range(HISTOGRAM_BUCKETS):
    UsageRollup.add_to_class(f"latency_b{_index}", models.PositiveBigIntegerField(default=0))
    UsageRollup.add_to_class(f"ttft_b{_index}", models.PositiveBigIntegerField(default=0))
