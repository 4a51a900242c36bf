"""Logging: structlog, JSON lines for journald, a readable console on a terminal, no secrets ever.

Configured once, in `main()`. Events are named `component.fact` with data as key-value pairs.
The standard library's loggers (stripe, httpx, aiomqtt) are routed through the same processors, so
the secret filter sees everything that reaches the output.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, TextIO

import structlog

# Stripe secret and restricted keys (live and test) and webhook signing secrets.
SECRET_PATTERN = re.compile(r"\b(?:(?:sk|rk)_(?:live|test)|whsec)_[A-Za-z0-9]+")
REDACTED = "[REDACTED]"


class Redactor:
    """A structlog processor that removes secrets from every value of an event, nested or not."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Also remove these literal values (the configured secrets), longest first."""
        self._secrets = sorted({*self._secrets, *(s for s in secrets if len(s) >= 4)}, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        """The text with every secret replaced by [REDACTED]."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return SECRET_PATTERN.sub(REDACTED, text)

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, Mapping):
            return {k: self._clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self._clean(v) for v in value]
        if isinstance(value, int | float | bool) or value is None:
            return value
        return self.scrub(repr(value) if isinstance(value, BaseException) else str(value))

    def __call__(self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        """Process one event."""
        for key, value in list(event_dict.items()):
            event_dict[key] = self._clean(value)
        return event_dict


REDACTOR = Redactor()


def _render_exceptions_first() -> list[Any]:
    # Exceptions become text before the redactor runs, so their messages are scrubbed too.
    return [structlog.processors.dict_tracebacks]


def configure(
    *,
    level: str = "info",
    json: bool | None = None,
    stream: TextIO | None = None,
    secrets: Iterable[str] = (),
) -> None:
    """Set up structlog and the standard library's logging once for the whole process.

    Args:
        level: the lowest level shown.
        json: JSON lines if true, console if false; by default JSON unless `stream` is a terminal.
        stream: where logs go (stderr by default).
        secrets: configured secret values to remove from every event.
    """
    out = stream if stream is not None else sys.stderr
    use_json = (not out.isatty()) if json is None else json
    REDACTOR.add(secrets)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if use_json:
        shared += [*_render_exceptions_first(), REDACTOR]
        renderer = structlog.processors.JSONRenderer()
    else:
        # The console renderer formats tracebacks itself; render them to text first so they are scrubbed.
        shared += [structlog.processors.format_exc_info, REDACTOR]
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())

    numeric = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared[:3], structlog.stdlib.ExtraAdder(), *shared[3:]],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # Libraries speak at INFO about every request; kiosk logs what matters itself.
    for noisy in ("httpx", "httpcore", "stripe"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))


def get(name: str) -> Any:
    """A structlog logger for a component."""
    return structlog.get_logger(name)
