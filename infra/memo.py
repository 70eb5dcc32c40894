"""Values derived from the settings, computed once per process instead of on every request (a
settings attribute read costs a LazyObject lookup): recomputed after a test changes a setting."""

import functools
from collections.abc import Callable
from typing import TypeVar

from django.core.signals import setting_changed

T = TypeVar("T")


def per_settings(function: Callable[[], T]) -> Callable[[], T]:
    """`function()` remembered until a setting changes (override_settings in tests)."""
    remembered = functools.cache(function)

    def forget(**kwargs) -> None:
        remembered.cache_clear()

    setting_changed.connect(forget, weak=False, dispatch_uid=f"per-settings-{id(remembered)}")
    return remembered
