"""The production app server's parts, named by deploy/gunicorn.conf.py: the uvicorn worker with
our settings and gunicorn's logger with key redaction.

`ServerSettings.from_env()` is the one reading of the server's environment: the gunicorn config
and each worker both call it, so they cannot disagree.
"""

import asyncio
import os
from dataclasses import dataclass

import httptools
from gunicorn.glogging import Logger
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn_worker import UvicornWorker

from aibaas.appserver_writes import HeadWithBody
from infra.logs import AccessLogWithoutQuery, log_format, protect_handlers, use_format
from infra.proxies import proxies_from_env


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
    log_format: str  # "json" | "plain": LOG_FORMAT, as the app reads it (infra/logs.py)

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
            log_format=log_format(os.environ.get("LOG_FORMAT"), debug=_debug()),
        )


def _debug() -> bool:
    # django-environ's reading of DEBUG (aibaas/settings/base.py), for LOG_FORMAT's default.
    return os.environ.get("DEBUG", "").strip().lower() in ("true", "on", "ok", "y", "yes", "1")


class RedactingLogger(Logger):
    """gunicorn's logger, whose handlers (the workers' uvicorn loggers share them) never write
    a key, whose access log has no query strings, and which writes JSON under LOG_FORMAT=json."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        use_format(ServerSettings.from_env().log_format, self.error_log, self.access_log)
        for handler in self.access_log.handlers:
            if not any(isinstance(f, AccessLogWithoutQuery) for f in handler.filters):
                handler.addFilter(AccessLogWithoutQuery())
        protect_handlers(self.error_log, self.access_log)


class Worker(UvicornWorker):
    """uvicorn under gunicorn with the server settings of deploy/gunicorn.conf.py: forwarded
    headers from CLIENT_IP_PROXIES only (gunicorn's forwarded_allow_ips), gunicorn's request
    line and header limits and our header/body timeouts (BoundedHttpToolsProtocol), lifespan
    on, no Server header."""

    CONFIG_KWARGS = {"loop": "auto", "http": "httptools", "lifespan": "on", "server_header": False}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        server = ServerSettings.from_env()
        limits = HttpLimits(
            header_timeout=server.header_timeout,
            body_timeout=server.body_timeout,
            max_request_line=self.cfg.limit_request_line,
            max_header_fields=self.cfg.limit_request_fields,
            max_header_bytes=self.cfg.limit_request_field_size,
        )
        # Resolved when the server starts (Config.load), after this.
        self.config.http = type("HttpProtocol", (BoundedHttpToolsProtocol,), {"limits": limits})


@dataclass(frozen=True)
class HttpLimits:
    header_timeout: float
    body_timeout: float
    max_request_line: int  # 0: no limit (gunicorn's convention)
    max_header_fields: int
    max_header_bytes: int  # per field, name and value


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol with the bounds gunicorn's own workers have and uvicorn
    lacks: a request's headers must arrive within `header_timeout` of its first byte (of the
    connection, for the first request) and its body within `body_timeout` of the headers,
    else 408 and the connection is closed; a request line or headers over the limits is
    414/431. Slow or endless clients never hold a connection open (slowloris)."""

    limits: HttpLimits

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._reading_headers = False
        self._request_began = False  # a byte of the current request was parsed
        self._awaiting_body = False
        self._header_bytes = 0
        # Per field: the fields a request may still send, and the bytes one field may have
        # (0 in a limit means none: gunicorn's convention).
        self._max_fields = self.limits.max_header_fields or _NO_LIMIT
        self._max_field_bytes = self.limits.max_header_bytes or _NO_LIMIT
        self._fields_left = self._max_fields
        self._refusal: tuple[int, str] | None = None

    # --- timers

    def _arm(self, seconds: float, on_expiry) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, on_expiry)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _headers_too_slow(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._request_began or self._header_bytes:
            self._refuse(408, "Request Timeout: the headers took too long.")
        else:
            self.transport.close()  # nothing was asked: nothing to answer

    def _body_too_slow(self) -> None:
        self._timer = None
        cycle = self.cycle
        if self.transport.is_closing() or cycle is None:
            return
        if not cycle.response_started:
            cycle.response_started = cycle.response_complete = True
            self._refuse(408, "Request Timeout: the body took too long.")
        else:
            self.transport.close()
        cycle.disconnected = True
        cycle.message_event.set()

    # --- answers

    def _refuse(self, status: int, message: str) -> None:
        body = message.encode("ascii")
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.extend(
            [
                b"content-type: text/plain; charset=utf-8\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(head))
        self.transport.close()

    def _over(self, status: int, message: str) -> None:
        self._refusal = (status, message)
        raise _LimitExceeded  # stops the parser; data_received answers

    # --- connection and parser callbacks

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._reading_headers = True
        self._arm(self.limits.header_timeout, self._headers_too_slow)

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self._reading_headers:
            self._header_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            self._disarm()
            if self._refusal is not None:
                self._refuse(*self._refusal)
            else:
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
            return
        # Timers are armed only for what this data left unfinished: a request that arrives
        # whole (most do) never costs one.
        if self._reading_headers:
            if self._header_bytes > _header_section_limit(self.limits):
                self._disarm()
                self._refuse(431, "Request Header Fields Too Large.")
            elif self._timer is None:
                self._arm(self.limits.header_timeout, self._headers_too_slow)
        elif self._awaiting_body and self._timer is None:
            self._arm(self.limits.body_timeout, self._body_too_slow)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._request_began = True
        self._fields_left = self._max_fields
        if not self._reading_headers:  # a keep-alive connection's next request
            self._reading_headers = True
            self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        limit = self.limits.max_request_line
        if limit and len(self.url) > limit:
            self._over(414, "URI Too Long.")

    def on_header(self, name: bytes, value: bytes) -> None:
        # Called for every header of every request: two comparisons, then uvicorn's own.
        self._fields_left -= 1
        if self._fields_left < 0:
            self._over(431, "Request Header Fields Too Large: too many fields.")
        if len(name) + len(value) > self._max_field_bytes:
            self._over(431, "Request Header Fields Too Large.")
        HttpToolsProtocol.on_header(self, name, value)

    def on_headers_complete(self) -> None:
        self._reading_headers = self._request_began = False
        self._disarm()
        super().on_headers_complete()
        self._awaiting_body = not self.parser.should_upgrade()
        if self.cycle is not None and self.cycle.transport is self.transport:  # a new cycle
            self.cycle.transport = HeadWithBody(self.transport, self.loop)  # one send, not two

    def on_message_complete(self) -> None:
        self._awaiting_body = False
        self._disarm()
        super().on_message_complete()


_NO_LIMIT = 1 << 62


class _LimitExceeded(Exception):
    pass


def _header_section_limit(limits: HttpLimits) -> int:
    """Bytes a request may send before its headers end (request line and every field)."""
    line = limits.max_request_line or 8190
    fields = limits.max_header_fields or 100
    return line + fields * ((limits.max_header_bytes or 8190) + 4) + 4
