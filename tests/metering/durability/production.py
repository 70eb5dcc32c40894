"""The production setup for the durability tests, besides tests.servers.production_server()
(gunicorn with deploy/gunicorn.conf.py): a private redis-server run with deploy/redis.conf, and
what Celery beat runs (metering.tasks.drain_usage_events: the reaper and the drain), here on a
thread of the test."""

import threading
from io import StringIO

from django.core.management import call_command

from metering.tasks import drain_usage_events
from tests.servers import ROOT

REDIS_CONF = ROOT / "deploy" / "redis.conf"


def assert_reconciled() -> None:
    """`manage.py reconcile_usage`: the quota counters agree with the billable events (it
    exits with an error on any difference), and there was a counter to check."""
    out = StringIO()
    call_command("reconcile_usage", stdout=out)
    assert ": ok" in out.getvalue(), out.getvalue()


def worker_pids(master: int) -> set[int]:
    """The pids of gunicorn's workers (the master's children)."""
    path = f"/proc/{master}/task/{master}/children"
    try:
        with open(path) as children:
            return {int(pid) for pid in children.read().split()}
    except FileNotFoundError:
        return set()


class Drainer:
    """What Celery beat has a worker do in production, every `every` seconds, on a thread: the
    task drain_usage_events (usage_reap, usage_drain). A failing run (Redis down) is followed by
    the next one, as a beat's would be."""

    def __init__(self, every: float = 0.2) -> None:
        self.every = every
        self.stop = threading.Event()
        self.failures = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from django.db import connection

        try:
            while not self.stop.wait(self.every):
                try:
                    drain_usage_events(batch_size=200)
                except Exception:
                    self.failures += 1
        finally:
            connection.close()

    def __enter__(self) -> "Drainer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
