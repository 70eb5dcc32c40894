import csv
import json

from django.core.management.base import BaseCommand, CommandError

from accounts.selectors import organization_get
from infra.errors import ApplicationError
from metering.selectors import month_period, usage_summary

CSV_HEADER = [
    "section",
    "key_id/model/code",
    "requests",
    "input_tokens",
    "output_tokens",
    "cost",
    "errors",
    "refused",
]


class Command(BaseCommand):
    help = (
        "Print an organization's usage for a calendar month (UTC): the body of GET /v1/usage as "
        "JSON, or CSV rows (section,key_id/model/code,requests,input_tokens,output_tokens,cost,"
        "errors,refused). requests are billable requests; refusals are counted apart."
    )

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="Organization slug.")
        parser.add_argument("--month", help="YYYY-MM (UTC); default: the current month.")
        parser.add_argument("--format", choices=["json", "csv"], default="json")

    def handle(self, *args, **opts):
        try:
            organization = organization_get(slug=opts["org"])
            start, end = month_period(opts["month"])
        except ApplicationError as error:
            raise CommandError(error.message) from None
        summary = usage_summary(organization=organization, start=start, end=end)
        if opts["format"] == "json":
            self.stdout.write(json.dumps(summary, indent=2))
            return
        writer = csv.writer(self.stdout, lineterminator="\n")
        writer.writerow(CSV_HEADER)
        for section in ("totals", "last_24h"):
            writer.writerow(_row(section, "", summary[section]))
        for row in summary["by_key"]:
            writer.writerow(_row("by_key", row["key_id"], row))
        for row in summary["by_model"]:
            writer.writerow(_row("by_model", row["model"], row))
        for code, count in summary["refused_by_code"].items():
            writer.writerow(["refused_by_code", code, "", "", "", "", "", count])


def _row(section: str, label: str, totals: dict) -> list:
    return [
        section,
        label,
        totals["requests"],
        totals["input_tokens"],
        totals["output_tokens"],
        totals["cost"],
        totals["errors"],
        totals.get("refused", ""),
    ]
