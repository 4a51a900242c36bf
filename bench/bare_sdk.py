"""The least a program could do: kiosk's Stripe calls made with the stripe client alone.

No MQTT, no journal, no state machine: per payment, create a manually captured card-present
PaymentIntent, hand it to the reader, poll the reader every `--poll-interval` until its action
ends, read the PaymentIntent (with its charge, for the card and `capture_before`) when the reader
read did not carry it, and capture — with the same stripe-python async client over httpx and the
same idempotency keys kiosk sends. `bench/orders.py` runs it beside `kiosk run`; alone:

    .venv/bin/python bench/bare_sdk.py --api-base http://127.0.0.1:12111 --reader tmr_… [--orders 1000]

The reader must read cards by itself (the simulator's `auto_present`). Prints CPU per payment
(user + system, after a warm-up) and requests per payment; `--json` prints them as one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from collections import Counter
from typing import Any

import stripe

WARMUP = 20


async def pay(client: stripe.StripeClient, reader: str, interval: float, calls: Counter[str], *, expand: bool) -> None:
    """One payment: create → process → poll the reader → (read the PI) → capture."""
    key = uuid.uuid4().hex
    pi = await client.v1.payment_intents.create_async(
        params={
            "amount": 250,
            "currency": "usd",
            "capture_method": "manual",
            "metadata": {"kiosk_id": "bare", "order_id": key},
            "allowed_payment_method_types": ["card_present"],
        },
        options={"idempotency_key": f"{key}:create"},
    )
    calls["create"] += 1
    await client.v1.terminal.readers.process_payment_intent_async(
        reader,
        params={
            "payment_intent": pi.id,
            "process_config": {"enable_customer_cancellation": True, "skip_tipping": True},
        },
        options={"idempotency_key": f"{key}:process"},
    )
    calls["process"] += 1
    params: dict[str, Any] = (
        {"expand": ["action.process_payment_intent.payment_intent.latest_charge"]} if expand else {}
    )
    while True:
        await asyncio.sleep(interval)
        found = await client.v1.terminal.readers.retrieve_async(reader, params=params)  # type: ignore[arg-type]
        calls["read_reader"] += 1
        action = found.to_dict().get("action") or {}
        if action.get("status") != "in_progress":
            break
    if action.get("status") != "succeeded":
        raise RuntimeError(f"the reader's action ended {action}")
    intent = action["process_payment_intent"]["payment_intent"]
    if not isinstance(intent, dict):
        intent = (await client.v1.payment_intents.retrieve_async(pi.id, params={"expand": ["latest_charge"]})).to_dict()
        calls["read_intent"] += 1
    if intent["status"] != "requires_capture":
        raise RuntimeError(f"not authorised: {intent['status']}")
    await client.v1.payment_intents.capture_async(
        pi.id, params={"expand": ["latest_charge"]}, options={"idempotency_key": f"{key}:capture"}
    )
    calls["capture"] += 1


async def main_async(args: argparse.Namespace) -> dict[str, float]:
    http = stripe.HTTPXClient()
    client = stripe.StripeClient(
        "sk_test_bare00000000000000000000",
        http_client=http,
        base_addresses={"api": args.api_base},
        max_network_retries=0,
    )
    calls: Counter[str] = Counter()
    for _ in range(WARMUP):
        await pay(client, args.reader, args.poll_interval, calls, expand=args.expand)
    calls.clear()
    cpu0 = sum(os.times()[:2])
    wall0 = time.monotonic()
    for _ in range(args.orders):
        await pay(client, args.reader, args.poll_interval, calls, expand=args.expand)
    wall = time.monotonic() - wall0
    cpu = sum(os.times()[:2]) - cpu0
    await http.close_async()  # type: ignore[no-untyped-call]
    return {
        "cpu_ms_per_order": cpu * 1000 / args.orders,
        "requests_per_order": sum(calls.values()) / args.orders,
        "orders_per_s": args.orders / wall,
        **{f"calls_{name}": count / args.orders for name, count in calls.items()},
    }


def main() -> None:
    """Parse arguments, run, print."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--api-base", required=True)
    parser.add_argument("--reader", required=True)
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument("--poll-interval", type=float, default=0.01)
    parser.add_argument("--expand", action="store_true", help="read the reader with its PI expanded")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not args.api_base.startswith(("http://127.", "http://localhost")):
        raise SystemExit("loopback only")
    result = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(result))
    else:
        for name, value in result.items():
            print(f"{name}: {value:.2f}")


if __name__ == "__main__":
    main()
