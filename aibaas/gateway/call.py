"""One admitted /v1 request's bookkeeping: its admission, its in-flight marker and its one usage
event (status, tokens, cost), recorded exactly once however the request ends."""

import logging
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from aibaas.gateway import metrics, streaming
from aibaas.gateway.providers.base import UPSTREAM_ERROR, UPSTREAM_TIMEOUT, Usage
from billing.pricing import ZERO_COST, acost_for
from infra import tracing
from infra.errors import INTERNAL_ERROR
from infra.http import canonical_ip
from metering.admission import (
    INTERRUPTED,
    INTERRUPTED_STATUS,
    Admission,
    IpGate,
    UsageEventData,
    aadmit,
    ausage_emit,
    inflight,
    marker,
)

logger = logging.getLogger(__name__)

UNKNOWN_MODEL = "unknown"
CLIENT_CLOSED = streaming.CLIENT_CLOSED
# The error code of an event whose answer had none of its own (a stream's end, a crash).
CLIENT_CLOSED_CODE = "client_closed_request"
_STATUS_CODES = {
    CLIENT_CLOSED: CLIENT_CLOSED_CODE,
    500: INTERNAL_ERROR,
    502: UPSTREAM_ERROR,
    504: UPSTREAM_TIMEOUT,
    INTERRUPTED_STATUS: INTERRUPTED,
}


class Call:
    """One authenticated inference request and its (single) usage event."""

    def __init__(
        self, request_id: str, client_ip: str | None, key, endpoint: str, gate: IpGate
    ) -> None:
        self.request_id = request_id  # the usage event's (unique per request)
        self.client_ip = client_ip
        self.gate = gate
        self.key = key
        self.endpoint = endpoint
        self.model = UNKNOWN_MODEL
        self.started = time.perf_counter()
        self.recorded = False
        self.admission: Admission | None = None

    @property
    def headers(self) -> dict[str, str]:
        """The rate-limit headers of this request (none before admission)."""
        return dict(self.admission.headers) if self.admission is not None else {}

    async def admit(self, tokens: int, input_tokens: int) -> None:
        """Admission (429 otherwise); then the request's marker in the in-flight registry: if
        this process dies, a survivor records it as interrupted with `input_tokens`."""
        with tracing.span("metering.admit"):  # a refusal (429) marks it failed
            self.admission = await aadmit(
                self.key, tokens=tokens, client_ip=self.client_ip, gate=self.gate
            )
        registry = inflight.current()
        if registry is not None:
            registry.admitted(self.request_id, self._marker(input_tokens))

    def _marker(self, input_tokens: int) -> str:
        """This request's event if its process died now, in UsageEventData.to_json's fields,
        without building one (~3 times cheaper: this is the request path)."""
        fields = {
            "request_id": self.request_id,
            "organization_id": self.key.organization_id,
            "api_key_id": self.key.pk,
            "key_id": self.key.key_id,
            "model": self.model,
            "endpoint": self.endpoint,
            "status_code": INTERRUPTED_STATUS,
            "error_code": INTERRUPTED,
            "input_tokens": input_tokens,
            "estimated": True,
            "cost": "0",
            "client_ip": canonical_ip(self.client_ip),
            "created_at": datetime.now(UTC).isoformat(),
            **self._admitted(),
        }
        if "quota_period" in fields:
            fields["quota_period"] = fields["quota_period"].isoformat()
        return marker(fields, test_mode=self.key.test_mode)

    def _event(
        self,
        status: int,
        usage: Usage,
        *,
        cost: Decimal = ZERO_COST,
        cached: bool = False,
        upstream_latency_ms: float | None = None,
        error_code: str | None = None,
    ) -> UsageEventData:
        return UsageEventData(
            request_id=self.request_id,
            organization_id=self.key.organization_id,
            api_key_id=self.key.pk,
            key_id=self.key.key_id,
            model=self.model,
            endpoint=self.endpoint,
            status_code=status,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            estimated=usage.estimated,
            cached=cached,
            cost=cost,
            latency_ms=int((time.perf_counter() - self.started) * 1000),
            upstream_latency_ms=None if upstream_latency_ms is None else int(upstream_latency_ms),
            client_ip=canonical_ip(self.client_ip),
            error_code=_error_code(status, error_code),
            **self._admitted(),
        )

    async def record(
        self,
        status: int,
        usage: Usage | None = None,
        *,
        cached: bool = False,
        upstream_latency_ms: float | None = None,
        error_code: str | None = None,
    ) -> None:
        if self.recorded:
            return
        self.recorded = True
        usage = usage or Usage()
        if usage.input_tokens < 0 or usage.output_tokens < 0:
            # Never a reason to lose the event (usage is money): providers validate what an
            # upstream reports; this is the last guard.
            logger.warning("negative usage %s for %s counted as 0", usage, self.request_id)
            usage = Usage(max(usage.input_tokens, 0), max(usage.output_tokens, 0), estimated=True)
        cost = ZERO_COST
        if not self.key.test_mode and (usage.input_tokens or usage.output_tokens):
            cost = await acost_for(
                model=self.model,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cached=cached,
            )
        event = self._event(
            status,
            usage,
            cost=cost,
            cached=cached,
            upstream_latency_ms=upstream_latency_ms,
            error_code=error_code,
        )
        metrics.observe_tokens(self.model, usage.input_tokens, usage.output_tokens)
        if self.admission is not None:
            # No wait of its own on Redis: the settlement rides with the key's next check. The
            # quota's is usage_record's, when the event is stored (exactly once).
            await self.admission.asettle(usage.input_tokens + usage.output_tokens)
        await self._emit(event)

    def streaming(self, usage) -> None:
        """The stream's StreamUsage: its output tokens are checkpointed (the in-flight registry,
        metering/usage/inflight.py)."""
        registry = inflight.current()
        if registry is not None:
            registry.streaming(self.request_id, usage)

    def _admitted(self) -> dict[str, Any]:
        """The event's fields of the admission: billable or not, the quota's estimate."""
        admission = self.admission
        if admission is None:
            return {"billable": False}
        if admission.quota_period is None:
            return {"billable": True}
        return {
            "billable": True,
            "quota_period": admission.quota_period,
            "quota_generation": admission.quota_generation,
            "quota_tokens": admission.estimate,
        }

    @staticmethod
    async def _emit(event: UsageEventData) -> None:
        try:
            with tracing.span("metering.usage_emit"):
                await ausage_emit(event)
        except Exception:
            # ausage_emit logged the event's JSON (a replayable record); the client's answer
            # is not withheld for a bookkeeping failure.
            logger.exception("usage event %s not recorded", event.request_id)


def _error_code(status: int, code: str | None) -> str:
    if code is not None or status < 400:
        return code or ""
    return _STATUS_CODES.get(status, f"http_{status}")
