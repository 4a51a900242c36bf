"""Stripe requests per completed order, by endpoint, with the card presented at 2 s, 5 s and 20 s.

A fleet shares one Stripe account's rate limit (100 requests/s live), so what one sale costs in
requests is what bounds a fleet. Each case gets its own simulator (in this process), Mosquitto
and `kiosk run`; the cases run side by side. The simulator presents the card `after` seconds
after the reader got the payment; the controller vends at once. Every request the simulator
receives from the order's request to its `completed` status counts.

    .venv/bin/python bench/requests.py [--orders 3] [--poll-interval 2.0 1.0] [--after 2 5 20]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import rig  # noqa: E402 - after the path is set


async def case(workdir: Path, after: float, interval: float, orders: int) -> tuple[Counter[str], list[float]]:
    """Run `orders` sales with the card at `after` s; requests by endpoint and approval latencies."""
    counts: Counter[str] = Counter()
    waits: list[float] = []
    with rig.setup(workdir) as s:
        s.sim.auto_present(s.reader, after)
        daemon = s.daemon(PAYMENTS__POLL_INTERVAL_S=str(interval), PAYMENTS__CARD_TIMEOUT_S="30")
        daemon.start()
        try:
            await asyncio.to_thread(daemon.wait_ready)
            async with rig.controller(s.broker) as ctl:
                await ctl.wait_payments()
                for i in range(orders):
                    mark = s.requests.mark()
                    _, approved, _, _ = await rig.sale(ctl, f"req-{i}", timeout=90)
                    entries = s.requests.since(mark)
                    counts.update(rig.by_endpoint(entries))
                    processed = next(at for at, name in entries if name.endswith("/process_payment_intent"))
                    waits.append(approved - (processed + after))
                    ctl.forget(f"req-{i}")
        finally:
            daemon.stop()
    return counts, waits


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="kiosk-bench-") as tmp:
        cases = [(after, interval) for interval in args.poll_interval for after in args.after]
        results = await asyncio.gather(
            *(
                case(Path(tmp) / f"case-{after:g}-{interval:g}", after, interval, args.orders)
                for after, interval in cases
            )
        )
    print(f"machine: {rig.machine()}")
    print(f"{args.orders} orders per case; all cases ran side by side")
    for (after, interval), (counts, waits) in zip(cases, results, strict=True):
        total = sum(counts.values()) / args.orders
        print()
        print(
            f"card at {after:g} s, reader polled every {interval:g} s: {total:.1f} requests per order; "
            f"card presented → approved {rig.percentiles(waits)}"
        )
        for name, count in sorted(counts.items()):
            print(f"  {count / args.orders:5.1f}  {name}")


def main() -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=3)
    parser.add_argument("--poll-interval", type=float, nargs="+", default=[2.0, 1.0])
    parser.add_argument("--after", type=float, nargs="+", default=[2.0, 5.0, 20.0])
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
