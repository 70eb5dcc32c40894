"""manage.py usage_report: the /v1/usage summary for operators, as JSON or CSV."""

import csv
import io
import json

import pytest
from django.core.management import CommandError, call_command

from tests.metering.conftest import expected_june

pytestmark = pytest.mark.django_db


def report(*args: str) -> str:
    out = io.StringIO()
    call_command("usage_report", *args, stdout=out)
    return out.getvalue()


def test_json_report_is_the_v1_usage_summary(usage_dataset):
    output = report("--org", usage_dataset.org.slug)
    assert json.loads(output) == expected_june(usage_dataset)


def test_json_report_of_another_month(usage_dataset):
    summary = json.loads(report("--org", usage_dataset.org.slug, "--month", "2025-05"))
    assert summary["period"]["start"] == "2025-05-01T00:00:00Z"
    assert summary["totals"]["requests"] == 1


def test_csv_report(usage_dataset):
    output = report("--org", usage_dataset.org.slug, "--month", "2025-06", "--format", "csv")
    rows = list(csv.reader(io.StringIO(output)))
    expected = expected_june(usage_dataset)

    def row(section, label, totals):
        return [
            section,
            label,
            str(totals["requests"]),
            str(totals["input_tokens"]),
            str(totals["output_tokens"]),
            totals["cost"],
            str(totals["errors"]),
            str(totals.get("refused", "")),
        ]

    assert rows == [
        [
            "section",
            "key_id/model/code",
            "requests",
            "input_tokens",
            "output_tokens",
            "cost",
            "errors",
            "refused",
        ],
        row("totals", "", expected["totals"]),
        row("last_24h", "", expected["last_24h"]),
        *[row("by_key", r["key_id"], r) for r in expected["by_key"]],
        *[row("by_model", r["model"], r) for r in expected["by_model"]],
    ]


def test_unknown_organization_is_a_command_error(db):
    with pytest.raises(CommandError, match="No organization with slug 'nope'"):
        report("--org", "nope")


@pytest.mark.parametrize("month", ["2025-13", "2025/06", "june"])
def test_bad_month_is_a_command_error(org, month):
    with pytest.raises(CommandError, match="YYYY-MM"):
        report("--org", org.slug, "--month", month)


def test_bad_format_is_refused(org):
    with pytest.raises(CommandError):
        report("--org", org.slug, "--format", "xml")
