"""Logging: structlog, JSON lines for journald, a readable console on a terminal, no secrets ever.

Configured once, in `main()`. Events are named `component.fact` with data as key-value pairs.
The standard library's loggers (stripe, httpx, aiomqtt) are routed through the same processors, so
the secret filter sees everything that reaches the output: event fields, nested values, exception
messages and tracebacks.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, TextIO

import structlog

# Stripe secret and restricted keys (live and test) and webhook signing secrets. No `\b` in front:
# `_` is a word character, and `api_key_sk_live_…` must not slip through.
SECRET_PATTERN = re.compile(r"(?<![A-Za-z0-9])(?:(?:sk|rk)_(?:live|test)|whsec)_[A-Za-z0-9]+")
REDACTED = "[REDACTED]"
# Shorter configured secrets are not replaced: that would garble ordinary words in every line.
MIN_SECRET_LENGTH = 4


class Redactor:
    """A structlog processor that removes secrets from every value of an event, nested or not."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Also remove these literal values (the configured secrets)."""
        known = {*self._secrets, *(s for s in secrets if len(s) >= MIN_SECRET_LENGTH)}
        # Longest first, so a secret containing another is removed whole.
        self._secrets = sorted(known, key=len, reverse=True)

    def reset(self) -> None:
        """Forget the configured secrets (the patterns stay)."""
        self._secrets = []

    def scrub(self, text: str) -> str:
        """The text with every secret replaced by [REDACTED]."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return SECRET_PATTERN.sub(REDACTED, text)

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, bool | int | float) or value is None:
            return value
        if isinstance(value, Mapping):
            return {self._clean(k): self._clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self._clean(v) for v in value]
        # Anything else (exceptions, bytes, objects) is rendered to text here, so the renderer
        # never calls a repr() the redactor did not see.
        return self.scrub(repr(value) if isinstance(value, BaseException | bytes) else str(value))

    def __call__(self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        """Process one event."""
        for key, value in list(event_dict.items()):
            if key not in _PROCESSOR_META:
                event_dict[key] = self._clean(value)
        return event_dict


# Keys structlog's ProcessorFormatter uses for its own bookkeeping (the LogRecord itself); they
# are removed before rendering and must stay objects until then.
_PROCESSOR_META = frozenset({"_record", "_from_structlog"})

REDACTOR = Redactor()

# The handler `configure` installed on the root logger, so a second call replaces it and leaves
# handlers others installed (pytest's log capture) alone.
_handler: logging.Handler | None = None


def configure(
    *,
    level: str = "info",
    json: bool | None = None,
    stream: TextIO | None = None,
    secrets: Iterable[str] = (),
) -> None:
    """Set up structlog and the standard library's logging for the whole process.

    Calling it again replaces the previous set-up (tests do); configured secrets accumulate.

    Args:
        level: the lowest level shown.
        json: JSON lines if true, console if false; by default JSON unless `stream` is a terminal.
        stream: where logs go (stderr by default).
        secrets: configured secret values to remove from every event.
    """
    global _handler  # noqa: PLW0603 - logging is process-wide by nature
    out = stream if stream is not None else sys.stderr
    use_json = (not out.isatty()) if json is None else json
    REDACTOR.add(secrets)
    stamp: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Exceptions become text (or a dict of text) before the redactor runs, so their messages and
    # tracebacks are scrubbed too. No locals: they would put arbitrary values into the journal.
    render_exc: Any = (
        structlog.processors.ExceptionRenderer(structlog.tracebacks.ExceptionDictTransformer(show_locals=False))
        if use_json
        else structlog.processors.format_exc_info
    )
    scrub: list[Any] = [render_exc, REDACTOR]
    renderer: Any = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )

    numeric = logging.getLevelNamesMapping()[level.upper()]
    handler = logging.StreamHandler(out)
    # kiosk's own events are rendered by structlog and written straight to the handler's stream:
    # the standard library's record, formatter and handler would cost twice as much per line.
    structlog.configure(
        processors=[*stamp, *scrub, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_LineFactory(handler),
        cache_logger_on_first_use=False,
    )
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            # Records from the standard library (stripe, httpx, aiomqtt) get the same treatment.
            foreign_pre_chain=[*stamp, structlog.stdlib.ExtraAdder(), _drop_formatter_leftovers, *scrub],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    _handler = handler
    root.setLevel(numeric)
    # Libraries speak at INFO about every request; kiosk logs what matters itself.
    for noisy in ("httpx", "httpcore", "stripe"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))


class _Lines:
    """Writes kiosk's rendered events to the handler's stream, under the handler's lock.

    The lock keeps a library's record (written by the same handler) from interleaving with a line.
    `name` is what `add_logger_name` reports.
    """

    def __init__(self, name: str, handler: logging.StreamHandler[TextIO]) -> None:
        self.name = name
        self._handler = handler

    def msg(self, message: str) -> None:
        """Write one line."""
        handler = self._handler
        handler.acquire()
        try:
            handler.stream.write(message + "\n")
            handler.stream.flush()
        except Exception:  # noqa: BLE001 - like logging's handlers: a log line never breaks a payment
            return
        finally:
            handler.release()

    debug = info = warning = warn = error = critical = fatal = exception = msg


class _LineFactory:
    def __init__(self, handler: logging.StreamHandler[TextIO]) -> None:
        self._handler = handler

    def __call__(self, *args: Any) -> _Lines:
        return _Lines(str(args[0]) if args else "kiosk", self._handler)


def _drop_formatter_leftovers(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # Another handler's formatter (pytest's capture, a library's own) may have run first and left
    # `message` and `asctime` on the record; ExtraAdder would take them for extra fields.
    for key in ("message", "asctime"):
        event_dict.pop(key, None)
    return event_dict


def reset() -> None:
    """Undo `configure`: structlog's defaults, no kiosk handler, no configured secrets."""
    global _handler  # noqa: PLW0603
    if _handler is not None:
        logging.getLogger().removeHandler(_handler)
        _handler = None
    for noisy in ("httpx", "httpcore", "stripe"):
        logging.getLogger(noisy).setLevel(logging.NOTSET)
    logging.getLogger().setLevel(logging.WARNING)
    structlog.reset_defaults()
    REDACTOR.reset()


def get(name: str) -> Any:
    """A structlog logger for a component."""
    return structlog.get_logger(name)
