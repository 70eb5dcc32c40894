from decimal import Decimal

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

_LIMIT_HELP = "Leave empty for unlimited."
MAX_BURST_PERCENT = 1000  # 11x the per-minute rate at most


def _limit_field(verbose_name: str) -> models.PositiveBigIntegerField:
    return models.PositiveBigIntegerField(
        verbose_name, null=True, blank=True, help_text=_LIMIT_HELP
    )


def _stripe_id_field(what: str) -> models.CharField:
    return models.CharField(
        max_length=255,
        blank=True,
        default="",
        db_default="",  # rows written by the seed migration's older model get it too
        help_text=f"The {what} of this plan; set by `manage.py stripe_sync`.",
    )


class Plan(models.Model):
    """A pricing tier. Limits left empty (null) are unlimited."""

    slug = models.SlugField(max_length=50, unique=True, help_text="Stable identifier, e.g. 'pro'.")
    name = models.CharField(max_length=100)
    monthly_price = models.DecimalField(
        max_digits=10,
        decimal_places=2,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal("0"))],
        help_text="Price per month in USD. Leave empty for a custom (negotiated) price.",
    )
    requests_per_minute = _limit_field("requests per minute")
    requests_per_day = _limit_field("requests per day")
    tokens_per_minute = _limit_field("tokens per minute")
    tokens_per_day = _limit_field("tokens per day")
    monthly_request_quota = _limit_field("monthly request quota")
    monthly_token_quota = _limit_field("monthly token quota")
    max_keys = _limit_field("max live API keys")
    burst_percent = models.PositiveSmallIntegerField(
        "burst percent",
        default=0,
        db_default=0,  # rows written by older code (and the seed migration's model) get it too
        validators=[MaxValueValidator(MAX_BURST_PERCENT)],
        help_text="Lets a key run this many percent above its per-minute limits, but never spend "
        "more than that raised rate allows in any burst window (see burst seconds). "
        f"0 = off: the per-minute limits are exact. At most {MAX_BURST_PERCENT}.",
    )
    burst_seconds = models.PositiveSmallIntegerField(
        "burst seconds",
        default=10,
        db_default=10,
        # Shorter than the minute window, or it adds nothing (metering/limiter: limits_for).
        validators=[MinValueValidator(1), MaxValueValidator(59)],
        help_text="The burst window, used only when burst percent is above 0: at most "
        "per-minute limit x (1 + burst percent / 100) x seconds / 60 in any this many seconds. "
        "1 to 59.",
    )
    is_public = models.BooleanField(
        default=True, help_text="Shown to customers as a plan they can choose."
    )
    sort_order = models.PositiveSmallIntegerField(default=0)
    metered_price_per_million_tokens = models.DecimalField(
        "metered price per million tokens",
        max_digits=12,
        decimal_places=4,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal("0"))],
        help_text="USD per million tokens billed by Stripe on top of the monthly fee (a metered "
        "Price on a Stripe Billing Meter, created by `manage.py stripe_sync`). Empty: no usage "
        "is billed on this plan.",
    )
    stripe_product_id = _stripe_id_field("Stripe Product")
    stripe_price_id = _stripe_id_field("recurring monthly Stripe Price")
    stripe_metered_price_id = _stripe_id_field("metered Stripe Price")
    stripe_meter_id = _stripe_id_field("Stripe Billing Meter")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    LIMIT_FIELDS = (
        "requests_per_minute",
        "requests_per_day",
        "tokens_per_minute",
        "tokens_per_day",
        "monthly_request_quota",
        "monthly_token_quota",
        "max_keys",
    )

    class Meta:
        ordering = ["sort_order", "id"]

    def __str__(self) -> str:
        return self.name

    @property
    def limits(self) -> dict[str, int | None]:
        return {field: getattr(self, field) for field in self.LIMIT_FIELDS}


_PRICE_HELP = "USD per million {what} tokens, e.g. 0.50."


def _price_field(what: str) -> models.DecimalField:
    return models.DecimalField(
        max_digits=18,
        decimal_places=8,
        validators=[MinValueValidator(Decimal("0"))],
        help_text=_PRICE_HELP.format(what=what),
    )


class ModelPrice(models.Model):
    """The current price of one model. Cost is computed by billing/pricing.py (cost_for)."""

    model = models.OneToOneField(
        "gateway.AIModel",
        on_delete=models.CASCADE,
        related_name="price",
        help_text="The public model this price applies to.",
    )
    input_per_million = _price_field("input (prompt)")
    output_per_million = _price_field("output (completion)")
    cached_input_per_million = models.DecimalField(
        max_digits=18,
        decimal_places=8,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal("0"))],
        help_text="USD per million input tokens of a request served from the response cache. "
        "Empty: the normal input price. Output tokens always cost the output price.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model__name"]

    def __str__(self) -> str:
        return (
            f"{self.model}: ${Decimal(self.input_per_million).normalize():f}/M in, "
            f"${Decimal(self.output_per_million).normalize():f}/M out"
        )


class BillingAccount(models.Model):
    """An organization's side of Stripe: its one Customer and the subscription state Stripe last
    told us (webhooks, re-read from Stripe). The organization's plan follows this state."""

    organization = models.OneToOneField(
        "accounts.Organization", on_delete=models.CASCADE, related_name="billing_account"
    )
    stripe_customer_id = models.CharField(
        max_length=255,
        unique=True,
        null=True,
        blank=True,
        help_text="The organization's Stripe Customer, created once at its first checkout.",
    )
    stripe_subscription_id = models.CharField(max_length=255, blank=True, default="")
    subscription_status = models.CharField(
        max_length=32,
        blank=True,
        default="",
        help_text="Stripe's status of the subscription: active, trialing, past_due, canceled...",
    )
    subscribed_plan = models.ForeignKey(
        Plan,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        help_text="The plan the Stripe subscription pays for.",
    )
    current_period_start = models.DateTimeField(null=True, blank=True)
    current_period_end = models.DateTimeField(null=True, blank=True)
    cancel_at_period_end = models.BooleanField(
        default=False, help_text="The subscription ends (back to free) at the period's end."
    )
    past_due_since = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When a payment first failed; the plan is kept for BILLING_GRACE_DAYS after.",
    )
    checkout_plan = models.ForeignKey(
        Plan,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="A checkout started for this plan and not yet confirmed by a webhook.",
    )
    checkout_started_at = models.DateTimeField(null=True, blank=True)
    last_event_id = models.CharField(max_length=255, blank=True, default="")
    last_event_at = models.DateTimeField(null=True, blank=True)
    # A cancellation owed to Stripe since the organization was closed: retried until done.
    cancel_owed_since = models.DateTimeField(
        null=True,
        blank=True,
        help_text="The organization was closed: its subscription must be canceled at Stripe. "
        "Cleared once Stripe has canceled it; retried with backoff until then.",
    )
    cancel_attempts = models.PositiveIntegerField(default=0)
    cancel_next_attempt_at = models.DateTimeField(null=True, blank=True)
    cancel_last_error = models.TextField(blank=True, default="")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"billing of organization {self.organization_id}"

    @property
    def status_display(self) -> str:
        return self.subscription_status.replace("_", " ").capitalize()


class StripeEvent(models.Model):
    """One verified Stripe webhook event, stored by its Stripe id: processed exactly once."""

    stripe_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100)
    livemode = models.BooleanField(default=False)
    stripe_created = models.DateTimeField(help_text="When Stripe created the event.")
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    organization = models.ForeignKey(
        "accounts.Organization",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="stripe_events",
    )
    outcome = models.CharField(
        max_length=255, blank=True, default="", help_text="What processing did, in a few words."
    )
    payload = models.JSONField()

    class Meta:
        ordering = ["-received_at", "-id"]

    def __str__(self) -> str:
        return f"{self.type} {self.stripe_id}"


class MeterReport(models.Model):
    """The outbox of metered usage: one Stripe Billing Meter event per organization and hour,
    written first, sent by Celery, retried until Stripe has it. `identifier` is deterministic
    (organization and window), so no retry can bill a window twice."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed, will retry"
        EMPTY = "empty", "Nothing to report"

    organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.PROTECT, related_name="meter_reports"
    )
    window_start = models.DateTimeField()
    window_end = models.DateTimeField()
    tokens = models.PositiveBigIntegerField(help_text="Billable tokens used in the window.")
    identifier = models.CharField(
        max_length=100, unique=True, help_text="The meter event's identifier at Stripe."
    )
    event_name = models.CharField(max_length=100)
    stripe_customer_id = models.CharField(max_length=255)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-window_start", "organization_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "window_start"], name="uniq_meter_report_window"
            ),
        ]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="meter_report_due")]

    def __str__(self) -> str:
        return f"{self.identifier} ({self.status})"
