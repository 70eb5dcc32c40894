"""The production app server: `gunicorn -c deploy/gunicorn.conf.py aibaas.asgi:application`.

Everything comes from the environment (README, "The app server"); aibaas.appserver reads it, for
this file and for each worker alike.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aibaas.appserver import ServerSettings
from infra import metrics

_server = ServerSettings.from_env()

bind = [_server.bind]
workers = _server.workers
worker_class = "aibaas.appserver.Worker"
# A worker that stops answering gunicorn's heartbeat for this long is killed and replaced.
timeout = _server.timeout
graceful_timeout = _server.graceful_timeout
keepalive = _server.keepalive
# X-Forwarded-For / -Proto only from our own proxies (the app reads the same list).
forwarded_allow_ips = ",".join(_server.proxies)
limit_request_line = _server.max_request_line
limit_request_fields = _server.max_header_fields
limit_request_field_size = _server.max_header_bytes

logger_class = "aibaas.appserver.RedactingLogger"
loglevel = _server.log_level
errorlog = "-"
accesslog = _server.access_log
control_socket_disable = True  # one per host path: parallel servers would share it


def on_starting(server) -> None:
    """PROMETHEUS_MULTIPROC_DIR starts without the files of a previous run (infra/metrics.py)."""
    metrics.clear_dead_files()


def child_exit(server, worker) -> None:
    """A worker ended: its live gauges leave the merged metrics; its counters stay."""
    metrics.process_exited(worker.pid)
