"""The limiter's in-process fallback: the Redis script's arithmetic over `Window`s, per key id,
used without REDIS_URL and while Redis fails (the breaker, infra/breaker.py).

Keys counted here while Redis was configured but unreachable are marked for handover: their
counts join Redis with the key's next call there (backend.py). Idle keys are dropped as time
passes, and at most LOCAL_MAX_KEYS are kept (least recently used first out).
"""

import threading
from collections import OrderedDict

from metering.limiter.windows import CHECK, DAY_MS, Spec, Window

LOCAL_MAX_KEYS = 100_000


class LocalWindows:
    """Windows per key id, least recently used first; idle keys are dropped as time passes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.keys: OrderedDict[str, tuple[int, dict[str, Window]]] = OrderedDict()
        # Keys counted here while Redis was configured but unreachable: handed back to Redis.
        self.handover: set[str] = set()

    def run(
        self, key_id: str, mode: int, requests: int, tokens: int, specs: list[Spec], now: int
    ) -> list[int]:
        """One call, answered as the script answers it."""
        with self.lock:
            expires, windows = self.keys.pop(key_id, (0, {}))
            states = []
            for suffix, window_ms, limit, kind, adds in specs:
                win = windows.get(suffix)
                if win is None or win.window_ms != window_ms:
                    win = windows[suffix] = Window(window_ms)
                win.dirty = False
                cutoff = win.prune(now)
                for at_ms, delta in adds:
                    win.add(cutoff, at_ms, delta, now)
                states.append((win, cutoff, limit, requests if kind == 0 else tokens))
            allowed = all(win.total + amount <= limit for win, _, limit, amount in states)
            refused = retry = 0
            if mode == CHECK and allowed:
                for win, _, _, amount in states:
                    if amount > 0:
                        win.count(now, amount)
            elif mode == CHECK:
                for i, (win, cutoff, limit, amount) in enumerate(states, 1):
                    if win.total + amount > limit:
                        wait = win.retry_after(now, cutoff, amount, limit)
                        if wait > retry:
                            refused, retry = i, wait
            result = [int(allowed), refused, retry]
            for win, _, _, _ in states:
                if win.dirty:
                    expires = max(expires, now + win.window_ms + win.width)
                result.append(win.total)
                result.append(win.last(win.oldest) + win.window_ms - now if win.total > 0 else 0)
            windows = {suffix: win for suffix, win in windows.items() if win.total > 0}
            if windows:
                self.keys[key_id] = (expires, windows)
            self._sweep(now)
            return result

    def _sweep(self, now: int) -> None:
        keys = self.keys
        while keys and (len(keys) > LOCAL_MAX_KEYS or next(iter(keys.values()))[0] <= now):
            key_id, _ = keys.popitem(last=False)
            self.handover.discard(key_id)

    def mark_handover(self, key_id: str) -> None:
        with self.lock:
            self.handover.add(key_id)

    def take(self, key_id: str) -> dict[str, Window] | None:
        """This key's windows counted during an outage, to hand over to Redis."""
        if key_id not in self.handover:  # the usual case, without the lock
            return None
        with self.lock:
            if key_id not in self.handover:
                return None
            self.handover.discard(key_id)
            entry = self.keys.pop(key_id, None)
            return entry[1] if entry else None

    def give_back(self, key_id: str, windows: dict[str, Window], now: int) -> None:
        """Redis failed again: the handed-over counts stay here, with what came meanwhile."""
        with self.lock:
            expires, current = self.keys.pop(key_id, (0, {}))
            for suffix, win in windows.items():
                mine = current.get(suffix)
                if mine is None or mine.window_ms != win.window_ms:
                    current[suffix] = win
                    continue
                cutoff = mine.prune(now)
                for index, value in win.buckets.items():
                    mine.add(cutoff, win.last(index), value, now)
            self.keys[key_id] = (max(expires, now + DAY_MS), current)
            self.handover.add(key_id)

    def forget(self, key_ids) -> None:
        with self.lock:
            for key_id in key_ids:
                self.keys.pop(key_id, None)
                self.handover.discard(key_id)

    def clear(self) -> None:
        with self.lock:
            self.keys.clear()
            self.handover.clear()


store = LocalWindows()
