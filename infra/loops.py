"""State kept per asyncio event loop. A server process runs one loop, but tests and
async_to_sync run many, one after the other: what belongs to a loop (its connections, its
pending batches) must not be used from another, and goes when its loop has closed."""

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerLoop(Generic[T]):
    """One `factory(loop)` per running event loop, made on first use. The entries of loops
    that have closed are dropped when a new loop comes (`close(value)` called on each)."""

    def __init__(
        self,
        factory: Callable[[asyncio.AbstractEventLoop], T],
        close: Callable[[T], None] | None = None,
    ) -> None:
        self.factory = factory
        self.close = close
        self.entries: dict[int, tuple[asyncio.AbstractEventLoop, T]] = {}
        self.last: tuple[asyncio.AbstractEventLoop, T] | None = None  # the entry last got

    def get(self) -> T:
        loop = asyncio.get_running_loop()
        last = self.last
        if last is not None and last[0] is loop:  # a server has one loop: always, but once
            return last[1]
        entry = self.entries.get(id(loop))
        if entry is None or entry[0] is not loop:
            for key, (other, value) in list(self.entries.items()):
                if other.is_closed():
                    del self.entries[key]
                    if self.close is not None:
                        self.close(value)
            entry = self.entries[id(loop)] = (loop, self.factory(loop))
        self.last = entry
        return entry[1]

    def current(self) -> T | None:
        """The running loop's value, if it has one (none is made)."""
        loop = asyncio.get_running_loop()
        entry = self.entries.get(id(loop))
        return entry[1] if entry is not None and entry[0] is loop else None

    def pop(self) -> T | None:
        """Forget the running loop's value and return it (not closed: the caller does)."""
        value = self.current()
        if value is not None:
            del self.entries[id(asyncio.get_running_loop())]
            self.last = None
        return value

    def clear(self) -> None:
        """Forget every loop's value, closing each (from any thread or loop, or none)."""
        entries, self.entries, self.last = self.entries, {}, None
        if self.close is not None:
            for _, value in entries.values():
                self.close(value)


def quiet_future(loop: asyncio.AbstractEventLoop) -> asyncio.Future:
    """A future of this loop whose exception counts as retrieved even if its waiter went away
    (a cancelled caller leaves no "Future exception was never retrieved" behind)."""
    future = loop.create_future()
    future.add_done_callback(lambda done: done.cancelled() or done.exception())
    return future
