"""CPU per completed order, memory and the throughput ceiling of one `kiosk run`, beside the bare SDK.

One run: the simulator (in this process) with a reader that reads the card at once, a private
Mosquitto, `kiosk run` polling every 10 ms, and a controller that vends the moment an order is
approved. After a warm-up, `--orders` orders go through one after another (one reader takes one
payment at a time), in `--rounds` rounds. After each of kiosk's rounds, `bench/bare_sdk.py` makes
the same Stripe calls for its share of `--bare-orders` payments with the stripe client alone — no
MQTT, no journal — against the same simulator: once with the client's typed calls (the headline
ratio), once with raw requests read as plain JSON, as kiosk's gateway makes them (the least a
program could do). Alternating keeps a drift of the machine's speed during the run (a virtual
machine's neighbours) out of the ratio: both sides are measured under it alike.

Prints: CPU per order (user + system) of both and their ratio; Stripe requests per order of both;
RSS after start, after the run and at its peak; orders per second (the ceiling: nothing waits on
a person) and how busy the daemon's CPU was meanwhile.

kiosk runs with the fleet off (the payments path, which the bare script is compared with) unless
`--fleet` is given: then it runs as installed, the fleet's events, health and state beside each
sale, and the difference is what the fleet costs per sale.

    .venv/bin/python bench/orders.py [--orders 1000] [--bare-orders 1000] [--rounds 5] [--warmup 50]
                                     [--no-bare] [--fleet]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import rig  # noqa: E402 - after the path is set


async def run_orders(ctl: rig.Controller, prefix: str, count: int, *, pid: int | None = None) -> float:
    """`count` sales one after another; returns the wall time they took.

    With `pid`, the daemon's RSS is printed every 1000 orders (to stderr).
    """
    start = time.monotonic()
    for i in range(count):
        order_id = f"{prefix}-{i}"
        await rig.sale(ctl, order_id)
        ctl.forget(order_id)
        if pid is not None and (i + 1) % 1000 == 0:
            rss = rig.rss_mb(pid)[0]
            print(
                f"  … {i + 1} orders, {time.monotonic() - start:.0f} s, RSS {rss:.1f} MB", file=sys.stderr, flush=True
            )
    return time.monotonic() - start


def bare(url: str, reader: str, orders: int, interval: float, *flags: str) -> dict[str, float]:
    """Run bench/bare_sdk.py against the simulator; its own figures as JSON."""
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "bare_sdk.py"),
            "--api-base",
            url,
            "--reader",
            reader,
            "--orders",
            str(orders),
            "--poll-interval",
            str(interval),
            "--json",
            *flags,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@dataclass
class Rounds:
    """CPU per order of each round: kiosk's, then the bare script's (typed, raw) right after it."""

    kiosk: list[float] = field(default_factory=list)
    raw: list[float] = field(default_factory=list)
    bare_results: list[dict[str, float]] = field(default_factory=list)

    @property
    def bare(self) -> list[float]:
        """The bare script's CPU per order, round by round."""
        return [result["cpu_ms_per_order"] for result in self.bare_results]


def split(total: int, rounds: int) -> list[int]:
    """`total` orders in `rounds` near-equal parts."""
    return [total // rounds + (1 if i < total % rounds else 0) for i in range(rounds)]


async def main_async(args: argparse.Namespace) -> None:  # noqa: PLR0915 - one report, in order
    rounds = 1 if args.no_bare else args.rounds
    if not 1 <= rounds <= min(args.orders, args.bare_orders):
        raise SystemExit("--rounds must be between 1 and the number of orders")
    measured = Rounds()
    requests: Counter[str] = Counter()
    wall = cpu = 0.0
    with tempfile.TemporaryDirectory(prefix="kiosk-bench-") as tmp, rig.setup(Path(tmp)) as s:
        s.sim.auto_present(s.reader, 0.0)
        settings = rig.fast(**({"FLEET__ENABLED": "true"} if args.fleet else {}))
        interval = float(settings["PAYMENTS__POLL_INTERVAL_S"])
        daemon = s.daemon(**settings)
        daemon.start()
        try:
            ready_s = daemon.wait_ready()
            async with rig.controller(s.broker) as ctl:
                await ctl.wait_payments()
                await asyncio.sleep(1.0)  # settled: connected, first reader check done
                rss_start, _ = rig.rss_mb(daemon.pid)
                await run_orders(ctl, "warm", args.warmup)
                rss_warm, _ = rig.rss_mb(daemon.pid)
                for n, (orders, bare_orders) in enumerate(
                    zip(split(args.orders, rounds), split(args.bare_orders, rounds), strict=True)
                ):
                    mark = s.requests.mark()
                    cpu0 = rig.cpu_s(daemon.pid)
                    wall += await run_orders(ctl, f"o{n}", orders, pid=daemon.pid)
                    used = rig.cpu_s(daemon.pid) - cpu0
                    cpu += used
                    requests += rig.by_endpoint(s.requests.since(mark))
                    measured.kiosk.append(used * 1000 / orders)
                    if args.no_bare:
                        continue
                    # Right after kiosk's round, on the same machine state (kiosk waits, idle):
                    # the same requests as kiosk's, the reader read carrying the PaymentIntent.
                    result = bare(s.url, s.reader, bare_orders, interval, "--expand")
                    measured.bare_results.append(result)
                    raw = bare(s.url, s.reader, bare_orders, interval, "--expand", "--raw")
                    measured.raw.append(raw["cpu_ms_per_order"])
                rss_end, rss_peak = rig.rss_mb(daemon.pid)
        finally:
            code = daemon.stop()
        if code not in (0, None):
            print(daemon.log()[-3000:], file=sys.stderr)
        ledger = s.sim.ledger()
        captured = sum(1 for i in ledger.intents if i.captures and i.metadata.get("kiosk_id") == "bench")  # not bare's
        kiosk_cpu_ms = cpu * 1000 / args.orders
        kiosk_requests = sum(requests.values()) / args.orders

    print(f"machine: {rig.machine()}")
    print(f"orders: {args.orders} completed one after another (after {args.warmup} warm-up), {captured} captured")
    fleet = "on (as installed; no fleet consumer acknowledges its events)" if args.fleet else "off (payments only)"
    print(f"settings: poll_interval_s=0.01, card read at once, controller vends at once, fleet {fleet}")
    print()
    print("CPU per completed order (user + system)")
    print(f"  kiosk run        {kiosk_cpu_ms:7.2f} ms   ({kiosk_requests:.2f} Stripe requests per order)")
    if measured.bare:
        weights = split(args.bare_orders, rounds)
        bare_ms = sum(w * ms for w, ms in zip(weights, measured.bare, strict=True)) / args.bare_orders
        raw_ms = sum(w * ms for w, ms in zip(weights, measured.raw, strict=True)) / args.bare_orders
        bare_requests = statistics.fmean(r["requests_per_order"] for r in measured.bare_results)
        print(f"  bare SDK script  {bare_ms:7.2f} ms   ({bare_requests:.2f} per order)")
        print(f"  ratio            {kiosk_cpu_ms / bare_ms:7.2f} x   (target <= 1.5)")
        print(
            f"  bare, raw JSON   {raw_ms:7.2f} ms   (ratio {kiosk_cpu_ms / raw_ms:.2f} x: the stripe client without"
            " StripeObjects, as kiosk's gateway uses it)"
        )
        per_request = (kiosk_cpu_ms / kiosk_requests, bare_ms / bare_requests)
        print(f"  per Stripe request: kiosk {per_request[0]:.2f} ms, bare {per_request[1]:.2f} ms")
        if rounds > 1:
            ratios = [k / b for k, b in zip(measured.kiosk, measured.bare, strict=True)]
            print(
                f"  in {rounds} rounds, each kiosk's orders then the bare script's right after:"
                f" ratio median {statistics.median(ratios):.2f} x, {min(ratios):.2f} to {max(ratios):.2f}"
            )
            for n, (k, b, r) in enumerate(zip(measured.kiosk, measured.bare, measured.raw, strict=True)):
                print(f"    round {n + 1}: kiosk {k:6.2f} ms, bare {b:6.2f} ms, raw {r:6.2f} ms, ratio {k / b:.2f} x")
    print()
    print("Stripe requests per order (kiosk), by endpoint")
    for name, count in sorted(requests.items()):
        print(f"  {count / args.orders:6.2f}  {name}")
    print()
    print("Throughput ceiling (one daemon, reader and controller answering at once)")
    print(f"  {args.orders / wall:7.1f} orders/s   ({wall * 1000 / args.orders:.1f} ms wall per order)")
    print(f"  daemon CPU busy {100 * cpu / wall:.0f} % of one core during the run")
    if measured.bare_results:
        print(f"  bare SDK: {statistics.fmean(r['orders_per_s'] for r in measured.bare_results):.1f} orders/s")
    print()
    print("Memory (RSS of kiosk run)")
    print(f"  start → READY=1        {ready_s * 1000:7.0f} ms")
    print(f"  after start             {rss_start:7.1f} MB   (target <= 60)")
    print(f"  after {args.warmup} warm-up orders {rss_warm:7.1f} MB")
    print(
        f"  after {args.orders} more orders  {rss_end:7.1f} MB   "
        f"(growth since warm-up {rss_end - rss_warm:+.1f} MB, since start {rss_end - rss_start:+.1f} MB)"
    )
    print(f"  peak (VmHWM)            {rss_peak:7.1f} MB")


def main() -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--bare-orders", type=int, default=1000, help="payments for the bare-SDK script")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare-SDK comparison")
    parser.add_argument(
        "--fleet",
        action="store_true",
        help="run kiosk with the fleet on, as installed (its events, health and state beside each sale)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="alternate kiosk's orders and the bare script's in this many rounds (drift hits both alike)",
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
