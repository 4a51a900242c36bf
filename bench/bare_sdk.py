"""The least a program could do: kiosk's Stripe calls made with the stripe client alone.

No MQTT, no journal, no state machine: per payment, create a manually captured card-present
PaymentIntent, hand it to the reader, poll the reader every `--poll-interval` until its action
ends, read the PaymentIntent (with its charge, for the card and `capture_before`) when the reader
read did not carry it (`--expand` makes it carry it, as kiosk's reads do), and capture — with the
same stripe-python async client over httpx and the same idempotency keys kiosk sends. `--raw`
makes the requests as kiosk's gateway does (the client's `raw_request_async`, answers read as
plain JSON rather than StripeObjects). `bench/orders.py` runs it beside `kiosk run`; alone:

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


async def pay(  # noqa: PLR0913 - the benchmark's knobs
    client: stripe.StripeClient,
    reader: str,
    interval: float,
    calls: Counter[str],
    *,
    expand: bool,
    raw: bool = False,
) -> None:
    """One payment: create → process → poll the reader → (read the PI) → capture.

    With `raw`, each request goes through the client's `raw_request_async` and the answer is read
    as plain JSON (no StripeObject), as kiosk's gateway does.
    """
    key = uuid.uuid4().hex

    async def send(name: str, method: str, path: str, params: dict[str, Any], typed: Any) -> dict[str, Any]:
        calls[name] += 1
        if raw:
            answer: dict[str, Any] = (await client.raw_request_async(method, path, **params)).data
            return answer
        return dict((await typed()).to_dict())

    create = {
        "amount": 250,
        "currency": "usd",
        "capture_method": "manual",
        "metadata": {"kiosk_id": "bare", "order_id": key},
        "allowed_payment_method_types": ["card_present"],
    }
    pi = await send(
        "create",
        "post",
        "/v1/payment_intents",
        {**create, "idempotency_key": f"{key}:create"},
        lambda: client.v1.payment_intents.create_async(
            params=create,  # type: ignore[arg-type]
            options={"idempotency_key": f"{key}:create"},
        ),
    )
    process = {
        "payment_intent": pi["id"],
        "process_config": {"enable_customer_cancellation": True, "skip_tipping": True},
    }
    await send(
        "process",
        "post",
        f"/v1/terminal/readers/{reader}/process_payment_intent",
        {**process, "idempotency_key": f"{key}:process"},
        lambda: client.v1.terminal.readers.process_payment_intent_async(
            reader,
            params=process,  # type: ignore[arg-type]
            options={"idempotency_key": f"{key}:process"},
        ),
    )
    params: dict[str, Any] = (
        {"expand": ["action.process_payment_intent.payment_intent.latest_charge"]} if expand else {}
    )
    while True:
        await asyncio.sleep(interval)
        found = await send(
            "read_reader",
            "get",
            f"/v1/terminal/readers/{reader}",
            params,
            lambda: client.v1.terminal.readers.retrieve_async(reader, params=params),  # type: ignore[arg-type]
        )
        action = found.get("action") or {}
        if action.get("status") != "in_progress":
            break
    if action.get("status") != "succeeded":
        raise RuntimeError(f"the reader's action ended {action}")
    intent = action["process_payment_intent"]["payment_intent"]
    if not isinstance(intent, dict):
        intent = await send(
            "read_intent",
            "get",
            f"/v1/payment_intents/{pi['id']}",
            {"expand": ["latest_charge"]},
            lambda: client.v1.payment_intents.retrieve_async(pi["id"], params={"expand": ["latest_charge"]}),
        )
    if intent["status"] != "requires_capture":
        raise RuntimeError(f"not authorised: {intent['status']}")
    await send(
        "capture",
        "post",
        f"/v1/payment_intents/{pi['id']}/capture",
        {"expand": ["latest_charge"], "idempotency_key": f"{key}:capture"},
        lambda: client.v1.payment_intents.capture_async(
            pi["id"], params={"expand": ["latest_charge"]}, options={"idempotency_key": f"{key}:capture"}
        ),
    )


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
        await pay(client, args.reader, args.poll_interval, calls, expand=args.expand, raw=args.raw)
    calls.clear()
    cpu0 = sum(os.times()[:2])
    wall0 = time.monotonic()
    for _ in range(args.orders):
        await pay(client, args.reader, args.poll_interval, calls, expand=args.expand, raw=args.raw)
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
    parser.add_argument("--raw", action="store_true", help="raw requests read as plain JSON, as kiosk's gateway does")
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
