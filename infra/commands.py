"""Shared pieces of the management commands: service errors as CommandError, duration args."""

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError

from infra.durations import parse_duration
from infra.errors import ApplicationError


@contextmanager
def service_errors() -> Iterator[None]:
    """Show a service's refusal as a one-line command error instead of a traceback."""
    try:
        yield
    except ValidationError as error:
        raise CommandError("; ".join(error.messages)) from None
    except ApplicationError as error:
        raise CommandError(error.message) from None


def duration(text: str) -> timedelta:
    """argparse type for '30d', '24h', '90m', '45s', '0'."""
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
