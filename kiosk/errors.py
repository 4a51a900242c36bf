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


class JournalError(KioskError):
    """The journal cannot be read or written: stop, and let systemd restart kiosk.

    Nothing of the failed operation was written (every write is one transaction). A journal
    written by a newer kiosk (higher schema version) is refused with this error too.
    """
