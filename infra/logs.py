"""Logging that never writes an API key: a filter on every handler (Django's, gunicorn's,
Celery's) redacts key-shaped text, and access logs drop query strings. LOG_FORMAT chooses
plain lines or one JSON object per line (python-json-logger); the JSON formatter redacts its
own output too, since it formats tracebacks and extra fields after the filter has run.

A key reaches a log line by accident (a client puts it in a URL, a name, an error message), so
the filter works on the finished text of each record, traceback included, not on known fields.
"""

import contextlib
import logging
import logging.config
import re

from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

from infra import tracing

# sk_live_/sk_test_ and whatever follows, also percent-encoded ("sk%5Flive%5F..."): a partial
# key is still a secret's worth of prefix.
KEY_SHAPED = re.compile(r"sk(?:_|%5f)(?:live|test)(?:_|%5f)[0-9a-z_%]*", re.IGNORECASE)
REDACTED = "[redacted key]"
# In text that is kept (key names, revocation reasons, audit metadata): a key or most of one, its
# 12-character key id and 8 to 49 characters of its secret and checksum (keys/format.py; at most
# one key's worth, so that keys pasted back to back are each found). Narrower than KEY_SHAPED on
# purpose: a name like "sk_live_backend" or a list hint ("sk_live_Juzr…nAjm") stays readable.
KEY_IN_TEXT = re.compile(r"sk_(?:live|test)_[0-9A-Za-z]{12}_[0-9A-Za-z]{8,49}")
# The request line inside an access log line: "GET /path?query HTTP/1.1".
_QUERY_IN_REQUEST_LINE = re.compile(r'("[A-Z]+ [^ "?]*)\?[^ "]*')
_formatter = logging.Formatter()


def redact(text: str) -> str:
    return KEY_SHAPED.sub(REDACTED, text) if "sk" in text or "SK" in text else text


def redact_stored(text: str) -> str:
    """`text` with anything that looks like a key (even without its checksum) replaced."""
    return KEY_IN_TEXT.sub(REDACTED, text)


def _redacted_parts(record: logging.LogRecord, clean: str) -> tuple[object, object]:
    """The record's msg and args with keys redacted in each: formatters that read the args
    themselves (uvicorn's access formatter unpacks them) keep working. The clean message alone
    when redacting the parts does not give it (a key inside an object's str())."""
    redact_any = lambda value: redact(value) if isinstance(value, str) else value  # noqa: E731
    msg, args = redact_any(record.msg), record.args
    if isinstance(args, tuple):
        args = tuple(redact_any(arg) for arg in args)
    elif isinstance(args, dict):
        args = {name: redact_any(arg) for name, arg in args.items()}
    with contextlib.suppress(Exception):  # a format that only str() of the args satisfies
        if args and isinstance(msg, str) and msg % args == clean:
            return msg, args
    return clean, None


class RedactKeys(logging.Filter):
    """Replaces key-shaped text in a record's message, traceback and stack. Never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format: logging reports it when it formats the record
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = _redacted_parts(record, clean)
        if record.exc_info and not record.exc_text:
            record.exc_text = _formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class AccessLogWithoutQuery(logging.Filter):
    """Access log lines name the path, never the query string (clients put secrets there)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        record.msg, record.args = _QUERY_IN_REQUEST_LINE.sub(r"\1", message), None
        return True


_redact_keys = RedactKeys()


def protect_handlers(*extra: logging.Logger) -> None:
    """Put the redaction filter on every handler of every logger that exists now (and of
    `extra`). Idempotent."""
    loggers = [logging.getLogger(), *extra]
    loggers += [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, RedactKeys) for f in handler.filters):
                handler.addFilter(_redact_keys)


def configure(config: dict) -> None:
    """Django's LOGGING_CONFIG: dictConfig, then the filter on every handler, Django's own
    (console, mail_admins) included."""
    logging.config.dictConfig(config)
    protect_handlers()


LOG_FORMATS = ("json", "plain")
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def log_format(value: str | None, *, debug: bool) -> str:
    """LOG_FORMAT's value: "json" or "plain"; unset, plain under DEBUG and JSON otherwise."""
    chosen = (value or "").strip().lower() or ("plain" if debug else "json")
    if chosen not in LOG_FORMATS:
        raise ValueError(f"LOG_FORMAT must be 'json' or 'plain', not {value!r}.")
    return chosen


class JsonFormatter(_JsonFormatter):
    """One JSON object per line: time, level, logger, message, and the record's extra fields
    (`logger.info(..., extra={"request_id": ...})`), and trace_id/span_id while a span is
    current (tracing on). Key-shaped text is redacted in the whole
    line: python-json-logger formats the traceback from exc_info itself (not the filter's
    redacted exc_text) and serializes extra fields the filter never sees."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("fmt", "%(levelname)s %(name)s %(message)s")
        kwargs.setdefault("timestamp", "time")  # ISO 8601, UTC
        kwargs.setdefault("rename_fields", {"levelname": "level", "name": "logger"})
        kwargs.setdefault("json_ensure_ascii", False)
        super().__init__(*args, **kwargs)

    def add_fields(self, log_data, record, message_dict) -> None:
        super().add_fields(log_data, record, message_dict)
        ids = tracing.current_ids()  # None unless tracing is on (infra/tracing.py)
        if ids is not None:
            log_data["trace_id"], log_data["span_id"] = ids

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def formatter(log_format_name: str) -> logging.Formatter:
    return JsonFormatter() if log_format_name == "json" else logging.Formatter(PLAIN_FORMAT)


def use_format(log_format_name: str, *loggers: logging.Logger) -> None:
    """Give every handler of `loggers` the formatter of `log_format_name` (the app server's and
    Celery's own handlers, which Django's LOGGING does not configure)."""
    if log_format_name != "json":
        return  # their own plain formats stay
    for logger in loggers:
        for handler in logger.handlers:
            handler.setFormatter(JsonFormatter())
