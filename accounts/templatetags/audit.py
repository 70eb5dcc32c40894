import json

from django import template

register = template.Library()


@register.filter
def audit_value(value) -> str:
    """A metadata value as people read it: lists joined, nothing as a dash, objects as JSON."""
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(audit_value(item) for item in value) or "—"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)
