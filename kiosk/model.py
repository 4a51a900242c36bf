"""The values the order state machine works with: states, reasons, what Stripe showed, events, calls.

Pure data: frozen slotted dataclasses, no I/O. The runner translates the gateway's objects and the
bus's messages into these, so `kiosk.core` never sees a library type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class State(StrEnum):
    """An order's public state, in lifecycle order (protocol.md §1)."""

    RECEIVED = "received"
    AWAITING_CARD = "awaiting_card"
    PROCESSING = "processing"
    APPROVED = "approved"
    DECLINED = "declined"
    CAPTURING = "capturing"
    COMPLETED = "completed"
    CANCELED = "canceled"
    REJECTED = "rejected"
    FAILED = "failed"


TERMINAL = frozenset({State.COMPLETED, State.CANCELED, State.REJECTED, State.FAILED})


class Op(StrEnum):
    """A call to Stripe. Mutating ones carry an idempotency key."""

    CREATE = "create"
    DISPLAY = "display"
    PROCESS = "process"
    COLLECT = "collect"
    CONFIRM = "confirm"
    CANCEL_ACTION = "cancel_action"
    CAPTURE = "capture"
    CANCEL = "cancel"
    READ_INTENT = "read_intent"
    READ_READER = "read_reader"
    # A stale action of another PaymentIntent keeps the reader busy: read that PI, and clear the
    # action (`cancel_action`) only when that PI is not being authorised.
    READ_OTHER_INTENT = "read_other_intent"
    CLEAR_STALE = "clear_stale_action"

    @property
    def mutating(self) -> bool:
        """Whether the call changes something at Stripe (and so needs an idempotency key)."""
        return self not in {Op.READ_INTENT, Op.READ_READER, Op.READ_OTHER_INTENT}


@dataclass(frozen=True, slots=True)
class Reason:
    """Why an order is where it is: `reason` in the status payload."""

    code: str
    message: str
    retryable: bool = False


@dataclass(frozen=True, slots=True)
class Item:
    """One line of the cart the controller sent."""

    sku: str
    name: str
    quantity: int
    unit_amount: int


@dataclass(frozen=True, slots=True)
class Card:
    """What the reader read from the card: enough for a receipt and for card rules."""

    brand: str | None = None
    last4: str | None = None
    funding: str | None = None
    wallet: str | None = None


@dataclass(frozen=True, slots=True)
class Decline:
    """`last_payment_error` of a PaymentIntent."""

    code: str | None
    decline_code: str | None
    message: str | None


@dataclass(frozen=True, slots=True)
class IntentView:
    """A PaymentIntent as Stripe last showed it."""

    id: str
    status: str
    amount: int
    amount_capturable: int = 0
    amount_received: int = 0
    card: Card | None = None
    capture_before: float | None = None
    decline: Decline | None = None
    order_id: str | None = None


@dataclass(frozen=True, slots=True)
class ActionView:
    """The reader's current action."""

    type: str
    status: str
    intent_id: str | None = None
    failure_code: str | None = None
    failure_message: str | None = None
    card: Card | None = None


@dataclass(frozen=True, slots=True)
class ReaderView:
    """A reader as Stripe last showed it; `intent` is the action's PI when it was expanded."""

    id: str
    status: str
    action: ActionView | None = None
    intent: IntentView | None = None


# --- Events: what happens to an order ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    """A request to Stripe the order wants made. `key` is the idempotency key of mutating calls.

    `target` is the PaymentIntent of a stale action (read_other_intent, clear_stale_action): never
    the order's own.
    """

    op: Op
    key: str | None = None
    amount: int | None = None
    reason: str | None = None
    target: str | None = None


class Failure(StrEnum):
    """How a call failed, by what the order does next."""

    UNKNOWN = "unknown"  # timeout, connection error, 5xx: it may have been applied; read first
    THROTTLED = "throttled"  # 429, 409 key in use: back off, same key
    REFUSED = "refused"  # Stripe answered no, with a code
    AUTH = "auth"  # the key is not accepted: nothing will work until a person acts


@dataclass(frozen=True, slots=True)
class CallSucceeded:
    """Stripe answered a call; the objects it returned."""

    call: Call
    intent: IntentView | None = None
    reader: ReaderView | None = None


@dataclass(frozen=True, slots=True)
class CallFailed:
    """A call did not succeed."""

    call: Call
    failure: Failure
    code: str | None = None
    message: str = ""
    retry_after: float | None = None
    should_retry: bool | None = None  # Stripe-Should-Retry, when Stripe sent it
    replayed: bool = False  # Stripe answered with the response it stored for this key


@dataclass(frozen=True, slots=True)
class CancelRequested:
    """The controller asked to cancel the order."""

    message_id: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class VendReported:
    """The controller reported what came out of the machine."""

    message_id: str
    result: str  # success | failure | partial
    vended_amount: int | None = None


@dataclass(frozen=True, slots=True)
class Restarted:
    """The daemon started again: whatever call was in flight has an unknown outcome."""


@dataclass(frozen=True, slots=True)
class Abandon:
    """Something outside the order ends it (a fleet command, the reader out of service)."""

    code: str
    message: str


Event = CallSucceeded | CallFailed | CancelRequested | VendReported | Restarted | Abandon


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing to do until `until` (wall-clock seconds), or until an event arrives when None."""

    until: float | None


# --- Settings an order keeps for its whole life ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Policy:
    """The settings an order started with; later changes apply to later orders only."""

    kiosk_id: str
    card_timeout_s: float = 30.0
    max_card_attempts: int = 3
    vend_result_timeout_s: float = 300.0
    flow: str = "process"  # process | collect_confirm
    # Reader polling while a card is expected: quick at first, slower once the customer dawdles
    # (README, "Polling and the API budget", has the schedule and what it costs per order).
    poll_first_s: float = 2.0
    poll_interval_s: float = 2.0
    poll_slow_after_s: float = 15.0
    poll_slow_s: float = 4.0
    # Retrying a step: exponential backoff, and how long one step may take before the order ends.
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 8.0
    # Each backoff is scaled by a factor in [1 - jitter, 1 + jitter), drawn from the call's key, so
    # a fleet throttled at once does not come back in step (and a replay is reproducible).
    backoff_jitter: float = 0.5
    step_budget_s: float = 60.0
    # Capture this long before Stripe's capture_before at the latest.
    capture_margin_s: float = 3600.0
    allowed_brands: tuple[str, ...] = ()
    allowed_funding: tuple[str, ...] = ()
    allow_wallets: bool = True


@dataclass(frozen=True, slots=True)
class Goal:
    """The order is being wound down: release the reader and the hold, then end like this."""

    end: State
    code: str
    message: str
    honor_authorisation: bool = False  # a card that was authorised meanwhile goes on to approved
    stripe_reason: str = "abandoned"
    retryable: bool = False


@dataclass(frozen=True, slots=True)
class OrderData:
    """Everything the journal keeps about one order. Replaced, never mutated."""

    order_id: str
    amount: int
    currency: str
    policy: Policy
    created_at: float
    items: tuple[Item, ...] = ()
    expires_at: float | None = None
    state: State = State.RECEIVED
    status_seq: int = 0
    in_reply_to: str | None = None
    reason: Reason | None = None
    intent_id: str | None = None
    card: Card | None = None
    capturable: int = 0
    capture_before: float | None = None
    captured_amount: int | None = None
    displayed: bool = False
    declines: int = 0
    attempts: dict[str, int] = field(default_factory=dict)
    inflight: Call | None = None
    pending_read: Op | None = None
    retry_op: Op | None = None
    retry_at: float | None = None
    tries: int = 0
    step_since: float = 0.0
    card_deadline: float | None = None
    vend_deadline: float | None = None
    next_poll_at: float | None = None
    polls: int = 0
    goal: Goal | None = None
    action_cleared: bool = False
    vend_result: str | None = None
    vend_amount: int | None = None
    collected: bool = False
    collected_at: float | None = None
    stale_intent: str | None = None  # the PI of another order's action found on the reader

    @property
    def terminal(self) -> bool:
        """Whether the order has ended."""
        return self.state in TERMINAL
