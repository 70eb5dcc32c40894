"""Migration 0004's backfill: events stored before `billable` and `error_code` existed are
classified by their status (metering.usage.events.legacy_billable is the same rule)."""

import importlib

import pytest
from django.apps import apps

from metering.models import UsageEvent
from metering.services import usage_record
from metering.usage.events import legacy_billable
from tests.metering.conftest import make_event

pytestmark = pytest.mark.django_db

BACKFILL = importlib.import_module("metering.migrations.0004_usage_error_code_billable").backfill

# status, input tokens -> billable, error_code
CASES = [
    (200, 10, True, ""),
    (400, 0, False, "invalid_request_error"),
    (400, 12, True, "invalid_request_error"),  # an upstream's refusal, after admission
    (403, 0, False, "http_403"),
    (404, 0, False, "model_not_found"),
    (429, 0, False, "http_429"),
    (499, 0, True, "client_closed_request"),
    (502, 0, True, "upstream_error"),
    (503, 0, False, "quota_unavailable"),
    (504, 0, True, "upstream_timeout"),
    (599, 8, True, "interrupted"),
]


def test_events_from_before_the_fields_are_classified_by_their_status(issued):
    events = [
        make_event(issued, status_code=status, input_tokens=tokens, output_tokens=0)
        for status, tokens, _, _ in CASES
    ]
    usage_record(events=events)
    UsageEvent.objects.update(billable=True, error_code="")  # the columns' defaults
    BACKFILL(apps, None)
    for event, (status, tokens, billable, code) in zip(events, CASES, strict=True):
        row = UsageEvent.objects.get(request_id=event.request_id)
        assert (row.billable, row.error_code) == (billable, code), status
        assert legacy_billable(status, tokens) is billable
