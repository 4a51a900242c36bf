"""Stripe's Terminal test cards and test amounts, and how long each brand's authorisation lasts."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_CARD = "4242424242424242"
DAY = 86_400.0

# Card-present authorisations expire by brand (stripe-notes "Time limits"): Visa after 4 days
# 18 hours, the others after 2 days. `capture_before` on the charge carries the exact deadline.
AUTHORISATION_WINDOW = {"visa": 4 * DAY + 18 * 3600}
DEFAULT_AUTHORISATION_WINDOW = 2 * DAY


@dataclass(frozen=True, slots=True)
class Decline:
    """Why an authorisation is refused: Stripe's error `code`, `decline_code` and message."""

    code: str
    decline_code: str
    message: str


@dataclass(frozen=True, slots=True)
class TestCard:
    """A card the simulated reader can read."""

    number: str
    brand: str
    funding: str = "credit"
    country: str = "US"
    method_type: str = "card_present"
    decline: Decline | None = None

    @property
    def last4(self) -> str:
        """The last four digits, all a receipt or a log may show."""
        return self.number[-4:]

    @property
    def authorisation_window(self) -> float:
        """Seconds an authorisation on this card stays capturable."""
        return AUTHORISATION_WINDOW.get(self.brand, DEFAULT_AUTHORISATION_WINDOW)


_DECLINED = "Your card was declined."


def _declined(number: str, decline_code: str, message: str = _DECLINED, code: str = "card_declined") -> TestCard:
    return TestCard(number, "visa", decline=Decline(code, decline_code, message))


TEST_CARDS: dict[str, TestCard] = {
    card.number: card
    for card in (
        TestCard("4242424242424242", "visa"),
        TestCard("4000056655665556", "visa", funding="debit"),
        TestCard("5555555555554444", "mastercard"),
        TestCard("378282246310005", "amex"),
        TestCard("6011111111111117", "discover"),
        TestCard("4506445006931933", "interac", funding="debit", country="CA", method_type="interac_present"),
        _declined("4000000000000002", "generic_decline"),
        _declined("4000000000009995", "insufficient_funds", "Your card has insufficient funds."),
        _declined("4000000000009987", "lost_card"),
        _declined("4000000000009979", "stolen_card"),
        _declined("4000000000000069", "expired_card", "Your card has expired.", code="expired_card"),
        _declined(
            "4000000000000119",
            "processing_error",
            "An error occurred while processing your card. Try again in a little bit.",
            code="processing_error",
        ),
    )
}

# Test amounts (the last two digits of the amount in minor units) that decline on a simulated
# reader, with the decline code Stripe reports.
TEST_AMOUNT_DECLINES: dict[int, Decline] = {
    1: Decline("card_declined", "call_issuer", _DECLINED),
    5: Decline("card_declined", "generic_decline", _DECLINED),
    55: Decline("card_declined", "incorrect_pin", "The PIN entered is incorrect."),
    60: Decline("card_declined", "online_or_offline_pin_required", "The card requires a PIN."),
    65: Decline(
        "card_declined",
        "withdrawal_count_limit_exceeded",
        "The customer has exceeded the balance or credit limit available on their card.",
    ),
    75: Decline("card_declined", "pin_try_exceeded", "The allowable number of PIN tries was exceeded."),
}


def luhn_ok(number: str) -> bool:
    """True when the number passes the Luhn check every card number passes."""
    if not number.isdigit() or not 12 <= len(number) <= 19:
        return False
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def lookup(number: str) -> TestCard | None:
    """The test card with this number; any other Luhn-valid number approves with its brand."""
    if number in TEST_CARDS:
        return TEST_CARDS[number]
    if not luhn_ok(number):
        return None
    if number.startswith("4"):
        brand = "visa"
    elif number[:2] in {"51", "52", "53", "54", "55"} or number[:1] == "2":
        brand = "mastercard"
    elif number[:2] in {"34", "37"}:
        brand = "amex"
    elif number.startswith(("6011", "65")):
        brand = "discover"
    else:
        brand = "unknown"
    return TestCard(number, brand)


def amount_decline(amount: int) -> Decline | None:
    """The decline a test amount triggers (by its last two digits), if any."""
    return TEST_AMOUNT_DECLINES.get(amount % 100)
