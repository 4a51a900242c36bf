"""kiosk: card payments for unattended vending machines through a Stripe Terminal smart reader."""

__version__ = "0.1.0"
