"""The production app server's parts, named by deploy/gunicorn.conf.py: the uvicorn worker with
our settings and gunicorn's logger with key redaction.

`ServerSettings.from_env()` is the one reading of the server's environment: the gunicorn config
and each worker both call it, so they cannot disagree.
"""

import os
from dataclasses import dataclass

from gunicorn.glogging import Logger
from uvicorn_worker import UvicornWorker

from aibaas.logs import AccessLogWithoutQuery, protect_handlers
from aibaas.proxies import proxies_from_env


def _int(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        value = int(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {raw!r}.") from None
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}.")
    return value


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, not {raw!r}.") from None
    if value <= 0:
        raise ValueError(f"{name} must be more than 0 seconds.")
    return value


@dataclass(frozen=True)
class ServerSettings:
    bind: str
    workers: int
    timeout: int
    graceful_timeout: int
    keepalive: int
    header_timeout: float
    body_timeout: float
    max_request_line: int
    max_header_fields: int
    max_header_bytes: int
    proxies: list[str]
    access_log: str | None
    log_level: str

    @classmethod
    def from_env(cls) -> "ServerSettings":
        access_log = os.environ.get("ACCESS_LOG", "-").strip()
        return cls(
            bind=os.environ.get("BIND", "").strip() or f"0.0.0.0:{_int('PORT', 8000, minimum=1)}",
            workers=_int("WEB_CONCURRENCY", 2, minimum=1),
            timeout=_int("GUNICORN_TIMEOUT", 30, minimum=1),
            graceful_timeout=_int("GUNICORN_GRACEFUL_TIMEOUT", 30, minimum=1),
            keepalive=_int("KEEPALIVE_SECONDS", 5, minimum=1),
            header_timeout=_float("HTTP_HEADER_TIMEOUT", 10.0),
            body_timeout=_float("HTTP_BODY_TIMEOUT", 30.0),
            max_request_line=_int("HTTP_MAX_REQUEST_LINE", 8190, minimum=64),
            max_header_fields=_int("HTTP_MAX_HEADER_FIELDS", 100, minimum=1),
            max_header_bytes=_int("HTTP_MAX_HEADER_BYTES", 8190, minimum=64),
            proxies=proxies_from_env(),
            access_log=None if access_log.lower() in ("", "off", "false", "0") else access_log,
            log_level=os.environ.get("LOG_LEVEL", "info").strip().lower() or "info",
        )


class RedactingLogger(Logger):
    """gunicorn's logger, whose handlers (the workers' uvicorn loggers share them) never write
    a key and whose access log has no query strings."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        for handler in self.access_log.handlers:
            if not any(isinstance(f, AccessLogWithoutQuery) for f in handler.filters):
                handler.addFilter(AccessLogWithoutQuery())
        protect_handlers(self.error_log, self.access_log)


class Worker(UvicornWorker):
    """uvicorn under gunicorn with the server settings of deploy/gunicorn.conf.py: forwarded
    headers from CLIENT_IP_PROXIES only (gunicorn's forwarded_allow_ips), lifespan on, no
    Server header."""

    CONFIG_KWARGS = {"loop": "auto", "http": "auto", "lifespan": "on", "server_header": False}
