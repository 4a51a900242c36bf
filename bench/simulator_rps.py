"""Requests per second the Stripe simulator serves on one core (loopback only, bounded load).

Starts `kiosk simulator` in a subprocess pinned to one CPU, then drives it from this process (on
another CPU when there is one) over keep-alive connections with plain HTTP/1.1: per payment
create → process → present → retrieve → capture. Prints the figures; asserts nothing.

    .venv/bin/python bench/simulator_rps.py [--flows 2000] [--connections 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

AUTH = "Authorization: Bearer sk_test_bench\r\n"


async def call(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str, path: str, body: str = ""
) -> dict[str, Any]:
    head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\n{AUTH}"
    if method == "POST":
        head += f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n"
    writer.write((head + "\r\n" + body).encode())
    status_headers = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in status_headers.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    data: dict[str, Any] = json.loads(await reader.readexactly(length))
    if not status_headers.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"{method} {path}: {data}")
    return data


async def worker(host: str, port: int, flows: int, counter: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    rdr = await call(reader, writer, "POST", "/v1/terminal/readers", "registration_code=simulated-wpe")
    rid = rdr["id"]
    form = "amount=1000&currency=usd&capture_method=manual&allowed_payment_method_types[0]=card_present"
    for _ in range(flows):
        pi = (await call(reader, writer, "POST", "/v1/payment_intents", form))["id"]
        await call(reader, writer, "POST", f"/v1/terminal/readers/{rid}/process_payment_intent", f"payment_intent={pi}")
        await call(reader, writer, "POST", f"/v1/test_helpers/terminal/readers/{rid}/present_payment_method", "")
        await call(reader, writer, "GET", f"/v1/payment_intents/{pi}")
        await call(reader, writer, "POST", f"/v1/payment_intents/{pi}/capture", "")
        counter[0] += 5
    writer.close()


async def drive(url: str, flows: int, connections: int) -> tuple[int, float]:
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost"):
        raise SystemExit("loopback only")
    counter = [0]
    start = time.perf_counter()
    per = flows // connections
    await asyncio.gather(*(worker(parts.hostname, parts.port or 80, per, counter) for _ in range(connections)))
    return counter[0], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flows", type=int, default=2000, help="payments to run (5 requests each)")
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, client_cpus = cpus[0], set(cpus[1:] or cpus)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kiosk", "simulator", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {server_cpu}),  # noqa: PLW1509 - pin before exec
    )
    try:
        url = proc.stdout.readline().strip() if proc.stdout else ""
        os.sched_setaffinity(0, client_cpus)
        asyncio.run(drive(url, 50, 2))  # warm-up
        requests, elapsed = asyncio.run(drive(url, args.flows, args.connections))
        server_cpu_s = None
        try:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            server_cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"simulator pinned to CPU {server_cpu}; client on CPUs {sorted(client_cpus)}")
    print(f"requests: {requests} over {args.connections} keep-alive connections ({args.flows} payments)")
    print(f"wall time: {elapsed:.2f} s")
    print(f"throughput: {requests / elapsed:,.0f} requests/s")
    if server_cpu_s:
        print(f"simulator CPU time (incl. warm-up and start): {server_cpu_s:.2f} s")


if __name__ == "__main__":
    main()
