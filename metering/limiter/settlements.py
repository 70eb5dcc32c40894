"""Settlements waiting for the key's next call: made on the asyncio path while Redis answers,
they are not sent on their own but go with the key's next call (the script applies them before
it checks), or after SETTLE_DELAY_SECONDS when no call comes (backend.py sends them). Under
load a settlement costs no command at all. Process-wide.
"""

import threading

from metering.limiter.windows import APPLY, Spec

SETTLE_DELAY_SECONDS = 0.1


class Pending:
    """Per key: suffix -> [window_ms, limit, kind, [(at_ms, delta), ...]]."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.keys: dict[str, dict[str, list]] = {}

    def add(self, key_id: str, specs: list[Spec]) -> bool:
        """True when the key had nothing pending (its flush is to be scheduled)."""
        with self.lock:
            windows = self.keys.get(key_id)
            new = windows is None
            if new:
                windows = self.keys[key_id] = {}
            for suffix, window_ms, limit, kind, adds in specs:
                entry = windows.get(suffix)
                if entry is None or entry[0] != window_ms:
                    windows[suffix] = [window_ms, limit, kind, list(adds)]
                else:
                    entry[3].extend(adds)
            return new

    def take(self, key_id: str) -> dict[str, list] | None:
        if key_id not in self.keys:  # the usual case at low load, without the lock
            return None
        with self.lock:
            return self.keys.pop(key_id, None)

    def give_back(self, key_id: str, windows: dict[str, list]) -> None:
        with self.lock:
            mine = self.keys.setdefault(key_id, {})
            for suffix, (window_ms, limit, kind, adds) in windows.items():
                entry = mine.get(suffix)
                if entry is None or entry[0] != window_ms:
                    mine[suffix] = [window_ms, limit, kind, list(adds)]
                else:
                    entry[3][:0] = adds

    def forget(self, key_ids) -> None:
        with self.lock:
            for key_id in key_ids:
                self.keys.pop(key_id, None)

    def clear(self) -> None:
        with self.lock:
            self.keys.clear()


pending = Pending()


def merge(specs: list[Spec], waiting: dict[str, list] | None, mode: int):
    """The call's specs with the key's pending settlements added; (specs, left over). An APPLY
    call takes every pending window; a check or peek only those it has (its result must match
    its limits), the others stay pending."""
    if not waiting:
        return specs, None
    merged = []
    used = set()
    for suffix, window_ms, limit, kind, adds in specs:
        entry = waiting.get(suffix)
        if entry is not None and entry[0] == window_ms:
            adds = adds + entry[3]
            used.add(suffix)
        merged.append((suffix, window_ms, limit, kind, adds))
    rest = {suffix: entry for suffix, entry in waiting.items() if suffix not in used}
    if mode == APPLY:
        merged += [(suffix, *entry) for suffix, entry in rest.items()]
        rest = {}
    return merged, rest or None
