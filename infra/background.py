"""The serving process's background tasks: work a request starts and does not wait for (its
usage event once the reply is sent, the settlement of an admission its client abandoned).

One registry per process. Each task is referenced until done (asyncio keeps only weak
references), a cancellation of the request that started it cannot reach it, and the server's
shutdown waits for those of its event loop (`drain`) before closing the connections they use.
"""

import asyncio
import time
from collections.abc import Awaitable

_tasks: set[asyncio.Task] = set()


def background(work: Awaitable) -> asyncio.Task:
    """Run `work` in a task of its own, referenced until done; `drain` waits for it."""
    task = asyncio.ensure_future(work)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task


async def drain(timeout: float = 5.0) -> None:
    """Wait, at most `timeout` seconds, until the running loop's background tasks are done,
    those they start meanwhile included (tests, the server's shutdown)."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + timeout
    while True:
        pending = [task for task in _tasks if not task.done() and task.get_loop() is loop]
        left = deadline - time.monotonic()
        if not pending or left <= 0:
            return
        await asyncio.wait(pending, timeout=left)
