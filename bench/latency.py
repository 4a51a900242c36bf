"""The latency kiosk adds on each leg of a sale, at the default reader polling (2 s) unless told.

The simulator runs in this process and logs each request's arrival on the monotonic clock; the
controller timestamps what it publishes and receives on the same clock. Per order:

1. order published → `process_payment_intent` received by the simulator;
2. card presented → `approved` received by the controller (the card is presented by this script,
   `--present-after` seconds after the reader got the payment, at a random phase of the polling);
   also the part after Stripe could tell: the reader read that saw the approval arriving →
   `approved` received;
3. vend_result published → capture received by the simulator.

Prints p50, p99 and max of each. The "approved" leg is bounded below by the polling interval:
kiosk learns of the card at its next reader read.

    .venv/bin/python bench/latency.py [--orders 150] [--poll-interval 2.0]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import rig  # noqa: E402 - after the path is set

PROCESS = "POST /v1/terminal/readers/{id}/process_payment_intent"
READ_READER = "GET /v1/terminal/readers/{id}"
CAPTURE = "POST /v1/payment_intents/{id}/capture"


async def one(s: rig.Setup, ctl: rig.Controller, order_id: str, delay: float) -> tuple[float, float, float, float]:
    """One sale with the card presented `delay` s after the reader got it; the four leg times."""
    mark = s.requests.mark()
    approved = ctl.expect(order_id, "approved")
    completed = ctl.expect(order_id, "completed")
    async with asyncio.timeout(60):
        requested = await ctl.request(order_id)
        while (processed := s.requests.first_after(PROCESS, requested, mark)) is None:  # noqa: ASYNC110
            await asyncio.sleep(0.002)  # the simulator's thread logs it: no event to wait on here
        await asyncio.sleep(max(0.0, processed + delay - time.monotonic()))
        presented = time.monotonic()
        s.sim.present_card(s.reader)
        approved_at = await approved
        seen = s.requests.first_after(READ_READER, presented, mark)
        vended = await ctl.vend(order_id)
        await completed
        captured = s.requests.first_after(CAPTURE, vended, mark)
    if seen is None or captured is None:
        raise RuntimeError(f"{order_id}: no reader read after the card, or no capture")
    ctl.forget(order_id)
    return processed - requested, approved_at - presented, approved_at - seen, captured - vended


async def main_async(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    legs: list[list[float]] = [[], [], [], []]
    with tempfile.TemporaryDirectory(prefix="kiosk-bench-") as tmp, rig.setup(Path(tmp)) as s:
        daemon = s.daemon(
            PAYMENTS__POLL_INTERVAL_S=str(args.poll_interval),
            PAYMENTS__CARD_TIMEOUT_S="30",
            PAYMENTS__VEND_RESULT_TIMEOUT_S="30",
        )
        daemon.start()
        try:
            daemon.wait_ready()
            async with rig.controller(s.broker) as ctl:
                await ctl.wait_payments()
                await asyncio.sleep(1.0)
                for i in range(args.orders):
                    delay = args.present_after + rng.uniform(0, args.poll_interval)
                    for leg, value in zip(legs, await one(s, ctl, f"lat-{i}", delay), strict=True):
                        leg.append(value)
        finally:
            daemon.stop()
    print(f"machine: {rig.machine()}")
    print(
        f"orders: {args.orders}; reader polled every {args.poll_interval:g} s; card presented "
        f"{args.present_after:g} s + U(0, {args.poll_interval:g}) s after process_payment_intent"
    )
    print(f"1. order published → process_payment_intent at Stripe   {rig.percentiles(legs[0])}")
    print(f"2. card presented → approved at the controller          {rig.percentiles(legs[1])}")
    print(f"   of which: approving reader read → approved          {rig.percentiles(legs[2])}")
    print(f"3. vend_result published → capture at Stripe            {rig.percentiles(legs[3])}")


def main() -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=150)
    parser.add_argument("--poll-interval", type=float, default=2.0)
    parser.add_argument("--present-after", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=7)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
