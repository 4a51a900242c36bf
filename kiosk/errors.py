"""The exceptions kiosk raises, grouped by what the caller should do about them.

One root, `KioskError`. Foreign exceptions (stripe, aiomqtt, sqlite3) are translated into these at
the adapter that meets them, so the runner and the core never see a library's error type.
"""


class KioskError(Exception):
    """Root of every error kiosk raises on purpose."""


class ConfigError(KioskError):
    """The configuration is invalid: the process cannot start. Exit code 78 (EX_CONFIG).

    `problems` holds one sentence per setting at fault, each naming the key.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class UsageError(KioskError):
    """The command line was used wrongly. Exit code 2."""


class InvalidInput(KioskError):  # noqa: N818 - the name says what the caller must do: reject
    """A message from outside is malformed: reject it with `code`, change nothing."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


class IllegalTransition(KioskError):  # noqa: N818 - mirrors h11's LocalProtocolError family
    """The core was asked to do something its state does not allow: a bug in the caller."""

    def __init__(self, state: str, event: str) -> None:
        self.state = state
        self.event = event
        super().__init__(f"event {event} is not allowed in state {state}")


class BusUnavailable(KioskError):  # noqa: N818 - the name is the state the caller must handle
    """The MQTT broker cannot be reached right now: keep the message and send it after reconnecting.

    A publish that raised this may or may not have reached the broker (receivers dedupe on `id`).
    """


class JournalError(KioskError):
    """The journal cannot be read or written: stop, and let systemd restart kiosk.

    Nothing of the failed operation was written (every write is one transaction). A journal
    written by a newer kiosk (higher schema version) is refused with this error too.
    """


class UpstreamError(KioskError):
    """Stripe, or the network on the way to it, did not do what was asked.

    The subclass says what the caller does next. Attributes come from Stripe's answer when there
    was one: `code` (Stripe's error code, or `timeout` / `connection_error`), `http_status`,
    `request_id`, `should_retry` (the `Stripe-Should-Retry` header: True, False or None when
    absent), `replayed` (the answer was a replay of an earlier one for the same idempotency key),
    and where they apply `retry_after` (seconds), `decline_code` and `param`. Messages never
    contain the API key.
    """

    def __init__(  # noqa: PLR0913 - the facts Stripe's answer carries
        self,
        message: str,
        *,
        code: str | None = None,
        http_status: int | None = None,
        request_id: str | None = None,
        should_retry: bool | None = None,
        replayed: bool = False,
        retry_after: float | None = None,
        decline_code: str | None = None,
        param: str | None = None,
    ) -> None:
        self.message = message
        self.code = code
        self.http_status = http_status
        self.request_id = request_id
        self.should_retry = should_retry
        self.replayed = replayed
        self.retry_after = retry_after
        self.decline_code = decline_code
        self.param = param
        super().__init__(message)


class UnknownOutcome(UpstreamError):  # noqa: N818 - the name is what the caller must assume
    """Timeout, connection error or 5xx: the call may or may not have happened. Read first."""


class Throttled(UpstreamError):  # noqa: N818 - the name is what happened
    """429 rate limit or lock timeout, or 409 key in use: back off and retry with the same key.

    `retry_after` is the server's hint in seconds, when it gave one.
    """


class StripeRefused(UpstreamError):  # noqa: N818 - the name is what happened
    """Stripe answered and said no (4xx): decide by `code` (and `decline_code`, `param`).

    Nothing was done by this call, e.g. `terminal_reader_busy`, `terminal_reader_offline`,
    `intent_invalid_state`, `card_declined`, `resource_missing`.
    """


class StripeAuthError(UpstreamError):
    """401/403: the key is wrong, revoked or lacks a permission. Payments are unavailable."""


class IdempotencyMisuse(UpstreamError):  # noqa: N818 - the name says it is a bug
    """400 idempotency_error: one key was sent with different parameters. A bug in kiosk."""
