"""Whether kiosk can take payments now, and why not: from what Stripe and the reader answered.

New orders are refused at once (`payments_unavailable`) while the reader is offline or out of
service, or Stripe cannot be reached, keeps throttling or refuses our key — not after a timeout
per order.

A reader hardware fault is sticky: reading the reader does not show it (Stripe's reader object
looks healthy), so it lasts until a person acts — a restart (the fleet's `restart` command, or
systemd), maintenance switched off — or the reader takes a command again.
"""

from __future__ import annotations

from dataclasses import dataclass

from kiosk.model import Call, CallFailed, CallSucceeded, Event, Failure, Op, OrderData, ReaderView, State

# Consecutive unknown outcomes (timeouts, connection errors, 5xx) before Stripe counts as down.
UNREACHABLE_AFTER = 2
# Consecutive throttled answers (429, 409 key in use) before payments count as unavailable.
THROTTLED_AFTER = 3
READER_COMMANDS = frozenset({Op.DISPLAY, Op.PROCESS, Op.COLLECT, Op.CONFIRM, Op.CANCEL_ACTION})


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What kioskd/state and reader/state say."""

    payments: str  # available | unavailable
    code: str | None
    message: str | None
    reader_status: str
    device_type: str | None
    action: tuple[str, str] | None


class Availability:
    """Folds call outcomes into "can we take a payment now?"."""

    def __init__(self, reader_id: str, *, step_failure_hold_s: float = 30.0) -> None:
        self.reader_id = reader_id
        self.step_failure_hold_s = step_failure_hold_s
        self.step_failed_at: float | None = None
        self.reader_status = "unknown"
        self.device_type: str | None = None
        self.action: tuple[str, str] | None = None
        self.hardware_fault = False
        self.auth_failed = False
        self.unknown_streak = 0
        self.throttled_streak = 0
        self._maintenance: str | None = None
        self.last_ok: float | None = None
        self.errors: list[float] = []

    def observe(self, call: Call, event: Event, now: float = 0.0) -> bool:  # noqa: C901 - one fold, one branch per fact
        """Take one outcome into account; True when what we publish changed."""
        before = self.snapshot()
        match event:
            case CallSucceeded():
                self.auth_failed = False
                self.unknown_streak = 0
                self.throttled_streak = 0
                self.last_ok = now
                if self.step_failed_at is not None and now >= self.step_failed_at + self.step_failure_hold_s:
                    self.step_failed_at = None
                if call.op in READER_COMMANDS:
                    self.hardware_fault = False  # the reader took a command: it works again
                if event.reader is not None:
                    self._reader(event.reader)
                elif call.op in {Op.PROCESS, Op.COLLECT}:
                    self.reader_status = "online"
            case CallFailed():
                self.errors.append(now)
                if event.failure is Failure.AUTH:
                    self.auth_failed = True
                elif event.failure is Failure.UNKNOWN:
                    self.unknown_streak += 1
                elif event.failure is Failure.THROTTLED:
                    self.throttled_streak += 1
                elif event.failure is Failure.REFUSED:
                    self.unknown_streak = 0
                    self.throttled_streak = 0
                    if event.code == "terminal_reader_offline":
                        self.reader_status = "offline"
                    elif event.code == "terminal_reader_hardware_fault":
                        self.hardware_fault = True
        return self.snapshot() != before

    def _reader(self, reader: ReaderView) -> None:
        self.reader_status = "offline" if reader.status == "offline" else "online"
        action = reader.action
        self.action = (action.type, action.status) if action is not None else None

    def order_ended(self, order: OrderData, now: float) -> bool:
        """Take an ended order into account; True when what we publish changed.

        An order whose step ran out of time (Stripe kept failing or throttling) makes payments
        unavailable until a call succeeds again `step_failure_hold_s` later: the next customer
        is told at once instead of waiting out the same budget.
        """
        before = self.snapshot()
        if order.state is State.FAILED and order.reason is not None and order.reason.code == "payments_unavailable":
            self.step_failed_at = now
        return self.snapshot() != before

    @property
    def maintenance(self) -> str | None:
        """The maintenance message while new orders are refused for maintenance, else None."""
        return self._maintenance

    @maintenance.setter
    def maintenance(self, message: str | None) -> None:
        if message is None and self._maintenance is not None:
            # A person switched maintenance off: they have seen to the machine and its reader.
            self.hardware_fault = False
        self._maintenance = message

    def reset_reader_fault(self) -> None:
        """A person says the reader is fixed."""
        self.hardware_fault = False

    def set_device_type(self, device_type: str | None) -> None:
        """Remember the reader's model for reader/state."""
        self.device_type = device_type

    def refusal(self) -> tuple[str, str] | None:
        """(code, message) to reject a new order with, or None when payments are available."""
        reason = self.reason()
        if reason is None:
            return None
        code, text = reason
        if code == "maintenance":
            return code, text
        return "payments_unavailable", text

    def reason(self) -> tuple[str, str] | None:  # noqa: PLR0911 - one answer per cause, in order
        """Why payments are unavailable, or None."""
        if self.maintenance is not None:
            return "maintenance", self.maintenance
        if self.auth_failed:
            return "stripe_auth", "Stripe refused kiosk's API key; an operator must fix the key"
        if self.unknown_streak >= UNREACHABLE_AFTER:
            return "stripe_unreachable", "Stripe cannot be reached"
        if self.throttled_streak >= THROTTLED_AFTER:
            return "stripe_throttled", "Stripe is throttling kiosk's requests"
        if self.step_failed_at is not None:
            return "stripe_failing", "Stripe kept failing; the last payment could not be completed in time"
        if self.hardware_fault:
            return "reader_fault", "the card reader reported a hardware fault"
        if self.reader_status == "offline":
            return "reader_offline", "the card reader is offline"
        return None

    def snapshot(self) -> Snapshot:
        """The current picture."""
        reason = self.reason()
        status = self.reader_status
        if status == "online" and self.action is not None and self.action[1] == "in_progress":
            status = "busy"
        return Snapshot(
            payments="unavailable" if reason else "available",
            code=reason[0] if reason else None,
            message=reason[1] if reason else None,
            reader_status=status,
            device_type=self.device_type,
            action=self.action,
        )
