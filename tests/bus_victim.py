"""A kiosk bus client for tests to kill: run as a subprocess, it reports what it sees on stdout.

It subscribes to `--subscribe`, sets a retained Will on `--will-topic`, and prints one JSON line per
fact: `{"event": "connected"}`, `{"event": "received", "topic": …, "payload": …}`, and, for
payloads starting with `ack`, `{"event": "acked", "payload": …}` once the acknowledgement has
surely reached the broker. Other payloads are held unacknowledged, as if the journal commit never
finished. The test SIGKILLs it whenever it likes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Literal

from kiosk import logs
from kiosk.bus import Bus, Publication
from kiosk.settings import MqttSettings


def _say(event: str, **data: str) -> None:
    sys.stdout.write(json.dumps({"event": event, **data}) + "\n")
    sys.stdout.flush()


async def _main(args: argparse.Namespace) -> None:
    protocol: Literal[4, 5] = 5 if args.protocol == 5 else 4
    connected = asyncio.Event()

    async def on_connect() -> None:
        connected.set()

    bus = Bus(
        MqttSettings(url=args.url, keepalive_s=5),
        client_id=args.client_id,
        will=Publication(args.will_topic, b"offline", retain=True),
        subscriptions=[args.subscribe],
        on_connect=on_connect,
        protocol=protocol,
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
    )
    async with bus:
        await connected.wait()
        _say("connected")
        async for message in bus.messages():
            payload = message.payload.decode()
            _say("received", topic=message.topic, payload=payload)
            if payload.startswith("ack"):
                message.ack()
                # Packets leave in order: once this publish is acknowledged, the broker has our
                # PUBACK for the message too, so a kill after this line cannot undo it.
                await bus.publish(f"{args.will_topic}/acked", payload.encode(), qos=1)
                _say("acked", payload=payload)


def main() -> None:
    """Run until killed."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--protocol", type=int, choices=[4, 5], default=5)
    parser.add_argument("--subscribe", required=True)
    parser.add_argument("--will-topic", required=True)
    logs.configure(stream=sys.stderr)  # stdout carries the facts the test reads
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
