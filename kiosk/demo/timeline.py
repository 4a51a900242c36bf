"""The demo's live timeline: one readable line per thing that happens, for an operator watching.

Colour only on a terminal, and never when `NO_COLOR` is set (https://no-color.org): piped into a
file or a CI log, the same lines come out plain.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import TextIO

RESET = "\x1b[0m"
BOLD = "\x1b[1m"
DIM = "\x1b[2m"
RED = "\x1b[31m"
GREEN = "\x1b[32m"
YELLOW = "\x1b[33m"
BLUE = "\x1b[34m"
MAGENTA = "\x1b[35m"
CYAN = "\x1b[36m"

STATE_COLOURS = {
    "received": DIM,
    "awaiting_card": BLUE,
    "processing": BLUE,
    "approved": BOLD + CYAN,
    "declined": YELLOW,
    "capturing": BLUE,
    "completed": BOLD + GREEN,
    "canceled": BOLD + YELLOW,
    "rejected": BOLD + RED,
    "failed": BOLD + RED,
    "online": GREEN,
    "offline": BOLD + RED,
}

# What the controller (and an operator) reads from each state, when the status says nothing more.
STATE_MEANING = {
    "received": "journaled, nothing charged yet",
    "awaiting_card": "the reader asks for a card",
    "processing": "card presented, authorising",
    "approved": "authorised: dispense now",
    "capturing": "vend confirmed, capturing",
}

# For a terminal or pipe that cannot show them (a Latin-1 locale, say).
_ASCII = str.maketrans({"─": "-", "→": ">", "•": "*", "·": "-", "§": "s."})

ORDER_WIDTH = 16
STATE_WIDTH = 14
AMOUNT_WIDTH = 10


def want_colour(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Colour when `stream` is a terminal and `NO_COLOR` is unset or empty."""
    env = os.environ if environ is None else environ
    if env.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _can_encode(stream: TextIO, text: str) -> bool:
    try:
        text.encode(getattr(stream, "encoding", None) or "utf-8")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def money(amount: int | None, currency: str) -> str:
    """Minor units as an operator reads them: `2.50 USD` (two-decimal currencies, as the demo's)."""
    if amount is None:
        return ""
    return f"{amount / 100:.2f} {currency.upper()}"


class Timeline:
    """Prints the demo as it happens.

    Args:
        out: where the lines go.
        colour: use ANSI colours.
        clock: monotonic seconds; times are shown from the timeline's creation.
    """

    def __init__(self, out: TextIO, *, colour: bool, clock: Callable[[], float] = time.monotonic) -> None:
        self.out = out
        self.colour = colour
        self._clock = clock
        self._start = clock()
        self._seen: set[tuple[str, int, str]] = set()
        self._daemon_last: tuple[Any, ...] | None = None
        self._ascii = not _can_encode(out, "─→•·§")

    def paint(self, text: str, style: str) -> str:
        """`text` in `style` when colour is on."""
        return f"{style}{text}{RESET}" if self.colour and style else text

    def elapsed(self) -> float:
        """Seconds since the timeline started."""
        return self._clock() - self._start

    def _emit(self, text: str) -> None:
        print(text.translate(_ASCII) if self._ascii else text, file=self.out, flush=True)

    def _line(self, who: str, what: str, amount: str, detail: str, styles: tuple[str, str] = ("", "")) -> None:
        """One timeline row; `styles` colour the state and the detail columns."""
        stamp = self.paint(f"{self.elapsed():6.2f}s", DIM)
        who_cell = f"{who:<{ORDER_WIDTH}}"
        what_cell = self.paint(f"{what:<{STATE_WIDTH}}", styles[0])
        amount_cell = f"{amount:>{AMOUNT_WIDTH}}"
        self._emit(f"{stamp}  {who_cell} {what_cell} {amount_cell}  {self.paint(detail, styles[1])}".rstrip())

    def text(self, line: str = "", style: str = "") -> None:
        """A line of prose (banner, notes about the set-up)."""
        self._emit(self.paint(line, style) if line else "")

    def columns(self) -> None:
        """The column headings."""
        head = f"{'time':>7}  {'order':<{ORDER_WIDTH}} {'state':<{STATE_WIDTH}} {'amount':>{AMOUNT_WIDTH}}  detail"
        self._emit(self.paint(head, BOLD))

    def heading(self, text: str) -> None:
        """A scenario starts."""
        self._emit("")
        self._emit(self.paint(f"── {text}", BOLD + MAGENTA))

    def note(self, who: str, actor: str, detail: str) -> None:
        """Something a person or a machine did (`actor`: customer, controller, demo)."""
        self._line(who, f"· {actor}", "", detail, (DIM, DIM))

    def status(self, payload: Mapping[str, Any]) -> bool:
        """An order status from the daemon; False (and nothing printed) when seen before.

        Statuses are retained and re-published after a restart: the same `seq` and state twice is one
        event.
        """
        order_id = str(payload.get("order_id", "?"))
        state = str(payload.get("state", "?"))
        seq = payload.get("seq")
        if isinstance(seq, int):
            key = (order_id, seq, state)
            if key in self._seen:
                return False
            self._seen.add(key)
        currency = str(payload.get("currency") or "usd")
        amount = money(payload.get("amount"), currency)
        self._line(order_id, state, amount, describe(payload), (STATE_COLOURS.get(state, ""), ""))
        return True

    def daemon(self, payload: Mapping[str, Any]) -> None:
        """The daemon's `kioskd/state`, when it says something new (it is retained and re-sent)."""
        state = str(payload.get("state", "?"))
        detail = f"payments {payload.get('payments', '?')}"
        reason = payload.get("reason")
        code = reason.get("code") if isinstance(reason, dict) else None
        if code:
            detail += f" ({code})"
        key = (state, payload.get("payments"), code, payload.get("boot_id"))
        if key == self._daemon_last:
            return
        self._daemon_last = key
        self._line("kioskd", state, "", detail, (STATE_COLOURS.get(state, ""), ""))


def describe(payload: Mapping[str, Any]) -> str:
    """The detail column for a status: reason, card, captured amount."""
    state = payload.get("state")
    currency = str(payload.get("currency") or "usd")
    parts: list[str] = []
    reason = payload.get("reason")
    if isinstance(reason, dict) and reason.get("code"):
        text = f"{reason['code']}"
        if reason.get("retryable"):
            text += " (retryable)"
        parts.append(text)
    payment = payload.get("payment")
    if isinstance(payment, dict):
        card = payment.get("card")
        if isinstance(card, dict) and state == "approved":
            parts.append(f"{card.get('brand', 'card')} •••• {card.get('last4', '????')}")
    captured = payload.get("captured_amount")
    if state == "completed" and isinstance(captured, int):
        parts.append(f"captured {money(captured, currency)}")
    if not parts and isinstance(state, str) and state in STATE_MEANING:
        parts.append(STATE_MEANING[state])
    elif state == "approved":
        parts.append("dispense now")
    return ", ".join(parts)
