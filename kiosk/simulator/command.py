"""`kiosk simulator`: serve the Stripe simulator until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from typing import TextIO

from kiosk.simulator.app import Simulator

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 12111


async def serve(host: str, port: int, out: TextIO, *, seed: int = 0) -> None:
    """Serve on host:port, print the base URL, return after SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with Simulator(seed=seed).serve(host, port) as endpoint:
            print(endpoint.url, file=out, flush=True)
            print(
                f"# Stripe simulator: use any sk_test_… key; controls under {endpoint.url}/_simulator/ "
                "(docs/simulator.md). Ctrl-C stops it.",
                file=out,
                flush=True,
            )
            await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run(host: str, port: int, out: TextIO, *, seed: int = 0) -> int:
    """The command's body; returns the exit code."""
    asyncio.run(serve(host, port, out, seed=seed))
    return 0
