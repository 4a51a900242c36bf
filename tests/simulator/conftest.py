"""Fixtures for the simulator's tests: a served simulator and the real stripe client against it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import stripe

from kiosk.simulator import Simulator

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

KEY = "sk_test_kiosk"


@dataclass
class Served:
    sim: Simulator
    url: str
    client: stripe.StripeClient
    http: httpx.AsyncClient

    async def pi(self, amount: int = 1000, **extra: Any) -> stripe.PaymentIntent:
        params: dict[str, Any] = {
            "amount": amount,
            "currency": "usd",
            "capture_method": "manual",
            "allowed_payment_method_types": ["card_present"],
            **extra,
        }
        return await self.client.v1.payment_intents.create_async(params=params)  # type: ignore[arg-type]

    async def reader(self, code: str = "simulated-wpe") -> str:
        reader = await self.client.v1.terminal.readers.create_async(params={"registration_code": code})
        return reader.id

    async def process(self, reader: str, pi: str, **config: bool) -> stripe.terminal.Reader:
        params: dict[str, Any] = {"payment_intent": pi}
        if config:
            params["process_config"] = config
        return await self.client.v1.terminal.readers.process_payment_intent_async(reader, params=params)  # type: ignore[arg-type]

    async def present(self, reader: str, number: str = "4242424242424242", **extra: Any) -> stripe.terminal.Reader:
        params: dict[str, Any] = {"type": "card_present", "card_present": {"number": number}, **extra}
        return await self.client.v1.test_helpers.terminal.readers.present_payment_method_async(reader, params=params)  # type: ignore[arg-type]

    async def paid(self, amount: int = 1000, number: str = "4242424242424242") -> tuple[str, stripe.PaymentIntent]:
        reader = await self.reader()
        pi = await self.pi(amount)
        await self.process(reader, pi.id)
        await self.present(reader, number)
        return reader, await self.client.v1.payment_intents.retrieve_async(pi.id)


@pytest.fixture(name="served")
async def fixture_served() -> AsyncIterator[Served]:
    sim = Simulator(seed=7)
    async with sim.serve() as endpoint:
        http_client = stripe.HTTPXClient()
        client = stripe.StripeClient(
            KEY, http_client=http_client, base_addresses={"api": endpoint.url}, max_network_retries=0
        )
        async with httpx.AsyncClient(base_url=endpoint.url, auth=(KEY, "")) as http:
            try:
                yield Served(sim, endpoint.url, client, http)
            finally:
                await http_client.close_async()  # type: ignore[no-untyped-call]
